//! The unit's hardening (`unit::HARDENING`, compared with EPNix's in the
//! README's "The unit") on a real test host, with the fixture's real IOC.

use epnix_deploy::{layout, unit};

use crate::support::{TestFlake, TestIoc, assert_exit, caget_eventually, demo_top, epnix_deploy};
use crate::testbed::TestHost;

/// A deployed IOC runs with every hardening line in its unit, in a user
/// namespace of its own (`PrivateUsers`), answers Channel Access, and its
/// console answers root through the UNIX socket.
#[test]
fn a_deployed_ioc_runs_under_the_hardening() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocHardened");
    flake.write(&host, &demo_top("v1", &[&ioc]));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    caget_eventually(&host, "iocHardened:version", &ioc, "v1");

    let unit_file = host.ssh_ok(&format!("cat {}", layout::unit_path(ioc.name)));
    for line in unit::HARDENING {
        assert!(unit_file.lines().any(|l| l == *line), "{line} is not in the unit:\n{unit_file}");
    }
    let pid = host.ssh_ok(&format!("systemctl show -p MainPID --value {}", layout::unit_name(ioc.name)));
    let namespaces = host.ssh_ok(&format!("readlink /proc/{}/ns/user /proc/1/ns/user", pid.trim()));
    let namespaces: Vec<&str> = namespaces.lines().collect();
    assert_eq!(namespaces.len(), 2, "{namespaces:?}");
    assert_ne!(namespaces[0], namespaces[1], "procServ runs in the host's user namespace");

    let console = unit::console_socket(ioc.name);
    let dbl = host.ssh_ok(&format!("(echo dbl; sleep 1) | socat - UNIX-CONNECT:{console}"));
    assert!(dbl.contains("iocHardened:version"), "dbl printed:\n{dbl}");
}
