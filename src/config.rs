//! The deploy configuration: the flake output `epnixDeploy`, read once with
//! `nix eval --json` and checked here before anything touches a host.
//!
//! The types below are the schema's source of truth; the README's
//! "Configuration reference" mirrors them. Option names follow EPNix's
//! `services.iocs` so users move between this tool and the NixOS module
//! without relearning. Every error names the attribute path it is about.

use std::collections::BTreeMap;

use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{Map, Value, json};

use crate::exit::BadInput;

/// The root of every attribute path in messages.
pub const ROOT: &str = "epnixDeploy";

/// How often the deployer sends the host a heartbeat while it checks a
/// deploy. Each heartbeat restarts the host's rollback timer, which fires
/// after `confirmTimeout` without one.
pub const HEARTBEAT_INTERVAL_SECS: u64 = 2;

/// The shortest `confirmTimeout`: more than twice the heartbeat interval. A
/// heartbeat is an SSH round trip that may itself take up to an interval, so
/// two of them can reach the host up to two intervals apart; a shorter timer
/// could roll a healthy deploy back in that gap.
pub const MIN_CONFIRM_TIMEOUT_SECS: u64 = 2 * HEARTBEAT_INTERVAL_SECS + 1;

/// `confirmTimeout` when the top does not set it.
pub const DEFAULT_CONFIRM_TIMEOUT_SECS: u64 = 30;

/// `activationTimeout` when a top does not set it.
pub const DEFAULT_ACTIVATION_TIMEOUT_SECS: u64 = 60;

/// The most any setting in seconds may be: a day. Each one is how long a
/// deploy keeps the host's lock and its SSH connection waiting, or (for
/// `confirmTimeout`) how long a host runs an unconfirmed deploy before it
/// rolls back by itself. More than a day is a slip (milliseconds meant, a
/// digit too many), and the bound keeps sums of them far from overflow.
pub const MAX_SECONDS: u64 = 86_400;

/// The longest value of an environment variable, in bytes. systemd refuses
/// to load a unit with a line over 1 MiB, and the kernel refuses to start a
/// process with a variable over 128 KiB (`MAX_ARG_STRLEN`); either failure
/// would only show on the host, after the switch. 32 KiB stays under both,
/// also once the unit's escaping has doubled every character.
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;

/// The first TCP port that a process without `CAP_NET_BIND_SERVICE` may
/// bind (Linux's default `net.ipv4.ip_unprivileged_port_start`). The IOC
/// runs as a `DynamicUser` with an empty capability bounding set.
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

// The keys each level of `epnixDeploy` may have: anything else is refused,
// with a suggestion. `schema` hands them to the Nix twins.

/// `epnixDeploy`.
pub const ROOT_KEYS: &[&str] = &["hosts", "tops"];
/// `epnixDeploy.hosts.<name>`.
pub const HOST_KEYS: &[&str] = &[
    "hostname",
    "expectedHostname",
    "sshUser",
    "sshPort",
    "sshOpts",
    "tags",
    "magicRollback",
    "procServ",
    "conserver",
    "buildOnTarget",
    "local",
    "privilegeEscalationCommand",
];
/// `epnixDeploy.hosts.<name>.procServ`.
pub const HOST_PROCSERV_KEYS: &[&str] = &["package"];
/// `epnixDeploy.hosts.<name>.conserver`.
pub const HOST_CONSERVER_KEYS: &[&str] = &["enable", "includeFile", "configFile", "service"];
/// `epnixDeploy.tops.<name>`.
pub const TOP_KEYS: &[&str] = &["package", "hosts", "iocs", "activationTimeout", "magicRollback", "confirmTimeout"];
/// `epnixDeploy.tops.<top>.iocs.<name>`.
pub const IOC_KEYS: &[&str] =
    &["workingDirectory", "startupScript", "environment", "procServ", "description", "enable", "healthCheck"];
/// `epnixDeploy.tops.<top>.iocs.<name>.procServ`.
pub const IOC_PROCSERV_KEYS: &[&str] = &["console"];
/// `epnixDeploy.tops.<top>.iocs.<name>.healthCheck`.
pub const HEALTH_CHECK_KEYS: &[&str] = &["settleTime", "readyLine", "command", "commandTimeout"];

/// The whole `epnixDeploy` attribute set.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub hosts: BTreeMap<String, Host>,
    pub tops: BTreeMap<String, Top>,
}

/// `epnixDeploy.hosts.<name>`: how to reach a host over SSH.
#[derive(Clone, Debug, PartialEq)]
pub struct Host {
    /// `hostname`: the address or DNS name given to ssh.
    pub hostname: String,
    /// `expectedHostname`: the name the machine answers as (its
    /// `/proc/sys/kernel/hostname`, or that name's first label), checked
    /// before a command changes it. `None`: the host's attribute name.
    pub expected_hostname: Option<String>,
    /// `sshUser`: defaults to whatever ssh picks (its config, then the local user).
    pub ssh_user: Option<String>,
    /// `sshPort`: defaults to ssh's choice (its config, then 22).
    pub ssh_port: Option<u16>,
    /// `sshOpts`: extra ssh options, e.g. `[ "-i" "/path/key" "-o" "Foo=bar" ]`.
    pub ssh_opts: Vec<String>,
    /// `tags`: names that select the host on the command line (`--on @linac`).
    pub tags: Vec<String>,
    /// `magicRollback`: arm the host-side rollback for deploys to this host
    /// (default true).
    pub magic_rollback: bool,
    /// `buildOnTarget`: the host builds the top itself from its derivations,
    /// as `--build-on-target` asks for every host (default false).
    pub build_on_target: bool,
    /// `procServ.package`: the procServ the host's IOCs run, deployed from
    /// Nix to the profile `/nix/var/nix/profiles/epnix/procServ` as the EPNix
    /// guide does; without it, the host's own `procServ` on the PATH.
    pub procserv_package: Option<Utf8PathBuf>,
    /// `conserver`: the console server in front of the host's IOCs.
    pub conserver: Conserver,
    /// `local`: the host is the machine the tool runs on, reached with no
    /// SSH (its `hostname` must be `localhost`). Default false.
    pub local: bool,
    /// `privilegeEscalationCommand`: the words that run a command as root
    /// on the host when the login user is not root, as colmena names them.
    /// Default `[ "sudo" "-n" "--" ]`.
    pub privilege_escalation_command: Vec<String>,
}

/// `epnixDeploy.hosts.<name>.conserver`: conserver, the console server some
/// sites reach every IOC console of a host through. Enabled, each deploy,
/// rollback and remove on the host rewrites an include file of conserver's
/// configuration with one console per IOC of every top there, then has
/// conserver re-read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conserver {
    /// `enable` (default false).
    pub enable: bool,
    /// `includeFile`: the file epnix-deploy owns and rewrites, which
    /// conserver's configuration must `#include`.
    pub include_file: Utf8PathBuf,
    /// `configFile`: conserver's configuration, where the `#include` line
    /// is looked for (Debian's path by default).
    pub config_file: Utf8PathBuf,
    /// `service`: the systemd unit that runs conserver, whose main process
    /// is told to re-read its configuration (Debian's name by default).
    pub service: String,
}

impl Default for Conserver {
    fn default() -> Conserver {
        Conserver {
            enable: false,
            include_file: "/etc/conserver/epnix-deploy.cf".into(),
            config_file: "/etc/conserver/conserver.cf".into(),
            service: "conserver-server.service".into(),
        }
    }
}

/// `epnixDeploy.tops.<name>`: an EPICS top and the IOCs it runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Top {
    /// `package`: the built top; Nix turns the derivation into its store path.
    pub package: Utf8PathBuf,
    /// `hosts`: names from `epnixDeploy.hosts` this top is deployed to.
    pub hosts: Vec<String>,
    /// `iocs.<name>`: one procServ unit each.
    pub iocs: BTreeMap<String, Ioc>,
    /// `activationTimeout`: seconds all IOCs together may take to pass their
    /// checks (default 60).
    pub activation_timeout: u64,
    /// `magicRollback`: arm the host-side rollback for this top (default true).
    pub magic_rollback: bool,
    /// `confirmTimeout`: seconds after the switch until the host rolls back by
    /// itself, unless the deployer confirms over a new SSH login (default 30).
    pub confirm_timeout: u64,
}

