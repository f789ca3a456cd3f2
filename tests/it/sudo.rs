//! A deployer who may not log in as root: the host's `sshUser` is `ops`,
//! who gets root through `privilegeEscalationCommand` (`sudo -n --`), for
//! every command, the copy, the heartbeats and the confirmation alike. And
//! the same user without the rights to: refused before anything changes.

use crate::support::*;
use crate::testbed::TestHost;

/// `ops`, who logs in with the test key and may run anything as root
/// without a password.
fn ops_with_sudo(host: &TestHost) {
    add_user(host, "ops");
    host.ssh_ok(
        "echo 'ops ALL=(root) NOPASSWD: ALL' >/etc/sudoers.d/ops && chmod 0440 /etc/sudoers.d/ops && visudo -cq",
    );
}

#[test]
fn a_user_with_passwordless_sudo_deploys_rolls_back_and_reads_status() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    ops_with_sudo(&host);
    let h = host.name.as_str();

    flake.write_as_user(&host, "ops", "", &demo(&ioc, "version = \"v1\";", "", ""));
    let out = epnix_deploy(&flake, &["-v", h, "demo"]);
    assert_exit(&out, 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");
    assert_eq!(profile_link(&host), "demo-1-link");
    // Every command went through sudo, the import of the store paths too
    // (the store is root's).
    let err = stderr(&out);
    for line in [
        format!("{h}: $ sudo -n -- sh lock.sh "),
        format!("{h}: $ sudo -n -- sh switch.sh "),
        format!("{h}: $ sudo -n -- sh confirm.sh "),
    ] {
        assert!(err.lines().any(|l| l.starts_with(&line)), "no line {line:?} in:\n{err}");
    }
    assert!(err.lines().any(|l| l.starts_with(&format!("{h}: $ sudo -n -- sh import.sh"))), "{err}");
    assert!(err.contains("over a new SSH login; rollback disarmed"), "{err}");
    // What the tool keeps on the host is root's, as with a root login.
    assert_eq!(host.ssh_ok("stat -c '%U %a' /var/lib/epnix-deploy/demo").trim(), "root 700");

    flake.write_as_user(&host, "ops", "", &demo(&ioc, "version = \"v2\";", "", ""));
    assert_exit(&epnix_deploy(&flake, &[h, "demo"]), 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v2");

    let out = epnix_deploy(&flake, &["rollback", h, "demo", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["generation"], 1);
    assert_eq!(profile_link(&host), "demo-1-link");
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");

    let out = epnix_deploy(&flake, &["status", h, "--json"]);
    assert_exit(&out, 0);
    let status = json(&out);
    assert_eq!(status["tops"][0]["generation"], 1, "{status:#}");
    assert_eq!(status["iocs"][0]["state"], "running", "{status:#}");
}

#[test]
fn a_user_without_sudo_rights_is_refused_with_the_line_to_add() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    add_user(&host, "ops");

    flake.write_as_user(&host, "ops", "", &demo(&ioc, "version = \"v1\";", "", ""));
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);

    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("the SSH user `ops` is not root, and `sudo -n --` does not let it"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(err.contains("sudo: a password is required"), "{err}");
    assert!(err.contains("add the line `ops ALL=(root) NOPASSWD: ALL` to `/etc/sudoers.d/epnix-deploy`"), "{err}");
    assert_untouched(&host);
    assert_eq!(host.ssh_ok("ls -d /var/lib/epnix-deploy 2>/dev/null || echo none").trim(), "none");
    // Nothing was copied either.
    assert_eq!(host.ssh_ok("ls /nix/store | grep -c demo-top || true").trim(), "0");
}
