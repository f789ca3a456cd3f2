//! The exit codes of `epnix-deploy`, in one place.
//!
//! Scripts branch on these, so each value keeps its meaning across releases.
//! The README's "Exit codes" table is written from this list.

use std::fmt;

/// Everything went as asked.
pub const SUCCESS: u8 = 0;
/// The operation failed after it started changing a host; the message says
/// what state the host was left in.
pub const FAILED: u8 = 1;
/// Bad input (flags, configuration, the top's contents, or a host that cannot
/// take the deploy): nothing was changed on any host.
pub const BAD_INPUT: u8 = 2;

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
    if err.chain().any(|cause| cause.is::<BadInput>()) { BAD_INPUT } else { FAILED }
}
