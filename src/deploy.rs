//! `epnix-deploy <host> <top>`: evaluate, build, copy, switch, check.
//!
//! The pipeline reads the configuration and the host before it changes
//! anything, so every error found up to the plan leaves the host as it was.
//! From the switch on, `activation` keeps the promise: healthy IOCs on the
//! new generation, or the host back on the previous one.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;

use crate::activation::{self, Safety};
use crate::config::{self, Config, HealthCheck, Top};
use crate::exit::{BUSY, BadInput, FAILED, Failure, INTERRUPTED, NEEDS_ATTENTION, UNKNOWN};
use crate::host::{self, HostState, Record};
use crate::layout;
use crate::nix;
use crate::plan::{self, Action, Change, Plan, Switch};
use crate::process::Cmd;
use crate::progress::Progress;
use crate::ssh::{self, Remote};
use crate::target::Selection;
use crate::target::Target;

/// What the user asked for, checked by the CLI layer.
#[derive(Clone, Debug)]
pub struct DeployOptions {
    pub selection: Selection,
    pub dry_run: bool,
    pub substitute_on_destination: bool,
    /// Overrides the top's `activationTimeout`.
    pub activation_timeout: Option<Duration>,
    /// `--no-magic-rollback`: never arm the host-side rollback.
    pub no_magic_rollback: bool,
    /// `--break-lock`: end a lock left by a deploy that is gone.
    pub break_lock: bool,
    /// `--skip-hostname-check`.
    pub skip_hostname_check: bool,
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
    let mut remote = Remote::connect(&target)?;
    let state = if opts.dry_run {
        inspect(&remote, &sel.top)?
    } else {
        if let Some(stale) = activation::take_lock(&mut remote, &target, &sel.top, &deployer(), opts.break_lock)? {
            progress.note(&format!("note: took over the lock of a deploy that ended without releasing it ({stale})"));
        }
        let state = inspect(&remote, &sel.top)?;
        if state.rollback_pending {
            return Err(Failure::new(
                BUSY,
                format!(
                    "on `{target}`: a rollback of an earlier deploy of `{}` is armed or running (that deploy was not confirmed)\n\
                     hint: it fires within that deploy's `confirmTimeout`; wait for it, then check with `epnix-deploy list {target} {}`",
                    sel.top, sel.top
                ),
            )
            .into());
        }
        state
    };
    if !opts.skip_hostname_check {
        check_hostname(&target, &state.hostname)?;
    }
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

    let unchanged =
        || Failure::new(INTERRUPTED, format!("interrupted before the switch: nothing changed on `{target}`"));
    if plan.top_changed {
        let step = progress.step(&sel.host, "copy");
        let copied = copy_cmd(&target, &remote, &state, &plan, opts.substitute_on_destination).output();
        if activation::interrupted() {
            return Err(unchanged().into());
        }
        copied?;
        step.done("");
    }
    if activation::interrupted() {
        return Err(unchanged().into());
    }

    let timeout = opts.activation_timeout.unwrap_or(Duration::from_secs(top.activation_timeout));
    let generation = if plan.switch == Switch::Stay {
        activate(&remote, &plan, current, progress, &target, timeout)?
    } else {
        let host_magic = target.name.as_ref().and_then(|n| config.hosts.get(n)).is_none_or(|h| h.magic_rollback);
        let safety = Safety {
            magic_rollback: !opts.no_magic_rollback && top.magic_rollback && host_magic,
            confirm_timeout: Duration::from_secs(top.confirm_timeout),
            activation_timeout: timeout,
        };
        let checks = plan
            .iocs
            .iter()
            .filter(|(_, change)| matches!(change, Change::New | Change::Changed))
            .map(|(name, _)| (name.clone(), top.iocs[name].health_check.clone()))
            .collect();
        activate_safely(&remote, &plan, &state, &target, &safety, &checks, progress)?
    };
    remote.close();
    Ok(report(&target, &plan, generation, current, false))
}

/// Refuses a host whose name is not the configured one, as microvm.nix's
/// `sshSwitch` does: a wrong address in the config must not replace another
/// host's IOCs.
fn check_hostname(target: &Target, hostname: &str) -> Result<(), BadInput> {
    let Some(name) = &target.name else { return Ok(()) };
    let short = hostname.split('.').next().unwrap_or(hostname);
    if hostname == name || short == name {
        return Ok(());
    }
    Err(BadInput::new(format!(
        "`{}` answers as host `{hostname}`, not `{name}`: refusing to deploy there",
        target.hostname
    ))
    .hint("fix `hostname` in the host's configuration, or pass `--skip-hostname-check` if the names differ on purpose"))
}

