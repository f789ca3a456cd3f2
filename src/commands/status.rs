//! `status`: what runs on a host now, IOC by IOC, for every top on it or
//! one. Its exit code says whether every IOC runs, for monitoring scripts.

use anyhow::Result;
use schemars::JsonSchema;
use serde::Serialize;

use super::{RollbackRecord, unknown_top};
use crate::config::Config;
use crate::exit::Exit;
use crate::host::Outcome;
use crate::output::{self, Render, Style};
use crate::progress::Progress;
use crate::running::{self, Detail, RunningIoc};
use crate::ssh::Remote;
use crate::table;
use crate::target::{HostSelection, Target};

/// What `status` was asked for.
#[derive(Clone, Debug)]
pub struct StatusOptions {
    pub on: HostSelection,
    /// Only this top; every top on the host when `None`.
    pub top: Option<String>,
    pub detail: Detail,
}

/// `status`'s result.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub host: String,
    /// Every top on the host (or the one asked for), also one with no IOC.
    pub tops: Vec<TopStatus>,
    /// Every IOC of those tops.
    pub iocs: Vec<IocStatus>,
    /// How much was read: 0, or 1 and 2 for `-v` and `-vv`.
    pub detail: u8,
}

/// Where a top's profile stands.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopStatus {
    pub top: String,
    /// The current generation; `null` when the top is not deployed.
    pub generation: Option<u32>,
    pub outcome: Option<Outcome>,
    /// The current generation's store path.
    pub store_path: Option<String>,
    /// The top's build the current generation runs.
    pub build: Option<String>,
    /// A switch is unconfirmed and its rollback armed, running, or due at
    /// boot; `null` when the login could not tell (an operator's).
    pub rollback_pending: Option<bool>,
    pub last_rollback: Option<RollbackRecord>,
}

/// How long procServ may run without its IOC after the unit started before
/// the IOC counts as down.
const STARTUP_GRACE_SECS: i64 = 10;

/// How an IOC is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum IocState {
    /// procServ runs the IOC, and it has not restarted repeatedly of late.
    Running,
    /// The unit is starting, or procServ has not started the IOC yet.
    Starting,
    /// Restarted at least `running::LOOP_RESTARTS` times within
    /// `running::LOOP_WINDOW_SECS` seconds.
    CrashLooping,
    /// Stopped on purpose (`systemctl stop`, `epnix-deploy stop`).
    Stopped,
    /// Failed, or procServ runs without the IOC.
    Down,
}

impl IocState {
    fn as_str(self) -> &'static str {
        match self {
            IocState::Running => "running",
            IocState::Starting => "starting",
            IocState::CrashLooping => "crash-looping",
            IocState::Stopped => "stopped",
            IocState::Down => "down",
        }
    }

    /// `now` is the host's clock.
    fn of(ioc: &RunningIoc, now: i64) -> IocState {
        let state = &ioc.process.state;
        if ioc.recent_restarts >= running::LOOP_RESTARTS {
            return IocState::CrashLooping;
        }
        // procServ starts its child about a second after it starts itself.
        let just_started = state.since.is_some_and(|since| now - since < STARTUP_GRACE_SECS);
        match (state.active.as_str(), state.sub.as_str(), ioc.pid) {
            ("active", "running", Some(_)) => IocState::Running,
            ("active", "running", None) if just_started => IocState::Starting,
            ("activating", "auto-restart", _) => IocState::Down,
            ("activating" | "reloading", _, _) => IocState::Starting,
            ("inactive", _, _) => IocState::Stopped,
            _ => IocState::Down,
        }
    }
}

