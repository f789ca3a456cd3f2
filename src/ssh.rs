//! The one place that talks to hosts: [`Remote`], over SSH, or for this
//! machine through `local`.
//!
//! Each host gets one SSH master connection (the `openssh` crate); every remote
//! command and `nix copy` ride it, so the user authenticates once. Remote
//! commands are argv lists: `openssh` quotes each word for the remote shell, so
//! a value from the configuration can never become shell syntax.
//!
//! A failed login is told apart by what ssh printed ([`classify_login`]): a
//! refused key, an unknown or changed host key, no answer. The error names
//! the host, the `ssh` command line and ssh's last lines, and ends with a
//! hint for that case.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result};
use std::num::NonZeroUsize;
use std::sync::Arc;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::runtime::Runtime;

use crate::exit::{BadInput, Exit, Failure};
use crate::layout::{self, Manager};
use crate::local::Local;
use crate::process::{shell_quote, tail};
use crate::remote;
use crate::target::Target;

/// A command to run on a host, as data: `--dry-run` prints it, errors quote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteCmd {
    pub argv: Vec<String>,
    /// Text fed to the command's stdin, e.g. a unit file being installed.
    pub stdin: Option<String>,
    /// For a host-side script: its name, shown instead of its whole text.
    pub script: Option<&'static str>,
    /// The words before `argv` that run it as root, put there by the
    /// [`Remote`] that runs it (`privilegeEscalationCommand`).
    pub escalation: Vec<String>,
    /// An exact command of the operators' `sudoers` policy
    /// (`commands::sudoers`): it runs through the escalation also for an
    /// operator's login, whose other commands run as that user.
    pub for_operators: bool,
    /// For host-side scripts run in one call ([`remote::steps`]): each of
    /// them, for what `--verbose` and errors show.
    pub parts: Vec<RemoteCmd>,
}

impl RemoteCmd {
    pub fn new<I, S>(argv: I) -> RemoteCmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RemoteCmd {
            argv: argv.into_iter().map(Into::into).collect(),
            stdin: None,
            script: None,
            escalation: Vec::new(),
            for_operators: false,
            parts: Vec::new(),
        }
    }

    /// `systemctl ARGS` for this run's manager: the user's with `--user`.
    pub fn systemctl<S: Into<String>>(args: impl IntoIterator<Item = S>) -> RemoteCmd {
        RemoteCmd::new(manager_program("systemctl").into_iter().chain(args.into_iter().map(Into::into)))
    }

    /// `journalctl ARGS` for this run's manager's journal.
    pub fn journalctl<S: Into<String>>(args: impl IntoIterator<Item = S>) -> RemoteCmd {
        RemoteCmd::new(manager_program("journalctl").into_iter().chain(args.into_iter().map(Into::into)))
    }

    /// Runs a fixed `sh` script with positional arguments. The script is a
    /// constant of ours; only `args` vary, and they arrive as `$1`, `$2`, ...
    pub fn script(name: &'static str, script: &str, args: &[&str]) -> RemoteCmd {
        let mut argv = vec!["sh".to_owned(), "-c".to_owned(), script.to_owned(), "epnix-deploy".to_owned()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        RemoteCmd {
            argv,
            stdin: None,
            script: Some(name),
            escalation: Vec::new(),
            for_operators: false,
            parts: Vec::new(),
        }
    }

    pub fn with_stdin(mut self, stdin: String) -> RemoteCmd {
        self.stdin = Some(stdin);
        self
    }

    /// Marks a command the operators' policy allows, word for word.
    pub fn for_operators(mut self) -> RemoteCmd {
        self.for_operators = true;
        self
    }
}

/// `program`, with `--user` when this run's IOCs are the user's own.
fn manager_program(program: &str) -> Vec<String> {
    let mut argv = vec![program.to_owned()];
    if layout::current().manager == Manager::User {
        argv.push("--user".to_owned());
    }
    argv
}

impl RemoteCmd {
    /// What runs: the escalation's words, then the command's.
    pub fn full_argv(&self) -> Vec<String> {
        self.escalation.iter().chain(&self.argv).cloned().collect()
    }

    /// The command as one line for the remote shell, each word quoted, for
    /// programs that take it that way (`ssh HOST LINE`). Without stdin.
    pub fn shell_line(&self) -> String {
        self.full_argv().iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
    }

    /// The command as `--verbose` shows it: a script by its name, as in
    /// errors, and a word of several lines (a script's text handed to
    /// another, a unit file) or of more than [`TRACE_WORD_MAX`] bytes by its
    /// size only.
    /// What `--verbose` shows of the command: its [`RemoteCmd::trace_line`],
    /// or that of each of its parts.
    pub fn trace_lines(&self) -> Vec<String> {
        match self.parts.is_empty() {
            true => vec![self.trace_line()],
            false => self.escalated_parts().map(|p| p.trace_line()).collect(),
        }
    }

    /// The parts, each run as the whole command is (its escalation).
    fn escalated_parts(&self) -> impl Iterator<Item = RemoteCmd> + '_ {
        self.parts.iter().map(|part| RemoteCmd { escalation: self.escalation.clone(), ..part.clone() })
    }

    pub fn trace_line(&self) -> String {
        let words = match self.script {
            Some(_) => &self.argv[4..],
            None => &self.argv[..],
        };
        let mut line: Vec<String> = self.escalation.iter().map(|w| shell_quote(w)).collect();
        if let Some(name) = self.script {
            line.extend(["sh".to_owned(), format!("{name}.sh")]);
        }
        line.extend(words.iter().map(|w| match w.lines().count() {
            n if n > 1 => format!("<{n} lines>"),
            _ if w.len() > TRACE_WORD_MAX => format!("<{} bytes>", w.len()),
            _ => shell_quote(w),
        }));
        if let Some(stdin) = &self.stdin {
            line.push(format!("<<< ({} bytes)", stdin.len()));
        }
        line.join(" ")
    }
}

/// The longest word `--verbose` shows whole.
const TRACE_WORD_MAX: usize = 200;

impl fmt::Display for RemoteCmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.parts.is_empty() {
            let parts: Vec<String> = self.escalated_parts().map(|p| p.to_string()).collect();
            return f.write_str(&parts.join(" && "));
        }
        for word in &self.escalation {
            write!(f, "{} ", shell_quote(word))?;
        }
        match self.script {
            // The script's text is ours and long: its name says which it is.
            Some(name) => {
                let args: Vec<String> = self.argv[4..].iter().map(|w| shell_quote(w)).collect();
                write!(f, "sh {name}.sh {}", args.join(" "))?;
            }
            None => f.write_str(&self.argv.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" "))?,
        }
        if let Some(stdin) = &self.stdin {
            write!(f, " <<< ({} bytes)", stdin.len())?;
        }
        Ok(())
    }
}

/// How `sshOpts` map onto the SSH master connection.
#[derive(Debug, Default)]
struct SshOptions {
    keyfile: Option<String>,
    jump_hosts: Vec<String>,
    config_file: Option<String>,
    known_hosts_file: Option<String>,
    strict_host_key_checking: Option<KnownHosts>,
    port: Option<u16>,
    user: Option<String>,
    /// Other `-o Key=Value` options, written to a generated ssh config.
    extra: Vec<(String, String)>,
}

