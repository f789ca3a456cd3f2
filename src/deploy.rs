//! `epnix-deploy <host> <top>`: evaluate, build, copy, switch, start.
//!
//! The pipeline reads the configuration and the host before it changes
//! anything, so every error found up to the plan leaves the host as it was.
//! Each stage is a function; the activation check is one stage, so health
//! checks and rollback replace it without touching the rest.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;

use crate::config::{self, Config, Top};
use crate::exit::BadInput;
use crate::host::{self, HostState, Record};
use crate::layout;
use crate::nix;
use crate::plan::{self, Action, Plan, Switch};
use crate::process::{Cmd, tail};
use crate::progress::Progress;
use crate::ssh::{Remote, RemoteCmd};
use crate::target::Selection;
use crate::target::Target;

/// What the user asked for, checked by the CLI layer.
#[derive(Clone, Debug)]
pub struct DeployOptions {
    pub selection: Selection,
    pub dry_run: bool,
    pub substitute_on_destination: bool,
    /// How long IOC units may take to become active.
    pub activation_timeout: Duration,
}

/// The outcome of a deploy, printed as the summary or as `--json`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub host: String,
    pub top: String,
    pub store_path: Utf8PathBuf,
    /// The profile generation the top runs from; `None` on a dry run of a
    /// first deploy.
    pub generation: Option<u32>,
    /// The generation before, when the profile moved.
    pub previous_generation: Option<u32>,
    pub new_generation: bool,
    pub dry_run: bool,
    pub iocs: BTreeMap<String, &'static str>,
}

pub fn run(opts: &DeployOptions, progress: &Progress) -> Result<Report> {
    let sel = &opts.selection;
    let step = progress.step(&sel.host, "evaluate");
    let config = evaluate(&sel.flake)?;
    let (top, target) = select(&config, sel)?;
    let revision = nix::parse_revision(&nix::flake_metadata(&sel.flake).output()?)?;
    step.done(&format!("top `{}`, {} IOC(s)", sel.top, top.iocs.values().filter(|i| i.enable).count()));

    let step = progress.step(&sel.host, "build");
    let store_path = build(&sel.flake, &sel.top)?;
    check_top_contents(&sel.top, top, &store_path)?;
    step.done(store_path.as_str());

    let step = progress.step(&sel.host, "connect");
    let remote = Remote::connect(&target)?;
    let state = inspect(&remote, &sel.top)?;
    let facts = plan::host_facts(&state, &target.label)?;
    let units = plan::render_units(&sel.top, top, &facts);
    let meta = Record::meta(store_path.as_str(), &deployer(), &revision);
    let plan = plan::deploy(&sel.top, &store_path, units, meta, &state, &target.label)?;
    step.done(&format!("hostname `{}`", state.hostname));

    let current = state.profile.as_ref().map(|p| p.generation);
    if opts.dry_run {
        print_dry_run(&plan, &state, &target, &remote, opts.substitute_on_destination);
        remote.close();
        return Ok(report(&target, &plan, current, current, true));
    }

    if plan.top_changed {
        let step = progress.step(&sel.host, "copy");
        copy_cmd(&target, &remote, &state, &plan, opts.substitute_on_destination).output()?;
        step.done("");
    }

    let generation = activate(&remote, &plan, current, progress, &target, opts.activation_timeout)?;
    remote.close();
    Ok(report(&target, &plan, generation, current, false))
}

/// Carries out a plan's changes and waits until its IOCs run: the stage
/// that deploys and rollbacks share. Returns the generation the host runs.
pub fn activate(
    remote: &Remote,
    plan: &Plan,
    current: Option<u32>,
    progress: &Progress,
    target: &Target,
    timeout: Duration,
) -> Result<Option<u32>> {
    let step = progress.step(&target.label, "switch");
    let generation = apply(remote, plan)?.or(current);
    step.done(&match (generation, &plan.switch) {
        (Some(g), Switch::Stay) => format!("generation {g} (unchanged)"),
        (Some(g), _) => format!("generation {g}"),
        (None, _) => String::new(),
    });

    let step = progress.step(&target.label, "activate");
    wait_active(remote, &plan.running(), timeout, &step)?;
    step.done(&format!("{} IOC(s) active", plan.running().len()));
    Ok(generation)
}

/// Who deploys, as `user@machine`, for the record.
fn deployer() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".to_owned());
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned());
    format!("{user}@{}", machine.unwrap_or_else(|_| "unknown".to_owned()))
}

/// `nix copy` of the build to the host, over the open master connection.
fn copy_cmd(target: &Target, remote: &Remote, state: &HostState, plan: &Plan, substitute: bool) -> Cmd {
    let socket = remote.control_socket().to_string_lossy();
    let remote_nix_store = state.remote_nix_store();
    nix::copy_to(target, &socket, plan.store_path.as_str(), remote_nix_store.as_deref(), substitute)
}

