//! Local mode: the tool runs on the host itself, with no SSH. As root, with
//! the system's units (`--local`, or a host with `local = true`); as an
//! engineer without root, with units of the user's own systemd manager
//! (`--user`). The tool is this build's binary, copied into a test host
//! (Debian bookworm like the machine that built it, so it runs there), with
//! a flake written into the host beside it.

use crate::support::*;
use crate::testbed::TestHost;
use std::os::unix::fs::chown;
use std::path::Path;

/// Puts the tool on the host's PATH.
fn install_tool(host: &TestHost) {
    let bin = host.root().join("usr/local/bin/epnix-deploy");
    std::fs::copy(env!("CARGO_BIN_EXE_epnix-deploy"), &bin).expect("copying the tool into the host");
}

/// Writes a flake into the host's `dir` (a path on the host), owned by
/// `uid`: the fixture top and `epnixDeploy` with `hosts` and `tops` (Nix
/// attribute set bodies). The host has no git: the flake is a plain
/// directory, a `path:` flake.
fn write_site(host: &TestHost, dir: &str, uid: u32, hosts: &str, tops: &str) {
    let site = host.root().join(dir.trim_start_matches('/'));
    std::fs::create_dir_all(&site).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/top.nix");
    std::fs::copy(fixture, site.join("top.nix")).unwrap();
    let flake = format!(
        "{{\n  outputs = {{ self }}:\n    let top = import ./top.nix;\n    in {{\n      epnixDeploy = {{\n        hosts = {{ {hosts} }};\n        tops = {{ {tops} }};\n      }};\n    }};\n}}\n"
    );
    std::fs::write(site.join("flake.nix"), flake).unwrap();
    for file in [site.clone(), site.join("top.nix"), site.join("flake.nix")] {
        chown(file, Some(uid), Some(uid)).unwrap();
    }
}

/// The demo top at `version`, on `hosts` (a Nix list body).
fn demo_on(ioc: &TestIoc, version: &str, hosts: &str) -> String {
    format!(
        "demo = {{ package = top {{ version = \"{version}\"; }}; hosts = [ {hosts} ]; iocs = {{ {} }}; }};",
        ioc.nix("")
    )
}

