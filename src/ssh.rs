//! The one place that talks to remote hosts.
//!
//! Each host gets one SSH master connection (the `openssh` crate); every remote
//! command and `nix copy` ride it, so the user authenticates once. Remote
//! commands are argv lists: `openssh` quotes each word for the remote shell, so
//! a value from the configuration can never become shell syntax.

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

use crate::exit::BadInput;
use crate::process::{shell_quote, tail};
use crate::target::Target;

/// A command to run on a host, as data: `--dry-run` prints it, errors quote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteCmd {
    pub argv: Vec<String>,
    /// Text fed to the command's stdin, e.g. a unit file being installed.
    pub stdin: Option<String>,
    /// For a host-side script: its name, shown instead of its whole text.
    pub script: Option<&'static str>,
}

impl RemoteCmd {
    pub fn new<I, S>(argv: I) -> RemoteCmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RemoteCmd { argv: argv.into_iter().map(Into::into).collect(), stdin: None, script: None }
    }

    /// Runs a fixed `sh` script with positional arguments. The script is a
    /// constant of ours; only `args` vary, and they arrive as `$1`, `$2`, ...
    pub fn script(name: &'static str, script: &str, args: &[&str]) -> RemoteCmd {
        let mut argv = vec!["sh".to_owned(), "-c".to_owned(), script.to_owned(), "epnix-deploy".to_owned()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        RemoteCmd { argv, stdin: None, script: Some(name) }
    }

    pub fn with_stdin(mut self, stdin: String) -> RemoteCmd {
        self.stdin = Some(stdin);
        self
    }
}

impl RemoteCmd {
    /// The command as one line for the remote shell, each word quoted, for
    /// programs that take it that way (`ssh HOST LINE`). Without stdin.
    pub fn shell_line(&self) -> String {
        self.argv.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
    }
}

impl fmt::Display for RemoteCmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.script {
            // The script's text is ours and long: its name says which it is.
            Some(name) => {
                let args: Vec<String> = self.argv[4..].iter().map(|w| shell_quote(w)).collect();
                write!(f, "sh {name}.sh {}", args.join(" "))?;
            }
            None => f.write_str(&self.shell_line())?,
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
    /// Taken; with the holder line of a deploy that died holding it.
    Held { stale: Option<String> },
    /// Another deploy holds it; its holder line says who, since when.
    Busy(String),
    /// The SSH user (named) is not root: nothing was written.
    NotRoot(String),
    /// The host has another name (given) than the configured one: nothing
    /// was written.
    WrongHost(String),
}

/// An open master connection to one host.
pub struct Remote {
    runtime: Runtime,
    session: Option<Arc<Session>>,
    /// The remote process that holds the deploy lock: it lives as long as its
    /// stdin stays open, so the lock goes with this connection, even when
    /// the deployer is killed.
    lock: Option<openssh::Child<Arc<Session>>>,
    target: Target,
    /// Holds the generated ssh config (when `sshOpts` needs one) and the
    /// control socket directory for the life of the connection.
    _dir: tempfile::TempDir,
}

impl Remote {
    pub fn connect(target: &Target) -> Result<Remote> {
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
            .connect_timeout(Duration::from_secs(15))
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
        let session = runtime.block_on(builder.connect(target.destination())).map_err(|err| {
            anyhow::Error::new(err)
                .context(format!("could not open an SSH connection to `{target}` ({})", describe_endpoint(target)))
        })?;
        Ok(Remote { runtime, session: Some(Arc::new(session)), lock: None, target: target.clone(), _dir: dir })
    }

    fn session(&self) -> &Arc<Session> {
        self.session.as_ref().expect("the session lives until close")
    }

