//! `list`, `status`, `rollback`, `delete-generation` and `remove`: a top's
//! generations on a host, managed from the deployer's machine.
//!
//! None of these evaluates a top or copies anything: the host's profile, its
//! generations' store paths and the outcomes noted next to them are all they
//! read. A generation is the top *and* the units and checks deployed with
//! it, so a rollback restores both and checks them as a deploy would.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::activation::{self, Before, Safety};
use crate::config::{self, Config};
use crate::exit::{BadInput, Exit, Failure};
use crate::host::{self, Generation, HostState, Outcome, RollbackEvent};
use crate::layout;
use crate::plan;
use crate::progress::Progress;
use crate::remote;
use crate::report::{self, Report};
use crate::ssh::Remote;
use crate::table;
use crate::target::{self, Selection, Target};

/// Resolves the host, with the configuration when there is one. The bare
/// `user@hostname[:port]` form needs no flake, so these commands work with no
/// flake at hand.
fn target(sel: &Selection) -> Result<(Target, Option<Config>)> {
    if !config::is_safe_name(&sel.top) {
        return Err(BadInput::new(format!("`{}` is not a valid top name", sel.top)).into());
    }
    if sel.host.contains('@') {
        return Ok((sel.target(None)?, None));
    }
    let config: Config = config::evaluate(&sel.flake).map_err(|err| {
        err.context(format!(
            "`{}` is a host name, which needs the flake's `epnixDeploy.hosts`; without a flake, give the host as `user@hostname[:port]`",
            sel.host
        ))
    })?;
    Ok((sel.target(Some(&config))?, Some(config)))
}

/// How a command that changes a host connects.
#[derive(Clone, Copy, Debug, Default)]
pub struct Changing {
    /// `--skip-hostname-check`.
    pub skip_hostname_check: bool,
}

/// Connects and reads the host. A command that changes it (`changing`)
/// first takes the top's deploy lock, which also checks the SSH user and
/// the host's name, and is refused while a rollback is pending.
fn connect(
    sel: &Selection,
    progress: &Progress,
    changing: Option<Changing>,
    depth: host::Depth,
) -> Result<(Target, Option<Config>, Remote, HostState)> {
    let (target, config) = target(sel)?;
    let step = progress.step(&target.label, "connect");
    let mut remote = Remote::connect(&target)?;
    if let Some(changing) = changing {
        let expect_name = target.name.as_deref().filter(|_| !changing.skip_hostname_check);
        let who = target::deployer();
        if let Some(stale) = activation::take_lock(&mut remote, &target, &sel.top, &who, expect_name, false)? {
            progress.note(&format!("note: took over the lock of a deploy that ended without releasing it ({stale})"));
        }
    }
    let state = host::inspect(&remote, &sel.top, depth)?;
    if changing.is_some() {
        if state.rollback_pending {
            return Err(activation::rollback_pending(&target, &sel.top).into());
        }
        plan::check_manageable(&state, &target.label)?;
    }
    step.done(&format!("hostname `{}`", state.hostname));
    Ok((target, config, remote, state))
}

/// The current generation, or an error that says the top is not there.
fn current<'a>(state: &'a HostState, target: &Target, top: &str) -> Result<&'a Generation, BadInput> {
    state.current_generation().ok_or_else(|| {
        BadInput::new(format!(
            "top `{top}` is not deployed on `{target}`: there is no profile `{}`",
            layout::profile(top)
        ))
        .hint(format!("deploy it first with `epnix-deploy {target} {top}`"))
    })
}

/// One row of `list`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationInfo {
    pub generation: u32,
    /// Seconds since the epoch.
    pub created: i64,
    /// The same time in UTC, for people.
    pub date: String,
    pub current: bool,
    /// What became of it: healthy, failed, unconfirmed, pending or unknown.
    pub outcome: Outcome,
    /// The generation's store path.
    pub store_path: String,
    /// The top's build it runs.
    pub build: String,
    /// `user@machine`, when epnix-deploy made it.
    pub deployer: Option<String>,
    /// The flake's git commit, `dirty`, or `None` when unknown.
    pub revision: Option<String>,
    /// The IOCs the generation runs; `None` for one made by hand.
    pub iocs: Option<Vec<String>>,
    /// The latest time the host rolled back away from this generation.
    pub rolled_back: Option<RolledBackFrom>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolledBackFrom {
    pub at: i64,
    pub date: String,
    /// The generation it went back to; `None` when a first deploy was undone.
    pub to: Option<u32>,
    /// `failed-checks`, `unconfirmed` (the host did it by itself) or `reboot`.
    pub reason: String,
    pub ok: bool,
}