/// One IOC.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IocStatus {
    pub ioc: String,
    pub top: String,
    pub unit: String,
    pub state: IocState,
    /// systemd's `ActiveState`, e.g. `active`, `failed`.
    pub active_state: String,
    /// systemd's `SubState`, e.g. `running`.
    pub sub_state: String,
    /// When the IOC process started (with procServ 2.7, after its last
    /// restart under procServ), in RFC 3339.
    pub since: Option<String>,
    /// Seconds since then.
    pub uptime_seconds: Option<i64>,
    /// systemd's restarts of the unit plus the IOC's own under procServ in
    /// this run of the unit.
    pub restarts: u64,
    /// Restarts within the last `running::LOOP_WINDOW_SECS` seconds.
    pub recent_restarts: u64,
    /// Why the running process is not what the unit and the profile say.
    pub drift: Option<String>,
    /// procServ's console: `unix:PATH` or `tcp:localhost:PORT`.
    pub console: Option<String>,
    /// The IOC process (procServ's child), with `-v`.
    pub pid: Option<u32>,
    /// Its CPU time over its life, in percent, with `-v`.
    pub cpu_percent: Option<f64>,
    /// Its resident memory in KiB, with `-v`.
    pub memory_kib: Option<u64>,
    /// Clients on its console, with `-v`.
    pub console_clients: Option<u32>,
    /// The console socket's mode, with `-vv` (UNIX consoles).
    pub socket_mode: Option<String>,
    /// The console listener's Recv-Q (connections not yet accepted), with `-vv`.
    pub recv_q: Option<u64>,
    /// The console listener's Send-Q (its backlog), with `-vv`.
    pub send_q: Option<u64>,
    /// The unit's last journal line, with `-vv`.
    pub last_line: Option<String>,
}

impl StatusReport {
    /// Success when every IOC runs; failed when any is down, stopped,
    /// starting or crash-looping.
    pub fn exit(&self) -> Exit {
        if self.iocs.iter().all(|i| i.state == IocState::Running) { Exit::Success } else { Exit::Failed }
    }
}

pub fn run(options: &StatusOptions, progress: &Progress) -> Result<StatusReport> {
    let (target, config) = super::host_target(&options.on, options.top.as_deref())?;
    run_on(&target, config.as_ref(), options, progress)
}

/// `status` of a resolved host; `config` is the flake's, when there is
/// one. Of `options`, the top and the detail are read.
pub fn run_on(
    target: &Target,
    config: Option<&Config>,
    options: &StatusOptions,
    progress: &Progress,
) -> Result<StatusReport> {
    let step = progress.step(&target.label, "connect");
    let remote = Remote::connect_operating(target)?;
    step.done(remote.operator().map_or(String::new(), |user| format!("as operator `{user}`")).as_str());
    let step = progress.step(&target.label, "read");
    let running = running::read(&remote, options.detail, options.top.as_deref())?;
    remote.close();
    step.done("");
    if let (Some(top), Some(config)) = (&options.top, config) {
        let on_host = running.tops.get(top).is_some_and(|t| t.generation.is_some()) || !running.iocs.is_empty();
        if !on_host && !config.tops.contains_key(top) {
            return Err(unknown_top(config, top).into());
        }
    }
    let tops = running
        .tops
        .iter()
        .map(|(top, state)| TopStatus {
            top: top.clone(),
            generation: state.generation,
            outcome: state.outcome(),
            store_path: state.store_path.as_ref().map(ToString::to_string),
            build: state.build.as_ref().or(state.store_path.as_ref()).map(ToString::to_string),
            rollback_pending: state.rollback_pending,
            last_rollback: state.last_rollback.as_ref().map(RollbackRecord::from),
        })
        .collect();
    let iocs = running
        .iocs
        .iter()
        .map(|(name, ioc)| {
            let top = &running.tops[&ioc.top];
            let builds: Vec<_> = top.build.iter().chain(&top.store_path).collect();
            let started = ioc.age.map(|age| running.now - age).or(ioc.process.state.since);
            let usage = ioc.usage.clone().unwrap_or_default();
            let socket = ioc.socket.clone().unwrap_or_default();
            IocStatus {
                ioc: name.clone(),
                top: ioc.top.clone(),
                unit: ioc.unit.clone(),
                state: IocState::of(ioc, running.now),
                active_state: ioc.process.state.active.clone(),
                sub_state: ioc.process.state.sub.clone(),
                since: started.map(output::rfc3339),
                uptime_seconds: started.map(|s| running.now - s),
                restarts: ioc.restarts(),
                recent_restarts: ioc.recent_restarts,
                drift: ioc.process.drift(&builds).map(|d| d.describe()),
                console: ioc.console.as_ref().map(ToString::to_string),
                pid: ioc.usage.as_ref().and(ioc.pid),
                cpu_percent: usage.cpu_percent,
                memory_kib: usage.memory_kib,
                console_clients: usage.console_clients,
                socket_mode: socket.mode,
                recv_q: socket.recv_q,
                send_q: socket.send_q,
                last_line: ioc.last_line.clone(),
            }
        })
        .collect();
    let detail = match options.detail {
        Detail::Base => 0,
        Detail::Usage => 1,
        Detail::Socket => 2,
    };
    Ok(StatusReport { host: target.label.clone(), tops, iocs, detail })
}