/// Reads `sshOpts` the way `ssh` reads its command line, for the options a
/// deploy can pass on. Anything else is refused rather than silently dropped.
fn parse_ssh_opts(opts: &[String]) -> Result<SshOptions, BadInput> {
    let mut parsed = SshOptions::default();
    let mut words = opts.iter();
    while let Some(word) = words.next() {
        let (flag, inline) = match word.as_str() {
            w if w.len() > 2 && w.starts_with('-') && !w.starts_with("--") => (&w[..2], Some(w[2..].to_owned())),
            w => (w, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| words.next().cloned())
                .ok_or_else(|| BadInput::new(format!("sshOpts: `{flag}` needs a value")))
        };
        match flag {
            "-i" => parsed.keyfile = Some(value()?),
            "-J" => parsed.jump_hosts.push(value()?),
            "-F" => parsed.config_file = Some(value()?),
            "-l" => parsed.user = Some(value()?),
            "-p" => {
                let v = value()?;
                parsed.port =
                    Some(v.parse().map_err(|_| BadInput::new(format!("sshOpts: `-p {v}` is not a port number")))?);
            }
            "-o" => {
                let v = value()?;
                let (key, val) = v
                    .split_once(['=', ' '])
                    .map(|(k, v)| (k.trim(), v.trim()))
                    .ok_or_else(|| BadInput::new(format!("sshOpts: `-o {v}` is not of the form `Key=Value`")))?;
                match key.to_ascii_lowercase().as_str() {
                    "stricthostkeychecking" => {
                        parsed.strict_host_key_checking = Some(match val.to_ascii_lowercase().as_str() {
                            "yes" | "ask" => KnownHosts::Strict,
                            "accept-new" => KnownHosts::Add,
                            "no" | "off" => KnownHosts::Accept,
                            _ => {
                                return Err(BadInput::new(format!(
                                    "sshOpts: `StrictHostKeyChecking={val}` is not a value ssh knows"
                                )));
                            }
                        })
                    }
                    "userknownhostsfile" => parsed.known_hosts_file = Some(val.to_owned()),
                    _ => parsed.extra.push((key.to_owned(), val.to_owned())),
                }
            }
            _ => {
                return Err(BadInput::new(format!("sshOpts: `{word}` is not supported")).hint(
                    "use `-o Key=Value`, `-i`, `-J`, `-F`, `-l` or `-p`, or put the setting in `~/.ssh/config`",
                ));
            }
        }
    }
    Ok(parsed)
}

/// The connection to a host is gone (ssh exits 255 for that), as opposed to
/// a remote command that ran and failed. After a switch this is the case
/// that leaves the outcome to the host's armed rollback.
#[derive(Debug)]
pub struct ConnectionLost(pub String);

impl fmt::Display for ConnectionLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectionLost {}

/// Whether `err` means the connection dropped.
pub fn is_connection_lost(err: &anyhow::Error) -> bool {
    // `downcast_ref` also finds it where it was attached as context.
    err.downcast_ref::<ConnectionLost>().is_some()
}

/// What [`Remote::hold_lock`] found.
pub enum Lock {
    /// Taken; with the holder line of a deploy that died holding it, and
    /// what the lock script printed after taking it, up to its end line.
    Held { stale: Option<String>, report: String },
    /// Another deploy holds it; its holder line says who, since when.
    Busy(String),
    /// The login user (named) is not root, and nothing made it root:
    /// nothing was written.
    NotRoot(String),
    /// The host has another name (given) than the configured one: nothing
    /// was written.
    WrongHost(String),
}

/// The host a command acts on, reached: over an SSH master connection, or
/// (`Target::local`) this machine, through `local`'s processes. Everything
/// above this seam runs `RemoteCmd`s the same way on either.
///
/// A login that is not root gets root for every command through the
/// host's `privilegeEscalationCommand` (`sudo -n --` by default), which
/// [`Remote::connect`] checks before it returns: a command is its words,
/// then the command's own argv, so a `sudoers` rule can name an exact
/// command (`systemctl restart epnix-x.service`) as well as allow all.
pub struct Remote {
    link: Link,
    target: Target,
    /// The words before every command: the escalation, or none when the
    /// login is root or the IOCs are the user's own.
    escalation: Vec<String>,
    /// The login's name when it is an operator's: not root, and refused by
    /// the escalation but for the operators' policy's commands.
    operator: Option<String>,
    /// How long the login took: what another login to the host takes.
    login_took: Duration,
}

enum Link {
    // One per host and run: its size is of no account.
    Ssh(Box<Ssh>),
    Local(Local),
}

/// An open master connection.
struct Ssh {
    runtime: Runtime,
    session: Option<Arc<Session>>,
    /// The remote processes that hold deploy locks (one per top; `start`
    /// and `stop` may act on IOCs of several): each lives as long as its
    /// stdin stays open, so the locks go with this connection, even when
    /// the deployer is killed.
    locks: Vec<openssh::Child<Arc<Session>>>,
    /// Holds the generated ssh config (when `sshOpts` needs one) and the
    /// control socket directory for the life of the connection.
    _dir: tempfile::TempDir,
}

impl Remote {
    /// Opens the master connection (the login), or for this machine,
    /// nothing; then finds out whether the login is root, and if not,
    /// whether the escalation makes it so. A failed login is
    /// [`Exit::Unreachable`], with what ssh said and a hint; an escalation
    /// that does not work (sudo wants a password) is [`BadInput`]: both
    /// are true of a first connection (nothing was changed yet). A caller
    /// that connects again after a change classifies the failure itself,
    /// as the confirmation of a switch does.
    pub fn connect(target: &Target) -> Result<Remote> {
        Remote::open(target, false)
    }

    /// [`Remote::connect`] for the commands an operator may run (`status`,
    /// `logs`, `console`, `start`, `stop`, `restart`): a login that is not
    /// root and that the escalation refuses is taken as an operator's
    /// ([`Remote::operator`]), whose commands run as itself but for the
    /// exact commands of the operators' policy.
    pub fn connect_operating(target: &Target) -> Result<Remote> {
        Remote::open(target, true)
    }

    fn open(target: &Target, operating: bool) -> Result<Remote> {
        let started = std::time::Instant::now();
        let link = match target.local {
            Some(_) => Link::Local(Local::default()),
            None => Link::Ssh(Box::new(Ssh::connect(target)?)),
        };
        let login_took = started.elapsed();
        let mut remote = Remote { link, target: target.clone(), escalation: Vec::new(), operator: None, login_took };
        // A root login over SSH needs no escalation: asking would cost a
        // round trip on every connection (the lock still checks the uid).
        let root_login = target.local.is_none() && target.user.as_deref() == Some("root");
        if root_login && layout::current().manager == Manager::System {
            return Ok(remote);
        }
        match remote.access(operating) {
            Ok(Access::Root(escalation)) => {
                remote.escalation = escalation;
                Ok(remote)
            }
            Ok(Access::Operator(user)) => {
                remote.operator = Some(user);
                Ok(remote)
            }
            Err(err) => {
                remote.close();
                Err(err)
            }
        }
    }

    /// Who the login is, and what makes it root: the words to put before
    /// every command; or, when `operating`, an operator's login.
    fn access(&self, operating: bool) -> Result<Access> {
        let manager = layout::current().manager;
        let words: &[String] = match manager {
            Manager::System => &self.target.escalation,
            Manager::User => &[],
        };
        let said = self.run(&remote::IDENTITY.cmd(words))?;
        let identity = parse_identity(&said)
            .with_context(|| format!("on `{}`: `{}` printed {said:?}", self.target, remote::IDENTITY.name))?;
        if operating && manager == Manager::System && matches!(identity.root, Some(Err(_))) {
            return Ok(Access::Operator(identity.user));
        }
        Ok(Access::Root(escalation_for(&self.target, manager, identity)?))
    }

