//! `epnix-deploy <host> <top>`: evaluate, build, copy, switch, check.
//!
//! The pipeline reads the configuration and the host before it changes
//! anything, so every error found up to the plan leaves the host as it was.
//! From the switch on, `activation` keeps the promise: healthy IOCs on the
//! new generation, or the host back on the previous one.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use super::{PlannedStep, SwitchReport};
use crate::activation::{self, Ahead, Before, Safety};
use crate::config::{self, Config, HealthCheck, Top};
use crate::exit::{BadInput, Exit, Failure};
use crate::generation;
use crate::host::{self, HostState};
use crate::layout;
use crate::nix;
use crate::plan::{self, Guarded, Plan, Switch};
use crate::process::Cmd;
use crate::progress::{Progress, Step};
use crate::remote;
use crate::ssh::{self, LoginAhead, Remote, RemoteCmd};
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
    /// `--build-on-target`: every host builds the top itself (a host's
    /// `buildOnTarget` asks for it for that host alone).
    pub build_on_target: bool,
}

/// The deployer's side of a run, read once whatever the number of hosts:
/// the checked configuration and the flake's revision.
pub struct Evaluated {
    pub config: Config,
    /// The flake's git commit, `dirty`, or empty.
    pub revision: String,
}

/// Evaluates and checks the flake's `epnixDeploy`, and reads its revision.
pub fn evaluate(flake: &nix::Flake) -> Result<Evaluated> {
    // Two reads of the flake that need nothing of each other: side by side.
    let metadata = std::thread::scope(|scope| {
        let metadata = scope.spawn(|| nix::flake_metadata(flake).output());
        let config = nix::evaluate(flake);
        (config, metadata.join())
    });
    let (config, metadata) = metadata;
    // On a store never used before, the two race to set it up: the one
    // that lost goes again, alone.
    let config = match config {
        Err(err) if nix::first_use_race(&format!("{err:#}")) => nix::evaluate(flake),
        config => config,
    }?;
    let Ok(metadata) = metadata else { anyhow::bail!("reading the flake's metadata panicked") };
    let metadata = match metadata {
        Err(err) if nix::first_use_race(&err.to_string()) => nix::flake_metadata(flake).output(),
        metadata => metadata,
    }?;
    Ok(Evaluated { config, revision: nix::parse_revision(&metadata)? })
}

/// A top ready to go to hosts, made once per run whatever their number.
#[derive(Clone, Debug)]
pub struct TopBuild {
    pub name: String,
    /// Its store path: built here, or the path the hosts' own builds get.
    pub path: Utf8PathBuf,
    /// Its derivation, for the hosts that build it themselves.
    pub derivation: Option<Utf8PathBuf>,
}

/// Whether `target` builds its tops itself: `--build-on-target`, or the
/// host's `buildOnTarget`.
pub fn builds_on_target(flag: bool, config: &Config, target: &Target) -> bool {
    flag || target.name.as_ref().and_then(|n| config.hosts.get(n)).is_some_and(|h| h.build_on_target)
}

/// Builds the top `name` here and checks its contents (`here`), and writes
/// its derivation for the hosts that build it themselves (`for_hosts`).
/// `host` labels the progress.
pub fn build_top(
    flake: &nix::Flake,
    name: &str,
    top: &Top,
    (here, for_hosts): (bool, bool),
    host: &str,
    progress: &Progress,
) -> Result<TopBuild> {
    let interrupted = || Failure::new(Exit::Interrupted, format!("interrupted: nothing changed on `{host}`"));
    let step = progress.step(host, "build");
    let mut built = TopBuild { name: name.to_owned(), path: top.package.clone(), derivation: None };
    if here {
        let path = build(flake, &format!("tops.{name}.package"), &format!("top `{name}`"));
        // Ctrl-C reaches `nix build` too, which then fails: that is no bad input.
        if activation::interrupted() {
            return Err(interrupted().into());
        }
        built.path = path?;
        check_top_contents(name, top, &built.path)?;
    }
    if for_hosts {
        let drv = derivation(flake, &format!("tops.{name}.package"), &format!("top `{name}`"));
        if activation::interrupted() {
            return Err(interrupted().into());
        }
        built.derivation = Some(drv?);
    }
    step.done(&match (&built.derivation, here) {
        (Some(drv), false) => format!("{drv} (the host builds it)"),
        (Some(drv), true) => format!("{} (and {drv} for the hosts that build it)", built.path),
        (None, _) => built.path.to_string(),
    });
    Ok(built)
}

