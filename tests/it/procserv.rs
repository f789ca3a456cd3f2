//! procServ from Nix (`hosts.<name>.procServ.package`), as the EPNix guide
//! deploys it: its own profile on the host, used by the units, with
//! `--oneshot`, so that systemd sees every IOC crash.

use crate::support::{TestFlake, TestIoc, assert_exit, caget_eventually, demo_top, epnix_deploy, json, profile_link};
use crate::testbed::TestHost;

const UNIT: &str = "epnix-iocDemo.service";
const PROFILE: &str = "/nix/var/nix/profiles/epnix/procServ";

fn restarts(host: &TestHost) -> u64 {
    host.ssh_ok(&format!("systemctl show --property=NRestarts --value {UNIT}")).trim().parse().unwrap()
}

#[test]
fn procserv_from_nix_runs_the_iocs_with_oneshot_and_stays_through_a_rollback() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    flake.write_with_nix_procserv(&host, &demo_top("v1", &[&ioc]));
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");

    // The profile, as the EPNix guide links it, and the unit that uses it.
    let procserv = host.ssh_ok(&format!("readlink -f {PROFILE}")).trim().to_owned();
    assert!(procserv.ends_with("-procServ-2.8.0"), "{procserv}");
    let unit = host.ssh_ok(&format!("cat /etc/systemd/system/{UNIT}"));
    assert!(unit.contains(&format!("ExecStart={PROFILE}/bin/procServ --foreground --oneshot ")), "{unit}");
    let exe = host.ssh_ok(&format!("readlink /proc/$(systemctl show --property=MainPID --value {UNIT})/exe"));
    assert_eq!(exe.trim(), format!("{procserv}/bin/procServ"));

    // With --oneshot, an IOC that dies takes procServ with it, and systemd
    // restarts the unit: the crash is seen.
    let before = restarts(&host);
    host.ssh_ok(&format!(
        "kill -KILL $(cut -d' ' -f1 /proc/$(systemctl show --property=MainPID --value {UNIT})/task/*/children)"
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while restarts(&host) <= before {
        assert!(std::time::Instant::now() < deadline, "systemd never restarted the unit");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");
    // `status` counts that restart, and shows the new IOC process.
    let out = epnix_deploy(&flake, &["status", host.name.as_str(), "-v", "--json"]);
    assert_exit(&out, 0);
    let status = &json(&out)["iocs"][0];
    assert_eq!(status["restarts"], restarts(&host), "{status:#}");
    let child = host
        .ssh_ok(&format!("cut -d' ' -f1 /proc/$(systemctl show --property=MainPID --value {UNIT})/task/*/children"));
    assert_eq!(status["pid"].to_string(), child.trim(), "{status:#}");

    // A new top, then a rollback of the top: procServ's profile stays.
    flake.write_with_nix_procserv(&host, &demo_top("v2", &[&ioc]));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v2");
    let generations = host.ssh_ok(&format!("nix-env --profile {PROFILE} --list-generations | wc -l"));
    assert_eq!(generations.trim(), "1", "the same procServ again made a generation");
    let out = epnix_deploy(&flake, &["rollback", host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["generation"], 1);
    assert_eq!(profile_link(&host), "demo-1-link");
    assert_eq!(host.ssh_ok(&format!("readlink -f {PROFILE}")).trim(), procserv);
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");
}
