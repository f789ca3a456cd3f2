//! `start`, `stop` and `restart`: IOCs' units, through `systemctl`. They
//! hold the deploy lock of each IOC's top meanwhile, so they never race a
//! deploy (or a rollback, or a delete), and are refused while a rollback
//! of that top is pending: it would undo them. `restart` restarts the unit,
//! procServ and the IOC, and nothing else.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use schemars::JsonSchema;
use serde::Serialize;

use super::Changing;
use super::ioc::{self, IocSelection, Located};
use super::sudoers;
use crate::activation;
use crate::exit::BadInput;
use crate::exit::{Exit, Failure};
use crate::host;
use crate::layout;
use crate::output::{self, Render, Style};
use crate::process::tail;
use crate::progress::Progress;
use crate::remote;
use crate::ssh::{ConnectionLost, Remote, RemoteCmd};
use crate::table;
use crate::target::{self, Target};
use crate::unit;

/// What to do to the units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Start,
    Stop,
    Restart,
}

impl Action {
    /// The command's name, and `systemctl`'s.
    /// What it does when it succeeds.
    fn done(self) -> Done {
        match self {
            Action::Start => Done::Started,
            Action::Stop => Done::Stopped,
            Action::Restart => Done::Restarted,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
        }
    }
}

pub struct ServiceOptions {
    pub action: Action,
    pub selection: IocSelection,
    pub changing: Changing,
}

/// `start`'s, `stop`'s and `restart`'s result.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceReport {
    pub host: String,
    pub action: Action,
    /// The IOCs, in the order given.
    pub iocs: Vec<IocService>,
}

/// What was done to one IOC, and its unit's state after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IocService {
    pub ioc: String,
    pub unit: String,
    pub top: String,
    pub done: Done,
    /// systemd's `ActiveState` after, e.g. `active`, `inactive`.
    pub active_state: String,
    /// systemd's `SubState` after, e.g. `running`, `dead`.
    pub sub_state: String,
    /// When it last became active, in RFC 3339.
    pub since: Option<String>,
    /// Whether systemd starts it at boot.
    pub enabled: bool,
}

/// What was done to an IOC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Done {
    Started,
    Stopped,
    Restarted,
    /// It was already as asked: `start` of a running IOC, `stop` of a
    /// stopped one.
    Unchanged,
}

impl Done {
    fn as_str(self) -> &'static str {
        match self {
            Done::Started => "started",
            Done::Stopped => "stopped",
            Done::Restarted => "restarted",
            Done::Unchanged => "unchanged",
        }
    }

    fn parse(word: &str) -> Option<Done> {
        [Done::Started, Done::Stopped, Done::Restarted, Done::Unchanged].into_iter().find(|d| d.as_str() == word)
    }
}

