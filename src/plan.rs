//! The plan: what must change on one host to run one top at a given build
//! with given units, computed from those and the host's state alone. Pure,
//! so `--dry-run`, the real run and the tests all see the same plan. Deploys
//! and rollbacks share it; they differ only in how the profile moves.

use std::collections::{BTreeMap, BTreeSet};

use camino::Utf8PathBuf;
use schemars::JsonSchema;
use serde::Serialize;

use crate::config::{HealthCheck, Top};
use crate::exit::BadInput;
use crate::host::{Drift, HostState};
use crate::layout;
use crate::remote;
use crate::ssh::RemoteCmd;
use crate::unit::{self, HostFacts};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub top: String,
    /// The top's build that runs afterwards.
    pub build: Utf8PathBuf,
    /// How the profile moves.
    pub switch: Switch,
    /// The generation's store path: the new one once built (`Switch::New`),
    /// or the one switched to (`Switch::To`), for its outcome.
    pub generation_path: Option<Utf8PathBuf>,
    /// Whether the top's build differs from the current generation's.
    pub top_changed: bool,
    /// The unit of every IOC that runs afterwards.
    pub units: BTreeMap<String, String>,
    /// The units whose text is new or differs from the host's.
    pub rewrite: BTreeSet<String>,
    /// What happens to each IOC of the top, and to those it no longer has.
    pub iocs: BTreeMap<String, Change>,
    /// Why each IOC marked [`Change::Drift`] is restarted.
    pub drift: BTreeMap<String, Drift>,
    /// The [`Change::Unchanged`] IOCs whose units are enabled and active:
    /// already right, so the switch leaves them alone and no check waits
    /// on them.
    pub settled: BTreeSet<String>,
}

/// In `--json`: `new`, `changed` (restarted), `drift` (restarted, see
/// `drift`), `unchanged` or `removed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// No unit yet: install and start it.
    New,
    /// The unit or the top changed: install and restart it.
    Changed,
    /// Unit and top are the same, but the running process is not what they
    /// say (an interrupted switch, a unit edited by hand): restart it.
    Drift,
    /// Nothing changed: make sure it runs, without a restart.
    Unchanged,
    /// Disabled or gone from the configuration: stop it and remove the unit.
    Removed,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::New => "new",
            Change::Changed => "restarted",
            Change::Drift => "restarted (drift)",
            Change::Unchanged => "unchanged",
            Change::Removed => "removed",
        }
    }

    /// Whether the IOC runs something new afterwards, so its own health
    /// checks apply.
    pub fn starts_anew(self) -> bool {
        matches!(self, Change::New | Change::Changed | Change::Drift)
    }
}

/// Whether a restore point protects a switch: then the switch refuses to
/// run once the host has rolled back, and marks the restore point used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarded {
    ByRestorePoint,
    /// Only making sure the IOCs run: nothing to undo.
    No,
}

/// How a plan moves the top's profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Switch {
    /// The profile stays: same build, same units, same checks.
    Stay,
    /// A new generation: the build with these units (`generation_path`).
    New,
    /// Back (or forth) to an existing generation.
    To(u32),
}

/// Checks that epnix-deploy can manage the host's profiles and units.
pub fn check_manageable(host: &HostState, label: &str) -> Result<(), BadInput> {
    // A user's own manager (`--user`) is managed as that user.
    if !host.is_root && layout::current().manager == layout::Manager::System {
        return Err(BadInput::new(format!("on `{label}`: the SSH user is not root, and managing units needs root"))
            .hint("set `sshUser = \"root\"` for this host (or give it as `root@host`)"));
    }
    if !host.has_systemctl {
        return Err(BadInput::new(format!("on `{label}`: `systemctl` was not found; the IOCs run as systemd units")));
    }
    if host.nix_env.is_none() {
        return Err(BadInput::new(format!("on `{label}`: Nix was not found (`nix-env`)"))
            .hint("install Nix on the host (on Debian: `apt install nix-bin`)"));
    }
    Ok(())
}

