//! The subcommands, one file each. Each stands on the shared stages
//! (`nix` to evaluate and build, `host` to read a host, `activation` to
//! switch) and returns data; `output` prints it. Nothing here knows clap,
//! and nothing here prints to stdout.
//!
//! What several commands share lives here: resolving the host, connecting
//! (with the deploy lock for commands that change the host), the report of
//! a switch (deploy and rollback), and the garbage collector.

pub mod console;
pub mod delete;
pub mod deploy;
pub mod fleet;
pub mod ioc;
pub mod list;
pub mod logs;
pub mod remove;
pub mod rollback;
pub mod service;
pub mod status;
pub mod sudoers;

use anyhow::{Context, Result};
use schemars::JsonSchema;
use serde::Serialize;

use crate::activation;
use crate::config::{self, Config};
use crate::conserver::{self, ConserverReport};
use crate::exit::BadInput;
use crate::host::{self, Generation, HostState, RollbackEvent};
use crate::layout;
use crate::nix;
use crate::output::{self, Ended, Render, Style};
use crate::plan::{self, Change, Plan, Switch};
use crate::progress::Progress;
use crate::remote;
use crate::ssh::Remote;
use crate::suggest;
use crate::table;
use crate::target::{self, HostSelection, Selection, Target};

/// The subcommands' names, for "did you mean" when one is mistaken for a
/// host (`cli` checks that they are its subcommands).
pub const NAMES: [&str; 13] = [
    "deploy",
    "list",
    "status",
    "rollback",
    "delete-generation",
    "remove",
    "logs",
    "console",
    "start",
    "stop",
    "restart",
    "sudoers",
    "completions",
];

/// Every command's result or error, tagged with the command's name: the
/// body of the `--json` document.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Run {
    Deploy(Ended<SwitchReport>),
    List(Ended<list::ListReport>),
    Status(Ended<status::StatusReport>),
    Rollback(Ended<SwitchReport>),
    DeleteGeneration(Ended<delete::DeleteReport>),
    Remove(Ended<remove::RemoveReport>),
    Start(Ended<service::ServiceReport>),
    Stop(Ended<service::ServiceReport>),
    Restart(Ended<service::ServiceReport>),
    /// `deploy` over a selection of hosts (`--on`, or tops without a host):
    /// one entry per host and top.
    FleetDeploy(Ended<fleet::FleetReport<SwitchReport>>),
    /// `status --on`: one entry per host.
    FleetStatus(Ended<fleet::FleetReport<status::StatusReport>>),
    /// `list <top> --on`: one entry per host.
    FleetList(Ended<fleet::FleetReport<list::ListReport>>),
    /// `rollback <top> --on`: one entry per host.
    FleetRollback(Ended<fleet::FleetReport<SwitchReport>>),
}

/// The JSON Schema of the `--json` document, committed as
/// `src/output.schema.json` (a test keeps the file current).
pub fn json_schema() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(output::Document<Run>)).expect("schemas serialize");
    schema["title"] = "epnix-deploy --json output".into();
    schema["$id"] = format!("epnix-deploy/output/v{}", output::VERSION).into();
    schema
}

/// Resolves the host, with the configuration when there is one. The bare
/// `user@hostname[:port]` form needs no flake, so the commands other than
/// deploy work with no flake at hand.
fn target(sel: &Selection) -> Result<(Target, Option<Config>)> {
    host_target(&sel.on(), Some(&sel.top))
}

/// Resolves the host of a command that may name a `top` (for "did you
/// mean" when the two are swapped), with the configuration when the host
/// is a configured name.
fn host_target(on: &HostSelection, top: Option<&str>) -> Result<(Target, Option<Config>)> {
    if let Some(top) = top.filter(|t| !config::is_safe_name(t)) {
        return Err(BadInput::new(format!("`{top}` is not a valid top name")).into());
    }
    if on.outside_config() {
        return Ok((on.target(None)?, None));
    }
    let config = evaluate_once(&on.flake).map_err(|err| {
        err.context(format!(
            "`{}` is a host name, which needs the flake's `epnixDeploy.hosts`; without a flake, give the host as `user@hostname[:port]`",
            on.host
        ))
    })?;
    let target = resolve(&config, on, top)?;
    Ok((target, Some(config)))
}

