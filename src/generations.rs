//! `list`, `rollback` and `delete-generation`: a top's generations on a
//! host, managed from the deployer's machine.
//!
//! None of these evaluates a top or copies anything: the host's profile and
//! the records next to it are all they read. A generation is the top *and*
//! the units deployed with it, so a rollback restores both.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::activation;
use crate::config::{self, Config};
use crate::deploy::{self, Report};
use crate::exit::BadInput;
use crate::host::{self, Generation, HostState, RollbackEvent};
use crate::layout;
use crate::plan;
use crate::progress::Progress;
use crate::ssh::{Remote, RemoteCmd};
use crate::table;
use crate::target::{Selection, Target};

/// Resolves the host. The bare `user@hostname[:port]` form needs no flake,
/// so `list` works with no flake at hand.
fn target(sel: &Selection) -> Result<Target> {
    if !config::is_safe_name(&sel.top) {
        return Err(BadInput::new(format!("`{}` is not a valid top name", sel.top)).into());
    }
    if sel.host.contains('@') {
        return Ok(sel.target(None)?);
    }
    let config: Config = deploy::evaluate(&sel.flake).map_err(|err| {
        err.context(format!(
            "`{}` is a host name, which needs the flake's `epnixDeploy.hosts`; without a flake, give the host as `user@hostname[:port]`",
            sel.host
        ))
    })?;
    Ok(sel.target(Some(&config))?)
}

/// Connects and reads the host; with `lock`, first takes the top's deploy
/// lock, as every command that changes the host does.
fn connect(sel: &Selection, progress: &Progress, lock: bool) -> Result<(Target, Remote, HostState)> {
    let target = target(sel)?;
    let step = progress.step(&target.label, "connect");
    let mut remote = Remote::connect(&target)?;
    if lock {
        if let Some(stale) = activation::take_lock(&mut remote, &target, &sel.top, &deploy::deployer(), false)? {
            progress.note(&format!("note: took over the lock of a deploy that ended without releasing it ({stale})"));
        }
    }
    let state = deploy::inspect(&remote, &sel.top)?;
    step.done(&format!("hostname `{}`", state.hostname));
    Ok((target, remote, state))
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
    pub store_path: String,
    /// `user@machine`, when a deploy recorded it.
    pub deployer: Option<String>,
    /// The flake's git commit, `dirty`, or `None` when unknown.
    pub revision: Option<String>,
    /// The IOCs the generation installed; `None` without a record.
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
    /// `unconfirmed` (the host did it by itself) or `failed-checks`.
    pub reason: String,
    pub ok: bool,
}

pub fn list(sel: &Selection, progress: &Progress) -> Result<Vec<GenerationInfo>> {
    let (target, remote, state) = connect(sel, progress, false)?;
    remote.close();
    let current = current(&state, &target, &sel.top)?.number;
    Ok(state
        .generations
        .iter()
        .map(|g| {
            let record = state.record_of(g);
            let rolled_back = state.rollbacks.iter().rev().find(|e| e.from == Some(g.number) && e.at >= g.created);
            GenerationInfo {
                generation: g.number,
                created: g.created,
                date: utc_date(g.created),
                current: g.number == current,
                store_path: g.store_path.to_string(),
                deployer: record.map(|r| r.deployer.clone()).filter(|d| !d.is_empty()),
                revision: record.map(|r| r.revision.clone()).filter(|r| !r.is_empty()),
                iocs: record.map(|r| r.iocs.clone()),
                rolled_back: rolled_back.map(RolledBackFrom::from),
            }
        })
        .collect())
}