    /// `cmd` as it runs: after the escalation, if any. An operator's login
    /// escalates only the policy's commands.
    fn escalated(&self, cmd: &RemoteCmd) -> RemoteCmd {
        let escalation = match &self.operator {
            Some(_) if cmd.for_operators => self.target.escalation.clone(),
            _ => self.escalation.clone(),
        };
        RemoteCmd { escalation, ..cmd.clone() }
    }

    /// How long the login took.
    pub fn login_took(&self) -> Duration {
        self.login_took
    }

    /// Shows `cmd` under `--verbose`, each of its parts on a line of its own.
    fn trace(&self, cmd: &RemoteCmd) {
        for line in cmd.trace_lines() {
            crate::progress::trace(&self.target.label, &line);
        }
    }

    /// The login's name when it is an operator's ([`Remote::connect_operating`]).
    pub fn operator(&self) -> Option<&str> {
        self.operator.as_deref()
    }

    /// Takes a lock on the host with `cmd`, a script that prints `locked`
    /// and then holds the lock until its stdin closes, or prints `busy` and
    /// a holder line and exits.
    pub fn hold_lock(&mut self, cmd: &RemoteCmd, until: Option<&str>) -> Result<Lock> {
        let cmd = self.escalated(cmd);
        self.trace(&cmd);
        let argv = cmd.full_argv();
        let said = match &mut self.link {
            Link::Ssh(ssh) => ssh.hold(&argv, until).map_err(|err| lost(&self.target, err))?,
            Link::Local(local) => local.hold(&argv, until).with_context(|| format!("could not run `{cmd}`"))?,
        };
        let (line, report) = said.split_once('\n').unwrap_or((&said, ""));
        match line.split_once(' ').unwrap_or((line, "")) {
            ("locked", stale) => {
                if until.is_some_and(|end| !report.ends_with(&format!("{end}\n"))) {
                    return Err(ConnectionLost(format!(
                        "on `{}`: the connection ended while reading the host after taking the lock",
                        self.target
                    ))
                    .into());
                }
                let stale = Some(stale.to_owned()).filter(|s| !s.is_empty());
                Ok(Lock::Held { stale, report: report.to_owned() })
            }
            ("busy", holder) => Ok(Lock::Busy(holder.to_owned())),
            ("notroot", user) => Ok(Lock::NotRoot(user.to_owned())),
            ("wronghost", name) => Ok(Lock::WrongHost(name.to_owned())),
            _ => Err(ConnectionLost(format!("on `{}`: taking the deploy lock failed", self.target)).into()),
        }
    }

    /// Runs `cmd` and returns its stdout; a non-zero exit is an error that
    /// carries the command, the status and the tail of stderr.
    pub fn run(&self, cmd: &RemoteCmd) -> Result<String> {
        let output = self.output(cmd)?;
        // ssh reserves 255 for its own failures: the connection is gone.
        if matches!(self.link, Link::Ssh(_)) && output.status.code() == Some(255) {
            return Err(ConnectionLost(format!(
                "on `{}`: the SSH connection was lost running `{}`",
                self.target,
                self.escalated(cmd)
            ))
            .into());
        }
        if !output.status.success() {
            anyhow::bail!(
                "on `{}`: `{}` failed ({}):\n{}",
                self.target,
                self.escalated(cmd),
                output.status,
                tail(&String::from_utf8_lossy(&output.stderr))
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `cmd` and returns whatever it did, for callers that read the status.
    pub fn output(&self, cmd: &RemoteCmd) -> Result<Output> {
        let cmd = self.escalated(cmd);
        self.trace(&cmd);
        let argv = cmd.full_argv();
        match &self.link {
            Link::Ssh(ssh) => ssh
                .output(&argv, cmd.stdin.as_deref())
                .map_err(|err| lost(&self.target, err).context(format!("could not run `{cmd}`"))),
            Link::Local(local) => {
                local.output(&argv, cmd.stdin.as_deref()).with_context(|| format!("could not run `{cmd}`"))
            }
        }
    }

    /// `cmd`, ready to run from another thread, needing nothing of this
    /// `Remote`: over SSH, a new channel of the master run by the `ssh`
    /// program itself; here, a process. For the heartbeats and the
    /// confirmation made ready ahead. `--verbose` shows it once, here.
    pub fn detached(&self, cmd: &RemoteCmd) -> Detached {
        let cmd = self.escalated(cmd);
        self.trace(&cmd);
        let argv = match &self.link {
            Link::Ssh(ssh) => {
                let mut argv: Vec<String> = vec!["ssh".into(), "-S".into()];
                argv.push(ssh.session().control_socket().to_string_lossy().into_owned());
                argv.extend(["-o", "ControlMaster=no", "-o", "BatchMode=yes", "-T", "none"].map(str::to_owned));
                argv.push(cmd.shell_line());
                argv
            }
            Link::Local(_) => cmd.full_argv(),
        };
        Detached { argv }
    }

    /// Starts `cmd` and hands over its stdout line by line as it comes, for
    /// a host-side command that streams events. Dropping the [`Lines`]
    /// closes the command's stdout (over SSH, the channel): its next write
    /// fails, and it ends.
    pub fn lines(&self, cmd: &RemoteCmd) -> Result<Lines<'_>> {
        self.lines_fed(cmd, None)
    }

    /// [`Remote::lines`], with `stdin` (another program's output) as the
    /// command's stdin.
    pub fn lines_fed(&self, cmd: &RemoteCmd, stdin: Option<std::os::fd::OwnedFd>) -> Result<Lines<'_>> {
        let cmd = self.escalated(cmd);
        self.trace(&cmd);
        let argv = cmd.full_argv();
        let from = match &self.link {
            Link::Ssh(ssh) => {
                let session = Arc::clone(ssh.session());
                let child = ssh.runtime.block_on(async {
                    let mut command = session.arc_command(argv[0].as_str());
                    let stdin = stdin.map_or_else(Stdio::null, Stdio::from);
                    command.args(&argv[1..]).stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::null());
                    command.spawn().await
                });
                let mut child =
                    child.map_err(|err| lost(&self.target, err).context(format!("could not run `{cmd}`")))?;
                let stdout = child.stdout().take().expect("stdout was piped");
                LinesFrom::Ssh { ssh, _child: Box::new(child), lines: BufReader::new(stdout).lines() }
            }
            Link::Local(_) => {
                let stdin = stdin.map_or_else(std::process::Stdio::null, std::process::Stdio::from);
                let mut child = crate::local::command(&argv)
                    .stdin(stdin)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .with_context(|| format!("could not run `{cmd}`"))?;
                let stdout = child.stdout.take().expect("stdout was piped");
                LinesFrom::Local { child, lines: std::io::BufRead::lines(std::io::BufReader::new(stdout)) }
            }
        };
        Ok(Lines { target: &self.target, from })
    }

