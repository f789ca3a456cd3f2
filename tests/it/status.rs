//! `status` on a real host: every IOC of every top, the IOC's own PID (procServ's
//! child), its restarts also under Debian's procServ 2.7 (which restarts a dead
//! IOC itself, unseen by systemd), and an exit code monitoring scripts can use.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    TestFlake, TestIoc, assert_exit, caget_eventually, demo_top, document, epnix_deploy, json, stderr,
};
use crate::testbed::TestHost;

/// `status <host> -v --json`: the document's outcome and its result.
fn status(flake: &TestFlake, host: &TestHost, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["status", host.name.as_str(), "--json"];
    args.extend(extra);
    let out = epnix_deploy(flake, &args);
    let doc = document(&out);
    (out.status.code().unwrap(), doc["result"].clone())
}

fn ioc<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["iocs"].as_array().unwrap().iter().find(|i| i["ioc"] == name).unwrap_or_else(|| panic!("{report:#}"))
}

/// The PID of procServ's child in `unit`, read on the host.
fn child_pid(host: &TestHost, unit: &str) -> Option<u64> {
    let out = host.ssh_ok(&format!(
        "cat /proc/$(systemctl show --property=MainPID --value {unit})/task/*/children 2>/dev/null || true"
    ));
    out.split_whitespace().next().and_then(|p| p.parse().ok())
}

/// Kills the IOC process of `unit` and waits for procServ to start a new one.
fn kill_ioc(host: &TestHost, unit: &str) -> u64 {
    let old = child_pid(host, unit).expect("the IOC runs");
    host.ssh_ok(&format!("kill -KILL {old}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match child_pid(host, unit) {
            Some(new) if new != old => return new,
            _ => assert!(Instant::now() < deadline, "procServ never restarted the IOC"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_shows_the_iocs_own_pid_and_restarts_and_fails_on_a_crash_loop() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let (a, b) = (TestIoc::new("iocA"), TestIoc::new("iocB"));
    let other = TestIoc::new("iocOther");
    let tops = format!(
        "{}\n{}",
        demo_top("v1", &[&a, &b]),
        demo_top("v1", &[&other]).replacen("demo =", "other =", 1).replace("version = \"v1\";", "version = \"o1\";")
    );
    flake.write(&host, &tops);
    let h = host.name.as_str();
    assert_exit(&epnix_deploy(&flake, &[h, "demo"]), 0);
    assert_exit(&epnix_deploy(&flake, &[h, "other"]), 0);
    caget_eventually(&host, "iocA:version", &a, "v1");

    // Every top on the host, with no top named; exit 0 while all run.
    let (code, report) = status(&flake, &host, &["-v"]);
    assert_eq!(code, 0, "{report:#}");
    let tops: Vec<&str> = report["tops"].as_array().unwrap().iter().map(|t| t["top"].as_str().unwrap()).collect();
    assert_eq!(tops, ["demo", "other"]);
    assert_eq!(report["tops"][0]["outcome"], "healthy");
    assert_eq!(ioc(&report, "iocOther")["top"], "other");
    // `-v`: the IOC's own PID, not procServ's.
    let pid = child_pid(&host, "epnix-iocA.service").unwrap();
    assert_eq!(ioc(&report, "iocA")["pid"], pid);
    assert_eq!(ioc(&report, "iocA")["restarts"], 0);
    assert!(ioc(&report, "iocA")["memoryKib"].as_u64().unwrap() > 0, "{report:#}");

    // procServ 2.7 restarts a killed IOC itself: systemd sees nothing, the
    // count still grows, and the new PID is shown.
    let new = kill_ioc(&host, "epnix-iocA.service");
    let (code, report) = status(&flake, &host, &["-v", "demo"]);
    assert_eq!(code, 0, "one restart is not a loop: {report:#}");
    assert_eq!(ioc(&report, "iocA")["restarts"], 1);
    assert_eq!(ioc(&report, "iocA")["pid"], new);
    assert_eq!(ioc(&report, "iocB")["restarts"], 0);
    assert!(report["iocs"].as_array().unwrap().iter().all(|i| i["top"] == "demo"), "{report:#}");

    // Dying again and again is a crash loop: exit 1, with the result.
    kill_ioc(&host, "epnix-iocA.service");
    kill_ioc(&host, "epnix-iocA.service");
    let out = epnix_deploy(&flake, &["status", h]);
    assert_exit(&out, 1);
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().find(|l| l.contains("iocA")).unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("crash-looping") && row.contains(" 3 "), "{text}");
    let (code, report) = status(&flake, &host, &[]);
    assert_eq!(code, 1);
    assert_eq!(ioc(&report, "iocA")["state"], "crash-looping");
    assert_eq!(ioc(&report, "iocB")["state"], "running");

    // A stopped IOC is not running either; `-vv` shows the console socket
    // and the last log line.
    host.ssh_ok("systemctl stop epnix-iocOther.service");
    let (code, report) = status(&flake, &host, &["-vv", "other"]);
    assert_eq!(code, 1);
    assert_eq!(ioc(&report, "iocOther")["state"], "stopped");
    host.ssh_ok("systemctl start epnix-iocOther.service");
    caget_eventually(&host, "iocOther:version", &other, "o1");
    let (code, report) = status(&flake, &host, &["-vv", "other"]);
    assert_eq!(code, 0, "{report:#}");
    let o = ioc(&report, "iocOther");
    assert_eq!(o["console"], "unix:/run/epics/iocOther/console");
    assert_eq!(o["socketMode"], "666");
    assert!(o["lastLine"].as_str().is_some_and(|l| !l.is_empty()), "{report:#}");
    assert_eq!(o["consoleClients"], 0);
}

#[test]
fn status_needs_no_flake_for_a_bare_host_and_names_a_mistyped_top() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    flake.write(&host, &demo_top("v1", &[&ioc]));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);

    // user@host: no flake, the tops come from the host's own units.
    let bare = format!("root@127.0.0.1:{}", host.port);
    let opts = format!("-i {} -o UserKnownHostsFile={}", host.key_path().display(), host.known_hosts_path().display());
    let nowhere = tempfile::tempdir().unwrap();
    let out = crate::support::run(&[
        "status".into(),
        bare,
        "--ssh-opts".into(),
        opts,
        "--flake".into(),
        nowhere.path().display().to_string(),
    ]);
    assert_exit(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("demo on root@127.0.0.1") && text.contains("iocDemo") && text.contains("running"), "{text}");

    // A top that is neither configured nor on the host.
    let out = epnix_deploy(&flake, &["status", host.name.as_str(), "dmeo"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("did you mean `demo`?"), "{}", stderr(&out));
    let out = epnix_deploy(&flake, &["status", host.name.as_str(), "demo", "--json"]);
    assert_eq!(json(&out)["iocs"][0]["ioc"], "iocDemo");
}
