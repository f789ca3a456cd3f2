//! `epnix-deploy <host> <top>` against real test hosts: real sshd, Nix,
//! systemd, procServ and an EPICS IOC answering over Channel Access.

use crate::support::{
    TestFlake, TestIoc, assert_exit, assert_untouched, caget_eventually, change, demo, demo_top, deployed_v1,
    epnix_deploy, json, profile_link, start_marks, stderr,
};
use crate::testbed::TestHost;

#[test]
fn deploy_update_and_redeploy() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");

    flake.write(&host, &demo_top("v1", &[&ioc]));
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
    assert_exit(&out, 0);
    assert_eq!(profile_link(&host), "demo-1-link");
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("1 (new)") && summary.contains("iocDemo") && summary.contains("new"), "{summary}");

    flake.write(&host, &demo_top("v2", &[&ioc]));
    let before = start_marks(&host, "epnix-iocDemo.service");
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    let report = json(&out);
    assert_eq!(report["generation"], 2);
    assert_eq!(report["newGeneration"], true);
    assert_eq!(change(&report, "iocDemo"), "changed");
    assert_eq!(profile_link(&host), "demo-2-link");
    assert_ne!(start_marks(&host, "epnix-iocDemo.service"), before, "the IOC was not restarted");
    caget_eventually(&host, "iocDemo:version", &ioc, "v2");

    // The same build again: no generation, no restart.
    let before = start_marks(&host, "epnix-iocDemo.service");
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    let report = json(&out);
    assert_eq!(report["newGeneration"], false);
    assert_eq!(change(&report, "iocDemo"), "unchanged");
    assert_eq!(profile_link(&host), "demo-2-link");
    assert_eq!(start_marks(&host, "epnix-iocDemo.service"), before, "the IOC was restarted");
    let generations = host.ssh_ok("nix-env --profile /nix/var/nix/profiles/epnix/demo --list-generations | wc -l");
    assert_eq!(generations.trim(), "2");
}

#[test]
fn an_ioc_removed_from_the_config_is_stopped_and_its_unit_removed() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let (demo, second) = (TestIoc::new("iocDemo"), TestIoc::new("iocSecond"));

    flake.write(&host, &demo_top("v1", &[&demo, &second]));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    caget_eventually(&host, "iocSecond:version", &second, "v1");
    caget_eventually(&host, "iocDemo:version", &demo, "v1");

    flake.write(&host, &demo_top("v1", &[&demo]));
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    let report = json(&out);
    assert_eq!(change(&report, "iocSecond"), "removed");
    assert_eq!(
        host.ssh_ok("test -e /etc/systemd/system/epnix-iocSecond.service && echo present || echo gone").trim(),
        "gone"
    );
    let state = host.ssh("systemctl is-active epnix-iocSecond.service");
    assert_ne!(String::from_utf8_lossy(&state.stdout).trim(), "active");
    assert_eq!(host.caget("iocSecond:version", second.ca_port), None);
    caget_eventually(&host, "iocDemo:version", &demo, "v1");
}

#[test]
fn bad_configs_are_refused_before_the_host_is_touched() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");

    let cases = [
        (
            ioc.nix("workingDir = \"x\";"),
            "epnixDeploy.tops.demo.iocs.iocDemo.workingDir: is not a known option",
            "did you mean `workingDirectory`?",
        ),
        (
            ioc.nix("startupScript = \"../../../etc/st.cmd\";"),
            "startupScript: `../../../etc/st.cmd` leads outside the top",
            "hint:",
        ),
        (ioc.nix("procServ.console = \"tcp\";"), "procServ.console: must be \"unix\" or a TCP port number", ""),
        // Values the unit cannot carry (issue "Safe activation under every fault", 11).
        (ioc.nix("description = \"ends in \\\\\";"), "description: ends in a backslash", ""),
        (ioc.nix("procServ.console = 80;"), "TCP port 80 is below 1024", "hint:"),
        (
            ioc.nix("healthCheck.command = \"true\"; healthCheck.commandTimeout = 90;"),
            "more than the top's activationTimeout of 60",
            "hint:",
        ),
        (
            ioc.nix("startupScript = \"./missing.cmd\";"),
            "startupScript: `./missing.cmd` is not in the built top",
            "hint:",
        ),
    ];
    for (entry, message, hint) in cases {
        flake.write(&host, &format!("demo = {{ package = top {{ }}; hosts = [ \"test\" ]; iocs = {{ {entry} }}; }};"));
        let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(message), "expected {message:?} in:\n{}", stderr(&out));
        assert!(stderr(&out).contains(hint), "expected {hint:?} in:\n{}", stderr(&out));
        assert_untouched(&host);
    }

    // Unknown top and unknown host.
    flake.write(&host, &demo_top("v1", &[&ioc]));
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demoo"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("there is no top `demoo`"), "{}", stderr(&out));
    let out = epnix_deploy(&flake, &["nohost", "demo"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("unknown host `nohost`"), "{}", stderr(&out));
    assert_untouched(&host);
}