    /// The command that runs `cmd` on the host with the caller's stdin and
    /// stdout, for one that streams or talks to the user (`logs`,
    /// `console`): over SSH, `ssh` on the master connection, with `tty` a
    /// terminal on the host (`ssh -tt`), which ssh puts in raw mode when
    /// stdin is one here, and which the host hangs up when the connection
    /// ends, ending the command too; here, the process itself.
    pub fn attached(&self, cmd: &RemoteCmd, tty: bool) -> std::process::Command {
        let cmd = self.escalated(cmd);
        self.trace(&cmd);
        match &self.link {
            Link::Ssh(ssh) => {
                let mut command = std::process::Command::new("ssh");
                command.arg("-S").arg(ssh.session().control_socket());
                // `LogLevel=ERROR`: no "Shared connection to … closed." at the end.
                command.args(["-o", "ControlMaster=no", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]);
                command.args([if tty { "-tt" } else { "-T" }, "none", &cmd.shell_line()]);
                command
            }
            Link::Local(_) => crate::local::command(&cmd.full_argv()),
        }
    }

    /// The master's control socket, for programs that should ride the same
    /// connection (`nix copy` through `NIX_SSHOPTS`); none for this machine.
    pub fn control_socket(&self) -> Option<&Path> {
        match &self.link {
            Link::Ssh(ssh) => Some(ssh.session().control_socket()),
            Link::Local(_) => None,
        }
    }

    /// The words that make commands root on the host; none when the login
    /// is root.
    pub fn escalation(&self) -> &[String] {
        &self.escalation
    }

    /// Releases the lock, if held, and closes the master connection.
    pub fn close(mut self) {
        match &mut self.link {
            Link::Ssh(ssh) => ssh.close(),
            Link::Local(local) => local.close(),
        }
    }
}

impl Ssh {
    fn connect(target: &Target) -> Result<Ssh> {
        let opts = parse_ssh_opts(&target.ssh_opts)?;
        // The control socket must fit in a UNIX socket address: keep the
        // directory short (`TMPDIR`, usually /tmp).
        let dir = tempfile::Builder::new()
            .prefix("epnix-deploy-")
            .tempdir_in(std::env::temp_dir())
            .context("creating a control directory")?;
        let mut builder = SessionBuilder::default();
        builder
            .control_directory(dir.path())
            .known_hosts_check(opts.strict_host_key_checking.clone().unwrap_or(KnownHosts::Strict))
            .connect_timeout(Duration::from_secs(CONNECT_TIMEOUT_SECS))
            .server_alive_interval(Duration::from_secs(10))
            // A master left behind by a killed deployer ends by itself.
            .control_persist(ControlPersist::IdleFor(NonZeroUsize::new(60).expect("non-zero")));
        if let Some(user) = target.user.clone().or_else(|| opts.user.clone()) {
            builder.user(user);
        }
        if let Some(port) = target.port.or(opts.port) {
            builder.port(port);
        }
        if let Some(key) = &opts.keyfile {
            builder.keyfile(key);
        }
        if let Some(file) = &opts.known_hosts_file {
            builder.user_known_hosts_file(file);
        }
        if !opts.jump_hosts.is_empty() {
            builder.jump_hosts(&opts.jump_hosts);
        }
        if !opts.extra.is_empty() {
            builder.config_file(write_ssh_config(dir.path(), &opts)?);
        } else if let Some(file) = &opts.config_file {
            builder.config_file(file);
        }

        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
        let login = Login::new(target, &opts);
        crate::progress::trace(&target.label, &login.command_line());
        let session = runtime.block_on(builder.connect(target.destination())).map_err(|err| {
            let said = match &err {
                // `openssh` hands over what ssh printed, as this error's text.
                openssh::Error::Connect(io) if io.raw_os_error().is_none() => io.to_string(),
                other => {
                    format!("{other}: {}", std::error::Error::source(other).map(|s| s.to_string()).unwrap_or_default())
                }
            };
            anyhow::Error::new(Failure::new(Exit::Unreachable, login.failed(&said)))
        })?;
        Ok(Ssh { runtime, session: Some(Arc::new(session)), locks: Vec::new(), _dir: dir })
    }

    fn session(&self) -> &Arc<Session> {
        self.session.as_ref().expect("the session lives until close")
    }

    /// Starts `argv` with its stdin a channel kept open until
    /// [`Ssh::close`], and returns the first line it prints, and with
    /// `until` the lines after it up to that one.
    fn hold(&mut self, argv: &[String], until: Option<&str>) -> Result<String, openssh::Error> {
        let session = Arc::clone(self.session());
        let (said, child) = self.runtime.block_on(async {
            let mut command = session.arc_command(argv[0].as_str());
            command.args(&argv[1..]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
            let mut child = command.spawn().await?;
            let stdout = child.stdout().take().expect("stdout was piped");
            let mut reader = BufReader::new(stdout);
            let mut said = String::new();
            reader.read_line(&mut said).await.map_err(openssh::Error::ChildIo)?;
            if let Some(end) = until.filter(|_| said.starts_with("locked")) {
                let mut line = String::new();
                while reader.read_line(&mut line).await.map_err(openssh::Error::ChildIo)? > 0 {
                    said.push_str(&line);
                    if line.trim_end() == end {
                        break;
                    }
                    line.clear();
                }
            }
            Ok::<_, openssh::Error>((said, child))
        })?;
        self.locks.push(child);
        Ok(said)
    }

    fn output(&self, argv: &[String], stdin: Option<&str>) -> Result<Output, openssh::Error> {
        let session = self.session();
        self.runtime.block_on(async {
            let mut command = session.command(&argv[0]);
            command.args(&argv[1..]).stdout(Stdio::piped()).stderr(Stdio::piped());
            command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
            let mut child = command.spawn().await?;
            if let Some(text) = stdin {
                let mut pipe = child.stdin().take().expect("stdin was piped");
                pipe.write_all(text.as_bytes()).await.map_err(openssh::Error::ChildIo)?;
                pipe.shutdown().await.map_err(openssh::Error::ChildIo)?;
            }
            child.wait_with_output().await
        })
    }

    fn close(&mut self) {
        for mut lock in std::mem::take(&mut self.locks) {
            // Closing its stdin ends the lock holder; a lost connection has
            // ended it already.
            drop(lock.stdin().take());
            let _ = self.runtime.block_on(lock.wait());
        }
        if let Some(session) = self.session.take().and_then(|s| Arc::try_unwrap(s).ok()) {
            // A master that is already gone has nothing left to close.
            let _ = self.runtime.block_on(session.close());
        }
    }
}

/// A login made ahead, on a thread of its own, while other work goes on
/// (the build, the health checks), with what [`LoginAhead::start_then`]
/// starts on it there.
pub struct LoginAhead<T = ()>(Option<std::thread::JoinHandle<Result<(Remote, T)>>>);

impl LoginAhead {
    pub fn start(target: &Target) -> LoginAhead {
        LoginAhead::start_then(target, |_| Ok(()))
    }

    /// The connection, once the login is done.
    pub fn finish(self) -> Result<Remote> {
        self.finish_then().map(|(remote, ())| remote)
    }
}

impl<T: Send + 'static> LoginAhead<T> {
    /// The login, and `then` run on it on the same thread as soon as it is
    /// made. A login whose `then` fails is closed.
    pub fn start_then(target: &Target, then: impl FnOnce(&Remote) -> Result<T> + Send + 'static) -> LoginAhead<T> {
        let target = target.clone();
        LoginAhead(Some(std::thread::spawn(move || {
            let remote = Remote::connect(&target)?;
            match then(&remote) {
                Ok(started) => Ok((remote, started)),
                Err(err) => {
                    remote.close();
                    Err(err)
                }
            }
        })))
    }

