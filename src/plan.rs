//! The plan: what must change on one host to run one top at a given build
//! with given units, computed from those and the host's state alone. Pure,
//! so `--dry-run`, the real run and the tests all see the same plan. Deploys
//! and rollbacks share it; they differ only in how the profile moves.

use std::collections::{BTreeMap, BTreeSet};

use camino::Utf8PathBuf;

use crate::config::Top;
use crate::exit::BadInput;
use crate::host::HostState;
use crate::layout;
use crate::ssh::RemoteCmd;
use crate::unit::{self, HostFacts};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub top: String,
    pub store_path: Utf8PathBuf,
    /// How the profile moves.
    pub switch: Switch,
    /// Whether the profile pointed at another build (or nowhere) before.
    pub top_changed: bool,
    /// The unit of every IOC that runs afterwards.
    pub units: BTreeMap<String, String>,
    /// The units whose text is new or differs from the host's.
    pub rewrite: BTreeSet<String>,
    /// What happens to each IOC of the top, and to those it no longer has.
    pub iocs: BTreeMap<String, Change>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// No unit yet: install and start it.
    New,
    /// The unit or the top changed: install and restart it.
    Changed,
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
            Change::Unchanged => "unchanged",
            Change::Removed => "removed",
        }
    }
}

/// How a plan moves the top's profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Switch {
    /// The profile stays: same build, same units.
    Stay,
    /// A new generation, recorded with this `meta` text.
    NewGeneration { meta: String },
    /// Back (or forth) to an existing generation.
    To(u32),
}

/// One step that changes the host, in the order they run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start the record of the coming generation, with its `meta` file.
    StageRecord,
    /// Add a unit to the staged record.
    StageUnit(String),
    /// Point the profile at the new build (a new generation) and file the
    /// staged record under its number.
    SetProfile,
    /// Point the profile at an existing generation.
    SwitchGeneration(u32),
    WriteUnit(String),
    RemoveUnit(String),
    DaemonReload,
    Enable(Vec<String>),
    Restart(Vec<String>),
    Start(Vec<String>),
}

