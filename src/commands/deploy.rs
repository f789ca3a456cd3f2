//! `epnix-deploy <host> <top>`: evaluate, build, copy, switch, check.
//!
//! The pipeline reads the configuration and the host before it changes
//! anything, so every error found up to the plan leaves the host as it was.
//! From the switch on, `activation` keeps the promise: healthy IOCs on the
//! new generation, or the host back on the previous one.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::Result;
use camino::{Utf8Path, Utf8PathBuf};

use super::{PlannedStep, SwitchReport};
use crate::activation::{self, Before, Safety};
use crate::config::{self, Config, HealthCheck, Top};
use crate::exit::{BadInput, Exit, Failure};
use crate::generation;
use crate::host::{self, HostState};
use crate::layout;
use crate::nix;
use crate::plan::{self, Guarded, Plan, Switch};
use crate::process::Cmd;
use crate::progress::Progress;
use crate::remote;
use crate::ssh::Remote;
use crate::target::{self, Selection, Target};

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

pub fn run(opts: &DeployOptions, progress: &Progress) -> Result<SwitchReport> {
    let sel = &opts.selection;
    let interrupted = || Failure::new(Exit::Interrupted, format!("interrupted: nothing changed on `{}`", sel.host));
    let step = progress.step(&sel.host, "evaluate");
    let config = nix::evaluate(&sel.flake)?;
    let (top, target) = select(&config, sel)?;
    let revision = nix::parse_revision(&nix::flake_metadata(&sel.flake).output()?)?;
    step.done(&format!("top `{}`, {} IOC(s)", sel.top, top.iocs.values().filter(|i| i.enable).count()));

    let step = progress.step(&sel.host, "build");
    let built = build(&sel.flake, &format!("tops.{}.package", sel.top), &format!("top `{}`", sel.top));
    // Ctrl-C reaches `nix build` too, which then fails: that is no bad input.
    if activation::interrupted() {
        return Err(interrupted().into());
    }
    let store_path = built?;
    check_top_contents(&sel.top, top, &store_path)?;
    step.done(store_path.as_str());
    let procserv = match target.name.as_ref().and_then(|n| Some((n, config.hosts.get(n)?.procserv_package.as_ref()?))) {
        Some((host_name, _)) => {
            let step = progress.step(&sel.host, "build procServ");
            let built = build(
                &sel.flake,
                &format!("hosts.{}.procServ.package", config::attr(host_name)),
                &format!("the procServ of host `{host_name}`"),
            );
            if activation::interrupted() {
                return Err(interrupted().into());
            }
            let nix_procserv = check_procserv(host_name, &built?)?;
            step.done(nix_procserv.path.as_str());
            Some(nix_procserv)
        }
        None => None,
    };

    let step = progress.step(&sel.host, "connect");
    let mut remote = Remote::connect(&target)?;
    let expect_name = target.expected_hostname().filter(|_| !opts.skip_hostname_check);
    let state = if opts.dry_run {
        let state = host::inspect(&remote, &sel.top, host::Depth::Current)?;
        if let Some(name) = expect_name {
            check_hostname(&target, name, &state.hostname)?;
        }
        state
    } else {
        let who = target::deployer();
        if let Some(stale) = activation::take_lock(&mut remote, &target, &sel.top, &who, expect_name, opts.break_lock)?
        {
            progress.note(&format!("note: took over the lock of a deploy that ended without releasing it ({stale})"));
        }
        let state = host::inspect(&remote, &sel.top, host::Depth::Current)?;
        if state.rollback_pending {
            return Err(activation::rollback_pending(&target, &sel.top).into());
        }
        state
    };
    let facts = plan::host_facts(&state, &target.label, procserv.as_ref().map(|p| &p.facts))?;
    let units = plan::render_units(&sel.top, top, &facts);
    let checks: BTreeMap<String, HealthCheck> =
        top.iocs.iter().filter(|(_, i)| i.enable).map(|(n, i)| (n.clone(), i.health_check.clone())).collect();
    let checks_json = generation::checks_json(&checks).to_string();
    let mut plan = plan::deploy(&sel.top, &store_path, units, &checks_json, &state, &target.label)?;
    // A procServ from Nix that the host does not run yet: its profile moves
    // before the switch, and the top's IOCs restart into it.
    let procserv_moves = procserv.as_ref().filter(|p| state.procserv_profile.as_ref() != Some(&p.path));
    if procserv_moves.is_some() {
        plan.procserv_moves();
    }
    step.done(&format!("hostname `{}`", state.hostname));

    if plan.switch == Switch::New {
        let step = progress.step(&sel.host, "generation");
        let who = target::deployer();
        let spec = generation::Spec {
            top_name: &sel.top,
            top: &store_path,
            units: &plan.units,
            checks: &checks,
            deployer: &who,
            revision: &revision,
        };
        let path = generation::build(&spec)?;
        step.done(path.as_str());
        plan.generation_path = Some(path);
    }

    let timeout = opts.activation_timeout.unwrap_or(Duration::from_secs(top.activation_timeout));
    let host_magic = target.name.as_ref().and_then(|n| config.hosts.get(n)).is_none_or(|h| h.magic_rollback);
    let safety = Safety {
        magic_rollback: !opts.no_magic_rollback && top.magic_rollback && host_magic,
        confirm_timeout: Duration::from_secs(top.confirm_timeout),
        activation_timeout: timeout,
    };
    let to_copy: Vec<&Utf8Path> =
        plan.generation_path.iter().map(|p| p.as_path()).chain(procserv_moves.map(|p| p.path.as_path())).collect();
    if opts.dry_run {
        let mut steps = dry_run_steps(&plan, &state, &target, &safety, &to_copy, opts.substitute_on_destination);
        if let Some(p) = procserv_moves {
            // Host-wide, so it comes before the lock-protected switch.
            let at = if to_copy.is_empty() { 1 } else { 2 };
            steps.insert(at, PlannedStep { on: target.label.clone(), action: set_procserv_cmd(p).to_string() });
        }
        if let Some(step) = super::conserver_step(&target, Some(&config)) {
            // Once the switch is confirmed: a switch's last step is what a
            // failed check does instead.
            let at = if plan.changes_host() { steps.len() - 1 } else { steps.len() };
            steps.insert(at, step);
        }
        remote.close();
        let mut report = SwitchReport::new(&target, &plan, state.current, state.current);
        report.dry_run = true;
        report.new_generation = plan.switch == Switch::New;
        report.plan = Some(steps);
        return Ok(report);
    }

    if !to_copy.is_empty() {
        let step = progress.step(&sel.host, "copy");
        let copied = copy_cmd(&target, Some(&remote), &state, &to_copy, opts.substitute_on_destination).output();
        if activation::interrupted() {
            return Err(interrupted().into());
        }
        copied?;
        step.done("");
    }
    if activation::interrupted() {
        return Err(interrupted().into());
    }
    if let Some(p) = procserv_moves {
        // Host-wide, beside the top's profile: a rollback of the top leaves it.
        let step = progress.step(&sel.host, "procServ");
        let link = remote.run(&set_procserv_cmd(p))?;
        step.done(&format!("{} -> {}", layout::procserv_profile(), link.trim()));
    }

    let generation = if plan.changes_host() {
        // The IOCs that run something new must pass their own checks; the
        // others only need to stay up.
        let checks = plan.health_checks(&checks);
        let before = Before { generation: state.current };
        activation::switch_safely(&remote, &target, &plan, &before, &safety, &checks, progress)?
    } else {
        activation::ensure_running(&remote, &plan, state.current, progress, &target, timeout)?
    };
    let conserver = super::update_conserver(&remote, &target, Some(&config), progress);
    remote.close();
    Ok(SwitchReport { conserver, ..SwitchReport::new(&target, &plan, generation, state.current) })
}

