//! `list`, `status`, `rollback`, `delete-generation` and `remove` against real
//! test hosts: every change is a generation, and a rollback goes to a good one.

use serde_json::Value;

use crate::support::{
    TestFlake, TestIoc, assert_exit, caget_eventually, change, demo, demo_top, epnix_deploy, ioc_cwd, ioc_env, json,
    list, numbers, outcomes, profile_link, run, stderr,
};
use crate::testbed::TestHost;

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
    assert_eq!(change(&json(&out), "iocSecond"), "removed");
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

    // By age, on the host's clock: nothing is a year old; a second later,
    // every generation but the current one is older than zero days.
    let out = epnix_deploy(
        &flake,
        &["delete-generation", host.name.as_str(), "demo", "--older-than", "365d", "--dry-run", "--json"],
    );
    assert_exit(&out, 0);
    assert_eq!(json(&out)["deleted"], serde_json::json!([]));
    std::thread::sleep(std::time::Duration::from_secs(1));
    let out = epnix_deploy(
        &flake,
        &["delete-generation", host.name.as_str(), "demo", "--older-than", "0d", "--dry-run", "--json"],
    );
    assert_exit(&out, 0);
    assert_eq!(json(&out)["deleted"], serde_json::json!([2]));
    assert_eq!(numbers(&list(&host, &flake)), [2, 3]);

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
    let generations = json(&out)["generations"].clone();
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

const UNIT: &str = "epnix-iocDemo.service";

/// The demo top at `version`, its IOC with `extra` attributes.
fn demo_with(version: &str, ioc: &TestIoc, extra: &str) -> String {
    demo(ioc, &format!("version = \"{version}\";"), extra, "")
}

/// Issue "Generations that mean what they say", 1: a change of the units
/// alone is a generation, and a rollback brings the old environment back,
/// into the unit *and* into the running IOC.
#[test]
fn an_environment_change_alone_is_a_generation_that_rolls_back_into_the_running_ioc() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    flake.write(&host, &demo_with("v1", &ioc, "environment.SITE_MODE = \"one\";"));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");

    flake.write(&host, &demo_with("v1", &ioc, "environment.SITE_MODE = \"two\";"));
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["generation"], 2);
    assert_eq!(json(&out)["newGeneration"], true);
    assert_eq!(change(&json(&out), "iocDemo"), "changed");
    assert_eq!(ioc_env(&host, UNIT, "SITE_MODE"), "two");
    // Both generations run the same build, each with its own units.
    let generations = list(&host, &flake);
    assert_eq!(outcomes(&generations), [(1, "healthy".to_owned()), (2, "healthy".to_owned())]);
    assert_eq!(generations[0]["build"], generations[1]["build"]);
    assert_ne!(generations[0]["storePath"], generations[1]["storePath"]);

    let out = epnix_deploy(&flake, &["rollback", host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["generation"], 1);
    assert_eq!(profile_link(&host), "demo-1-link");
    assert!(host.ssh_ok(&format!("cat /etc/systemd/system/{UNIT}")).contains("SITE_MODE=one"));
    assert_eq!(ioc_env(&host, UNIT, "SITE_MODE"), "one");
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");

    // By hand, as the EPNix guide does it, the profile still works.
    let generations = host.ssh_ok("nix-env --profile /nix/var/nix/profiles/epnix/demo --list-generations | wc -l");
    assert_eq!(generations.trim(), "2");
    assert!(host.ssh_ok("test -x /nix/var/nix/profiles/epnix/demo/iocBoot/iocDemo/st.cmd && echo ok").contains("ok"));
}

/// 2 and 5: a rollback skips generations that failed, `--to` a failed one
/// needs `--force`, and `--keep` counts healthy generations only.
#[test]
fn rollback_skips_a_failed_generation_and_keep_counts_healthy_ones() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    flake.write(&host, &demo_top("v1", &[&ioc]));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    // Generation 2 fails its checks and is rolled back.
    flake.write(
        &host,
        "demo = { package = top { version = \"v2\"; iocs = [ ]; brokenIocs = [ \"iocDemo\" ]; }; hosts = [ \"test\" ]; iocs = { IOC }; };"
            .replace("IOC", &ioc.nix(""))
            .as_str(),
    );
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 1);
    flake.write(&host, &demo_top("v3", &[&ioc]));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    let generations = list(&host, &flake);
    assert_eq!(
        outcomes(&generations),
        [(1, "healthy".to_owned()), (2, "failed".to_owned()), (3, "healthy".to_owned())]
    );

    let out = epnix_deploy(&flake, &["rollback", host.name.as_str(), "demo", "--to", "2"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("generation 2 of `demo` is failed") && stderr(&out).contains("--force"));
    assert_eq!(profile_link(&host), "demo-3-link");

    let out = epnix_deploy(&flake, &["rollback", host.name.as_str(), "demo"]);
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("skipped generation 2 (failed)"), "{}", stderr(&out));
    assert_eq!(profile_link(&host), "demo-1-link");
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");

    // Keep the newest healthy one (3) and the current (1): only 2 goes.
    let out =
        epnix_deploy(&flake, &["delete-generation", host.name.as_str(), "demo", "--keep", "1", "--dry-run", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["deleted"], serde_json::json!([2]));
    assert_eq!(json(&out)["dryRun"], true);
    assert_eq!(numbers(&list(&host, &flake)), [1, 2, 3]);
    assert_exit(&epnix_deploy(&flake, &["delete-generation", host.name.as_str(), "demo", "--keep", "1"]), 0);
    assert_eq!(numbers(&list(&host, &flake)), [1, 3]);
}