pub fn run(opts: &DeployOptions, progress: &Progress) -> Result<SwitchReport> {
    let step = progress.step(&opts.selection.host, "evaluate");
    let evaluated = evaluate(&opts.selection.flake)?;
    run_evaluated(opts, &evaluated, step, progress)
}

/// [`run`] once the flake is evaluated; `step` is the evaluation's, which
/// ends once the host and the top are found in the configuration.
pub fn run_evaluated(
    opts: &DeployOptions,
    evaluated: &Evaluated,
    step: Step,
    progress: &Progress,
) -> Result<SwitchReport> {
    let sel = &opts.selection;
    let (top, target) = select(&evaluated.config, sel)?;
    step.done(&format!("top `{}`, {} IOC(s)", sel.top, top.iocs.values().filter(|i| i.enable).count()));
    let on_target = builds_on_target(opts.build_on_target, &evaluated.config, &target);
    // The login, made while the top builds: its round trips are off the
    // critical path. Its outcome is read at the `connect` step.
    let login = LoginAhead::start(&target);
    let built = build_top(&sel.flake, &sel.top, top, (!on_target, on_target), &sel.host, progress)?;
    deploy_to(evaluated, &target, &built, opts, progress, Some(login))
}

/// How the host's procServ from Nix (`procServ.package`) is made.
enum ProcServBuild {
    /// Built here and checked.
    Here(NixProcServ),
    /// Built by the host from this derivation; checked once built.
    OnHost { derivation: Utf8PathBuf, path: Utf8PathBuf },
}

