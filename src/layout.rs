//! Where epnix-deploy keeps things on a host. Every remote path and name is
//! built here; the host-side scripts in `remote/` get them as arguments.
//!
//! There are two layouts. The system's: units in `/etc/systemd/system`,
//! profiles beside Nix's own, state in `/var/lib`, run by the system's
//! systemd as root. The user's (`--user`): the same names under the user's
//! own XDG directories, run by the user's systemd manager
//! (`systemctl --user`). One run of the tool acts on one host in one of
//! them, so the layout is chosen once, from the command line, before any
//! path is read ([`choose`]), and read everywhere with [`current`], as
//! `progress::trace` reads its switch: the alternative, a layout handed
//! down through every stage to every path, would only ever carry this one
//! value.

use std::sync::OnceLock;

use camino::{Utf8Path, Utf8PathBuf};

use crate::exit::BadInput;

/// Which systemd manager runs the IOCs, and so whose directories hold them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manager {
    /// The system's, as root.
    System,
    /// The current user's own (`systemctl --user`), as that user.
    User,
}

/// The directories of one layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub manager: Manager,
    /// Where the IOC units are installed.
    pub unit_dir: Utf8PathBuf,
    /// The parent of every top's profile.
    pub profile_dir: Utf8PathBuf,
    /// Locks, restore points, outcomes and rollback events.
    pub state_dir: Utf8PathBuf,
    /// Where systemd makes a unit's `RuntimeDirectory=`: the consoles' sockets.
    pub runtime_dir: Utf8PathBuf,
}

impl Layout {
    /// The system's layout.
    pub fn system() -> Layout {
        Layout {
            manager: Manager::System,
            // Units here outrank vendor units and are what an administrator
            // expects to find with `systemctl cat`.
            unit_dir: "/etc/systemd/system".into(),
            // As in the EPNix guide.
            profile_dir: "/nix/var/nix/profiles/epnix".into(),
            // Root only: a user who could open the lock could block every deploy.
            state_dir: "/var/lib/epnix-deploy".into(),
            runtime_dir: "/run".into(),
        }
    }

    /// The layout of `--user`, from the user's environment (`var` reads
    /// it) and user id, as the XDG base directory specification places
    /// things: units where the user's systemd manager looks for them,
    /// profiles where Nix 2.14 and later keep a user's own, state beside
    /// them. Only paths that need no quoting are taken: they reach unit
    /// files and systemd's command lines, where `$`, `%` and spaces are
    /// syntax.
    pub fn user(var: &dyn Fn(&str) -> Option<String>, uid: u32) -> Result<Layout, BadInput> {
        // The specification ignores a relative path.
        let absolute = |name: &str| var(name).filter(|v| v.starts_with('/')).map(Utf8PathBuf::from);
        let home = absolute("HOME").ok_or_else(|| {
            BadInput::new("`--user` needs your home directory, and `HOME` is not set to an absolute path")
                .hint("run it from your own login session")
        })?;
        let config = absolute("XDG_CONFIG_HOME").unwrap_or_else(|| home.join(".config"));
        let state = absolute("XDG_STATE_HOME").unwrap_or_else(|| home.join(".local/state"));
        let layout = Layout {
            manager: Manager::User,
            unit_dir: config.join("systemd/user"),
            profile_dir: state.join("nix/profiles/epnix"),
            state_dir: state.join("epnix-deploy"),
            runtime_dir: absolute("XDG_RUNTIME_DIR").unwrap_or_else(|| format!("/run/user/{uid}").into()),
        };
        for dir in [&layout.unit_dir, &layout.profile_dir, &layout.state_dir, &layout.runtime_dir] {
            if !dir.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+@".contains(&b)) {
                return Err(BadInput::new(format!(
                    "`--user` would keep its files in `{dir}`, a path that systemd unit files cannot carry as it is"
                ))
                .hint("point `HOME` (or `XDG_CONFIG_HOME`, `XDG_STATE_HOME`, `XDG_RUNTIME_DIR`) at a path of letters, digits and `/._-+@`"));
            }
        }
        Ok(layout)
    }

    /// The layout of `--user` for the user who runs the tool.
    pub fn user_here() -> Result<Layout, BadInput> {
        use std::os::unix::fs::MetadataExt;
        // `/proc/self` belongs to the process's user.
        let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
        Layout::user(&|name| std::env::var(name).ok(), uid)
    }

    /// The profile whose generations are the deployed versions of `top`.
    pub fn profile(&self, top: &str) -> Utf8PathBuf {
        self.profile_dir.join(top)
    }

    /// The state of `top`: its lock, restore point, outcomes and events.
    pub fn records(&self, top: &str) -> Utf8PathBuf {
        self.state_dir.join(top)
    }

    /// The unit file of `ioc`.
    pub fn unit_path(&self, ioc: &str) -> Utf8PathBuf {
        self.unit_dir.join(unit_name(ioc))
    }

    /// procServ's UNIX socket of `ioc` when `procServ.console = "unix"`,
    /// in its `RuntimeDirectory=`.
    pub fn console_socket(&self, ioc: &str) -> Utf8PathBuf {
        self.runtime_dir.join("epics").join(ioc).join("console")
    }
}

static CURRENT: OnceLock<Layout> = OnceLock::new();

/// Makes `layout` the one of this run. Called once, from the command line,
/// before anything reads a path; without it the run uses the system's.
pub fn choose(layout: Layout) {
    let chosen = CURRENT.get_or_init(|| layout.clone());
    assert_eq!(chosen, &layout, "the layout is chosen once, before any path is read");
}

