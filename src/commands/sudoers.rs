//! `epnix-deploy sudoers --group GROUP`: the operators' policy, a `sudoers`
//! drop-in that lets the members of a group run, as root, only the exact
//! commands an operator's `start`, `stop`, `restart`, `logs` and `console`
//! run; and those commands, built here, so that the policy and what the
//! tool runs cannot drift apart.
//!
//! Every rule names a program by its absolute path and its arguments by a
//! regular expression anchored at both ends (sudo 1.9.10 and later): names
//! are `[A-Za-z0-9_-]+`, which matches no space, no `/` and no `..`, so no
//! rule reaches another file, another unit or another option. No rule runs
//! a shell, a pager or an editor. `status` needs none: an operator reads
//! the units as itself.

use camino::Utf8PathBuf;

use crate::exit::BadInput;
use crate::layout;
use crate::output::{Render, Style};
use crate::ssh::RemoteCmd;
use crate::unit;

use super::service::Action;

/// The programs the policy allows, by the paths it names them by (those
/// of Debian, Ubuntu, Fedora and RHEL, whose `/usr` is merged).
const FLOCK: &str = "/usr/bin/flock";
const SYSTEMCTL: &str = "/usr/bin/systemctl";
const JOURNALCTL: &str = "/usr/bin/journalctl";
const SOCAT: &str = "/usr/bin/socat";
const TEST: &str = "/usr/bin/test";

/// `flock`'s exit code when a deploy holds the top's lock.
pub const LOCK_BUSY: i32 = 75;

/// What an IOC or top name may be, in the policy's regular expressions.
const NAME: &str = "[A-Za-z0-9_-]+";

/// The policy, as printed.
#[derive(Clone, Debug)]
pub struct Policy(pub String);

impl Render for Policy {
    fn text(&self, _: &Style) -> String {
        self.0.clone()
    }
}

pub fn run(group: &str) -> Result<Policy, BadInput> {
    check_group(group)?;
    Ok(Policy(policy(group)))
}

fn check_group(group: &str) -> Result<(), BadInput> {
    let mut chars = group.chars();
    let first = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first && chars.all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)) && group.len() <= 32 {
        return Ok(());
    }
    Err(BadInput::new(format!("`{group}` is not a group name the policy can name"))
        .hint("a group name is letters, digits, `_` and `-`, starting with a letter or `_`, at most 32 characters"))
}

/// `start`, `stop` or `restart` of `unit`, under the deploy lock of `top`,
/// or exit [`LOCK_BUSY`] at once when a deploy holds it.
pub fn service(action: Action, top: &str, unit: &str) -> RemoteCmd {
    let lock = lock_file(top);
    let busy = LOCK_BUSY.to_string();
    RemoteCmd::new([FLOCK, "-n", "-E", &busy, lock.as_str(), SYSTEMCTL, action.as_str(), unit]).for_operators()
}

/// Exits 0 when no rollback of `top` is pending (armed or running), 1
/// when one is: what `service.sh` checks, for an operator who cannot read
/// the state directory.
pub fn no_rollback_pending(top: &str) -> RemoteCmd {
    let records = layout::records(top);
    let armed = records.join("restore/armed");
    let rolling = records.join("restore.rolling");
    RemoteCmd::new([TEST, "!", "-e", armed.as_str(), "-a", "!", "-d", rolling.as_str()]).for_operators()
}

/// The journal of `unit`: the last `lines`, or those since `since`, then
/// with `follow` what comes.
pub fn journal(unit: &str, lines: Option<u32>, since: Option<&str>, follow: bool) -> RemoteCmd {
    let mut argv: Vec<String> =
        [JOURNALCTL, "-u", unit, "--no-pager", "-o", "short-iso", "--utc"].map(str::to_owned).to_vec();
    if let Some(n) = lines {
        argv.extend(["-n".to_owned(), n.to_string()]);
    }
    if let Some(since) = since {
        argv.extend(["-S".to_owned(), since.to_owned()]);
    }
    if follow {
        argv.push("-f".to_owned());
    }
    RemoteCmd::new(argv).for_operators()
}

/// Whether `since` is a time the policy lets through: words of letters,
/// digits and `:.+-`, only the first starting with `-`.
pub fn since_allowed(since: &str) -> bool {
    let time = |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || ":.+-".contains(c));
    let mut words = since.split(' ');
    words.next().is_some_and(time) && words.all(|w| time(w) && !w.starts_with('-'))
}

/// The program `console.sh` runs socat as, for an operator's UNIX console.
pub fn socat() -> &'static str {
    SOCAT
}