/// Checks that the host can take a deploy at all, before anything is
/// copied. `from_nix` is the procServ that comes with the deploy, if any:
/// then the host needs none of its own.
pub fn host_facts(host: &HostState, label: &str, from_nix: Option<&HostFacts>) -> Result<HostFacts, BadInput> {
    check_manageable(host, label)?;
    if let Some(facts) = from_nix {
        return Ok(facts.clone());
    }
    host.procserv.clone().ok_or_else(|| {
        BadInput::new(format!("on `{label}`: `procServ` was not found on the PATH"))
            .hint("install it on the host (on Debian: `apt install procserv`)")
    })
}

/// Renders the units of `top`'s enabled IOCs for a host with `facts`.
pub fn render_units(top_name: &str, top: &Top, facts: &HostFacts) -> BTreeMap<String, String> {
    top.iocs
        .iter()
        .filter(|(_, ioc)| ioc.enable)
        .map(|(name, ioc)| (name.clone(), unit::render(top_name, name, ioc, facts)))
        .collect()
}

/// Plans a deploy of `top_name` built at `build` with `wanted` units and
/// `checks` (their JSON, as the generation stores it). A new generation is
/// made when the build, a unit or a check differs from the current
/// generation's, or when the current generation was not made by
/// epnix-deploy.
pub fn deploy(
    top_name: &str,
    build: &Utf8PathBuf,
    wanted: BTreeMap<String, String>,
    checks: &str,
    state: &HostState,
    label: &str,
) -> Result<Plan, BadInput> {
    let same_generation = state.current_generation().is_some_and(|g| g.top_build() == build)
        && state.current_units.as_ref() == Some(&wanted)
        && state.current_checks.as_deref() == Some(checks);
    let mut plan = plan(top_name, build, wanted, state, label)?;
    if !same_generation {
        plan.switch = Switch::New;
    }
    Ok(plan)
}

/// Plans a switch to the existing `generation`, built at `build`, with
/// `wanted` units.
pub fn switch_to(
    top_name: &str,
    generation: u32,
    build: &Utf8PathBuf,
    wanted: BTreeMap<String, String>,
    state: &HostState,
    label: &str,
) -> Result<Plan, BadInput> {
    let mut plan = plan(top_name, build, wanted, state, label)?;
    plan.switch = Switch::To(generation);
    Ok(plan)
}

fn plan(
    top_name: &str,
    build: &Utf8PathBuf,
    wanted: BTreeMap<String, String>,
    state: &HostState,
    label: &str,
) -> Result<Plan, BadInput> {
    let top_changed = state.current_generation().is_none_or(|g| g.top_build() != build);
    let mut rewrite = BTreeSet::new();
    let mut iocs = BTreeMap::new();
    let mut drift = BTreeMap::new();
    for (name, text) in &wanted {
        let change = match state.units.get(name) {
            None => Change::New,
            Some(existing) => match unit::owner(existing) {
                Some(owner) if owner == top_name => {
                    if existing != text {
                        rewrite.insert(name.clone());
                        Change::Changed
                    } else if top_changed {
                        Change::Changed
                    } else if let Some(why) = state.drift(name) {
                        drift.insert(name.clone(), why);
                        Change::Drift
                    } else {
                        Change::Unchanged
                    }
                }
                Some(other) => {
                    return Err(BadInput::new(format!(
                        "on `{label}`: IOC `{name}` of top `{other}` already runs as `{}`",
                        layout::unit_name(name)
                    ))
                    .hint(format!(
                        "rename one of the IOCs, or remove it from top `{other}` and deploy that top first"
                    )));
                }
                None => {
                    return Err(BadInput::new(format!(
                        "on `{label}`: `{}` exists and was not written by epnix-deploy; it is left alone",
                        layout::unit_path(name)
                    ))
                    .hint(format!(
                        "rename IOC `{name}`, or remove that unit from the host by hand if it is obsolete"
                    )));
                }
            },
        };
        if change == Change::New {
            rewrite.insert(name.clone());
        }
        iocs.insert(name.clone(), change);
    }
    for (name, _) in state.units_of(top_name) {
        if !wanted.contains_key(name) {
            iocs.insert(name.clone(), Change::Removed);
        }
    }
    let settled = iocs
        .iter()
        .filter(|(name, change)| {
            let unit = state.processes.get(*name).map(|p| &p.state);
            **change == Change::Unchanged && unit.is_some_and(|u| u.active == "active" && u.enabled)
        })
        .map(|(name, _)| name.clone())
        .collect();
    Ok(Plan {
        top: top_name.to_owned(),
        build: build.clone(),
        switch: Switch::Stay,
        generation_path: None,
        top_changed,
        units: wanted,
        rewrite,
        iocs,
        drift,
        settled,
    })
}