/// 3: every IOC disabled is a generation with no units; every command still
/// works; `remove` takes the top off the host, `--purge` with its
/// generations.
#[test]
fn a_top_with_every_ioc_disabled_then_removed() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    flake.write(&host, &demo_top("v1", &[&ioc]));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);

    flake.write(&host, &demo_with("v1", &ioc, "enable = false;"));
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["generation"], 2);
    assert_eq!(change(&json(&out), "iocDemo"), "removed");
    assert_eq!(host.caget("iocDemo:version", ioc.ca_port), None);
    let generations = list(&host, &flake);
    assert_eq!(generations[1]["iocs"], serde_json::json!([]));
    assert_exit(&epnix_deploy(&flake, &["status", host.name.as_str(), "demo"]), 0);
    // The same again changes nothing.
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["newGeneration"], false);
    // Back and forth.
    assert_exit(&epnix_deploy(&flake, &["rollback", host.name.as_str(), "demo"]), 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");

    let out = epnix_deploy(&flake, &["remove", host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["removed"], serde_json::json!(["iocDemo"]));
    assert_eq!(host.ssh_ok("ls /etc/systemd/system | grep -c '^epnix-' || true").trim(), "0");
    assert_eq!(host.caget("iocDemo:version", ioc.ca_port), None);
    assert_eq!(numbers(&list(&host, &flake)), [1, 2]);
    // A deploy brings it back.
    flake.write(&host, &demo_top("v1", &[&ioc]));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");

    let out = epnix_deploy(&flake, &["remove", host.name.as_str(), "demo", "--purge", "--gc", "--json"]);
    assert_exit(&out, 0);
    assert!(json(&out)["freed"]["storePaths"].as_u64().unwrap() >= 1, "{}", json(&out));
    assert_eq!(host.ssh_ok("ls -A /nix/var/nix/profiles/epnix").trim(), "");
    assert_eq!(host.ssh_ok("ls -A /var/lib/epnix-deploy/demo").split_whitespace().collect::<Vec<_>>(), ["lock"]);
    assert_eq!(host.ssh_ok("ls /etc/systemd/system | grep -c '^epnix-' || true").trim(), "0");
    let out = epnix_deploy(&flake, &["list", host.name.as_str(), "demo"]);
    assert_exit(&out, 2);
}

/// 4: what runs is what the profile says. An IOC that runs an older build
/// than its profile, or that started before its unit file changed, is
/// restarted by the next deploy or rollback, which reports the drift.
#[test]
fn a_deploy_converges_on_what_runs() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    flake.write(&host, &demo_top("v1", &[&ioc]));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    flake.write(&host, &demo_top("v2", &[&ioc]));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v2");

    // As after an interrupted switch: the profile says v2, the IOC runs v1.
    let profile = "/nix/var/nix/profiles/epnix/demo";
    host.ssh_ok(&format!("nix-env -p {profile} --switch-generation 1 && systemctl restart {UNIT}"));
    // The IOC resolves the profile when it starts: let it, before the profile moves on.
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");
    host.ssh_ok(&format!("nix-env -p {profile} --switch-generation 2"));
    let v1_build = list(&host, &flake)[0]["build"].as_str().unwrap().to_owned();
    assert!(ioc_cwd(&host, UNIT).starts_with(&v1_build));
    let status = epnix_deploy(&flake, &["status", host.name.as_str(), "demo", "--json"]);
    assert!(json(&status)["iocs"][0]["drift"].as_str().unwrap().contains("not the profile's"), "{}", json(&status));

    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["newGeneration"], false);
    assert_eq!(change(&json(&out), "iocDemo"), "drift");
    caget_eventually(&host, "iocDemo:version", &ioc, "v2");

    // A unit file that changed after its IOC started: `rollback --to` the
    // current generation converges too.
    host.ssh_ok(&format!("sleep 1; touch /etc/systemd/system/{UNIT}; systemctl daemon-reload"));
    let out = epnix_deploy(&flake, &["rollback", host.name.as_str(), "demo", "--to", "2", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(change(&json(&out), "iocDemo"), "drift");
    let status = epnix_deploy(&flake, &["status", host.name.as_str(), "demo", "--json"]);
    assert_eq!(json(&status)["iocs"][0]["drift"], Value::Null);
    // Nothing drifted now: the current generation is refused again.
    let out = epnix_deploy(&flake, &["rollback", host.name.as_str(), "demo", "--to", "2"]);
    assert_exit(&out, 2);
}

/// A rollback is a deploy: it runs the generation's own checks under an
/// armed rollback, and when they fail the host goes back to where it was
/// before the rollback.
#[test]
fn a_rollback_whose_checks_fail_goes_back_to_where_it_was() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    // Generation 1's check needs a file, which the test removes before it
    // rolls back to generation 1.
    let check = "healthCheck.command = \"test -e /var/lib/check-passes\";";
    host.ssh_ok("touch /var/lib/check-passes");
    flake.write(&host, &demo_with("v1", &ioc, check));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    flake.write(&host, &demo_top("v2", &[&ioc]));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    let unit_v2 = host.ssh_ok(&format!("cat /etc/systemd/system/{UNIT}"));

    host.ssh_ok("rm /var/lib/check-passes");
    let out = epnix_deploy(&flake, &["rollback", host.name.as_str(), "demo"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("its check command `test -e /var/lib/check-passes` exited"), "{}", stderr(&out));
    assert!(stderr(&out).contains("is back to generation 2"), "{}", stderr(&out));
    assert_eq!(profile_link(&host), "demo-2-link");
    assert_eq!(host.ssh_ok(&format!("cat /etc/systemd/system/{UNIT}")), unit_v2);
    caget_eventually(&host, "iocDemo:version", &ioc, "v2");
    assert_eq!(outcomes(&list(&host, &flake))[0], (1, "failed".to_owned()));
}