/// `epnixDeploy.tops.<top>.iocs.<name>`, named as in EPNix's `services.iocs`.
#[derive(Clone, Debug, PartialEq)]
pub struct Ioc {
    /// `workingDirectory`: relative to the top, normalized (`.` for the top itself).
    pub working_directory: Utf8PathBuf,
    /// `startupScript`: relative to `workingDirectory`, default `./st.cmd`.
    /// Always starts with `./` or `../`, so procServ never searches `PATH` for it.
    pub startup_script: String,
    /// `environment`: variables for the IOC process.
    pub environment: BTreeMap<String, String>,
    /// `procServ.console`: `"unix"` (default) or a TCP port on localhost.
    pub console: Console,
    /// `description`: shown by `systemctl status`.
    pub description: Option<String>,
    /// `enable`: a disabled IOC gets no unit; a deployed one is removed.
    pub enable: bool,
    /// `healthCheck`: what proves the IOC came up.
    pub health_check: HealthCheck,
}

/// `epnixDeploy.tops.<top>.iocs.<name>.healthCheck`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// `settleTime`: seconds the unit must stay up without a restart (default 5).
    pub settle_time: u64,
    /// `readyLine`: text the IOC prints once it runs, looked for in its output
    /// since this start; `null` turns the check off. Default: EPICS's
    /// `iocRun: All initialization complete`.
    pub ready_line: Option<String>,
    /// `command`: a shell command run on the host after the IOC settled,
    /// e.g. a `caget` of a heartbeat PV; it passes on exit 0.
    pub command: Option<String>,
    /// `commandTimeout`: seconds the command may take (default 10).
    pub command_timeout: u64,
}

/// What EPICS base prints at the end of `iocInit`.
pub const EPICS_READY_LINE: &str = "iocRun: All initialization complete";

impl HealthCheck {
    /// Only "the unit runs and does not restart": for IOCs whose own checks
    /// are not at hand (a rollback, or IOCs a deploy did not change).
    pub fn running() -> HealthCheck {
        HealthCheck { settle_time: 2, ready_line: None, command: None, command_timeout: 1 }
    }

    /// Only "the unit is active": for IOCs a switch did not restart.
    pub fn active() -> HealthCheck {
        HealthCheck { settle_time: 0, ..HealthCheck::running() }
    }
}

impl Default for HealthCheck {
    fn default() -> HealthCheck {
        HealthCheck {
            settle_time: 5,
            ready_line: Some(EPICS_READY_LINE.to_owned()),
            command: None,
            command_timeout: 10,
        }
    }
}

/// Where procServ offers the IOC's console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Console {
    /// A UNIX socket in the unit's runtime directory, reachable by root only.
    Unix,
    /// A TCP port on localhost; it must be unique on the host.
    Tcp(u16),
}

impl Ioc {
    /// The startup script's path inside the top, for checking the build.
    pub fn startup_script_in_top(&self) -> Utf8PathBuf {
        // `parse` proved that this stays inside the top.
        normalize(&self.working_directory.join(&self.startup_script)).expect("checked at parse time")
    }
}

impl Config {
    /// Parses and checks the JSON that `nix eval --json <flake>#epnixDeploy` printed.
    pub fn parse(json: &Value) -> Result<Config, BadInput> {
        let root = Node::root(json);
        let map = root.object(ROOT_KEYS)?;
        let mut config = Config { hosts: BTreeMap::new(), tops: BTreeMap::new() };
        if let Some(hosts) = root.get(map, "hosts") {
            for (name, node) in hosts.attrs()? {
                check_name(&node, name, "host")?;
                config.hosts.insert(name.clone(), parse_host(&node)?);
            }
        }
        if let Some(tops) = root.get(map, "tops") {
            for (name, node) in tops.attrs()? {
                check_name(&node, name, "top")?;
                let top = parse_top(&node, &config.hosts)?;
                // A top's IOCs always share a host, even before it is assigned one.
                check_iocs_share_host(std::iter::once((name, &top)), "one host")?;
                config.tops.insert(name.clone(), top);
            }
        }
        config.check_hosts()?;
        Ok(config)
    }

    /// Two IOCs on one host must differ in name (it names the unit) and in TCP
    /// console port.
    fn check_hosts(&self) -> Result<(), BadInput> {
        for host in self.hosts.keys() {
            let tops = self.tops.iter().filter(|(_, top)| top.hosts.contains(host));
            check_iocs_share_host(tops, &format!("host `{host}`"))?;
        }
        Ok(())
    }
}

/// What the Nix twins of the checks and of the renderer (`nix/config.nix`,
/// `nix/unit.nix`) share with this module and `unit`: per level of
/// `epnixDeploy`, where it is, its keys, which of them are required and the
/// defaults of the others; the limits; the unit's hardening lines. It is
/// committed as `nix/schema.json`, which both read with `builtins.fromJSON`;
/// `tests/it/parity.rs` fails when the file is not this value (and rewrites
/// it with `UPDATE_SCHEMA=1`).
pub fn schema() -> Value {
    // The defaults are what `parse` fills in for a configuration that sets
    // only what is required; a key is required when leaving it out of that
    // configuration is refused as "required but not set".
    let minimal = json!({
        "hosts": { "h": { "hostname": "h" } },
        "tops": { "t": { "package": "/nix/store/t", "iocs": { "i": { "workingDirectory": "." } } } },
    });
    let config = Config::parse(&minimal).expect("the minimal configuration is valid");
    let (host, top) = (&config.hosts["h"], &config.tops["t"]);
    let ioc = &top.iocs["i"];
    let check = &ioc.health_check;
    let console = match ioc.console {
        Console::Unix => json!("unix"),
        Console::Tcp(port) => json!(port),
    };
    let level = |at: &[&str], keys: &[&str], defaults: Value| {
        let required: Vec<&str> = keys.iter().copied().filter(|key| is_required(&minimal, at, key)).collect();
        json!({ "at": at, "keys": keys, "required": required, "defaults": defaults })
    };
    let ioc_at = ["tops", "*", "iocs", "*"];
    json!({
        "generated": "by `config::schema` in src/config.rs: do not edit; rewrite with `UPDATE_SCHEMA=1 cargo test --test it schema`",
        "levels": {
            "root": level(&[], ROOT_KEYS, json!({})),
            "host": level(&["hosts", "*"], HOST_KEYS, json!({
                "sshOpts": host.ssh_opts,
                "tags": host.tags,
                "magicRollback": host.magic_rollback,
                "buildOnTarget": host.build_on_target,
                "local": host.local,
                "privilegeEscalationCommand": host.privilege_escalation_command,
            })),
            "hostProcServ": level(&["hosts", "*", "procServ"], HOST_PROCSERV_KEYS, json!({
                "package": host.procserv_package,
            })),
            "hostConserver": level(&["hosts", "*", "conserver"], HOST_CONSERVER_KEYS, json!({
                "enable": host.conserver.enable,
                "includeFile": host.conserver.include_file,
                "configFile": host.conserver.config_file,
                "service": host.conserver.service,
            })),
            "top": level(&["tops", "*"], TOP_KEYS, json!({
                "hosts": top.hosts,
                "activationTimeout": top.activation_timeout,
                "magicRollback": top.magic_rollback,
                "confirmTimeout": top.confirm_timeout,
            })),
            "ioc": level(&ioc_at, IOC_KEYS, json!({
                "startupScript": ioc.startup_script,
                "environment": ioc.environment,
                "description": ioc.description,
                "enable": ioc.enable,
            })),
            "iocProcServ": level(&[&ioc_at[..], &["procServ"]].concat(), IOC_PROCSERV_KEYS, json!({
                "console": console,
            })),
            "healthCheck": level(&[&ioc_at[..], &["healthCheck"]].concat(), HEALTH_CHECK_KEYS, json!({
                "settleTime": check.settle_time,
                "readyLine": check.ready_line,
                "command": check.command,
                "commandTimeout": check.command_timeout,
            })),
        },
        "limits": {
            "heartbeatInterval": HEARTBEAT_INTERVAL_SECS,
            "minConfirmTimeout": MIN_CONFIRM_TIMEOUT_SECS,
            "maxSeconds": MAX_SECONDS,
            "maxEnvValueBytes": MAX_ENV_VALUE_BYTES,
            "firstUnprivilegedPort": FIRST_UNPRIVILEGED_PORT,
            "reservedTopName": RESERVED_TOP_NAME,
        },
        "unit": {
            "hardening": crate::unit::HARDENING,
        },
    })
}

