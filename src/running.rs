//! What runs on a host now, IOC by IOC, for every top on it (or one): read
//! in one round trip (`running.sh`) from the unit files' ownership markers,
//! so that it needs no flake. `status` stands on it.
//!
//! An IOC is procServ's child, not procServ: with procServ 2.7 (no
//! `--oneshot`) procServ restarts a dead IOC itself and systemd never sees
//! the crash, so its restarts are read from procServ's own journal lines.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use camino::Utf8PathBuf;

use crate::host::{self, Outcome, Process, RollbackEvent, Verdict, WhatRuns};
use crate::layout;
use crate::remote;
use crate::ssh::Remote;
use crate::unit;

/// How much `running.sh` reads about each IOC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Detail {
    /// State, uptime and restarts.
    #[default]
    Base,
    /// Also the IOC's PID, CPU, memory and console clients (`-v`).
    Usage,
    /// Also the console socket and the last log line (`-vv`).
    Socket,
}

/// The restarts within this many seconds that make an IOC crash-looping.
pub const LOOP_WINDOW_SECS: i64 = 120;
/// How many restarts within [`LOOP_WINDOW_SECS`] make an IOC crash-looping:
/// one restart is an incident (a kill, a fault that cleared), three in two
/// minutes is a loop.
pub const LOOP_RESTARTS: u64 = 3;

/// What runs on a host.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Running {
    /// The host's clock when it was read, in seconds since the epoch.
    pub now: i64,
    /// Every top with a profile or a unit on the host, by name.
    pub tops: BTreeMap<String, TopState>,
    /// Every IOC unit with an ownership marker, by IOC name.
    pub iocs: BTreeMap<String, RunningIoc>,
}

/// Where a top's profile stands.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopState {
    /// The current generation, when the top has a profile.
    pub generation: Option<u32>,
    pub store_path: Option<Utf8PathBuf>,
    /// The top's build in it, when epnix-deploy made the generation.
    pub build: Option<Utf8PathBuf>,
    /// Unknown (`None`) to an operator, who cannot read the state directory.
    pub rollback_pending: Option<bool>,
    verdicts: Vec<Verdict>,
    pub last_rollback: Option<RollbackEvent>,
}

impl TopState {
    /// What became of the current generation.
    pub fn outcome(&self) -> Option<Outcome> {
        let (number, path) = (self.generation?, self.store_path.as_ref()?);
        Some(match self.rollback_pending {
            Some(true) => Outcome::Pending,
            Some(false) => host::outcome_of(&self.verdicts, number, path),
            None => Outcome::Unknown,
        })
    }
}

/// Where procServ offers an IOC's console, as its unit says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleAddress {
    Unix(Utf8PathBuf),
    Tcp(u16),
}

impl std::fmt::Display for ConsoleAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsoleAddress::Unix(path) => write!(f, "unix:{path}"),
            ConsoleAddress::Tcp(port) => write!(f, "tcp:localhost:{port}"),
        }
    }
}

/// One IOC as it runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunningIoc {
    pub top: String,
    pub unit: String,
    pub console: Option<ConsoleAddress>,
    pub process: Process,
    /// procServ's child, the IOC itself, when it runs.
    pub pid: Option<u32>,
    /// Its age in seconds.
    pub age: Option<i64>,
    /// The IOC's deaths that procServ saw in this run of the unit.
    pub procserv_restarts: u64,
    /// Restarts within [`LOOP_WINDOW_SECS`]: procServ's in this run of the
    /// unit, and systemd's automatic ones.
    pub recent_restarts: u64,
    pub usage: Option<Usage>,
    pub socket: Option<SocketState>,
    pub last_line: Option<String>,
}

/// The IOC process's resources and who is on its console (`-v`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    /// CPU time over its lifetime, as `ps` reports `%CPU`.
    pub cpu_percent: Option<f64>,
    /// Resident memory, in KiB.
    pub memory_kib: Option<u64>,
    /// Clients connected to its console.
    pub console_clients: Option<u32>,
}

/// The console's listening socket (`-vv`): its mode and queues, as `ss`
/// shows them for a listener (Recv-Q: connections waiting to be accepted;
/// Send-Q: the backlog).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketState {
    pub mode: Option<String>,
    pub recv_q: Option<u64>,
    pub send_q: Option<u64>,
}

