//! `logs`: an IOC's output from the host's journal, where procServ writes
//! it (`--logfile=-`): the IOC's lines, procServ's `@@@` lines and
//! systemd's about the unit, with their times in UTC. The journal's text
//! goes to stdout as the host's `journalctl` writes it; there is no
//! `--json`. With `--follow` it streams until Ctrl-C, which ends the
//! host's `journalctl` too (`logs.sh`).

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};

use super::ioc::{self, IocSelection};
use super::sudoers;
use crate::activation;
use crate::exit::{BadInput, Exit, Failure};
use crate::progress::Progress;
use crate::remote;
use crate::ssh::ConnectionLost;

/// The lines shown without `-n` or `--since`.
pub const DEFAULT_LINES: u32 = 50;

pub struct LogsOptions {
    /// One IOC.
    pub selection: IocSelection,
    /// `-n`.
    pub lines: Option<u32>,
    /// `--follow`.
    pub follow: bool,
    /// `--since`, in journalctl's words.
    pub since: Option<String>,
}

/// `logs.sh`'s exit code when journalctl cannot read `--since`.
const BAD_SINCE: i32 = 64;

pub fn run(opts: &LogsOptions, progress: &Progress) -> Result<()> {
    let (target, remote, found) = ioc::connect(&opts.selection, progress)?;
    let ioc = &found.iocs[0];
    // An operator runs journalctl itself, as the operators' policy names
    // it; following, on a terminal whose hangup ends it with the
    // connection, as `logs.sh` does for everyone else.
    let (cmd, tty) = if found.operator {
        (operator_journal(&ioc.unit, opts)?, opts.follow)
    } else {
        (remote::LOGS.cmd(&script_args(&ioc.unit, opts)), false)
    };
    // stdin stays open while the tool runs: the host stops following when
    // it closes.
    let mut ssh = remote.attached(&cmd, tty);
    let mut child =
        ssh.stdin(Stdio::piped()).stdout(Stdio::inherit()).stderr(Stdio::inherit()).spawn().context("running ssh")?;
    // Ctrl-C reaches ssh as well (one process group), and the handler in
    // `cli` notes it here; a tool interrupted alone ends its ssh itself.
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if activation::INTERRUPTED.load(Ordering::SeqCst) {
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(child.stdin.take());
    remote.close();
    if activation::INTERRUPTED.load(Ordering::SeqCst) {
        // Ctrl-C is how a follow ends.
        return if opts.follow { Ok(()) } else { Err(Failure::new(Exit::Interrupted, "interrupted").into()) };
    }
    match status.code() {
        Some(0) => Ok(()),
        Some(BAD_SINCE) => Err(BadInput::new(format!(
            "journalctl on `{target}` cannot read `--since {}`",
            opts.since.as_deref().unwrap_or_default()
        ))
        .hint("give a time as journalctl takes it: `2026-12-03 10:00`, `2026-12-03`, `yesterday`, `today`, `-1h`, `2 hours ago`")
        .into()),
        Some(255) => Err(ConnectionLost(format!("on `{target}`: the SSH connection was lost reading the journal")).into()),
        _ => anyhow::bail!("on `{target}`: reading the journal of `{}` failed ({status})", ioc.unit),
    }
}

/// The policy's `journalctl` for an operator's login, with a `--since`
/// the policy lets through.
fn operator_journal(unit: &str, opts: &LogsOptions) -> Result<crate::ssh::RemoteCmd, BadInput> {
    if let Some(since) = opts.since.as_deref().filter(|s| !sudoers::since_allowed(s)) {
        return Err(BadInput::new(format!("the operators' policy does not let `--since {since}` through")).hint(
            "give a time of letters, digits and `:.+-` in words, e.g. `2026-12-03 10:00`, `-1h`, `2 hours ago`",
        ));
    }
    let lines = opts.lines.or(opts.since.is_none().then_some(DEFAULT_LINES));
    Ok(sudoers::journal(unit, lines, opts.since.as_deref(), opts.follow))
}

/// `logs.sh`'s arguments: the unit, whether to follow, journalctl's options.
fn script_args(unit: &str, opts: &LogsOptions) -> Vec<String> {
    let mut args = vec![unit.to_owned(), if opts.follow { "yes" } else { "no" }.to_owned()];
    // `--since` alone shows everything since then.
    match (opts.lines, &opts.since) {
        (Some(n), _) => args.push(format!("--lines={n}")),
        (None, None) => args.push(format!("--lines={DEFAULT_LINES}")),
        (None, Some(_)) => {}
    }
    if let Some(since) = &opts.since {
        args.push(format!("--since={since}"));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(lines: Option<u32>, since: Option<&str>, follow: bool) -> LogsOptions {
        LogsOptions {
            selection: IocSelection {
                on: crate::target::HostSelection {
                    flake: crate::nix::Flake::new("."),
                    host: "root@h".into(),
                    ssh_opts: Vec::new(),
                    local: None,
                },
                top: None,
                iocs: vec!["a".into()],
            },
            lines,
            follow,
            since: since.map(str::to_owned),
        }
    }

    #[test]
    fn lines_default_unless_since_says_where_to_start() {
        assert_eq!(script_args("u", &options(None, None, false)), ["u", "no", "--lines=50"]);
        assert_eq!(script_args("u", &options(Some(5), None, true)), ["u", "yes", "--lines=5"]);
        assert_eq!(script_args("u", &options(None, Some("-1h"), false)), ["u", "no", "--since=-1h"]);
        assert_eq!(
            script_args("u", &options(Some(3), Some("today"), false)),
            ["u", "no", "--lines=3", "--since=today"]
        );
    }
}