fn lock_file(top: &str) -> Utf8PathBuf {
    layout::records(top).join("lock")
}

fn policy(group: &str) -> String {
    let alias = format!("EPNIX_{}", group.to_ascii_uppercase().replace('-', "_"));
    let unit = pattern(&layout::unit_name("\0"));
    let lock = pattern(lock_file("\0").as_str());
    let records = pattern(layout::records("\0").as_str());
    let socket = pattern(&unit::console_socket("\0"));
    let rules = [
        ("SERVICE", vec![format!("{FLOCK} ^-n -E {LOCK_BUSY} {lock} {SYSTEMCTL} (start|stop|restart) {unit}$")]),
        ("PENDING", vec![format!("{TEST} ^! -e {records}/restore/armed -a ! -d {records}/restore\\.rolling$")]),
        (
            "JOURNAL",
            vec![format!(
                "{JOURNALCTL} ^-u {unit} --no-pager -o short-iso --utc( -n [0-9]+)?( -S [A-Za-z0-9\\:.+-]+( [A-Za-z0-9\\:.+]+)*)?( -f)?$"
            )],
        ),
        (
            "CONSOLE",
            vec![
                format!("{SOCAT} ^STDIO\\,raw\\,echo\\=0\\,escape\\=0x1d UNIX-CONNECT\\:{socket}$"),
                format!("{SOCAT} ^-u UNIX-CONNECT\\:{socket} STDOUT$"),
            ],
        ),
    ];
    let mut text = format!(
        "# epnix-deploy's operators: the members of group `{group}` may start, stop\n\
         # and restart the IOCs' units (under their top's deploy lock), read their\n\
         # journal and attach to their consoles, as root, with exactly these\n\
         # commands and nothing else. Deploy, rollback, remove and delete-generation\n\
         # stay with the deployers. Written by `epnix-deploy sudoers --group {group}`;\n\
         # needs sudo 1.9.10 or later (regular expressions). Check it with\n\
         # `visudo -cf FILE` before it goes into /etc/sudoers.d/.\n"
    );
    for (name, commands) in &rules {
        text.push_str(&format!("Cmnd_Alias {alias}_{name} = {}\n", commands.join(", \\\n    ")));
    }
    let names: Vec<String> = rules.iter().map(|(name, _)| format!("{alias}_{name}")).collect();
    text.push_str(&format!("%{group} ALL = (root) NOPASSWD: {}\n", names.join(", ")));
    text
}

/// `path` as a regular expression for sudoers, with [`NAME`] for each NUL.
fn pattern(path: &str) -> String {
    let literal = |part: &str| {
        part.chars()
            .map(|c| match c {
                '.' | '[' | ']' | '(' | ')' | '*' | '+' | '?' | '{' | '}' | '|' | '^' | '$' => format!("\\{c}"),
                ',' | ':' | '=' | '\\' => format!("\\{c}"),
                c => c.to_string(),
            })
            .collect::<String>()
    };
    path.split('\0').map(literal).collect::<Vec<_>>().join(NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy() {
        insta::assert_snapshot!(run("iocops").unwrap().0);
    }

    #[test]
    fn group_names_are_checked() {
        assert!(run("ioc-ops_2").is_ok());
        for bad in ["", "-x", "a b", "a,b", "%x", "ALL\nroot"] {
            assert!(run(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_commands_are_those_the_policy_names() {
        assert_eq!(
            service(Action::Restart, "demo", "epnix-a.service").to_string(),
            "/usr/bin/flock -n -E 75 /var/lib/epnix-deploy/demo/lock /usr/bin/systemctl restart epnix-a.service"
        );
        assert_eq!(
            no_rollback_pending("demo").to_string(),
            "/usr/bin/test '!' -e /var/lib/epnix-deploy/demo/restore/armed -a '!' -d /var/lib/epnix-deploy/demo/restore.rolling"
        );
        assert_eq!(
            journal("epnix-a.service", Some(50), Some("2 hours ago"), true).argv[1..].join(" "),
            "-u epnix-a.service --no-pager -o short-iso --utc -n 50 -S 2 hours ago -f"
        );
        assert!(crate::remote::CONSOLE.text().contains("STDIO,raw,echo=0,escape=0x1d"));
    }

    #[test]
    fn since_takes_times_and_no_options() {
        for ok in ["-1h", "2 hours ago", "2026-12-03 10:00", "yesterday", "today"] {
            assert!(since_allowed(ok), "{ok}");
        }
        for bad in ["", "x --vacuum-time=1s", "1h -D /tmp", "a=b", "/etc", "a  b"] {
            assert!(!since_allowed(bad), "{bad}");
        }
    }
}
