//! What a host has now, for one top: read in one round trip (`inspect.sh`)
//! before any plan is made.
//!
//! The host's own Nix profile, its generations' store paths and its systemd
//! units are the source of truth; nothing is cached on the deployer's side.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use camino::Utf8PathBuf;
use schemars::JsonSchema;
use serde::Serialize;

use crate::generation;
use crate::layout;
use crate::remote;
use crate::ssh::Remote;
use crate::unit::HostFacts;

/// The state read from a host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostState {
    pub hostname: String,
    /// The host's clock when it was read, in seconds since the epoch.
    pub now: i64,
    pub is_root: bool,
    /// procServ on the host, if any, and whether it has `--oneshot`.
    pub procserv: Option<HostFacts>,
    /// Where `nix-env` is, if anywhere.
    pub nix_env: Option<String>,
    /// The store path the profile of the host's procServ from Nix points
    /// at, if there is one.
    pub procserv_profile: Option<Utf8PathBuf>,
    pub has_systemctl: bool,
    /// Whether `nix-store` is on the PATH of a non-interactive SSH command,
    /// which is where `nix copy` looks for it.
    pub nix_store_on_ssh_path: bool,
    /// The generation the profile points at now.
    pub current: Option<u32>,
    /// Every `epnix-*.service` file in the unit directory, by IOC name, with
    /// its text: ours and anything that only looks like ours.
    pub units: BTreeMap<String, String>,
    /// The profile's generations, oldest first.
    pub generations: Vec<Generation>,
    /// The units stored in the current generation, when epnix-deploy made it.
    pub current_units: Option<BTreeMap<String, String>>,
    /// The health checks stored in the current generation (its JSON).
    pub current_checks: Option<String>,
    /// What runs for each of this top's units, by IOC name.
    pub processes: BTreeMap<String, Process>,
    /// A switch is not confirmed (yet): its rollback is armed, running, or
    /// due at the next boot.
    pub rollback_pending: bool,
    /// The latest rollbacks, oldest first.
    pub rollbacks: Vec<RollbackEvent>,
    /// Every verdict on a generation, oldest first.
    pub verdicts: Vec<Verdict>,
    /// Of the store paths the inspection asked about, those the host
    /// lacks; `None` when it did not ask, or the host's store could not
    /// say.
    pub missing_paths: Option<BTreeSet<Utf8PathBuf>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub number: u32,
    /// Seconds since the epoch, when the generation was made.
    pub created: i64,
    pub store_path: Utf8PathBuf,
    /// The top's build, when epnix-deploy made the generation (its store
    /// path then holds the build and the units); `None` for a generation
    /// made by hand, whose store path is the build itself.
    pub build: Option<Utf8PathBuf>,
    /// `user@machine` and revision, and the IOCs it runs, when epnix-deploy
    /// made it.
    pub made_by: Option<MadeBy>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MadeBy {
    pub deployer: String,
    pub revision: String,
    pub iocs: Vec<String>,
}

impl Generation {
    /// The top's build this generation runs.
    pub fn top_build(&self) -> &Utf8PathBuf {
        self.build.as_ref().unwrap_or(&self.store_path)
    }
}

/// What became of a generation once it was switched to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Its IOCs passed their checks and the switch was confirmed.
    Healthy,
    /// Its checks failed, and it was rolled back.
    Failed,
    /// The deployer never confirmed it, and the host rolled it back by
    /// itself (also after a reboot).
    Unconfirmed,
    /// It is current and its switch is not confirmed yet.
    Pending,
    /// Made by hand, or never switched to by epnix-deploy.
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Healthy => "healthy",
            Outcome::Failed => "failed",
            Outcome::Unconfirmed => "unconfirmed",
            Outcome::Pending => "pending",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One line of the `outcomes` file: a verdict on generation `number` while
/// it pointed at `store_path` (a number reused after a deletion is another
/// generation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub at: i64,
    pub number: u32,
    pub outcome: Outcome,
    pub store_path: Utf8PathBuf,
}