/// The deploy of an evaluated, built top to one host, from the connection
/// to the confirmation: the pipeline after the deployer's own work, which a
/// run over many hosts runs once per host and top. Of `opts.selection`
/// only the flake is read: `target` and `built` say where and what.
/// `login`: one started already, or none to log in at the `connect` step.
pub fn deploy_to(
    evaluated: &Evaluated,
    target: &Target,
    built: &TopBuild,
    opts: &DeployOptions,
    progress: &Progress,
    login: Option<LoginAhead>,
) -> Result<SwitchReport> {
    let config = &evaluated.config;
    let top_name = built.name.as_str();
    let top = config.tops.get(top_name).ok_or_else(|| super::unknown_top(config, top_name))?;
    let label = target.label.as_str();
    let interrupted = || Failure::new(Exit::Interrupted, format!("interrupted: nothing changed on `{label}`"));
    let on_target = builds_on_target(opts.build_on_target, config, target);
    let flake = &opts.selection.flake;
    let procserv = match target.name.as_ref().and_then(|n| Some((n, config.hosts.get(n)?.procserv_package.as_ref()?))) {
        Some((host_name, path)) => {
            let attr = format!("hosts.{}.procServ.package", config::attr(host_name));
            let what = format!("the procServ of host `{host_name}`");
            let step = progress.step(label, "build procServ");
            let made = if on_target { derivation(flake, &attr, &what) } else { build(flake, &attr, &what) };
            if activation::interrupted() {
                return Err(interrupted().into());
            }
            let made = made?;
            if on_target {
                step.done(&format!("{made} (the host builds it)"));
                Some(ProcServBuild::OnHost { derivation: made, path: path.clone() })
            } else {
                let nix_procserv = check_procserv(host_name, &made)?;
                step.done(nix_procserv.path.as_str());
                Some(ProcServBuild::Here(nix_procserv))
            }
        }
        None => None,
    };

    // Paths go to the host in the switch's own call (`import.sh`), and only
    // those it lacks: the lock's inspection asks the host about the top's
    // closure (and procServ's). A build on the host, a local store or
    // `--substitute-on-destination` (only `nix copy` substitutes) keep
    // `nix copy`.
    let sends_itself = target.local.is_none() && !on_target && !opts.substitute_on_destination;
    let asked = match (&procserv, sends_itself) {
        (_, false) => Vec::new(),
        (Some(ProcServBuild::Here(p)), true) => closure(&[built.path.as_path(), p.path.as_path()])?,
        (_, true) => closure(&[built.path.as_path()])?,
    };
    let step = progress.step(label, "connect");
    let mut remote = match login {
        Some(login) => login.finish()?,
        None => Remote::connect(target)?,
    };
    let expect_name = target.expected_hostname().filter(|_| !opts.skip_hostname_check);
    let state = if opts.dry_run {
        let state = host::inspect_asking(&remote, top_name, host::Depth::Current, &asked)?;
        if let Some(name) = expect_name {
            check_hostname(target, name, &state.hostname)?;
        }
        state
    } else {
        let who = target::deployer();
        let inspect = Some(host::inspect_args(host::Depth::Current, &asked));
        let (stale, state) =
            activation::take_lock(&mut remote, target, top_name, &who, expect_name, opts.break_lock, inspect)?;
        if let Some(stale) = stale {
            progress.note(&format!("note: took over the lock of a deploy that ended without releasing it ({stale})"));
        }
        let state = state.expect("inspected under the lock");
        if state.rollback_pending {
            return Err(activation::rollback_pending(target, top_name).into());
        }
        state
    };
    let procserv = match procserv {
        Some(ProcServBuild::Here(p)) => Some(p),
        Some(ProcServBuild::OnHost { path, .. }) if opts.dry_run => {
            progress.note(&format!(
                "note: `{label}` builds its procServ on the real run; this plan takes it to have `--oneshot`"
            ));
            Some(NixProcServ { facts: procserv_facts(true), path })
        }
        Some(ProcServBuild::OnHost { derivation, path }) => {
            let step = progress.step(label, "build procServ on host");
            build_on_host(&remote, target, &state, &derivation, &path, "its procServ")?;
            let procserv = check_procserv_on_host(&remote, target, &path)?;
            step.done(path.as_str());
            Some(procserv)
        }
        None => None,
    };
    let facts = plan::host_facts(&state, label, procserv.as_ref().map(|p| &p.facts))?;
    let units = plan::render_units(top_name, top, &facts);
    let checks: BTreeMap<String, HealthCheck> =
        top.iocs.iter().filter(|(_, i)| i.enable).map(|(n, i)| (n.clone(), i.health_check.clone())).collect();
    let checks_json = generation::checks_json(&checks).to_string();
    let mut plan = plan::deploy(top_name, &built.path, units, &checks_json, &state, label)?;
    // A procServ from Nix that the host does not run yet: its profile moves
    // before the switch, and the top's IOCs restart into it.
    let procserv_moves = procserv.as_ref().filter(|p| state.procserv_profile.as_ref() != Some(&p.path));
    if procserv_moves.is_some() {
        plan.procserv_moves();
    }
    step.done(&format!("hostname `{}`", state.hostname));

    // The generation's derivation, when the host builds it (and the top).
    let mut host_builds = None;
    if plan.switch == Switch::New {
        let step = progress.step(label, "generation");
        let who = target::deployer();
        let spec = generation::Spec {
            top_name,
            top: &built.path,
            units: &plan.units,
            checks: &checks,
            deployer: &who,
            revision: &evaluated.revision,
        };
        let (path, derivation) = make_generation(&spec, built.derivation.as_deref().filter(|_| on_target))?;
        step.done(&match derivation {
            Some(_) => format!("{path} (the host builds it)"),
            None => path.to_string(),
        });
        host_builds = derivation;
        plan.generation_path = Some(path);
    }

    let timeout = opts.activation_timeout.unwrap_or(Duration::from_secs(top.activation_timeout));
    let host_magic = target.name.as_ref().and_then(|n| config.hosts.get(n)).is_none_or(|h| h.magic_rollback);
    let safety = Safety {
        magic_rollback: !opts.no_magic_rollback && top.magic_rollback && host_magic,
        confirm_timeout: Duration::from_secs(top.confirm_timeout),
        activation_timeout: timeout,
        checks: plan.health_checks(&checks),
    };
    // What the host builds itself is not copied, only its derivation.
    // This machine's store is the host's: nothing to copy there.
    let generation_copied = plan.generation_path.iter().filter(|_| host_builds.is_none() && target.local.is_none());
    let procserv_copied = procserv_moves.filter(|_| !on_target && target.local.is_none());
    let to_copy: Vec<&Utf8Path> =
        generation_copied.map(|p| p.as_path()).chain(procserv_copied.map(|p| p.path.as_path())).collect();
    // What the switch's call sends: the paths of the closure the host lacks.
    let to_send = match &state.missing_paths {
        Some(missing) if !to_copy.is_empty() && plan.changes_host() => {
            let needed = closure(&to_copy)?;
            Some(needed.into_iter().filter(|p| missing.contains(p) || !asked.contains(p)).collect::<Vec<_>>())
        }
        _ => None,
    };
    if opts.dry_run {
        let copy = Copy { paths: &to_copy, send: to_send.as_deref(), substitute: opts.substitute_on_destination };
        let mut steps = dry_run_steps(&plan, &state, target, &remote, &safety, &copy);
        let mut at = 1;
        if let (Some(drv), Some(path)) = (&host_builds, &plan.generation_path) {
            for step in build_on_host_steps(target, &remote, &state, drv, path) {
                steps.insert(at, step);
                at += 1;
            }
        }
        if let Some(p) = procserv_moves {
            // Host-wide, so it comes before the lock-protected switch.
            let at = if to_copy.is_empty() { at } else { at + 1 };
            steps.insert(at, PlannedStep { on: label.to_owned(), action: set_procserv_cmd(p).to_string() });
        }
        if let Some(step) = super::conserver_step(target, Some(config)) {
            // Once the switch is confirmed: a switch's last step is what a
            // failed check does instead.
            let at = if plan.changes_host() { steps.len() - 1 } else { steps.len() };
            steps.insert(at, step);
        }
        remote.close();
        let mut report = SwitchReport::new(target, &plan, state.current, state.current);
        report.dry_run = true;
        report.new_generation = plan.switch == Switch::New;
        report.plan = Some(steps);
        return Ok(report);
    }

    if let (Some(drv), Some(path)) = (&host_builds, &plan.generation_path) {
        let step = progress.step(label, "build on host");
        build_on_host(&remote, target, &state, drv, path, &format!("top `{top_name}`"))?;
        check_top_contents_on_host(&remote, top_name, top, &built.path)?;
        step.done(path.as_str());
    }
    let mut ahead = Ahead::default();
    if let Some(paths) = to_send.as_ref().filter(|p| !p.is_empty()) {
        let paths: Vec<&str> = paths.iter().map(|p| p.as_str()).collect();
        ahead.export = Some(nix::export(&paths).spawn()?);
    }
    if to_send.is_none() && !to_copy.is_empty() {
        let step = progress.step(label, "copy");
        let copy = copy_cmd(target, &remote, true, &state, &to_copy, opts.substitute_on_destination);
        let copied = run_copy(&copy);
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
        // Host-wide, beside the top's profile: a rollback of the top leaves
        // it. In the switch's call when there is one.
        if plan.changes_host() {
            ahead.procserv = Some(set_procserv_cmd(p));
        } else {
            let step = progress.step(label, "procServ");
            let link = remote.run(&set_procserv_cmd(p))?;
            step.done(&format!("{} -> {}", layout::procserv_profile(), link.trim()));
        }
    }

    let generation = if plan.changes_host() {
        let before = Before { generation: state.current };
        activation::switch_safely(&remote, target, &plan, &before, &safety, ahead, progress)?
    } else {
        activation::ensure_running(&remote, &plan, state.current, progress, target, timeout)?
    };
    let conserver = super::update_conserver(&remote, target, Some(config), progress);
    remote.close();
    Ok(SwitchReport { conserver, ..SwitchReport::new(target, &plan, generation, state.current) })
}

