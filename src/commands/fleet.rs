//! Runs over many hosts: `deploy [<top>...] --on <selector>,...`, and
//! `status`, `list` and `rollback` with `--on <selector>,...`.
//!
//! A run reads the flake and builds each top once, then gives every host a
//! thread of its own, up to `--parallel` at a time, and runs there the same
//! pipeline as `epnix-deploy <host> <top>` (`deploy::deploy_to`): its own
//! master connection, lock, checks and magic rollback. The tops of one host
//! go one after another. With `--canary N`, the first N hosts go first, and
//! the others only once every one of them passed its checks and confirmed.
//!
//! What each host got is an [`Entry`] of the [`FleetReport`], and the run
//! exits with the worst of them (`Exit::worst`). A host that was not reached
//! (the canary failed, `--fail-fast`, Ctrl-C) was not touched.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::Result;
use schemars::JsonSchema;
use serde::Serialize;

use super::deploy::{self, DeployOptions, Evaluated, TopBuild};
use super::list::{self, ListReport};
use super::rollback::{self, RollbackOptions};
use super::status::{self, StatusOptions, StatusReport};
use super::{SwitchReport, resolve, unknown_top};
use crate::activation;
use crate::config::{self, Config};
use crate::exit::{self, BadInput, Exit};
use crate::nix::Flake;
use crate::output::{ErrorReport, Render, Style};
use crate::progress::{Progress, Step};
use crate::suggest;
use crate::table;
use crate::target::{HostSelection, Selection, Target};

/// Hosts at a time when `--parallel` is not given, as colmena does.
pub const DEFAULT_PARALLEL: usize = 10;

/// One word of `--on`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// `@linac`: every host whose `tags` has `linac`.
    Tag(String),
    /// `ioc-linac-*`: every host whose name matches; `*` is any run of
    /// characters, `?` any one.
    Glob(String),
    /// A host of `epnixDeploy.hosts`.
    Name(String),
    /// `user@hostname[:port]`, a host outside the configuration.
    Bare(String),
}

impl Selector {
    pub fn parse(word: &str) -> Result<Selector, BadInput> {
        let word = word.trim();
        if word.is_empty() {
            return Err(BadInput::new("`--on` has an empty selector").hint(SELECTOR_HINT));
        }
        Ok(match word.strip_prefix('@') {
            Some("") => return Err(BadInput::new("`@` names no tag").hint(SELECTOR_HINT)),
            Some(tag) => Selector::Tag(tag.to_owned()),
            None if word.contains('@') => Selector::Bare(word.to_owned()),
            None if word.contains(['*', '?']) => Selector::Glob(word.to_owned()),
            None => Selector::Name(word.to_owned()),
        })
    }

    /// Whether the host can be reached without the flake.
    fn is_bare(&self) -> bool {
        matches!(self, Selector::Bare(_))
    }
}

const SELECTOR_HINT: &str = "a selector is a host's name, a glob of names (`ioc-linac-*`), `@tag`, or `user@hostname[:port]`, separated by commas";

/// Whether `name` matches `glob` (`*` any run of characters, `?` any one).
fn glob_matches(glob: &str, name: &str) -> bool {
    let (glob, name): (Vec<char>, Vec<char>) = (glob.chars().collect(), name.chars().collect());
    // The classic two-pointer match, backtracking to the last `*`.
    let (mut g, mut n, mut star, mut mark) = (0, 0, None, 0);
    while n < name.len() {
        match glob.get(g) {
            Some('*') => {
                star = Some(g);
                mark = n;
                g += 1;
            }
            Some(c) if *c == '?' || *c == name[n] => {
                g += 1;
                n += 1;
            }
            _ => match star {
                Some(s) => {
                    g = s + 1;
                    mark += 1;
                    n = mark;
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|c| *c == '*')
}

/// The hosts `selectors` name, in the order given (each selector's hosts
/// by name), each once: configured names, or the bare form.
pub fn select_hosts(config: Option<&Config>, selectors: &[Selector]) -> Result<Vec<String>, BadInput> {
    let mut hosts: Vec<String> = Vec::new();
    let mut add = |host: &str| {
        if !hosts.iter().any(|h| h == host) {
            hosts.push(host.to_owned());
        }
    };
    for selector in selectors {
        let config = match (selector, config) {
            (Selector::Bare(bare), _) => {
                add(bare);
                continue;
            }
            (_, Some(config)) => config,
            (_, None) => unreachable!("only bare selectors are read without the flake"),
        };
        match selector {
            Selector::Tag(tag) => {
                let tagged: Vec<&String> =
                    config.hosts.iter().filter(|(_, h)| h.tags.contains(tag)).map(|(name, _)| name).collect();
                if tagged.is_empty() {
                    let mut tags: Vec<&String> = config.hosts.values().flat_map(|h| &h.tags).collect();
                    tags.sort();
                    tags.dedup();
                    let err = BadInput::new(format!("no host of `{}.hosts` has the tag `{tag}`", config::ROOT));
                    return Err(match suggest::closest(tag, tags.iter().map(|t| t.as_str())) {
                        Some(near) => err.hint(format!("did you mean `@{near}`?")),
                        None if tags.is_empty() => err.hint("no host has `tags`; give hosts `tags = [ \"…\" ]`"),
                        None => err.hint(format!(
                            "tags in use: {}",
                            tags.iter().map(|t| format!("@{t}")).collect::<Vec<_>>().join(", ")
                        )),
                    });
                }
                tagged.into_iter().for_each(|h| add(h));
            }
            Selector::Glob(glob) => {
                let matched: Vec<&String> = config.hosts.keys().filter(|name| glob_matches(glob, name)).collect();
                if matched.is_empty() {
                    let known: Vec<&str> = config.hosts.keys().map(String::as_str).collect();
                    return Err(BadInput::new(format!("`{glob}` matches no host of `{}.hosts`", config::ROOT))
                        .hint(format!("configured hosts: {}", known.join(", "))));
                }
                matched.into_iter().for_each(|h| add(h));
            }
            Selector::Name(name) => {
                let on =
                    HostSelection { flake: Flake::default(), host: name.clone(), ssh_opts: Vec::new(), local: None };
                resolve(config, &on, None)?;
                add(name);
            }
            Selector::Bare(_) => unreachable!("handled above"),
        }
    }
    Ok(hosts)
}

/// How the hosts of a run are run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Hosts at a time (at least 1).
    pub parallel: usize,
    /// No host starts after one failed.
    pub fail_fast: bool,
    /// The first N hosts go first, the others only once all of those passed.
    pub canary: Option<usize>,
}

/// What goes where, in which order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetPlan {
    /// Hosts at a time.
    pub parallel: usize,
    /// No host starts after one failed (`--fail-fast`).
    pub fail_fast: bool,
    /// In order: with `--canary N`, `canary` (the first N hosts), then
    /// `rest`, which starts only once every canary passed; else `all`.
    pub stages: Vec<Stage>,
    /// Hosts the selection named that none of the tops asked for runs on.
    pub skipped: Vec<String>,
}

/// Hosts that run together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// `canary`, `rest` or `all`.
    pub stage: String,
    pub hosts: Vec<PlannedHost>,
}