/// Prints `list`'s table. Store paths are shortened on a terminal unless `wide`.
pub fn print_list(rows: &[GenerationInfo], wide: bool) {
    let shorten = !wide && std::io::stdout().is_terminal();
    let mut table = vec![["GEN", "DATE (UTC)", "", "STORE PATH", "DEPLOYER", "REVISION", "IOCS"].map(String::from)];
    for row in rows {
        table.push([
            row.generation.to_string(),
            row.date.clone(),
            if row.current { "(current)".into() } else { String::new() },
            if shorten { short_store_path(&row.store_path) } else { row.store_path.clone() },
            row.deployer.clone().unwrap_or_else(|| "-".into()),
            row.revision.as_deref().map_or("-".into(), |r| r.chars().take(12).collect()),
            row.iocs.as_ref().map_or("(no record)".into(), |iocs| iocs.join(", ")),
        ]);
    }
    print!("{}", table::render(&table));
    for row in rows {
        if let Some(rb) = &row.rolled_back {
            let why = match rb.reason.as_str() {
                "unconfirmed" => "the deploy was not confirmed in time, so the host did it by itself",
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
    pub store_path: Option<String>,
    /// A deploy is unconfirmed and its rollback armed, or a rollback runs.
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
    pub since: String,
    pub restarts: u64,
}

pub fn status(sel: &Selection, progress: &Progress) -> Result<Status> {
    let (target, remote, state) = connect(sel, progress, false)?;
    let iocs: Vec<String> = state.units_of(&sel.top).map(|(n, _)| n.clone()).collect();
    let mut statuses = Vec::new();
    if !iocs.is_empty() {
        let output = remote.run(&host::show_units_cmd(iocs.iter().map(|n| layout::unit_name(n))))?;
        for (unit, state) in host::parse_show(&output) {
            if let Some(ioc) = layout::ioc_of_unit(&unit) {
                statuses.push(IocStatus {
                    ioc: ioc.to_owned(),
                    unit: unit.clone(),
                    active_state: state.active,
                    sub_state: state.sub,
                    since: state.since,
                    restarts: state.restarts,
                });
            }
        }
    }
    remote.close();
    let last_rollback = state.rollbacks.last().map(RolledBackFrom::from);
    Ok(Status {
        host: target.label.clone(),
        top: sel.top.clone(),
        generation: state.profile.as_ref().map(|p| p.generation),
        store_path: state.profile.as_ref().map(|p| p.store_path.to_string()),
        rollback_pending: state.rollback_pending,
        iocs: statuses,
        last_rollback,
    })
}

pub fn print_status(status: &Status) {
    match (status.generation, &status.store_path) {
        (Some(g), Some(path)) => println!("{} on {}: generation {g} ({path})", status.top, status.host),
        _ => println!("{} on {}: not deployed", status.top, status.host),
    }
    if status.rollback_pending {
        println!("a rollback is armed: the last deploy is not confirmed yet");
    }
    if let Some(rb) = &status.last_rollback {
        println!(
            "last rollback: {} UTC, to generation {} ({})",
            rb.date,
            rb.to.map_or("none".to_owned(), |t| t.to_string()),
            rb.reason
        );
    }
    let mut rows = vec![["IOC", "UNIT", "STATE", "SINCE", "RESTARTS"].map(String::from)];
    for ioc in &status.iocs {
        rows.push([
            ioc.ioc.clone(),
            ioc.unit.clone(),
            format!("{} ({})", ioc.active_state, ioc.sub_state),
            ioc.since.clone(),
            ioc.restarts.to_string(),
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
    /// The generation to go to; the one before the current by default.
    pub to: Option<u32>,
    pub activation_timeout: Duration,
}

/// Switches the profile to an earlier (or any other) generation and
/// restores the units recorded with it.
pub fn rollback(opts: &RollbackOptions, progress: &Progress) -> Result<Report> {
    let sel = &opts.selection;
    let (target, remote, state) = connect(sel, progress, true)?;
    plan::check_manageable(&state, &target.label)?;
    let current = current(&state, &target, &sel.top)?;
    let numbers = || state.generations.iter().map(|g| g.number.to_string()).collect::<Vec<_>>().join(", ");
    let wanted = match opts.to {
        Some(n) if n == current.number => {
            return Err(BadInput::new(format!("generation {n} is already the current generation of `{}`", sel.top))
                .hint(format!("generations on `{target}`: {}", numbers()))
                .into());
        }
        Some(n) => state.generations.iter().find(|g| g.number == n).ok_or_else(|| {
            BadInput::new(format!("top `{}` on `{target}` has no generation {n}", sel.top))
                .hint(format!("generations there: {}", numbers()))
        })?,
        None => state.generations.iter().rev().find(|g| g.number < current.number).ok_or_else(|| {
            BadInput::new(format!(
                "generation {} is the oldest generation of `{}` on `{target}`: there is nothing to roll back to",
                current.number, sel.top
            ))
            .hint("`epnix-deploy list` shows the generations; `--to N` picks a newer one")
        })?,
    };

    let units = match state.record_of(wanted) {
        Some(_) => {
            let nonce = host::nonce();
            host::parse_record_units(&nonce, &remote.run(&host::fetch_record_cmd(&nonce, &sel.top, wanted.number))?)?
        }
        None => {
            progress.note(&format!(
                "note: generation {} has no record (it was not made by epnix-deploy): the top rolls back, the current units stay",
                wanted.number
            ));
            state.units_of(&sel.top).map(|(n, t)| (n.clone(), t.clone())).collect()
        }
    };
    let plan = plan::switch_to(&sel.top, wanted.number, &wanted.store_path, units, &state, &target.label)?;
    let generation =
        deploy::activate(&remote, &plan, Some(current.number), progress, &target, opts.activation_timeout)?;
    remote.close();
    Ok(deploy::report(&target, &plan, generation, Some(current.number), false))
}

/// Which generations `delete-generation` removes: nix-env's three forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Doomed {
    Numbers(Vec<u32>),
    /// Older than this many days (the current one always stays).
    OlderThanDays(u32),
    /// All but the newest this many (and the current one).
    KeepNewest(u32),
}

#[derive(Clone, Debug)]
pub struct DeleteOptions {
    pub selection: Selection,
    pub doomed: Doomed,
    /// Run the host's garbage collector afterwards.
    pub gc: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteReport {
    pub host: String,
    pub top: String,
    pub deleted: Vec<u32>,
    pub remaining: Vec<u32>,
    /// What the garbage collector said it freed, with `--gc`.
    pub freed: Option<String>,
}

/// `$1` profile, `$2` records directory, then nix-env's arguments. Deletes
/// the generations, then the records of generations that are gone.
const DELETE_GENERATIONS: &str = r#"set -eu
PATH="$PATH:/nix/var/nix/profiles/default/bin:/run/current-system/sw/bin"
profile=$1 records=$2; shift 2
nix-env --profile "$profile" --delete-generations "$@"
for rec in "$records"/*/; do
  rec=${rec%/}; n=${rec##*/}
  case $n in ''|*[!0-9]*) continue ;; esac
  [ -L "$profile-$n-link" ] || rm -rf "$rec"
done
"#;

/// Prints the collector's closing line, e.g. `3 store paths deleted, 1.20 MiB freed`.
const COLLECT_GARBAGE: &str = r#"set -eu
PATH="$PATH:/nix/var/nix/profiles/default/bin:/run/current-system/sw/bin"
nix-store --gc 2>&1 | tail -n 1
"#;

pub fn delete(opts: &DeleteOptions, progress: &Progress) -> Result<DeleteReport> {
    let sel = &opts.selection;
    let (target, remote, state) = connect(sel, progress, true)?;
    plan::check_manageable(&state, &target.label)?;
    let current = current(&state, &target, &sel.top)?.number;
    let args: Vec<String> = match &opts.doomed {
        Doomed::Numbers(numbers) => {
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
            numbers.iter().map(u32::to_string).collect()
        }
        Doomed::OlderThanDays(days) => vec![format!("{days}d")],
        Doomed::KeepNewest(n) => vec![format!("+{n}")],
    };

    let step = progress.step(&target.label, "delete");
    let profile = layout::profile(&sel.top);
    let records = layout::records(&sel.top);
    let mut argv = vec![profile.as_str(), records.as_str()];
    argv.extend(args.iter().map(String::as_str));
    remote.run(&RemoteCmd::script(DELETE_GENERATIONS, &argv))?;
    let after = deploy::inspect(&remote, &sel.top)?;
    let remaining: Vec<u32> = after.generations.iter().map(|g| g.number).collect();
    let deleted: Vec<u32> = state.generations.iter().map(|g| g.number).filter(|n| !remaining.contains(n)).collect();
    step.done(&format!("{} generation(s) deleted", deleted.len()));

    let freed = if opts.gc {
        let step = progress.step(&target.label, "collect garbage");
        let line =
            remote.run(&RemoteCmd::script(COLLECT_GARBAGE, &[])).context("running the host's garbage collector")?;
        let line = line.trim().to_owned();
        step.done(&line);
        Some(line)
    } else {
        None
    };
    remote.close();
    Ok(DeleteReport { host: target.label.clone(), top: sel.top.clone(), deleted, remaining, freed })
}

pub fn print_delete(report: &DeleteReport) {
    let join = |v: &[u32]| {
        if v.is_empty() { "none".to_owned() } else { v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ") }
    };
    let mut rows = vec![["HOST", "TOP", "DELETED", "REMAINING", "FREED"].map(String::from)];
    rows.push([
        report.host.clone(),
        report.top.clone(),
        join(&report.deleted),
        join(&report.remaining),
        report.freed.clone().unwrap_or_else(|| "- (no --gc)".into()),
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
}
