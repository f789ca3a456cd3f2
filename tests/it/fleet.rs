//! Runs over many real test hosts: `deploy --on @tag` in parallel, a staged
//! rollout whose canary fails, one host rolled back among healthy ones,
//! `status --on @tag`, and hosts that build the top themselves.

use std::path::Path;

use serde_json::Value;

use crate::support::{
    TestFlake, TestIoc, assert_exit, assert_untouched, boot_hosts, document, epnix_deploy, json, stderr,
};
use crate::testbed::TestHost;

/// The top `name` at `version`, its one IOC `ioc` (broken when `broken`),
/// on `hosts`; each IOC checked for `settle` seconds.
fn top(name: &str, version: &str, ioc: &TestIoc, hosts: &[&TestHost], broken: bool, settle: u32) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{}\"", h.name)).collect();
    let iocs = if broken {
        format!("iocs = [ ]; brokenIocs = [ \"{}\" ];", ioc.name)
    } else {
        format!("iocs = [ \"{}\" ];", ioc.name)
    };
    format!(
        "{name} = {{ package = top {{ version = \"{version}\"; {iocs} }}; hosts = [ {} ]; iocs = {{ {} }}; }};",
        hosts.join(" "),
        ioc.nix(&format!("healthCheck.settleTime = {settle};"))
    )
}

/// `top`'s profile link on `host`, or nothing.
fn profile(host: &TestHost, top: &str) -> String {
    host.ssh_ok(&format!("readlink /nix/var/nix/profiles/epnix/{top} || true")).trim().to_owned()
}

/// When `ioc`'s unit last started and when its top was last confirmed
/// healthy, in seconds: the host's check window of the last deploy.
fn check_window(host: &TestHost, top: &str, ioc: &str) -> (f64, f64) {
    let out = host.ssh_ok(&format!(
        "t=$(systemctl show --timestamp=us+utc --property=ActiveEnterTimestamp --value epnix-{ioc}.service); \
         date -d \"${{t#* }}\" +%s.%N; stat -c %.9Y /var/lib/epnix-deploy/{top}/outcomes"
    ));
    let times: Vec<f64> = out.split_whitespace().map(|t| t.parse().unwrap()).collect();
    (times[0], times[1])
}

/// The `entries` of a `fleet-*` document, as `(host, top, outcome)`.
fn entries(doc: &Value) -> Vec<(String, String, String)> {
    doc["result"]["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries in {doc:#}"))
        .iter()
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
            let outcome = if e["notReached"].is_null() { s(&e["outcome"]) } else { s(&e["notReached"]) };
            (s(&e["host"]), s(&e["top"]), outcome)
        })
        .collect()
}