pub fn run(opts: &ServiceOptions, progress: &Progress) -> Result<ServiceReport> {
    let (target, mut remote, found) = ioc::connect(&opts.selection, progress)?;
    let action = opts.action.as_str();
    // In a fixed order, so that two commands on the same tops never wait
    // for each other in a circle.
    let tops: BTreeSet<&str> = found.iocs.iter().map(|i| i.top.as_str()).collect();
    let step = progress.step(&target.label, action);
    if let Some(user) = remote.operator().map(str::to_owned) {
        let result = as_operator(&remote, &target, &user, opts.action, &found.iocs, &tops);
        remote.close();
        let report = result?;
        step.done(&report.iocs.iter().map(|i| format!("{} {}", i.ioc, i.done.as_str())).collect::<Vec<_>>().join(", "));
        return Ok(report);
    }
    let expect_name = target.expected_hostname().filter(|_| !opts.changing.skip_hostname_check);
    let who = target::deployer();
    for top in &tops {
        if let (Some(stale), _) = activation::take_lock(&mut remote, &target, top, &who, expect_name, false, None)? {
            progress.note(&format!(
                "note: took over the lock of top `{top}` from a deploy that ended without releasing it ({stale})"
            ));
        }
    }
    let output = remote.output(&command(opts.action, &found.iocs))?;
    remote.close();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let unit_of = |word: &str| found.iocs.iter().find(|i| i.unit == word);
    match output.status.code() {
        Some(0 | 1) => {}
        Some(20) => {
            let ioc = stdout.trim().strip_prefix("moved ").and_then(unit_of);
            return Err(Failure::new(
                Exit::Busy,
                format!(
                    "on `{target}`: the unit of IOC `{}` changed while its top's lock was being taken (a deploy just ended?); nothing was changed\n\
                     hint: run the command again",
                    ioc.map_or("?", |i| i.ioc.as_str())
                ),
            )
            .into());
        }
        Some(21) => {
            let top = stdout.trim().strip_prefix("pending ").and_then(unit_of).map_or("?", |i| i.top.as_str());
            return Err(activation::rollback_pending(&target, top).into());
        }
        Some(255) => {
            return Err(ConnectionLost(format!("on `{target}`: the SSH connection was lost during `{action}`")).into());
        }
        _ => anyhow::bail!("on `{target}`: `service.sh {action}` failed ({}):\n{}", output.status, tail(&stderr)),
    }
    let report = report(&target, opts.action, &found.iocs, &stdout);
    let failed: Vec<&str> =
        found.iocs.iter().filter(|i| !report.iocs.iter().any(|r| r.unit == i.unit)).map(|i| i.ioc.as_str()).collect();
    if !failed.is_empty() {
        return Err(Failure::new(
            Exit::Failed,
            format!(
                "on `{target}`: `systemctl {action}` failed for {}:\n{}\nhint: see why with `epnix-deploy logs {target} {}`",
                failed.join(", "),
                tail(&stderr),
                failed[0]
            ),
        )
        .into());
    }
    step.done(&report.iocs.iter().map(|i| format!("{} {}", i.ioc, i.done.as_str())).collect::<Vec<_>>().join(", "));
    Ok(report)
}

/// `service.sh` for `iocs`: each with its unit, its top's marker and its
/// top's state directory.
/// `start`, `stop` or `restart` for an operator's login, with only the
/// operators' policy's commands: the check that no rollback of a top is
/// pending, then each unit's action under its top's deploy lock (refused
/// at once when a deploy holds it), then systemd's view, which anyone may
/// read.
fn as_operator(
    remote: &Remote,
    target: &Target,
    user: &str,
    action: Action,
    iocs: &[Located],
    tops: &BTreeSet<&str>,
) -> Result<ServiceReport> {
    for top in tops {
        let check = sudoers::no_rollback_pending(top);
        let output = remote.output(&check)?;
        match output.status.code() {
            Some(0) => {}
            // `test` says nothing; sudo's refusal does.
            Some(1) if output.stderr.is_empty() => return Err(activation::rollback_pending(target, top).into()),
            _ => return Err(refused(target, user, &check, &output.stderr).into()),
        }
    }
    let mut did = String::new();
    let mut failed = Vec::new();
    for ioc in iocs {
        let unchanged = match action {
            Action::Start => ioc.active == "active",
            Action::Stop => ioc.active == "inactive" || ioc.active == "failed",
            Action::Restart => false,
        };
        if unchanged {
            did += &format!("did {} {}\n", ioc.unit, Done::Unchanged.as_str());
            continue;
        }
        let cmd = sudoers::service(action, &ioc.top, &ioc.unit);
        let output = remote.output(&cmd)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        match output.status.code() {
            Some(0) => did += &format!("did {} {}\n", ioc.unit, action.done().as_str()),
            Some(sudoers::LOCK_BUSY) => {
                return Err(Failure::new(
                    Exit::Busy,
                    format!(
                        "on `{target}`: a deploy of top `{}` holds its lock; IOC `{}` was left as it was\n\
                         hint: run the command again when the deploy has ended",
                        ioc.top, ioc.ioc
                    ),
                )
                .into());
            }
            _ if stderr.starts_with("sudo:") => return Err(refused(target, user, &cmd, &output.stderr).into()),
            _ => failed.push((ioc.ioc.as_str(), stderr.into_owned())),
        }
    }
    if let Some((first, _)) = failed.first() {
        let names = failed.iter().map(|(i, _)| *i).collect::<Vec<_>>().join(", ");
        let said = failed.iter().map(|(_, e)| tail(e)).collect::<Vec<_>>().join("\n");
        return Err(Failure::new(
            Exit::Failed,
            format!(
                "on `{target}`: `systemctl {}` failed for {names}:\n{said}\nhint: see why with `epnix-deploy logs {target} {first}`",
                action.as_str()
            ),
        )
        .into());
    }
    let mut show = vec!["show".to_owned(), "--timestamp=unix".to_owned(), format!("--property={SHOWN}")];
    show.extend(iocs.iter().map(|i| i.unit.clone()));
    let shown = remote.run(&RemoteCmd::systemctl(show))?;
    Ok(report(target, action, iocs, &format!("{did}\n{shown}")))
}