/// Whether `parse` refuses `config` without `key` at `at` (`*` is the one
/// attribute there; a level it lacks is added empty) as "required but not
/// set".
fn is_required(config: &Value, at: &[&str], key: &str) -> bool {
    let mut config = config.clone();
    let mut node = &mut config;
    for part in at {
        let map = node.as_object_mut().expect("a level is an attribute set");
        node = match *part {
            "*" => map.values_mut().next().expect("the minimal configuration names one of each"),
            part => map.entry(part).or_insert_with(|| json!({})),
        };
    }
    node.as_object_mut().expect("a level is an attribute set").remove(key);
    Config::parse(&config).is_err_and(|err| err.to_string().contains(&format!(".{key}: is required but not set")))
}

/// Checks the enabled IOCs of `tops`, which will run on one host, for clashes.
pub fn check_iocs_share_host<'a>(
    tops: impl Iterator<Item = (&'a String, &'a Top)>,
    host: &str,
) -> Result<(), BadInput> {
    let mut names: BTreeMap<&str, String> = BTreeMap::new();
    let mut ports: BTreeMap<u16, String> = BTreeMap::new();
    for (top_name, top) in tops {
        for (ioc_name, ioc) in top.iocs.iter().filter(|(_, ioc)| ioc.enable) {
            let path = format!("{ROOT}.tops.{}.iocs.{}", attr(top_name), attr(ioc_name));
            if let Some(other) = names.insert(ioc_name, path.clone()) {
                return Err(BadInput::new(format!(
                    "{path}: IOC name `{ioc_name}` is also used by {other}, and both run on {host}"
                ))
                .hint("IOC names must be unique per host: they name the unit `epnix-<ioc>.service`"));
            }
            if let Console::Tcp(port) = ioc.console {
                let console = format!("{path}.procServ.console");
                if let Some(other) = ports.insert(port, console.clone()) {
                    return Err(BadInput::new(format!(
                        "{console}: TCP port {port} is also used by {other}, and both run on {host}"
                    ))
                    .hint("give each IOC its own port, or use `procServ.console = \"unix\"`"));
                }
            }
        }
    }
    Ok(())
}

fn parse_host(node: &Node) -> Result<Host, BadInput> {
    let map = node.object(HOST_KEYS)?;
    let hostname = node.require(map, "hostname")?.string()?.to_owned();
    if hostname.is_empty() || hostname.starts_with('-') || hostname.chars().any(char::is_whitespace) {
        return Err(node.field("hostname").error("is not a valid host name or address"));
    }
    let expected_hostname = match node.get(map, "expectedHostname") {
        Some(n) => {
            let name = n.string()?;
            if !is_machine_name(name) {
                return Err(n.error(format!(
                    "`{name}` is not a host name (letters, digits, `_`, `-` and `.`, not starting with `-` or `.`, at most 64 characters)"
                ))
                .hint("set it to what `hostname` prints on the machine"));
            }
            Some(name.to_owned())
        }
        None => None,
    };
    let ssh_user = node.get(map, "sshUser").map(|n| n.string().map(str::to_owned)).transpose()?;
    let ssh_port = node.get(map, "sshPort").map(|n| n.port()).transpose()?;
    let ssh_opts = match node.get(map, "sshOpts") {
        Some(n) => n.strings()?,
        None => Vec::new(),
    };
    let tags = match node.get(map, "tags") {
        Some(n) => n.strings()?,
        None => Vec::new(),
    };
    let magic_rollback = node.get(map, "magicRollback").map(|n| n.boolean()).transpose()?.unwrap_or(true);
    let build_on_target = node.get(map, "buildOnTarget").map(|n| n.boolean()).transpose()?.unwrap_or(false);
    let procserv_package = match node.get(map, "procServ") {
        Some(ps) => {
            let ps_map = ps.object(HOST_PROCSERV_KEYS)?;
            match ps.get(ps_map, "package") {
                Some(p) => {
                    Some(store_path(&p, "set it to a procServ package, e.g. `epnix.packages.x86_64-linux.procServ`")?)
                }
                None => None,
            }
        }
        None => None,
    };
    let conserver = node.get(map, "conserver").map(|n| parse_conserver(&n)).transpose()?.unwrap_or_default();
    let local = node.get(map, "local").map(|n| n.boolean()).transpose()?.unwrap_or(false);
    if local && hostname != "localhost" {
        return Err(node
            .field("hostname")
            .error(format!("is `{hostname}`, but `local = true` deploys to the machine the tool runs on"))
            .hint("set `hostname = \"localhost\"`, or drop `local` to reach the host over SSH"));
    }
    let privilege_escalation_command = match node.get(map, "privilegeEscalationCommand") {
        Some(n) => {
            let words = n.strings()?;
            if words.is_empty() || words.iter().any(String::is_empty) {
                return Err(n
                    .error("must name a command, with no empty word")
                    .hint("e.g. `[ \"sudo\" \"-n\" \"--\" ]` (the default) or `[ \"doas\" \"-n\" ]`"));
            }
            words
        }
        None => crate::target::default_escalation(),
    };
    Ok(Host {
        hostname,
        expected_hostname,
        ssh_user,
        ssh_port,
        ssh_opts,
        tags,
        magic_rollback,
        build_on_target,
        procserv_package,
        conserver,
        local,
        privilege_escalation_command,
    })
}

fn parse_conserver(node: &Node) -> Result<Conserver, BadInput> {
    let map = node.object(HOST_CONSERVER_KEYS)?;
    let mut conserver = Conserver::default();
    if let Some(n) = node.get(map, "enable") {
        conserver.enable = n.boolean()?;
    }
    if let Some(n) = node.get(map, "includeFile") {
        conserver.include_file = host_file(&n)?;
    }
    if let Some(n) = node.get(map, "configFile") {
        conserver.config_file = host_file(&n)?;
    }
    if let Some(n) = node.get(map, "service") {
        let name = n.string()?;
        if !is_unit_name(name) {
            return Err(n.error(format!("`{name}` is not a systemd unit name")).hint(
                "name the unit that runs conserver, e.g. `conserver-server.service` (Debian) or `conserver.service`",
            ));
        }
        conserver.service = name.to_owned();
    }
    // The include file is rewritten whole: it must never be conserver's own
    // configuration.
    if conserver.include_file == conserver.config_file {
        return Err(node
            .field("includeFile")
            .error(format!(
                "`{}` is also `configFile`: epnix-deploy would overwrite conserver's configuration",
                conserver.include_file
            ))
            .hint("give the include file a name of its own, e.g. `/etc/conserver/epnix-deploy.cf`"));
    }
    Ok(conserver)
}

/// A file on the host: an absolute path, without white space (conserver's
/// `#include` line would lose it at the ends) or control characters.
fn host_file(node: &Node) -> Result<Utf8PathBuf, BadInput> {
    let path = node.string()?;
    if !path.starts_with('/') || path.ends_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(node
            .error(format!("`{path}` is not an absolute path to a file, without white space"))
            .hint("e.g. `/etc/conserver/epnix-deploy.cf`"));
    }
    Ok(Utf8PathBuf::from(path))
}