/// Makes the generation of `spec` once per run: built here, or with
/// `top_drv` its derivation for the host to build (returned beside its
/// path). Hosts of a run often get the same generation, and Nix would have
/// all but one wait on its build lock, which it polls every 5 seconds.
fn make_generation(spec: &generation::Spec, top_drv: Option<&Utf8Path>) -> Result<(Utf8PathBuf, Option<Utf8PathBuf>)> {
    type Slot = Arc<Mutex<Option<(Utf8PathBuf, Option<Utf8PathBuf>)>>>;
    static MADE: Mutex<BTreeMap<String, Slot>> = Mutex::new(BTreeMap::new());
    let key = format!("{top_drv:?} {spec:?}");
    let slot = Arc::clone(MADE.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default());
    // Held while it is made: a host that wants the same one waits here.
    let mut made = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(made) = made.as_ref() {
        return Ok(made.clone());
    }
    let new = match top_drv {
        Some(top_drv) => {
            let instantiated = generation::instantiate(spec, top_drv)?;
            (instantiated.path, Some(instantiated.derivation))
        }
        None => (generation::build(spec)?, None),
    };
    *made = Some(new.clone());
    Ok(new)
}

/// Writes the derivation of `epnixDeploy.<attr>` (and the derivations it
/// needs) to the store here and builds nothing; `what` for the messages.
fn derivation(flake: &nix::Flake, attr: &str, what: &str) -> Result<Utf8PathBuf> {
    let stdout = nix::derivation_of(flake, attr).output().map_err(|err| {
        BadInput::new(format!("evaluating the derivation of {what} failed:\n{err}"))
            .hint("nothing was copied; fix the package and deploy again")
    })?;
    Ok(Utf8PathBuf::from(stdout.trim()))
}