/// What `report` reads of each unit after the action.
const SHOWN: &str = "Id,ActiveState,SubState,ActiveEnterTimestamp";

/// The operators' policy refused `cmd` to `user`.
fn refused(target: &Target, user: &str, cmd: &RemoteCmd, stderr: &[u8]) -> BadInput {
    BadInput::new(format!(
        "on `{target}`: `{user}` is not root, and may not run `{cmd}` as root; nothing was changed\n{}",
        tail(&String::from_utf8_lossy(stderr))
    ))
    .hint(
        "an operator needs the operators' policy on the host, and to be in its group: \
         `epnix-deploy sudoers --group GROUP` prints it (see the README's \"Operators\")",
    )
}

fn command(action: Action, iocs: &[Located]) -> crate::ssh::RemoteCmd {
    let mut args = vec![action.as_str().to_owned(), layout::unit_dir().to_string()];
    for ioc in iocs {
        args.extend([ioc.unit.clone(), unit::owner_line(&ioc.top), layout::records(&ioc.top).into_string()]);
    }
    remote::SERVICE.cmd(&args)
}

/// Reads `service.sh`'s report: what it did to each unit and systemd's view
/// after. A unit whose action failed is left out.
fn report(target: &Target, action: Action, iocs: &[Located], stdout: &str) -> ServiceReport {
    let (did, show) = stdout.split_once("\n\n").unwrap_or((stdout, ""));
    let did: BTreeMap<&str, Done> = did
        .lines()
        .filter_map(|l| {
            let (unit, word) = l.strip_prefix("did ")?.split_once(' ')?;
            Some((unit, Done::parse(word)?))
        })
        .collect();
    let states = host::parse_show(show);
    let iocs = iocs
        .iter()
        .filter_map(|ioc| {
            let state = states.get(&ioc.unit).cloned().unwrap_or_default();
            Some(IocService {
                ioc: ioc.ioc.clone(),
                unit: ioc.unit.clone(),
                top: ioc.top.clone(),
                done: *did.get(ioc.unit.as_str())?,
                active_state: state.active,
                sub_state: state.sub,
                since: state.since.map(output::rfc3339),
                enabled: ioc.enabled,
            })
        })
        .collect();
    ServiceReport { host: target.label.clone(), action, iocs }
}