    /// The connection and what `then` started, once both are done.
    pub fn finish_then(mut self) -> Result<(Remote, T)> {
        let handle = self.0.take().expect("finished once");
        handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the login thread panicked")))
    }
}

impl<T> Drop for LoginAhead<T> {
    /// A login that is not used (the run stopped before it needed it) is
    /// waited for and closed: left running, it would outlive the process
    /// and leave its control directory behind. ssh's connect timeout
    /// bounds the wait. What was started on it ends first.
    fn drop(&mut self) {
        if let Some(Ok(Ok((remote, started)))) = self.0.take().map(|h| h.join()) {
            drop(started);
            remote.close();
        }
    }
}

/// The output of a command started by [`Remote::lines`].
pub struct Lines<'a> {
    target: &'a Target,
    from: LinesFrom<'a>,
}

enum LinesFrom<'a> {
    Ssh {
        ssh: &'a Ssh,
        /// Kept for as long as the lines are read: dropping it ends the channel.
        _child: Box<openssh::Child<Arc<Session>>>,
        lines: tokio::io::Lines<BufReader<openssh::ChildStdout>>,
    },
    Local {
        child: std::process::Child,
        lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    },
}

impl Lines<'_> {
    /// The next line; `None` once the command has ended.
    pub fn next_line(&mut self) -> Result<Option<String>> {
        match &mut self.from {
            LinesFrom::Ssh { ssh, lines, .. } => {
                ssh.runtime.block_on(lines.next_line()).map_err(|err| lost(self.target, openssh::Error::ChildIo(err)))
            }
            LinesFrom::Local { lines, .. } => lines.next().transpose().context("reading a command's output"),
        }
    }
}

impl Drop for Lines<'_> {
    fn drop(&mut self) {
        if let LinesFrom::Local { child, .. } = &mut self.from {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a login may do on the host.
enum Access {
    /// Everything, as root: with these words before each command.
    Root(Vec<String>),
    /// Only the operators' policy (named user).
    Operator(String),
}

/// A command that runs on the host from any thread ([`Remote::detached`]).
#[derive(Clone, Debug)]
pub struct Detached {
    argv: Vec<String>,
}

impl Detached {
    /// Starts it with stdin, stdout and stderr piped, for a command that
    /// waits for a word from the deployer.
    pub fn spawn(&self) -> std::io::Result<std::process::Child> {
        crate::local::command(&self.argv)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
    }

    /// Runs it; ended (and an error) after `timeout`. Not traced: the
    /// heartbeats that use it come every few seconds, and it holds a
    /// script's whole text.
    pub fn run(&self, timeout: Duration) -> std::io::Result<Output> {
        let mut child = crate::local::command(&self.argv)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let deadline = std::time::Instant::now() + timeout;
        while child.try_wait()?.is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output()
    }
}

/// What makes the login root, from what it said of itself: nothing (it is
/// root, or the IOCs are its own), or the target's escalation, once it has
/// shown that it works. Anything else is refused before anything changes.
fn escalation_for(target: &Target, manager: Manager, identity: Identity) -> Result<Vec<String>, BadInput> {
    let user = &identity.user;
    let place = if target.local.is_some() { "local" } else { "SSH" };
    let words = &target.escalation;
    let command = words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ");
    match (manager, identity.root) {
        (Manager::User, _) if identity.uid == 0 => {
            Err(BadInput::new("`--user` runs the IOCs under your own systemd manager, and you are root")
                .hint("deploy system units with `--local`, or run `--user` as the user whose IOCs these are"))
        }
        (Manager::User, _) if identity.no_manager => Err(BadInput::new(format!(
            "the systemd manager of `{user}` does not answer (`systemctl --user`); nothing was changed"
        ))
        .hint(format!(
            "it runs while you are logged in; to keep it (and your IOCs) running without a login, \
             and to start it at boot, run `loginctl enable-linger {user}` as root"
        ))),
        (Manager::User, _) => Ok(Vec::new()),
        (Manager::System, _) if identity.uid == 0 => Ok(Vec::new()),
        (Manager::System, Some(Ok(0))) => Ok(words.clone()),
        (Manager::System, Some(Ok(uid))) => Err(BadInput::new(format!(
            "on `{target}`: the {place} user `{user}` is not root, and `{command}` runs commands as uid {uid}, not as root; nothing was changed"
        ))
        .hint(escalation_setting(target))),
        (Manager::System, Some(Err(said))) => {
            let on_host = if target.local.is_some() { "" } else { " on the host" };
            let program = words.first().map(|w| w.rsplit('/').next().unwrap_or(w)).unwrap_or_default();
            let grant = if program == "sudo" {
                format!(
                    "let `{user}` run commands as root without a password{on_host}: add the line \
                     `{user} ALL=(root) NOPASSWD: ALL` to `/etc/sudoers.d/epnix-deploy` (with \
                     `visudo -f /etc/sudoers.d/epnix-deploy`); a deploy changes units, profiles and timers, \
                     which takes root for all of it"
                )
            } else {
                format!("let `{user}` run commands as root with `{program}` without a password{on_host}")
            };
            Err(BadInput::new(format!(
                "on `{target}`: the {place} user `{user}` is not root, and `{command}` does not let it run commands as root; nothing was changed\n\
                 `{command} id -u` said:\n{}\n\
                 An operator (a member of the group that `epnix-deploy sudoers --group GROUP` lets in) may run \
                 `status`, `logs`, `console`, `start`, `stop` and `restart`; deploy, rollback, remove and \
                 delete-generation stay with the deployers: root, or a user whom `{command}` makes root",
                tail(&said)
            ))
            .hint(format!("{grant}; or {}", escalation_setting(target))))
        }
        // No escalation to try: the lock says who is not root.
        (Manager::System, None) => Ok(Vec::new()),
    }
}

/// Where the user changes how the host is made root.
fn escalation_setting(target: &Target) -> String {
    let login = if target.local.is_some() {
        "run the tool as root".to_owned()
    } else if target.name.is_some() {
        "log in as root (`sshUser = \"root\"`)".to_owned()
    } else {
        "log in as root (`root@host`)".to_owned()
    };
    match &target.name {
        Some(name) => format!(
            "{login}, or name the command that makes a user root there in `{}.hosts.{}.privilegeEscalationCommand`",
            crate::config::ROOT,
            crate::config::attr(name)
        ),
        None => login,
    }
}

/// What `identity.sh` says of the login.
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    user: String,
    uid: u32,
    /// What `id -u` through the escalation printed (the uid it runs as),
    /// or what it said when it refused; none when it was not tried.
    root: Option<Result<u32, String>>,
    /// A user's systemd manager does not answer.
    no_manager: bool,
}

fn parse_identity(said: &str) -> Result<Identity> {
    let mut lines = said.lines();
    let first = lines.next().unwrap_or_default();
    let mut words = first.strip_prefix("user ").context("no `user` line")?.rsplitn(2, ' ');
    let uid = words.next().and_then(|w| w.parse().ok()).context("no uid")?;
    let user = words.next().unwrap_or("?").to_owned();
    let mut identity = Identity { user, uid, root: None, no_manager: false };
    match lines.next() {
        Some("no-manager") => identity.no_manager = true,
        Some(line) if line.starts_with("root ") => {
            let printed = line["root ".len()..].trim();
            // Anything but a number is what the escalation said instead.
            identity.root = Some(printed.parse().map_err(|_| printed.to_owned()));
        }
        Some("refused") => identity.root = Some(Err(lines.collect::<Vec<_>>().join("\n"))),
        Some(other) => anyhow::bail!("an unexpected line `{other}`"),
        None => {}
    }
    Ok(identity)
}

/// An `openssh` failure: the master or the transport is gone.
fn lost(target: &Target, err: openssh::Error) -> anyhow::Error {
    anyhow::Error::new(err).context(ConnectionLost(format!("on `{target}`: the SSH connection failed")))
}

/// How long ssh waits for the host to answer a login.
const CONNECT_TIMEOUT_SECS: u64 = 15;

/// Why a login failed, read from what ssh printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginProblem {
    /// The host refused every key offered (`Permission denied (publickey)`).
    KeyRefused,
    /// The host's key is not in the known hosts, and checking is strict.
    UnknownHostKey,
    /// The host's key is not the one the known hosts hold for it.
    HostKeyChanged,
    /// No SSH server answered: connection refused or timed out, no route,
    /// a name that does not resolve.
    NoAnswer,
    /// Anything else.
    Other,
}

