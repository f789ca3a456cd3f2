//! `list`, `rollback` and `delete-generation` against real test hosts.

use serde_json::Value;

use crate::support::{
    TestFlake, TestIoc, assert_exit, caget_eventually, demo_top, epnix_deploy, profile_link, run, stderr,
};
use crate::testbed::TestHost;

fn json(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).expect("--json prints JSON")
}

fn list(host: &TestHost, flake: &TestFlake) -> Value {
    let out = epnix_deploy(flake, &["list", host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    json(&out)
}

fn numbers(list: &Value) -> Vec<u64> {
    list.as_array().unwrap().iter().map(|g| g["generation"].as_u64().unwrap()).collect()
}

fn current(list: &Value) -> u64 {
    list.as_array().unwrap().iter().find(|g| g["current"] == true).unwrap()["generation"].as_u64().unwrap()
}

/// Deploys v1, v2 and v3 of the demo top, returning each deploy's revision.
fn deploy_three(host: &TestHost, flake: &TestFlake, ioc: &TestIoc) -> Vec<String> {
    let mut revisions = Vec::new();
    for version in ["v1", "v2", "v3"] {
        flake.write(host, &demo_top(version, &[ioc]));
        assert_exit(&epnix_deploy(flake, &[host.name.as_str(), "demo"]), 0);
        revisions.push(flake.revision());
    }
    revisions
}

#[test]
fn list_then_roll_back_twice() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    let revisions = deploy_three(&host, &flake, &ioc);

    let generations = list(&host, &flake);
    assert_eq!(numbers(&generations), [1, 2, 3]);
    assert_eq!(current(&generations), 3);
    for (g, revision) in generations.as_array().unwrap().iter().zip(&revisions) {
        assert_eq!(&g["revision"], revision);
        assert_eq!(g["iocs"], serde_json::json!(["iocDemo"]));
        assert!(g["deployer"].as_str().unwrap().contains('@'));
    }
    let table = epnix_deploy(&flake, &["list", host.name.as_str(), "demo"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("(current)") && table.contains(&revisions[2][..12]), "{table}");

    let out = epnix_deploy(&flake, &["rollback", host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["generation"], 2);
    assert_eq!(json(&out)["previousGeneration"], 3);
    assert_eq!(profile_link(&host), "demo-2-link");
    caget_eventually(&host, "iocDemo:version", &ioc, "v2");

    assert_exit(&epnix_deploy(&flake, &["rollback", host.name.as_str(), "demo", "--to", "1"]), 0);
    assert_eq!(profile_link(&host), "demo-1-link");
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");
    // Rolling back moves the profile; it makes no generation.
    assert_eq!(numbers(&list(&host, &flake)), [1, 2, 3]);
}

#[test]
fn rollback_restores_the_units_of_the_generation() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let (demo, second) = (TestIoc::new("iocDemo"), TestIoc::new("iocSecond"));
    let with_env = |value: &str| demo.nix(&format!("environment.SITE_MODE = \"{value}\";"));

    flake.write(
        &host,
        &format!("demo = {{ package = top {{ }}; hosts = [ \"test\" ]; iocs = {{ {} }}; }};", with_env("one")),
    );
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    // Generation 2: the same build, another variable, one more IOC.
    flake.write(
        &host,
        &format!(
            "demo = {{ package = top {{ iocs = [ \"iocDemo\" \"iocSecond\" ]; }}; hosts = [ \"test\" ]; iocs = {{ {} {} }}; }};",
            with_env("two"),
            second.nix("")
        ),
    );
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    caget_eventually(&host, "iocSecond:version", &second, "v1");
    let env = || host.ssh_ok("systemctl show --property=Environment epnix-iocDemo.service");
    assert!(env().contains("SITE_MODE=two"), "{}", env());

    let out = epnix_deploy(&flake, &["rollback", host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["iocs"]["iocSecond"], "removed");
    assert!(env().contains("SITE_MODE=one"), "{}", env());
    assert_eq!(host.ssh_ok("ls /etc/systemd/system/ | grep -c '^epnix-' || true").trim(), "1");
    assert_eq!(host.caget("iocSecond:version", second.ca_port), None);
    caget_eventually(&host, "iocDemo:version", &demo, "v1");
}

#[test]
fn delete_generation_refuses_the_current_one_and_collects_an_old_one() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    deploy_three(&host, &flake, &ioc);
    let first = list(&host, &flake)[0]["storePath"].as_str().unwrap().to_owned();
    let first_build = list(&host, &flake)[0]["build"].as_str().unwrap().to_owned();

    let out = epnix_deploy(&flake, &["delete-generation", host.name.as_str(), "demo", "3"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("generation 3 is the current generation"), "{}", stderr(&out));
    assert_eq!(numbers(&list(&host, &flake)), [1, 2, 3]);

    let out = epnix_deploy(&flake, &["delete-generation", host.name.as_str(), "demo", "1", "--gc", "--json"]);
    assert_exit(&out, 0);
    let report = json(&out);
    assert_eq!(report["deleted"], serde_json::json!([1]));
    assert!(report["freed"]["storePaths"].as_u64().unwrap() >= 2, "{report}");
    assert_eq!(numbers(&list(&host, &flake)), [2, 3]);
    // The generation and the build it held are both collected.
    for path in [&first, &first_build] {
        assert_eq!(host.ssh_ok(&format!("test -e {path} && echo kept || echo collected")).trim(), "collected");
    }

    let out = epnix_deploy(&flake, &["delete-generation", host.name.as_str(), "demo", "--keep", "1", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(numbers(&list(&host, &flake)), [3]);
}

#[test]
fn rollback_errors_change_nothing() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    flake.write(&host, &demo_top("v1", &[&ioc]));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);

    let cases: [(&[&str], &str); 4] = [
        (&["rollback", host.name.as_str(), "demo"], "has no healthy generation before the current one (1)"),
        (&["rollback", host.name.as_str(), "demo", "--to", "7"], "has no generation 7"),
        (&["rollback", host.name.as_str(), "demo", "--to", "1"], "already the current generation"),
        (&["rollback", host.name.as_str(), "nope"], "top `nope` is not deployed on"),
    ];
    for (args, message) in cases {
        let out = epnix_deploy(&flake, args);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(message), "expected {message:?} in:\n{}", stderr(&out));
        assert_eq!(profile_link(&host), "demo-1-link");
    }
}

#[test]
fn a_generation_made_by_hand_is_listed_and_can_be_rolled_back_to() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    flake.write(&host, &demo_top("v1", &[&ioc]));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);

    // As the EPNix guide does it: nix copy, then nix-env --set, by hand.
    let v2 = crate::testbed::build_top("version = \"v2\";");
    host.nix_copy(&v2);
    host.ssh_ok(&format!("nix-env --profile /nix/var/nix/profiles/epnix/demo --set {}", v2.display()));

    // No flake: the host given as user@host[:port] with its ssh options.
    let bare = format!("root@127.0.0.1:{}", host.port);
    let ssh_opts =
        format!("-i {} -o UserKnownHostsFile={}", host.key_path().display(), host.known_hosts_path().display());
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        a.extend([bare.clone(), "demo".into(), "--ssh-opts".into(), ssh_opts.clone(), "--json".into()]);
        a
    };
    let out = run(&args(&["list"]));
    assert_exit(&out, 0);
    let generations = json(&out);
    assert_eq!(numbers(&generations), [1, 2]);
    assert_eq!(generations[1]["iocs"], Value::Null);
    assert_eq!(generations[1]["storePath"], v2.display().to_string());

    // Back to the recorded generation 1, then forth to the hand-made one:
    // its units are unknown, so the current ones stay.
    assert_exit(&run(&args(&["rollback"])), 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");
    let out = run(&[args(&["rollback"]), vec!["--to".into(), "2".into()]].concat());
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("generation 2 was not made by epnix-deploy"), "{}", stderr(&out));
    caget_eventually(&host, "iocDemo:version", &ioc, "v2");
}