/// The layout of this run.
pub fn current() -> &'static Layout {
    CURRENT.get_or_init(Layout::system)
}

/// Where the IOC units are installed.
pub fn unit_dir() -> &'static Utf8Path {
    &current().unit_dir
}

/// The parent of every top's profile.
pub fn profile_dir() -> &'static Utf8Path {
    &current().profile_dir
}

/// Where epnix-deploy keeps its state on the host.
pub fn state_dir() -> &'static Utf8Path {
    &current().state_dir
}

/// The profile whose generations are the deployed versions of `top`.
pub fn profile(top: &str) -> Utf8PathBuf {
    current().profile(top)
}

/// The profile of the host's procServ when it comes from Nix
/// (`procServ.package`), as the EPNix guide links it. No top may be called
/// `procServ` (the config check refuses it).
pub fn procserv_profile() -> Utf8PathBuf {
    current().profile("procServ")
}

/// The procServ that units run when the host's procServ comes from Nix.
pub fn procserv_from_profile() -> Utf8PathBuf {
    procserv_profile().join("bin/procServ")
}

/// The unit that runs `ioc`. The prefix keeps our units apart from the host's
/// own, and lets one glob find them all.
pub fn unit_name(ioc: &str) -> String {
    format!("epnix-{ioc}.service")
}

/// The unit file of `ioc`.
pub fn unit_path(ioc: &str) -> Utf8PathBuf {
    current().unit_path(ioc)
}

/// The IOC name in a unit file name we wrote, e.g. `epnix-myIoc.service`.
pub fn ioc_of_unit(unit: &str) -> Option<&str> {
    unit.strip_prefix("epnix-")?.strip_suffix(".service")
}

/// The tool's own units start with `epnix.`: IOC names cannot contain a
/// dot, so no IOC unit (`epnix-<ioc>.service`) can ever take one of these
/// names, and the IOC glob `epnix-*` never matches them.
const TOOL_UNIT_PREFIX: &str = "epnix.";

/// The transient units (`.timer` and `.service`) of the rollback armed for
/// an unconfirmed switch of `top`.
pub fn rollback_unit(top: &str) -> String {
    format!("{TOOL_UNIT_PREFIX}rollback-{top}")
}

/// The unit that, at boot, rolls back every switch that a reboot left
/// unconfirmed: the armed timer lives in `/run` and does not survive one.
pub fn boot_rollback_unit() -> String {
    format!("{TOOL_UNIT_PREFIX}rollback-at-boot.service")
}

/// The prefix of the transient scopes that check commands run in, so that a
/// check's whole process tree can be ended.
pub fn check_scope_prefix() -> String {
    format!("{TOOL_UNIT_PREFIX}check-")
}

/// The state of `top`: its lock, restore point, outcomes and events.
pub fn records(top: &str) -> Utf8PathBuf {
    current().records(top)
}

/// The lock that makes claiming a unit name atomic across tops.
pub fn units_lock() -> Utf8PathBuf {
    current().state_dir.join("units.lock")
}

/// Inside a generation's store path: the top's build, the units and the
/// health checks it was deployed with. Tops never contain this name (the
/// build check refuses one that does).
pub const GENERATION_DIR: &str = ".epnix-deploy";

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn the_user_layout_follows_the_xdg_directories() {
        let layout = Layout::user(&env(&[("HOME", "/home/eng")]), 1000).unwrap();
        assert_eq!(layout.manager, Manager::User);
        assert_eq!(layout.unit_dir, "/home/eng/.config/systemd/user");
        assert_eq!(layout.profile("demo"), "/home/eng/.local/state/nix/profiles/epnix/demo");
        assert_eq!(layout.records("demo"), "/home/eng/.local/state/epnix-deploy/demo");
        assert_eq!(layout.console_socket("ioc"), "/run/user/1000/epics/ioc/console");

        let layout = Layout::user(
            &env(&[
                ("HOME", "/home/eng"),
                ("XDG_CONFIG_HOME", "/cfg"),
                ("XDG_STATE_HOME", "relative/is/ignored"),
                ("XDG_RUNTIME_DIR", "/run/user/1000"),
            ]),
            4242,
        )
        .unwrap();
        assert_eq!(layout.unit_dir, "/cfg/systemd/user");
        assert_eq!(layout.state_dir, "/home/eng/.local/state/epnix-deploy");
        assert_eq!(layout.runtime_dir, "/run/user/1000");
    }

    #[test]
    fn the_user_layout_refuses_what_a_unit_cannot_carry() {
        let err = Layout::user(&env(&[]), 1000).unwrap_err().to_string();
        assert!(err.contains("`HOME` is not set"), "{err}");
        let err = Layout::user(&env(&[("HOME", "/home/e ng")]), 1000).unwrap_err().to_string();
        assert!(err.contains("`/home/e ng/.config/systemd/user`"), "{err}");
        assert!(Layout::user(&env(&[("HOME", "/home/%n")]), 1000).is_err());
    }

    #[test]
    fn the_system_layout_is_the_epnix_guides() {
        let layout = Layout::system();
        assert_eq!(layout.profile("demo"), "/nix/var/nix/profiles/epnix/demo");
        assert_eq!(layout.records("demo"), "/var/lib/epnix-deploy/demo");
        assert_eq!(layout.unit_path("ioc"), "/etc/systemd/system/epnix-ioc.service");
        assert_eq!(layout.console_socket("ioc"), "/run/epics/ioc/console");
    }
}