/// Reads ssh's stderr. A changed key is looked for first: ssh ends that
/// message with the same "Host key verification failed." as an unknown one.
pub fn classify_login(stderr: &str) -> LoginProblem {
    let said = stderr.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| said.contains(n));
    if said.contains("remote host identification has changed")
        || (said.contains("host key for") && said.contains("has changed"))
    {
        LoginProblem::HostKeyChanged
    } else if any(&["host key verification failed", "host key is known for", "authenticity of host"]) {
        LoginProblem::UnknownHostKey
    } else if any(&["permission denied (", "too many authentication failures", "no more authentication methods"]) {
        LoginProblem::KeyRefused
    } else if any(&[
        "connection refused",
        "connection timed out",
        "operation timed out",
        "no route to host",
        "network is unreachable",
        "could not resolve hostname",
        "name or service not known",
        "temporary failure in name resolution",
    ]) {
        LoginProblem::NoAnswer
    } else {
        LoginProblem::Other
    }
}

/// A login as the master connection makes it: where to, and the options
/// that decide whether it works, for messages and `--verbose`.
struct Login<'a> {
    target: &'a Target,
    user: Option<&'a str>,
    port: Option<u16>,
    opts: &'a SshOptions,
}

impl<'a> Login<'a> {
    fn new(target: &'a Target, opts: &'a SshOptions) -> Login<'a> {
        Login { target, user: target.user.as_deref().or(opts.user.as_deref()), port: target.port.or(opts.port), opts }
    }

    /// `user@hostname`, as ssh takes it.
    fn who(&self) -> String {
        match self.user {
            Some(user) => format!("{user}@{}", self.target.hostname),
            None => self.target.hostname.clone(),
        }
    }

    /// `-p PORT `, or nothing, for the commands a hint suggests.
    fn port_flag(&self) -> String {
        self.port.map(|p| format!("-p {p} ")).unwrap_or_default()
    }

    /// The host as the known hosts name it: `[hostname]:port` off port 22.
    fn known_hosts_entry(&self) -> String {
        match self.port {
            Some(port) if port != 22 => format!("[{}]:{port}", self.target.hostname),
            _ => self.target.hostname.clone(),
        }
    }

    fn known_hosts_file(&self) -> &str {
        self.opts.known_hosts_file.as_deref().unwrap_or("~/.ssh/known_hosts")
    }

    /// The `ssh` command line of the login, without the master's own
    /// options (control socket, log, persistence): the one to try by hand.
    /// The `-o` options from `sshOpts` are shown as such, not as the config
    /// file they are written to.
    fn command(&self) -> Vec<String> {
        let strict = match self.opts.strict_host_key_checking {
            Some(KnownHosts::Add) => "accept-new",
            Some(KnownHosts::Accept) => "no",
            Some(KnownHosts::Strict) | None => "yes",
        };
        let mut argv: Vec<String> = vec!["ssh".into(), "-o".into(), "BatchMode=yes".into()];
        argv.extend(["-o".into(), format!("StrictHostKeyChecking={strict}")]);
        argv.extend(["-o".into(), format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}")]);
        if let Some(port) = self.port {
            argv.extend(["-p".into(), port.to_string()]);
        }
        if let Some(key) = &self.opts.keyfile {
            argv.extend(["-o".into(), "IdentitiesOnly=yes".into(), "-i".into(), key.clone()]);
        }
        if let Some(file) = &self.opts.known_hosts_file {
            argv.extend(["-o".into(), format!("UserKnownHostsFile={file}")]);
        }
        if !self.opts.jump_hosts.is_empty() {
            argv.extend(["-J".into(), self.opts.jump_hosts.join(",")]);
        }
        if let Some(file) = &self.opts.config_file {
            argv.extend(["-F".into(), file.clone()]);
        }
        for (key, value) in &self.opts.extra {
            argv.extend(["-o".into(), format!("{key}={value}")]);
        }
        argv.push(self.who());
        argv
    }

    fn command_line(&self) -> String {
        self.command().iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
    }

    /// Where the user sets an ssh option for this host.
    fn ssh_opts_setting(&self, example: &str) -> String {
        match &self.target.name {
            Some(name) => format!(
                "`{}.hosts.{}.sshOpts = [ {} ]` (or `--ssh-opts \"{example}\"`)",
                crate::config::ROOT,
                crate::config::attr(name),
                example.split(' ').map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(" ")
            ),
            None => format!("`--ssh-opts \"{example}\"`"),
        }
    }

    /// What went wrong, and what to do about it.
    fn explain(&self, problem: LoginProblem) -> (&'static str, String) {
        let who = self.who();
        let port = self.port_flag();
        match problem {
            LoginProblem::KeyRefused => {
                let key = self.opts.keyfile.as_deref().unwrap_or("~/.ssh/id_ed25519");
                (
                    "the host refused the key(s) offered",
                    format!(
                        "install your public key on the host with `ssh-copy-id -i {key} {port}{who}`, \
                         or name a key the host accepts with {}; the key must work without a prompt (an agent, or no passphrase)",
                        self.ssh_opts_setting("-i <key>")
                    ),
                )
            }
            LoginProblem::UnknownHostKey => {
                let file = self.known_hosts_file();
                let file_opt = match &self.opts.known_hosts_file {
                    Some(f) => format!("-o UserKnownHostsFile={f} "),
                    None => String::new(),
                };
                (
                    "ssh does not know the host's key, and checks host keys strictly",
                    format!(
                        "connect once by hand, `ssh {file_opt}{port}{who}`, to check the key's fingerprint and accept it; \
                         or add it to `{file}` with `ssh-keyscan {port}{} >> {file}` after checking its fingerprint \
                         (`ssh-keygen -lf` on the host's `/etc/ssh/ssh_host_*_key.pub`)",
                        self.target.hostname
                    ),
                )
            }
            LoginProblem::HostKeyChanged => {
                let file = match &self.opts.known_hosts_file {
                    Some(f) => format!(" -f {f}"),
                    None => String::new(),
                };
                (
                    "the host's key has CHANGED since it was recorded",
                    format!(
                        "either the host got new keys (reinstalled) or something is in between; once you are sure it is the former, \
                         forget the old key with `ssh-keygen -R {}{file}` and connect once by hand to accept the new one",
                        shell_quote(&self.known_hosts_entry())
                    ),
                )
            }
            LoginProblem::NoAnswer => {
                let place = match &self.target.name {
                    Some(name) => {
                        format!("`{}.hosts.{}.hostname` and `sshPort`", crate::config::ROOT, crate::config::attr(name))
                    }
                    None => format!("the address and port in `{}`", self.target.label),
                };
                (
                    "no SSH server answered",
                    format!(
                        "check {place}, that the host is up and its sshd runs, and that the network lets you through (`ssh {port}{who} true`)"
                    ),
                )
            }
            LoginProblem::Other => {
                ("ssh failed", "run the command above by hand with `-v` added to see where the login stops".to_owned())
            }
        }
    }

    /// The message of a failed login: the host, the problem, the command,
    /// ssh's last lines, the hint.
    fn failed(&self, said: &str) -> String {
        let said = said.replace('\r', "");
        let (what, hint) = self.explain(classify_login(&said));
        let endpoint = match self.port {
            Some(port) => format!("{}, port {port}", self.who()),
            None => self.who(),
        };
        format!(
            "could not log in to `{}` over SSH ({endpoint}): {what}; nothing was changed\n\
             `{}` said:\n{}\n\
             hint: {hint}",
            self.target.label,
            self.command_line(),
            tail(&said)
        )
    }
}

