//! conserver in front of procServ (`hosts.<name>.conserver`): after a deploy,
//! rollback or remove has succeeded, `conserver.sh` rewrites an include file
//! of conserver's configuration with one console per IOC of every top on the
//! host, and has conserver re-read it.
//!
//! The IOCs are where they should be by then, so nothing here is an error:
//! whatever keeps conserver from offering the consoles is a [`Problem`] in
//! the report, with what to do about it. The host-side script only reports
//! facts; which of them are problems is decided here, by [`report`], a pure
//! function.

use schemars::JsonSchema;
use serde::Serialize;

use crate::config::Conserver;
use crate::layout;
use crate::remote;
use crate::ssh::{Remote, RemoteCmd};
use crate::unit;

/// The console the include file holds when no IOC is left: conserver stops
/// when its configuration has no console at all. IOC names cannot contain a
/// dot, so no IOC's console takes this name.
const PLACEHOLDER: &str = "epnix.none";

/// What became of the host's conserver include file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConserverReport {
    /// The include file.
    pub include_file: String,
    /// The IOCs it has a console for: every IOC of epnix-deploy on the
    /// host, of every top.
    pub consoles: Vec<String>,
    /// Whether its text changed.
    pub changed: bool,
    /// Whether conserver was told to re-read its configuration.
    pub reloaded: bool,
    /// What keeps conserver from offering every console, with what to do;
    /// empty when nothing does. None of it affects the IOCs.
    pub problems: Vec<Problem>,
}