/// One host of a run, and its tops, in the order they go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedHost {
    pub host: String,
    /// Empty for a command about the whole host (`status`).
    pub tops: Vec<String>,
    /// The host builds its tops itself (`--build-on-target`, `buildOnTarget`).
    pub build_on_target: bool,
}

impl FleetPlan {
    fn hosts(&self) -> impl Iterator<Item = &PlannedHost> {
        self.stages.iter().flat_map(|s| &s.hosts)
    }
}

/// Splits `hosts` into stages.
fn stages(hosts: Vec<PlannedHost>, canary: Option<usize>) -> Vec<Stage> {
    match canary {
        Some(n) if n < hosts.len() => {
            let mut first = hosts;
            let rest = first.split_off(n);
            vec![Stage { stage: "canary".into(), hosts: first }, Stage { stage: "rest".into(), hosts: rest }]
        }
        Some(_) => vec![Stage { stage: "canary".into(), hosts }],
        None => vec![Stage { stage: "all".into(), hosts }],
    }
}

/// Which top goes to which host, in which order. Without selectors, every
/// host of each top, in the order of the tops' `hosts`; with them, the
/// hosts they name, in their order. On a host, the tops go in the order
/// named, or with none named, every top that runs there (by name).
pub fn plan_deploy(
    config: &Config,
    tops: &[String],
    selectors: &[Selector],
    schedule: Schedule,
    build_on_target: bool,
) -> Result<FleetPlan, BadInput> {
    for top in tops {
        if !config.tops.contains_key(top) {
            let err = unknown_top(config, top);
            return Err(if config.hosts.contains_key(top) {
                err.hint(format!(
                    "`{top}` is a host: give it with `--on {top}` (every top of it), or as `epnix-deploy {top} <top>`"
                ))
            } else {
                err
            });
        }
    }
    let hosts = if selectors.is_empty() {
        let mut hosts: Vec<String> = Vec::new();
        for top in tops {
            for host in &config.tops[top].hosts {
                if !hosts.contains(host) {
                    hosts.push(host.clone());
                }
            }
        }
        hosts
    } else {
        select_hosts(Some(config), selectors)?
    };
    let mut planned = Vec::new();
    let mut skipped = Vec::new();
    for host in hosts {
        let bare = !config.hosts.contains_key(&host);
        if bare && tops.is_empty() {
            return Err(BadInput::new(format!("`{host}` is outside the configuration: it runs no top of its own"))
                .hint(format!("name the tops to deploy there: `epnix-deploy deploy <top>… --on {host}`")));
        }
        let host_tops: Vec<String> = if tops.is_empty() {
            config.tops.iter().filter(|(_, t)| t.hosts.contains(&host)).map(|(name, _)| name.clone()).collect()
        } else {
            tops.iter().filter(|t| bare || config.tops[*t].hosts.contains(&host)).cloned().collect()
        };
        if host_tops.is_empty() {
            skipped.push(host);
            continue;
        }
        let on_target = build_on_target || config.hosts.get(&host).is_some_and(|h| h.build_on_target);
        planned.push(PlannedHost { host, tops: host_tops, build_on_target: on_target });
    }
    if planned.is_empty() {
        let what = if tops.is_empty() { "no top".to_owned() } else { format!("none of {}", quoted(tops)) };
        return Err(BadInput::new(format!("nothing to deploy: {what} runs on {}", quoted(&skipped)))
            .hint(format!("a top runs on the hosts of its `{}.tops.<top>.hosts`", config::ROOT)));
    }
    Ok(FleetPlan {
        parallel: schedule.parallel,
        fail_fast: schedule.fail_fast,
        stages: stages(planned, schedule.canary),
        skipped,
    })
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// Why a host (or one of its tops) was not reached; nothing was done there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NotReached {
    /// A host of the canary stage failed: the rollout stopped.
    CanaryFailed,
    /// Another host failed, under `--fail-fast`.
    FailFast,
    /// Ctrl-C.
    Interrupted,
    /// An earlier top of the same host failed.
    EarlierTopFailed,
}

impl NotReached {
    fn describe(self) -> &'static str {
        match self {
            NotReached::CanaryFailed => "the canary failed",
            NotReached::FailFast => "another host failed (--fail-fast)",
            NotReached::Interrupted => "interrupted",
            NotReached::EarlierTopFailed => "an earlier top of the host failed",
        }
    }
}

/// What became of one host (and top) of a run.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "{T}OnHost")]
pub struct Entry<T> {
    pub host: String,
    /// The top; `null` for a command about the whole host (`status`).
    pub top: Option<String>,
    /// How it ended; `null` when it was not reached.
    pub outcome: Option<Exit>,
    /// The exit code that outcome has alone.
    pub exit_code: Option<u8>,
    /// Why it was not reached: nothing was done there.
    pub not_reached: Option<NotReached>,
    pub result: Option<T>,
    pub error: Option<ErrorReport>,
}

impl<T> Entry<T> {
    fn not_reached(host: &str, top: Option<&str>, why: NotReached) -> Entry<T> {
        Entry {
            host: host.to_owned(),
            top: top.map(str::to_owned),
            outcome: None,
            exit_code: None,
            not_reached: Some(why),
            result: None,
            error: None,
        }
    }

    /// Whether it ended in anything but success.
    fn failed(&self) -> bool {
        self.outcome.is_some_and(|o| o != Exit::Success)
    }

    /// `host`, or `host top`, as lines name it.
    fn name(&self) -> String {
        match &self.top {
            Some(top) => format!("{} {top}", self.host),
            None => self.host.clone(),
        }
    }
}

/// A run over many hosts: the plan, and what became of each host and top.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "Fleet{T}")]
pub struct FleetReport<T> {
    /// A dry run: nothing changed; each entry's result has its host's plan.
    pub dry_run: bool,
    pub plan: FleetPlan,
    /// One per host and top, in the plan's order.
    pub entries: Vec<Entry<T>>,
}

impl<T> FleetReport<T> {
    /// The worst outcome of the run.
    pub fn exit(&self) -> Exit {
        Exit::worst(self.entries.iter().filter_map(|e| e.outcome))
    }
}

/// One host's work in a run: `top` (none for a command about the whole
/// host), with the host's own progress; the result and how it ended.
type Job<'a, T> = dyn Fn(&PlannedHost, Option<&str>, &Progress) -> Result<(T, Exit)> + Sync + 'a;