/// ssh keeps the first value it reads for an option, and `-F` replaces the
/// user's and the system's files, so the generated file sets our options
/// first and then includes those files.
fn write_ssh_config(dir: &Path, opts: &SshOptions) -> Result<PathBuf> {
    let path = dir.join("ssh_config");
    let mut file = std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
    let mut text = String::new();
    for (key, value) in &opts.extra {
        text.push_str(&format!("{key} {value}\n"));
    }
    match &opts.config_file {
        Some(user_file) => text.push_str(&format!("Include {user_file}\n")),
        None => text.push_str("Include ~/.ssh/config\n"),
    }
    text.push_str("Include /etc/ssh/ssh_config\n");
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(words: &[&str]) -> Result<SshOptions, BadInput> {
        parse_ssh_opts(&words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn ssh_opts_map_onto_the_connection() {
        let parsed = opts(&[
            "-i",
            "/k",
            "-oStrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/kh",
            "-o",
            "ConnectTimeout 5",
            "-p2201",
        ])
        .unwrap();
        assert_eq!(parsed.keyfile.as_deref(), Some("/k"));
        assert_eq!(parsed.known_hosts_file.as_deref(), Some("/kh"));
        assert!(matches!(parsed.strict_host_key_checking, Some(KnownHosts::Accept)));
        assert_eq!(parsed.port, Some(2201));
        assert_eq!(parsed.extra, vec![("ConnectTimeout".to_owned(), "5".to_owned())]);
    }

    #[test]
    fn unsupported_ssh_opts_are_refused() {
        let err = opts(&["-v"]).unwrap_err().to_string();
        assert!(err.contains("sshOpts: `-v` is not supported"), "{err}");
        assert!(opts(&["-i"]).unwrap_err().to_string().contains("`-i` needs a value"));
    }

    /// What ssh (OpenSSH 9) prints for each way a login fails.
    const REFUSED_KEY: &str = "root@127.0.0.1: Permission denied (publickey,password).";
    const UNKNOWN_KEY: &str = "No ED25519 host key is known for [127.0.0.1]:2201 and you have requested strict checking.\r\nHost key verification failed.\r";
    const CHANGED_KEY: &str = "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\r
Offending ED25519 key in /root/.ssh/known_hosts:3\r
Host key for [127.0.0.1]:2201 has changed and you have requested strict checking.\r
Host key verification failed.\r";

    #[test]
    fn login_failures_are_told_apart() {
        assert_eq!(classify_login(REFUSED_KEY), LoginProblem::KeyRefused);
        assert_eq!(
            classify_login("Received disconnect from 10.0.0.5 port 22:2: Too many authentication failures"),
            LoginProblem::KeyRefused
        );
        assert_eq!(classify_login(UNKNOWN_KEY), LoginProblem::UnknownHostKey);
        assert_eq!(classify_login("Host key verification failed."), LoginProblem::UnknownHostKey);
        assert_eq!(classify_login(CHANGED_KEY), LoginProblem::HostKeyChanged);
        for no_answer in [
            "connect to host 127.0.0.1 port 1: Connection refused",
            "connect to host 10.0.0.5 port 22: Connection timed out",
            "connect to host 10.0.0.5 port 22: No route to host",
            "connect to host 10.0.0.5 port 22: Network is unreachable",
            "Could not resolve hostname ioc-nowhere: Name or service not known",
            "Could not resolve hostname ioc-nowhere: Temporary failure in name resolution",
            "Connection timed out during banner exchange",
        ] {
            assert_eq!(classify_login(no_answer), LoginProblem::NoAnswer, "{no_answer}");
        }
        assert_eq!(
            classify_login("kex_exchange_identification: Connection closed by remote host"),
            LoginProblem::Other
        );
    }

    fn configured(opts: &[&str]) -> Target {
        let config = crate::config::Config::parse(&serde_json::json!({ "hosts": { "ioc1": {
            "hostname": "10.0.0.5", "sshUser": "root", "sshPort": 2201, "sshOpts": opts,
        } } }))
        .unwrap();
        Target::resolve("ioc1", Some(&config)).unwrap()
    }

    fn login_failed(target: &Target, said: &str) -> String {
        let opts = parse_ssh_opts(&target.ssh_opts).unwrap();
        Login::new(target, &opts).failed(said)
    }

    #[test]
    fn a_refused_key_names_the_host_the_command_and_ssh_copy_id() {
        let err = login_failed(&configured(&["-i", "/keys/ioc", "-o", "ConnectTimeout=5"]), REFUSED_KEY);
        assert!(
            err.starts_with("could not log in to `ioc1` over SSH (root@10.0.0.5, port 2201): the host refused the key(s) offered; nothing was changed\n"),
            "{err}"
        );
        assert!(
            err.contains(
                "`ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=15 -p 2201 -o IdentitiesOnly=yes -i /keys/ioc -o ConnectTimeout=5 root@10.0.0.5` said:"
            ),
            "{err}"
        );
        assert!(err.contains("said:\n  root@127.0.0.1: Permission denied (publickey,password).\nhint: "), "{err}");
        let hint = err.rsplit_once("\nhint: ").expect("a hint").1;
        assert!(hint.contains("`ssh-copy-id -i /keys/ioc -p 2201 root@10.0.0.5`"), "{hint}");
        assert!(hint.contains("`epnixDeploy.hosts.ioc1.sshOpts = [ \"-i\" \"<key>\" ]`"), "{hint}");
        assert!(hint.contains("`--ssh-opts \"-i <key>\"`"), "{hint}");
    }

    #[test]
    fn an_unknown_host_key_points_at_the_known_hosts() {
        let bare = Target::resolve("root@127.0.0.1:2201", None).unwrap();
        let err = login_failed(&bare, UNKNOWN_KEY);
        assert!(err.contains("ssh does not know the host's key"), "{err}");
        assert!(!err.contains('\r'), "{err:?}");
        assert!(err.contains("said:\n  No ED25519 host key is known for [127.0.0.1]:2201 and you have requested strict checking.\n  Host key verification failed.\nhint: "), "{err}");
        let hint = err.rsplit_once("\nhint: ").unwrap().1;
        assert!(hint.contains("`ssh -p 2201 root@127.0.0.1`"), "{hint}");
        assert!(hint.contains("`ssh-keyscan -p 2201 127.0.0.1 >> ~/.ssh/known_hosts`"), "{hint}");

        let mut with_file = configured(&["-o", "UserKnownHostsFile=/etc/epnix/known_hosts"]);
        with_file.port = None;
        let hint = login_failed(&with_file, UNKNOWN_KEY).rsplit_once("\nhint: ").unwrap().1.to_owned();
        assert!(hint.contains("`ssh -o UserKnownHostsFile=/etc/epnix/known_hosts root@10.0.0.5`"), "{hint}");
        assert!(hint.contains("`ssh-keyscan 10.0.0.5 >> /etc/epnix/known_hosts`"), "{hint}");
    }

    #[test]
    fn a_changed_host_key_is_forgotten_only_after_making_sure() {
        let err = login_failed(&configured(&[]), CHANGED_KEY);
        assert!(err.contains("the host's key has CHANGED"), "{err}");
        assert!(err.contains("  IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!"), "{err}");
        let hint = err.rsplit_once("\nhint: ").unwrap().1;
        assert!(hint.contains("once you are sure"), "{hint}");
        assert!(hint.contains("`ssh-keygen -R '[10.0.0.5]:2201'`"), "{hint}");
    }

    #[test]
    fn no_answer_points_at_the_address() {
        let err = login_failed(&configured(&[]), "connect to host 10.0.0.5 port 2201: Connection refused");
        assert!(err.contains("no SSH server answered"), "{err}");
        assert!(err.contains("check `epnixDeploy.hosts.ioc1.hostname` and `sshPort`"), "{err}");
        let bare = Target::resolve("root@ioc-nowhere", None).unwrap();
        let err = login_failed(&bare, "Could not resolve hostname ioc-nowhere: Name or service not known");
        assert!(err.contains("the address and port in `root@ioc-nowhere`"), "{err}");
        assert!(err.contains("`ssh root@ioc-nowhere true`"), "{err}");
    }

    #[test]
    fn remote_commands_are_traced_without_script_texts() {
        let cmd = RemoteCmd::script(
            "prepare",
            "echo \"$@\"",
            &["demo", "a b", "#!/bin/sh\nset -eu\nexit 0\n", &"x".repeat(300)],
        );
        assert_eq!(cmd.trace_line(), "sh prepare.sh demo 'a b' <3 lines> <300 bytes>");
        let cmd = RemoteCmd::new(["systemctl", "is-active", "epnix-ioc1.service"]).with_stdin("unit\n".into());
        assert_eq!(cmd.trace_line(), "systemctl is-active epnix-ioc1.service <<< (5 bytes)");
    }

    #[test]
    fn an_escalated_command_shows_its_escalation() {
        let sudo = crate::target::default_escalation();
        let cmd = RemoteCmd { escalation: sudo.clone(), ..RemoteCmd::script("lock", "echo \"$1\"", &["a b"]) };
        assert_eq!(cmd.to_string(), "sudo -n -- sh lock.sh 'a b'");
        assert_eq!(cmd.trace_line(), "sudo -n -- sh lock.sh 'a b'");
        assert_eq!(cmd.full_argv(), ["sudo", "-n", "--", "sh", "-c", "echo \"$1\"", "epnix-deploy", "a b"]);
        assert_eq!(cmd.shell_line(), "sudo -n -- sh -c 'echo \"$1\"' epnix-deploy 'a b'");
        let cmd = RemoteCmd { escalation: sudo, ..RemoteCmd::systemctl(["stop", "x.timer"]) };
        assert_eq!(cmd.to_string(), "sudo -n -- systemctl stop x.timer");
    }

    #[test]
    fn identity_is_read_from_its_lines() {
        let who = |text: &str| parse_identity(text).unwrap();
        assert_eq!(who("user root 0\n"), Identity { user: "root".into(), uid: 0, root: None, no_manager: false });
        assert_eq!(who("user ops 1000\nroot 0\n").root, Some(Ok(0)));
        assert_eq!(who("user ops 1000\nroot nobody\n").root, Some(Err("nobody".into())));
        let refused = who("user ops 1000\nrefused\nsudo: a password is required\n");
        assert_eq!(refused.root, Some(Err("sudo: a password is required".into())));
        assert!(who("user eng 1000\nno-manager\n").no_manager);
        assert!(parse_identity("").is_err());
        assert!(parse_identity("user ops 1000\nsomething else\n").is_err());
    }

    fn ops(root: Option<Result<u32, String>>) -> Identity {
        Identity { user: "ops".into(), uid: 1000, root, no_manager: false }
    }

    #[test]
    fn a_login_that_is_not_root_gets_root_only_through_an_escalation_that_works() {
        let bare = Target::resolve("ops@10.0.0.5", None).unwrap();
        assert_eq!(escalation_for(&bare, Manager::System, ops(Some(Ok(0)))).unwrap(), ["sudo", "-n", "--"]);
        let root = Identity { user: "root".into(), uid: 0, root: None, no_manager: false };
        assert!(escalation_for(&bare, Manager::System, root).unwrap().is_empty());

        let err =
            escalation_for(&configured(&[]), Manager::System, ops(Some(Err("sudo: a password is required".into()))))
                .unwrap_err()
                .to_string();
        assert!(
            err.starts_with(
                "on `ioc1`: the SSH user `ops` is not root, and `sudo -n --` does not let it run commands as root; nothing was changed\n\
                 `sudo -n -- id -u` said:\n  sudo: a password is required\n\
                 An operator (a member of the group that `epnix-deploy sudoers --group GROUP` lets in) may run \
                 `status`, `logs`, `console`, `start`, `stop` and `restart`; deploy, rollback, remove and \
                 delete-generation stay with the deployers: root, or a user whom `sudo -n --` makes root\nhint: "
            ),
            "{err}"
        );
        let hint = err.rsplit_once("\nhint: ").unwrap().1;
        assert!(
            hint.contains("add the line `ops ALL=(root) NOPASSWD: ALL` to `/etc/sudoers.d/epnix-deploy`"),
            "{hint}"
        );
        assert!(hint.contains("`epnixDeploy.hosts.ioc1.privilegeEscalationCommand`"), "{hint}");

        let err = escalation_for(&bare, Manager::System, ops(Some(Ok(1001)))).unwrap_err().to_string();
        assert!(err.contains("`sudo -n --` runs commands as uid 1001, not as root"), "{err}");
    }

    #[test]
    fn a_users_own_manager_takes_no_escalation_and_no_root() {
        let here = Target::here(crate::target::Local::User);
        assert!(escalation_for(&here, Manager::User, ops(None)).unwrap().is_empty());
        let root = Identity { user: "root".into(), uid: 0, root: None, no_manager: false };
        assert!(escalation_for(&here, Manager::User, root).unwrap_err().to_string().contains("and you are root"));
        let alone = Identity { no_manager: true, ..ops(None) };
        let err = escalation_for(&here, Manager::User, alone).unwrap_err().to_string();
        assert!(err.contains("`loginctl enable-linger ops`"), "{err}");
    }

    #[test]
    fn scripts_take_their_values_as_arguments() {
        let cmd = RemoteCmd::script("say", "echo \"$1\"", &["$(reboot)"]);
        assert_eq!(cmd.argv, ["sh", "-c", "echo \"$1\"", "epnix-deploy", "$(reboot)"]);
        assert_eq!(cmd.shell_line(), "sh -c 'echo \"$1\"' epnix-deploy '$(reboot)'");
        assert_eq!(cmd.to_string(), "sh say.sh '$(reboot)'");
    }
}