impl RunningIoc {
    /// All its restarts in this life of the unit: systemd's, and the IOC's
    /// own under procServ.
    pub fn restarts(&self) -> u64 {
        self.process.state.restarts + self.procserv_restarts
    }
}

/// Reads what runs on the host: every top, or only `top`.
pub fn read(remote: &Remote, detail: Detail, top: Option<&str>) -> Result<Running> {
    let nonce = host::nonce();
    let level = match detail {
        Detail::Base => "0",
        Detail::Usage => "1",
        Detail::Socket => "2",
    };
    let procserv = layout::procserv_profile();
    let mut args = vec![
        nonce.clone(),
        layout::unit_dir().to_string(),
        unit::OWNER_KEY.to_owned(),
        layout::profile_dir().to_string(),
        layout::state_dir().to_string(),
        procserv.file_name().unwrap_or_default().to_owned(),
        layout::GENERATION_DIR.to_owned(),
        level.to_owned(),
        LOOP_WINDOW_SECS.to_string(),
    ];
    args.extend(top.map(str::to_owned));
    let output = remote.run(&remote::RUNNING.cmd(&args)).context("reading what runs on the host")?;
    parse(&nonce, &output)
}

pub fn parse(nonce: &str, output: &str) -> Result<Running> {
    let mut running = Running::default();
    let mut runs = WhatRuns::default();
    let mut iocs: BTreeMap<String, RunningIoc> = BTreeMap::new();
    for (key, value, rest) in host::records(nonce, output)? {
        if runs.take(key, value, rest)? {
            continue;
        }
        let words: Vec<&str> = value.split(' ').collect();
        let ioc_of = |unit: &str| layout::ioc_of_unit(unit).map(str::to_owned);
        match (key, &words[..]) {
            ("now", [now]) => running.now = now.parse().context("the host's clock is not a number")?,
            ("unit", [unit, top, console]) => {
                let Some(ioc) = ioc_of(unit) else { continue };
                let console = parse_console(console);
                let entry =
                    RunningIoc { top: (*top).to_owned(), unit: (*unit).to_owned(), console, ..Default::default() };
                iocs.insert(ioc, entry);
            }
            ("top", [top, link, path, build, pending]) => {
                let state = running.tops.entry((*top).to_owned()).or_default();
                state.generation = host::parse_generation(link);
                state.store_path = (*path != "-").then(|| Utf8PathBuf::from(*path));
                state.build = (*build != "-").then(|| Utf8PathBuf::from(*build));
                state.rollback_pending = match *pending {
                    "unknown" => None,
                    word => Some(word == "yes"),
                };
            }
            ("outcome", [top, ..]) => {
                let line = value.split_once(' ').map_or("", |(_, line)| line);
                running.tops.entry((*top).to_owned()).or_default().verdicts.extend(Verdict::parse(line));
            }
            ("event", [top, ..]) => {
                let line = value.split_once(' ').map_or("", |(_, line)| line);
                running.tops.entry((*top).to_owned()).or_default().last_rollback = RollbackEvent::parse(line);
            }
            ("ioc", [unit, pid, age, this_run, sigchild, scheduled]) => {
                let Some(ioc) = ioc_of(unit).and_then(|i| iocs.get_mut(&i)) else { continue };
                ioc.pid = pid.parse().ok();
                ioc.age = age.parse().ok();
                ioc.procserv_restarts = this_run.parse().unwrap_or(0);
                // Disjoint: procServ's lines of this run, systemd's restarts
                // into a new run.
                ioc.recent_restarts = sigchild.parse::<u64>().unwrap_or(0) + scheduled.parse::<u64>().unwrap_or(0);
            }
            ("usage", [unit, cpu, rss, clients]) => {
                let Some(ioc) = ioc_of(unit).and_then(|i| iocs.get_mut(&i)) else { continue };
                ioc.usage = Some(Usage {
                    cpu_percent: cpu.parse().ok(),
                    memory_kib: rss.parse().ok(),
                    console_clients: clients.parse().ok(),
                });
            }
            ("socket", [unit, mode, recv_q, send_q]) => {
                let Some(ioc) = ioc_of(unit).and_then(|i| iocs.get_mut(&i)) else { continue };
                ioc.socket = Some(SocketState {
                    mode: (*mode != "-").then(|| (*mode).to_owned()),
                    recv_q: recv_q.parse().ok(),
                    send_q: send_q.parse().ok(),
                });
            }
            ("last", [unit]) => {
                let Some(ioc) = ioc_of(unit).and_then(|i| iocs.get_mut(&i)) else { continue };
                ioc.last_line = rest.lines().next().map(str::to_owned).filter(|l| !l.is_empty());
            }
            _ => {}
        }
    }
    for (ioc, process) in runs.processes() {
        if let Some(entry) = iocs.get_mut(&ioc) {
            entry.process = process;
        }
    }
    for ioc in iocs.values() {
        running.tops.entry(ioc.top.clone()).or_default();
    }
    running.iocs = iocs;
    Ok(running)
}