/// The two commands of a build on the host: `nix copy --derivation` of
/// `derivation`'s closure over the master connection, then the host's own
/// `nix-store --realise`, which builds it or fetches it from the host's
/// substituters.
fn build_on_host_cmds(
    target: &Target,
    remote: &Remote,
    real_socket: bool,
    state: &HostState,
    derivation: &Utf8Path,
) -> (Cmd, RemoteCmd) {
    let socket = match remote.control_socket() {
        Some(socket) if real_socket => socket.to_string_lossy().into_owned(),
        _ => "<the master connection>".to_owned(),
    };
    let nix_store = state.remote_nix_store();
    let copy =
        nix::copy_derivations_to(target, &socket, &[derivation.as_str()], remote.escalation(), nix_store.as_deref());
    let realise = RemoteCmd::new([nix_store.as_deref().unwrap_or("nix-store"), "--realise", derivation.as_str()]);
    (copy, realise)
}

/// A dry run's lines for [`build_on_host`].
fn build_on_host_steps(
    target: &Target,
    remote: &Remote,
    state: &HostState,
    derivation: &Utf8Path,
    path: &Utf8Path,
) -> Vec<PlannedStep> {
    let (copy, realise) = build_on_host_cmds(target, remote, false, state, derivation);
    vec![
        PlannedStep { on: "local".into(), action: copy.to_string() },
        PlannedStep { on: target.label.clone(), action: format!("build {path}: {realise}") },
        PlannedStep {
            on: target.label.clone(),
            action: "check the IOCs' paths in the build, as a build here is".into(),
        },
    ]
}

/// Has the host build `derivation` (whose output is `path`) itself: its
/// closure of derivations goes there, and nothing of the build is made
/// here. `what` for the messages. A failed build changed nothing but the
/// host's store.
fn build_on_host(
    remote: &Remote,
    target: &Target,
    state: &HostState,
    derivation: &Utf8Path,
    path: &Utf8Path,
    what: &str,
) -> Result<()> {
    let (copy, realise) = build_on_host_cmds(target, remote, true, state, derivation);
    let interrupted = || Failure::new(Exit::Interrupted, format!("interrupted: nothing changed on `{target}`"));
    let copied = run_copy(&copy);
    if activation::interrupted() {
        return Err(interrupted().into());
    }
    copied?;
    let built = remote.run(&realise);
    if activation::interrupted() {
        return Err(interrupted().into());
    }
    let out = match built {
        Err(err) if ssh::is_connection_lost(&err) => return Err(err),
        Err(err) => {
            return Err(BadInput::new(format!("building {what} on `{target}` failed:\n{err:#}"))
                .hint("nothing was switched; fix the build (the host keeps its log: `nix log` there) and deploy again")
                .into());
        }
        Ok(out) => out,
    };
    if !out.lines().any(|line| line.trim() == path.as_str()) {
        anyhow::bail!("on `{target}`: `{realise}` built `{}`, not `{path}`", out.trim());
    }
    Ok(())
}

/// Checks a procServ package the host built (`procServ.package`), as
/// [`check_procserv`] does one built here.
fn check_procserv_on_host(remote: &Remote, target: &Target, path: &Utf8Path) -> Result<NixProcServ> {
    let binary = path.join("bin/procServ");
    let facts = inspect_on_host(remote, path, &[Utf8Path::new("bin/procServ")])?;
    if facts.get(&binary).is_none_or(|f| f.kind != PathKind::File) {
        return Err(BadInput::new(format!("on `{target}`: the procServ it built has no file `{binary}`"))
            .hint("the package must install procServ as `bin/procServ`")
            .into());
    }
    let grep = RemoteCmd::new(["grep", "-q", "-e", "--oneshot", "--", binary.as_str()]);
    let oneshot = match remote.output(&grep)?.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => anyhow::bail!("on `{target}`: `{grep}` could not read the procServ it built"),
    };
    Ok(NixProcServ { path: path.to_owned(), facts: procserv_facts(oneshot) })
}

