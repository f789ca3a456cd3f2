//! The operators' group: `epnix-deploy sudoers --group iocops` installed on
//! a host, and `op`, a member, logged in as itself: it reads the status
//! and the logs, restarts an IOC and attaches to its console, through
//! exactly the policy's commands, and may not deploy.

use std::time::Duration;

use crate::operate::Terminal;
use crate::support::*;
use crate::testbed::TestHost;

/// The policy, as the tool prints it.
fn policy() -> String {
    let out = run(&["sudoers".to_owned(), "--group".to_owned(), "iocops".to_owned()]);
    assert_exit(&out, 0);
    String::from_utf8(out.stdout).unwrap()
}

/// `op`, in group `iocops`, with the policy in /etc/sudoers.d/, checked by
/// `visudo` first.
fn operator(host: &TestHost) {
    add_user(host, "op");
    host.ssh_ok("groupadd iocops && usermod -a -G iocops op");
    host.ssh_ok(&format!("cat >/tmp/epnix-operators <<'POLICY'\n{}POLICY\nvisudo -cf /tmp/epnix-operators", policy()));
    host.ssh_ok("install -m 0440 /tmp/epnix-operators /etc/sudoers.d/epnix-operators && visudo -c");
}

/// The tool as `op`, on the bare target `op@127.0.0.1:PORT`.
fn as_op(host: &TestHost, args: &[&str]) -> std::process::Output {
    let mut all: Vec<String> = vec![args[0].to_owned(), format!("op@127.0.0.1:{}", host.port)];
    all.extend(args[1..].iter().map(|a| (*a).to_owned()));
    all.extend(["--ssh-opts".to_owned(), ssh_opts(host)]);
    run(&all)
}

fn ssh_opts(host: &TestHost) -> String {
    format!("-i {} -o UserKnownHostsFile={}", host.key_path().display(), host.known_hosts_path().display())
}

/// What a deploy would change: the profile, the unit, the IOC's process.
fn fingerprint(host: &TestHost) -> String {
    host.ssh_ok(&format!(
        "readlink /nix/var/nix/profiles/epnix/demo; cat {DEMO_UNIT}; systemctl show --property=MainPID --value epnix-iocDemo.service"
    ))
}

#[test]
fn an_operator_reads_restarts_and_attaches_but_may_not_deploy() {
    let (host, flake, ioc, _) = deployed_v1();
    operator(&host);

    // The policy lets nothing else through: another unit, a shell.
    for cmd in [
        "sudo -n -- /usr/bin/flock -n -E 75 /var/lib/epnix-deploy/demo/lock /usr/bin/systemctl restart epnix-iocDemoXservice",
        "sudo -n -- /usr/bin/systemctl restart epnix-iocDemo.service",
        "sudo -n -- /usr/bin/journalctl -u epnix-iocDemo.service --no-pager -o short-iso --utc -S 1h --vacuum-time=1s",
        "sudo -n -- /usr/bin/socat -u UNIX-CONNECT:/run/epics/../../etc/shadow STDOUT",
        "sudo -n -- sh -c id",
    ] {
        let out = ssh_as(&host, "op", cmd);
        assert!(!out.status.success(), "the policy let `{cmd}` through");
    }

    let out = as_op(&host, &["status", "--json"]);
    assert_exit(&out, 0);
    let status = json(&out);
    assert_eq!(status["iocs"][0]["state"], "running", "{status:#}");
    assert_eq!(status["iocs"][0]["drift"], serde_json::Value::Null, "{status:#}");
    assert_eq!(status["tops"][0]["rollbackPending"], serde_json::Value::Null, "{status:#}");

    let out = as_op(&host, &["logs", "iocDemo", "-n", "50"]);
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("iocRun: All initialization complete"));

    let before = host.ssh_ok("systemctl show --property=MainPID --value epnix-iocDemo.service");
    let out = as_op(&host, &["restart", "iocDemo", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["iocs"][0]["done"], "restarted");
    let after = host.ssh_ok("systemctl show --property=MainPID --value epnix-iocDemo.service");
    assert_ne!(before, after, "the IOC was not restarted");
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");

    // The console, through the policy's socat; the socket stays root's.
    let target = format!("op@127.0.0.1:{}", host.port);
    let opts = ssh_opts(&host);
    let mut term = Terminal::start(&flake, &["console", &target, "iocDemo", "--read-only", "--ssh-opts", &opts]);
    term.wait_for("@@@ Welcome to procServ");
    std::thread::sleep(Duration::from_millis(500));
    term.type_keys(b"\x1d");
    let (code, screen) = term.exit_code();
    assert_eq!(code, Some(0), "{screen}");
    assert_eq!(host.ssh_ok("stat -c %a /run/epics/iocDemo").trim(), "700");

    // A deploy is the deployers': refused before anything changes.
    let unchanged = fingerprint(&host);
    flake.write_as_user(&host, "op", "", &demo(&ioc, "version = \"v2\";", "", ""));
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("the SSH user `op` is not root"), "{err}");
    assert!(err.contains("epnix-deploy sudoers --group GROUP"), "{err}");
    assert!(err.contains("deploy, rollback, remove and delete-generation stay with the deployers"), "{err}");
    assert_eq!(fingerprint(&host), unchanged, "the operator's deploy changed the host");
}
