//! `console`: an IOC's procServ console, from the laptop. socat on the
//! host joins a terminal of its own (`ssh -tt` over the master connection)
//! to procServ's socket or TCP port; Ctrl-] detaches, as in telnet.
//! `--read-only` only reads (`socat -u`): nothing typed reaches the IOC.
//! There is no `--json`: the console is the terminal's.
//!
//! procServ talks telnet to its clients and socat is none: what procServ
//! sends goes through [`TelnetFilter`], which drops its option
//! negotiation, to stdout.

use std::io::{Read, Write};
use std::process::Stdio;

use anyhow::{Context, Result};

use super::ioc::{self, Console, IocSelection, Located};
use super::sudoers;
use crate::exit::BadInput;
use crate::progress::Progress;
use crate::remote;
use crate::ssh::ConnectionLost;
use crate::target::Target;

pub struct ConsoleOptions {
    /// One IOC.
    pub selection: IocSelection,
    /// `--read-only`.
    pub read_only: bool,
}

pub fn run(opts: &ConsoleOptions, progress: &Progress) -> Result<()> {
    let (target, remote, found) = ioc::connect(&opts.selection, progress)?;
    let ioc = &found.iocs[0];
    let peer = peer(&target, ioc, found.root || found.operator, found.socat)?;
    progress.note(&how_to_leave(&target, ioc, opts.read_only));
    let mode = if opts.read_only { "read-only" } else { "interactive" };
    let mut args = vec![mode.to_owned(), peer.clone()];
    // An operator reaches a socket through the policy's socat; a TCP
    // console needs no root.
    if found.operator && matches!(ioc.console, Some(Console::Unix(_))) {
        args.extend(target.escalation.iter().cloned());
        args.push(sudoers::socat().to_owned());
    }
    let mut ssh = remote.attached(&remote::CONSOLE.cmd(&args), true);
    let mut child =
        ssh.stdin(Stdio::inherit()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().context("running ssh")?;
    let from_host = child.stdout.take().expect("stdout is piped");
    if pass_through(from_host, std::io::stdout().lock()).is_err() {
        // Nobody reads what the console says any more: leave it.
        let _ = child.kill();
    }
    let status = child.wait().context("waiting for ssh")?;
    remote.close();
    match status.code() {
        Some(0) => Ok(()),
        Some(255) => Err(ConnectionLost(format!("on `{target}`: the SSH connection was lost")).into()),
        _ => anyhow::bail!(
            "on `{target}`: the console of IOC `{}` ended with {status}: socat could not use `{peer}`, or was ended",
            ioc.ioc
        ),
    }
}

/// The console as socat names it, once the host can give it.
fn peer(target: &Target, ioc: &Located, root: bool, socat: bool) -> Result<String, BadInput> {
    if !socat {
        return Err(BadInput::new(format!("`socat` is not installed on `{target}`; the console needs it"))
            .hint("install it on the host: `apt install socat` (Debian, Ubuntu), `dnf install socat`, or from Nix, `nix profile install nixpkgs#socat` (NixOS: add `pkgs.socat` to `environment.systemPackages`)"));
    }
    if ioc.active != "active" {
        return Err(BadInput::new(format!(
            "IOC `{}` on `{target}` is not running ({}): its console is closed",
            ioc.ioc, ioc.active
        ))
        .hint(format!(
            "start it with `epnix-deploy start {target} {0}`; see why it stopped with `epnix-deploy logs {target} {0}`",
            ioc.ioc
        )));
    }
    match &ioc.console {
        Some(Console::Unix(_)) if !root => Err(BadInput::new(format!(
            "the console of IOC `{}` is a socket only root can reach on `{target}`, and the SSH user is not root",
            ioc.ioc
        ))
        .hint("log in as root (`sshUser = \"root\"`, or `root@host`)")),
        // socat's address syntax gives `,`, `:` and `!` meanings; the
        // socket path is ours and has none of them.
        Some(Console::Unix(path)) if path.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)) => {
            Ok(format!("UNIX-CONNECT:{path}"))
        }
        Some(Console::Tcp(port)) => Ok(format!("TCP4:127.0.0.1:{port}")),
        _ => Err(BadInput::new(format!(
            "`{}` on `{target}` gives procServ no console that epnix-deploy can reach",
            ioc.unit
        ))
        .hint("look at its `ExecStart=` with `systemctl cat` on the host")),
    }
}

/// What to type to leave, and which keys procServ (2.7 and 2.8) acts on:
/// its banner names `^X` and `^T`, not what they mean for a deployed IOC.
fn how_to_leave(target: &Target, ioc: &Located, read_only: bool) -> String {
    let what = format!("console of IOC `{}` (top `{}`) on `{target}`", ioc.ioc, ioc.top);
    if read_only {
        format!("{what}, read-only: what you type is not sent.\n  Ctrl-] detaches; the IOC keeps running.")
    } else {
        format!(
            "{what}:\n  Ctrl-] detaches; the IOC keeps running.\n  \
             Careful: Ctrl-X kills the IOC (procServ's kill key) and it restarts; `exit` or Ctrl-D \
             in the IOC shell ends it too; Ctrl-T changes procServ's own restart mode."
        )
    }
}