impl Verdict {
    pub(crate) fn parse(line: &str) -> Option<Verdict> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [at, number, outcome, store_path] = words[..] else { return None };
        let outcome = match outcome {
            "healthy" => Outcome::Healthy,
            "failed" => Outcome::Failed,
            "unconfirmed" => Outcome::Unconfirmed,
            _ => return None,
        };
        Some(Verdict { at: at.parse().ok()?, number: number.parse().ok()?, outcome, store_path: store_path.into() })
    }
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
    /// `failed-checks`, `unconfirmed` (the host did it by itself) or
    /// `reboot` (the host did it at boot).
    pub reason: String,
    /// Whether every step of it succeeded.
    pub ok: bool,
}

impl RollbackEvent {
    pub(crate) fn parse(line: &str) -> Option<RollbackEvent> {
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

/// What runs for one unit: systemd's view, the time its file last changed,
/// and where its IOC process runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Process {
    pub state: UnitState,
    /// When the unit file last changed, in seconds since the epoch.
    pub file_changed: i64,
    /// The working directory of procServ's child, the IOC, when it runs.
    pub cwd: Option<Utf8PathBuf>,
    /// The procServ binary that runs, and the one the unit names now (both
    /// with symlinks resolved), when the unit runs.
    pub procserv: Option<(String, String)>,
}

/// Why a running IOC does not run what its unit and profile say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    /// systemd has not loaded the unit file as it is now.
    UnitNotReloaded,
    /// The unit file changed after the IOC started.
    UnitChangedSinceStart,
    /// The IOC runs another build than the profile's.
    OtherBuild(Utf8PathBuf),
    /// procServ runs another binary than the one the unit names (a new
    /// procServ from Nix, not yet restarted into).
    OtherProcServ(String),
}

impl Drift {
    pub fn describe(&self) -> String {
        match self {
            Drift::UnitNotReloaded => "its unit file changed and systemd has not reloaded it".to_owned(),
            Drift::UnitChangedSinceStart => "its unit file changed after it started".to_owned(),
            Drift::OtherBuild(build) => format!("it runs the build `{build}`, not the profile's"),
            Drift::OtherProcServ(exe) => format!("its procServ runs `{exe}`, not the one its unit names"),
        }
    }
}

impl Process {
    /// How the running IOC differs from its unit file and from `build`, the
    /// build its profile points at; `None` when it runs what they say, or
    /// when it does not run at all (then it only needs a start).
    /// `builds` are the store paths the IOC may run in: the top's build, and
    /// the generation's own (for `workingDirectory = "."`, which resolves to
    /// the generation's store path itself).
    pub fn drift(&self, builds: &[&Utf8PathBuf]) -> Option<Drift> {
        if self.state.active != "active" {
            return None;
        }
        if self.state.need_reload {
            return Some(Drift::UnitNotReloaded);
        }
        // Whole seconds on both sides: a file written in the second the
        // unit started counts as older, since deploys write before they start.
        if self.state.started.is_some_and(|started| self.file_changed > started) {
            return Some(Drift::UnitChangedSinceStart);
        }
        if let Some((runs, named)) = &self.procserv {
            if runs != named {
                return Some(Drift::OtherProcServ(runs.clone()));
            }
        }
        let cwd = self.cwd.as_ref().filter(|_| !builds.is_empty())?;
        let runs = store_path_of(cwd)?;
        (!builds.iter().any(|b| store_path_of(b) == Some(runs))).then(|| Drift::OtherBuild(runs.into()))
    }
}

/// The `/nix/store/<hash>-<name>` a path lies in.
fn store_path_of(path: &camino::Utf8Path) -> Option<&str> {
    let rest = path.as_str().strip_prefix("/nix/store/")?;
    let end = rest.find('/').map_or(path.as_str().len(), |i| "/nix/store/".len() + i);
    Some(&path.as_str()[..end])
}