impl Render for ServiceReport {
    fn text(&self, _: &Style) -> String {
        let mut rows = vec![["HOST", "IOC", "TOP", "DONE", "STATE", "SINCE"].map(String::from)];
        for ioc in &self.iocs {
            rows.push([
                self.host.clone(),
                ioc.ioc.clone(),
                ioc.top.clone(),
                ioc.done.as_str().to_owned(),
                format!("{} ({})", ioc.active_state, ioc.sub_state),
                ioc.since.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        table::render(&rows)
    }

    /// A stopped IOC does not stay stopped for good: say what starts it.
    fn notes(&self) -> Vec<String> {
        if self.action != Action::Stop {
            return Vec::new();
        }
        let mut by_top: BTreeMap<&str, Vec<&IocService>> = BTreeMap::new();
        for ioc in &self.iocs {
            by_top.entry(&ioc.top).or_default().push(ioc);
        }
        by_top
            .into_iter()
            .map(|(top, iocs)| {
                let names = |list: &[&&IocService]| list.iter().map(|i| i.ioc.as_str()).collect::<Vec<_>>().join(", ");
                let all: Vec<&&IocService> = iocs.iter().collect();
                let at_boot: Vec<&&IocService> = iocs.iter().filter(|i| i.enabled).collect();
                let boot = match at_boot.len() {
                    0 => String::new(),
                    n if n == iocs.len() => ", and so does the next boot".to_owned(),
                    _ => format!(", and the next boot starts {}", names(&at_boot)),
                };
                format!(
                    "note: the next deploy of top `{top}` starts {} again{boot}; \
                     to keep an IOC off, set `enable = false` for it in the configuration and deploy",
                    names(&all)
                )
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A restart of two IOCs of one top.
    pub(crate) fn sample() -> ServiceReport {
        let target = Target::resolve("root@ioc1", None).unwrap();
        let iocs = [located("a", "linac", true), located("b", "linac", true)];
        let shown = "did epnix-a.service restarted\ndid epnix-b.service restarted\n\n\
            Id=epnix-a.service\nActiveState=active\nSubState=running\nActiveEnterTimestamp=@1795314273\n\n\
            Id=epnix-b.service\nActiveState=active\nSubState=running\nActiveEnterTimestamp=@1795314274\n";
        report(&target, Action::Restart, &iocs, shown)
    }

    fn located(ioc: &str, top: &str, enabled: bool) -> Located {
        Located {
            ioc: ioc.into(),
            top: top.into(),
            unit: layout::unit_name(ioc),
            console: None,
            active: "active".into(),
            enabled,
        }
    }

    const SHOWN: &str = "did epnix-a.service stopped\ndid epnix-b.service unchanged\ndid epnix-c.service failed\n\n\
        Id=epnix-a.service\nActiveState=inactive\nSubState=dead\nActiveEnterTimestamp=@1795314273\n\n\
        Id=epnix-b.service\nActiveState=inactive\nSubState=dead\nActiveEnterTimestamp=\n\n\
        Id=epnix-c.service\nActiveState=active\nSubState=running\nActiveEnterTimestamp=@1795314273\n";

    #[test]
    fn the_report_says_what_was_done_and_leaves_out_what_failed() {
        let target = Target::resolve("root@h", None).unwrap();
        let iocs = [located("a", "linac", true), located("b", "linac", false), located("c", "ring", true)];
        let report = report(&target, Action::Stop, &iocs, SHOWN);
        assert_eq!(report.iocs.len(), 2);
        assert_eq!((report.iocs[0].done, report.iocs[1].done), (Done::Stopped, Done::Unchanged));
        assert_eq!(report.iocs[0].since.as_deref(), Some("2026-11-22T02:24:33Z"));
        assert_eq!(report.iocs[1].since, None);
        insta::assert_snapshot!(report.text(&Style::default()));
        assert_eq!(
            report.notes(),
            ["note: the next deploy of top `linac` starts a, b again, and the next boot starts a; \
              to keep an IOC off, set `enable = false` for it in the configuration and deploy"]
        );
    }

    #[test]
    fn only_stop_has_a_note() {
        let target = Target::resolve("root@h", None).unwrap();
        let iocs = [located("a", "linac", true)];
        assert!(report(&target, Action::Restart, &iocs, SHOWN).notes().is_empty());
        let notes = report(&target, Action::Stop, &iocs, SHOWN).notes();
        assert!(notes[0].contains("starts a again, and so does the next boot;"), "{notes:?}");
    }

    #[test]
    fn the_command_names_each_unit_with_its_top() {
        let cmd = command(Action::Restart, &[located("a", "linac", true), located("r", "ring", true)]);
        assert_eq!(
            cmd.to_string(),
            "sh service.sh restart /etc/systemd/system epnix-a.service X-EpnixDeploy-Top=linac /var/lib/epnix-deploy/linac \
             epnix-r.service X-EpnixDeploy-Top=ring /var/lib/epnix-deploy/ring"
        );
    }
}
