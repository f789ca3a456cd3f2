//! Safe activation under every fault, on real test hosts: the faults of the
//! issue "Safe activation under every fault", one test each (numbered as
//! there). Each asserts where the host ended (generation, unit file, the
//! running IOC) and the exit code.

use std::time::{Duration, Instant};

use crate::support::{
    DEMO_UNIT as UNIT, Deployer, TestFlake, TestIoc, assert_exit, assert_on, assert_untouched, caget_eventually, demo,
    deployed_v1, epnix_deploy, list, outcomes, profile_link, stderr, wait_for_profile,
};
use crate::testbed::TestHost;

/// 1: heartbeats run on their own timer, so a check command that takes
/// longer than `confirmTimeout` does not get a healthy deploy rolled back.
#[test]
fn a_check_command_longer_than_the_confirm_timeout_is_confirmed() {
    let (host, flake, ioc, _) = deployed_v1();
    let check = "healthCheck.command = \"sleep 9; true\"; healthCheck.commandTimeout = 15;";
    flake.write(&host, &demo(&ioc, "version = \"v2\";", check, "confirmTimeout = 5;"));
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("rollback disarmed"), "{}", stderr(&out));
    std::thread::sleep(Duration::from_secs(6));
    let unit = host.ssh_ok(&format!("cat {UNIT}"));
    assert_on(&host, 2, &unit, &ioc, "v2");
    assert_eq!(outcomes(&list(&host, &flake))[1], (2, "healthy".to_owned()));
    assert_eq!(host.ssh_ok("cat /var/lib/epnix-deploy/demo/events 2>/dev/null || echo none").trim(), "none");
}

/// 2: a check command's whole process tree ends with it: a background
/// child that keeps its output open holds nobody, and a command past its
/// timeout is ended on time.
#[test]
fn a_check_command_is_ended_with_everything_it_started() {
    let (host, flake, ioc, unit_v1) = deployed_v1();
    let lingering = "healthCheck.command = \"sleep 120 & echo started\"; healthCheck.commandTimeout = 5;";
    flake.write(&host, &demo(&ioc, "version = \"v2\";", lingering, ""));
    let started = Instant::now();
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    assert!(started.elapsed() < Duration::from_secs(40), "the deploy took {:?}", started.elapsed());
    assert_eq!(host.ssh_ok("pgrep -x sleep || echo none").trim(), "none", "the check's child lives on");

    let hanging = "healthCheck.command = \"sleep 120\"; healthCheck.commandTimeout = 2;";
    flake.write(&host, &demo(&ioc, "version = \"v3\";", hanging, ""));
    let started = Instant::now();
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("its check command `sleep 120` timed out after 2s"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(40), "the deploy took {:?}", started.elapsed());
    assert_eq!(host.ssh_ok("pgrep -x sleep || echo none").trim(), "none", "the check lives on");
    // Checks live in the generation, not in the unit: the unit is v1's still.
    assert_on(&host, 2, &unit_v1, &ioc, "v2");
}

/// 3: a reboot while the rollback is armed still rolls back, at boot; the
/// lock holder the reboot left is seen as stale.
#[test]
fn a_reboot_with_the_rollback_armed_rolls_back_at_boot() {
    let (host, flake, ioc, unit_v1) = deployed_v1();
    flake.write(&host, &demo(&ioc, "version = \"v2\";", "healthCheck.settleTime = 60;", "confirmTimeout = 60;"));
    let deployer = Deployer::start(&flake, &[host.name.as_str(), "demo"]);
    wait_for_profile(&host, "demo-2-link", Duration::from_secs(60), Some(&deployer));
    // The host goes down in the middle of the checks, with the deploy lock held.
    host.reboot();
    let out = deployer.wait();
    assert_exit(&out, 4);
    assert!(stderr(&out).contains("or at its next boot"), "{}", stderr(&out));

    // Well before the 60 s confirmTimeout: at boot.
    wait_for_profile(&host, "demo-1-link", Duration::from_secs(30), None);
    assert_on(&host, 1, &unit_v1, &ioc, "v1");
    let generations = list(&host, &flake);
    assert_eq!(outcomes(&generations)[1], (2, "unconfirmed".to_owned()));
    assert_eq!(generations[1]["rolledBack"]["reason"], "reboot");

    flake.write(&host, &demo(&ioc, "version = \"v3\";", "", ""));
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("took over the lock of a deploy that ended without releasing it"),
        "{}",
        stderr(&out)
    );
    caget_eventually(&host, "iocDemo:version", &ioc, "v3");
}