/// Checks the contents of a top the host built, as [`check_top_contents`]
/// does a build here, from what `inspect_build.sh` reads there.
fn check_top_contents_on_host(remote: &Remote, top_name: &str, top: &Top, store_path: &Utf8Path) -> Result<()> {
    let mut paths = vec![Utf8PathBuf::from(layout::GENERATION_DIR)];
    for ioc in top.iocs.values().filter(|ioc| ioc.enable) {
        paths.extend([ioc.working_directory.clone(), ioc.startup_script_in_top()]);
    }
    let refs: Vec<&Utf8Path> = paths.iter().map(|p| p.as_path()).collect();
    let facts = inspect_on_host(remote, store_path, &refs)?;
    let reserved = facts.get(&store_path.join(layout::GENERATION_DIR)).is_some_and(|f| f.kind != PathKind::Missing);
    let root = facts.get(store_path).and_then(|f| f.real.clone());
    let missing = PathFacts { kind: PathKind::Missing, mode: 0, real: None };
    let of = |path: &Utf8Path| facts.get(path).cloned().unwrap_or_else(|| missing.clone());
    Ok(check_contents(top_name, top, store_path, reserved, root.as_deref(), &of)?)
}

/// Reads `paths` of the build `store_path` on the host, in one round trip;
/// the facts by full path, and the build's own under `store_path`.
fn inspect_on_host(
    remote: &Remote,
    store_path: &Utf8Path,
    paths: &[&Utf8Path],
) -> Result<BTreeMap<Utf8PathBuf, PathFacts>> {
    let mut args = vec![store_path.as_str()];
    args.extend(paths.iter().map(|p| p.as_str()));
    let out = remote.run(&remote::INSPECT_BUILD.cmd(&args))?;
    parse_inspect_build(store_path, paths, &out)
}

/// Reads `inspect_build.sh`'s lines: the build's real path, then one line
/// per path, `KIND MODE REAL`.
fn parse_inspect_build(
    store_path: &Utf8Path,
    paths: &[&Utf8Path],
    out: &str,
) -> Result<BTreeMap<Utf8PathBuf, PathFacts>> {
    let mut lines = out.lines();
    let root = lines.next().filter(|l| !l.is_empty()).context("`inspect_build.sh` printed nothing")?;
    let mut facts = BTreeMap::from([(
        store_path.to_owned(),
        PathFacts { kind: PathKind::Dir, mode: 0o555, real: Some(root.to_owned()) },
    )]);
    for path in paths {
        let line = lines.next().with_context(|| format!("`inspect_build.sh` said nothing of `{path}`"))?;
        let mut fields = line.splitn(3, ' ');
        let (kind, mode, real) = (fields.next(), fields.next(), fields.next());
        let kind = match kind {
            Some("dir") => PathKind::Dir,
            Some("file") => PathKind::File,
            Some("other") => PathKind::Other,
            _ => PathKind::Missing,
        };
        let mode = mode.and_then(|m| u32::from_str_radix(m, 8).ok()).unwrap_or(0);
        let real = real.filter(|_| kind != PathKind::Missing).map(str::to_owned);
        facts.insert(store_path.join(path), PathFacts { kind, mode, real });
    }
    Ok(facts)
}

/// How a dry run's paths reach the host.
struct Copy<'a> {
    /// The store paths a switch needs there (their closures too).
    paths: &'a [&'a Utf8Path],
    /// What the switch's call sends, when it does: the paths of those
    /// closures the host lacks. `None`: `nix copy`.
    send: Option<&'a [Utf8PathBuf]>,
    substitute: bool,
}

/// The closure of `paths` in the local store.
fn closure(paths: &[&Utf8Path]) -> Result<Vec<Utf8PathBuf>> {
    let paths: Vec<&str> = paths.iter().map(|p| p.as_str()).collect();
    Ok(nix::closure(&paths).output()?.lines().map(Utf8PathBuf::from).collect())
}