/// `3d 04h`, `2h 05m`, `4m 09s`, `12s`: an uptime as people read it.
fn uptime(secs: i64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m"),
        _ => format!("{d}d {h:02}h"),
    }
}

impl StatusReport {
    /// Where each top stands, one line each, and what a pending or past
    /// rollback says.
    fn top_lines(&self) -> String {
        let mut out = String::new();
        for top in &self.tops {
            out += &match top.generation {
                Some(g) => format!(
                    "{} on {}: generation {g}, {}\n",
                    top.top,
                    self.host,
                    top.outcome.map_or("unknown", Outcome::as_str)
                ),
                None => format!("{} on {}: not deployed\n", top.top, self.host),
            };
            match top.rollback_pending {
                Some(true) => out += "  a rollback is pending: the last switch is not confirmed (yet)\n",
                Some(false) => {}
                None => out += "  outcome and pending rollbacks unknown: the state directory is root's\n",
            }
            if let Some(rb) = &top.last_rollback {
                let to = rb.to.map_or("none".to_owned(), |t| t.to_string());
                out += &format!("  last rollback: {}, to generation {to} ({})\n", rb.at, rb.reason);
            }
        }
        out
    }

    /// The table's header, with a `HOST` column first when `with_host`.
    pub fn header(detail: u8, with_host: bool) -> Vec<String> {
        let mut head = if with_host { vec!["HOST"] } else { vec![] };
        head.extend(["TOP", "GEN", "IOC", "STATE", "UP", "RESTARTS"]);
        if detail >= 1 {
            head.extend(["PID", "CPU%", "MEM", "CLIENTS"]);
        }
        if detail >= 2 {
            head.extend(["CONSOLE", "MODE", "RECV-Q", "SEND-Q", "LAST LOG LINE"]);
        }
        head.push("DRIFT");
        head.into_iter().map(String::from).collect()
    }

    /// One row per IOC, under [`StatusReport::header`].
    pub fn rows(&self, with_host: bool) -> Vec<Vec<String>> {
        let dash = || "-".to_owned();
        let opt = |v: Option<String>| v.unwrap_or_else(dash);
        let mut rows = Vec::new();
        for ioc in &self.iocs {
            let top = self.tops.iter().find(|t| t.top == ioc.top);
            let generation = top.and_then(|t| t.generation).map_or_else(dash, |g| g.to_string());
            let mut state = ioc.state.as_str().to_owned();
            if ioc.state != IocState::Running {
                state += &match (&ioc.active_state, &ioc.sub_state) {
                    (active, sub) if active == sub => format!(" ({active})"),
                    (active, sub) => format!(" ({active}, {sub})"),
                };
            }
            let mut row = if with_host { vec![self.host.clone()] } else { vec![] };
            row.extend([
                ioc.top.clone(),
                generation,
                ioc.ioc.clone(),
                state,
                opt(ioc.uptime_seconds.filter(|_| ioc.state == IocState::Running).map(uptime)),
                ioc.restarts.to_string(),
            ]);
            if self.detail >= 1 {
                row.extend([
                    opt(ioc.pid.map(|p| p.to_string())),
                    opt(ioc.cpu_percent.map(|c| format!("{c:.1}"))),
                    opt(ioc.memory_kib.map(|k| format!("{:.1}M", k as f64 / 1024.0))),
                    opt(ioc.console_clients.map(|c| c.to_string())),
                ]);
            }
            if self.detail >= 2 {
                row.extend([
                    opt(ioc.console.clone()),
                    opt(ioc.socket_mode.clone()),
                    opt(ioc.recv_q.map(|q| q.to_string())),
                    opt(ioc.send_q.map(|q| q.to_string())),
                    opt(ioc.last_line.clone()),
                ]);
            }
            row.push(opt(ioc.drift.clone()));
            rows.push(row);
        }
        rows
    }
}

