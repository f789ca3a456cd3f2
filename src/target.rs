//! The host a command acts on: a name from `epnixDeploy.hosts`, a bare
//! `user@hostname[:port]` for a quick deploy outside the configuration, or
//! this machine (`--local`, `--user`).

use std::fmt;

use crate::config::{self, Config, Host};
use crate::exit::BadInput;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// What the user called the host: the configured name, or the bare form.
    pub label: String,
    /// The configured name, when the host came from `epnixDeploy.hosts`.
    pub name: Option<String>,
    pub user: Option<String>,
    pub hostname: String,
    pub port: Option<u16>,
    pub ssh_opts: Vec<String>,
    /// See [`Target::expected_hostname`].
    expected_hostname: Option<String>,
    /// The words that run a command as root when the login user is not
    /// root (`privilegeEscalationCommand`).
    pub escalation: Vec<String>,
    /// The host is this machine, reached with no SSH.
    pub local: Option<Local>,
}

/// This machine as the host: whose systemd manager runs the IOCs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Local {
    /// The system's (`--local`, a host with `local = true`).
    System,
    /// The current user's own (`--user`).
    User,
}

/// `privilegeEscalationCommand` when a host does not set it: sudo that
/// never asks for a password (there is nobody to type one).
pub fn default_escalation() -> Vec<String> {
    ["sudo", "-n", "--"].map(str::to_owned).to_vec()
}

impl Target {
    /// Resolves the `<host>` argument. A configured name wins; anything with an
    /// `@` is the bare form.
    pub fn resolve(arg: &str, config: Option<&Config>) -> Result<Target, BadInput> {
        if let Some(host) = config.and_then(|c| c.hosts.get(arg)) {
            return Ok(Target::from_config(arg, host));
        }
        if arg.contains('@') {
            return Target::parse_bare(arg);
        }
        let known: Vec<&str> = config.map(|c| c.hosts.keys().map(String::as_str).collect()).unwrap_or_default();
        let err = BadInput::new(format!("unknown host `{arg}`"));
        Err(if known.is_empty() {
            err.hint(format!("add it to `{}.hosts`, or give it as `user@hostname[:port]`", config::ROOT))
        } else {
            err.hint(format!("configured hosts are: {}; or give it as `user@hostname[:port]`", known.join(", ")))
        })
    }

    fn from_config(name: &str, host: &Host) -> Target {
        Target {
            label: name.to_owned(),
            name: Some(name.to_owned()),
            user: host.ssh_user.clone(),
            hostname: host.hostname.clone(),
            port: host.ssh_port,
            ssh_opts: host.ssh_opts.clone(),
            expected_hostname: Some(host.expected_hostname.clone().unwrap_or_else(|| name.to_owned())),
            escalation: host.privilege_escalation_command.clone(),
            local: host.local.then_some(Local::System),
        }
    }

    /// This machine, as `--local` (or `--user`) names it: outside the
    /// configuration, as a `user@hostname` target is.
    pub fn here(local: Local) -> Target {
        Target {
            label: "localhost".to_owned(),
            name: None,
            user: None,
            hostname: "localhost".to_owned(),
            port: None,
            ssh_opts: Vec::new(),
            expected_hostname: None,
            escalation: default_escalation(),
            local: Some(local),
        }
    }

