//! What a host has now: read in one round trip before any plan is made.
//!
//! The host's own Nix profile and systemd unit files are the source of
//! truth; nothing is cached on the deployer's side.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use camino::Utf8PathBuf;

use crate::layout;
use crate::ssh::RemoteCmd;
use crate::unit::HostFacts;

/// The state read from a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostState {
    pub hostname: String,
    pub is_root: bool,
    /// procServ on the host, if any, and whether it has `--oneshot`.
    pub procserv: Option<HostFacts>,
    /// Where `nix-env` is, if anywhere.
    pub nix_env: Option<String>,
    pub has_systemctl: bool,
    /// Whether `nix-store` is on the PATH of a non-interactive SSH command,
    /// which is where `nix copy` looks for it.
    pub nix_store_on_ssh_path: bool,
    /// Where the top's profile points now, and its generation.
    pub profile: Option<Profile>,
    /// Every `epnix-*.service` file in the unit directory, by IOC name, with
    /// its text: ours and anything that only looks like ours.
    pub units: BTreeMap<String, String>,
    /// The profile's generations, oldest first.
    pub generations: Vec<Generation>,
    /// What the deploys recorded, by generation number. A record is only
    /// trusted for a generation that still points at its store path.
    pub records: BTreeMap<u32, Record>,
    /// A rollback is armed (an unconfirmed deploy) or running.
    pub rollback_pending: bool,
    /// The latest rollbacks, oldest first.
    pub rollbacks: Vec<RollbackEvent>,
}

/// A rollback the host carried out, from its `events` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollbackEvent {
    /// Seconds since the epoch.
    pub at: i64,
    /// The generation rolled back from, if there was one.
    pub from: Option<u32>,
    /// The generation rolled back to; `None` when a first deploy was undone.
    pub to: Option<u32>,
    /// `unconfirmed` (the host did it by itself) or `failed-checks`.
    pub reason: String,
    /// Whether every step of it succeeded.
    pub ok: bool,
}

impl RollbackEvent {
    fn parse(line: &str) -> Option<RollbackEvent> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [at, from, to, reason, status] = words[..] else { return None };
        Some(RollbackEvent {
            at: at.parse().ok()?,
            from: from.parse().ok(),
            to: to.parse().ok(),
            reason: reason.to_owned(),
            ok: status == "0",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub number: u32,
    /// Seconds since the epoch, when the generation was made.
    pub created: i64,
    pub store_path: Utf8PathBuf,
}

/// What a deploy recorded next to a generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub store_path: Utf8PathBuf,
    pub deployer: String,
    pub revision: String,
    /// The IOCs whose units the generation installed.
    pub iocs: Vec<String>,
}

impl Record {
    /// Reads `key=value` lines: the `meta` file, then `unit=` lines.
    fn parse(text: &str) -> Record {
        let mut record = Record::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("storePath", v)) => record.store_path = Utf8PathBuf::from(v),
                Some(("deployer", v)) => record.deployer = v.to_owned(),
                Some(("revision", v)) => record.revision = v.to_owned(),
                Some(("unit", v)) => record.iocs.extend(layout::ioc_of_unit(v).map(str::to_owned)),
                _ => {}
            }
        }
        record
    }

    /// The `meta` file of a record. Values are single lines.
    pub fn meta(store_path: &str, deployer: &str, revision: &str) -> String {
        let line = |v: &str| v.replace(['\n', '\r'], " ");
        format!("storePath={}\ndeployer={}\nrevision={}\n", line(store_path), line(deployer), line(revision))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub generation: u32,
    pub store_path: Utf8PathBuf,
}

/// Prints one record per fact, each opened by a nonce that cannot occur in a
/// unit file, so unit texts need no escaping. `$1` is the nonce, `$2` the
/// profile, `$3` the top's records directory.
const INSPECT: &str = r#"
set -u
nonce=$1 profile=$2 records=$3
say() { printf '%s %s %s\n' "$nonce" "$1" "$2"; }
if command -v nix-store >/dev/null 2>&1; then say nix-store-on-path yes; else say nix-store-on-path no; fi
# Multi-user Nix and NixOS put their tools here, outside a non-interactive PATH.
PATH="$PATH:/nix/var/nix/profiles/default/bin:/run/current-system/sw/bin"
say hostname "$(cat /proc/sys/kernel/hostname)"
say uid "$(id -u)"
say procserv "$(command -v procServ || true)"
if procServ --help 2>&1 | grep -q -e --oneshot; then say oneshot yes; else say oneshot no; fi
say nix-env "$(command -v nix-env || true)"
say systemctl "$(command -v systemctl || true)"
if [ -L "$profile" ]; then
  say profile-link "$(readlink "$profile")"
  say profile-target "$(readlink -f "$profile")"