/// Runs `job` on every host of the plan, stage after stage, at most
/// `plan.parallel` at a time, each host's tops one after another. With
/// `gated`, a stage starts only when the one before had no failure (the
/// canary), and `--fail-fast` holds. The entries come in the plan's order.
fn run_hosts<T: Send>(plan: &FleetPlan, gated: bool, progress: &Progress, job: &Job<T>) -> Vec<Entry<T>> {
    let mut entries = Vec::new();
    let mut stopped: Option<NotReached> = None;
    for stage in &plan.stages {
        let slots: Vec<Mutex<Vec<Entry<T>>>> = stage.hosts.iter().map(|_| Mutex::new(Vec::new())).collect();
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let workers = plan.parallel.max(1).min(stage.hosts.len());
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    loop {
                        let k = next.fetch_add(1, Ordering::SeqCst);
                        let Some(host) = stage.hosts.get(k) else { break };
                        let why = if activation::interrupted() {
                            Some(NotReached::Interrupted)
                        } else if gated && plan.fail_fast && failed.load(Ordering::SeqCst) {
                            Some(NotReached::FailFast)
                        } else {
                            stopped
                        };
                        let host_entries = match why {
                            Some(why) => not_reached(host, why),
                            None => run_host(host, progress, job),
                        };
                        if host_entries.iter().any(Entry::failed) {
                            failed.store(true, Ordering::SeqCst);
                        }
                        *slots[k].lock().unwrap_or_else(|e| e.into_inner()) = host_entries;
                    }
                });
            }
        });
        entries.extend(slots.into_iter().flat_map(|s| s.into_inner().unwrap_or_else(|e| e.into_inner())));
        let failed = failed.load(Ordering::SeqCst);
        stopped = stopped.or(if activation::interrupted() {
            Some(NotReached::Interrupted)
        } else if gated && failed && stage.stage == "canary" {
            Some(NotReached::CanaryFailed)
        } else if gated && failed && plan.fail_fast {
            Some(NotReached::FailFast)
        } else {
            None
        });
    }
    entries
}

/// Every top of `host` (or the host itself), not reached.
fn not_reached<T>(host: &PlannedHost, why: NotReached) -> Vec<Entry<T>> {
    if host.tops.is_empty() {
        return vec![Entry::not_reached(&host.host, None, why)];
    }
    host.tops.iter().map(|top| Entry::not_reached(&host.host, Some(top), why)).collect()
}

/// Runs `job` for each top of `host` in turn; after a failure, the host's
/// later tops are not reached. Errors go to stderr as they happen.
fn run_host<T>(host: &PlannedHost, progress: &Progress, job: &Job<T>) -> Vec<Entry<T>> {
    let mine = progress.for_host(&host.host);
    let tops: Vec<Option<&str>> =
        if host.tops.is_empty() { vec![None] } else { host.tops.iter().map(|t| Some(t.as_str())).collect() };
    let mut entries: Vec<Entry<T>> = Vec::new();
    for (i, top) in tops.iter().enumerate() {
        if entries.iter().any(Entry::failed) {
            entries.push(Entry::not_reached(&host.host, *top, NotReached::EarlierTopFailed));
            continue;
        }
        if activation::interrupted() {
            entries.push(Entry::not_reached(&host.host, *top, NotReached::Interrupted));
            continue;
        }
        if let (Some(top), true) = (top, tops.len() > 1) {
            mine.note(&format!("{}: top `{top}` ({} of {})", host.host, i + 1, tops.len()));
        }
        // The host's line, with this top's own failed step.
        let progress = mine.for_next();
        let mut entry = Entry {
            host: host.host.clone(),
            top: top.map(str::to_owned),
            outcome: None,
            exit_code: None,
            not_reached: None,
            result: None,
            error: None,
        };
        match job(host, *top, &progress) {
            Ok((result, outcome)) => {
                entry.outcome = Some(outcome);
                entry.result = Some(result);
            }
            Err(err) => {
                let outcome = exit::code_for(&err);
                let mut error = ErrorReport::new(&err);
                error.host = Some(host.host.clone());
                error.top = top.map(str::to_owned);
                error.step = progress.failed_step().map(|(_, step)| step);
                let mut text = format!("error: {}: {err}", entry.name());
                for cause in err.chain().skip(1) {
                    text += &format!("\n  caused by: {cause}");
                }
                mine.error(&text);
                entry.outcome = Some(outcome);
                entry.error = Some(error);
            }
        }
        entry.exit_code = entry.outcome.map(Exit::code);
        entries.push(entry);
    }
    let worst = Exit::worst(entries.iter().filter_map(|e| e.outcome));
    let summary = match (worst, entries.iter().find(|e| e.failed()).and_then(|e| e.top.as_ref())) {
        (Exit::Success, _) => "done".to_owned(),
        (worst, Some(top)) => format!("{} (exit {}), top `{top}`", outcome_name(worst), worst.code()),
        (worst, None) => format!("{} (exit {})", outcome_name(worst), worst.code()),
    };
    mine.finish_host(&host.host, worst == Exit::Success, &summary);
    entries
}

/// An outcome as the summary names it.
fn outcome_name(exit: Exit) -> &'static str {
    match exit {
        Exit::Success => "ok",
        Exit::Failed => "failed",
        Exit::BadInput => "bad input",
        Exit::NeedsAttention => "needs attention",
        Exit::Unknown => "outcome unknown",
        Exit::Busy => "busy",
        Exit::Unreachable => "unreachable",
        Exit::Interrupted => "interrupted",
    }
}

/// `deploy` over many hosts, as checked from the command line.
#[derive(Clone, Debug)]
pub struct FleetDeployOptions {
    /// The tops named (none: every top of each selected host).
    pub tops: Vec<String>,
    /// `--on` (none: every host of each named top).
    pub on: Vec<Selector>,
    pub schedule: Schedule,
    /// What each host's deploy does: its selection names the flake and
    /// `--ssh-opts`; the host and the top come from the plan.
    pub deploy: DeployOptions,
}

