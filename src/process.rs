//! The one place that runs local programs.
//!
//! A [`Cmd`] is data first: `--dry-run` prints it, errors quote it, and only
//! [`Cmd::output`] starts it. A failed run carries the exact command line and the
//! tail of its stderr, so the user can rerun it by hand.

use std::fmt;
use std::process::{Command, Stdio};

/// How many lines of a failed program's stderr an error shows.
const STDERR_TAIL_LINES: usize = 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Cmd {
    pub fn new(program: &str) -> Cmd {
        Cmd { program: program.to_owned(), args: Vec::new(), env: Vec::new() }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Cmd {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Cmd {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// Runs the program to completion and returns its stdout. Its stderr is
    /// captured for the error message. `--verbose` shows the command first.
    pub fn output(&self) -> Result<String, CmdError> {
        crate::progress::trace("local", &self.to_string());
        let mut command = Command::new(&self.program);
        command.args(&self.args).stdin(Stdio::null());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let output = command.output().map_err(|source| CmdError::Spawn { cmd: self.to_string(), source })?;
        if !output.status.success() {
            return Err(CmdError::Failed {
                cmd: self.to_string(),
                status: output.status.to_string(),
                stderr: tail(&String::from_utf8_lossy(&output.stderr)),
            });
        }
        String::from_utf8(output.stdout).map_err(|_| CmdError::Failed {
            cmd: self.to_string(),
            status: "success".into(),
            stderr: "its output is not UTF-8".into(),
        })
    }
}

impl Cmd {
    /// Starts the program with its stdout for another program to read
    /// ([`Running::take_stdout`]). `--verbose` shows the command first.
    pub fn spawn(&self) -> Result<Running, CmdError> {
        crate::progress::trace("local", &self.to_string());
        let mut command = Command::new(&self.program);
        command.args(&self.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let child = command.spawn().map_err(|source| CmdError::Spawn { cmd: self.to_string(), source })?;
        Ok(Running { cmd: self.to_string(), child: Some(child) })
    }
}

/// A program started by [`Cmd::spawn`]. Dropped before [`Running::wait`],
/// it is ended.
pub struct Running {
    cmd: String,
    child: Option<std::process::Child>,
}

impl Running {
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// Waits for the program to end; a failure carries the tail of its stderr.
    pub fn wait(mut self) -> Result<(), CmdError> {
        let child = self.child.take().expect("waited once");
        let output = child.wait_with_output().map_err(|source| CmdError::Spawn { cmd: self.cmd.clone(), source })?;
        if output.status.success() {
            return Ok(());
        }
        Err(CmdError::Failed {
            cmd: self.cmd.clone(),
            status: output.status.to_string(),
            stderr: tail(&String::from_utf8_lossy(&output.stderr)),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Shows the command as a shell line the user can paste.
impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in &self.env {
            write!(f, "{key}={} ", shell_quote(value))?;
        }
        f.write_str(&shell_quote(&self.program))?;
        for arg in &self.args {
            write!(f, " {}", shell_quote(arg))?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub enum CmdError {
    /// The program could not be started at all (usually: not installed).
    Spawn { cmd: String, source: std::io::Error },
    /// The program ran and reported failure.
    Failed { cmd: String, status: String, stderr: String },
}

impl fmt::Display for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdError::Spawn { cmd, source } => write!(f, "could not start `{cmd}`: {source}"),
            CmdError::Failed { cmd, status, stderr } => {
                write!(f, "`{cmd}` failed ({status})")?;
                if !stderr.is_empty() {
                    write!(f, ":\n{stderr}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for CmdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CmdError::Spawn { source, .. } => Some(source),
            CmdError::Failed { .. } => None,
        }
    }
}

/// The last lines of a program's stderr, indented to sit under the message.
pub fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    lines[start..].iter().map(|line| format!("  {line}")).collect::<Vec<_>>().join("\n")
}

/// Quotes a word for a POSIX shell, leaving plain words as they are.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+%^".contains(&b));
    if plain { word.to_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("/nix/store/abc-top"), "/nix/store/abc-top");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(reboot)"), "'$(reboot)'");
    }

    #[test]
    fn display_is_a_pasteable_shell_line() {
        let cmd = Cmd::new("nix").arg("copy").arg("--to").arg("ssh://root@h").env("NIX_SSHOPTS", "-p 22");
        assert_eq!(cmd.to_string(), "NIX_SSHOPTS='-p 22' nix copy --to ssh://root@h");
    }

    #[test]
    fn failure_carries_the_command_and_stderr() {
        let err = Cmd::new("sh").args(["-c", "echo boom >&2; exit 3"]).output().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`sh -c 'echo boom >&2; exit 3'` failed"), "{text}");
        assert!(text.contains("boom"), "{text}");
    }
}