/// Something on the host that needs a hand before conserver offers the
/// consoles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "ConserverProblem")]
pub struct Problem {
    pub kind: ProblemKind,
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

/// In `--json`: `failed`, `no-config`, `not-included`, `not-running`,
/// `not-root`, `reload-failed` or `unreadable-console`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[schemars(rename = "ConserverProblemKind")]
pub enum ProblemKind {
    /// The file could not be rewritten (it is as it was before).
    Failed,
    /// conserver's configuration file (`configFile`) does not exist.
    NoConfig,
    /// conserver's configuration does not include the file.
    NotIncluded,
    /// conserver does not run (`service` has no main process).
    NotRunning,
    /// conserver runs as a user who cannot open the IOCs' UNIX consoles.
    NotRoot,
    /// conserver could not be told to re-read its configuration.
    ReloadFailed,
    /// A unit of epnix-deploy whose console could not be read: the file has
    /// no console for it.
    UnreadableConsole,
}

/// The host-side command that rewrites the include file.
pub fn cmd(settings: &Conserver) -> RemoteCmd {
    remote::CONSERVER.cmd(&[
        layout::unit_dir().as_str(),
        // The start of every top's ownership line: the consoles are those of
        // every top on the host.
        &unit::owner_line(""),
        layout::units_lock().as_str(),
        settings.include_file.as_str(),
        settings.config_file.as_str(),
        &settings.service,
        PLACEHOLDER,
    ])
}

/// Rewrites the include file on the host; what came of it, failures
/// included.
pub fn update(remote: &Remote, settings: &Conserver) -> ConserverReport {
    match remote.output(&cmd(settings)) {
        Ok(output) if output.status.success() => report(settings, &String::from_utf8_lossy(&output.stdout)),
        Ok(output) => {
            failed(settings, &format!("{} ({})", String::from_utf8_lossy(&output.stderr).trim(), output.status))
        }
        Err(err) => failed(settings, &format!("{err:#}")),
    }
}

/// What the dry run says this step would do.
pub fn planned(settings: &Conserver) -> String {
    format!(
        "rewrite `{}` with one console per IOC of every top on the host; if it changed, signal `{}` to re-read its configuration",
        settings.include_file, settings.service
    )
}

fn failed(settings: &Conserver, why: &str) -> ConserverReport {
    ConserverReport {
        include_file: settings.include_file.to_string(),
        consoles: Vec::new(),
        changed: false,
        reloaded: false,
        problems: vec![Problem {
            kind: ProblemKind::Failed,
            message: format!("rewriting the conserver include file `{}` failed: {why}", settings.include_file),
            hint: "the IOCs are not affected; once it is fixed, the next deploy, rollback or remove of any top on \
                   this host rewrites the file"
                .to_owned(),
        }],
    }
}

/// The report, from what `conserver.sh` printed.
fn report(settings: &Conserver, stdout: &str) -> ConserverReport {
    let (include, config, service) = (&settings.include_file, &settings.config_file, &settings.service);
    let mut consoles = Vec::new();
    let mut uds = Vec::new();
    let mut problems = Vec::new();
    let (mut changed, mut included, mut runs_as, mut reloaded) = (false, "", None, "");
    for line in stdout.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "console" => {
                let mut words = value.split(' ');
                let ioc = words.next().unwrap_or_default().to_owned();
                if words.next() == Some("uds") {
                    uds.push(ioc.clone());
                }
                consoles.push(ioc);
            }
            "unreadable" => problems.push(Problem {
                kind: ProblemKind::UnreadableConsole,
                message: format!(
                    "the console of `{value}` could not be read from its `ExecStart=`: the include file has none for it"
                ),
                hint: "the unit was changed by hand: deploy its top again, which rewrites it".to_owned(),
            }),
            "changed" => changed = value == "yes",
            "included" => included = value,
            "conserver" => runs_as = value.split_once(' ').filter(|_| value != "none"),
            "reloaded" => reloaded = value,
            _ => {}
        }
    }
    let restart = format!("`systemctl restart {service}`");
    match included {
        "yes" => {}
        "absent" => problems.push(Problem {
            kind: ProblemKind::NoConfig,
            message: format!("conserver's configuration `{config}` does not exist: nothing reads `{include}`"),
            hint: format!(
                "set `conserver.configFile` of this host to conserver's configuration, and add the line \
                 `#include {include}` to it"
            ),
        }),
        _ => problems.push(Problem {
            kind: ProblemKind::NotIncluded,
            message: format!("`{config}` does not include `{include}`: conserver does not offer these consoles"),
            hint: format!("add the line `#include {include}` to `{config}` (at the start of a line), then {restart}"),
        }),
    }
    match runs_as {
        None => problems.push(Problem {
            kind: ProblemKind::NotRunning,
            message: format!("conserver does not run (`{service}` has no main process): it reads the file when it starts"),
            hint: format!(
                "start it with `systemctl enable --now {service}`, or set `conserver.service` of this host to the unit \
                 that runs conserver"
            ),
        }),
        Some((uid, user)) if uid != "0" && !uds.is_empty() => problems.push(Problem {
            kind: ProblemKind::NotRoot,
            message: format!(
                "conserver runs as `{user}`, who cannot open the UNIX consoles of {}: procServ's socket is in \
                 `/run/epics/<ioc>/`, which only root may enter (mode 0700, owned by the IOC's dynamic user)",
                uds.iter().map(|ioc| format!("`{ioc}`")).collect::<Vec<_>>().join(", ")
            ),
            hint: format!(
                "run conserver as root: `systemctl edit {service}`, add `[Service]` and `User=root` (Debian's unit runs \
                 it as `conservr` and ignores `ASROOT=` in /etc/conserver/server.conf), then {restart}; or give \
                 these IOCs a TCP console (`procServ.console = <port>`)"
            ),
        }),
        Some(_) => {}
    }
    if reloaded == "failed" {
        problems.push(Problem {
            kind: ProblemKind::ReloadFailed,
            message: "conserver could not be told to re-read its configuration (SIGHUP to its main process): it \
                      still offers the consoles it had"
                .to_owned(),
            hint: restart,
        });
    }
    ConserverReport { include_file: include.to_string(), consoles, changed, reloaded: reloaded == "yes", problems }
}

impl ConserverReport {
    /// One line for the progress step.
    pub fn summary(&self) -> String {
        let what = match (self.changed, self.reloaded) {
            (true, true) => "rewritten, conserver re-reads it",
            (true, false) => "rewritten",
            (false, _) => "unchanged",
        };
        let problems = match self.problems.len() {
            0 => String::new(),
            1 => " (1 problem, below)".to_owned(),
            n => format!(" ({n} problems, below)"),
        };
        format!("{} console(s) in {}: {what}{problems}", self.consoles.len(), self.include_file)
    }