/// Four hosts, `a`, `b` and `c` tagged `linac`, `d` not. The top `demo`
/// runs on `a`, `c` and `d`, `other` on `b`. A canary that fails stops the
/// rollout before anything else is touched; `--on @linac` then deploys
/// exactly the tagged hosts, side by side; a crash on `b` rolls back `b`
/// alone; `status --on @linac` reads every tagged host.
#[test]
fn a_fleet_by_tag_in_parallel_with_a_canary_and_a_rollback() {
    let hosts = boot_hosts(4);
    let (a, b, c, d) = (&hosts[0], &hosts[1], &hosts[2], &hosts[3]);
    let flake = TestFlake::new();
    let (demo_ioc, other_ioc) = (TestIoc::new("iocFleet"), TestIoc::new("iocFleetB"));
    let linac = "tags = [ \"linac\" ];";
    let write = |demo: (&str, bool), other: (&str, bool), settle: u32| {
        let tops = format!(
            "{}\n{}",
            top("demo", demo.0, &demo_ioc, &[a, c, d], demo.1, settle),
            top("other", other.0, &other_ioc, &[b], other.1, settle)
        );
        flake.write_hosts(&[(a, linac), (b, linac), (c, linac), (d, "")], &tops);
    };

    // The canary (`b`, named first) crashes: nobody else is touched.
    write(("v1", false), ("v1", true), 1);
    let on = format!("{},@linac", b.name);
    let out = epnix_deploy(&flake, &["deploy", "--on", &on, "--canary", "1", "--json"]);
    assert_exit(&out, 1);
    let doc = document(&out);
    let (ha, hb, hc) = (a.name.clone(), b.name.clone(), c.name.clone());
    // After the canary, `@linac`'s other hosts by name.
    let mut rest = [ha.clone(), hc.clone()];
    rest.sort();
    assert_eq!(
        entries(&doc),
        [
            (hb.clone(), "other".into(), "failed".into()),
            (rest[0].clone(), "demo".into(), "canary-failed".into()),
            (rest[1].clone(), "demo".into(), "canary-failed".into()),
        ]
    );
    for host in [a, c, d] {
        assert_untouched(host);
    }
    assert_eq!(profile(b, "other"), "", "the failed first deploy of `other` is undone");
    let out = epnix_deploy(&flake, &["deploy", "--on", &on, "--canary", "1"]);
    assert_exit(&out, 1);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains(&format!("{hb} other: failed (exit 1)")), "{summary}");
    assert!(summary.contains(&format!("not reached, untouched: {} demo, {} demo", rest[0], rest[1])), "{summary}");

    // Every tagged host, in parallel: their check windows overlap.
    write(("v1", false), ("v1", false), 5);
    let out = epnix_deploy(&flake, &["deploy", "--on", "@linac", "--json"]);
    assert_exit(&out, 0);
    let doc = document(&out);
    let mut got = entries(&doc);
    got.sort();
    let mut want = vec![
        (ha.clone(), "demo".to_owned(), "success".to_owned()),
        (hb.clone(), "other".to_owned(), "success".to_owned()),
        (hc.clone(), "demo".to_owned(), "success".to_owned()),
    ];
    want.sort();
    assert_eq!(got, want);
    assert_untouched(d);
    assert_eq!(
        (profile(a, "demo"), profile(b, "other"), profile(c, "demo")),
        ("demo-1-link".into(), "other-1-link".into(), "demo-1-link".into())
    );
    let windows = [
        check_window(a, "demo", "iocFleet"),
        check_window(b, "other", "iocFleetB"),
        check_window(c, "demo", "iocFleet"),
    ];
    let last_start = windows.iter().map(|w| w.0).fold(f64::MIN, f64::max);
    let first_end = windows.iter().map(|w| w.1).fold(f64::MAX, f64::min);
    assert!(last_start < first_end, "the hosts' checks did not overlap: {windows:?}");

    // `b`'s new IOC crashes: `b` is rolled back, `a` and `c` stay on v2.
    write(("v2", false), ("v2", true), 1);
    let out = epnix_deploy(&flake, &["deploy", "--on", "@linac"]);
    assert_exit(&out, 1);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains(&format!("{hb} other: failed (exit 1)")), "{summary}");
    assert!(summary.contains(&format!("exit 1 (failed), the worst outcome: {hb} other")), "{summary}");
    assert!(stderr(&out).contains("rolled back"), "{}", stderr(&out));
    assert_eq!(
        (profile(a, "demo"), profile(b, "other"), profile(c, "demo")),
        ("demo-2-link".into(), "other-1-link".into(), "demo-2-link".into())
    );
    assert_untouched(d);

    // `status --on @linac`: every tagged host, each IOC running.
    let out = epnix_deploy(&flake, &["status", "--on", "@linac", "--json"]);
    assert_exit(&out, 0);
    let doc = document(&out);
    let mut read: Vec<(String, String)> = doc["result"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| {
            e["result"]["iocs"].as_array().unwrap().iter().map(|i| {
                (
                    e["host"].as_str().unwrap().to_owned(),
                    format!("{} {}", i["ioc"].as_str().unwrap(), i["state"].as_str().unwrap()),
                )
            })
        })
        .collect();
    read.sort();
    let mut want = vec![
        (ha.clone(), "iocFleet running".to_owned()),
        (hb.clone(), "iocFleetB running".to_owned()),
        (hc.clone(), "iocFleet running".to_owned()),
    ];
    want.sort();
    assert_eq!(read, want);

    // `rollback demo --on @linac`: the hosts that run `demo` go back to v1;
    // `b`, which does not, is skipped. `list` then reads them all.
    let out = epnix_deploy(&flake, &["rollback", "demo", "--on", "@linac"]);
    assert_exit(&out, 0);
    assert!(stderr(&out).contains(&format!("note: `{hb}` does not run `demo`: skipped")), "{}", stderr(&out));
    assert_eq!((profile(a, "demo"), profile(c, "demo")), ("demo-1-link".into(), "demo-1-link".into()));
    let out = epnix_deploy(&flake, &["list", "demo", "--on", "@linac", "--json"]);
    assert_exit(&out, 0);
    let doc = document(&out);
    for entry in doc["result"]["entries"].as_array().unwrap() {
        let current: Vec<u64> = entry["result"]["generations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["current"] == true)
            .map(|g| g["generation"].as_u64().unwrap())
            .collect();
        assert_eq!(current, [1], "{entry:#}");
    }
    assert_untouched(d);
}