fi
for f in /etc/systemd/system/epnix-*.service; do
  [ -f "$f" ] || continue
  printf '%s unit %s\n' "$nonce" "${f##*/}"
  cat "$f"
done
# Generations: number, creation time (the link's own mtime, as nix-env reads
# it) and store path. The glob also matches profiles whose names start with
# ours ("a-b-1-link" for "a"): those are skipped by the number check.
dir=${profile%/*} name=${profile##*/}
for link in "$dir/$name"-*-link; do
  [ -L "$link" ] || continue
  n=${link##*/}; n=${n#"$name"-}; n=${n%-link}
  case $n in ''|*[!0-9]*) continue ;; esac
  say generation "$n $(stat -c %Y "$link") $(readlink "$link")"
done
# A rollback armed by a deploy that was not confirmed (yet), and what
# rollbacks happened: "<time> <from> <to> <reason> <status>" lines.
if systemctl is-active --quiet "epnix-rollback-${profile##*/}.timer" || [ -d "$records/restore.rolling" ]; then
  say rollback-pending yes
fi
if [ -f "$records/events" ]; then
  tail -n 20 "$records/events" | while read -r line; do say event "$line"; done
fi
for rec in "$records"/*/; do
  rec=${rec%/}; n=${rec##*/}
  case $n in ''|*[!0-9]*) continue ;; esac
  printf '%s record %s\n' "$nonce" "$n"
  cat "$rec/meta" 2>/dev/null
  for u in "$rec"/units/*.service; do [ -f "$u" ] && echo "unit=${u##*/}"; done
done
"#;

pub fn inspect_cmd(nonce: &str, top: &str) -> RemoteCmd {
    RemoteCmd::script(INSPECT, &[nonce, layout::profile(top).as_str(), layout::records(top).as_str()])
}

/// Prints the unit files of one record. `$1` is the nonce, `$2` the record.
const FETCH_RECORD: &str = r#"
set -u
for u in "$2"/units/*.service; do
  [ -f "$u" ] || continue
  printf '%s unit %s\n' "$1" "${u##*/}"
  cat "$u"
done
"#;

pub fn fetch_record_cmd(nonce: &str, top: &str, generation: u32) -> RemoteCmd {
    RemoteCmd::script(FETCH_RECORD, &[nonce, layout::record(top, generation).as_str()])
}

/// The unit texts of a fetched record, by IOC name.
pub fn parse_record_units(nonce: &str, output: &str) -> Result<BTreeMap<String, String>> {
    Ok(parse_report(nonce, output)?.units)
}

/// A value that a unit file cannot contain by accident.
pub fn nonce() -> String {
    let mut bytes = [0u8; 12];
    // /dev/urandom never runs dry; the time-based fallback only guards odd sandboxes.
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        bytes[..8].copy_from_slice(&(t.as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("@@epnix-{hex}@@")
}

/// A host report split by kind of record.
struct Report<'a> {
    facts: BTreeMap<&'a str, &'a str>,
    events: Vec<RollbackEvent>,
    units: BTreeMap<String, String>,
    generations: Vec<Generation>,
    records: BTreeMap<u32, Record>,
}

fn parse_report<'a>(nonce: &str, output: &'a str) -> Result<Report<'a>> {
    let mut report = Report {
        facts: BTreeMap::new(),
        events: Vec::new(),
        units: BTreeMap::new(),
        generations: Vec::new(),
        records: BTreeMap::new(),
    };
    for record in output.split(nonce).skip(1) {
        let record = record.strip_prefix(' ').context("malformed host report")?;
        let (head, rest) = record.split_once('\n').unwrap_or((record, ""));
        let (key, value) = head.split_once(' ').unwrap_or((head, ""));
        match key {
            "unit" => {
                let ioc = layout::ioc_of_unit(value).with_context(|| format!("unexpected unit name `{value}`"))?;
                report.units.insert(ioc.to_owned(), rest.to_owned());
            }
            "generation" => report.generations.push(parse_generation_line(value.trim_end())?),
            "event" => report.events.extend(RollbackEvent::parse(value)),
            "record" => {
                let number = value.trim_end().parse().with_context(|| format!("bad record number `{value}`"))?;
                report.records.insert(number, Record::parse(rest));
            }
            _ => {
                report.facts.insert(key, value.trim_end());
            }
        }
    }
    report.generations.sort_by_key(|g| g.number);
    Ok(report)
}