fn info(state: &HostState, g: &Generation) -> GenerationInfo {
    let rolled_back = state.rollbacks.iter().rev().find(|e| e.from == Some(g.number) && e.at >= g.created);
    let made_by = g.made_by.as_ref();
    GenerationInfo {
        generation: g.number,
        created: g.created,
        date: utc_date(g.created),
        current: state.current == Some(g.number),
        outcome: state.outcome(g),
        store_path: g.store_path.to_string(),
        build: g.top_build().to_string(),
        deployer: made_by.map(|m| m.deployer.clone()).filter(|d| !d.is_empty()),
        revision: made_by.map(|m| m.revision.clone()).filter(|r| !r.is_empty()),
        iocs: made_by.map(|m| m.iocs.clone()),
        rolled_back: rolled_back.map(RolledBackFrom::from),
    }
}

pub fn list(sel: &Selection, progress: &Progress) -> Result<Vec<GenerationInfo>> {
    let (target, _, remote, state) = connect(sel, progress, None, host::Depth::History)?;
    remote.close();
    current(&state, &target, &sel.top)?;
    Ok(state.generations.iter().map(|g| info(&state, g)).collect())
}

/// Prints `list`'s table. Store paths are shortened on a terminal unless `wide`.
pub fn print_list(rows: &[GenerationInfo], wide: bool) {
    let shorten = !wide && std::io::stdout().is_terminal();
    let mut table =
        vec![["GEN", "DATE (UTC)", "", "OUTCOME", "BUILD", "DEPLOYER", "REVISION", "IOCS"].map(String::from)];
    for row in rows {
        table.push([
            row.generation.to_string(),
            row.date.clone(),
            if row.current { "(current)".into() } else { String::new() },
            row.outcome.as_str().to_owned(),
            if shorten { short_store_path(&row.build) } else { row.build.clone() },
            row.deployer.clone().unwrap_or_else(|| "-".into()),
            row.revision.as_deref().map_or("-".into(), |r| r.chars().take(12).collect()),
            match &row.iocs {
                None => "(made by hand)".into(),
                Some(iocs) if iocs.is_empty() => "(none)".into(),
                Some(iocs) => iocs.join(", "),
            },
        ]);
    }
    print!("{}", table::render(&table));
    for row in rows {
        if let Some(rb) = &row.rolled_back {
            let why = match rb.reason.as_str() {
                "unconfirmed" => "the switch was not confirmed in time, so the host did it by itself",
                "reboot" => "the host rebooted before the switch was confirmed, and did it at boot",
                "failed-checks" => "its IOCs failed their health checks",
                other => other,
            };
            let failed = if rb.ok { "" } else { " (some steps of the rollback failed)" };
            println!(
                "note: generation {} was rolled back to {} at {} UTC: {why}{failed}",
                row.generation,
                rb.to.map_or("nothing".to_owned(), |t| t.to_string()),
                rb.date
            );
        }
    }
}

impl From<&RollbackEvent> for RolledBackFrom {
    fn from(e: &RollbackEvent) -> RolledBackFrom {
        RolledBackFrom { at: e.at, date: utc_date(e.at), to: e.to, reason: e.reason.clone(), ok: e.ok }
    }
}

/// `status`: where a top stands on a host now.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub host: String,
    pub top: String,
    pub generation: Option<u32>,
    pub outcome: Option<Outcome>,
    pub store_path: Option<String>,
    /// A switch is unconfirmed and its rollback armed, running, or due at boot.
    pub rollback_pending: bool,
    pub iocs: Vec<IocStatus>,
    pub last_rollback: Option<RolledBackFrom>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IocStatus {
    pub ioc: String,
    pub unit: String,
    pub active_state: String,
    pub sub_state: String,
    /// When it last became active, in seconds since the epoch.
    pub since: Option<i64>,
    pub restarts: u64,
    /// Why the running process is not what the unit and the profile say.
    pub drift: Option<String>,
}