/// Checks that epnix-deploy can manage the host's profiles and units.
pub fn check_manageable(host: &HostState, label: &str) -> Result<(), BadInput> {
    if !host.is_root {
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

/// Checks that the host can take a deploy at all, before anything is copied.
pub fn host_facts(host: &HostState, label: &str) -> Result<HostFacts, BadInput> {
    check_manageable(host, label)?;
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

/// Plans a deploy of `top_name` built at `store_path` with `wanted` units.
/// A new generation is made when the build or any unit changes; `meta` is
/// what its record will say.
pub fn deploy(
    top_name: &str,
    store_path: &Utf8PathBuf,
    wanted: BTreeMap<String, String>,
    meta: String,
    state: &HostState,
    label: &str,
) -> Result<Plan, BadInput> {
    let mut plan = plan(top_name, store_path, wanted, state, label)?;
    if plan.top_changed || plan.iocs.values().any(|c| *c != Change::Unchanged) {
        plan.switch = Switch::NewGeneration { meta };
    }
    Ok(plan)
}

/// Plans a switch to the existing `generation`, built at `store_path`, with
/// `wanted` units.
pub fn switch_to(
    top_name: &str,
    generation: u32,
    store_path: &Utf8PathBuf,
    wanted: BTreeMap<String, String>,
    state: &HostState,
    label: &str,
) -> Result<Plan, BadInput> {
    let mut plan = plan(top_name, store_path, wanted, state, label)?;
    plan.switch = Switch::To(generation);
    Ok(plan)
}

fn plan(
    top_name: &str,
    store_path: &Utf8PathBuf,
    wanted: BTreeMap<String, String>,
    state: &HostState,
    label: &str,
) -> Result<Plan, BadInput> {
    let top_changed = state.profile.as_ref().is_none_or(|p| &p.store_path != store_path);
    let mut rewrite = BTreeSet::new();
    let mut iocs = BTreeMap::new();
    for (name, text) in &wanted {
        let change = match state.units.get(name) {
            None => Change::New,
            Some(existing) => match unit::owner(existing) {
                Some(owner) if owner == top_name => match (existing != text, top_changed) {
                    (false, false) => Change::Unchanged,
                    (differs, _) => {
                        if differs {
                            rewrite.insert(name.clone());
                        }
                        Change::Changed
                    }
                },
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
    Ok(Plan {
        top: top_name.to_owned(),
        store_path: store_path.clone(),
        switch: Switch::Stay,
        top_changed,
        units: wanted,
        rewrite,
        iocs,
    })
}

impl Plan {
    fn with(&self, wanted: &[Change]) -> Vec<String> {
        self.iocs.iter().filter(|(_, c)| wanted.contains(c)).map(|(n, _)| n.clone()).collect()
    }

    /// The IOCs whose units run after the deploy.
    pub fn running(&self) -> Vec<String> {
        self.units.keys().cloned().collect()
    }

    /// The steps that change the host, in order. Units go in before the
    /// reload, removals stop their IOC before the file goes.
    pub fn actions(&self) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.switch {
            Switch::Stay => {}
            Switch::NewGeneration { .. } => {
                actions.push(Action::StageRecord);
                actions.extend(self.units.keys().map(|name| Action::StageUnit(name.clone())));
                actions.push(Action::SetProfile);
            }
            Switch::To(generation) => actions.push(Action::SwitchGeneration(generation)),
        }
        let removes = self.with(&[Change::Removed]);
        for name in &removes {
            actions.push(Action::RemoveUnit(name.clone()));
        }
        for name in &self.rewrite {
            actions.push(Action::WriteUnit(name.clone()));
        }
        if actions.iter().any(|a| matches!(a, Action::WriteUnit(_) | Action::RemoveUnit(_))) {
            actions.push(Action::DaemonReload);
        }
        let running = self.running();
        if !running.is_empty() {
            actions.push(Action::Enable(running));
        }
        let restart = self.with(&[Change::Changed]);
        if !restart.is_empty() {
            actions.push(Action::Restart(restart));
        }
        let start = self.with(&[Change::New, Change::Unchanged]);
        if !start.is_empty() {
            actions.push(Action::Start(start));
        }
        actions
    }
}

/// The command that carries out `action` on the host.
pub fn remote_cmd(plan: &Plan, action: &Action) -> RemoteCmd {
    let units = |names: &[String]| names.iter().map(|n| layout::unit_name(n)).collect::<Vec<_>>();
    match action {
        Action::StageRecord => {
            let meta = match &plan.switch {
                Switch::NewGeneration { meta } => meta.clone(),
                _ => String::new(),
            };
            RemoteCmd::script(STAGE_RECORD, &[layout::staging_record(&plan.top).as_str()]).with_stdin(meta)
        }
        Action::StageUnit(name) => {
            let path = layout::staging_record(&plan.top).join("units").join(layout::unit_name(name));
            RemoteCmd::script(WRITE_FILE, &[path.as_str()]).with_stdin(plan.units[name].clone())
        }
        Action::SetProfile => RemoteCmd::script(
            SET_PROFILE,
            &[layout::profile(&plan.top).as_str(), plan.store_path.as_str(), layout::records(&plan.top).as_str()],
        ),
        Action::SwitchGeneration(generation) => {
            RemoteCmd::script(SWITCH_GENERATION, &[layout::profile(&plan.top).as_str(), &generation.to_string()])
        }
        Action::WriteUnit(name) => {
            RemoteCmd::script(WRITE_FILE, &[layout::unit_path(name).as_str()]).with_stdin(plan.units[name].clone())
        }
        Action::RemoveUnit(name) => {
            RemoteCmd::script(REMOVE_UNIT, &[&layout::unit_name(name), layout::unit_path(name).as_str()])
        }
        Action::DaemonReload => RemoteCmd::new(["systemctl", "daemon-reload"]),
        Action::Enable(names) => {
            RemoteCmd::new(["systemctl", "enable", "--quiet"].into_iter().map(String::from).chain(units(names)))
        }
        Action::Restart(names) => {
            RemoteCmd::new(["systemctl", "restart"].into_iter().map(String::from).chain(units(names)))
        }
        Action::Start(names) => {
            RemoteCmd::new(["systemctl", "start"].into_iter().map(String::from).chain(units(names)))
        }
    }
}

/// `$1` the staging directory; the `meta` text on stdin.
const STAGE_RECORD: &str = r#"set -eu
rm -rf "$1"
mkdir -p "$1/units"
cat > "$1/meta"
"#;

/// `$1` profile, `$2` store path, `$3` records directory. Files the staged
/// record under the new generation's number (replacing a stale record of a
/// deleted generation with that number) and prints the generation link.
const SET_PROFILE: &str = r#"set -eu
PATH="$PATH:/nix/var/nix/profiles/default/bin:/run/current-system/sw/bin"
mkdir -p "${1%/*}"
nix-env --profile "$1" --set "$2"
link=$(readlink "$1")
n=${link%-link}; n=${n##*-}
rm -rf "$3/$n"
mv "$3/staging" "$3/$n"
echo "$link"
"#;

/// `$1` profile, `$2` generation. Prints the generation link.
const SWITCH_GENERATION: &str = r#"set -eu
PATH="$PATH:/nix/var/nix/profiles/default/bin:/run/current-system/sw/bin"
nix-env --profile "$1" --switch-generation "$2"
readlink "$1"
"#;

/// `$1` the file; its text on stdin. Written beside and renamed, so systemd
/// never reads half a unit.
const WRITE_FILE: &str = r#"set -eu
cat > "$1.epnix-tmp"
chmod 0644 "$1.epnix-tmp"
mv -f "$1.epnix-tmp" "$1"
"#;

/// `$1` the unit, `$2` its file.
const REMOVE_UNIT: &str = r#"set -eu
systemctl disable --now --quiet "$1" || true
rm -f "$2"
"#;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Config;
    use crate::host::Profile;

    fn facts() -> HostFacts {
        HostFacts { procserv: "/usr/bin/procServ".into(), procserv_oneshot: true }
    }

    fn top(iocs: serde_json::Value) -> Top {
        let json = json!({ "tops": { "t": { "package": "/nix/store/new-t", "iocs": iocs } } });
        Config::parse(&json).unwrap().tops["t"].clone()
    }

    fn host(profile: Option<&str>, units: &[(&str, String)]) -> HostState {
        HostState {
            hostname: "h".into(),
            is_root: true,
            procserv: Some(facts()),
            nix_env: Some("/usr/bin/nix-env".into()),
            has_systemctl: true,
            nix_store_on_ssh_path: true,
            profile: profile.map(|p| Profile { generation: 1, store_path: p.into() }),
            units: units.iter().map(|(n, t)| ((*n).to_owned(), t.clone())).collect(),
            generations: Vec::new(),
            records: BTreeMap::new(),
            rollback_pending: false,
            rollbacks: Vec::new(),
        }
    }

    fn plan_for(top: &Top, state: &HostState) -> Result<Plan, BadInput> {
        deploy("t", &"/nix/store/new-t".into(), render_units("t", top, &facts()), "meta".into(), state, "h")
    }

    fn new_generation(units: &[&str]) -> Vec<Action> {
        let mut actions = vec![Action::StageRecord];
        actions.extend(units.iter().map(|u| Action::StageUnit((*u).to_owned())));
        actions.push(Action::SetProfile);
        actions
    }

    #[test]
    fn a_first_deploy_installs_and_starts_everything() {
        let top = top(json!({ "a": { "workingDirectory": "iocBoot/a" } }));
        let plan = plan_for(&top, &host(None, &[])).unwrap();
        let names = vec!["a".to_owned()];
        let mut expected = new_generation(&["a"]);
        expected.extend([
            Action::WriteUnit("a".into()),
            Action::DaemonReload,
            Action::Enable(names.clone()),
            Action::Start(names),
        ]);
        assert_eq!(plan.actions(), expected);
    }

    #[test]
    fn the_same_build_again_only_makes_sure_it_runs() {
        let top = top(json!({ "a": { "workingDirectory": "iocBoot/a" } }));
        let unit = unit::render("t", "a", &top.iocs["a"], &facts());
        let plan = plan_for(&top, &host(Some("/nix/store/new-t"), &[("a", unit)])).unwrap();
        assert_eq!(plan.switch, Switch::Stay);
        assert_eq!(plan.iocs["a"], Change::Unchanged);
        assert_eq!(plan.actions(), [Action::Enable(vec!["a".into()]), Action::Start(vec!["a".into()])]);
    }

    #[test]
    fn a_new_build_restarts_without_rewriting_units() {
        let top = top(json!({ "a": { "workingDirectory": "iocBoot/a" } }));
        let unit = unit::render("t", "a", &top.iocs["a"], &facts());
        let plan = plan_for(&top, &host(Some("/nix/store/old-t"), &[("a", unit)])).unwrap();
        let a = vec!["a".to_owned()];
        let mut expected = new_generation(&["a"]);
        expected.extend([Action::Enable(a.clone()), Action::Restart(a)]);
        assert_eq!(plan.actions(), expected);
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
        let a = vec!["a".to_owned()];
        // Same build, other units: still a new generation, so that a
        // rollback can bring the old units back.
        let mut expected = new_generation(&["a"]);
        expected.extend([
            Action::RemoveUnit("b".into()),
            Action::RemoveUnit("c".into()),
            Action::WriteUnit("a".into()),
            Action::DaemonReload,
            Action::Enable(a.clone()),
            Action::Restart(a),
        ]);
        assert_eq!(plan.actions(), expected);
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
    fn unit_files_are_written_through_a_temporary_file() {
        let top = top(json!({ "a": { "workingDirectory": "iocBoot/a" } }));
        let plan = plan_for(&top, &host(None, &[])).unwrap();
        let cmd = remote_cmd(&plan, &Action::WriteUnit("a".into()));
        assert_eq!(cmd.argv[4], "/etc/systemd/system/epnix-a.service");
        assert_eq!(cmd.stdin.as_deref(), Some(plan.units["a"].as_str()));
    }

    #[test]
    fn a_switch_to_an_older_generation_restores_its_units() {
        let top = top(json!({ "a": { "workingDirectory": "iocBoot/a" } }));
        let units = render_units("t", &top, &facts());
        let mut current = top.iocs["a"].clone();
        current.environment.insert("X".into(), "new".into());
        let state = host(
            Some("/nix/store/new-t"),
            &[("a", unit::render("t", "a", &current, &facts())), ("b", unit::render("t", "b", &current, &facts()))],
        );
        let plan = switch_to("t", 3, &"/nix/store/old-t".into(), units, &state, "h").unwrap();
        let a = vec!["a".to_owned()];
        assert_eq!(
            plan.actions(),
            [
                Action::SwitchGeneration(3),
                Action::RemoveUnit("b".into()),
                Action::WriteUnit("a".into()),
                Action::DaemonReload,
                Action::Enable(a.clone()),
                Action::Restart(a),
            ]
        );
    }

    #[test]
    fn refuses_a_host_without_procserv_or_root() {
        let mut state = host(None, &[]);
        state.procserv = None;
        assert!(host_facts(&state, "h").unwrap_err().to_string().contains("apt install procserv"));
        state.is_root = false;
        assert!(host_facts(&state, "h").unwrap_err().to_string().contains("sshUser = \"root\""));
    }
}
