//! Safe activation against real test hosts, with faults injected: IOCs that
//! crash or never get ready, failing check commands, a deployer cut off after
//! the switch, two deploys at once, a host with another name, and a healthy
//! deploy that must stay. Each test asserts where the host ended: its
//! generation, its unit files, and a PV over Channel Access.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{
    DEMO_UNIT as UNIT, Deployer, TestFlake, TestIoc, assert_exit, assert_on, caget_eventually, demo, deployed_v1,
    epnix_deploy, profile_link, stderr, wait_for_profile,
};
use crate::testbed::TestHost;

/// The host is back on generation 1, with v1's unit, and v1 answers.
fn assert_back_on_v1(host: &TestHost, ioc: &TestIoc, unit_v1: &str) {
    assert_on(host, 1, unit_v1, ioc, "v1");
}

fn assert_rolled_back(out: &std::process::Output, why: &str) {
    assert_exit(out, 1);
    let err = stderr(out);
    assert!(err.contains(why), "expected {why:?} in:\n{err}");
    assert!(err.contains("rolled back: `"), "{err}");
    assert!(err.contains("is back to generation 1, and its IOCs are active"), "{err}");
}

#[test]
fn an_ioc_that_exits_at_start_is_rolled_back() {
    let (host, flake, ioc, unit_v1) = deployed_v1();

    // v2's IOC has an extra variable, so its unit differs too.
    flake.write(
        &host,
        &demo(&ioc, "version = \"v2\"; iocs = [ ]; brokenIocs = [ \"iocDemo\" ];", "environment.V = \"2\";", ""),
    );
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
    assert_rolled_back(&out, "IOC `iocDemo` failed its health check: the IOC exited and procServ restarted it");
    assert!(stderr(&out).contains("injected failure"), "the log tail is missing:\n{}", stderr(&out));
    assert_back_on_v1(&host, &ioc, &unit_v1);

    // Notes are not data: they go to stderr, the table to stdout.
    let list = epnix_deploy(&flake, &["list", host.name.as_str(), "demo"]);
    assert!(!String::from_utf8_lossy(&list.stdout).contains("note:"));
    let list = stderr(&list);
    assert!(list.contains("note: generation 2 was rolled back to 1"), "{list}");
    assert!(list.contains("failed their health checks"), "{list}");
}

#[test]
fn an_ioc_that_never_gets_ready_is_rolled_back_at_the_timeout() {
    let (host, flake, ioc, unit_v1) = deployed_v1();

    flake.write(
        &host,
        &demo(&ioc, "version = \"v2\"; iocs = [ ]; silentIocs = [ \"iocDemo\" ];", "", "activationTimeout = 6;"),
    );
    let started = Instant::now();
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
    assert_rolled_back(
        &out,
        "its ready line `iocRun: All initialization complete` did not appear within the activation timeout of 6s",
    );
    assert!(started.elapsed() < Duration::from_secs(40), "took {:?}", started.elapsed());
    assert_back_on_v1(&host, &ioc, &unit_v1);
}

#[test]
fn a_failing_check_command_is_rolled_back() {
    let (host, flake, ioc, unit_v1) = deployed_v1();

    let check = format!(
        "healthCheck.command = \"EPICS_CA_ADDR_LIST=127.0.0.1:{} caget iocDemo:nosuchpv\"; healthCheck.commandTimeout = 15;",
        ioc.ca_port
    );
    flake.write(&host, &demo(&ioc, "version = \"v2\";", &check, ""));
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
    assert_rolled_back(&out, "its check command `EPICS_CA_ADDR_LIST=");
    assert_back_on_v1(&host, &ioc, &unit_v1);

    // A check's own status is never taken for ssh's (255) or the switch's
    // (21): both are failed checks, rolled back.
    for code in [255, 21] {
        flake.write(&host, &demo(&ioc, "version = \"v2\";", &format!("healthCheck.command = \"exit {code}\";"), ""));
        let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
        assert_rolled_back(&out, &format!("its check command `exit {code}` exited with status {code}"));
        assert_back_on_v1(&host, &ioc, &unit_v1);
    }

    // The same check on a PV that exists passes.
    let check = check.replace("iocDemo:nosuchpv", "iocDemo:heartbeat");
    flake.write(&host, &demo(&ioc, "version = \"v2\";", &check, ""));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v2");
}

