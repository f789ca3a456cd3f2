//! Renders the systemd unit that runs one IOC under procServ.
//!
//! Rendering is a pure function of the configuration and a few facts about the
//! host, pinned by snapshot tests. The unit follows EPNix's `services.iocs`
//! unit so that moving a host between this tool and NixOS changes nothing.

use std::fmt::Write;

use crate::config::{Console, Ioc};
use crate::layout::{self, Layout, Manager};

/// The key that marks a unit as ours and names the top it belongs to. systemd
/// ignores `X-` keys, so it costs nothing at run time.
pub const OWNER_KEY: &str = "X-EpnixDeploy-Top";

/// What the unit needs to know about the host it goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// Absolute path of the procServ binary the unit runs.
    pub procserv: String,
    /// Whether that procServ has `--oneshot` (2.8.0 and later). Without it
    /// procServ restarts a dead IOC itself and systemd never sees the crash.
    pub procserv_oneshot: bool,
}

/// The unit file text for IOC `name` of top `top`, in this run's layout.
pub fn render(top: &str, name: &str, ioc: &Ioc, host: &HostFacts) -> String {
    render_in(layout::current(), top, name, ioc, host)
}

/// The unit file text for IOC `name` of top `top`, for the system's
/// manager or a user's (`--user`). A user's manager cannot give a unit
/// another user nor the namespaces that most hardening options build on:
/// there the IOC runs as the user, with the system call filters, which
/// need no privilege ([`USER_HARDENING`]).
pub fn render_in(layout: &Layout, top: &str, name: &str, ioc: &Ioc, host: &HostFacts) -> String {
    let system = layout.manager == Manager::System;
    let chdir = layout.profile(top).join(&ioc.working_directory);
    let chdir = if ioc.working_directory == "." { layout.profile(top) } else { chdir };
    let console = match ioc.console {
        Console::Unix => format!("unix:{}", layout.console_socket(name)),
        Console::Tcp(port) => port.to_string(),
    };

    let mut argv: Vec<String> = vec![host.procserv.clone(), "--foreground".into()];
    if host.procserv_oneshot {
        argv.push("--oneshot".into());
    }
    argv.extend([
        "--logfile=-".into(),
        "--holdoff=0".into(),
        format!("--name={name}"),
        format!("--chdir={chdir}"),
        console,
        ioc.startup_script.clone(),
    ]);
    let exec_start: Vec<String> = argv.iter().map(|arg| exec_arg(arg)).collect();

    let description = match &ioc.description {
        Some(text) => format!("EPICS IOC {name}: {text}"),
        None => format!("EPICS IOC {name}"),
    };

    let mut unit = String::new();
    let w = &mut unit;
    // `writeln!` into a String cannot fail.
    let _ = writeln!(w, "# Written by epnix-deploy for top `{top}`. Do not edit: the next deploy replaces it.");
    let _ = writeln!(w, "[Unit]");
    let _ = writeln!(w, "Description={}", escape_specifiers(&description));
    // A user's manager has no such target: the network is the system's.
    if system {
        let _ = writeln!(w, "Wants=network-online.target");
        let _ = writeln!(w, "After=network-online.target");
    }
    // procServ exits 0 when the IOC dies from a signal, so `Restart=always`
    // must never be stopped by the default start rate limit.
    let _ = writeln!(w, "StartLimitIntervalSec=0");
    let _ = writeln!(w, "{OWNER_KEY}={top}");
    let _ = writeln!(w);
    let _ = writeln!(w, "[Service]");
    let _ = writeln!(w, "Type=exec");
    let _ = writeln!(w, "ExecStart={}", exec_start.join(" "));
    let _ = writeln!(w, "Restart=always");
    let _ = writeln!(w, "RestartSec=1s");
    if system {
        let _ = writeln!(w, "DynamicUser=true");
    }
    let _ = writeln!(w, "StateDirectory=epics/{name}");
    // The console socket lives here; procServ makes it mode 0666, so the
    // directory's mode is what keeps other users out.
    let _ = writeln!(w, "RuntimeDirectory=epics/{name}");
    let _ = writeln!(w, "RuntimeDirectoryMode=0700");
    if system {
        let _ =
            writeln!(w, "{}", env_assignment("EPICS_IOCSH_HISTFILE", &format!("/var/lib/epics/{name}/iocsh_history")));
    } else {
        // `%S` is where a user's manager puts `StateDirectory=`, which
        // systemd 254 moved (from `~/.config` to `~/.local/state`). The name
        // is a safe name: no quoting needed.
        let _ = writeln!(w, "Environment=\"EPICS_IOCSH_HISTFILE=%S/epics/{name}/iocsh_history\"");
    }
    for (key, value) in &ioc.environment {
        let _ = writeln!(w, "{}", env_assignment(key, value));
    }
    for line in if system { HARDENING } else { USER_HARDENING } {
        let _ = writeln!(w, "{line}");
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "[Install]");
    let _ = writeln!(w, "WantedBy={}", if system { "multi-user.target" } else { "default.target" });
    unit
}