/// The switch under protection: a restore point and (with magic rollback) an
/// armed timer first; then the changes, the health checks, and either the
/// confirmation over a new login or the rollback.
fn activate_safely(
    remote: &Remote,
    plan: &Plan,
    state: &HostState,
    target: &Target,
    safety: &Safety,
    checks: &BTreeMap<String, HealthCheck>,
    progress: &Progress,
) -> Result<Option<u32>> {
    let top = plan.top.as_str();
    let previous = state.profile.as_ref().map(|p| p.generation);
    let step = progress.step(&target.label, "arm rollback");
    activation::prepare(remote, top)?;
    if safety.magic_rollback {
        activation::arm(remote, top, safety.confirm_timeout)?;
        step.done(&format!(
            "the host rolls back by itself unless confirmed within {}s",
            safety.confirm_timeout.as_secs()
        ));
    } else {
        step.done("restore point saved (magic rollback off)");
    }

    let mut switched = None;
    let outcome = (|| -> Result<Option<u32>> {
        let step = progress.step(&target.label, "switch");
        let generation = apply(remote, plan)?;
        switched = generation;
        step.done(&generation.map(|g| format!("generation {g}")).unwrap_or_default());
        let step = progress.step(&target.label, "check");
        let keepalive = || if safety.magic_rollback { activation::heartbeat(remote, top) } else { Ok(()) };
        activation::check_health(remote, checks, safety.activation_timeout, &keepalive, &step)?;
        step.done(&format!("{} IOC(s) healthy", checks.len()));
        Ok(generation)
    })();

    let back_to = match previous {
        Some(g) => format!("generation {g}"),
        None => format!("no deployment of `{top}` (this was its first deploy)"),
    };
    match outcome {
        Ok(generation) => {
            let step = progress.step(&target.label, "confirm");
            let confirmed =
                if safety.magic_rollback { activation::confirm(target, top) } else { activation::release(remote, top) };
            if let Err(err) = confirmed {
                return Err(Failure::new(
                    UNKNOWN,
                    format!(
                        "the IOCs are healthy on generation {}, but the deploy could not be confirmed: {err:#}\n\
                         the host rolls back by itself to {back_to} unless confirmed within {}s of the last contact\n\
                         hint: check where it ended with `epnix-deploy list {target} {top}`",
                        generation.map_or("?".to_owned(), |g| g.to_string()),
                        safety.confirm_timeout.as_secs()
                    ),
                )
                .into());
            }
            step.done(if safety.magic_rollback { "over a new SSH login; rollback disarmed" } else { "" });
            Ok(generation)
        }
        Err(err) if ssh::is_connection_lost(&err) || activation::interrupted() => {
            let now_on = switched.map_or("the new generation".to_owned(), |g| format!("generation {g}"));
            let fate = if safety.magic_rollback {
                format!(
                    "the armed rollback is in charge: unless confirmed, the host goes back to {back_to} by itself within {}s",
                    safety.confirm_timeout.as_secs()
                )
            } else {
                format!("magic rollback is off: the host may stay on {now_on}, unchecked")
            };
            Err(Failure::new(
                UNKNOWN,
                format!(
                    "{err:#}
the outcome on `{target}` is unknown: {fate}\n\
                     hint: see where it ended with `epnix-deploy list {target} {top}`; `epnix-deploy rollback {target} {top}` goes back by hand"
                ),
            )
            .into())
        }
        Err(err) => {
            let step = progress.step(&target.label, "roll back");
            let rolled = activation::roll_back(remote, top, "failed-checks").and_then(|rb| {
                let restored = rb.iocs.iter().map(|ioc| (ioc.clone(), HealthCheck::running())).collect();
                activation::check_health(remote, &restored, safety.activation_timeout, &|| Ok(()), &step)?;
                Ok(rb)
            });
            match rolled {
                Ok(_) => {
                    step.done(&format!("back to {back_to}"));
                    Err(Failure::new(FAILED, format!("{err:#}
rolled back: `{target}` is back to {back_to}, and its IOCs are active")).into())
                }
                Err(rollback_err) => Err(Failure::new(
                    NEEDS_ATTENTION,
                    format!(
                        "{err:#}
the rollback to {back_to} failed too: {rollback_err:#}\n\
                         the host needs attention: the profile `{}` may be on either generation, and some units of `{top}` may be stopped\n\
                         hint: look with `epnix-deploy list {target} {top}` and `systemctl status 'epnix-*'` on the host",
                        layout::profile(top)
                    ),
                )
                .into()),
            }
        }
    }
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
    // IOCs the plan did not restart need only be running.
    let check = match plan.switch {
        Switch::Stay => HealthCheck { settle_time: 0, ..HealthCheck::running() },
        _ => HealthCheck::running(),
    };
    let running = plan.running().into_iter().map(|ioc| (ioc, check.clone())).collect();
    activation::check_health(remote, &running, timeout, &|| Ok(()), &step)?;
    step.done(&format!("{} IOC(s) active", plan.running().len()));
    Ok(generation)
}

/// Who deploys, as `user@machine`, for the record and the lock.
pub fn deployer() -> String {
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
    use crate::config::Host;

    fn configured(name: &str) -> Target {
        let host = Host {
            hostname: "10.0.0.5".into(),
            ssh_user: None,
            ssh_port: None,
            ssh_opts: vec![],
            magic_rollback: true,
        };
        let config = Config { hosts: BTreeMap::from([(name.to_owned(), host)]), tops: BTreeMap::new() };
        Target::resolve(name, Some(&config)).unwrap()
    }

    #[test]
    fn the_hostname_must_be_the_configured_name() {
        assert!(check_hostname(&configured("ioc1"), "ioc1").is_ok());
        assert!(check_hostname(&configured("ioc1"), "ioc1.lab.example.org").is_ok());
        let err = check_hostname(&configured("ioc1"), "ioc2").unwrap_err().to_string();
        assert!(err.contains("`10.0.0.5` answers as host `ioc2`, not `ioc1`"), "{err}");
        assert!(err.contains("--skip-hostname-check"), "{err}");
        // A bare user@host target has no configured name to compare with.
        assert!(check_hostname(&Target::resolve("root@10.0.0.5", None).unwrap(), "anything").is_ok());
    }
}