/// Refuses a host whose name is not the configured one (a dry run has no
/// lock, which does this for a real one).
fn check_hostname(target: &Target, name: &str, hostname: &str) -> Result<(), BadInput> {
    let short = hostname.split('.').next().unwrap_or(hostname);
    if hostname == name || short == name { Ok(()) } else { Err(activation::wrong_host(target, hostname)) }
}

/// `nix copy` of a generation (and with it the top), and of a procServ from
/// Nix, to the host, over the open master connection; without one (a dry
/// run's listing), the socket is named for what it is.
fn copy_cmd(target: &Target, remote: Option<&Remote>, state: &HostState, paths: &[&Utf8Path], substitute: bool) -> Cmd {
    let socket =
        remote.map_or_else(|| "<the master connection>".to_owned(), |r| r.control_socket().to_string_lossy().into());
    let remote_nix_store = state.remote_nix_store();
    let paths: Vec<&str> = paths.iter().map(|p| p.as_str()).collect();
    nix::copy_to(target, &socket, &paths, remote_nix_store.as_deref(), substitute)
}

/// A procServ from Nix (`procServ.package`), built and checked.
struct NixProcServ {
    path: Utf8PathBuf,
    facts: crate::unit::HostFacts,
}

/// Checks a built procServ package: it must have `bin/procServ`. Whether it
/// has `--oneshot` (2.8.0 and later) is read from the binary itself, which
/// the deployer may not be able to run (another architecture).
fn check_procserv(host: &str, path: &Utf8Path) -> Result<NixProcServ, BadInput> {
    let binary = path.join("bin/procServ");
    let bytes = std::fs::read(&binary).map_err(|err| {
        BadInput::new(format!(
            "{}.hosts.{}.procServ.package: `{binary}` cannot be read ({err})",
            config::ROOT,
            config::attr(host)
        ))
        .hint("the package must install procServ as `bin/procServ`")
    })?;
    let oneshot = bytes.windows(b"--oneshot".len()).any(|w| w == b"--oneshot");
    let facts =
        crate::unit::HostFacts { procserv: layout::procserv_from_profile().into_string(), procserv_oneshot: oneshot };
    Ok(NixProcServ { path: path.to_owned(), facts })
}