/// Runs a `nix copy` to a host (of paths, or of derivations to build
/// there), up to three times while it loses [`nix::first_use_race`]: two
/// deploys of different tops to a fresh host at once. A copy is
/// idempotent, so a retry is safe.
fn run_copy(copy: &Cmd) -> Result<String, crate::process::CmdError> {
    let mut tries = 1;
    loop {
        match copy.output() {
            Err(err) if tries < 3 && nix::first_use_race(&err.to_string()) && !activation::interrupted() => {
                // The other setup needs a moment to finish its schema.
                std::thread::sleep(std::time::Duration::from_millis(200 * tries));
                tries += 1;
            }
            copied => return copied,
        }
    }
}

/// Refuses a host whose name is not the configured one (a dry run has no
/// lock, which does this for a real one).
fn check_hostname(target: &Target, name: &str, hostname: &str) -> Result<(), BadInput> {
    let short = hostname.split('.').next().unwrap_or(hostname);
    if hostname == name || short == name { Ok(()) } else { Err(activation::wrong_host(target, hostname)) }
}

/// `nix copy` of a generation (and with it the top), and of a procServ from
/// Nix, to the host, over the open master connection; unless `real_socket`
/// (a dry run's listing, which outlives the connection), the socket is
/// named for what it is.
fn copy_cmd(
    target: &Target,
    remote: &Remote,
    real_socket: bool,
    state: &HostState,
    paths: &[&Utf8Path],
    substitute: bool,
) -> Cmd {
    let socket = match remote.control_socket() {
        Some(socket) if real_socket => socket.to_string_lossy().into_owned(),
        _ => "<the master connection>".to_owned(),
    };
    let remote_nix_store = state.remote_nix_store();
    let paths: Vec<&str> = paths.iter().map(|p| p.as_str()).collect();
    nix::copy_to(target, &socket, &paths, remote.escalation(), remote_nix_store.as_deref(), substitute)
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
    Ok(NixProcServ { path: path.to_owned(), facts: procserv_facts(oneshot) })
}