fn parse_generation_line(line: &str) -> Result<Generation> {
    let mut words = line.splitn(3, ' ');
    let (Some(number), Some(created), Some(store_path)) = (words.next(), words.next(), words.next()) else {
        bail!("bad generation line `{line}`");
    };
    Ok(Generation {
        number: number.parse().with_context(|| format!("bad generation number in `{line}`"))?,
        created: created.parse().with_context(|| format!("bad time in `{line}`"))?,
        store_path: Utf8PathBuf::from(store_path),
    })
}

pub fn parse_inspect(nonce: &str, output: &str) -> Result<HostState> {
    let Report { facts, events, units, generations, records } = parse_report(nonce, output)?;
    let fact = |key: &str| -> Result<&str> {
        facts.get(key).copied().with_context(|| format!("the host did not report `{key}`"))
    };

    let procserv = match fact("procserv")? {
        "" => None,
        path => Some(HostFacts { procserv: path.to_owned(), procserv_oneshot: fact("oneshot")? == "yes" }),
    };
    let profile = match (facts.get("profile-link"), facts.get("profile-target")) {
        (Some(link), Some(target)) => {
            let generation = parse_generation(link)
                .with_context(|| format!("the profile points at `{link}`, which is not a generation link"))?;
            Some(Profile { generation, store_path: Utf8PathBuf::from(*target) })
        }
        (None, None) => None,
        _ => bail!("the host reported half of its profile"),
    };
    Ok(HostState {
        hostname: fact("hostname")?.to_owned(),
        is_root: fact("uid")? == "0",
        procserv,
        nix_env: Some(fact("nix-env")?).filter(|p| !p.is_empty()).map(str::to_owned),
        has_systemctl: !fact("systemctl")?.is_empty(),
        nix_store_on_ssh_path: fact("nix-store-on-path")? == "yes",
        profile,
        units,
        generations,
        records,
        rollback_pending: facts.contains_key("rollback-pending"),
        rollbacks: events,
    })
}

/// The number in a profile generation link, e.g. `myTop-3-link` (possibly
/// with a directory in front).
pub fn parse_generation(link: &str) -> Option<u32> {
    let name = link.rsplit('/').next()?;
    let rest = name.strip_suffix("-link")?;
    rest.rsplit_once('-')?.1.parse().ok()
}

impl HostState {
    /// The units epnix-deploy wrote for `top`, by IOC name.
    pub fn units_of<'a>(&'a self, top: &'a str) -> impl Iterator<Item = (&'a String, &'a String)> + 'a {
        self.units.iter().filter(move |(_, text)| crate::unit::owner(text) == Some(top))
    }

    /// The record of `generation`, if it describes that generation's build.
    pub fn record_of(&self, generation: &Generation) -> Option<&Record> {
        self.records.get(&generation.number).filter(|r| r.store_path == generation.store_path)
    }

    pub fn current_generation(&self) -> Option<&Generation> {
        let current = self.profile.as_ref()?.generation;
        self.generations.iter().find(|g| g.number == current)
    }

    /// The `nix-store` that `nix copy` must start on the host, when the
    /// default (`nix-store` on the SSH command's PATH) would not be found.
    pub fn remote_nix_store(&self) -> Option<String> {
        if self.nix_store_on_ssh_path {
            return None;
        }
        let nix_env = self.nix_env.as_deref()?;
        Some(format!("{}/nix-store", nix_env.rsplit_once('/').map_or("", |(dir, _)| dir)))
    }
}

/// The state of a unit, from `systemctl show`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitState {
    pub active: String,
    pub sub: String,
    /// Automatic restarts by systemd.
    pub restarts: u64,
    /// Changes with every start of the unit; its journal lines carry it.
    pub invocation: String,
    /// When it last became active, as systemd writes it.
    pub since: String,
}

/// Asks systemd for the state of `units`, in one call.
pub fn show_units_cmd(units: impl IntoIterator<Item = String>) -> RemoteCmd {
    let props = "--property=Id,ActiveState,SubState,NRestarts,InvocationID,ActiveEnterTimestamp";
    RemoteCmd::new(["systemctl".to_owned(), "show".to_owned(), props.to_owned()].into_iter().chain(units))
}