#[test]
fn a_local_deploy_as_root_switches_checks_and_rolls_back_with_no_ssh() {
    let host = TestHost::boot();
    let ioc = TestIoc::new("iocDemo");
    let h = host.name.as_str();
    install_tool(&host);
    let in_site = |args: &str| ssh_as(&host, "root", &format!("cd /root/site && epnix-deploy {args}"));

    // A host of the configuration that is this machine.
    let here = format!("{h} = {{ hostname = \"localhost\"; local = true; }};");
    write_site(&host, "/root/site", 0, &here, &demo_on(&ioc, "v1", &format!("\"{h}\"")));
    let out = in_site(&format!("{h} demo"));
    assert_exit(&out, 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");
    assert_eq!(profile_link(&host), "demo-1-link");
    let err = stderr(&out);
    assert!(err.contains("from a new process; rollback disarmed"), "{err}");
    assert!(!err.contains(": copy ..."), "a local deploy copies nothing:\n{err}");

    // `--local`: this machine, with no host in the configuration.
    write_site(&host, "/root/site", 0, &here, &demo_on(&ioc, "v2", ""));
    assert_exit(&in_site("--local demo"), 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v2");
    assert_eq!(profile_link(&host), "demo-2-link");

    let out = in_site("rollback --local demo --json");
    assert_exit(&out, 0);
    assert_eq!(json(&out)["generation"], 1);
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");

    let out = in_site("status --local --json");
    assert_exit(&out, 0);
    let status = json(&out);
    assert_eq!(status["host"], "localhost", "{status:#}");
    assert_eq!(status["tops"][0]["generation"], 1, "{status:#}");
    assert_eq!(status["iocs"][0]["state"], "running", "{status:#}");
    assert_eq!(status["iocs"][0]["console"], "unix:/run/epics/iocDemo/console", "{status:#}");

    // A host of the configuration may only be local as `localhost`.
    write_site(&host, "/root/site", 0, &format!("{h} = {{ hostname = \"10.0.0.5\"; local = true; }};"), "");
    let out = in_site(&format!("list {h} demo"));
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("but `local = true` deploys to the machine the tool runs on"), "{}", stderr(&out));
}

/// The test host has no `pam_systemd`, which gives a real login its
/// `XDG_RUNTIME_DIR`: a user's manager (started at boot by lingering)
/// needs it, so it gets it as `pam_systemd` would give it.
fn linger(host: &TestHost, user: &str) {
    host.ssh_ok(&format!(
        "mkdir -p /etc/systemd/system/user@.service.d && \
         printf '[Service]\\nEnvironment=XDG_RUNTIME_DIR=/run/user/%%i\\n' >/etc/systemd/system/user@.service.d/runtime-dir.conf && \
         systemctl daemon-reload && loginctl enable-linger {user} && \
         for i in $(seq 100); do systemctl is-active --quiet user@$(id -u {user}).service && break; sleep 0.1; done && \
         systemctl is-active user@$(id -u {user}).service"
    ));
}

#[test]
fn a_user_deploys_rolls_back_and_reads_status_with_its_own_manager() {
    let host = TestHost::boot();
    let ioc = TestIoc::new("iocDemo");
    install_tool(&host);
    add_user(&host, "eng");
    linger(&host, "eng");
    // A single-user Nix (Debian's `nix-bin`) builds as root only: the
    // engineer's builds go through a daemon, as on a multi-user install.
    host.ssh_ok("systemd-run --quiet --unit=nix-daemon /usr/bin/nix-daemon");
    let uid: u32 = host.ssh_ok("id -u eng").trim().parse().unwrap();
    // No `XDG_RUNTIME_DIR` in this login (no `pam_systemd`): the tool finds
    // the manager at `/run/user/<uid>` all the same.
    let as_eng = |args: &str| ssh_as(&host, "eng", &format!("cd ~/site && epnix-deploy {args}"));

    write_site(&host, "/home/eng/site", uid, "", &demo_on(&ioc, "v1", ""));
    let out = as_eng("--user demo");
    assert_exit(&out, 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");
    let profile = "/home/eng/.local/state/nix/profiles/epnix/demo";
    assert_eq!(host.ssh_ok(&format!("readlink {profile}")).trim(), "demo-1-link");
    let unit = "/home/eng/.config/systemd/user/epnix-iocDemo.service";
    let text = host.ssh_ok(&format!("cat {unit}"));
    assert!(!text.contains("DynamicUser") && text.contains("WantedBy=default.target"), "{text}");
    // The IOC is the engineer's, under the engineer's manager.
    let owner = host.ssh_ok(&format!(
        "pid=$(XDG_RUNTIME_DIR=/run/user/{uid} runuser -u eng -- systemctl --user show -p MainPID --value epnix-iocDemo.service) && \
         ps -o user= -p $(cat /proc/$pid/task/*/children | cut -d' ' -f1)"
    ));
    assert_eq!(owner.trim(), "eng");
    // Nothing of the system's.
    assert_untouched(&host);

    write_site(&host, "/home/eng/site", uid, "", &demo_on(&ioc, "v2", ""));
    assert_exit(&as_eng("--user demo"), 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v2");

    let out = as_eng("rollback --user demo --json");
    assert_exit(&out, 0);
    assert_eq!(json(&out)["generation"], 1);
    assert_eq!(host.ssh_ok(&format!("readlink {profile}")).trim(), "demo-1-link");
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");

    let out = as_eng("status --user --json");
    assert_exit(&out, 0);
    let status = json(&out);
    assert_eq!(status["tops"][0]["generation"], 1, "{status:#}");
    assert_eq!(status["iocs"][0]["state"], "running", "{status:#}");
    assert_eq!(status["iocs"][0]["console"], format!("unix:/run/user/{uid}/epics/iocDemo/console"), "{status:#}");

    let out = as_eng("list --user demo --json");
    assert_exit(&out, 0);
    assert_eq!(outcomes(&json(&out)["generations"]), [(1, "healthy".to_owned()), (2, "healthy".to_owned())]);

    // Root is no user of its own.
    let out = ssh_as(&host, "root", "cd /home/eng/site && epnix-deploy --user demo");
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("and you are root"), "{}", stderr(&out));
}