/// The unit's hardening: an IOC needs the network and its own state
/// directory, and nothing of the kernel's or other users'. The README's "The
/// unit" compares each line with EPNix's unit; `nix/schema.json` carries
/// them to `nix/unit.nix`.
pub const HARDENING: &[&str] = &[
    "CapabilityBoundingSet=",
    "LockPersonality=true",
    "NoNewPrivileges=true",
    "PrivateMounts=true",
    "PrivateTmp=true",
    "PrivateUsers=true",
    "ProtectClock=true",
    "ProtectControlGroups=true",
    "ProtectHome=true",
    "ProtectHostname=true",
    "ProtectKernelLogs=true",
    "ProtectKernelModules=true",
    "ProtectKernelTunables=true",
    "ProtectProc=invisible",
    "ProtectSystem=strict",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK AF_UNIX",
    "RestrictNamespaces=true",
    "RestrictRealtime=true",
    "RestrictSUIDSGID=true",
    "SystemCallArchitectures=native",
    // Not `~@privileged` as well: procServ is killed by it (SIGSYS) at start.
    "SystemCallFilter=@system-service",
    "UMask=0077",
];

/// The hardening of a user's unit (`--user`): what of [`HARDENING`] a
/// user's manager can apply, the options that stand on seccomp and
/// `NoNewPrivileges`. The others need root, or user namespaces, to set up.
/// What stands for `DynamicUser` is the user itself: the IOC can do what
/// the user can, and no more.
pub const USER_HARDENING: &[&str] = &[
    "LockPersonality=true",
    "NoNewPrivileges=true",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK AF_UNIX",
    "RestrictNamespaces=true",
    "RestrictRealtime=true",
    "RestrictSUIDSGID=true",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "UMask=0077",
];

/// The IOC's console socket when `procServ.console = "unix"`, in this run's
/// layout.
pub fn console_socket(name: &str) -> String {
    layout::current().console_socket(name).into_string()
}

/// The line that marks a unit as belonging to `top`; host-side scripts match
/// it whole.
pub fn owner_line(top: &str) -> String {
    format!("{OWNER_KEY}={top}")
}

/// The top a unit file belongs to, if epnix-deploy wrote it.
pub fn owner(unit_text: &str) -> Option<&str> {
    unit_text.lines().find_map(|line| line.strip_prefix(OWNER_KEY)?.strip_prefix('='))
}