/// Evaluates the flake once per run: a run over many hosts resolves each
/// of them here, from one flake. The lock is held while Nix evaluates, so
/// that hosts starting together wait for one evaluation.
fn evaluate_once(flake: &nix::Flake) -> Result<Config> {
    static EVALUATED: std::sync::Mutex<Vec<(nix::Flake, Config)>> = std::sync::Mutex::new(Vec::new());
    let mut evaluated = EVALUATED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, config)) = evaluated.iter().find(|(f, _)| f == flake) {
        return Ok(config.clone());
    }
    let config = nix::evaluate(flake)?;
    evaluated.push((flake.clone(), config.clone()));
    Ok(config)
}

/// Resolves a configured host, with a "did you mean" for a misspelt host,
/// and for a top and host given the wrong way round.
pub fn resolve(config: &Config, on: &HostSelection, top: Option<&str>) -> Result<Target, BadInput> {
    if !config.hosts.contains_key(&on.host) && !on.outside_config() {
        let swapped = top.is_some_and(|top| config.tops.contains_key(&on.host) && config.hosts.contains_key(top));
        if swapped {
            return Err(BadInput::new(format!(
                "`{}` is a top and `{}` a host: the host comes first",
                on.host,
                top.unwrap_or_default()
            ))
            .hint(format!("epnix-deploy … {} {}", top.unwrap_or_default(), on.host)));
        }
        let err = BadInput::new(format!("unknown host `{}`", on.host));
        if let Some(near) = suggest::closest(&on.host, config.hosts.keys()) {
            return Err(err.hint(format!("did you mean `{near}`? Or give the host as `user@hostname[:port]`")));
        }
        if let Some(command) = suggest::closest(&on.host, &NAMES) {
            return Err(err.hint(format!("did you mean the command, `epnix-deploy {command} …`?")));
        }
        let hosts: Vec<&str> = config.hosts.keys().map(String::as_str).collect();
        return Err(err.hint(format!(
            "it is neither a host of `{}.hosts` ({}) nor a command ({}); a host outside the configuration is `user@hostname[:port]`",
            config::ROOT,
            if hosts.is_empty() { "none".to_owned() } else { hosts.join(", ") },
            NAMES.join(", ")
        )));
    }
    on.target(Some(config))
}

/// A top that is not in the configuration, with a "did you mean".
pub fn unknown_top(config: &Config, top: &str) -> BadInput {
    let err = BadInput::new(format!("there is no top `{top}` in `{}.tops`", config::ROOT));
    let known: Vec<&str> = config.tops.keys().map(String::as_str).collect();
    match suggest::closest(top, config.tops.keys()) {
        Some(near) => err.hint(format!("did you mean `{near}`? Configured tops: {}", known.join(", "))),
        None if known.is_empty() => err.hint(format!("`{}.tops` is empty", config::ROOT)),
        None => err.hint(format!("configured tops: {}", known.join(", "))),
    }
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
    let state = match changing {
        Some(changing) => {
            let expect_name = target.expected_hostname().filter(|_| !changing.skip_hostname_check);
            let who = target::deployer();
            let (stale, state) = activation::take_lock(
                &mut remote,
                &target,
                &sel.top,
                &who,
                expect_name,
                false,
                Some(host::inspect_args(depth, &[])),
            )?;
            if let Some(stale) = stale {
                progress
                    .note(&format!("note: took over the lock of a deploy that ended without releasing it ({stale})"));
            }
            state.expect("inspected under the lock")
        }
        None => host::inspect(&remote, &sel.top, depth)?,
    };
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

/// The host's conserver settings, when it asks for conserver
/// (`hosts.<name>.conserver.enable`); a `user@hostname` target never does.
fn conserver_of<'a>(target: &Target, config: Option<&'a Config>) -> Option<&'a config::Conserver> {
    let host = config?.hosts.get(target.name.as_ref()?)?;
    Some(&host.conserver).filter(|c| c.enable)
}