/// How much of the past an inspection reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// What a plan needs: generations, outcomes, units, processes.
    Current,
    /// Also who made each generation and which IOCs it runs, for `list`:
    /// one more read per generation.
    History,
}

/// Reads the host's state for `top`.
pub fn inspect(remote: &Remote, top: &str, depth: Depth) -> Result<HostState> {
    inspect_asking(remote, top, depth, &[])
}

/// [`inspect`], which also finds which of the `asked` store paths the host
/// lacks ([`HostState::missing_paths`]).
pub fn inspect_asking(remote: &Remote, top: &str, depth: Depth, asked: &[Utf8PathBuf]) -> Result<HostState> {
    let args = inspect_args(depth, asked);
    let output = remote.run(&remote::INSPECT.for_top(top, &args))?;
    parse_inspect(&args[0], &output)
}

/// `inspect.sh`'s own arguments, after the context: a fresh nonce (first),
/// the depth, the profile of the host's procServ from Nix, and the store
/// paths to look for in the host's store ([`HostState::missing_paths`]).
pub fn inspect_args(depth: Depth, asked: &[Utf8PathBuf]) -> Vec<String> {
    let history = if depth == Depth::History { "yes" } else { "no" };
    let asked: Vec<&str> = asked.iter().map(|p| p.as_str()).collect();
    vec![nonce(), history.to_owned(), layout::procserv_profile().into_string(), asked.join("\n")]
}

/// The units and health checks stored in generation `number`; `None` when
/// epnix-deploy did not make it.
pub type Stored = Option<(BTreeMap<String, String>, BTreeMap<String, crate::config::HealthCheck>)>;

pub fn fetch_generation(remote: &Remote, top: &str, number: u32) -> Result<Stored> {
    let nonce = nonce();
    let output = remote.run(&remote::FETCH_GENERATION.for_top(top, &[nonce.as_str(), &number.to_string()]))?;
    let mut units = BTreeMap::new();
    let mut checks = None;
    for (key, value, rest) in records(&nonce, &output)? {
        match key {
            "none" => return Ok(None),
            "unit" => {
                let ioc = layout::ioc_of_unit(value).with_context(|| format!("unexpected unit name `{value}`"))?;
                units.insert(ioc.to_owned(), rest.to_owned());
            }
            "checks" => checks = Some(generation::parse_checks(rest)),
            _ => {}
        }
    }
    Ok(Some((units, checks.unwrap_or_default())))
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

/// Splits a nonce-framed report into `(key, value, following text)`.
pub(crate) fn records<'a>(nonce: &str, output: &'a str) -> Result<Vec<(&'a str, &'a str, &'a str)>> {
    let mut out = Vec::new();
    for record in output.split(nonce).skip(1) {
        let record = record.strip_prefix(' ').context("malformed host report")?;
        let (head, rest) = record.split_once('\n').unwrap_or((record, ""));
        let (key, value) = head.split_once(' ').unwrap_or((head, ""));
        out.push((key, value.trim_end(), rest));
    }
    Ok(out)
}