#[test]
fn a_unit_the_tool_did_not_write_is_left_alone() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    let foreign = "[Service]\nExecStart=/bin/sleep infinity\n";
    host.ssh_ok(&format!("printf '{}' > /etc/systemd/system/epnix-iocDemo.service", foreign.replace('\n', "\\n")));

    flake.write(&host, &demo_top("v1", &[&ioc]));
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("was not written by epnix-deploy"), "{}", stderr(&out));
    assert_eq!(host.ssh_ok("cat /etc/systemd/system/epnix-iocDemo.service"), foreign);
    assert_eq!(host.ssh_ok("ls -d /nix/var/nix/profiles/epnix 2>/dev/null || true").trim(), "");
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    flake.write(&host, &demo_top("v1", &[&ioc]));

    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo", "--dry-run"]);
    assert_exit(&out, 0);
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("profile /nix/var/nix/profiles/epnix/demo: new, generation 1"), "{plan}");
    assert!(plan.contains("iocDemo (epnix-iocDemo.service): new"), "{plan}");
    // The closure goes in the switch's own call, and only what the host lacks.
    assert!(plan.contains("store path(s) the host lacks, in the switch's call: `nix-store --export`"), "{plan}");
    // Everything the deploy does to the host, in order, with nothing that
    // only exists while the tool runs.
    for step in [
        "take the deploy lock",
        "save the restore point",
        "arm the rollback",
        "heartbeats every",
        "switch: sh switch.sh",
        "confirm over a new SSH login",
    ] {
        assert!(plan.contains(step), "{step:?} missing from:\n{plan}");
    }
    assert!(!plan.contains("/tmp/"), "{plan}");
    assert_untouched(&host);
}

/// The store paths go to the host in the switch's own call, and only those
/// it lacks: a new top with its generation, then a generation alone when
/// only the configuration changed.
#[test]
fn only_the_store_paths_the_host_lacks_are_sent() {
    let (host, flake, ioc, _) = deployed_v1();
    let h = host.name.as_str();
    let sent = |out: &std::process::Output| -> Vec<String> {
        let err = stderr(out);
        let line = err.lines().find_map(|l| l.strip_prefix("local: $ nix-store --export ")).unwrap_or_default();
        let mut paths: Vec<String> = line.split(' ').filter(|p| !p.is_empty()).map(str::to_owned).collect();
        paths.sort();
        paths
    };
    let top = || host.ssh_ok("readlink -f /nix/var/nix/profiles/epnix/demo/.epnix-deploy/top").trim().to_owned();
    let v1_top = top();

    flake.write(&host, &demo(&ioc, "version = \"v2\";", "", ""));
    let out = epnix_deploy(&flake, &["-v", h, "demo"]);
    assert_exit(&out, 0);
    let v2_top = top();
    let generation = host.ssh_ok("readlink -f /nix/var/nix/profiles/epnix/demo").trim().to_owned();
    let mut want = vec![v2_top.clone(), generation];
    want.sort();
    assert_eq!(sent(&out), want, "v1's top {v1_top} is there already");

    // Only the IOC's settings change: the top is there, the generation is new.
    flake.write(&host, &demo(&ioc, "version = \"v2\";", "environment.EXTRA = \"1\";", ""));
    let out = epnix_deploy(&flake, &["-v", h, "demo"]);
    assert_exit(&out, 0);
    let generation = host.ssh_ok("readlink -f /nix/var/nix/profiles/epnix/demo").trim().to_owned();
    assert_eq!(sent(&out), [generation]);
    assert_eq!(top(), v2_top);
    caget_eventually(&host, "iocDemo:version", &ioc, "v2");
}