impl Plan {
    fn with(&self, wanted: &[Change]) -> Vec<String> {
        self.iocs.iter().filter(|(_, c)| wanted.contains(c)).map(|(n, _)| n.clone()).collect()
    }

    /// What each IOC that runs after the switch must pass: its `own` checks
    /// when it runs something new (only "it runs" without them), else only
    /// "it is active".
    pub fn health_checks(&self, own: &BTreeMap<String, HealthCheck>) -> BTreeMap<String, HealthCheck> {
        self.iocs
            .iter()
            .filter(|(name, _)| self.units.contains_key(*name))
            .map(|(name, change)| {
                let check = match own.get(name) {
                    _ if !change.starts_anew() => HealthCheck::active(),
                    Some(check) => check.clone(),
                    None => HealthCheck::running(),
                };
                (name.clone(), check)
            })
            .filter(|(name, _)| !self.settled.contains(name))
            .collect()
    }

    /// The IOCs whose units run after the switch.
    pub fn running(&self) -> Vec<String> {
        self.units.keys().cloned().collect()
    }

    /// Those of them the switch must enable or start: all but the settled.
    fn to_start(&self) -> Vec<String> {
        self.units.keys().filter(|n| !self.settled.contains(*n)).cloned().collect()
    }

    /// The host's procServ moves to another build: every IOC of the top is
    /// restarted into it.
    pub fn procserv_moves(&mut self) {
        for change in self.iocs.values_mut() {
            if matches!(change, Change::Unchanged | Change::Drift) {
                *change = Change::Changed;
            }
        }
    }

    /// Whether the plan changes anything on the host beyond making sure that
    /// the IOCs run. Such a plan goes through the protected switch.
    pub fn changes_host(&self) -> bool {
        self.switch != Switch::Stay || !self.rewrite.is_empty() || self.iocs.values().any(|c| *c != Change::Unchanged)
    }

    /// The units the switch restarts, starts anew or removes: what a
    /// rollback must restart.
    pub fn touched(&self) -> Vec<String> {
        self.with(&[Change::New, Change::Changed, Change::Drift, Change::Removed])
            .iter()
            .map(|n| layout::unit_name(n))
            .collect()
    }

    /// The switch's actions, as `switch.sh` takes them: removals stop their
    /// IOC before the file goes, units go in before the reload.
    pub fn actions(&self) -> Vec<String> {
        let unit = |verb: &str, names: Vec<String>| -> Vec<String> {
            names.iter().map(|n| format!("{verb}:{}", layout::unit_name(n))).collect()
        };
        let mut actions = unit("remove", self.with(&[Change::Removed]));
        actions.extend(unit("write", self.rewrite.iter().cloned().collect()));
        actions.extend(unit("enable", self.to_start()));
        actions.extend(unit("restart", self.with(&[Change::Changed, Change::Drift])));
        let start = self.with(&[Change::New, Change::Unchanged]).into_iter().filter(|n| !self.settled.contains(n));
        actions.extend(unit("start", start.collect()));
        actions
    }