pub fn parse_inspect(nonce: &str, output: &str) -> Result<HostState> {
    let mut facts: BTreeMap<&str, &str> = BTreeMap::new();
    let mut state = HostState::default();
    let mut current_units: Option<BTreeMap<String, String>> = None;
    let mut runs = WhatRuns::default();
    let (mut builds, mut history) = ("", None);
    for (key, value, rest) in records(nonce, output)? {
        if runs.take(key, value, rest)? {
            continue;
        }
        match key {
            "unit" => {
                let ioc = layout::ioc_of_unit(value).with_context(|| format!("unexpected unit name `{value}`"))?;
                state.units.insert(ioc.to_owned(), rest.to_owned());
            }
            "generation" => state.generations.push(parse_generation_line(value)?),
            "builds" => builds = rest,
            "history" => history = Some(rest),
            "current-units" => current_units = Some(BTreeMap::new()),
            "current-unit" => {
                let ioc = layout::ioc_of_unit(value).with_context(|| format!("unexpected unit name `{value}`"))?;
                current_units.get_or_insert_with(BTreeMap::new).insert(ioc.to_owned(), rest.to_owned());
            }
            "current-checks" => state.current_checks = Some(rest.to_owned()),
            "procserv-profile" => state.procserv_profile = Some(Utf8PathBuf::from(value)),
            "event" => state.rollbacks.extend(RollbackEvent::parse(value)),
            "outcome" => state.verdicts.extend(Verdict::parse(value)),
            "rollback-pending" => state.rollback_pending = true,
            "store-checked" => {
                state.missing_paths.get_or_insert_with(BTreeSet::new);
            }
            "missing" => {
                state.missing_paths.get_or_insert_with(BTreeSet::new).insert(Utf8PathBuf::from(value));
            }
            _ => {
                facts.insert(key, value);
            }
        }
    }
    state.generations.sort_by_key(|g| g.number);
    add_builds(&mut state.generations, builds);
    if let Some(history) = history {
        add_history(&mut state.generations, history);
    }
    state.current_units = current_units;
    state.processes = runs.processes();

    let fact = |key: &str| -> Result<&str> {
        facts.get(key).copied().with_context(|| format!("the host did not report `{key}`"))
    };
    state.procserv = match fact("procserv")? {
        "" => None,
        path => Some(HostFacts { procserv: path.to_owned(), procserv_oneshot: fact("oneshot")? == "yes" }),
    };
    if let Some(link) = facts.get("profile-link") {
        state.current = Some(
            parse_generation(link)
                .with_context(|| format!("the profile points at `{link}`, which is not a generation link"))?,
        );
    }
    state.hostname = fact("hostname")?.to_owned();
    state.now = fact("now")?.parse().context("the host's clock is not a number")?;
    state.is_root = fact("uid")? == "0";
    state.nix_env = Some(fact("nix-env")?).filter(|p| !p.is_empty()).map(str::to_owned);
    state.has_systemctl = !fact("systemctl")?.is_empty();
    state.nix_store_on_ssh_path = fact("nix-store-on-path")? == "yes";
    Ok(state)
}

/// The records of `what_runs` (prelude.sh): systemd's view of some units,
/// their files and their processes, gathered into a [`Process`] per IOC.
#[derive(Default)]
pub(crate) struct WhatRuns {
    show: BTreeMap<String, UnitState>,
    files: BTreeMap<String, (i64, Option<Utf8PathBuf>)>,
    procservs: BTreeMap<String, (String, String)>,
}