/// Rewrites the host's conserver include file, when the host asks for
/// conserver. Called once a deploy, rollback or remove has succeeded, so it
/// never fails the command: the IOCs are where they should be. What keeps
/// conserver from offering the consoles goes to stderr as warnings, and into
/// the report.
fn update_conserver(
    remote: &Remote,
    target: &Target,
    config: Option<&Config>,
    progress: &Progress,
) -> Option<ConserverReport> {
    let settings = conserver_of(target, config)?;
    let step = progress.step(&target.label, "conserver");
    let report = conserver::update(remote, settings);
    step.done(&report.summary());
    for warning in report.warnings(&target.label) {
        progress.note(&warning);
    }
    Some(report)
}

/// The dry run's line for [`update_conserver`].
fn conserver_step(target: &Target, config: Option<&Config>) -> Option<PlannedStep> {
    let settings = conserver_of(target, config)?;
    Some(PlannedStep { on: target.label.clone(), action: conserver::planned(settings) })
}

/// A rollback the host carried out, as `list` and `status` report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRecord {
    /// When, in RFC 3339.
    pub at: String,
    /// The generation it went back to; `null` when a first deploy was undone.
    pub to: Option<u32>,
    /// `failed-checks`, `unconfirmed` (the host did it by itself) or `reboot`.
    pub reason: String,
    /// Whether every step of it succeeded.
    pub ok: bool,
}

impl From<&RollbackEvent> for RollbackRecord {
    fn from(e: &RollbackEvent) -> RollbackRecord {
        RollbackRecord { at: output::rfc3339(e.at), to: e.to, reason: e.reason.clone(), ok: e.ok }
    }
}

/// What the garbage collector freed.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
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

/// The outcome of a switch, deploy or rollback: where the top stands
/// afterwards and what happened to each IOC.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwitchReport {
    pub host: String,
    pub top: String,
    /// A dry run: nothing changed, `plan` says what would.
    pub dry_run: bool,
    /// The generation the top runs from afterwards (on a dry run: now);
    /// `null` when there is none.
    pub generation: Option<u32>,
    /// The generation before.
    pub previous_generation: Option<u32>,
    /// Whether the run made a new generation (on a dry run: would make).
    pub new_generation: bool,
    /// The generation's store path, when it is known.
    pub store_path: Option<String>,
    /// The top's build that runs.
    pub build: String,
    /// Every IOC of the top, and those it no longer has.
    pub iocs: Vec<IocChange>,
    /// On a dry run, what would be done, in order.
    pub plan: Option<Vec<PlannedStep>>,
    /// The host's conserver include file, when the host asks for conserver
    /// (not on a dry run).
    pub conserver: Option<ConserverReport>,
}

/// What a switch did (or would do) to one IOC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IocChange {
    pub ioc: String,
    pub unit: String,
    pub change: Change,
    /// Why a drifted IOC is restarted (`change` is `drift`).
    pub drift: Option<String>,
}

/// One step of a dry run's plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedStep {
    /// Where it runs: the host, or `local`.
    pub on: String,
    /// What it does, with the exact command where there is one.
    pub action: String,
}