pub fn status(sel: &Selection, progress: &Progress) -> Result<Status> {
    let (target, _, remote, state) = connect(sel, progress, None, host::Depth::Current)?;
    remote.close();
    let iocs = state
        .units_of(&sel.top)
        .map(|(ioc, _)| {
            let process = state.processes.get(ioc).cloned().unwrap_or_default();
            IocStatus {
                ioc: ioc.clone(),
                unit: layout::unit_name(ioc),
                active_state: process.state.active.clone(),
                sub_state: process.state.sub.clone(),
                since: process.state.since,
                restarts: process.state.restarts,
                drift: state.drift(ioc).map(|d| d.describe()),
            }
        })
        .collect();
    let current = state.current_generation();
    Ok(Status {
        host: target.label.clone(),
        top: sel.top.clone(),
        generation: state.current,
        outcome: current.map(|g| state.outcome(g)),
        store_path: current.map(|g| g.store_path.to_string()),
        rollback_pending: state.rollback_pending,
        iocs,
        last_rollback: state.rollbacks.last().map(RolledBackFrom::from),
    })
}

pub fn print_status(status: &Status) {
    match (status.generation, &status.store_path) {
        (Some(g), Some(path)) => println!(
            "{} on {}: generation {g}, {} ({path})",
            status.top,
            status.host,
            status.outcome.map_or("unknown", Outcome::as_str)
        ),
        _ => println!("{} on {}: not deployed", status.top, status.host),
    }
    if status.rollback_pending {
        println!("a rollback is pending: the last switch is not confirmed (yet)");
    }
    if let Some(rb) = &status.last_rollback {
        println!(
            "last rollback: {} UTC, to generation {} ({})",
            rb.date,
            rb.to.map_or("none".to_owned(), |t| t.to_string()),
            rb.reason
        );
    }
    let mut rows = vec![["IOC", "UNIT", "STATE", "SINCE (UTC)", "RESTARTS", "DRIFT"].map(String::from)];
    for ioc in &status.iocs {
        rows.push([
            ioc.ioc.clone(),
            ioc.unit.clone(),
            format!("{} ({})", ioc.active_state, ioc.sub_state),
            ioc.since.map_or("-".to_owned(), utc_date),
            ioc.restarts.to_string(),
            ioc.drift.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    print!("{}", table::render(&rows));
}

/// `/nix/store/<hash>-name` as `<first 8 of hash>…-name`.
fn short_store_path(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    match base.split_once('-') {
        Some((hash, name)) if hash.len() > 8 => format!("{}…-{name}", &hash[..8]),
        _ => path.to_owned(),
    }
}

/// What `rollback` should do.
#[derive(Clone, Debug)]
pub struct RollbackOptions {
    pub selection: Selection,
    /// The generation to go to; the newest healthy one before the current
    /// by default.
    pub to: Option<u32>,
    /// Go to a generation whose checks failed, or that was not confirmed.
    pub force: bool,
    pub activation_timeout: Option<Duration>,
    pub no_magic_rollback: bool,
    pub changing: Changing,
}

/// Picks the generation a rollback goes to: `--to N`, or the newest healthy
/// one before the current. Returns it and the ones skipped on the way.
/// `--to` the current generation is refused, unless an IOC does not run
/// what it says (`drifted`): then the rollback converges on it.
fn rollback_target<'a>(
    state: &'a HostState,
    current: &'a Generation,
    to: Option<u32>,
    force: bool,
    drifted: bool,
    target: &Target,
    top: &str,
) -> Result<(&'a Generation, Vec<&'a Generation>), BadInput> {
    let numbers = || state.generations.iter().map(|g| g.number.to_string()).collect::<Vec<_>>().join(", ");
    match to {
        Some(n) if n == current.number && drifted => Ok((current, Vec::new())),
        Some(n) if n == current.number => {
            Err(BadInput::new(format!("generation {n} is already the current generation of `{top}`"))
                .hint(format!("generations on `{target}`: {}", numbers())))
        }
        Some(n) => {
            let g = state.generations.iter().find(|g| g.number == n).ok_or_else(|| {
                BadInput::new(format!("top `{top}` on `{target}` has no generation {n}"))
                    .hint(format!("generations there: {}", numbers()))
            })?;
            match state.outcome(g) {
                outcome @ (Outcome::Failed | Outcome::Unconfirmed) if !force => Err(BadInput::new(format!(
                    "generation {n} of `{top}` is {}: it was rolled back before",
                    outcome.as_str()
                ))
                .hint(format!("`epnix-deploy list {target} {top}` says why; `--force` goes there all the same"))),
                _ => Ok((g, Vec::new())),
            }
        }
        None => {
            let mut skipped = Vec::new();
            for g in state.generations.iter().rev().filter(|g| g.number < current.number) {
                if state.outcome(g) == Outcome::Healthy {
                    return Ok((g, skipped));
                }
                skipped.push(g);
            }
            let others: Vec<String> =
                skipped.iter().map(|g| format!("{} ({})", g.number, state.outcome(g).as_str())).collect();
            Err(BadInput::new(format!(
                "`{top}` on `{target}` has no healthy generation before the current one ({}){}",
                current.number,
                if others.is_empty() { String::new() } else { format!("; older ones: {}", others.join(", ")) }
            ))
            .hint("`epnix-deploy list` shows the generations; `--to N` picks one (with `--force` for a failed one)"))
        }
    }
}

/// Switches the profile to an earlier (or any other) generation, restores
/// the units stored with it, and checks its IOCs with its own checks under
/// an armed rollback, exactly like a deploy. If they fail, the host goes
/// back to where it was before the rollback.
pub fn rollback(opts: &RollbackOptions, progress: &Progress) -> Result<Report> {
    let sel = &opts.selection;
    let (target, config, remote, state) = connect(sel, progress, Some(opts.changing), host::Depth::Current)?;
    let current = current(&state, &target, &sel.top)?;
    let drifted = state.units_of(&sel.top).any(|(ioc, _)| state.drift(ioc).is_some());
    let (wanted, skipped) = rollback_target(&state, current, opts.to, opts.force, drifted, &target, &sel.top)?;
    for g in skipped {
        progress.note(&format!("note: skipped generation {} ({})", g.number, state.outcome(g).as_str()));
    }

    let (units, stored_checks) = match host::fetch_generation(&remote, &sel.top, wanted.number)? {
        Some(stored) => stored,
        None => {
            progress.note(&format!(
                "note: generation {} was not made by epnix-deploy: the top rolls back, the current units stay",
                wanted.number
            ));
            (state.units_of(&sel.top).map(|(n, t)| (n.clone(), t.clone())).collect(), BTreeMap::new())
        }
    };
    let mut plan = plan::switch_to(&sel.top, wanted.number, wanted.top_build(), units, &state, &target.label)?;
    // What the confirmation notes as healthy: this generation, by its path.
    plan.generation_path = Some(wanted.store_path.clone());
    let checks = plan.health_checks(&stored_checks);

    let top = config.as_ref().and_then(|c| c.tops.get(&sel.top));
    let host_magic =
        config.as_ref().zip(target.name.as_ref()).and_then(|(c, n)| c.hosts.get(n)).is_none_or(|h| h.magic_rollback);
    let safety = Safety {
        magic_rollback: !opts.no_magic_rollback && top.is_none_or(|t| t.magic_rollback) && host_magic,
        confirm_timeout: Duration::from_secs(top.map_or(config::DEFAULT_CONFIRM_TIMEOUT_SECS, |t| t.confirm_timeout)),
        activation_timeout: opts.activation_timeout.unwrap_or(Duration::from_secs(
            top.map_or(config::DEFAULT_ACTIVATION_TIMEOUT_SECS, |t| t.activation_timeout),
        )),
    };
    let before = Before { generation: state.current };
    let generation = activation::switch_safely(&remote, &target, &plan, &before, &safety, &checks, progress)?;
    remote.close();
    Ok(report::report(&target, &plan, generation, state.current, false))
}

/// Which generations `delete-generation` removes: nix-env's three forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Doomed {
    Numbers(Vec<u32>),
    /// Older than this many days (the current one always stays).
    OlderThanDays(u32),
    /// All but the newest this many healthy ones (and the current one).
    KeepNewest(u32),
}

#[derive(Clone, Debug)]
pub struct DeleteOptions {
    pub selection: Selection,
    pub doomed: Doomed,
    /// Run the host's garbage collector afterwards.
    pub gc: bool,
    /// Say what would go, change nothing.
    pub dry_run: bool,
    pub changing: Changing,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteReport {
    pub host: String,
    pub top: String,
    pub dry_run: bool,
    pub deleted: Vec<u32>,
    pub remaining: Vec<u32>,
    /// What the garbage collector freed, with `--gc`.
    pub freed: Option<Freed>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Freed {
    pub store_paths: u64,
    pub mebibytes: f64,
}

impl std::fmt::Display for Freed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} store paths, {:.2} MiB", self.store_paths, self.mebibytes)
    }
}

