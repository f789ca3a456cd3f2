//! The exit codes of `epnix-deploy`, in one place.
//!
//! Scripts branch on these, so each value keeps its meaning across releases.
//! The README's "Exit codes" table is written from this list.

use std::fmt;

/// Everything went as asked: the IOCs run healthy on the new generation.
pub const SUCCESS: u8 = 0;
/// It failed, and the host is on the previous generation, healthy: either
/// the failure came before the switch, or the tool rolled back.
pub const FAILED: u8 = 1;
/// Bad input (flags, configuration, the top's contents, or a host that cannot
/// take the deploy): nothing was changed on any host.
pub const BAD_INPUT: u8 = 2;
/// The rollback failed too: the host needs attention. The message says what
/// state it is in.
pub const NEEDS_ATTENTION: u8 = 3;
/// The outcome is unknown: the connection was lost (or the tool was
/// interrupted) after the switch. The message says how to find out.
pub const UNKNOWN: u8 = 4;
/// Another deploy holds the host's lock for this top, or its rollback is
/// still pending: nothing was changed.
pub const BUSY: u8 = 5;
/// Interrupted (Ctrl-C) before the switch: nothing was changed.
pub const INTERRUPTED: u8 = 130;

/// An error whose exit code is decided where it arises, e.g. "rolled back".
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// An error caused by what the user asked for, detected before any host was
/// changed. It maps to [`BAD_INPUT`].
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

/// The exit code for an error that ended the program.
pub fn code_for(err: &anyhow::Error) -> u8 {
    if let Some(failure) = err.downcast_ref::<Failure>() {
        failure.code
    } else if err.downcast_ref::<BadInput>().is_some() {
        BAD_INPUT
    } else {
        FAILED
    }
}