/// The units of a host whose procServ comes from Nix run it from its profile.
fn procserv_facts(oneshot: bool) -> crate::unit::HostFacts {
    crate::unit::HostFacts { procserv: layout::procserv_from_profile().into_string(), procserv_oneshot: oneshot }
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

/// What the contents check knows of a path in a build, here or on a host.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PathFacts {
    kind: PathKind,
    /// Its permission bits, symlinks followed.
    mode: u32,
    /// Its real path, symlinks followed.
    real: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathKind {
    Dir,
    File,
    Other,
    Missing,
}

/// A path of a build on this machine.
fn local_facts(path: &Utf8Path) -> PathFacts {
    let real = std::fs::canonicalize(path).ok().map(|p| p.to_string_lossy().into_owned());
    match std::fs::metadata(path) {
        Ok(meta) => PathFacts {
            kind: if meta.is_dir() {
                PathKind::Dir
            } else if meta.is_file() {
                PathKind::File
            } else {
                PathKind::Other
            },
            mode: meta.permissions().mode() & 0o7777,
            real,
        },
        Err(_) => PathFacts { kind: PathKind::Missing, mode: 0, real: None },
    }
}

/// Every enabled IOC's working directory and startup script must be in the
/// build, also after following symlinks, or procServ would run something
/// else, or fail, on the host after the switch.
pub fn check_top_contents(top_name: &str, top: &Top, store_path: &Utf8Path) -> Result<(), BadInput> {
    let reserved = store_path.join(layout::GENERATION_DIR).symlink_metadata().is_ok();
    let root = std::fs::canonicalize(store_path).ok().map(|p| p.to_string_lossy().into_owned());
    check_contents(top_name, top, store_path, reserved, root.as_deref(), &local_facts)
}

/// [`check_top_contents`] on what is known of the build: whether it has
/// the entry kept for the generation (`reserved`), its real path (`root`),
/// and the `facts` of a path in it.
fn check_contents(
    top_name: &str,
    top: &Top,
    store_path: &Utf8Path,
    reserved: bool,
    root: Option<&str>,
    facts: &dyn Fn(&Utf8Path) -> PathFacts,
) -> Result<(), BadInput> {
    if reserved {
        return Err(BadInput::new(format!(
            "{}.tops.{}.package: the build has an entry `{}`, a name epnix-deploy keeps for itself",
            config::ROOT,
            config::attr(top_name),
            layout::GENERATION_DIR
        ))
        .hint("rename that entry in the top's build"));
    }
    let inside = |f: &PathFacts| matches!((root, &f.real), (Some(root), Some(real)) if std::path::Path::new(real).starts_with(root));
    let leaves = |what: &str, value: &str, path: &Utf8Path, f: &PathFacts| {
        BadInput::new(format!(
            "{what}: `{value}` leads outside the built top through a symlink (`{path}` resolves to `{}`)",
            f.real.as_deref().unwrap_or("?")
        ))
        .hint("a top is deployed as one store path; the IOC must run files inside it")
    };
    for (name, ioc) in top.iocs.iter().filter(|(_, ioc)| ioc.enable) {
        let path = format!("{}.tops.{}.iocs.{}", config::ROOT, config::attr(top_name), config::attr(name));
        let dir = store_path.join(&ioc.working_directory);
        let dir_facts = facts(&dir);
        if dir_facts.kind != PathKind::Dir {
            return Err(BadInput::new(format!(
                "{path}.workingDirectory: `{}` is not a directory of the built top (`{dir}`)",
                ioc.working_directory
            ))
            .hint("check the path, and that the top's build installs that directory"));
        }
        if !inside(&dir_facts) {
            return Err(leaves(&format!("{path}.workingDirectory"), ioc.working_directory.as_str(), &dir, &dir_facts));
        }
        let script = store_path.join(ioc.startup_script_in_top());
        let script_facts = facts(&script);
        match script_facts.kind {
            PathKind::File if !inside(&script_facts) => {
                return Err(leaves(&format!("{path}.startupScript"), &ioc.startup_script, &script, &script_facts));
            }
            PathKind::File if script_facts.mode & 0o111 != 0 => {}
            PathKind::File => {
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
    remote: &Remote,
    safety: &Safety,
    copy: &Copy,
) -> Vec<PlannedStep> {
    let top = plan.top.as_str();
    let mut steps = Vec::new();
    let mut on = |action: String| steps.push(PlannedStep { on: target.label.clone(), action });
    on(format!(
        "take the deploy lock `{}` (held while the deployer's connection lasts)",
        layout::records(top).join("lock")
    ));
    match copy.send {
        Some([]) => {}
        Some(send) => steps.push(PlannedStep {
            on: "local".into(),
            action: format!(
                "send the {} store path(s) the host lacks, in the switch's call: `nix-store --export` of them into `sh import.sh` (`nix-store --import`)",
                send.len()
            ),
        }),
        None if !copy.paths.is_empty() => steps.push(PlannedStep {
            on: "local".into(),
            action: copy_cmd(target, remote, false, state, copy.paths, copy.substitute).to_string(),
        }),
        None => {}
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
        on(format!(
            "confirm {}: disarm the timer, drop the restore point, note the generation healthy",
            activation::fresh_login(target)
        ));
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
            local: false,
            privilege_escalation_command: crate::target::default_escalation(),
        };
        let config = Config { hosts: BTreeMap::from([(name.to_owned(), host)]), tops: BTreeMap::new() };
        Target::resolve(name, Some(&config)).unwrap()
    }

    #[test]
    fn a_build_on_the_host_is_read_path_by_path() {
        let build = Utf8Path::new("/nix/store/abc-top");
        let (dir, script) = (Utf8Path::new("iocBoot/ioc A"), Utf8Path::new("iocBoot/ioc A/st.cmd"));
        let out = "/nix/store/abc-top\ndir 555 /nix/store/abc-top/iocBoot/ioc A\nfile 555 /nix/store/xyz/st.cmd\n";
        let facts = parse_inspect_build(build, &[dir, script], out).unwrap();
        assert_eq!(facts[build].real.as_deref(), Some("/nix/store/abc-top"));
        let script_facts = &facts[&build.join(script)];
        assert_eq!((script_facts.kind, script_facts.mode), (PathKind::File, 0o555));
        assert_eq!(script_facts.real.as_deref(), Some("/nix/store/xyz/st.cmd"), "a real path keeps its spaces");
        let missing = parse_inspect_build(build, &[dir], "/nix/store/abc-top\nmissing - -\n").unwrap();
        assert_eq!(missing[&build.join(dir)], PathFacts { kind: PathKind::Missing, mode: 0, real: None });
        assert!(parse_inspect_build(build, &[dir, script], "/nix/store/abc-top\nmissing - -\n").is_err());
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