fn parse_console(word: &str) -> Option<ConsoleAddress> {
    if let Some(path) = word.strip_prefix("unix:") {
        return Some(ConsoleAddress::Unix(path.into()));
    }
    word.strip_prefix("tcp:")?.parse().ok().map(ConsoleAddress::Tcp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: &str = "@@n@@";

    fn report() -> String {
        [
            "now 1700000300",
            "unit epnix-a.service myTop unix:/run/epics/a/console",
            "unit epnix-b.service myTop tcp:2001",
            "unit epnix-c.service other -",
            "top myTop /nix/var/nix/profiles/epnix/myTop-3-link /nix/store/g3-myTop-generation /nix/store/b3-myTop no",
            "outcome myTop 1700000100 3 failed /nix/store/old-myTop-generation",
            "outcome myTop 1700000200 3 healthy /nix/store/g3-myTop-generation",
            "event myTop 1700000000 2 1 failed-checks 0",
            "top empty - - - no",
            "show\nId=epnix-a.service\nActiveState=active\nSubState=running\nNRestarts=1\nInvocationID=i1\n\
             ActiveEnterTimestamp=@1700000000\n\nId=epnix-b.service\nActiveState=failed\nSubState=failed\nNRestarts=4\n",
            "process epnix-a.service 1699999000 /nix/store/b3-myTop/iocBoot/a",
            "process epnix-b.service 1699999000 -",
            "ioc epnix-a.service 77 250 2 2 1",
            "ioc epnix-b.service - - 0 0 4",
            "usage epnix-a.service 1.5 35500 2",
            "socket epnix-a.service 666 0 5",
            "last epnix-a.service\niocRun: All initialization complete",
        ]
        .iter()
        .map(|r| format!("{N} {r}\n"))
        .collect()
    }

    #[test]
    fn every_top_and_ioc_on_the_host() {
        let running = parse(N, &report()).unwrap();
        assert_eq!(running.now, 1_700_000_300);
        assert_eq!(running.tops.keys().collect::<Vec<_>>(), ["empty", "myTop", "other"]);
        let top = &running.tops["myTop"];
        assert_eq!(top.generation, Some(3));
        assert_eq!(top.outcome(), Some(Outcome::Healthy));
        assert_eq!(top.build.as_deref(), Some("/nix/store/b3-myTop".into()));
        assert_eq!(top.last_rollback.as_ref().map(|e| e.to), Some(Some(1)));
        assert_eq!(running.tops["empty"].outcome(), None);

        let a = &running.iocs["a"];
        assert_eq!(a.console, Some(ConsoleAddress::Unix("/run/epics/a/console".into())));
        assert_eq!((a.pid, a.age, a.restarts(), a.recent_restarts), (Some(77), Some(250), 3, 3));
        assert_eq!(a.process.cwd.as_deref(), Some("/nix/store/b3-myTop/iocBoot/a".into()));
        assert_eq!(a.usage.as_ref().and_then(|u| u.console_clients), Some(2));
        assert_eq!(a.socket.as_ref().and_then(|s| s.send_q), Some(5));
        assert_eq!(a.last_line.as_deref(), Some("iocRun: All initialization complete"));

        let b = &running.iocs["b"];
        assert_eq!(b.console, Some(ConsoleAddress::Tcp(2001)));
        assert_eq!((b.pid, b.restarts(), b.recent_restarts), (None, 4, 4));
        assert_eq!(running.iocs["c"].console, None);
    }
}