/// 4: `rollback` and `delete-generation` are refused while the host has a
/// rollback pending, as a deploy is: it would undo them, or fail for them.
#[test]
fn rollback_and_delete_are_refused_while_a_rollback_is_pending() {
    let (host, flake, ioc, _) = deployed_v1();
    flake.write(&host, &demo(&ioc, "version = \"v2\";", "", ""));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    let unit_v2 = host.ssh_ok(&format!("cat {UNIT}"));
    flake.write(&host, &demo(&ioc, "version = \"v3\";", "healthCheck.settleTime = 60;", "confirmTimeout = 15;"));
    let mut deployer = Deployer::start(&flake, &[host.name.as_str(), "demo"]);
    wait_for_profile(&host, "demo-3-link", Duration::from_secs(60), Some(&deployer));
    deployer.kill();
    // With it goes the deployer's lock: what is left is the pending rollback.
    deployer.end_masters();

    for args in [vec!["rollback", "--to", "1"], vec!["delete-generation", "2"], vec!["remove"]] {
        let mut all = vec![args[0], host.name.as_str(), "demo"];
        all.extend(&args[1..]);
        let out = epnix_deploy(&flake, &all);
        assert_exit(&out, 5);
        assert!(stderr(&out).contains("rollback of an unconfirmed switch of `demo` is pending"), "{}", stderr(&out));
        assert_eq!(profile_link(&host), "demo-3-link");
    }
    // The host's own rollback goes to generation 2, which is still there.
    wait_for_profile(&host, "demo-2-link", Duration::from_secs(30), None);
    assert_on(&host, 2, &unit_v2, &ioc, "v2");
    assert_exit(&epnix_deploy(&flake, &["rollback", host.name.as_str(), "demo"]), 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");
}

/// 5: two tops from two flakes with the same IOC name, deployed at once:
/// exactly one gets the unit, the other is refused and changes nothing.
#[test]
fn two_tops_claiming_one_unit_name_at_once() {
    let host = TestHost::boot();
    let ioc = TestIoc::new("iocShared");
    let flakes = [TestFlake::new(), TestFlake::new()];
    for (flake, top) in flakes.iter().zip(["topa", "topb"]) {
        flake.write(
            &host,
            &format!(
                "{top} = {{ package = top {{ version = \"{top}\"; iocs = [ \"iocShared\" ]; }}; hosts = [ \"test\" ]; iocs = {{ {} }}; }};",
                ioc.nix("")
            ),
        );
    }
    let deployers: Vec<Deployer> =
        flakes.iter().zip(["topa", "topb"]).map(|(f, top)| Deployer::start(f, &[host.name.as_str(), top])).collect();
    let outs: Vec<_> = deployers.into_iter().map(Deployer::wait).collect();
    let mut codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap_or(-1)).collect();
    let winner = if codes[0] == 0 { "topa" } else { "topb" };
    let loser = if winner == "topa" { 1 } else { 0 };
    codes.sort_unstable();
    assert_eq!(codes, [0, 2], "one deploy must win, the other be refused");
    let err = stderr(&outs[loser]);
    assert!(err.contains("belongs to top") || err.contains("already runs as"), "{err}");
    let unit = host.ssh_ok("cat /etc/systemd/system/epnix-iocShared.service");
    assert!(unit.contains(&format!("X-EpnixDeploy-Top={winner}\n")), "{unit}");
    caget_eventually(&host, "iocShared:version", &ioc, winner);
    let loser_top = ["topa", "topb"][loser];
    let profile = host.ssh_ok(&format!("test -e /nix/var/nix/profiles/epnix/{loser_top} && echo yes || echo no"));
    assert_eq!(profile.trim(), "no", "the refused top left a profile");
}