/// Reads the output of [`show_units_cmd`], by unit name.
pub fn parse_show(output: &str) -> BTreeMap<String, UnitState> {
    let mut states = BTreeMap::new();
    for block in output.split("\n\n") {
        let field =
            |key: &str| block.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).unwrap_or("").to_owned();
        let id = field("Id");
        if !id.is_empty() {
            let state = UnitState {
                active: field("ActiveState"),
                sub: field("SubState"),
                restarts: field("NRestarts").parse().unwrap_or(0),
                invocation: field("InvocationID"),
                since: field("ActiveEnterTimestamp"),
            };
            states.insert(id, state);
        }
    }
    states
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: &str = "@@n@@";

    #[test]
    fn a_report_with_a_profile_and_units() {
        let output = format!(
            "{N} nix-store-on-path yes\n{N} hostname ioc1\n{N} uid 0\n{N} procserv /usr/bin/procServ\n{N} oneshot no\n\
             {N} nix-env /usr/bin/nix-env\n{N} systemctl /usr/bin/systemctl\n{N} profile-link myTop-2-link\n\
                          {N} profile-target /nix/store/abc-top\n{N} unit epnix-a.service\n[Unit]\nX=1\n{N} unit epnix-b.service\nno newline\
             {N} generation 2 1700000100 /nix/store/abc-top\n{N} generation 1 1700000000 /nix/store/old-top\n\
             {N} record 2\nstorePath=/nix/store/abc-top\ndeployer=ops@laptop\nrevision=dirty\nunit=epnix-a.service\n\
                          {N} record 1\nstorePath=/nix/store/other\n{N} event 1700000200 2 1 unconfirmed 0\n"
        );
        let state = parse_inspect(N, &output).unwrap();
        assert_eq!(state.hostname, "ioc1");
        assert!(state.is_root);
        assert_eq!(state.procserv, Some(HostFacts { procserv: "/usr/bin/procServ".into(), procserv_oneshot: false }));
        assert_eq!(state.profile, Some(Profile { generation: 2, store_path: "/nix/store/abc-top".into() }));
        assert_eq!(state.units["a"], "[Unit]\nX=1\n");
        assert_eq!(state.units["b"], "no newline");
        assert_eq!(state.generations.iter().map(|g| g.number).collect::<Vec<_>>(), [1, 2]);
        let current = state.current_generation().unwrap();
        assert_eq!(current.created, 1700000100);
        let record = state.record_of(current).unwrap();
        assert_eq!((record.deployer.as_str(), record.revision.as_str()), ("ops@laptop", "dirty"));
        assert_eq!(record.iocs, ["a"]);
        assert_eq!(
            state.rollbacks,
            [RollbackEvent { at: 1700000200, from: Some(2), to: Some(1), reason: "unconfirmed".into(), ok: true }]
        );
        assert!(!state.rollback_pending);
        // A record whose build is not the generation's is not trusted.
        assert_eq!(state.record_of(&state.generations[0]), None);
    }

    #[test]
    fn a_bare_host() {
        let output = format!(
            "{N} nix-store-on-path no\n{N} hostname h\n{N} uid 1000\n{N} procserv \n{N} oneshot no\n{N} nix-env \n{N} systemctl /bin/systemctl\n"
        );
        let state = parse_inspect(N, &output).unwrap();
        assert!(!state.is_root);
        assert_eq!(state.procserv, None);
        assert_eq!(state.nix_env, None);
        assert_eq!(state.profile, None);
        assert!(state.units.is_empty());
    }

    #[test]
    fn systemctl_show_for_several_units() {
        let out = "Id=epnix-a.service\nActiveState=active\nSubState=running\nNRestarts=2\nInvocationID=abc\n\
                   ActiveEnterTimestamp=Sun 2026-11-22 02:20:55 UTC\n\nId=epnix-b.service\nActiveState=failed\n";
        let states = parse_show(out);
        let a = &states["epnix-a.service"];
        assert_eq!((a.restarts, a.invocation.as_str(), a.since.as_str()), (2, "abc", "Sun 2026-11-22 02:20:55 UTC"));
        assert_eq!(states["epnix-b.service"].active, "failed");
    }

    #[test]
    fn generation_links() {
        assert_eq!(parse_generation("myTop-12-link"), Some(12));
        assert_eq!(parse_generation("/nix/var/nix/profiles/epnix/my-top-3-link"), Some(3));
        assert_eq!(parse_generation("/nix/store/abc"), None);
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce(), nonce());
    }
}
