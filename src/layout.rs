//! Where epnix-deploy keeps things on a host. Every remote path and name is
//! built here; the host-side scripts in `remote/` get them as arguments.

use camino::Utf8PathBuf;

/// The parent of every top's profile, as in the EPNix guide.
pub const PROFILE_DIR: &str = "/nix/var/nix/profiles/epnix";

/// Where the IOC units are installed. Units here outrank vendor units and are
/// what an administrator expects to find with `systemctl cat`.
pub const UNIT_DIR: &str = "/etc/systemd/system";

/// The profile whose generations are the deployed versions of `top`.
pub fn profile(top: &str) -> Utf8PathBuf {
    Utf8PathBuf::from(PROFILE_DIR).join(top)
}

/// The profile of the host's procServ when it comes from Nix
/// (`procServ.package`), as the EPNix guide links it. No top may be called
/// `procServ` (the config check refuses it).
pub fn procserv_profile() -> Utf8PathBuf {
    Utf8PathBuf::from(PROFILE_DIR).join("procServ")
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
    Utf8PathBuf::from(UNIT_DIR).join(unit_name(ioc))
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

/// Where epnix-deploy keeps its state on a host: locks, restore points,
/// outcomes and rollback events. Root only: a user who could open the lock
/// could block every deploy.
pub const STATE_DIR: &str = "/var/lib/epnix-deploy";

/// The state of `top`: its lock, restore point, outcomes and events.
pub fn records(top: &str) -> Utf8PathBuf {
    Utf8PathBuf::from(STATE_DIR).join(top)
}

/// The lock that makes claiming a unit name atomic across tops.
pub fn units_lock() -> Utf8PathBuf {
    Utf8PathBuf::from(STATE_DIR).join("units.lock")
}

/// Inside a generation's store path: the top's build, the units and the
/// health checks it was deployed with. Tops never contain this name (the
/// build check refuses one that does).
pub const GENERATION_DIR: &str = ".epnix-deploy";