/// Copies what the host sends to `out` as it comes, without telnet's
/// negotiation. Ends at the end of the host's output, or with an error
/// when `out` is gone.
fn pass_through(mut from: impl Read, mut out: impl Write) -> std::io::Result<()> {
    let mut filter = TelnetFilter::default();
    let mut buf = [0u8; 4096];
    let mut clean = Vec::with_capacity(buf.len());
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        clean.clear();
        filter.filter(&buf[..n], &mut clean);
        out.write_all(&clean)?;
        out.flush()?;
    }
}

/// Telnet's "interpret as command" byte, and the commands it opens.
const IAC: u8 = 255;
const SB: u8 = 250;
const SE: u8 = 240;
const WILL_WONT_DO_DONT: std::ops::RangeInclusive<u8> = 251..=254;

/// Drops telnet commands from a byte stream, across reads: procServ opens
/// every connection with `IAC WILL ECHO` and `IAC DO LINEMODE`, which a
/// terminal would show as stray characters (`"` among them).
#[derive(Debug, Default)]
struct TelnetFilter {
    state: State,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Data,
    /// After `IAC`.
    Command,
    /// After `IAC WILL` (or `WONT`, `DO`, `DONT`): the option byte.
    Option,
    /// Inside `IAC SB … IAC SE`.
    Sub,
    /// After an `IAC` inside it.
    SubCommand,
}

impl TelnetFilter {
    fn filter(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &byte in input {
            self.state = match (self.state, byte) {
                (State::Data, IAC) => State::Command,
                (State::Data, _) => {
                    out.push(byte);
                    State::Data
                }
                // `IAC IAC` is the byte 255 itself.
                (State::Command, IAC) => {
                    out.push(IAC);
                    State::Data
                }
                (State::Command, b) if WILL_WONT_DO_DONT.contains(&b) => State::Option,
                (State::Command, SB) => State::Sub,
                (State::Command | State::Option, _) => State::Data,
                (State::Sub, IAC) => State::SubCommand,
                (State::SubCommand, SE) => State::Data,
                (State::Sub | State::SubCommand, _) => State::Sub,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of procServ 2.7.0's banner, as a console client gets it.
    const BANNER_END: &[u8] = b"(plus you)\r\n\xff\xfb\x01\xff\xfd\x22";

    fn filtered(chunks: &[&[u8]]) -> Vec<u8> {
        let mut filter = TelnetFilter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            filter.filter(chunk, &mut out);
        }
        out
    }

    #[test]
    fn procservs_negotiation_is_dropped_even_across_reads() {
        assert_eq!(filtered(&[BANNER_END]), b"(plus you)\r\n");
        assert_eq!(filtered(&[b"a\xff", b"\xfb", b"\x01b\xff\xfd\x22c"]), b"abc");
        assert_eq!(filtered(&[b"\xff\xff1\xff\xfa\x18\x01\xff", b"\xf0x\xff\xf1y"]), b"\xff1xy");
    }

    #[test]
    fn pass_through_copies_until_the_host_stops() {
        let mut out = Vec::new();
        pass_through(&b"dbl\r\niocDemo:version\r\n\xff\xfb\x01"[..], &mut out).unwrap();
        assert_eq!(out, b"dbl\r\niocDemo:version\r\n");
    }

    fn located(console: Option<Console>, active: &str) -> Located {
        Located {
            ioc: "iocDemo".into(),
            top: "demo".into(),
            unit: "epnix-iocDemo.service".into(),
            console,
            active: active.into(),
            enabled: true,
        }
    }

    #[test]
    fn the_console_is_reached_only_where_it_can_be() {
        let target = Target::resolve("root@h", None).unwrap();
        let unix = Some(Console::Unix("/run/epics/iocDemo/console".into()));
        assert_eq!(
            peer(&target, &located(unix.clone(), "active"), true, true).unwrap(),
            "UNIX-CONNECT:/run/epics/iocDemo/console"
        );
        assert_eq!(
            peer(&target, &located(Some(Console::Tcp(2001)), "active"), false, true).unwrap(),
            "TCP4:127.0.0.1:2001"
        );
        let err = peer(&target, &located(unix.clone(), "active"), true, false).unwrap_err().to_string();
        assert!(err.contains("`socat` is not installed on `root@h`") && err.contains("apt install socat"), "{err}");
        let err = peer(&target, &located(unix.clone(), "inactive"), true, true).unwrap_err().to_string();
        assert!(
            err.contains("is not running (inactive)") && err.contains("epnix-deploy start root@h iocDemo"),
            "{err}"
        );
        assert!(peer(&target, &located(unix, "active"), false, true).unwrap_err().to_string().contains("not root"));
        let odd = Some(Console::Unix("/run/a,b".into()));
        assert!(peer(&target, &located(odd, "active"), true, true).is_err());
        assert!(peer(&target, &located(None, "active"), true, true).is_err());
    }

    #[test]
    fn the_notes_say_how_to_leave_and_what_kills() {
        let target = Target::resolve("root@h", None).unwrap();
        let ioc = located(None, "active");
        let text = how_to_leave(&target, &ioc, false);
        assert!(text.contains("Ctrl-] detaches") && text.contains("Ctrl-X kills the IOC"), "{text}");
        let text = how_to_leave(&target, &ioc, true);
        assert!(text.contains("what you type is not sent") && text.contains("Ctrl-] detaches"), "{text}");
    }
}