/// 6: the tool's own units live where no IOC name reaches: an IOC called
/// `rollback-demo` in top `demo` deploys, and the deploy still arms its
/// rollback.
#[test]
fn an_ioc_named_like_the_rollback_unit_deploys() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("rollback-demo");
    for version in ["v1", "v2"] {
        flake.write(
            &host,
            &format!(
                "demo = {{ package = top {{ version = \"{version}\"; iocs = [ \"rollback-demo\" ]; }}; hosts = [ \"test\" ]; iocs = {{ {} }}; }};",
                ioc.nix("")
            ),
        );
        let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
        assert_exit(&out, 0);
        assert!(stderr(&out).contains("rollback disarmed"), "{}", stderr(&out));
        caget_eventually(&host, "rollback-demo:version", &ioc, version);
    }
    assert_eq!(host.ssh_ok("systemctl is-active epnix-rollback-demo.service").trim(), "active");
}

/// 7: the lock, the restore point and the state are root's alone, and
/// `--break-lock` ends only a process that really holds the lock.
#[test]
fn the_lock_is_root_only_and_break_lock_ends_only_its_holder() {
    let (host, flake, ioc, unit_v1) = deployed_v1();
    let modes =
        host.ssh_ok("stat -c '%a' /var/lib/epnix-deploy /var/lib/epnix-deploy/demo /var/lib/epnix-deploy/demo/lock");
    assert_eq!(modes.split_whitespace().collect::<Vec<_>>(), ["700", "700", "600"]);
    let out = host.ssh("runuser -u nobody -- flock -n /var/lib/epnix-deploy/demo/lock true");
    assert!(!out.status.success(), "a local user could take the lock");

    // Root's lock held by something that is not a deploy, and a holder line
    // that names an innocent process.
    host.ssh_ok(
        "systemd-run --quiet --unit=squatter flock /var/lib/epnix-deploy/demo/lock sleep 600 && \
         systemd-run --quiet --unit=innocent sleep 600",
    );
    let innocent = host.ssh_ok("systemctl show --property=MainPID --value innocent");
    host.ssh_ok(&format!(
        "echo 'ops@laptop, since 2026-01-01 00:00:00 UTC, pid {}' > /var/lib/epnix-deploy/demo/lock.holder",
        innocent.trim()
    ));
    flake.write(&host, &demo(&ioc, "version = \"v2\";", "", ""));
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo", "--break-lock"]);
    assert_exit(&out, 5);
    assert!(stderr(&out).contains("which are not a deploy: they were left alone"), "{}", stderr(&out));
    assert_eq!(host.ssh_ok("systemctl is-active innocent").trim(), "active");
    assert_on(&host, 1, &unit_v1, &ioc, "v1");
    host.ssh_ok("systemctl stop squatter innocent");
}

/// 8: every command that changes a host checks its name, `rollback` too.
#[test]
fn rollback_delete_and_remove_check_the_host_name() {
    let (host, flake, ioc, _) = deployed_v1();
    flake.write(&host, &demo(&ioc, "version = \"v2\";", "", ""));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    // The same address, configured under another host's name.
    flake.write_as(&host, "ioc-server-9", &demo(&ioc, "version = \"v2\";", "", ""));
    for args in [
        &["rollback", "ioc-server-9", "demo"][..],
        &["delete-generation", "ioc-server-9", "demo", "1"],
        &["remove", "ioc-server-9", "demo"],
    ] {
        let out = epnix_deploy(&flake, args);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(&format!("answers as host `{}`, not `ioc-server-9`", host.name)));
        assert_eq!(profile_link(&host), "demo-2-link");
    }
    assert_exit(&epnix_deploy(&flake, &["rollback", "ioc-server-9", "demo", "--skip-hostname-check"]), 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");
}