    /// The problems as stderr shows them: a warning and a hint each.
    pub fn warnings(&self, host: &str) -> Vec<String> {
        self.problems
            .iter()
            .map(|p| format!("warning: conserver on `{host}`: {}\nhint: {}", p.message, p.hint))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(report: &ConserverReport) -> Vec<ProblemKind> {
        report.problems.iter().map(|p| p.kind).collect()
    }

    #[test]
    fn all_well() {
        let out = "console iocA uds /run/epics/iocA/console\nconsole iocB host 2001\nchanged yes\nincluded yes\n\
                   conserver 0 root\nreloaded yes\n";
        let report = report(&Conserver::default(), out);
        assert_eq!(
            report,
            ConserverReport {
                include_file: "/etc/conserver/epnix-deploy.cf".into(),
                consoles: vec!["iocA".into(), "iocB".into()],
                changed: true,
                reloaded: true,
                problems: vec![],
            }
        );
        assert_eq!(
            report.summary(),
            "2 console(s) in /etc/conserver/epnix-deploy.cf: rewritten, conserver re-reads it"
        );
        assert!(report.warnings("ioc1").is_empty());
    }

    /// A file nobody reads is said so, with the line that makes conserver
    /// read it.
    #[test]
    fn a_file_not_included_gets_the_line_to_add() {
        let out = "console iocB host 2001\nchanged yes\nincluded no\nconserver 0 root\nreloaded no\n";
        let report = report(&Conserver::default(), out);
        assert_eq!(kinds(&report), [ProblemKind::NotIncluded]);
        assert!(!report.reloaded);
        assert_eq!(
            report.warnings("ioc1"),
            ["warning: conserver on `ioc1`: `/etc/conserver/conserver.cf` does not include \
              `/etc/conserver/epnix-deploy.cf`: conserver does not offer these consoles\n\
              hint: add the line `#include /etc/conserver/epnix-deploy.cf` to `/etc/conserver/conserver.cf` (at the \
              start of a line), then `systemctl restart conserver-server.service`"]
        );
        assert_eq!(report.summary(), "1 console(s) in /etc/conserver/epnix-deploy.cf: rewritten (1 problem, below)");

        let absent = report_of("included absent\nconserver 0 root\n");
        assert_eq!(kinds(&absent), [ProblemKind::NoConfig]);
        assert!(absent.problems[0].hint.contains("`#include /etc/conserver/epnix-deploy.cf`"));
    }

    fn report_of(out: &str) -> ConserverReport {
        report(&Conserver::default(), out)
    }

    /// Only root can enter `/run/epics/<ioc>/`: a conserver that runs as
    /// another user is told so when there is a UNIX console, not otherwise.
    #[test]
    fn a_conserver_that_is_not_root_cannot_reach_unix_consoles() {
        let out = "console iocA uds /run/epics/iocA/console\nconsole iocB host 2001\nchanged no\nincluded yes\n\
                   conserver 102 conservr\nreloaded no\n";
        let report = report_of(out);
        assert_eq!(kinds(&report), [ProblemKind::NotRoot]);
        let problem = &report.problems[0];
        assert!(
            problem.message.starts_with("conserver runs as `conservr`, who cannot open the UNIX consoles of `iocA`")
        );
        assert!(problem.hint.contains("User=root") && problem.hint.contains("ASROOT="), "{}", problem.hint);
        let tcp_only = report_of("console iocB host 2001\nincluded yes\nconserver 102 conservr\n");
        assert!(tcp_only.problems.is_empty());
    }

    #[test]
    fn other_problems() {
        let report = report_of("unreadable epnix-x.service\nchanged yes\nincluded yes\nconserver none\nreloaded no\n");
        assert_eq!(kinds(&report), [ProblemKind::UnreadableConsole, ProblemKind::NotRunning]);
        assert!(report.problems[1].hint.contains("systemctl enable --now conserver-server.service"));
        let report = report_of("changed yes\nincluded yes\nconserver 0 root\nreloaded failed\n");
        assert_eq!(kinds(&report), [ProblemKind::ReloadFailed]);
        let report = failed(&Conserver::default(), "/etc/conserver does not exist: is conserver installed?");
        assert_eq!(kinds(&report), [ProblemKind::Failed]);
        assert!(report.problems[0].message.ends_with("is conserver installed?"));
    }
}