    /// Parses `user@hostname[:port]`; IPv6 addresses go in brackets.
    fn parse_bare(arg: &str) -> Result<Target, BadInput> {
        let bad = || {
            BadInput::new(format!(
                "`{arg}` is not a host name from the configuration nor of the form `user@hostname[:port]`"
            ))
            .hint("for IPv6, write `user@[2001:db8::1]:22`")
        };
        let (user, rest) = arg.rsplit_once('@').ok_or_else(bad)?;
        let (hostname, port) = if let Some(rest) = rest.strip_prefix('[') {
            let (addr, after) = rest.split_once(']').ok_or_else(bad)?;
            match after {
                "" => (addr, None),
                _ => (addr, Some(after.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else {
            match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| BadInput::new(format!("`{p}` in `{arg}` is not a port number")))
            })
            .transpose()?;
        let valid =
            |s: &str| !s.is_empty() && !s.starts_with('-') && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if !valid(user) || !valid(hostname) {
            return Err(bad());
        }
        Ok(Target {
            label: arg.to_owned(),
            name: None,
            user: Some(user.to_owned()),
            hostname: hostname.to_owned(),
            port,
            ssh_opts: Vec::new(),
            expected_hostname: None,
            escalation: default_escalation(),
            local: None,
        })
    }

    /// The name the host must answer as before a command changes it (its
    /// `hostname`, or that name's first label): `expectedHostname`, by
    /// default the host's name in `epnixDeploy.hosts`. None for a
    /// `user@hostname` target, which names no machine.
    pub fn expected_hostname(&self) -> Option<&str> {
        self.expected_hostname.as_deref()
    }

    /// `user@hostname` as ssh and Nix store URLs take it (the port travels apart).
    pub fn destination(&self) -> String {
        match &self.user {
            Some(user) => format!("{user}@{}", self.hostname),
            None => self.hostname.clone(),
        }
    }
}

/// The host as the command line names it, so that the hints built with it
/// (`epnix-deploy list {target} {top}`) can be typed as they are.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.name, self.local) {
            (None, Some(Local::System)) => f.write_str("--local"),
            (None, Some(Local::User)) => f.write_str("--user"),
            _ => f.write_str(&self.label),
        }
    }
}

/// Where to find a host: the `<host>` argument, the flake that may name it,
/// and `--ssh-opts`.
#[derive(Clone, Debug)]
pub struct HostSelection {
    pub flake: crate::nix::Flake,
    pub host: String,
    /// `--ssh-opts`, added after the host's own `sshOpts`.
    pub ssh_opts: Vec<String>,
    /// `--local` or `--user`: the host is this machine, whatever `host` says.
    pub local: Option<Local>,
}

impl HostSelection {
    /// Resolves the host argument, with `--ssh-opts` applied.
    pub fn target(&self, config: Option<&Config>) -> Result<Target, BadInput> {
        if let Some(local) = self.local {
            return Ok(Target::here(local));
        }
        let mut target = Target::resolve(&self.host, config)?;
        target.ssh_opts.extend(self.ssh_opts.iter().cloned());
        Ok(target)
    }

    /// The selection of `top` on this host.
    pub fn with_top(self, top: String) -> Selection {
        Selection { flake: self.flake, host: self.host, top, ssh_opts: self.ssh_opts, local: self.local }
    }

    /// Whether the host is found without the configuration: a bare
    /// `user@hostname`, or this machine named by `--local` or `--user`.
    pub fn outside_config(&self) -> bool {
        self.local.is_some() || self.host.contains('@')
    }
}

/// Where to find the host and which top to act on.
#[derive(Clone, Debug)]
pub struct Selection {
    pub flake: crate::nix::Flake,
    pub host: String,
    pub top: String,
    /// `--ssh-opts`, added after the host's own `sshOpts`.
    pub ssh_opts: Vec<String>,
    /// `--local` or `--user`.
    pub local: Option<Local>,
}

impl Selection {
    /// The host part of the selection.
    pub fn on(&self) -> HostSelection {
        HostSelection {
            flake: self.flake.clone(),
            host: self.host.clone(),
            ssh_opts: self.ssh_opts.clone(),
            local: self.local,
        }
    }

    /// Resolves the host argument, with `--ssh-opts` applied.
    pub fn target(&self, config: Option<&Config>) -> Result<Target, BadInput> {
        self.on().target(config)
    }
}