/// The generations `doomed` names, never the current one.
fn doomed_numbers(state: &HostState, current: u32, doomed: &Doomed, now: i64) -> Vec<u32> {
    let all = state.generations.iter().filter(|g| g.number != current);
    match doomed {
        Doomed::Numbers(numbers) => numbers.clone(),
        Doomed::OlderThanDays(days) => {
            all.filter(|g| now - g.created > i64::from(*days) * 86_400).map(|g| g.number).collect()
        }
        Doomed::KeepNewest(n) => {
            let keep: Vec<u32> = state
                .generations
                .iter()
                .rev()
                .filter(|g| state.outcome(g) == Outcome::Healthy)
                .take(*n as usize)
                .map(|g| g.number)
                .collect();
            all.filter(|g| !keep.contains(&g.number)).map(|g| g.number).collect()
        }
    }
}

pub fn delete(opts: &DeleteOptions, progress: &Progress) -> Result<DeleteReport> {
    let sel = &opts.selection;
    let changing = (!opts.dry_run).then_some(opts.changing);
    let (target, _, remote, state) = connect(sel, progress, changing, host::Depth::Current)?;
    let current = current(&state, &target, &sel.top)?.number;
    if let Doomed::Numbers(numbers) = &opts.doomed {
        if numbers.contains(&current) {
            return Err(BadInput::new(format!(
                "generation {current} is the current generation of `{}`; it is not deleted",
                sel.top
            ))
            .hint(format!("roll back first (`epnix-deploy rollback {target} {}`), then delete it", sel.top))
            .into());
        }
        if let Some(n) = numbers.iter().find(|n| !state.generations.iter().any(|g| g.number == **n)) {
            let all: Vec<String> = state.generations.iter().map(|g| g.number.to_string()).collect();
            return Err(BadInput::new(format!("top `{}` on `{target}` has no generation {n}", sel.top))
                .hint(format!("generations there: {}", all.join(", ")))
                .into());
        }
    }
    let mut deleted = doomed_numbers(&state, current, &opts.doomed, state.now);
    deleted.sort_unstable();
    deleted.dedup();
    let remaining: Vec<u32> = state.generations.iter().map(|g| g.number).filter(|n| !deleted.contains(n)).collect();
    let report = |freed| DeleteReport {
        host: target.label.clone(),
        top: sel.top.clone(),
        dry_run: opts.dry_run,
        deleted: deleted.clone(),
        remaining: remaining.clone(),
        freed,
    };
    if opts.dry_run || deleted.is_empty() {
        remote.close();
        return Ok(report(None));
    }

    let step = progress.step(&target.label, "delete");
    let numbers: Vec<String> = deleted.iter().map(u32::to_string).collect();
    remote.run(&remote::DELETE.for_top(&sel.top, &numbers))?;
    step.done(&format!("{} generation(s) deleted", deleted.len()));
    let freed = if opts.gc { collect_garbage(&remote, &target, progress)? } else { None };
    remote.close();
    Ok(report(freed))
}