fn set_procserv_cmd(procserv: &NixProcServ) -> crate::ssh::RemoteCmd {
    remote::SET_PROFILE.cmd(&[layout::procserv_profile().as_str(), procserv.path.as_str()])
}

/// Picks the top and the host, and checks that they belong together.
fn select<'a>(config: &'a Config, sel: &Selection) -> Result<(&'a Top, Target), BadInput> {
    let top_name = sel.top.as_str();
    let target = super::resolve(config, &sel.on(), Some(&sel.top))?;
    let top = config.tops.get(top_name).ok_or_else(|| super::unknown_top(config, top_name))?;
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

/// Builds `epnixDeploy.<attr>`, `what` for the messages.
fn build(flake: &nix::Flake, attr: &str, what: &str) -> Result<Utf8PathBuf> {
    let stdout = nix::build_package(flake, attr).output().map_err(|err| {
        BadInput::new(format!("building {what} failed:\n{err}"))
            .hint("nothing was copied; fix the build and deploy again")
    })?;
    nix::parse_build_output(&stdout)
}

/// Every enabled IOC's working directory and startup script must be in the
/// build, also after following symlinks, or procServ would run something
/// else, or fail, on the host after the switch.
pub fn check_top_contents(top_name: &str, top: &Top, store_path: &Utf8Path) -> Result<(), BadInput> {
    if store_path.join(layout::GENERATION_DIR).symlink_metadata().is_ok() {
        return Err(BadInput::new(format!(
            "{}.tops.{}.package: the build has an entry `{}`, a name epnix-deploy keeps for itself",
            config::ROOT,
            config::attr(top_name),
            layout::GENERATION_DIR
        ))
        .hint("rename that entry in the top's build"));
    }
    let root = std::fs::canonicalize(store_path).ok();
    let inside = |path: &Utf8Path| -> bool {
        let real = std::fs::canonicalize(path).ok();
        matches!((&root, &real), (Some(root), Some(real)) if real.starts_with(root))
    };
    let leaves = |what: &str, value: &str, path: &Utf8Path| {
        BadInput::new(format!(
            "{what}: `{value}` leads outside the built top through a symlink (`{path}` resolves to `{}`)",
            std::fs::canonicalize(path).map_or_else(|_| "?".to_owned(), |p| p.display().to_string())
        ))
        .hint("a top is deployed as one store path; the IOC must run files inside it")
    };
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
        if !inside(&dir) {
            return Err(leaves(&format!("{path}.workingDirectory"), ioc.working_directory.as_str(), &dir));
        }
        let script = store_path.join(ioc.startup_script_in_top());
        let mode = std::fs::metadata(&script).map(|m| m.permissions().mode());
        match mode {
            Ok(_) if script.is_file() && !inside(&script) => {
                return Err(leaves(&format!("{path}.startupScript"), &ioc.startup_script, &script));
            }
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

/// A host-side command as the dry run shows it: arguments that are scripts
/// of our own are named, not printed.
fn short(cmd: &crate::ssh::RemoteCmd) -> String {
    let mut cmd = cmd.clone();
    for arg in cmd.argv.iter_mut().skip(4) {
        if arg.contains('\n') {
            *arg = format!("<{}-line script>", arg.lines().count());
        }
    }
    cmd.to_string()
}

/// Everything a deploy would do, in order, with the commands that stay
/// valid after the run.
fn dry_run_steps(
    plan: &Plan,
    state: &HostState,
    target: &Target,
    safety: &Safety,
    to_copy: &[&Utf8Path],
    substitute: bool,
) -> Vec<PlannedStep> {
    let top = plan.top.as_str();
    let mut steps = Vec::new();
    let mut on = |action: String| steps.push(PlannedStep { on: target.label.clone(), action });
    on(format!(
        "take the deploy lock `{}` (held while the deployer's connection lasts)",
        layout::records(top).join("lock")
    ));
    if !to_copy.is_empty() {
        steps.push(PlannedStep {
            on: "local".into(),
            action: copy_cmd(target, None, state, to_copy, substitute).to_string(),
        });
    }
    let mut on = |action: String| steps.push(PlannedStep { on: target.label.clone(), action });
    if !plan.changes_host() {
        on(plan.switch_cmd(Guarded::No).to_string());
        on("wait until every IOC is active".into());
        return steps;
    }
    on(format!("save the restore point: {}", short(&activation::prepare_cmd(plan, safety))));
    if safety.magic_rollback {
        on(format!(
            "arm the rollback (same call): timer `{}.timer` fires after {}s without a heartbeat; `{}` rolls back at boot",
            layout::rollback_unit(top),
            safety.confirm_timeout.as_secs(),
            layout::boot_rollback_unit()
        ));
        on(format!(
            "heartbeats every {}s restart the timer until the switch is confirmed",
            config::HEARTBEAT_INTERVAL_SECS
        ));
    }
    on(format!("switch: {}", plan.switch_cmd(Guarded::ByRestorePoint)));
    on(format!(
        "check the IOCs (within {}s): {}",
        safety.activation_timeout.as_secs(),
        if plan.units.is_empty() { "none run".to_owned() } else { plan.running().join(", ") }
    ));
    if safety.magic_rollback {
        on("confirm over a new SSH login: disarm the timer, drop the restore point, note the generation healthy"
            .into());
    } else {
        on("confirm: drop the restore point, note the generation healthy".into());
    }
    on(format!("on a failed check: run `{}/restore/rollback.sh` (back to the restore point)", layout::records(top)));
    steps
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
            tags: vec![],
            magic_rollback: true,
            build_on_target: false,
            procserv_package: None,
            expected_hostname: None,
            conserver: config::Conserver::default(),
        };
        let config = Config { hosts: BTreeMap::from([(name.to_owned(), host)]), tops: BTreeMap::new() };
        Target::resolve(name, Some(&config)).unwrap()
    }

    #[test]
    fn the_hostname_must_be_the_configured_name() {
        let target = configured("ioc1");
        assert!(check_hostname(&target, "ioc1", "ioc1").is_ok());
        assert!(check_hostname(&target, "ioc1", "ioc1.lab.example.org").is_ok());
        let err = check_hostname(&target, "ioc1", "ioc2").unwrap_err().to_string();
        assert!(err.contains("`10.0.0.5` answers as host `ioc2`, not `ioc1`"), "{err}");
        assert!(err.contains("--skip-hostname-check"), "{err}");
    }
}