pub fn report(target: &Target, plan: &Plan, generation: Option<u32>, previous: Option<u32>, dry_run: bool) -> Report {
    Report {
        host: target.label.clone(),
        top: plan.top.clone(),
        store_path: plan.store_path.clone(),
        generation,
        previous_generation: previous,
        new_generation: matches!(plan.switch, Switch::NewGeneration { .. }),
        dry_run,
        iocs: plan.iocs.iter().map(|(name, change)| (name.clone(), change.as_str())).collect(),
    }
}

/// Reads `epnixDeploy` from the flake. A flake that does not evaluate is bad
/// input: nothing has been touched yet.
pub fn evaluate(flake: &str) -> Result<Config> {
    let cmd = nix::eval_config(flake);
    let json = cmd.output().map_err(|err| {
        BadInput::new(format!("could not evaluate `{flake}#epnixDeploy`:\n{err}"))
            .hint("check that the flake has an `epnixDeploy` output; run the command above to see the whole error")
    })?;
    let value: serde_json::Value = serde_json::from_str(&json).context("reading the JSON of `nix eval`")?;
    Ok(Config::parse(&value)?)
}

/// Picks the top and the host, and checks that they belong together.
fn select<'a>(config: &'a Config, sel: &Selection) -> Result<(&'a Top, Target), BadInput> {
    let top_name = sel.top.as_str();
    let top = config.tops.get(top_name).ok_or_else(|| {
        let known: Vec<&str> = config.tops.keys().map(String::as_str).collect();
        BadInput::new(format!("there is no top `{top_name}` in `{}.tops`", config::ROOT))
            .hint(format!("configured tops: {}", if known.is_empty() { "none".to_owned() } else { known.join(", ") }))
    })?;
    let target = sel.target(Some(config))?;
    if let Some(name) = &target.name {
        if !top.hosts.contains(name) {
            return Err(BadInput::new(format!(
                "top `{top_name}` is not assigned to host `{name}` (`{}.tops.{}.hosts`)",
                config::ROOT,
                config::attr(top_name)
            ))
            .hint(format!("add \"{name}\" to that list, or deploy to `user@hostname` to bypass the assignment")));
        }
    }
    Ok((top, target))
}

fn build(flake: &str, top: &str) -> Result<Utf8PathBuf> {
    let stdout = nix::build_top(flake, top).output().map_err(|err| {
        BadInput::new(format!("building top `{top}` failed:\n{err}"))
            .hint("nothing was copied; fix the build and deploy again")
    })?;
    nix::parse_build_output(&stdout)
}

/// Every enabled IOC's working directory and startup script must be in the
/// build, or procServ would fail on the host after the switch.
pub fn check_top_contents(top_name: &str, top: &Top, store_path: &Utf8Path) -> Result<(), BadInput> {
    for (name, ioc) in top.iocs.iter().filter(|(_, ioc)| ioc.enable) {
        let path = format!("{}.tops.{}.iocs.{}", config::ROOT, config::attr(top_name), config::attr(name));
        let dir = store_path.join(&ioc.working_directory);
        if !dir.is_dir() {
            return Err(BadInput::new(format!(
                "{path}.workingDirectory: `{}` is not a directory of the built top (`{dir}`)",
                ioc.working_directory
            ))
            .hint("check the path, and that the top's build installs that directory"));
        }
        let script = store_path.join(ioc.startup_script_in_top());
        let mode = std::fs::metadata(&script).map(|m| m.permissions().mode());
        match mode {
            Ok(mode) if script.is_file() && mode & 0o111 != 0 => {}
            Ok(_) if script.is_file() => {
                return Err(BadInput::new(format!("{path}.startupScript: `{script}` is not executable")).hint(
                    "procServ runs the script directly: make it executable in the top's build, with a `#!` line",
                ));
            }
            _ => {
                return Err(BadInput::new(format!(
                    "{path}.startupScript: `{}` is not in the built top (looked for `{script}`)",
                    ioc.startup_script
                ))
                .hint("check the path (it is relative to `workingDirectory`), and that the top's build installs it"));
            }
        }
    }
    Ok(())
}

pub fn inspect(remote: &Remote, top: &str) -> Result<HostState> {
    let nonce = host::nonce();
    let output = remote.run(&host::inspect_cmd(&nonce, top))?;
    host::parse_inspect(&nonce, &output)
}

/// Carries out the plan's actions; returns the new generation, if one was made.
fn apply(remote: &Remote, plan: &Plan) -> Result<Option<u32>> {
    let mut generation = None;
    for action in plan.actions() {
        let stdout = remote.run(&plan::remote_cmd(plan, &action))?;
        if matches!(action, Action::SetProfile | Action::SwitchGeneration(_)) {
            let link = stdout.trim();
            generation =
                Some(host::parse_generation(link).with_context(|| format!("`nix-env` left the profile at `{link}`"))?);
        }
    }
    Ok(generation)
}