/// A name `systemctl` takes for a unit, and no option.
fn is_unit_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && !name.starts_with(['-', '.'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:@".contains(&b))
}

/// A name a machine can have: what the kernel holds (at most 64 bytes) and
/// systemd accepts, plus `_` for older machines.
fn is_machine_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with(['-', '.'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

fn parse_top(node: &Node, hosts: &BTreeMap<String, Host>) -> Result<Top, BadInput> {
    let map = node.object(TOP_KEYS)?;
    let package = store_path(
        &node.require(map, "package")?,
        "set it to the top's package, e.g. `self.packages.x86_64-linux.myTop`",
    )?;
    let top_hosts = match node.get(map, "hosts") {
        Some(n) => {
            let names = n.strings()?;
            if let Some(unknown) = names.iter().find(|name| !hosts.contains_key(*name)) {
                let known: Vec<&str> = hosts.keys().map(String::as_str).collect();
                return Err(n.error(format!("names host `{unknown}`, which is not in `{ROOT}.hosts`")).hint(
                    did_you_mean(unknown, &known).unwrap_or_else(|| format!("add `{ROOT}.hosts.{}`", attr(unknown))),
                ));
            }
            names
        }
        None => Vec::new(),
    };
    let iocs_node = node.require(map, "iocs")?;
    let mut iocs = BTreeMap::new();
    for (name, ioc_node) in iocs_node.attrs()? {
        check_name(&ioc_node, name, "IOC")?;
        iocs.insert(name.clone(), parse_ioc(&ioc_node)?);
    }
    if iocs.is_empty() {
        return Err(iocs_node
            .error("defines no IOC")
            .hint("add one, e.g. `iocs.myIoc.workingDirectory = \"iocBoot/iocMyIoc\";`"));
    }
    let activation_timeout = node
        .get(map, "activationTimeout")
        .map(|n| n.seconds(1))
        .transpose()?
        .unwrap_or(DEFAULT_ACTIVATION_TIMEOUT_SECS);
    let magic_rollback = node.get(map, "magicRollback").map(|n| n.boolean()).transpose()?.unwrap_or(true);
    let confirm_timeout = node
        .get(map, "confirmTimeout")
        .map(|n| parse_confirm_timeout(&n))
        .transpose()?
        .unwrap_or(DEFAULT_CONFIRM_TIMEOUT_SECS);
    let activation = node.field("activationTimeout");
    for (name, ioc) in &iocs {
        let check = node.field("iocs").field(name).field("healthCheck");
        check_fits_activation(&check, &ioc.health_check, &activation, activation_timeout)?;
    }
    Ok(Top { package, hosts: top_hosts, iocs, activation_timeout, magic_rollback, confirm_timeout })
}

fn parse_confirm_timeout(node: &Node) -> Result<u64, BadInput> {
    let secs = node.seconds(0)?;
    if secs < MIN_CONFIRM_TIMEOUT_SECS {
        return Err(node
            .error(format!(
                "must be at least {MIN_CONFIRM_TIMEOUT_SECS} seconds (more than twice the heartbeat interval of \
                 {HEARTBEAT_INTERVAL_SECS}s), not {secs}"
            ))
            .hint(format!(
                "a shorter timeout can roll a healthy deploy back between two heartbeats; the default is \
                 {DEFAULT_CONFIRM_TIMEOUT_SECS}"
            )));
    }
    Ok(secs)
}

/// An IOC's health check must fit in its top's `activationTimeout`, after
/// which the deploy gives up on every IOC still being checked: once its
/// ready line appeared, the IOC settles for `settleTime`, then its command
/// may run for up to `commandTimeout`. (How long the ready line takes is up
/// to the IOC, and not known here.)
fn check_fits_activation(
    node: &Node,
    check: &HealthCheck,
    activation: &Node,
    activation_timeout: u64,
) -> Result<(), BadInput> {
    let (needed, parts, shorten) = match check.command {
        Some(_) => (
            check.settle_time + check.command_timeout,
            format!("settleTime {} + commandTimeout {}", check.settle_time, check.command_timeout),
            "`settleTime` or `commandTimeout`",
        ),
        None => (check.settle_time, format!("settleTime {}", check.settle_time), "`settleTime`"),
    };
    if needed <= activation_timeout {
        return Ok(());
    }
    Err(node
        .error(format!(
            "may need {needed} seconds after the ready line ({parts}), more than the top's activationTimeout of \
             {activation_timeout}: the deploy would give up before the check could finish"
        ))
        .hint(format!("raise `{}` to at least {needed}, or shorten {shorten}", activation.path)))
}

fn parse_ioc(node: &Node) -> Result<Ioc, BadInput> {
    let map = node.object(IOC_KEYS)?;

    let wd_node = node.require(map, "workingDirectory")?;
    let working_directory = relative_inside_top(&wd_node, wd_node.string()?, Utf8Path::new(""))?;

    let startup_script = match node.get(map, "startupScript") {
        Some(n) => {
            let script = n.string()?;
            let inside = relative_inside_top(&n, script, &working_directory)?;
            if inside == working_directory {
                return Err(n.error("must name a file").hint("the EPNix default is `./st.cmd`"));
            }
            if script.starts_with("./") || script.starts_with("../") {
                script.to_owned()
            } else {
                format!("./{script}")
            }
        }
        None => "./st.cmd".to_owned(),
    };

    let mut environment = BTreeMap::new();
    if let Some(env_node) = node.get(map, "environment") {
        for (key, value_node) in env_node.attrs()? {
            if !is_env_name(key) {
                return Err(value_node
                    .error("is not a valid environment variable name")
                    .hint("use letters, digits and `_`, not starting with a digit"));
            }
            let value = value_node.string()?;
            if value.len() > MAX_ENV_VALUE_BYTES {
                return Err(value_node
                    .error(format!(
                        "is {} bytes long, more than the {MAX_ENV_VALUE_BYTES} bytes ({} KiB) an environment value may \
                         have",
                        value.len(),
                        MAX_ENV_VALUE_BYTES / 1024
                    ))
                    .hint("put large data in a file of the top, and pass its path"));
            }
            if value.contains(['\n', '\r', '\0']) {
                return Err(
                    value_node.error("contains a line break or NUL, which a unit's `Environment=` cannot carry")
                );
            }
            environment.insert(key.clone(), value.to_owned());
        }
    }

    let console = match node.get(map, "procServ") {
        Some(ps) => {
            let ps_map = ps.object(IOC_PROCSERV_KEYS)?;
            match ps.get(ps_map, "console") {
                Some(c) => parse_console(&c)?,
                None => Console::Unix,
            }
        }
        None => Console::Unix,
    };

    let description = node.get(map, "description").map(|n| parse_description(&n)).transpose()?;
    let enable = node.get(map, "enable").map(|n| n.boolean()).transpose()?.unwrap_or(true);
    let health_check = match node.get(map, "healthCheck") {
        Some(n) => parse_health_check(&n)?,
        None => HealthCheck::default(),
    };
    Ok(Ioc { working_directory, startup_script, environment, console, description, enable, health_check })
}

fn parse_description(node: &Node) -> Result<String, BadInput> {
    let text = node.one_line()?;
    // `Description=` does not unescape, so there is no way to write a
    // backslash at its end that systemd would not take as a line continuation,
    // swallowing the unit's next line.
    if text.ends_with('\\') {
        return Err(node
            .error("ends in a backslash, which systemd reads as joining the next line of the unit")
            .hint("remove the backslash, or end the description with another character"));
    }
    Ok(text)
}

fn parse_health_check(node: &Node) -> Result<HealthCheck, BadInput> {
    let map = node.object(HEALTH_CHECK_KEYS)?;
    let mut check = HealthCheck::default();
    if let Some(n) = node.get(map, "settleTime") {
        check.settle_time = n.seconds(0)?;
    }
    if let Some(n) = node.get(map, "readyLine") {
        check.ready_line = match n.value {
            Value::Null => None,
            _ => Some(n.one_line()?).filter(|line| !line.is_empty()),
        };
    }
    if let Some(n) = node.get(map, "command") {
        check.command = match n.value {
            Value::Null => None,
            _ => Some(n.string()?.to_owned()),
        };
    }
    if let Some(n) = node.get(map, "commandTimeout") {
        check.command_timeout = n.seconds(1)?;
    }
    Ok(check)
}

fn parse_console(node: &Node) -> Result<Console, BadInput> {
    match node.value {
        Value::String(s) if s == "unix" => Ok(Console::Unix),
        Value::Number(_) => {
            let port = node.port()?;
            if port < FIRST_UNPRIVILEGED_PORT {
                return Err(node
                    .error(format!(
                        "TCP port {port} is below {FIRST_UNPRIVILEGED_PORT}: the IOC runs as a dynamic user without \
                         `CAP_NET_BIND_SERVICE`, and cannot bind it"
                    ))
                    .hint(format!("pick a port from {FIRST_UNPRIVILEGED_PORT} up, e.g. 2001, or use `\"unix\"`")));
            }
            Ok(Console::Tcp(port))
        }
        _ => Err(node.error(format!("must be \"unix\" or a TCP port number, not {}", node.kind()))),
    }
}

/// Normalizes `path` relative to `base` (both inside the top) and refuses
/// anything that would leave the top.
fn relative_inside_top(node: &Node, path: &str, base: &Utf8Path) -> Result<Utf8PathBuf, BadInput> {
    if path.starts_with('/') {
        return Err(node
            .error(format!("`{path}` is absolute"))
            .hint("give a path relative to the top, e.g. `iocBoot/iocMyIoc`"));
    }
    if path.chars().any(char::is_control) {
        return Err(node.error("contains a control character"));
    }
    normalize(&base.join(path)).ok_or_else(|| {
        node.error(format!("`{path}` leads outside the top"))
            .hint("a top is deployed as one store path; refer only to files inside it")
    })
}

/// Resolves `.` and `..` lexically; `None` if the path climbs above its start.
fn normalize(path: &Utf8Path) -> Option<Utf8PathBuf> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.as_str().split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            _ => parts.push(part),
        }
    }
    Some(if parts.is_empty() { Utf8PathBuf::from(".") } else { Utf8PathBuf::from(parts.join("/")) })
}