impl WhatRuns {
    /// Takes one record if it is one of `what_runs`'; whether it was.
    pub(crate) fn take(&mut self, key: &str, value: &str, rest: &str) -> Result<bool> {
        match key {
            "show" => self.show = parse_show(rest),
            "process" => {
                let mut words = value.splitn(3, ' ');
                let (Some(unit), Some(changed), Some(cwd)) = (words.next(), words.next(), words.next()) else {
                    bail!("bad process line `{value}`");
                };
                let cwd = (cwd != "-").then(|| Utf8PathBuf::from(cwd));
                self.files.insert(unit.to_owned(), (changed.parse().unwrap_or(0), cwd));
            }
            "procserv-of" => {
                // The running binary's path may end in ` (deleted)`.
                let (unit, rest) = value.split_once(' ').with_context(|| format!("bad procServ line `{value}`"))?;
                let (runs, named) = rest.rsplit_once(' ').with_context(|| format!("bad procServ line `{value}`"))?;
                self.procservs.insert(unit.to_owned(), (runs.to_owned(), named.to_owned()));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// What runs for each unit, by IOC name.
    pub(crate) fn processes(mut self) -> BTreeMap<String, Process> {
        let mut processes = BTreeMap::new();
        for (unit, (file_changed, cwd)) in self.files {
            let Some(ioc) = layout::ioc_of_unit(&unit) else { continue };
            let state = self.show.get(&unit).cloned().unwrap_or_default();
            let procserv = self.procservs.remove(&unit);
            processes.insert(ioc.to_owned(), Process { state, file_changed, cwd, procserv });
        }
        processes
    }
}

fn parse_generation_line(line: &str) -> Result<Generation> {
    let words: Vec<&str> = line.split(' ').collect();
    let [number, created, store_path] = words[..] else {
        bail!("bad generation line `{line}`");
    };
    Ok(Generation {
        number: number.parse().with_context(|| format!("bad generation number in `{line}`"))?,
        created: created.parse().with_context(|| format!("bad time in `{line}`"))?,
        store_path: Utf8PathBuf::from(store_path),
        build: None,
        made_by: None,
    })
}

/// The store path that holds `path` (`<store path>/<GENERATION_DIR>…`).
fn store_path_holding(path: &str) -> Option<&str> {
    Some(path.split_once(&format!("/{}", layout::GENERATION_DIR))?.0)
}

/// The `builds` record: `<store path>/<GENERATION_DIR> <the top's build>`
/// lines, for the generations epnix-deploy made (several generations may
/// share a store path).
fn add_builds(generations: &mut [Generation], text: &str) {
    let builds: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(dir, build)| Some((store_path_holding(dir)?, build)))
        .collect();
    for g in generations.iter_mut() {
        g.build = builds.get(g.store_path.as_str()).map(|b| Utf8PathBuf::from(*b));
    }
}

/// The `history` record: `unit <dir> <unit file>` and `meta <file> <line>`
/// lines: who made each generation and which IOCs it runs.
fn add_history(generations: &mut [Generation], text: &str) {
    let mut made: BTreeMap<&str, (String, Vec<String>)> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.splitn(3, ' ');
        let (Some(kind), Some(path), rest) = (words.next(), words.next(), words.next().unwrap_or("")) else {
            continue;
        };
        let Some(store_path) = store_path_holding(path) else { continue };
        let (meta, iocs) = made.entry(store_path).or_default();
        match kind {
            "meta" => {
                meta.push_str(rest);
                meta.push('\n');
            }
            "unit" => iocs.extend(layout::ioc_of_unit(rest).map(str::to_owned)),
            _ => {}
        }
    }
    for g in generations.iter_mut() {
        if let Some((meta, iocs)) = made.get(g.store_path.as_str()) {
            let mut iocs = iocs.clone();
            iocs.sort();
            let (deployer, revision) = generation::parse_meta(meta);
            g.made_by = Some(MadeBy { deployer, revision, iocs });
        }
    }
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

    pub fn current_generation(&self) -> Option<&Generation> {
        let current = self.current?;
        self.generations.iter().find(|g| g.number == current)
    }

    /// What became of `generation`: the latest verdict on it while it
    /// pointed at its present store path.
    pub fn outcome(&self, generation: &Generation) -> Outcome {
        if self.rollback_pending && self.current == Some(generation.number) {
            return Outcome::Pending;
        }
        outcome_of(&self.verdicts, generation.number, &generation.store_path)
    }

    /// Why `ioc`'s running process differs from what its unit and the
    /// current generation say.
    pub fn drift(&self, ioc: &str) -> Option<Drift> {
        let builds: Vec<&Utf8PathBuf> =
            self.current_generation().map(|g| vec![g.top_build(), &g.store_path]).unwrap_or_default();
        self.processes.get(ioc)?.drift(&builds)
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

/// The latest verdict on generation `number` while it pointed at
/// `store_path` (a number reused after a deletion is another generation).
pub(crate) fn outcome_of(verdicts: &[Verdict], number: u32, store_path: &Utf8PathBuf) -> Outcome {
    verdicts
        .iter()
        .rev()
        .find(|v| v.number == number && &v.store_path == store_path)
        .map_or(Outcome::Unknown, |v| v.outcome)
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
    /// When it last became active, in seconds since the epoch, where
    /// systemd says (`--timestamp=unix`).
    pub since: Option<i64>,
    /// When its main process started, likewise.
    pub started: Option<i64>,
    /// Its unit file changed on disk since systemd loaded it.
    pub need_reload: bool,
    /// It starts at boot (`UnitFileState=enabled`).
    pub enabled: bool,
}

/// Reads the output of `systemctl show` for several units, by unit name.
pub fn parse_show(output: &str) -> BTreeMap<String, UnitState> {
    let mut states = BTreeMap::new();
    for block in output.split("\n\n") {
        let field = |key: &str| block.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).unwrap_or("");
        let time = |key: &str| field(key).strip_prefix('@').and_then(|s| s.parse().ok());
        let id = field("Id");
        if !id.is_empty() {
            let state = UnitState {
                active: field("ActiveState").to_owned(),
                sub: field("SubState").to_owned(),
                restarts: field("NRestarts").parse().unwrap_or(0),
                invocation: field("InvocationID").to_owned(),
                since: time("ActiveEnterTimestamp"),
                started: time("ExecMainStartTimestamp"),
                need_reload: field("NeedDaemonReload") == "yes",
                enabled: field("UnitFileState") == "enabled",
            };
            states.insert(id.to_owned(), state);
        }
    }
    states
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: &str = "@@n@@";

    fn report() -> String {
        format!(
            "{N} nix-store-on-path yes\n{N} hostname ioc1\n{N} now 1700000300\n{N} uid 0\n{N} procserv /usr/bin/procServ\n{N} oneshot no\n\
             {N} nix-env /usr/bin/nix-env\n{N} systemctl /usr/bin/systemctl\n{N} profile-link myTop-2-link\n\
             {N} generation 1 1700000000 /nix/store/old-top\n\
             {N} generation 2 1700000100 /nix/store/g2-gen\n\
             {N} builds\n/nix/store/g2-gen/.epnix-deploy /nix/store/abc-top\n\
             {N} history\nmeta /nix/store/g2-gen/.epnix-deploy/meta deployer=ops@laptop\n\
             unit /nix/store/g2-gen/.epnix-deploy/units epnix-a.service\n\
             meta /nix/store/g2-gen/.epnix-deploy/meta revision=dirty\n\
             {N} current-units\n{N} current-unit epnix-a.service\n[Unit]\nX=1\n{N} current-checks\n{{}}\n\
             {N} unit epnix-a.service\n[Unit]\nX=1\n{N} unit epnix-b.service\nno newline\
             {N} show\nId=epnix-a.service\nActiveState=active\nSubState=running\nNRestarts=0\nInvocationID=i1\n\
             ActiveEnterTimestamp=@1700000150\nExecMainStartTimestamp=@1700000150\nNeedDaemonReload=no\n\n\
             {N} process epnix-a.service 1700000149 /nix/store/abc-top/iocBoot/a\n\
             {N} procserv-of epnix-a.service /usr/bin/procServ /usr/bin/procServ\n\
             {N} event 1700000200 3 2 failed-checks 0\n\
             {N} outcome 1700000120 2 healthy /nix/store/g2-gen\n{N} outcome 1700000190 1 failed /nix/store/old-top\n"
        )
    }

    #[test]
    fn a_report_with_generations_units_and_processes() {
        let state = parse_inspect(N, &report()).unwrap();
        assert_eq!(state.hostname, "ioc1");
        assert!(state.is_root);
        assert_eq!(state.procserv, Some(HostFacts { procserv: "/usr/bin/procServ".into(), procserv_oneshot: false }));
        assert_eq!(state.current, Some(2));
        assert_eq!(state.units["a"], "[Unit]\nX=1\n");
        assert_eq!(state.units["b"], "no newline");
        assert_eq!(state.current_units.as_ref().unwrap()["a"], "[Unit]\nX=1\n");
        let current = state.current_generation().unwrap();
        assert_eq!(current.top_build(), "/nix/store/abc-top");
        let made_by = current.made_by.as_ref().unwrap();
        assert_eq!((made_by.deployer.as_str(), made_by.revision.as_str()), ("ops@laptop", "dirty"));
        assert_eq!(made_by.iocs, ["a"]);
        assert_eq!(state.generations[0].top_build(), "/nix/store/old-top");
        assert_eq!(state.generations[0].made_by, None);
        assert_eq!(state.outcome(current), Outcome::Healthy);
        assert_eq!(state.outcome(&state.generations[0]), Outcome::Failed);
        assert_eq!(state.rollbacks[0].reason, "failed-checks");
        assert_eq!(state.processes["a"].state.since, Some(1700000150));
        assert_eq!(state.drift("a"), None);
    }

    #[test]
    fn a_verdict_on_a_reused_number_is_not_trusted() {
        let mut state = parse_inspect(N, &report()).unwrap();
        state.generations[1].store_path = "/nix/store/other-gen".into();
        assert_eq!(state.outcome(&state.generations[1]), Outcome::Unknown);
        state.generations[1].store_path = "/nix/store/g2-gen".into();
        state.rollback_pending = true;
        assert_eq!(state.outcome(&state.generations[1]), Outcome::Pending);
    }

    #[test]
    fn drift_of_a_running_ioc() {
        let build = Utf8PathBuf::from("/nix/store/abc-top");
        let mut p = Process {
            state: UnitState { active: "active".into(), started: Some(100), ..Default::default() },
            file_changed: 100,
            cwd: Some("/nix/store/abc-top/iocBoot/a".into()),
            procserv: Some((
                "/nix/store/p2-procServ/bin/procServ".into(),
                "/nix/store/p2-procServ/bin/procServ".into(),
            )),
        };
        assert_eq!(p.drift(&[&build]), None);
        p.procserv = Some((
            "/nix/store/p1-procServ/bin/procServ (deleted)".into(),
            "/nix/store/p2-procServ/bin/procServ".into(),
        ));
        assert_eq!(
            p.drift(&[&build]),
            Some(Drift::OtherProcServ("/nix/store/p1-procServ/bin/procServ (deleted)".into()))
        );
        p.procserv = None;
        p.cwd = Some("/nix/store/old-top/iocBoot/a".into());
        assert_eq!(p.drift(&[&build]), Some(Drift::OtherBuild("/nix/store/old-top".into())));
        // `workingDirectory = "."`: the IOC runs in the generation's own path.
        p.cwd = Some("/nix/store/g-gen".into());
        assert_eq!(p.drift(&[&build, &"/nix/store/g-gen".into()]), None);
        p.cwd = Some("/nix/store/old-top/iocBoot/a".into());
        p.file_changed = 101;
        assert_eq!(p.drift(&[&build]), Some(Drift::UnitChangedSinceStart));
        p.state.need_reload = true;
        assert_eq!(p.drift(&[&build]), Some(Drift::UnitNotReloaded));
        p.state.active = "activating".into();
        assert_eq!(p.drift(&[&build]), None, "an IOC that does not run only needs a start");
    }

    #[test]
    fn a_bare_host() {
        let output = format!(
            "{N} nix-store-on-path no\n{N} hostname h\n{N} now 1\n{N} uid 1000\n{N} procserv \n{N} oneshot no\n{N} nix-env \n{N} systemctl /bin/systemctl\n"
        );
        let state = parse_inspect(N, &output).unwrap();
        assert!(!state.is_root);
        assert_eq!(state.procserv, None);
        assert_eq!(state.nix_env, None);
        assert_eq!(state.current, None);
        assert!(state.units.is_empty());
    }

    #[test]
    fn systemctl_show_for_several_units() {
        let out = "Id=epnix-a.service\nActiveState=active\nSubState=running\nNRestarts=2\nInvocationID=abc\n\
                   ActiveEnterTimestamp=Sun 2026-11-22 02:20:55 UTC\n\nId=epnix-b.service\nActiveState=failed\n";
        let states = parse_show(out);
        let a = &states["epnix-a.service"];
        assert_eq!((a.restarts, a.invocation.as_str(), a.since), (2, "abc", None));
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