/// Deploys over many hosts; the report and the run's exit code.
/// `evaluated` is the flake's configuration when the caller read it
/// already, with the step that did.
pub fn deploy(
    opts: &FleetDeployOptions,
    evaluated: Option<(Evaluated, Step)>,
    progress: &Progress,
) -> Result<(FleetReport<SwitchReport>, Exit)> {
    let flake = &opts.deploy.selection.flake;
    let (evaluated, step) = match evaluated {
        Some(done) => done,
        None => {
            let step = progress.step("local", "evaluate");
            (deploy::evaluate(flake)?, step)
        }
    };
    let config = &evaluated.config;
    let plan = plan_deploy(config, &opts.tops, &opts.on, opts.schedule, opts.deploy.build_on_target)?;
    // Every host resolves before anything runs: a bad one is bad input.
    let mut targets = BTreeMap::new();
    for host in plan.hosts() {
        let on = HostSelection {
            flake: flake.clone(),
            host: host.host.clone(),
            ssh_opts: opts.deploy.selection.ssh_opts.clone(),
            local: None,
        };
        targets.insert(host.host.clone(), on.target(Some(config))?);
    }
    let tops: Vec<&String> = {
        let mut tops: Vec<&String> = plan.hosts().flat_map(|h| &h.tops).collect();
        tops.sort();
        tops.dedup();
        tops
    };
    step.done(&format!(
        "{} top(s) to {} host(s) ({})",
        tops.len(),
        targets.len(),
        plan.stages.iter().map(|s| format!("{} {}", s.stage, s.hosts.len())).collect::<Vec<_>>().join(", ")
    ));
    for host in &plan.skipped {
        progress.note(&format!("note: `{host}` runs none of the tops named: skipped"));
    }

    // Each top is built once, here for the hosts that take the build from
    // here, as a derivation for those that build it themselves.
    let mut builds: BTreeMap<String, TopBuild> = BTreeMap::new();
    for top in tops {
        let users = plan.hosts().filter(|h| h.tops.contains(top));
        let (here, for_hosts) =
            users.fold((false, false), |(h, t), u| (h || !u.build_on_target, t || u.build_on_target));
        let built = deploy::build_top(flake, top, &config.tops[top], (here, for_hosts), "local", progress)?;
        builds.insert(top.clone(), built);
    }

    let job = |host: &PlannedHost, top: Option<&str>, progress: &Progress| -> Result<(SwitchReport, Exit)> {
        let top = top.expect("a deploy is about a top");
        let mut one = opts.deploy.clone();
        one.selection.host = host.host.clone();
        one.selection.top = top.to_owned();
        let report = deploy::deploy_to(&evaluated, &targets[&host.host], &builds[top], &one, progress, None)?;
        Ok((report, Exit::Success))
    };
    // A dry run changes nothing: every host shows its plan.
    let entries = run_hosts(&plan, !opts.deploy.dry_run, progress, &job);
    let report = FleetReport { dry_run: opts.deploy.dry_run, plan, entries };
    let exit = report.exit();
    Ok((report, exit))
}

/// `epnix-deploy <a> <b>` without `--on`: a host and a top, as always,
/// unless `a` is no host but a top, and so is `b`: then two tops, to every
/// host of each. A name that is both a host and a top is the host.
pub enum HostOrTops {
    One(SwitchReport),
    Fleet(FleetReport<SwitchReport>, Exit),
}

/// Whether `<a> <b>` are two tops rather than a host and a top.
fn two_tops(config: &Config, a: &str, b: &str) -> bool {
    !config.hosts.contains_key(a) && config.tops.contains_key(a) && config.tops.contains_key(b)
}

/// Reads the flake, then runs `one` or `fleet` as [`HostOrTops`] says.
pub fn host_or_tops(one: &DeployOptions, fleet: &FleetDeployOptions, progress: &Progress) -> Result<HostOrTops> {
    let sel = &one.selection;
    if sel.host.contains('@') {
        return Ok(HostOrTops::One(deploy::run(one, progress)?));
    }
    let step = progress.step(&sel.host, "evaluate");
    let evaluated = deploy::evaluate(&sel.flake)?;
    if two_tops(&evaluated.config, &sel.host, &sel.top) {
        let (report, exit) = deploy(fleet, Some((evaluated, step)), progress)?;
        Ok(HostOrTops::Fleet(report, exit))
    } else {
        Ok(HostOrTops::One(deploy::run_evaluated(one, &evaluated, step, progress)?))
    }
}

/// `status` over many hosts.
#[derive(Clone, Debug)]
pub struct FleetStatusOptions {
    pub flake: Flake,
    pub on: Vec<Selector>,
    /// `--ssh-opts`.
    pub ssh_opts: Vec<String>,
    pub parallel: usize,
    /// What each host's `status` shows: the top and the detail (its host
    /// is the plan's).
    pub status: StatusOptions,
}

/// `status` of every selected host; the report and the run's exit code.
pub fn status(opts: &FleetStatusOptions, progress: &Progress) -> Result<(FleetReport<StatusReport>, Exit)> {
    if let Some(top) = opts.status.top.as_deref().filter(|t| !config::is_safe_name(t)) {
        return Err(BadInput::new(format!("`{top}` is not a valid top name")).into());
    }
    let config = if opts.on.iter().all(Selector::is_bare) {
        None
    } else {
        let step = progress.step("local", "evaluate");
        let config = super::evaluate_once(&opts.flake)?;
        step.done("");
        Some(config)
    };
    let hosts = select_hosts(config.as_ref(), &opts.on)?;
    let mut targets = BTreeMap::new();
    for host in &hosts {
        let on = HostSelection {
            flake: opts.flake.clone(),
            host: host.clone(),
            ssh_opts: opts.ssh_opts.clone(),
            local: None,
        };
        targets.insert(host.clone(), on.target(config.as_ref())?);
    }
    let planned = hosts.into_iter().map(|host| PlannedHost { host, tops: Vec::new(), build_on_target: false });
    let plan = FleetPlan {
        parallel: opts.parallel,
        fail_fast: false,
        stages: stages(planned.collect(), None),
        skipped: vec![],
    };
    let job = |host: &PlannedHost, _: Option<&str>, progress: &Progress| -> Result<(StatusReport, Exit)> {
        let target: &Target = &targets[&host.host];
        let report = status::run_on(target, config.as_ref(), &opts.status, progress)?;
        let exit = report.exit();
        Ok((report, exit))
    };
    let entries = run_hosts(&plan, false, progress, &job);
    let report = FleetReport { dry_run: false, plan, entries };
    let exit = report.exit();
    Ok((report, exit))
}

/// `list` or `rollback` of one top over many hosts.
#[derive(Clone, Debug)]
pub struct FleetTopOptions {
    pub flake: Flake,
    pub top: String,
    pub on: Vec<Selector>,
    /// `--ssh-opts`.
    pub ssh_opts: Vec<String>,
    pub parallel: usize,
}

impl FleetTopOptions {
    /// A selection of the run's flake, top and `--ssh-opts`, with no host
    /// yet: the template of each host's options.
    pub fn selection_template(&self) -> Selection {
        self.selection("")
    }

    /// The selection of one host of the run.
    fn selection(&self, host: &str) -> Selection {
        Selection {
            flake: self.flake.clone(),
            host: host.to_owned(),
            top: self.top.clone(),
            ssh_opts: self.ssh_opts.clone(),
            local: None,
        }
    }