#[test]
fn a_killed_deployer_leaves_the_host_to_roll_back_by_itself() {
    let (host, flake, ioc, unit_v1) = deployed_v1();

    // Checks that take a while, so the deployer is killed during them.
    flake.write(&host, &demo(&ioc, "version = \"v2\";", "healthCheck.settleTime = 30;", "confirmTimeout = 5;"));
    let mut deployer = Deployer::start(&flake, &[host.name.as_str(), "demo"]);
    wait_for_profile(&host, "demo-2-link", Duration::from_secs(60), Some(&deployer));
    let killed_at = Instant::now();
    deployer.kill();

    wait_for_profile(&host, "demo-1-link", Duration::from_secs(5 + 5), None);
    assert!(killed_at.elapsed() >= Duration::from_secs(4), "rolled back before the confirm timeout");
    assert_back_on_v1(&host, &ioc, &unit_v1);
    let status = epnix_deploy(&flake, &["status", host.name.as_str(), "demo"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("to generation 1 (unconfirmed)"), "{status}");
}

#[test]
fn a_host_that_refuses_new_logins_rolls_back_by_itself() {
    let (host, flake, ioc, unit_v1) = deployed_v1();

    flake.write(&host, &demo(&ioc, "version = \"v2\";", "healthCheck.settleTime = 4;", "confirmTimeout = 5;"));
    let deployer = Deployer::start(&flake, &[host.name.as_str(), "demo"]);
    wait_for_profile(&host, "demo-2-link", Duration::from_secs(60), Some(&deployer));
    // The deployer's connection stays; any new login is refused, as after a
    // bad network or SSH change.
    host.ssh_ok("printf 'DenyUsers root\\n' > /etc/ssh/sshd_config.d/zz-deny.conf && systemctl reload ssh");

    let out = deployer.wait();
    assert_exit(&out, 4);
    assert!(stderr(&out).contains("could not be confirmed"), "{}", stderr(&out));
    assert!(stderr(&out).contains("rolls back by itself to generation 1"), "{}", stderr(&out));
    // No login works now: read the host's files from outside.
    wait_for_profile(&host, "demo-1-link", Duration::from_secs(5 + 5), None);
    let root = host.root();
    assert_eq!(std::fs::read_to_string(root.join(UNIT.trim_start_matches('/'))).unwrap(), unit_v1);
    // The rollback notes itself last, after restarting the IOC.
    let events = root.join("var/lib/epnix-deploy/demo/events");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = std::fs::read_to_string(events).expect("the rollback was not noted");
    assert!(events.contains(" 2 1 unconfirmed 0"), "{events}");
}

#[test]
fn a_second_deploy_at_the_same_time_fails_fast_and_names_the_first() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    flake.write(&host, &demo(&ioc, "version = \"v1\";", "healthCheck.settleTime = 8;", ""));
    let first = Deployer::start(&flake, &[host.name.as_str(), "demo"]);
    let holder = host.root().join("var/lib/epnix-deploy/demo/lock.holder");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !holder.exists() {
        assert!(Instant::now() < deadline, "the first deploy never took the lock");
        std::thread::sleep(Duration::from_millis(100));
    }

    let started = Instant::now();
    let second = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
    assert_exit(&second, 5);
    assert!(started.elapsed() < Duration::from_secs(5), "the second deploy waited {:?}", started.elapsed());
    let err = stderr(&second);
    assert!(err.contains("another deploy of top `demo`"), "{err}");
    // The first deploy's user: from the environment, or else the system's
    // name for it (CI runs without USER).
    let env = std::env::var("USER").or_else(|_| std::env::var("LOGNAME"));
    let user = env.ok().filter(|u| !u.is_empty()).unwrap_or_else(|| {
        let id = Command::new("id").arg("-un").output().expect("running id");
        String::from_utf8_lossy(&id.stdout).trim().to_owned()
    });
    assert!(err.contains(&format!("is running: {user}@")), "{err}");

    assert_exit(&first.wait(), 0);
    assert_eq!(profile_link(&host), "demo-1-link");
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");
    assert!(!holder.exists(), "the lock was not released");
}

#[test]
fn a_hung_lock_is_named_and_can_be_broken() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    // A deploy whose connection hangs: its lock holder lives on. (systemd
    // expands `$$` in a command line to `$`, hence `$$$$` for the shell's.)
    host.ssh_ok(
        "mkdir -p /var/lib/epnix-deploy/demo && systemd-run --quiet --unit=hung-deploy sh -c \
         'exec 9>>/var/lib/epnix-deploy/demo/lock; flock 9; \
          echo \"ops@laptop-7, since 2026-01-01 00:00:00 UTC, pid $$$$\" > /var/lib/epnix-deploy/demo/lock.holder; \
          while :; do sleep 1; done'",
    );
    let holder = host.root().join("var/lib/epnix-deploy/demo/lock.holder");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holder.exists() {
        assert!(Instant::now() < deadline, "the hung holder did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    flake.write(&host, &demo(&ioc, "version = \"v1\";", "", ""));
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
    assert_exit(&out, 5);
    assert!(stderr(&out).contains("ops@laptop-7, since 2026-01-01 00:00:00 UTC"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--break-lock"), "{}", stderr(&out));

    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo", "--break-lock"]), 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");
}

#[test]
fn a_host_with_another_name_is_refused() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    flake.write_as(&host, "ioc-server-9", &demo(&ioc, "", "", ""));
    let out = epnix_deploy(&flake, &["ioc-server-9", "demo"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains(&format!("answers as host `{}`, not `ioc-server-9`", host.name)), "{}", stderr(&out));
    assert_eq!(host.ssh_ok("ls -d /nix/var/nix/profiles/epnix 2>/dev/null || true").trim(), "");

    let out = epnix_deploy(&flake, &["ioc-server-9", "demo", "--skip-hostname-check"]);
    assert_exit(&out, 0);
}

#[test]
fn a_healthy_deploy_is_confirmed_and_stays() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    flake.write(&host, &demo(&ioc, "version = \"v1\";", "", "confirmTimeout = 5;"));
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("over a new SSH login; rollback disarmed"), "{}", stderr(&out));

    // Past the confirm timeout: nothing fires.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(profile_link(&host), "demo-1-link");
    assert_eq!(host.ssh_ok("systemctl is-active epnix.rollback-demo.timer || true").trim(), "inactive");
    assert_eq!(host.ssh_ok("ls /var/lib/epnix-deploy/demo/events 2>/dev/null || echo none").trim(), "none");
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");
}