    /// Takes a lock on the host with `cmd`, a script that prints `locked`
    /// and then holds the lock until its stdin closes, or prints `busy` and
    /// a holder line and exits.
    pub fn hold_lock(&mut self, cmd: &RemoteCmd) -> Result<Lock> {
        let session = Arc::clone(self.session());
        let (line, child) = self
            .runtime
            .block_on(async {
                let mut command = session.arc_command(cmd.argv[0].as_str());
                command.args(&cmd.argv[1..]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
                let mut child = command.spawn().await?;
                let stdout = child.stdout().take().expect("stdout was piped");
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).await.map_err(openssh::Error::ChildIo)?;
                Ok::<_, openssh::Error>((line, child))
            })
            .map_err(|err| lost(&self.target, err))?;
        match line.trim_end().split_once(' ').unwrap_or((line.trim_end(), "")) {
            ("locked", stale) => {
                self.lock = Some(child);
                Ok(Lock::Held { stale: Some(stale.to_owned()).filter(|s| !s.is_empty()) })
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
        if output.status.code() == Some(255) {
            return Err(
                ConnectionLost(format!("on `{}`: the SSH connection was lost running `{cmd}`", self.target)).into()
            );
        }
        if !output.status.success() {
            anyhow::bail!(
                "on `{}`: `{cmd}` failed ({}):\n{}",
                self.target,
                output.status,
                tail(&String::from_utf8_lossy(&output.stderr))
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `cmd` and returns whatever it did, for callers that read the status.
    pub fn output(&self, cmd: &RemoteCmd) -> Result<Output> {
        let session = self.session();
        let result = self.runtime.block_on(async {
            let mut command = session.command(&cmd.argv[0]);
            command.args(&cmd.argv[1..]).stdout(Stdio::piped()).stderr(Stdio::piped());
            command.stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
            let mut child = command.spawn().await?;
            if let Some(text) = &cmd.stdin {
                let mut stdin = child.stdin().take().expect("stdin was piped");
                stdin.write_all(text.as_bytes()).await.map_err(openssh::Error::ChildIo)?;
                stdin.shutdown().await.map_err(openssh::Error::ChildIo)?;
            }
            child.wait_with_output().await
        });
        result.map_err(|err| lost(&self.target, err).context(format!("could not run `{cmd}`")))
    }

    /// The master's control socket, for programs that should ride the same
    /// connection (`nix copy` through `NIX_SSHOPTS`).
    pub fn control_socket(&self) -> &Path {
        self.session().control_socket()
    }

    /// Releases the lock, if held, and closes the master connection.
    pub fn close(mut self) {
        if let Some(mut lock) = self.lock.take() {
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

/// Runs `line` on the host through the master connection at `socket`, with
/// the `ssh` program itself, so that it needs nothing of the [`Remote`] and
/// can run on another thread. Ended (and an error) after `timeout`.
pub fn run_on_master(socket: &Path, line: &str, timeout: Duration) -> std::io::Result<Output> {
    let mut child = std::process::Command::new("ssh")
        .arg("-S")
        .arg(socket)
        .args(["-o", "ControlMaster=no", "-o", "BatchMode=yes", "-T", "none", line])
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

/// An `openssh` failure: the master or the transport is gone.
fn lost(target: &Target, err: openssh::Error) -> anyhow::Error {
    anyhow::Error::new(err).context(ConnectionLost(format!("on `{target}`: the SSH connection failed")))
}

fn describe_endpoint(target: &Target) -> String {
    match target.port {
        Some(port) => format!("{}, port {port}", target.destination()),
        None => target.destination(),
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

    #[test]
    fn scripts_take_their_values_as_arguments() {
        let cmd = RemoteCmd::script("say", "echo \"$1\"", &["$(reboot)"]);
        assert_eq!(cmd.argv, ["sh", "-c", "echo \"$1\"", "epnix-deploy", "$(reboot)"]);
        assert_eq!(cmd.shell_line(), "sh -c 'echo \"$1\"' epnix-deploy '$(reboot)'");
        assert_eq!(cmd.to_string(), "sh say.sh '$(reboot)'");
    }
}