    /// The selected hosts; those of the configuration that the top does not
    /// run on are skipped, with a note (a top the configuration no longer
    /// has may still be on any host).
    fn plan(&self, progress: &Progress) -> Result<FleetPlan> {
        if !config::is_safe_name(&self.top) {
            return Err(BadInput::new(format!("`{}` is not a valid top name", self.top)).into());
        }
        let config = if self.on.iter().all(Selector::is_bare) {
            None
        } else {
            let step = progress.step("local", "evaluate");
            let config = super::evaluate_once(&self.flake)?;
            step.done("");
            Some(config)
        };
        let top = config.as_ref().and_then(|c| c.tops.get(&self.top));
        let (mut planned, mut skipped) = (Vec::new(), Vec::new());
        for host in select_hosts(config.as_ref(), &self.on)? {
            let configured = config.as_ref().is_some_and(|c| c.hosts.contains_key(&host));
            if configured && top.is_some_and(|t| !t.hosts.contains(&host)) {
                progress.note(&format!("note: `{host}` does not run `{}`: skipped", self.top));
                skipped.push(host);
                continue;
            }
            planned.push(PlannedHost { host, tops: vec![self.top.clone()], build_on_target: false });
        }
        if planned.is_empty() {
            return Err(BadInput::new(format!("`{}` runs on none of {}", self.top, quoted(&skipped)))
                .hint(format!("a top runs on the hosts of its `{}.tops.<top>.hosts`", config::ROOT))
                .into());
        }
        Ok(FleetPlan { parallel: self.parallel, fail_fast: false, stages: stages(planned, None), skipped })
    }
}

/// `list` of one top on every selected host.
pub fn list(opts: &FleetTopOptions, progress: &Progress) -> Result<(FleetReport<ListReport>, Exit)> {
    let plan = opts.plan(progress)?;
    let job = |host: &PlannedHost, _: Option<&str>, progress: &Progress| -> Result<(ListReport, Exit)> {
        Ok((list::run(&opts.selection(&host.host), progress)?, Exit::Success))
    };
    let entries = run_hosts(&plan, false, progress, &job);
    let report = FleetReport { dry_run: false, plan, entries };
    let exit = report.exit();
    Ok((report, exit))
}

/// `rollback` of one top on every selected host, each as `rollback <host>
/// <top>` with `template`'s options.
pub fn rollback(
    opts: &FleetTopOptions,
    template: &RollbackOptions,
    progress: &Progress,
) -> Result<(FleetReport<SwitchReport>, Exit)> {
    let plan = opts.plan(progress)?;
    let job = |host: &PlannedHost, _: Option<&str>, progress: &Progress| -> Result<(SwitchReport, Exit)> {
        let one = RollbackOptions { selection: opts.selection(&host.host), ..template.clone() };
        Ok((rollback::run(&one, progress)?, Exit::Success))
    };
    let entries = run_hosts(&plan, true, progress, &job);
    let report = FleetReport { dry_run: false, plan, entries };
    let exit = report.exit();
    Ok((report, exit))
}

/// The first line of an entry's error, for the summary.
fn first_line(error: &ErrorReport) -> &str {
    error.message.lines().next().unwrap_or_default()
}

/// The lines under a summary: what each host that did not succeed got,
/// and the run's exit code with the hosts that set it.
fn outcome_lines<T>(entries: &[Entry<T>]) -> String {
    let mut out = String::new();
    for e in entries.iter().filter(|e| e.failed()) {
        let outcome = e.outcome.unwrap_or(Exit::Success);
        let why = e.error.as_ref().map(|err| format!(": {}", first_line(err))).unwrap_or_default();
        out += &format!("{}: {} (exit {}){why}\n", e.name(), outcome_name(outcome), outcome.code());
    }
    let untouched: Vec<String> = entries.iter().filter(|e| e.not_reached.is_some()).map(Entry::name).collect();
    if !untouched.is_empty() {
        out += &format!("not reached, untouched: {}\n", untouched.join(", "));
    }
    let worst = Exit::worst(entries.iter().filter_map(|e| e.outcome));
    let by: Vec<String> = entries.iter().filter(|e| e.outcome == Some(worst)).map(Entry::name).collect();
    let done = entries.iter().filter(|e| e.outcome == Some(Exit::Success)).count();
    out += &match worst {
        Exit::Success => format!("exit 0: {done} of {} succeeded\n", entries.len()),
        _ => format!("exit {} ({}), the worst outcome: {}\n", worst.code(), outcome_name(worst), by.join(", ")),
    };
    out
}

/// An entry's RESULT column.
fn result_text<T>(e: &Entry<T>, dry_run: bool) -> String {
    match (e.outcome, e.not_reached) {
        (_, Some(why)) => format!("not reached: {}", why.describe()),
        (Some(Exit::Success), _) if dry_run => "dry run".to_owned(),
        (Some(Exit::Success), _) => "ok".to_owned(),
        (Some(outcome), _) => format!("{} (exit {})", outcome_name(outcome), outcome.code()),
        (None, None) => "-".to_owned(),
    }
}

/// What happened to the IOCs of a switch, counted: `1 new, 2 unchanged`.
fn ioc_counts(report: &SwitchReport) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for ioc in &report.iocs {
        match counts.iter_mut().find(|(c, _)| *c == ioc.change.as_str()) {
            Some((_, n)) => *n += 1,
            None => counts.push((ioc.change.as_str(), 1)),
        }
    }
    if counts.is_empty() {
        return "no IOC enabled".to_owned();
    }
    counts.iter().map(|(change, n)| format!("{n} {change}")).collect::<Vec<_>>().join(", ")
}

/// The GENERATION column of a dry run: what the run would do.
fn dry_generation_text(report: &SwitchReport) -> String {
    match (report.generation, report.new_generation) {
        (Some(g), true) => format!("{g} -> new"),
        (None, true) => "new".to_owned(),
        (Some(g), false) => format!("{g} (stays)"),
        (None, false) => "-".to_owned(),
    }
}

impl FleetPlan {
    /// The plan, as `--dry-run` prints it.
    fn text(&self) -> String {
        let hosts = self.hosts().count();
        let mut out =
            format!("Plan: {hosts} host(s), at most {} at a time (dry run: nothing changes)\n", self.parallel);
        let mut rows = vec![["STAGE", "HOST", "TOPS, IN ORDER", "BUILT BY"].map(String::from)];
        for stage in &self.stages {
            for host in &stage.hosts {
                rows.push([
                    stage.stage.clone(),
                    host.host.clone(),
                    host.tops.join(", "),
                    if host.build_on_target { "the host" } else { "here" }.to_owned(),
                ]);
            }
        }
        out += &table::render(&rows);
        if self.stages.len() > 1 {
            out += "the rest starts once every canary host passed its checks and confirmed\n";
        }
        out
    }
}

impl Render for FleetReport<SwitchReport> {
    fn text(&self, _: &Style) -> String {
        let mut out = if self.dry_run { self.plan.text() } else { String::new() };
        let mut rows = vec![["HOST", "TOP", "GENERATION", "IOCS", "RESULT"].map(String::from)];
        for e in &self.entries {
            let (generation, iocs) = match &e.result {
                Some(r) if r.dry_run => (dry_generation_text(r), ioc_counts(r)),
                Some(r) => (r.generation_text(), ioc_counts(r)),
                None => ("-".to_owned(), "-".to_owned()),
            };
            rows.push([
                e.host.clone(),
                e.top.clone().unwrap_or_default(),
                generation,
                iocs,
                result_text(e, self.dry_run),
            ]);
        }
        out += &table::render(&rows);
        out + &outcome_lines(&self.entries)
    }