/// Quotes one `ExecStart=` word. systemd splits on white space, expands `$`
/// and `%`, and unquotes C-style; plain words pass through.
fn exec_arg(arg: &str) -> String {
    let plain = !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"_./:=@+,-".contains(&b));
    if plain {
        return arg.to_owned();
    }
    let mut quoted = String::from("\"");
    for c in arg.chars() {
        match c {
            '\\' => quoted.push_str(r"\\"),
            '"' => quoted.push_str("\\\""),
            '%' => quoted.push_str("%%"),
            '$' => quoted.push_str("$$"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// One `Environment=` line. The value is quoted whole; systemd expands `%`
/// specifiers there but not `$`.
fn env_assignment(key: &str, value: &str) -> String {
    let mut escaped = String::new();
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str(r"\\"),
            '"' => escaped.push_str("\\\""),
            '%' => escaped.push_str("%%"),
            c => escaped.push(c),
        }
    }
    format!("Environment=\"{key}={escaped}\"")
}

fn escape_specifiers(text: &str) -> String {
    text.replace('%', "%%")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn facts(oneshot: bool) -> HostFacts {
        HostFacts { procserv: "/usr/bin/procServ".into(), procserv_oneshot: oneshot }
    }

    fn ioc() -> Ioc {
        Ioc {
            working_directory: "iocBoot/iocMyIoc".into(),
            startup_script: "./st.cmd".into(),
            environment: BTreeMap::from([("EPICS_CA_ADDR_LIST".into(), "10.0.0.255".into())]),
            console: Console::Unix,
            description: Some("My IOC".into()),
            enable: true,
            health_check: Default::default(),
        }
    }

    #[test]
    fn unit_for_the_readme_example() {
        insta::assert_snapshot!(render("myTop", "myIoc", &ioc(), &facts(true)));
    }

    #[test]
    fn unit_for_a_users_manager() {
        let home = |name: &str| (name == "HOME").then(|| "/home/eng".to_owned());
        let layout = Layout::user(&home, 1000).unwrap();
        insta::assert_snapshot!(render_in(&layout, "myTop", "myIoc", &ioc(), &facts(true)));
    }

    /// A user's unit drops hardening a user's manager cannot apply, and
    /// adds none of its own.
    #[test]
    fn a_users_hardening_is_part_of_the_systems() {
        for line in USER_HARDENING {
            assert!(HARDENING.contains(line), "{line}");
        }
    }

    #[test]
    fn unit_with_a_tcp_console_and_an_old_procserv() {
        let mut ioc = ioc();
        ioc.console = Console::Tcp(2001);
        ioc.description = None;
        ioc.environment.clear();
        insta::assert_snapshot!(render("myTop", "myIoc", &ioc, &facts(false)));
    }

    #[test]
    fn awkward_values_are_escaped() {
        let mut ioc = ioc();
        ioc.working_directory = "ioc Boot/100%".into();
        ioc.startup_script = "./st \"$x\".cmd".into();
        ioc.description = Some("50% \"quoted\"".into());
        ioc.environment = BTreeMap::from([("A".into(), r#"va"l\ue $HOME 100%"#.into())]);
        let unit = render("myTop", "myIoc", &ioc, &facts(true));
        insta::assert_snapshot!(unit);
    }

    /// Whether systemd reads `line` as continued on the next one: it ends in
    /// a backslash that no backslash before it escapes.
    fn continues(line: &str) -> bool {
        line.bytes().rev().take_while(|b| *b == b'\\').count() % 2 == 1
    }

    /// An environment value is quoted whole, so one that ends in a backslash
    /// ends its line with the closing quote, not with a line continuation.
    #[test]
    fn an_environment_value_may_end_in_a_backslash() {
        let mut ioc = ioc();
        ioc.environment = BTreeMap::from([("A".into(), r"C:\epics\".into()), ("B".into(), "next".into())]);
        let unit = render("myTop", "myIoc", &ioc, &facts(true));
        let lines = concat!(r#"Environment="A=C:\\epics\\""#, "\n", r#"Environment="B=next""#, "\n");
        assert!(unit.contains(lines), "{unit}");
        assert!(continues(r"Description=EPICS IOC myIoc: C:\epics\"));
        assert_eq!(unit.lines().find(|line| continues(line)), None, "{unit}");
    }

    #[test]
    fn the_owner_is_read_back() {
        let unit = render("myTop", "myIoc", &ioc(), &facts(true));
        assert_eq!(owner(&unit), Some("myTop"));
        assert_eq!(owner("[Unit]\nDescription=not ours\n"), None);
    }
}