impl SwitchReport {
    pub fn new(target: &Target, plan: &Plan, generation: Option<u32>, previous: Option<u32>) -> SwitchReport {
        SwitchReport {
            host: target.label.clone(),
            top: plan.top.clone(),
            dry_run: false,
            generation,
            previous_generation: previous,
            new_generation: plan.switch == Switch::New && generation != previous,
            store_path: plan.generation_path.as_ref().map(|p| p.to_string()),
            build: plan.build.to_string(),
            iocs: plan
                .iocs
                .iter()
                .map(|(name, change)| IocChange {
                    ioc: name.clone(),
                    unit: layout::unit_name(name),
                    change: *change,
                    drift: plan.drift.get(name).map(|d| d.describe()),
                })
                .collect(),
            plan: None,
            conserver: None,
        }
    }

    /// The GENERATION column: `4 (new)`, `3 (was 4)`, `3 (unchanged)`.
    pub(crate) fn generation_text(&self) -> String {
        match (self.generation, self.previous_generation) {
            (Some(g), _) if self.new_generation => format!("{g} (new)"),
            (Some(g), Some(p)) if g != p => format!("{g} (was {p})"),
            (Some(g), _) => format!("{g} (unchanged)"),
            (None, _) => "-".to_owned(),
        }
    }

    /// A dry run's plan, as people read it.
    fn plan_text(&self, steps: &[PlannedStep]) -> String {
        let profile = layout::profile(&self.top);
        let path = self.store_path.as_deref().unwrap_or("-");
        let mut out = format!("Plan for top `{}` on `{}` (dry run: nothing changes)\n", self.top, self.host);
        out += &match (self.generation, self.new_generation) {
            (Some(g), false) => format!("  profile {profile}: stays at generation {g}\n"),
            (Some(g), true) => format!("  profile {profile}: generation {g} -> new generation ({path})\n"),
            (None, _) => format!("  profile {profile}: new, generation 1 ({path})\n"),
        };
        out += &format!("  build: {}\n", self.build);
        for ioc in &self.iocs {
            let why = ioc.drift.as_ref().map(|d| format!(": {d}")).unwrap_or_default();
            out += &format!("  {} ({}): {}{why}\n", ioc.ioc, ioc.unit, ioc.change.as_str());
        }
        out += "Steps:\n";
        for step in steps {
            out += &format!("  {}: {}\n", step.on, step.action);
        }
        out
    }
}

impl Render for SwitchReport {
    fn text(&self, _: &Style) -> String {
        if let Some(steps) = &self.plan {
            return self.plan_text(steps);
        }
        let generation = self.generation_text();
        let mut rows = vec![["HOST", "TOP", "GENERATION", "IOC", "STATUS"].map(String::from)];
        for ioc in &self.iocs {
            rows.push([
                self.host.clone(),
                self.top.clone(),
                generation.clone(),
                ioc.ioc.clone(),
                ioc.change.as_str().to_owned(),
            ]);
        }
        if self.iocs.is_empty() {
            rows.push([self.host.clone(), self.top.clone(), generation, "-".into(), "no IOC enabled".into()]);
        }
        table::render(&rows)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::host::{Outcome, Verdict};

    /// The schema file is what the types say; `UPDATE_SCHEMA=1` rewrites it.
    #[test]
    fn the_output_schema_file_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/output.schema.json");
        let want = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(have == want, "{path} is not current: run `UPDATE_SCHEMA=1 cargo test --lib output_schema`");
    }

