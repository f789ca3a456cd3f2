//! Where epnix-deploy keeps things on a host. Every remote path is built here.

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

/// Where epnix-deploy records what each generation installed. The Nix
/// profile and the unit files stay the truth; a record only adds what they
/// cannot say (the units of older generations, who deployed, from where).
pub const RECORDS_DIR: &str = "/var/lib/epnix-deploy";

/// The records of `top`, one directory per generation number.
pub fn records(top: &str) -> Utf8PathBuf {
    Utf8PathBuf::from(RECORDS_DIR).join(top)
}

/// The record of generation `generation` of `top`.
pub fn record(top: &str, generation: u32) -> Utf8PathBuf {
    records(top).join(generation.to_string())
}

/// Where a deploy assembles its record before it knows the generation number.
pub fn staging_record(top: &str) -> Utf8PathBuf {
    records(top).join("staging")
}