    fn notes(&self) -> Vec<String> {
        if !self.dry_run {
            return Vec::new();
        }
        // Each host's whole plan is in `--json`.
        vec!["note: every host's steps, with their commands, are in `--json` (`entries[].result.plan`)".to_owned()]
    }
}

impl Render for FleetReport<ListReport> {
    fn text(&self, style: &Style) -> String {
        let mut out = String::new();
        for e in &self.entries {
            match &e.result {
                Some(report) => out += &format!("{} {}:\n{}", e.host, report.top, report.text(style)),
                None => out += &format!("{}: {}\n", e.name(), result_text(e, false)),
            }
        }
        out + &outcome_lines(&self.entries)
    }

    fn notes(&self) -> Vec<String> {
        let notes = self.entries.iter().filter_map(|e| e.result.as_ref());
        notes.flat_map(|r| r.notes().into_iter().map(move |n| format!("{}: {n}", r.host))).collect()
    }
}

impl Render for FleetReport<StatusReport> {
    fn text(&self, _: &Style) -> String {
        let detail = self.entries.iter().find_map(|e| e.result.as_ref()).map_or(0, |r| r.detail);
        let header = StatusReport::header(detail, true);
        let mut rows = vec![header.clone()];
        for e in &self.entries {
            match &e.result {
                Some(report) if report.iocs.is_empty() => {
                    let mut row = vec![e.host.clone(), "-".into(), "-".into(), "-".into(), "no IOCs".into()];
                    row.resize(header.len(), "-".into());
                    rows.push(row);
                }
                Some(report) => rows.extend(report.rows(true)),
                None => {
                    let mut row = vec![e.host.clone(), "-".into(), "-".into(), "-".into(), result_text(e, false)];
                    row.resize(header.len(), "-".into());
                    rows.push(row);
                }
            }
        }
        table::render(&rows) + &outcome_lines(&self.entries)
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for report in self.entries.iter().filter_map(|e| e.result.as_ref()) {
            for top in report.tops.iter().filter(|t| t.rollback_pending == Some(true)) {
                notes.push(format!(
                    "note: {} {}: a rollback is pending (the last switch is not confirmed)",
                    report.host, top.top
                ));
            }
        }
        notes
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::commands::tests::switched;

    fn config() -> Config {
        let host = |tags: &[&str]| serde_json::json!({ "hostname": "10.0.0.1", "tags": tags });
        let top = |hosts: &[&str], ioc: &str| {
            let iocs = serde_json::json!({ ioc: { "workingDirectory": "." } });
            serde_json::json!({ "package": "/nix/store/aaaa-t", "hosts": hosts, "iocs": iocs })
        };
        Config::parse(&serde_json::json!({
            "hosts": {
                "ioc-linac-1": host(&["linac"]),
                "ioc-linac-2": host(&["linac", "canary"]),
                "ioc-ring-1": host(&["ring"]),
                "ioc-ring-2": host(&["ring"]),
            },
            "tops": {
                "linacTop": top(&["ioc-linac-2", "ioc-linac-1"], "iocLinac"),
                "ringTop": top(&["ioc-ring-1", "ioc-ring-2", "ioc-linac-1"], "iocRing"),
            },
        }))
        .unwrap()
    }

    fn selectors(words: &[&str]) -> Vec<Selector> {
        words.iter().map(|w| Selector::parse(w).unwrap()).collect()
    }

    const SCHEDULE: Schedule = Schedule { parallel: 10, fail_fast: false, canary: None };

    #[test]
    fn selectors_are_names_globs_tags_and_bare_hosts() {
        assert_eq!(Selector::parse("@linac").unwrap(), Selector::Tag("linac".into()));
        assert_eq!(Selector::parse("ioc-*").unwrap(), Selector::Glob("ioc-*".into()));
        assert_eq!(Selector::parse("ioc-?").unwrap(), Selector::Glob("ioc-?".into()));
        assert_eq!(Selector::parse("ioc-1").unwrap(), Selector::Name("ioc-1".into()));
        assert_eq!(Selector::parse("root@10.0.0.5:22").unwrap(), Selector::Bare("root@10.0.0.5:22".into()));
        assert!(Selector::parse("@").unwrap_err().to_string().contains("`@` names no tag"));
        assert!(Selector::parse(" ").unwrap_err().to_string().contains("empty selector"));
    }

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_matches("ioc-linac-*", "ioc-linac-1"));
        assert!(glob_matches("*-1", "ioc-ring-1"));
        assert!(glob_matches("ioc-*-?", "ioc-ring-2"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a*b*c", "aXbYbc"));
        assert!(!glob_matches("ioc-linac-*", "ioc-ring-1"));
        assert!(!glob_matches("ioc-?", "ioc-12"));
        assert!(!glob_matches("ioc", "ioc-1"));
    }

    #[test]
    fn the_selection_keeps_the_order_given_and_names_each_host_once() {
        let config = config();
        let hosts = |words: &[&str]| select_hosts(Some(&config), &selectors(words));
        assert_eq!(hosts(&["@canary", "@linac"]).unwrap(), ["ioc-linac-2", "ioc-linac-1"]);
        assert_eq!(hosts(&["ioc-ring-*", "ioc-linac-1"]).unwrap(), ["ioc-ring-1", "ioc-ring-2", "ioc-linac-1"]);
        assert_eq!(hosts(&["root@10.0.0.9", "ioc-ring-2"]).unwrap(), ["root@10.0.0.9", "ioc-ring-2"]);
        let err = hosts(&["@linak"]).unwrap_err().to_string();
        assert!(
            err.contains("no host of `epnixDeploy.hosts` has the tag `linak`") && err.contains("`@linac`"),
            "{err}"
        );
        let err = hosts(&["ioc-booster-*"]).unwrap_err().to_string();
        assert!(err.contains("`ioc-booster-*` matches no host") && err.contains("ioc-linac-1"), "{err}");
        let err = hosts(&["ioc-linac-3"]).unwrap_err().to_string();
        assert!(err.contains("unknown host `ioc-linac-3`") && err.contains("did you mean"), "{err}");
    }

    #[test]
    fn the_plan_says_which_top_goes_where_and_in_which_order() {
        let config = config();
        let plan = |tops: &[&str], on: &[&str], schedule: Schedule| {
            let tops: Vec<String> = tops.iter().map(|t| (*t).to_owned()).collect();
            plan_deploy(&config, &tops, &selectors(on), schedule, false)
        };
        let lines = |plan: &FleetPlan| -> Vec<String> {
            plan.stages
                .iter()
                .flat_map(|s| s.hosts.iter().map(move |h| format!("{} {}: {}", s.stage, h.host, h.tops.join(" "))))
                .collect()
        };
        // No `--on`: every host of each top, in the top's order.
        let all = plan(&["ringTop", "linacTop"], &[], SCHEDULE).unwrap();
        assert_eq!(
            lines(&all),
            [
                "all ioc-ring-1: ringTop",
                "all ioc-ring-2: ringTop",
                "all ioc-linac-1: ringTop linacTop",
                "all ioc-linac-2: linacTop",
            ]
        );
        // No top: every top of each selected host, by name.
        let linac = plan(&[], &["@linac"], SCHEDULE).unwrap();
        assert_eq!(lines(&linac), ["all ioc-linac-1: linacTop ringTop", "all ioc-linac-2: linacTop"]);
        // Hosts the tops do not run on are skipped, and said so.
        let ring = plan(&["ringTop"], &["@linac"], SCHEDULE).unwrap();
        assert_eq!(
            (lines(&ring), ring.skipped),
            (vec!["all ioc-linac-1: ringTop".to_owned()], vec!["ioc-linac-2".to_owned()])
        );
        let err = plan(&["linacTop"], &["@ring"], SCHEDULE).unwrap_err().to_string();
        assert!(err.contains("nothing to deploy: none of `linacTop` runs on `ioc-ring-1`, `ioc-ring-2`"), "{err}");
        // A canary goes first.
        let canary = plan(&["ringTop"], &["ioc-ring-2", "@ring"], Schedule { canary: Some(1), ..SCHEDULE }).unwrap();
        assert_eq!(lines(&canary), ["canary ioc-ring-2: ringTop", "rest ioc-ring-1: ringTop"]);
        let all_canary = plan(&["ringTop"], &["@ring"], Schedule { canary: Some(5), ..SCHEDULE }).unwrap();
        assert_eq!(lines(&all_canary), ["canary ioc-ring-1: ringTop", "canary ioc-ring-2: ringTop"]);
        // A host given as a top, and a host outside the configuration.
        let err = plan(&["ioc-ring-1"], &[], SCHEDULE).unwrap_err().to_string();
        assert!(err.contains("there is no top `ioc-ring-1`") && err.contains("`--on ioc-ring-1`"), "{err}");
        let bare = plan(&["ringTop"], &["root@10.0.0.9"], SCHEDULE).unwrap();
        assert_eq!(lines(&bare), ["all root@10.0.0.9: ringTop"]);
        assert!(plan(&[], &["root@10.0.0.9"], SCHEDULE).unwrap_err().to_string().contains("name the tops"));
    }

    #[test]
    fn two_names_are_a_host_and_a_top_unless_both_are_tops_only() {
        let mut config = config();
        assert!(!two_tops(&config, "ioc-ring-1", "ringTop"));
        assert!(two_tops(&config, "linacTop", "ringTop"));
        // Neither: the host's "unknown host" error, as before.
        assert!(!two_tops(&config, "nohost", "ringTop"));
        // A name that is a host and a top is the host.
        let top = config.tops["ringTop"].clone();
        config.tops.insert("ioc-ring-1".into(), top);
        assert!(!two_tops(&config, "ioc-ring-1", "ringTop"));
    }

    #[test]
    fn a_host_builds_on_itself_when_asked_or_configured_to() {
        let mut config = config();
        config.hosts.get_mut("ioc-ring-2").unwrap().build_on_target = true;
        let plan = plan_deploy(&config, &["ringTop".to_owned()], &[], SCHEDULE, false).unwrap();
        let on_target: Vec<bool> = plan.hosts().map(|h| h.build_on_target).collect();
        assert_eq!(on_target, [false, true, false]);
        let plan = plan_deploy(&config, &["ringTop".to_owned()], &[], SCHEDULE, true).unwrap();
        assert!(plan.hosts().all(|h| h.build_on_target));
    }

    fn planned(hosts: &[&str]) -> Vec<PlannedHost> {
        hosts
            .iter()
            .map(|h| PlannedHost { host: (*h).to_owned(), tops: vec!["t".into()], build_on_target: false })
            .collect()
    }

    /// A job that fails on the hosts named, and records the order it ran in.
    fn run(plan: &FleetPlan, failing: &[&str], gated: bool) -> (Vec<Entry<()>>, Vec<String>) {
        let ran = Mutex::new(Vec::new());
        let job = |host: &PlannedHost, _: Option<&str>, _: &Progress| -> Result<((), Exit)> {
            ran.lock().unwrap().push(host.host.clone());
            if failing.contains(&host.host.as_str()) {
                return Err(crate::exit::Failure::new(Exit::Failed, "rolled back").into());
            }
            Ok(((), Exit::Success))
        };
        let progress = Progress::with_verbosity(crate::progress::Verbosity::Quiet);
        let entries = run_hosts(plan, gated, &progress, &job);
        (entries, ran.into_inner().unwrap())
    }

    fn outcomes(entries: &[Entry<()>]) -> Vec<String> {
        entries.iter().map(|e| format!("{} {}", e.host, result_text(e, false))).collect()
    }

    #[test]
    fn a_failed_canary_stops_the_rollout_and_the_others_are_untouched() {
        let plan = FleetPlan {
            parallel: 2,
            fail_fast: false,
            stages: stages(planned(&["a", "b", "c", "d"]), Some(1)),
            skipped: vec![],
        };
        let (entries, ran) = run(&plan, &["a"], true);
        assert_eq!(ran, ["a"]);
        assert_eq!(
            outcomes(&entries),
            [
                "a failed (exit 1)",
                "b not reached: the canary failed",
                "c not reached: the canary failed",
                "d not reached: the canary failed",
            ]
        );
        assert_eq!(Exit::worst(entries.iter().filter_map(|e| e.outcome)), Exit::Failed);
        // A dry run is not gated.
        let (_, ran) = run(&plan, &["a"], false);
        assert_eq!(ran.len(), 4);
        // A canary that passes lets the rest go, and a failure there stops no one.
        let (entries, _) = run(&plan, &["c"], true);
        assert_eq!(outcomes(&entries), ["a ok", "b ok", "c failed (exit 1)", "d ok"]);
    }

    #[test]
    fn fail_fast_starts_no_host_after_a_failure() {
        let plan = FleetPlan {
            parallel: 1,
            fail_fast: true,
            stages: stages(planned(&["a", "b", "c"]), None),
            skipped: vec![],
        };
        let (entries, ran) = run(&plan, &["b"], true);
        assert_eq!(ran, ["a", "b"]);
        assert_eq!(
            outcomes(&entries),
            ["a ok", "b failed (exit 1)", "c not reached: another host failed (--fail-fast)"]
        );
    }

    #[test]
    fn hosts_run_side_by_side_up_to_the_limit() {
        use std::time::{Duration, Instant};
        let plan = FleetPlan {
            parallel: 3,
            fail_fast: false,
            stages: stages(planned(&["a", "b", "c"]), None),
            skipped: vec![],
        };
        let busy = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let job = |_: &PlannedHost, _: Option<&str>, _: &Progress| -> Result<((), Exit)> {
            let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(200));
            busy.fetch_sub(1, Ordering::SeqCst);
            Ok(((), Exit::Success))
        };
        let progress = Progress::with_verbosity(crate::progress::Verbosity::Quiet);
        let started = Instant::now();
        run_hosts(&plan, true, &progress, &job);
        assert!(started.elapsed() < Duration::from_millis(550), "{:?}", started.elapsed());
        assert_eq!(most.load(Ordering::SeqCst), 3);
        let one_at_a_time = FleetPlan { parallel: 1, ..plan };
        most.store(0, Ordering::SeqCst);
        run_hosts(&one_at_a_time, true, &progress, &job);
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_failed_top_leaves_the_hosts_later_tops() {
        let tops = vec!["t1".into(), "t2".into(), "t3".into()];
        let host = PlannedHost { host: "a".into(), tops, build_on_target: false };
        let plan = FleetPlan { parallel: 1, fail_fast: false, stages: stages(vec![host], None), skipped: vec![] };
        let job = |_: &PlannedHost, top: Option<&str>, _: &Progress| -> Result<((), Exit)> {
            match top {
                Some("t1") => Err(BadInput::new("bad").into()),
                _ => Ok(((), Exit::Success)),
            }
        };
        let progress = Progress::with_verbosity(crate::progress::Verbosity::Quiet);
        let entries = run_hosts(&plan, true, &progress, &job);
        let got: Vec<String> = entries.iter().map(|e| format!("{} {}", e.name(), result_text(e, false))).collect();
        assert_eq!(
            got,
            [
                "a t1 bad input (exit 2)",
                "a t2 not reached: an earlier top of the host failed",
                "a t3 not reached: an earlier top of the host failed",
            ]
        );
        assert_eq!(entries[0].error.as_ref().map(|e| e.message.as_str()), Some("bad"));
    }

    /// A run over three hosts: one deployed, one rolled back, one not reached.
    pub(crate) fn sample() -> FleetReport<SwitchReport> {
        let hosts: Vec<PlannedHost> = ["ioc1", "ioc2", "ioc3"]
            .iter()
            .map(|h| PlannedHost { host: (*h).to_owned(), tops: vec!["myTop".into()], build_on_target: *h == "ioc3" })
            .collect();
        let plan = FleetPlan { parallel: 10, fail_fast: false, stages: stages(hosts, Some(2)), skipped: vec![] };
        let done = Entry {
            host: "ioc1".into(),
            top: Some("myTop".into()),
            outcome: Some(Exit::Success),
            exit_code: Some(0),
            not_reached: None,
            result: Some(SwitchReport { conserver: None, ..switched() }),
            error: None,
        };
        let failed = Entry {
            host: "ioc2".into(),
            top: Some("myTop".into()),
            outcome: Some(Exit::Failed),
            exit_code: Some(1),
            not_reached: None,
            result: None,
            error: Some(ErrorReport {
                host: Some("ioc2".into()),
                top: Some("myTop".into()),
                step: Some("check".into()),
                message: "IOC `iocA` exited: st.cmd: iocA: ERROR\nrolled back: `ioc2` is back to generation 3".into(),
                hint: None,
                causes: vec![],
            }),
        };
        FleetReport {
            dry_run: false,
            plan,
            entries: vec![done, failed, Entry::not_reached("ioc3", Some("myTop"), NotReached::CanaryFailed)],
        }
    }

    /// `status` over two hosts, one of which did not answer.
    pub(crate) fn status_sample() -> FleetReport<StatusReport> {
        let hosts = vec![
            PlannedHost { host: "ioc1".into(), tops: vec![], build_on_target: false },
            PlannedHost { host: "ioc2".into(), tops: vec![], build_on_target: false },
        ];
        let plan = FleetPlan { parallel: 10, fail_fast: false, stages: stages(hosts, None), skipped: vec![] };
        let report = crate::commands::status::tests::sample();
        let running = Entry {
            host: "ioc1".into(),
            top: None,
            outcome: Some(report.exit()),
            exit_code: Some(report.exit().code()),
            not_reached: None,
            result: Some(report),
            error: None,
        };
        let unreachable = Entry {
            host: "ioc2".into(),
            top: None,
            outcome: Some(Exit::Unreachable),
            exit_code: Some(6),
            not_reached: None,
            result: None,
            error: Some(ErrorReport {
                host: Some("ioc2".into()),
                step: Some("connect".into()),
                message: "the SSH login to `ioc2` failed: no answer".into(),
                ..ErrorReport::default()
            }),
        };
        FleetReport { dry_run: false, plan, entries: vec![running, unreachable] }
    }

    /// `list` of one top over two hosts, one of which does not have it.
    pub(crate) fn list_sample() -> FleetReport<ListReport> {
        let hosts: Vec<PlannedHost> = ["ioc1", "ioc2"]
            .iter()
            .map(|h| PlannedHost { host: (*h).to_owned(), tops: vec!["myTop".into()], build_on_target: false })
            .collect();
        let plan = FleetPlan { parallel: 10, fail_fast: false, stages: stages(hosts, None), skipped: vec![] };
        let listed = Entry {
            host: "ioc1".into(),
            top: Some("myTop".into()),
            outcome: Some(Exit::Success),
            exit_code: Some(0),
            not_reached: None,
            result: Some(crate::commands::list::tests::sample()),
            error: None,
        };
        let missing = Entry {
            host: "ioc2".into(),
            top: Some("myTop".into()),
            outcome: Some(Exit::BadInput),
            exit_code: Some(2),
            not_reached: None,
            result: None,
            error: Some(ErrorReport {
                message: "top `myTop` is not deployed on `ioc2`".into(),
                ..ErrorReport::default()
            }),
        };
        FleetReport { dry_run: false, plan, entries: vec![listed, missing] }
    }

    #[test]
    fn the_generations_of_many_hosts_come_host_by_host() {
        let report = list_sample();
        insta::assert_snapshot!(report.text(&Style { short_paths: true }));
        assert!(report.notes().iter().all(|n| n.starts_with("ioc1: note: ")), "{:?}", report.notes());
    }

    #[test]
    fn the_status_of_many_hosts_is_one_table() {
        let report = status_sample();
        assert_eq!(report.exit(), Exit::Failed);
        insta::assert_snapshot!(report.text(&Style::default()));
    }

    #[test]
    fn the_summary_names_each_hosts_outcome_and_the_worst() {
        let report = sample();
        assert_eq!(report.exit(), Exit::Failed);
        insta::assert_snapshot!(report.text(&Style::default()));
        let mut dry = sample();
        dry.dry_run = true;
        dry.entries.truncate(1);
        if let Some(result) = dry.entries[0].result.as_mut() {
            result.dry_run = true;
            result.generation = result.previous_generation;
        }
        insta::assert_snapshot!("the_dry_run", dry.text(&Style::default()));
    }
}