    /// The one host-side command that carries out the switch; `guarded`
    /// when a restore point protects it.
    pub fn switch_cmd(&self, guarded: Guarded) -> RemoteCmd {
        let profile = layout::profile(&self.top);
        let units_in = |generation: &str| format!("{generation}/{}/units", layout::GENERATION_DIR);
        let (mode, target, source) = match &self.switch {
            Switch::Stay => ("stay", "-".to_owned(), units_in(profile.as_str())),
            Switch::New => {
                let path = self.generation_path.as_ref().expect("a new generation is built before its switch");
                ("set", path.to_string(), units_in(path.as_str()))
            }
            Switch::To(n) => ("switch", n.to_string(), units_in(&format!("{profile}-{n}-link"))),
        };
        let guarded = if guarded == Guarded::ByRestorePoint { "yes" } else { "no" };
        let mut args = vec![mode.to_owned(), target, source, guarded.to_owned()];
        args.extend(self.actions());
        remote::SWITCH.for_top(&self.top, &args)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Config;
    use crate::host::{Generation, Process, UnitState};

    fn facts() -> HostFacts {
        HostFacts { procserv: "/usr/bin/procServ".into(), procserv_oneshot: true }
    }

    fn top(iocs: serde_json::Value) -> Top {
        let json = json!({ "tops": { "t": { "package": "/nix/store/new-t", "iocs": iocs } } });
        Config::parse(&json).unwrap().tops["t"].clone()
    }

    /// A host whose current generation 1 runs `build` with `units` installed
    /// and stored in it.
    fn host(build: Option<&str>, units: &[(&str, String)]) -> HostState {
        let units: BTreeMap<String, String> = units.iter().map(|(n, t)| ((*n).to_owned(), t.clone())).collect();
        HostState {
            hostname: "h".into(),
            is_root: true,
            procserv: Some(facts()),
            nix_env: Some("/usr/bin/nix-env".into()),
            has_systemctl: true,
            current: build.map(|_| 1),
            generations: build
                .map(|b| Generation {
                    number: 1,
                    created: 0,
                    store_path: "/nix/store/g1".into(),
                    build: Some(b.into()),
                    made_by: None,
                })
                .into_iter()
                .collect(),
            current_units: build.map(|_| units.clone()),
            current_checks: build.map(|_| "{}".to_owned()),
            units,
            ..HostState::default()
        }
    }

    fn plan_for(top: &Top, state: &HostState) -> Result<Plan, BadInput> {
        deploy("t", &"/nix/store/new-t".into(), render_units("t", top, &facts()), "{}", state, "h")
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_first_deploy_installs_and_starts_everything() {
        let top = top(json!({ "a": { "workingDirectory": "iocBoot/a" } }));
        let plan = plan_for(&top, &host(None, &[])).unwrap();
        assert_eq!(plan.switch, Switch::New);
        assert_eq!(
            plan.actions(),
            strings(&["write:epnix-a.service", "enable:epnix-a.service", "start:epnix-a.service"])
        );
    }

    #[test]
    fn the_same_build_and_units_again_only_make_sure_it_runs() {
        let top = top(json!({ "a": { "workingDirectory": "iocBoot/a" } }));
        let unit = unit::render("t", "a", &top.iocs["a"], &facts());
        let plan = plan_for(&top, &host(Some("/nix/store/new-t"), &[("a", unit)])).unwrap();
        assert_eq!(plan.switch, Switch::Stay);
        assert_eq!(plan.iocs["a"], Change::Unchanged);
        assert!(!plan.changes_host());
        assert_eq!(plan.actions(), strings(&["enable:epnix-a.service", "start:epnix-a.service"]));
    }

    #[test]
    fn an_unchanged_ioc_that_is_enabled_and_active_is_left_alone() {
        let top = top(json!({ "a": { "workingDirectory": "iocBoot/a" }, "b": { "workingDirectory": "iocBoot/b" } }));
        let units = ["a", "b"].map(|n| (n, unit::render("t", n, &top.iocs[n], &facts())));
        let mut state = host(Some("/nix/store/new-t"), &units);
        let running = |enabled| crate::host::Process {
            state: crate::host::UnitState { active: "active".into(), enabled, ..Default::default() },
            ..Default::default()
        };
        state.processes.insert("a".into(), running(true));
        state.processes.insert("b".into(), running(false));
        let plan = plan_for(&top, &state).unwrap();
        assert_eq!(plan.settled, BTreeSet::from(["a".to_owned()]));
        assert_eq!(plan.actions(), strings(&["enable:epnix-b.service", "start:epnix-b.service"]));
        assert_eq!(plan.health_checks(&BTreeMap::new()).keys().collect::<Vec<_>>(), ["b"]);
        state.processes.insert("b".into(), running(true));
        assert!(plan_for(&top, &state).unwrap().actions().is_empty());
    }

    #[test]
    fn a_change_of_checks_alone_is_a_new_generation_without_a_restart() {
        let top = top(json!({ "a": { "workingDirectory": "iocBoot/a" } }));
        let unit = unit::render("t", "a", &top.iocs["a"], &facts());
        let state = host(Some("/nix/store/new-t"), &[("a", unit)]);
        let plan = deploy("t", &"/nix/store/new-t".into(), render_units("t", &top, &facts()), "{\"a\":1}", &state, "h")
            .unwrap();
        assert_eq!(plan.switch, Switch::New);
        assert_eq!(plan.iocs["a"], Change::Unchanged);
    }

    #[test]
    fn a_generation_made_by_hand_is_replaced_by_a_new_one() {
        let top = top(json!({ "a": { "workingDirectory": "iocBoot/a" } }));
        let unit = unit::render("t", "a", &top.iocs["a"], &facts());
        let mut state = host(Some("/nix/store/new-t"), &[("a", unit)]);
        state.current_units = None;
        assert_eq!(plan_for(&top, &state).unwrap().switch, Switch::New);
    }

    #[test]
    fn a_new_build_restarts_without_rewriting_units() {
        let top = top(json!({ "a": { "workingDirectory": "iocBoot/a" } }));
        let unit = unit::render("t", "a", &top.iocs["a"], &facts());
        let plan = plan_for(&top, &host(Some("/nix/store/old-t"), &[("a", unit)])).unwrap();
        assert_eq!(plan.switch, Switch::New);
        assert_eq!(plan.actions(), strings(&["enable:epnix-a.service", "restart:epnix-a.service"]));
    }

    #[test]
    fn a_changed_unit_is_rewritten_and_restarted_and_a_dropped_ioc_removed() {
        let top = top(json!({
            "a": { "workingDirectory": "iocBoot/a", "environment": { "X": "2" } },
            "c": { "workingDirectory": "iocBoot/c", "enable": false }
        }));
        let mut old = top.iocs["a"].clone();
        old.environment.insert("X".into(), "1".into());
        let units = [
            ("a", unit::render("t", "a", &old, &facts())),
            ("b", unit::render("t", "b", &old, &facts())),
            ("c", unit::render("t", "c", &old, &facts())),
        ];
        let plan = plan_for(&top, &host(Some("/nix/store/new-t"), &units)).unwrap();
        assert_eq!(plan.iocs["a"], Change::Changed);
        assert_eq!(plan.iocs["b"], Change::Removed);
        assert_eq!(plan.iocs["c"], Change::Removed);
        // Same build, other units: a new generation, so that a rollback can
        // bring the old units back.
        assert_eq!(plan.switch, Switch::New);
        assert_eq!(
            plan.actions(),
            strings(&[
                "remove:epnix-b.service",
                "remove:epnix-c.service",
                "write:epnix-a.service",
                "enable:epnix-a.service",
                "restart:epnix-a.service",
            ])
        );
        assert_eq!(plan.touched(), strings(&["epnix-a.service", "epnix-b.service", "epnix-c.service"]));
    }

    #[test]
    fn disabling_every_ioc_is_a_generation_with_no_units() {
        let top = top(json!({ "a": { "workingDirectory": "iocBoot/a", "enable": false } }));
        let old = top.iocs["a"].clone();
        let plan =
            plan_for(&top, &host(Some("/nix/store/new-t"), &[("a", unit::render("t", "a", &old, &facts()))])).unwrap();
        assert_eq!(plan.switch, Switch::New);
        assert!(plan.units.is_empty());
        assert_eq!(plan.actions(), strings(&["remove:epnix-a.service"]));
    }

    #[test]
    fn a_process_that_drifted_is_restarted_even_though_nothing_changed() {
        let top = top(json!({ "a": { "workingDirectory": "iocBoot/a" } }));
        let unit = unit::render("t", "a", &top.iocs["a"], &facts());
        let mut state = host(Some("/nix/store/new-t"), &[("a", unit)]);
        state.processes.insert(
            "a".into(),
            Process {
                state: UnitState { active: "active".into(), ..Default::default() },
                file_changed: 0,
                cwd: Some("/nix/store/old-t/iocBoot/a".into()),
                procserv: None,
            },
        );
        let plan = plan_for(&top, &state).unwrap();
        assert_eq!(plan.switch, Switch::Stay);
        assert_eq!(plan.iocs["a"], Change::Drift);
        assert_eq!(plan.iocs["a"].as_str(), "restarted (drift)");
        assert!(plan.changes_host());
        assert_eq!(plan.actions(), strings(&["enable:epnix-a.service", "restart:epnix-a.service"]));
    }

    #[test]
    fn what_runs_anew_passes_its_own_checks_the_rest_only_runs() {
        let top = top(json!({
            "a": { "workingDirectory": "iocBoot/a" },
            "b": { "workingDirectory": "iocBoot/b" }
        }));
        let unit_b = unit::render("t", "b", &top.iocs["b"], &facts());
        let plan = plan_for(&top, &host(Some("/nix/store/new-t"), &[("b", unit_b)])).unwrap();
        let own = BTreeMap::from([("a".to_owned(), HealthCheck::default())]);
        let checks = plan.health_checks(&own);
        assert_eq!(checks["a"], HealthCheck::default());
        assert_eq!(checks["b"], HealthCheck::active());
        assert_eq!(plan.health_checks(&BTreeMap::new())["a"], HealthCheck::running());
    }

    #[test]
    fn units_of_others_are_never_taken_over() {
        let top = top(json!({ "a": { "workingDirectory": "iocBoot/a" } }));
        let foreign = host(None, &[("a", "[Service]\nExecStart=/bin/true\n".to_owned())]);
        let err = plan_for(&top, &foreign).unwrap_err().to_string();
        assert!(
            err.contains("/etc/systemd/system/epnix-a.service` exists and was not written by epnix-deploy"),
            "{err}"
        );

        let other_top = host(None, &[("a", unit::render("other", "a", &top.iocs["a"], &facts()))]);
        let err = plan_for(&top, &other_top).unwrap_err().to_string();
        assert!(err.contains("IOC `a` of top `other` already runs as `epnix-a.service`"), "{err}");
    }

    #[test]
    fn units_of_another_top_are_not_removed() {
        let top = top(json!({ "a": { "workingDirectory": "iocBoot/a" } }));
        let state = host(None, &[("z", unit::render("other", "z", &top.iocs["a"], &facts()))]);
        let plan = plan_for(&top, &state).unwrap();
        assert!(!plan.iocs.contains_key("z"));
    }

    #[test]
    fn a_switch_to_an_older_generation_restores_its_units_and_restarts_only_what_differs() {
        let top = top(json!({
            "a": { "workingDirectory": "iocBoot/a" },
            "c": { "workingDirectory": "iocBoot/c" }
        }));
        let units = render_units("t", &top, &facts());
        let mut current = top.iocs["a"].clone();
        current.environment.insert("X".into(), "new".into());
        let state = host(
            Some("/nix/store/new-t"),
            &[
                ("a", unit::render("t", "a", &current, &facts())),
                ("b", unit::render("t", "b", &current, &facts())),
                ("c", units["c"].clone()),
            ],
        );
        // Generation 3 has the same build: `c`, whose unit is the same, stays up.
        let mut plan = switch_to("t", 3, &"/nix/store/new-t".into(), units, &state, "h").unwrap();
        assert_eq!(plan.iocs["c"], Change::Unchanged);
        assert_eq!(
            plan.actions(),
            strings(&[
                "remove:epnix-b.service",
                "write:epnix-a.service",
                "enable:epnix-a.service",
                "enable:epnix-c.service",
                "restart:epnix-a.service",
                "start:epnix-c.service",
            ])
        );
        plan.generation_path = None;
        let cmd = plan.switch_cmd(Guarded::ByRestorePoint);
        let at = cmd.argv.iter().position(|a| a == "switch").unwrap();
        assert_eq!(cmd.argv[at + 1..at + 3], ["3", "/nix/var/nix/profiles/epnix/t-3-link/.epnix-deploy/units"]);
    }

    #[test]
    fn refuses_a_host_without_procserv_or_root() {
        let mut state = host(None, &[]);
        state.procserv = None;
        assert!(host_facts(&state, "h", None).unwrap_err().to_string().contains("apt install procserv"));
        // A procServ from Nix needs none on the host.
        assert_eq!(host_facts(&state, "h", Some(&facts())).unwrap(), facts());
        state.is_root = false;
        assert!(host_facts(&state, "h", None).unwrap_err().to_string().contains("sshUser = \"root\""));
    }
}