impl Render for StatusReport {
    fn text(&self, _: &Style) -> String {
        let out = self.top_lines();
        if self.iocs.is_empty() {
            return out + "no IOCs\n";
        }
        let mut rows = vec![StatusReport::header(self.detail, false)];
        rows.extend(self.rows(false));
        out + &table::render(&rows)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn ioc(name: &str, state: IocState, restarts: u64) -> IocStatus {
        let running = state == IocState::Running;
        IocStatus {
            ioc: name.into(),
            top: "myTop".into(),
            unit: format!("epnix-{name}.service"),
            state,
            active_state: if running { "active" } else { "failed" }.into(),
            sub_state: if running { "running" } else { "failed" }.into(),
            since: running.then(|| output::rfc3339(1_795_314_273)),
            uptime_seconds: running.then_some(93_784),
            restarts,
            recent_restarts: 0,
            drift: None,
            console: Some(format!("unix:/run/epics/{name}/console")),
            pid: running.then_some(4242),
            cpu_percent: running.then_some(1.5),
            memory_kib: running.then_some(35_500),
            console_clients: Some(1),
            socket_mode: Some("666".into()),
            recv_q: Some(0),
            send_q: Some(5),
            last_line: Some("iocRun: All initialization complete".into()),
        }
    }

    pub(crate) fn sample() -> StatusReport {
        StatusReport {
            host: "ioc1".into(),
            tops: vec![TopStatus {
                top: "myTop".into(),
                generation: Some(3),
                outcome: Some(Outcome::Healthy),
                store_path: Some("/nix/store/5v1x3k0hq2n8y9cz0m1p2r3s4t5u6w7a-myTop-generation".into()),
                build: Some("/nix/store/637jmx64rzqbcx8nmhggpywpyiyjqcyc-myTop".into()),
                rollback_pending: Some(false),
                last_rollback: Some(RollbackRecord {
                    at: output::rfc3339(1_795_310_000),
                    to: Some(2),
                    reason: "failed-checks".into(),
                    ok: true,
                }),
            }],
            iocs: vec![
                ioc("iocA", IocState::Running, 0),
                IocStatus {
                    drift: Some("its unit file changed after it started".into()),
                    ..ioc("iocB", IocState::Down, 3)
                },
            ],
            detail: 0,
        }
    }

    #[test]
    fn the_table() {
        let mut report = sample();
        insta::assert_snapshot!(report.text(&Style::default()));
        report.detail = 2;
        insta::assert_snapshot!("the_table_with_-vv", report.text(&Style::default()));
    }

    #[test]
    fn any_ioc_not_running_fails_the_status() {
        let mut report = sample();
        assert_eq!(report.exit(), Exit::Failed);
        report.iocs.truncate(1);
        assert_eq!(report.exit(), Exit::Success);
    }

    #[test]
    fn repeated_restarts_are_a_crash_loop_and_one_is_not() {
        let mut ioc = RunningIoc { pid: Some(7), ..Default::default() };
        ioc.process.state.active = "active".into();
        ioc.process.state.sub = "running".into();
        ioc.process.state.since = Some(1000);
        ioc.recent_restarts = 1;
        assert_eq!(IocState::of(&ioc, 1100), IocState::Running);
        ioc.recent_restarts = running::LOOP_RESTARTS;
        assert_eq!(IocState::of(&ioc, 1100), IocState::CrashLooping);
        ioc.recent_restarts = 0;
        ioc.pid = None;
        assert_eq!(IocState::of(&ioc, 1100), IocState::Down);
        assert_eq!(IocState::of(&ioc, 1001), IocState::Starting, "procServ has not forked the IOC yet");
        ioc.process.state.active = "inactive".into();
        assert_eq!(IocState::of(&ioc, 1100), IocState::Stopped);
    }

    #[test]
    fn uptimes() {
        assert_eq!(uptime(12), "12s");
        assert_eq!(uptime(249), "4m 09s");
        assert_eq!(uptime(7500), "2h 05m");
        assert_eq!(uptime(93_784 + 86_400 * 2), "3d 02h");
    }
}
