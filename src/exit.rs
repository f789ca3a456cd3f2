//! The exit codes of `epnix-deploy`, in one place.
//!
//! Scripts branch on these, so each value keeps its meaning across releases.
//! Every way the program ends maps to one [`Exit`] in [`code_for`]; the
//! `--help` text is written from [`Exit::ALL`], and a test pins the README's
//! "Exit codes" table to it.

use std::fmt;

use schemars::JsonSchema;
use serde::Serialize;

/// How a run ended, as the host really is afterwards. `--json` names it
/// in kebab case (`bad-input`) as the document's `outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Exit {
    /// Everything went as asked: the IOCs run healthy on the new generation.
    Success,
    /// It failed, and the host is on the generation it was on before,
    /// healthy: the failure came before the switch, or the tool (or the
    /// host by itself) rolled back.
    Failed,
    /// Bad input (flags, configuration, the top's contents, or a host that
    /// cannot take the deploy): nothing was changed on any host.
    BadInput,
    /// The rollback failed too: the host needs attention. The message says
    /// what state it is in.
    NeedsAttention,
    /// The outcome is unknown: the connection was lost (or the tool was
    /// interrupted) after the switch. The host's armed rollback decides.
    Unknown,
    /// Another deploy holds the host's lock for this top, or a rollback of
    /// an unconfirmed switch is pending: nothing was changed.
    Busy,
    /// Interrupted (Ctrl-C) before the switch: nothing was changed.
    Interrupted,
    /// The first SSH login to the host failed (a refused key, an unknown or
    /// changed host key, no answer): nothing was changed.
    Unreachable,
}

impl Exit {
    /// In the order of their codes.
    pub const ALL: [Exit; 8] = [
        Exit::Success,
        Exit::Failed,
        Exit::BadInput,
        Exit::NeedsAttention,
        Exit::Unknown,
        Exit::Busy,
        Exit::Unreachable,
        Exit::Interrupted,
    ];

    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::BadInput => 2,
            Exit::NeedsAttention => 3,
            Exit::Unknown => 4,
            Exit::Busy => 5,
            Exit::Unreachable => 6,
            Exit::Interrupted => 130,
        }
    }

    /// How bad an outcome is, for a run over many hosts, whose exit code is
    /// its worst host's: a host that needs attention, then one whose
    /// outcome is unknown (someone must look at both), then a failed deploy
    /// (rolled back: the host is healthy, the release is not), an interrupted
    /// run, and the ways of changing nothing (no login, a lock, bad input).
    pub fn severity(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::BadInput => 1,
            Exit::Busy => 2,
            Exit::Unreachable => 3,
            Exit::Interrupted => 4,
            Exit::Failed => 5,
            Exit::Unknown => 6,
            Exit::NeedsAttention => 7,
        }
    }

    /// The worst of `outcomes` ([`Exit::severity`]); success when there is none.
    pub fn worst(outcomes: impl IntoIterator<Item = Exit>) -> Exit {
        outcomes.into_iter().max_by_key(|e| e.severity()).unwrap_or(Exit::Success)
    }

    /// One line for `--help` and the README.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Success => "done: the IOCs run healthy on the generation asked for",
            Exit::Failed => {
                "failed; the host is on its previous generation, healthy (never switched, or rolled back); \
                 for `status`: an IOC does not run"
            }
            Exit::BadInput => "bad input or a host that cannot take it; nothing changed",
            Exit::NeedsAttention => "the rollback failed too; the host needs attention",
            Exit::Unknown => {
                "outcome unknown (connection lost or interrupted after the switch); the host's armed rollback decides"
            }
            Exit::Busy => "busy: another deploy holds the lock, or a rollback is pending; nothing changed",
            Exit::Interrupted => "interrupted before the switch; nothing changed",
            Exit::Unreachable => "could not log in to the host over SSH; nothing changed",
        }
    }
}

/// The exit codes, for `--help`.
pub fn help_text() -> String {
    let lines: Vec<String> = Exit::ALL.iter().map(|e| format!("  {:>3}  {}", e.code(), e.meaning())).collect();
    format!("Exit codes:\n{}", lines.join("\n"))
}

/// An error whose outcome is known where it arises, e.g. "rolled back".
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure { exit, message: message.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// An error caused by what the user asked for, detected before any host was
/// changed. It maps to [`Exit::BadInput`].
#[derive(Debug)]
pub struct BadInput {
    pub message: String,
    /// What the user can do about it, printed as a `hint:` line.
    pub hint: Option<String>,
}

impl BadInput {
    pub fn new(message: impl Into<String>) -> BadInput {
        BadInput { message: message.into(), hint: None }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> BadInput {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BadInput {}

/// How an error ended the program. Anything not classified where it arose
/// happened before a switch (the protected switch classifies all of its
/// own), so the host is as it was: [`Exit::Failed`].
pub fn code_for(err: &anyhow::Error) -> Exit {
    if let Some(failure) = err.downcast_ref::<Failure>() {
        failure.exit
    } else if err.downcast_ref::<BadInput>().is_some() {
        Exit::BadInput
    } else {
        Exit::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's table says what the code does: one row per exit code,
    /// in order, with the meaning given here.
    #[test]
    fn the_readme_table_is_the_exit_codes() {
        let readme = include_str!("../README.md");
        let section = readme.split("### Exit codes").nth(1).expect("the README has an `Exit codes` section");
        let section = section.split("\n#").next().unwrap_or_default();
        let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| code")).collect();
        let want: Vec<String> = Exit::ALL.iter().map(|e| format!("| {} | {} |", e.code(), e.meaning())).collect();
        assert_eq!(rows, want);
    }

    #[test]
    fn codes_are_distinct_and_in_order() {
        let codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert!(codes.windows(2).all(|w| w[0] < w[1]), "{codes:?}");
    }

    #[test]
    fn the_worst_outcome_is_the_one_that_needs_a_person_most() {
        let mut severities: Vec<u8> = Exit::ALL.iter().map(|e| e.severity()).collect();
        severities.sort_unstable();
        severities.dedup();
        assert_eq!(severities.len(), Exit::ALL.len(), "two outcomes are as bad as each other");
        assert_eq!(Exit::worst([]), Exit::Success);
        assert_eq!(Exit::worst([Exit::Success, Exit::Unreachable, Exit::Failed, Exit::BadInput]), Exit::Failed);
        assert_eq!(Exit::worst([Exit::Failed, Exit::NeedsAttention, Exit::Unknown]), Exit::NeedsAttention);
        assert_eq!(Exit::worst([Exit::Interrupted, Exit::Unknown]), Exit::Unknown);
    }

    #[test]
    fn a_failure_keeps_its_exit_through_context() {
        let err = anyhow::Error::new(Failure::new(Exit::Unreachable, "no login")).context("listing");
        assert_eq!(code_for(&err), Exit::Unreachable);
    }
}