/// 9: exit codes that tell the truth. A connection lost while a check
/// command runs is an unknown outcome (exit 4), not a failed check, and the
/// host rolls back by itself.
#[test]
fn a_connection_lost_during_a_check_is_an_unknown_outcome() {
    let (host, flake, ioc, unit_v1) = deployed_v1();
    // The check ends every root SSH session on the host: the deployer's too.
    let cut = "healthCheck.command = \"pkill -KILL -f 'sshd: root'\";";
    flake.write(&host, &demo(&ioc, "version = \"v2\";", cut, "confirmTimeout = 5;"));
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
    assert_exit(&out, 4);
    assert!(stderr(&out).contains("the outcome on"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("failed its health check"), "{}", stderr(&out));
    wait_for_profile(&host, "demo-1-link", Duration::from_secs(20), None);
    assert_on(&host, 1, &unit_v1, &ioc, "v1");
}

/// 9: a non-root SSH user is refused with exit 2 before anything is
/// written on the host, the lock included.
#[test]
fn a_non_root_ssh_user_is_refused_before_the_lock() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    host.ssh_ok(
        "useradd --create-home ops && install -d -o ops -m 700 /home/ops/.ssh && \
         install -o ops -m 600 /root/.ssh/authorized_keys /home/ops/.ssh/authorized_keys",
    );
    flake.write(&host, &demo(&ioc, "version = \"v1\";", "", ""));
    let ssh_opts =
        format!("-i {} -o UserKnownHostsFile={}", host.key_path().display(), host.known_hosts_path().display());
    let out = epnix_deploy(&flake, &[&format!("ops@127.0.0.1:{}", host.port), "demo", "--ssh-opts", &ssh_opts]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("the SSH user `ops` is not root"), "{}", stderr(&out));
    assert_untouched(&host);
    assert_eq!(host.ssh_ok("ls -d /var/lib/epnix-deploy 2>/dev/null || echo none").trim(), "none");
}

/// 9: Ctrl-C during the build is an interruption (exit 130), not bad input.
#[test]
fn ctrl_c_during_the_build_exits_130_and_changes_nothing() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    // A build of its own (the version makes it unique) that takes a while.
    let version = format!("slow{}", ioc.ca_port);
    flake.write(&host, &demo(&ioc, &format!("version = \"{version}\"; buildSleep = 30;"), "", ""));
    let deployer = Deployer::start(&flake, &[host.name.as_str(), "demo"]);
    deployer.wait_for_stderr("build ...", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    deployer.interrupt();
    let out = deployer.wait();
    assert_exit(&out, 130);
    assert!(stderr(&out).contains("nothing changed"), "{}", stderr(&out));
    assert_untouched(&host);
}

/// 10: a working directory or startup script that leaves the top through a
/// symlink is refused before the switch.
#[test]
fn paths_that_leave_the_top_through_a_symlink_are_refused() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    let build = "extraBuild = \"ln -s /etc iocBoot/escape; ln -s /bin/true iocBoot/iocDemo/out.cmd\";";
    let escaping_dir = format!(
        "iocDemo = {{ workingDirectory = \"iocBoot/escape\"; environment.EPICS_CA_SERVER_PORT = \"{}\"; }};",
        ioc.ca_port
    );
    let escaping_script = ioc.nix("startupScript = \"./out.cmd\";");
    for (entry, path) in
        [(escaping_dir, "workingDirectory: `iocBoot/escape`"), (escaping_script, "startupScript: `./out.cmd`")]
    {
        flake.write(
            &host,
            &format!("demo = {{ package = top {{ {build} }}; hosts = [ \"test\" ]; iocs = {{ {entry} }}; }};"),
        );
        let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(path), "{}", stderr(&out));
        assert!(stderr(&out).contains("leads outside the built top through a symlink"), "{}", stderr(&out));
        assert_untouched(&host);
    }
}

