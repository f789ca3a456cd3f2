//! The host is this machine (`--local`, `--user`, a host with
//! `local = true`): its commands run as processes here, with no SSH. The
//! other side of `ssh::Remote`'s seam, and what it asks of it: a command's
//! output, and a lock held by a process whose stdin is ours.
//!
//! Each process gets a session of its own, as a command over SSH runs on
//! the host away from the deployer's terminal: a Ctrl-C there reaches the
//! tool, which stops at a safe point, and never a switch halfway; and with
//! no terminal to ask on, an escalation command that wants a password
//! fails at once instead of waiting for one.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};

use crate::layout::{self, Manager};

/// The processes that stand for the host.
#[derive(Default)]
pub struct Local {
    /// The processes that hold deploy locks (one per top) while their
    /// stdin stays open.
    locks: Vec<Child>,
}

impl Local {
    /// Runs `argv` to its end, with `stdin` fed to it.
    pub fn output(&self, argv: &[String], stdin: Option<&str>) -> std::io::Result<Output> {
        let mut child = command(argv)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // Written beside the reading of its output, which could otherwise
        // fill its pipe and wait for us while we wait for it.
        let writer = stdin.map(|text| {
            let mut pipe = child.stdin.take().expect("stdin was piped");
            let text = text.to_owned();
            // A command that exits without reading all of it says so itself.
            std::thread::spawn(move || drop(pipe.write_all(text.as_bytes())))
        });
        let output = child.wait_with_output();
        if let Some(writer) = writer {
            let _ = writer.join();
        }
        output
    }

    /// Starts `argv` with its stdin a pipe kept open until [`Local::close`],
    /// and returns the first line it prints, and with `until` the lines
    /// after it up to that one.
    pub fn hold(&mut self, argv: &[String], until: Option<&str>) -> std::io::Result<String> {
        let mut child = command(argv).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let mut reader = BufReader::new(child.stdout.take().expect("stdout was piped"));
        let mut said = String::new();
        reader.read_line(&mut said)?;
        if let Some(end) = until.filter(|_| said.starts_with("locked")) {
            let mut line = String::new();
            while reader.read_line(&mut line)? > 0 {
                said.push_str(&line);
                if line.trim_end() == end {
                    break;
                }
                line.clear();
            }
        }
        self.locks.push(child);
        Ok(said)
    }

    /// Closes the lock holders' stdin, which ends them, and waits for them.
    pub fn close(&mut self) {
        for mut lock in std::mem::take(&mut self.locks) {
            drop(lock.stdin.take());
            let _ = lock.wait();
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.close();
    }
}

/// `argv` as a process of its own session. A user's manager is reached
/// through `XDG_RUNTIME_DIR`, which a session without `pam_systemd` (`su`,
/// cron) lacks: it is set to the layout's.
pub fn command(argv: &[String]) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let layout = layout::current();
    if layout.manager == Manager::User {
        cmd.env("XDG_RUNTIME_DIR", layout.runtime_dir.as_str());
    }
    // SAFETY: setsid(2) is async-signal-safe, and nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}