/// Waits until every unit is active. A unit that fails or keeps restarting
/// is reported with the end of its journal.
fn wait_active(remote: &Remote, iocs: &[String], timeout: Duration, step: &crate::progress::Step) -> Result<()> {
    if iocs.is_empty() {
        return Ok(());
    }
    let units: Vec<String> = iocs.iter().map(|n| layout::unit_name(n)).collect();
    let show = RemoteCmd::new(
        ["systemctl", "show", "--property=Id,ActiveState,SubState,NRestarts"]
            .into_iter()
            .map(String::from)
            .chain(units.iter().cloned()),
    );
    let started = Instant::now();
    let first = parse_show(&remote.run(&show)?);
    loop {
        let states = parse_show(&remote.run(&show)?);
        let waiting: Vec<&String> =
            units.iter().filter(|u| states.get(*u).is_none_or(|s| s.active != "active")).collect();
        if waiting.is_empty() {
            return Ok(());
        }
        step.update(&format!("waiting for {}", waiting.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")));
        // A unit that failed, or that systemd restarted while we waited, is
        // crashing: waiting longer only hides it.
        let crashing = waiting.iter().find(|u| {
            states
                .get(**u)
                .is_some_and(|s| s.active == "failed" || first.get(**u).is_some_and(|f| s.restarts > f.restarts))
        });
        if let Some(unit) = crashing.or(if started.elapsed() > timeout { waiting.first() } else { None }) {
            let UnitState { active, sub, .. } = states.get(*unit).cloned().unwrap_or_default();
            let journal = remote
                .run(&RemoteCmd::new(["journalctl", "--no-pager", "--lines=20", "--unit", unit.as_str()]))
                .unwrap_or_default();
            bail!(
                "`{unit}` is {active} ({sub}) after {:.0}s; the new version stays installed\nlast lines of its journal:\n{}\nhint: look on the host with `systemctl status {unit}`",
                started.elapsed().as_secs_f64(),
                tail(&journal)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct UnitState {
    active: String,
    sub: String,
    restarts: u64,
}

/// Reads `systemctl show --property=Id,ActiveState,SubState,NRestarts` for
/// several units.
fn parse_show(output: &str) -> BTreeMap<String, UnitState> {
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
            };
            states.insert(id, state);
        }
    }
    states
}

fn print_dry_run(plan: &Plan, state: &HostState, target: &Target, remote: &Remote, substitute: bool) {
    let profile = layout::profile(&plan.top);
    println!("Plan for top `{}` on `{}` (dry run: nothing changes)", plan.top, target.label);
    match (&state.profile, &plan.switch) {
        (Some(p), Switch::Stay) => {
            println!("  profile {profile}: stays at generation {} ({})", p.generation, p.store_path)
        }
        (Some(p), _) => println!(
            "  profile {profile}: generation {} ({}) -> new generation ({})",
            p.generation, p.store_path, plan.store_path
        ),
        (None, _) => println!("  profile {profile}: new, generation 1 ({})", plan.store_path),
    }
    for (name, change) in &plan.iocs {
        println!("  {} ({}): {}", name, layout::unit_name(name), change.as_str());
    }
    println!("Commands:");
    if plan.top_changed {
        println!("  local: {}", copy_cmd(target, remote, state, plan, substitute));
    }
    for action in plan.actions() {
        println!("  on {}: {}", target.label, plan::remote_cmd(plan, &action));
    }
    if !plan.running().is_empty() {
        println!(
            "  then wait until {} is active",
            plan.running().iter().map(|n| layout::unit_name(n)).collect::<Vec<_>>().join(", ")
        );
    }
}

/// Prints the summary table on stdout.
pub fn print_summary(report: &Report) {
    let generation = match (report.generation, report.previous_generation) {
        (_, _) if report.dry_run => "dry run".to_owned(),
        (Some(g), _) if report.new_generation => format!("{g} (new)"),
        (Some(g), Some(p)) if g != p => format!("{g} (was {p})"),
        (Some(g), _) => format!("{g} (unchanged)"),
        (None, _) => "-".to_owned(),
    };
    let mut rows = vec![["HOST".to_owned(), "TOP".into(), "GENERATION".into(), "IOC".into(), "STATUS".into()]];
    for (ioc, status) in &report.iocs {
        rows.push([report.host.clone(), report.top.clone(), generation.clone(), ioc.clone(), (*status).to_owned()]);
    }
    print!("{}", crate::table::render(&rows));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Change;

    #[test]
    fn systemctl_show_for_several_units() {
        let out = "Id=epnix-a.service\nActiveState=active\nSubState=running\nNRestarts=0\n\nId=epnix-b.service\nActiveState=failed\nSubState=failed\nNRestarts=3\n";
        let states = parse_show(out);
        assert_eq!(
            states["epnix-a.service"],
            UnitState { active: "active".into(), sub: "running".into(), restarts: 0 }
        );
        assert_eq!(states["epnix-b.service"].restarts, 3);
    }

    #[test]
    fn changes_read_as_words() {
        assert_eq!(Change::Changed.as_str(), "restarted");
    }
}