/// Host, top and IOC names become unit names, paths and profile names.
pub fn is_safe_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=64).contains(&bytes.len())
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
}

/// A package: `nix eval --json` turns a derivation into its store path.
fn store_path(node: &Node, hint: &str) -> Result<Utf8PathBuf, BadInput> {
    let path = node.string().map_err(|_| node.error("must be a derivation or a store path").hint(hint))?;
    if !path.starts_with('/') {
        return Err(node.error(format!("`{path}` is not a store path")));
    }
    Ok(Utf8PathBuf::from(path))
}

/// The profile name that the host's procServ takes beside the tops' profiles
/// (`layout::procserv_profile`): no top may have it.
const RESERVED_TOP_NAME: &str = "procServ";

fn check_name(node: &Node, name: &str, what: &str) -> Result<(), BadInput> {
    if what == "top" && name == RESERVED_TOP_NAME {
        return Err(node
            .error(format!("`{name}` is the name of the profile of the host's procServ, not a top's"))
            .hint("rename the top"));
    }
    if is_safe_name(name) {
        Ok(())
    } else {
        Err(node
            .error(format!("`{name}` is not a valid {what} name"))
            .hint("names may use letters, digits, `_` and `-`, must not start with `-`, and are at most 64 characters"))
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Writes an attribute name as Nix would need it in a path.
pub fn attr(name: &str) -> String {
    let ident = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-'".contains(c));
    if ident { name.to_owned() } else { format!("{name:?}") }
}

fn did_you_mean(word: &str, candidates: &[&str]) -> Option<String> {
    crate::suggest::closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// A JSON value together with its attribute path, for messages.
struct Node<'a> {
    path: String,
    value: &'a Value,
}

impl<'a> Node<'a> {
    fn root(value: &'a Value) -> Node<'a> {
        Node { path: ROOT.to_owned(), value }
    }

    fn child(&self, key: &str, value: &'a Value) -> Node<'a> {
        Node { path: format!("{}.{}", self.path, attr(key)), value }
    }

    /// The path of a field that may be absent, for errors about it.
    fn field(&self, key: &str) -> Node<'a> {
        self.child(key, &Value::Null)
    }

    fn error(&self, message: impl std::fmt::Display) -> BadInput {
        BadInput::new(format!("{}: {message}", self.path))
    }

    fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "a list",
            Value::Object(_) => "an attribute set",
        }
    }

    /// The attribute set, refusing keys outside `known`.
    fn object(&self, known: &[&str]) -> Result<&'a Map<String, Value>, BadInput> {
        let map = self
            .value
            .as_object()
            .ok_or_else(|| self.error(format!("must be an attribute set, not {}", self.kind())))?;
        if let Some(key) = map.keys().find(|key| !known.contains(&key.as_str())) {
            let err = self.child(key, &Value::Null).error("is not a known option");
            let hint = did_you_mean(key, known).unwrap_or_else(|| format!("known options here: {}", known.join(", ")));
            return Err(err.hint(hint));
        }
        Ok(map)
    }

    /// An attribute set whose keys are names chosen by the user.
    fn attrs(&self) -> Result<Vec<(&'a String, Node<'a>)>, BadInput> {
        let map = self
            .value
            .as_object()
            .ok_or_else(|| self.error(format!("must be an attribute set, not {}", self.kind())))?;
        Ok(map.iter().map(|(key, value)| (key, self.child(key, value))).collect())
    }

    fn get(&self, map: &'a Map<String, Value>, key: &str) -> Option<Node<'a>> {
        map.get(key).map(|value| self.child(key, value))
    }

    fn require(&self, map: &'a Map<String, Value>, key: &str) -> Result<Node<'a>, BadInput> {
        self.get(map, key).ok_or_else(|| self.field(key).error("is required but not set"))
    }

    fn string(&self) -> Result<&'a str, BadInput> {
        self.value.as_str().ok_or_else(|| self.error(format!("must be a string, not {}", self.kind())))
    }

    fn one_line(&self) -> Result<String, BadInput> {
        let s = self.string()?;
        if s.contains(['\n', '\r', '\0']) {
            return Err(self.error("must be a single line"));
        }
        Ok(s.to_owned())
    }

    fn strings(&self) -> Result<Vec<String>, BadInput> {
        let items = self
            .value
            .as_array()
            .ok_or_else(|| self.error(format!("must be a list of strings, not {}", self.kind())))?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str().map(str::to_owned).ok_or_else(|| self.error(format!("item {i} must be a string")))
            })
            .collect()
    }

    fn boolean(&self) -> Result<bool, BadInput> {
        self.value.as_bool().ok_or_else(|| self.error(format!("must be true or false, not {}", self.kind())))
    }

    /// A whole number of seconds, from `min` to [`MAX_SECONDS`]. A JSON float
    /// is refused even when whole: `nix eval --json` prints a whole float
    /// below a million (`30.0`) as an integer, so what arrives as a float is
    /// fractional or far too large anyway (`1.0e14` prints as `1e+14`).
    fn seconds(&self, min: u64) -> Result<u64, BadInput> {
        let secs = self
            .value
            .as_u64()
            .ok_or_else(|| self.error(format!("must be a whole number of seconds, not {}", self.value)))?;
        if secs < min {
            let unit = if min == 1 { "second" } else { "seconds" };
            return Err(self.error(format!("must be at least {min} {unit}, not {secs}")));
        }
        if secs > MAX_SECONDS {
            return Err(self.error(format!("must be at most {MAX_SECONDS} seconds (a day), not {secs}")));
        }
        Ok(secs)
    }

    fn port(&self) -> Result<u16, BadInput> {
        self.value
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| self.error(format!("must be a port number from 1 to 65535, not {}", self.value)))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn example() -> Value {
        json!({
            "hosts": { "ioc-server-1": { "hostname": "10.0.0.5", "sshUser": "root", "sshPort": 22, "sshOpts": [], "tags": ["linac"] } },
            "tops": { "myTop": {
                "package": "/nix/store/aaaa-myTop",
                "hosts": ["ioc-server-1"],
                "iocs": { "myIoc": {
                    "workingDirectory": "iocBoot/iocMyIoc",
                    "startupScript": "./st.cmd",
                    "environment": { "EPICS_CA_ADDR_LIST": "10.0.0.255" },
                    "procServ": { "console": "unix" },
                    "description": "My IOC",
                    "enable": true
                } }
            } }
        })
    }

    fn error_of(json: Value) -> String {
        Config::parse(&json).unwrap_err().to_string()
    }

    #[test]
    fn hosts_carry_their_tags_and_may_build_on_themselves() {
        let host = &Config::parse(&example()).unwrap().hosts["ioc-server-1"];
        assert_eq!((host.tags.as_slice(), host.build_on_target), (&["linac".to_owned()][..], false));
        let mut json = example();
        json["hosts"]["ioc-server-1"]["buildOnTarget"] = json!(true);
        assert!(Config::parse(&json).unwrap().hosts["ioc-server-1"].build_on_target);
        json["hosts"]["ioc-server-1"]["buildOnTarget"] = json!("yes");
        assert!(error_of(json).starts_with("epnixDeploy.hosts.ioc-server-1.buildOnTarget: must be"));
    }

    #[test]
    fn a_host_may_bring_its_procserv_from_nix_and_no_top_takes_its_name() {
        let mut json = example();
        json["hosts"]["ioc-server-1"]["procServ"] = json!({ "package": "/nix/store/pppp-procServ-2.8.0" });
        let host = &Config::parse(&json).unwrap().hosts["ioc-server-1"];
        assert_eq!(host.procserv_package.as_deref(), Some(Utf8Path::new("/nix/store/pppp-procServ-2.8.0")));
        assert_eq!(Config::parse(&example()).unwrap().hosts["ioc-server-1"].procserv_package, None);

        json["hosts"]["ioc-server-1"]["procServ"] = json!({ "package": "procServ" });
        assert!(
            error_of(json.clone())
                .starts_with("epnixDeploy.hosts.ioc-server-1.procServ.package: `procServ` is not a store path")
        );
        json["hosts"]["ioc-server-1"]["procServ"] = json!({ "pkg": "/nix/store/p" });
        assert!(error_of(json).contains("procServ.pkg: is not a known option"));

        let mut json = example();
        let top = json["tops"].as_object_mut().unwrap().remove("myTop").unwrap();
        json["tops"]["procServ"] = top;
        assert!(
            error_of(json)
                .contains("epnixDeploy.tops.procServ: `procServ` is the name of the profile of the host's procServ")
        );
    }

    #[test]
    fn a_host_may_be_this_machine_and_reach_root_through_another_command() {
        let host = Config::parse(&example()).unwrap().hosts["ioc-server-1"].clone();
        assert!(!host.local);
        assert_eq!(host.privilege_escalation_command, ["sudo", "-n", "--"]);

        let mut json = example();
        json["hosts"]["ioc-server-1"]["privilegeEscalationCommand"] = json!(["doas", "-n"]);
        json["hosts"]["lab"] = json!({ "hostname": "localhost", "local": true });
        let config = Config::parse(&json).unwrap();
        assert_eq!(config.hosts["ioc-server-1"].privilege_escalation_command, ["doas", "-n"]);
        assert!(config.hosts["lab"].local);

        let at = "epnixDeploy.hosts.ioc-server-1";
        let mut json = example();
        json["hosts"]["ioc-server-1"]["local"] = json!(true);
        let err = error_of(json);
        assert!(err.starts_with(&format!("{at}.hostname: is `10.0.0.5`, but `local = true` deploys")), "{err}");
        for bad in [json!([]), json!(["sudo", ""])] {
            let mut json = example();
            json["hosts"]["ioc-server-1"]["privilegeEscalationCommand"] = bad;
            let err = error_of(json);
            assert!(err.starts_with(&format!("{at}.privilegeEscalationCommand: must name a command")), "{err}");
        }
    }

    #[test]
    fn a_host_may_put_conserver_in_front_of_its_iocs() {
        assert_eq!(Config::parse(&example()).unwrap().hosts["ioc-server-1"].conserver, Conserver::default());
        assert!(!Conserver::default().enable);
        let mut json = example();
        json["hosts"]["ioc-server-1"]["conserver"] = json!({ "enable": true, "includeFile": "/etc/conserver/iocs.cf" });
        let conserver = Config::parse(&json).unwrap().hosts["ioc-server-1"].conserver.clone();
        assert!(conserver.enable);
        assert_eq!(conserver.include_file, "/etc/conserver/iocs.cf");
        assert_eq!(conserver.config_file, "/etc/conserver/conserver.cf");
        assert_eq!(conserver.service, "conserver-server.service");

        let error = |conserver: Value| {
            let mut json = example();
            json["hosts"]["ioc-server-1"]["conserver"] = conserver;
            error_of(json)
        };
        let at = "epnixDeploy.hosts.ioc-server-1.conserver";
        assert_eq!(error(json!({ "enable": "yes" })), format!("{at}.enable: must be true or false, not a string"));
        for bad in ["iocs.cf", "/etc/conserver/", "/etc/my iocs.cf", "/etc/a\nb"] {
            assert!(
                error(json!({ "includeFile": bad }))
                    .starts_with(&format!("{at}.includeFile: `{bad}` is not an absolute path to a file")),
                "{bad}"
            );
        }
        assert!(error(json!({ "configFile": "conserver.cf" })).starts_with(&format!("{at}.configFile: ")));
        let err = error(json!({ "includeFile": "/etc/conserver.cf", "configFile": "/etc/conserver.cf" }));
        assert!(err.starts_with(&format!("{at}.includeFile: `/etc/conserver.cf` is also `configFile`")), "{err}");
        assert!(
            error(json!({ "service": "-H host" }))
                .starts_with(&format!("{at}.service: `-H host` is not a systemd unit name"))
        );
        assert!(error(json!({ "enabled": true })).contains("hint: did you mean `enable`?"));
        let mut json = example();
        json["hosts"]["ioc-server-1"]["conserver"] =
            json!({ "service": "conserver.service", "configFile": "/etc/conserver.cf" });
        assert_eq!(Config::parse(&json).unwrap().hosts["ioc-server-1"].conserver.service, "conserver.service");
    }

    #[test]
    fn a_host_may_answer_to_another_name_than_its_attribute() {
        assert_eq!(Config::parse(&example()).unwrap().hosts["ioc-server-1"].expected_hostname, None);
        let mut json = example();
        json["hosts"]["ioc-server-1"]["expectedHostname"] = json!("lab-ioc-07.example.org");
        let host = &Config::parse(&json).unwrap().hosts["ioc-server-1"];
        assert_eq!(host.expected_hostname.as_deref(), Some("lab-ioc-07.example.org"));
        for bad in ["", "-x", ".x", "ioc 1", "$(reboot)", &"a".repeat(65)] {
            json["hosts"]["ioc-server-1"]["expectedHostname"] = json!(bad);
            let err = error_of(json.clone());
            assert!(
                err.starts_with(&format!(
                    "epnixDeploy.hosts.ioc-server-1.expectedHostname: `{bad}` is not a host name"
                )),
                "{err}"
            );
        }
        json["hosts"]["ioc-server-1"]["expectedHostname"] = json!(7);
        assert!(error_of(json).contains("expectedHostname: must be a string, not a number"));
    }

    #[test]
    fn the_readme_example_parses() {
        let config = Config::parse(&example()).unwrap();
        let host = &config.hosts["ioc-server-1"];
        assert_eq!(host.ssh_port, Some(22));
        let ioc = &config.tops["myTop"].iocs["myIoc"];
        assert_eq!(ioc.working_directory, "iocBoot/iocMyIoc");
        assert_eq!(ioc.startup_script_in_top(), "iocBoot/iocMyIoc/st.cmd");
        assert_eq!(ioc.console, Console::Unix);
    }

    #[test]
    fn defaults_follow_epnix() {
        let mut json = example();
        json["tops"]["myTop"]["iocs"]["myIoc"] = json!({ "workingDirectory": "./iocBoot//iocMyIoc/" });
        let ioc = Config::parse(&json).unwrap().tops["myTop"].iocs["myIoc"].clone();
        assert_eq!(ioc.working_directory, "iocBoot/iocMyIoc");
        assert_eq!(ioc.startup_script, "./st.cmd");
        assert!(ioc.enable);
        assert_eq!(ioc.console, Console::Unix);
    }

    #[test]
    fn unknown_keys_get_a_suggestion() {
        let mut json = example();
        json["tops"]["myTop"]["iocs"]["myIoc"]["workingDir"] = json!("x");
        let err = error_of(json);
        assert!(err.starts_with("epnixDeploy.tops.myTop.iocs.myIoc.workingDir: is not a known option"), "{err}");
        assert!(err.contains("hint: did you mean `workingDirectory`?"), "{err}");
    }

    #[test]
    fn paths_must_stay_inside_the_top() {
        let mut json = example();
        json["tops"]["myTop"]["iocs"]["myIoc"]["workingDirectory"] = json!("iocBoot/../../etc");
        assert!(error_of(json).starts_with(
            "epnixDeploy.tops.myTop.iocs.myIoc.workingDirectory: `iocBoot/../../etc` leads outside the top"
        ));

        let mut json = example();
        json["tops"]["myTop"]["iocs"]["myIoc"]["startupScript"] = json!("../../../st.cmd");
        assert!(error_of(json).contains("startupScript: `../../../st.cmd` leads outside the top"));

        let mut json = example();
        json["tops"]["myTop"]["iocs"]["myIoc"]["workingDirectory"] = json!("/etc");
        assert!(error_of(json).contains("workingDirectory: `/etc` is absolute"));
    }

    #[test]
    fn a_startup_script_may_climb_within_the_top() {
        let mut json = example();
        json["tops"]["myTop"]["iocs"]["myIoc"]["startupScript"] = json!("../common/st.cmd");
        let ioc = Config::parse(&json).unwrap().tops["myTop"].iocs["myIoc"].clone();
        assert_eq!(ioc.startup_script_in_top(), "iocBoot/common/st.cmd");
        assert_eq!(ioc.startup_script, "../common/st.cmd");
    }

    #[test]
    fn a_bare_script_name_is_made_relative() {
        let mut json = example();
        json["tops"]["myTop"]["iocs"]["myIoc"]["startupScript"] = json!("st.cmd");
        assert_eq!(Config::parse(&json).unwrap().tops["myTop"].iocs["myIoc"].startup_script, "./st.cmd");
    }

    #[test]
    fn names_must_be_safe_unit_names() {
        let mut json = example();
        json["tops"]["myTop"]["iocs"]["bad name"] = json!({ "workingDirectory": "x" });
        assert!(
            error_of(json).starts_with("epnixDeploy.tops.myTop.iocs.\"bad name\": `bad name` is not a valid IOC name")
        );
        assert!(is_safe_name("_a-1"));
        assert!(!is_safe_name("-a"));
        assert!(!is_safe_name(&"a".repeat(65)));
        assert!(!is_safe_name(""));
    }

    #[test]
    fn duplicate_tcp_ports_on_one_host_are_refused() {
        let mut json = example();
        json["tops"]["myTop"]["iocs"]["myIoc"]["procServ"]["console"] = json!(2000);
        json["tops"]["other"] = json!({
            "package": "/nix/store/bbbb-other", "hosts": ["ioc-server-1"],
            "iocs": { "second": { "workingDirectory": "x", "procServ": { "console": 2000 } } }
        });
        let err = error_of(json);
        assert!(err.contains("TCP port 2000 is also used by"), "{err}");
        assert!(err.contains("host `ioc-server-1`"), "{err}");
    }

    #[test]
    fn a_disabled_ioc_does_not_clash() {
        let mut json = example();
        json["tops"]["other"] = json!({
            "package": "/nix/store/bbbb-other", "hosts": ["ioc-server-1"],
            "iocs": { "myIoc": { "workingDirectory": "x", "enable": false } }
        });
        assert!(Config::parse(&json).is_ok());
    }

    #[test]
    fn duplicate_ioc_names_on_one_host_are_refused() {
        let mut json = example();
        json["tops"]["other"] = json!({
            "package": "/nix/store/bbbb-other", "hosts": ["ioc-server-1"],
            "iocs": { "myIoc": { "workingDirectory": "x" } }
        });
        assert!(error_of(json).contains("IOC name `myIoc` is also used by epnixDeploy.tops.myTop.iocs.myIoc"));
    }

    #[test]
    fn type_errors_name_the_path_and_the_kind() {
        let mut json = example();
        json["hosts"]["ioc-server-1"]["sshPort"] = json!("22");
        assert_eq!(
            error_of(json),
            "epnixDeploy.hosts.ioc-server-1.sshPort: must be a port number from 1 to 65535, not \"22\""
        );
        let mut json = example();
        json["tops"]["myTop"]["iocs"]["myIoc"]["procServ"]["console"] = json!("tcp");
        assert!(error_of(json).contains("console: must be \"unix\" or a TCP port number, not a string"));
    }

    #[test]
    fn unknown_host_in_a_top_is_refused_with_a_suggestion() {
        let mut json = example();
        json["tops"]["myTop"]["hosts"] = json!(["ioc-server-l"]);
        let err = error_of(json);
        assert!(err.contains("names host `ioc-server-l`, which is not in `epnixDeploy.hosts`"), "{err}");
        assert!(err.contains("did you mean `ioc-server-1`?"), "{err}");
    }

    #[test]
    fn environment_is_checked() {
        let mut json = example();
        json["tops"]["myTop"]["iocs"]["myIoc"]["environment"] = json!({ "1BAD": "x" });
        assert!(error_of(json).contains("environment.\"1BAD\": is not a valid environment variable name"));
        let mut json = example();
        json["tops"]["myTop"]["iocs"]["myIoc"]["environment"] = json!({ "A": "x\ny" });
        assert!(error_of(json).contains("environment.A: contains a line break"));
    }

    #[test]
    fn health_checks_default_to_the_epics_ready_line_and_can_be_changed() {
        let ioc = &Config::parse(&example()).unwrap().tops["myTop"].iocs["myIoc"];
        assert_eq!(ioc.health_check.ready_line.as_deref(), Some(EPICS_READY_LINE));
        let mut json = example();
        json["tops"]["myTop"]["iocs"]["myIoc"]["healthCheck"] =
            json!({ "readyLine": null, "settleTime": 0, "command": "caget hb", "commandTimeout": 3 });
        let ioc = Config::parse(&json).unwrap().tops["myTop"].iocs["myIoc"].clone();
        assert_eq!(
            ioc.health_check,
            HealthCheck { settle_time: 0, ready_line: None, command: Some("caget hb".into()), command_timeout: 3 }
        );
        json["tops"]["myTop"]["iocs"]["myIoc"]["healthCheck"] = json!({ "settleTime": -1 });
        assert!(error_of(json).contains("healthCheck.settleTime: must be a whole number of seconds, not -1"));
    }

    #[test]
    fn activation_settings_of_a_top() {
        let top = &Config::parse(&example()).unwrap().tops["myTop"];
        assert_eq!((top.activation_timeout, top.magic_rollback, top.confirm_timeout), (60, true, 30));
        let mut json = example();
        json["tops"]["myTop"]["confirmTimeout"] = json!(5);
        json["hosts"]["ioc-server-1"]["magicRollback"] = json!(false);
        let config = Config::parse(&json).unwrap();
        assert_eq!(config.tops["myTop"].confirm_timeout, 5);
        assert!(!config.hosts["ioc-server-1"].magic_rollback);
    }

    /// `example()` with some settings of its top and of its IOC replaced.
    fn example_with(top: Value, ioc: Value) -> Value {
        let mut json = example();
        for (key, value) in top.as_object().unwrap() {
            json["tops"]["myTop"][key] = value.clone();
        }
        for (key, value) in ioc.as_object().unwrap() {
            json["tops"]["myTop"]["iocs"]["myIoc"][key] = value.clone();
        }
        json
    }

    #[test]
    fn the_confirm_timeout_outlasts_two_heartbeats() {
        let err = error_of(example_with(json!({ "confirmTimeout": 3 }), json!({})));
        assert_eq!(
            err,
            "epnixDeploy.tops.myTop.confirmTimeout: must be at least 5 seconds (more than twice the heartbeat \
             interval of 2s), not 3\n\
             hint: a shorter timeout can roll a healthy deploy back between two heartbeats; the default is 30"
        );
        assert!(error_of(example_with(json!({ "confirmTimeout": 4 }), json!({}))).contains("not 4"));
        let config = Config::parse(&example_with(json!({ "confirmTimeout": 5 }), json!({}))).unwrap();
        assert_eq!(config.tops["myTop"].confirm_timeout, MIN_CONFIRM_TIMEOUT_SECS);
    }

    #[test]
    fn an_activation_timeout_of_zero_is_refused() {
        let err = error_of(example_with(json!({ "activationTimeout": 0 }), json!({})));
        assert_eq!(err, "epnixDeploy.tops.myTop.activationTimeout: must be at least 1 second, not 0");
        assert!(
            Config::parse(&example_with(
                json!({ "activationTimeout": 1 }),
                json!({ "healthCheck": { "settleTime": 0 } })
            ))
            .is_ok()
        );
    }

    #[test]
    fn seconds_are_whole_and_at_most_a_day() {
        let top = |key: &str, value: Value| error_of(example_with(json!({ key: value }), json!({})));
        let check =
            |key: &str, value: Value| error_of(example_with(json!({}), json!({ "healthCheck": { key: value } })));
        // What `nix eval --json` prints for `confirmTimeout = 1.0e14`, and for `100000000000000`.
        let float: Value = serde_json::from_str("1e+14").unwrap();
        assert_eq!(
            top("confirmTimeout", float),
            "epnixDeploy.tops.myTop.confirmTimeout: must be a whole number of seconds, not 100000000000000.0"
        );
        assert_eq!(
            top("confirmTimeout", json!(100_000_000_000_000u64)),
            "epnixDeploy.tops.myTop.confirmTimeout: must be at most 86400 seconds (a day), not 100000000000000"
        );
        assert!(
            top("activationTimeout", json!(86_401))
                .ends_with("activationTimeout: must be at most 86400 seconds (a day), not 86401")
        );
        assert!(
            top("activationTimeout", json!(1.5))
                .ends_with("activationTimeout: must be a whole number of seconds, not 1.5")
        );
        assert!(
            check("settleTime", json!(86_401))
                .ends_with("healthCheck.settleTime: must be at most 86400 seconds (a day), not 86401")
        );
        assert!(
            check("commandTimeout", json!(-2))
                .ends_with("healthCheck.commandTimeout: must be a whole number of seconds, not -2")
        );
        assert!(
            check("commandTimeout", json!(0)).ends_with("healthCheck.commandTimeout: must be at least 1 second, not 0")
        );

        let config = example_with(
            json!({ "activationTimeout": MAX_SECONDS, "confirmTimeout": MAX_SECONDS }),
            json!({ "healthCheck": { "settleTime": MAX_SECONDS - 1, "command": "true", "commandTimeout": 1 } }),
        );
        assert!(Config::parse(&config).is_ok());
    }

    #[test]
    fn a_health_check_must_fit_in_the_activation_timeout() {
        let check = json!({ "settleTime": 50, "command": "caget hb", "commandTimeout": 20 });
        let err = error_of(example_with(json!({}), json!({ "healthCheck": check })));
        assert_eq!(
            err,
            "epnixDeploy.tops.myTop.iocs.myIoc.healthCheck: may need 70 seconds after the ready line (settleTime 50 + \
             commandTimeout 20), more than the top's activationTimeout of 60: the deploy would give up before the \
             check could finish\n\
             hint: raise `epnixDeploy.tops.myTop.activationTimeout` to at least 70, or shorten `settleTime` or \
             `commandTimeout`"
        );
        assert!(
            Config::parse(&example_with(json!({ "activationTimeout": 70 }), json!({ "healthCheck": check }))).is_ok()
        );

        // Without a command, its timeout is not waited for.
        let check = json!({ "settleTime": 11 });
        let err = error_of(example_with(json!({ "activationTimeout": 10 }), json!({ "healthCheck": check })));
        assert!(
            err.contains("healthCheck: may need 11 seconds after the ready line (settleTime 11), more than"),
            "{err}"
        );
        assert!(err.ends_with("to at least 11, or shorten `settleTime`"), "{err}");
        let short = example_with(json!({ "activationTimeout": 6 }), json!({ "healthCheck": { "settleTime": 1 } }));
        assert!(Config::parse(&short).is_ok(), "the default commandTimeout of 10 does not count without a command");
    }

    #[test]
    fn a_description_must_not_end_in_a_backslash() {
        let err = error_of(example_with(json!({}), json!({ "description": r"C:\epics\" })));
        assert!(
            err.starts_with(
                "epnixDeploy.tops.myTop.iocs.myIoc.description: ends in a backslash, which systemd reads as joining \
                 the next line of the unit"
            ),
            "{err}"
        );
        assert!(Config::parse(&example_with(json!({}), json!({ "description": r"C:\epics\ IOC" }))).is_ok());
    }

    #[test]
    fn environment_values_are_at_most_32_kib() {
        let env = |len: usize| example_with(json!({}), json!({ "environment": { "BIG": "x".repeat(len) } }));
        assert!(Config::parse(&env(MAX_ENV_VALUE_BYTES)).is_ok());
        let err = error_of(env(2 * 1024 * 1024));
        assert!(
            err.starts_with(
                "epnixDeploy.tops.myTop.iocs.myIoc.environment.BIG: is 2097152 bytes long, more than the 32768 bytes \
                 (32 KiB) an environment value may have"
            ),
            "{err}"
        );
        // Bytes, not characters: the unit file and the kernel count bytes.
        let err = error_of(example_with(json!({}), json!({ "environment": { "BIG": "µ".repeat(16 * 1024 + 1) } })));
        assert!(err.contains("is 32770 bytes long"), "{err}");
    }

    #[test]
    fn a_tcp_console_needs_an_unprivileged_port() {
        let console = |port: u16| example_with(json!({}), json!({ "procServ": { "console": port } }));
        assert_eq!(
            error_of(console(1023)),
            "epnixDeploy.tops.myTop.iocs.myIoc.procServ.console: TCP port 1023 is below 1024: the IOC runs as a \
             dynamic user without `CAP_NET_BIND_SERVICE`, and cannot bind it\n\
             hint: pick a port from 1024 up, e.g. 2001, or use `\"unix\"`"
        );
        assert_eq!(Config::parse(&console(1024)).unwrap().tops["myTop"].iocs["myIoc"].console, Console::Tcp(1024));
    }

    #[test]
    fn missing_required_options_are_named() {
        let mut json = example();
        json["tops"]["myTop"]["iocs"]["myIoc"] = json!({});
        assert_eq!(error_of(json), "epnixDeploy.tops.myTop.iocs.myIoc.workingDirectory: is required but not set");
    }
}