/// Who deploys, as `user@machine`, for the generation's origin and the lock.
pub fn deployer() -> String {
    let env = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).ok();
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned());
    format!("{}@{}", login_name(env), machine.unwrap_or_else(|_| "unknown".to_owned()))
}

/// The user's name from the environment, or else from the system (NSS
/// included): cron and CI jobs often run without `USER`.
fn login_name(from_env: Option<String>) -> String {
    let from_os = || {
        let out = std::process::Command::new("id").arg("-un").stderr(std::process::Stdio::null()).output().ok()?;
        let name = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (out.status.success() && !name.is_empty()).then_some(name)
    };
    from_env.filter(|u| !u.is_empty()).or_else(from_os).unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployer_is_named_without_user_too() {
        let id = std::process::Command::new("id").arg("-un").output().unwrap();
        assert_eq!(login_name(None), String::from_utf8(id.stdout).unwrap().trim());
        assert_eq!(login_name(Some(String::new())), login_name(None));
        assert_eq!(login_name(Some("ops".into())), "ops");
    }

    #[test]
    fn bare_forms() {
        let t = Target::resolve("root@10.0.0.5", None).unwrap();
        assert_eq!((t.user.as_deref(), t.hostname.as_str(), t.port), (Some("root"), "10.0.0.5", None));
        let t = Target::resolve("ops@ioc1.example.org:2222", None).unwrap();
        assert_eq!((t.hostname.as_str(), t.port), ("ioc1.example.org", Some(2222)));
        let t = Target::resolve("root@[::1]:22", None).unwrap();
        assert_eq!((t.hostname.as_str(), t.port), ("::1", Some(22)));
        assert_eq!(t.destination(), "root@::1");
    }

    #[test]
    fn a_configured_host_answers_as_its_name_unless_told_otherwise() {
        let config = Config::parse(&serde_json::json!({ "hosts": {
            "ioc1": { "hostname": "10.0.0.5" },
            "ioc2": { "hostname": "10.0.0.6", "expectedHostname": "lab-ioc-07" },
        } }))
        .unwrap();
        assert_eq!(Target::resolve("ioc1", Some(&config)).unwrap().expected_hostname(), Some("ioc1"));
        assert_eq!(Target::resolve("ioc2", Some(&config)).unwrap().expected_hostname(), Some("lab-ioc-07"));
        assert_eq!(Target::resolve("root@10.0.0.5", Some(&config)).unwrap().expected_hostname(), None);
    }

    #[test]
    fn this_machine_is_named_as_the_command_line_names_it() {
        let here = Target::here(Local::System);
        assert_eq!((here.label.as_str(), here.to_string()), ("localhost", "--local".to_owned()));
        assert_eq!(Target::here(Local::User).to_string(), "--user");
        assert_eq!(here.escalation, default_escalation());
        let config = Config::parse(&serde_json::json!({ "hosts": {
            "lab": { "hostname": "localhost", "local": true, "privilegeEscalationCommand": ["doas", "-n"] },
        } }))
        .unwrap();
        let lab = Target::resolve("lab", Some(&config)).unwrap();
        assert_eq!((lab.to_string(), lab.local), ("lab".to_owned(), Some(Local::System)));
        assert_eq!(lab.escalation, ["doas", "-n"]);
        assert_eq!(lab.expected_hostname(), Some("lab"));
    }

    #[test]
    fn bad_forms_say_what_is_wrong() {
        assert!(
            Target::resolve("root@host:99999", None)
                .unwrap_err()
                .to_string()
                .contains("`99999` in `root@host:99999` is not a port number")
        );
        assert!(Target::resolve("root@-oProxyCommand=x", None).is_err());
        assert!(Target::resolve("@host", None).is_err());
        let err = Target::resolve("ioc-server-9", None).unwrap_err().to_string();
        assert!(err.starts_with("unknown host `ioc-server-9`"), "{err}");
        assert!(err.contains("user@hostname[:port]"), "{err}");
    }
}