/// 9: when the host has begun its own rollback, the deployer does not roll
/// back a second time: it waits for the host's and reports where it ended.
#[test]
fn a_host_that_rolls_back_by_itself_is_not_rolled_back_twice() {
    let (host, flake, ioc, unit_v1) = deployed_v1();
    // The check fires the armed rollback at once, as an expired timer would.
    let fire = "healthCheck.command = \"systemctl start epnix.rollback-demo.service; sleep 4\"; healthCheck.commandTimeout = 20;";
    flake.write(&host, &demo(&ioc, "version = \"v2\";", fire, ""));
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("the host began to roll back by itself"), "{}", stderr(&out));
    assert!(stderr(&out).contains("is back to generation 1, and its IOCs are active"), "{}", stderr(&out));
    assert_on(&host, 1, &unit_v1, &ioc, "v1");
    let events = host.ssh_ok("cat /var/lib/epnix-deploy/demo/events");
    assert_eq!(events.lines().count(), 1, "{events}");
    assert!(events.contains(" 2 1 unconfirmed 0"), "{events}");
}

/// The deployer killed at any moment of a deploy: before the lock, during
/// the copy, between the restore point and the switch, during the switch or
/// the checks, after the confirmation. Whatever the moment, the host settles
/// by itself on a healthy generation, 1 or 2, that runs what it says; it is
/// never left pending, and never restarts an IOC for a switch that did not
/// happen.
#[test]
fn a_deployer_killed_at_any_moment_leaves_the_host_on_a_healthy_generation() {
    let (host, flake, ioc, _) = deployed_v1();
    flake.write(&host, &demo(&ioc, "version = \"v2\";", "", "confirmTimeout = 5;"));
    let records = host.root().join("var/lib/epnix-deploy/demo");
    for delay_ms in [300, 450, 550, 650, 750, 850, 1000, 1500, 2500, 3400, 3800, 9000] {
        let mut deployer = Deployer::start(&flake, &[host.name.as_str(), "demo"]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let finished = deployer.finished();
        if !finished {
            deployer.kill();
        }
        let log = deployer.stderr();
        let last_step = log.lines().rev().find(|l| l.ends_with(" ...")).unwrap_or("-").to_owned();
        deployer.end_masters();
        // The scripts the deployer started go on without it, by design:
        // arming the rollback, or the switch. Let them end first.
        let deadline = Instant::now() + Duration::from_secs(30);
        while host.ssh("pgrep -f -- '[-]-- (prepare|switch)[.]sh' >/dev/null").status.success() {
            assert!(Instant::now() < deadline, "killed after {delay_ms} ms: its scripts never ended");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Settled: no restore point left, armed or being rolled back.
        let deadline = Instant::now() + Duration::from_secs(30);
        while records.join("restore").exists() || records.join("restore.rolling").exists() {
            assert!(Instant::now() < deadline, "killed after {delay_ms} ms: the host never settled");
            std::thread::sleep(Duration::from_millis(200));
        }
        // A rollback may have just restarted the IOC: `status` exits 1
        // until it runs.
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            let out = epnix_deploy(&flake, &["status", host.name.as_str(), "demo", "--json"]);
            let status = crate::support::document(&out)["result"].clone();
            if out.status.code() == Some(0) {
                break status;
            }
            assert!(Instant::now() < deadline, "killed after {delay_ms} ms: {status:#}");
            std::thread::sleep(Duration::from_millis(300));
        };
        assert_eq!(status["tops"][0]["outcome"], "healthy", "killed after {delay_ms} ms: {status}");
        assert_eq!(status["tops"][0]["rollbackPending"], false, "killed after {delay_ms} ms: {status}");
        assert_eq!(status["iocs"][0]["activeState"], "active", "killed after {delay_ms} ms: {status}");
        assert_eq!(status["iocs"][0]["drift"], serde_json::Value::Null, "killed after {delay_ms} ms: {status}");
        let on_v1 = profile_link(&host) == "demo-1-link";
        caget_eventually(&host, "iocDemo:version", &ioc, if on_v1 { "v1" } else { "v2" });
        eprintln!("killed after {delay_ms} ms in `{last_step}` (finished: {finished}): on {}", profile_link(&host));
        if !on_v1 {
            assert_exit(&epnix_deploy(&flake, &["rollback", host.name.as_str(), "demo", "--to", "1"]), 0);
            caget_eventually(&host, "iocDemo:version", &ioc, "v1");
        }
    }
    // And the next deploy goes through.
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v2");
}