/// Whether `path` is in this machine's Nix store.
fn here(path: &str) -> bool {
    Path::new(path).exists()
}

/// `--build-on-target`: the deployer evaluates and copies derivations; each
/// host builds the top (and the generation) itself, and the builds never
/// exist on the deployer. A host's `buildOnTarget` does the same alone.
#[test]
fn hosts_build_the_top_themselves() {
    let hosts = boot_hosts(2);
    let (a, b) = (&hosts[0], &hosts[1]);
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocBuilt");
    // A version no other run built, so that the build is nowhere yet.
    let version = format!("bot{}", a.port);
    flake.write_hosts(&[(a, ""), (b, "buildOnTarget = true;")], &top("demo", &version, &ioc, &[a, b], false, 1));

    let out = epnix_deploy(&flake, &["deploy", "demo", "--on", &a.name, "--build-on-target", "--dry-run", "--json"]);
    assert_exit(&out, 0);
    let plan = json(&out)["entries"][0]["result"]["plan"].clone();
    let steps: Vec<&str> = plan.as_array().unwrap().iter().map(|s| s["action"].as_str().unwrap()).collect();
    assert!(steps.iter().any(|s| s.contains(" copy --derivation --to ssh://root@127.0.0.1")), "{steps:#?}");
    assert!(steps.iter().any(|s| s.contains("nix-store --realise")), "{steps:#?}");
    assert_untouched(a);

    let out = epnix_deploy(&flake, &["deploy", "demo", "--build-on-target", "--json"]);
    assert_exit(&out, 0);
    let doc = json(&out);
    for (entry, host) in doc["entries"].as_array().unwrap().iter().zip([a, b]) {
        let report = &entry["result"];
        let (build, generation) = (report["build"].as_str().unwrap(), report["storePath"].as_str().unwrap());
        assert!(!here(build), "the top `{build}` was built on the deployer");
        assert!(!here(generation), "the generation `{generation}` was built on the deployer");
        let on_host = host.ssh_ok(&format!(
            "test -x {build}/iocBoot/iocBuilt/st.cmd && readlink -f /nix/var/nix/profiles/epnix/demo"
        ));
        assert_eq!(on_host.trim(), generation);
        assert!(host_runs(host, "iocBuilt"));
    }

    // The host option alone: `b` builds v2 itself, `a` takes it from here.
    flake.write_hosts(
        &[(a, ""), (b, "buildOnTarget = true;")],
        &top("demo", &format!("{version}b"), &ioc, &[a, b], false, 1),
    );
    let out = epnix_deploy(&flake, &["deploy", "demo", "--json"]);
    assert_exit(&out, 0);
    let doc = json(&out);
    let generation = |i: usize| doc["entries"][i]["result"]["storePath"].as_str().unwrap().to_owned();
    assert!(here(&generation(0)), "`a` takes its generation from here");
    assert!(!here(&generation(1)), "`b` builds its generation itself");
    assert!(host_runs(a, "iocBuilt") && host_runs(b, "iocBuilt"));
}

/// Whether the unit of `ioc` is active on `host`.
fn host_runs(host: &TestHost, ioc: &str) -> bool {
    host.ssh_ok(&format!("systemctl is-active epnix-{ioc}.service || true")).trim() == "active"
}