    /// A deploy that restarted one IOC, made a new generation, removed another.
    pub(crate) fn switched() -> SwitchReport {
        SwitchReport {
            host: "ioc1".into(),
            top: "myTop".into(),
            dry_run: false,
            generation: Some(4),
            previous_generation: Some(3),
            new_generation: true,
            store_path: Some(format!("/nix/store/{}-myTop-generation", "4".repeat(32))),
            build: format!("/nix/store/{}-myTop", "b".repeat(32)),
            iocs: vec![
                IocChange {
                    ioc: "iocA".into(),
                    unit: "epnix-iocA.service".into(),
                    change: Change::Changed,
                    drift: None,
                },
                IocChange {
                    ioc: "iocB".into(),
                    unit: "epnix-iocB.service".into(),
                    change: Change::Drift,
                    drift: Some("the unit file changed after the IOC started".into()),
                },
                IocChange {
                    ioc: "iocC".into(),
                    unit: "epnix-iocC.service".into(),
                    change: Change::Removed,
                    drift: None,
                },
            ],
            plan: None,
            conserver: Some(ConserverReport {
                include_file: "/etc/conserver/epnix-deploy.cf".into(),
                consoles: vec!["iocA".into(), "iocB".into(), "iocOther".into()],
                changed: true,
                reloaded: true,
                problems: vec![conserver::Problem {
                    kind: conserver::ProblemKind::NotRoot,
                    message: "conserver runs as `conservr`, who cannot open the UNIX consoles of `iocA`".into(),
                    hint: "run conserver as root".into(),
                }],
            }),
        }
    }

    fn dry_run() -> SwitchReport {
        let mut report = switched();
        report.dry_run = true;
        report.conserver = None;
        report.generation = Some(3);
        report.plan = Some(vec![
            PlannedStep { on: "ioc1".into(), action: "take the deploy lock".into() },
            PlannedStep { on: "local".into(), action: "nix copy --to ssh://root@ioc1 /nix/store/…".into() },
        ]);
        report
    }

    fn document(run: Run) -> String {
        let exit = crate::exit::Exit::Success;
        let doc = output::Document { version: output::VERSION, outcome: exit, exit_code: exit.code(), run };
        serde_json::to_string_pretty(&doc).unwrap()
    }

    /// Every `--json` shape, pinned.
    #[test]
    fn json_documents() {
        insta::assert_snapshot!("deploy", document(Run::Deploy(Ended::Done { result: switched() })));
        insta::assert_snapshot!("deploy_dry_run", document(Run::Deploy(Ended::Done { result: dry_run() })));
        insta::assert_snapshot!("list", document(Run::List(Ended::Done { result: list::tests::sample() })));
        insta::assert_snapshot!("status", document(Run::Status(Ended::Done { result: status::tests::sample() })));
        let deleted = delete::tests::sample(false);
        insta::assert_snapshot!("delete", document(Run::DeleteGeneration(Ended::Done { result: deleted })));
        insta::assert_snapshot!("remove", document(Run::Remove(Ended::Done { result: remove::tests::sample() })));
        insta::assert_snapshot!("restart", document(Run::Restart(Ended::Done { result: service::tests::sample() })));
        let fleet = fleet::tests::sample();
        insta::assert_snapshot!("fleet_deploy", document(Run::FleetDeploy(Ended::Done { result: fleet })));
        let fleet = fleet::tests::status_sample();
        insta::assert_snapshot!("fleet_status", document(Run::FleetStatus(Ended::Done { result: fleet })));
        let fleet = fleet::tests::list_sample();
        insta::assert_snapshot!("fleet_list", document(Run::FleetList(Ended::Done { result: fleet })));
        let error = output::ErrorReport {
            host: Some("ioc1".into()),
            top: Some("myTop".into()),
            step: Some("build".into()),
            message: "building top `myTop` failed".into(),
            hint: Some("nothing was copied; fix the build and deploy again".into()),
            causes: vec![],
        };
        let exit = crate::exit::Exit::BadInput;
        let doc = output::Document {
            version: output::VERSION,
            outcome: exit,
            exit_code: exit.code(),
            run: Run::Deploy(Ended::Failed { error }),
        };
        insta::assert_snapshot!("failure", serde_json::to_string_pretty(&doc).unwrap());
    }

    /// The tables of a deploy and of a dry run's plan.
    #[test]
    fn switch_texts() {
        insta::assert_snapshot!(switched().text(&Style::default()));
        insta::assert_snapshot!(dry_run().text(&Style::default()));
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
    pub(crate) fn six(failed: &[u32]) -> HostState {
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
}