/// Runs the host's garbage collector; what it freed.
fn collect_garbage(remote: &Remote, target: &Target, progress: &Progress) -> Result<Option<Freed>> {
    let step = progress.step(&target.label, "collect garbage");
    let line = remote.run(&remote::GC.cmd(&[] as &[&str])).context("running the host's garbage collector")?;
    step.done(line.trim());
    Ok(parse_freed(&line))
}

/// Reads the collector's `3 store paths deleted, 1.20 MiB freed`.
fn parse_freed(line: &str) -> Option<Freed> {
    let (paths, rest) = line.trim().split_once(" store paths deleted, ")?;
    let mebibytes = rest.strip_suffix(" MiB freed")?;
    Some(Freed { store_paths: paths.parse().ok()?, mebibytes: mebibytes.parse().ok()? })
}

pub fn print_delete(report: &DeleteReport) {
    let join = |v: &[u32]| {
        if v.is_empty() { "none".to_owned() } else { v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ") }
    };
    let mut rows = vec![
        ["HOST", "TOP", if report.dry_run { "WOULD DELETE" } else { "DELETED" }, "REMAINING", "FREED"]
            .map(String::from),
    ];
    rows.push([
        report.host.clone(),
        report.top.clone(),
        join(&report.deleted),
        join(&report.remaining),
        match &report.freed {
            Some(f) => f.to_string(),
            None if report.dry_run => "- (dry run)".into(),
            None => "- (no --gc)".into(),
        },
    ]);
    print!("{}", table::render(&rows));
}

/// What `remove` should do.
#[derive(Clone, Debug)]
pub struct RemoveOptions {
    pub selection: Selection,
    /// Also delete the profile, its generations and the top's state.
    pub purge: bool,
    /// Run the host's garbage collector afterwards.
    pub gc: bool,
    pub changing: Changing,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveReport {
    pub host: String,
    pub top: String,
    /// The IOCs whose units were stopped and removed.
    pub removed: Vec<String>,
    /// The generations deleted (with `--purge`).
    pub deleted: Vec<u32>,
    pub freed: Option<Freed>,
}

/// Takes a top off a host: stops and removes its units. Its generations
/// stay (a later deploy or rollback brings it back) unless `purge`.
pub fn remove(opts: &RemoveOptions, progress: &Progress) -> Result<RemoveReport> {
    let sel = &opts.selection;
    let (target, _, remote, state) = connect(sel, progress, Some(opts.changing), host::Depth::Current)?;
    if state.current.is_none() && state.units_of(&sel.top).next().is_none() && state.generations.is_empty() {
        return Err(BadInput::new(format!("top `{}` is not on `{target}`: nothing to remove", sel.top)).into());
    }
    let step = progress.step(&target.label, "remove");
    let output = remote.output(&remote::REMOVE.for_top(&sel.top, &[if opts.purge { "yes" } else { "no" }]))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let removed: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("removed "))
        .filter_map(layout::ioc_of_unit)
        .map(str::to_owned)
        .collect();
    let deleted: Vec<u32> = stdout.lines().filter_map(|l| l.strip_prefix("deleted ")?.parse().ok()).collect();
    if !output.status.success() {
        return Err(Failure::new(
            Exit::NeedsAttention,
            format!(
                "removing top `{}` from `{target}` failed halfway ({}): removed {}\n{}\n\
                 hint: look with `epnix-deploy status {target} {}`",
                sel.top,
                output.status,
                if removed.is_empty() { "nothing".to_owned() } else { removed.join(", ") },
                crate::process::tail(&String::from_utf8_lossy(&output.stderr)),
                sel.top
            ),
        )
        .into());
    }
    step.done(&format!("{} unit(s) removed", removed.len()));
    let freed = if opts.gc { collect_garbage(&remote, &target, progress)? } else { None };
    remote.close();
    Ok(RemoveReport { host: target.label.clone(), top: sel.top.clone(), removed, deleted, freed })
}

pub fn print_remove(report: &RemoveReport) {
    let list = |v: Vec<String>| if v.is_empty() { "none".to_owned() } else { v.join(", ") };
    let mut rows = vec![["HOST", "TOP", "REMOVED", "DELETED", "FREED"].map(String::from)];
    rows.push([
        report.host.clone(),
        report.top.clone(),
        list(report.removed.clone()),
        list(report.deleted.iter().map(u32::to_string).collect()),
        report.freed.as_ref().map_or("-".to_owned(), Freed::to_string),
    ]);
    print!("{}", table::render(&rows));
}

/// Parses `--older-than`'s `30d`.
pub fn parse_days(text: &str) -> Result<u32, BadInput> {
    text.strip_suffix('d').and_then(|n| n.parse().ok()).ok_or_else(|| {
        BadInput::new(format!("`--older-than {text}` is not a number of days"))
            .hint("write it as nix-env does, e.g. `30d`")
    })
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM` in UTC.
fn utc_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Days to a civil date, after Howard Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Verdict;

    #[test]
    fn dates_in_utc() {
        assert_eq!(utc_date(0), "1970-01-01 00:00");
        assert_eq!(utc_date(1_795_314_273), "2026-11-22 02:24");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00");
    }

    #[test]
    fn store_paths_shorten_to_hash_prefix_and_name() {
        assert_eq!(short_store_path("/nix/store/637jmx64rzqbcx8nmhggpywpyiyjqcyc-myTop"), "637jmx64…-myTop");
        assert_eq!(short_store_path("odd"), "odd");
    }

    #[test]
    fn older_than_takes_days() {
        assert_eq!(parse_days("30d").unwrap(), 30);
        assert!(parse_days("30").unwrap_err().to_string().contains("e.g. `30d`"));
    }

    #[test]
    fn the_collector_line_is_numbers() {
        assert_eq!(
            parse_freed("3 store paths deleted, 1.20 MiB freed\n"),
            Some(Freed { store_paths: 3, mebibytes: 1.2 })
        );
        assert_eq!(parse_freed("nothing"), None);
    }

    /// Generations 1..=6, current 6; `failed` are rolled back, the others healthy.
    fn six(failed: &[u32]) -> HostState {
        let generations: Vec<Generation> = (1..=6)
            .map(|n| Generation {
                number: n,
                created: i64::from(n) * 100,
                store_path: format!("/nix/store/g{n}").into(),
                build: None,
                made_by: None,
            })
            .collect();
        let verdicts = generations
            .iter()
            .map(|g| Verdict {
                at: g.created + 1,
                number: g.number,
                outcome: if failed.contains(&g.number) { Outcome::Failed } else { Outcome::Healthy },
                store_path: g.store_path.clone(),
            })
            .collect();
        HostState { current: Some(6), generations, verdicts, ..HostState::default() }
    }

    #[test]
    fn rollback_skips_failed_generations_and_says_so() {
        let state = six(&[4, 5]);
        let target = Target::resolve("root@h", None).unwrap();
        let current = state.current_generation().unwrap();
        let (to, skipped) = rollback_target(&state, current, None, false, false, &target, "t").unwrap();
        assert_eq!(to.number, 3);
        assert_eq!(skipped.iter().map(|g| g.number).collect::<Vec<_>>(), [5, 4]);
        let err = rollback_target(&state, current, Some(5), false, false, &target, "t").unwrap_err().to_string();
        assert!(err.contains("generation 5 of `t` is failed") && err.contains("--force"), "{err}");
        assert_eq!(rollback_target(&state, current, Some(5), true, false, &target, "t").unwrap().0.number, 5);
        // The current generation: only to converge on it.
        assert!(rollback_target(&state, current, Some(6), false, false, &target, "t").is_err());
        assert_eq!(rollback_target(&state, current, Some(6), false, true, &target, "t").unwrap().0.number, 6);

        let none_healthy = six(&[1, 2, 3, 4, 5]);
        let err = rollback_target(&none_healthy, current, None, false, false, &target, "t").unwrap_err().to_string();
        assert!(err.contains("no healthy generation before the current one (6)"), "{err}");
    }

    #[test]
    fn keep_counts_healthy_generations_only() {
        let state = six(&[4, 5]);
        // Keep the newest 3 healthy (6, 3, 2) and the current (6).
        assert_eq!(doomed_numbers(&state, 6, &Doomed::KeepNewest(3), 0), [1, 4, 5]);
        assert_eq!(doomed_numbers(&state, 6, &Doomed::OlderThanDays(0), 700), [1, 2, 3, 4, 5]);
    }
}
