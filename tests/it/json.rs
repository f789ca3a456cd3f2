//! The `--json` contract: every command prints one JSON document on stdout,
//! on success, on a dry run and on a failure, and every document follows
//! the schema in `src/output.schema.json` (checked by `support::document`).
//! Also the messages a new user meets first: "did you mean", and no
//! suggestion of a dangerous flag.

use serde_json::Value;

use crate::support::{
    TestFlake, TestIoc, assert_exit, assert_untouched, demo, document, epnix_deploy, json, run, stderr,
};
use crate::testbed::TestHost;

/// The `error` object of a failed run's document, after checking the
/// outcome it names.
fn error(out: &std::process::Output, outcome: &str) -> Value {
    let doc = document(out);
    assert_eq!(doc["outcome"], outcome, "{doc:#}");
    assert!(doc.get("result").is_none(), "{doc:#}");
    doc["error"].clone()
}

#[test]
fn every_command_prints_one_document_that_follows_the_schema() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    let h = host.name.as_str();
    flake.write(&host, &demo(&ioc, "version = \"v1\";", "", ""));

    // A dry run: the plan is in the document, and stdout has nothing else.
    let out = epnix_deploy(&flake, &[h, "demo", "--dry-run", "--json"]);
    assert_exit(&out, 0);
    let plan = json(&out);
    assert_eq!(plan["dryRun"], true);
    assert!(plan["plan"].as_array().is_some_and(|steps| steps.iter().any(|s| s["on"] == "local")), "{plan:#}");
    assert_untouched(&host);

    // Failures before anything changes, at each stage, name the step.
    let out = epnix_deploy(&flake, &[h, "demoo", "--json"]);
    assert_exit(&out, 2);
    let err = error(&out, "bad-input");
    assert_eq!((err["host"].as_str(), err["top"].as_str()), (Some(h), Some("demoo")));
    assert!(err["hint"].as_str().unwrap().contains("did you mean `demo`?"), "{err:#}");
    flake.write(&host, &demo(&ioc, "version = \"v1\"; extraBuild = \"exit 3\";", "", ""));
    let out = epnix_deploy(&flake, &[h, "demo", "--json"]);
    assert_exit(&out, 2);
    assert_eq!(error(&out, "bad-input")["step"], "build");
    assert_untouched(&host);

    flake.write(&host, &demo(&ioc, "version = \"v1\";", "", ""));
    let out = epnix_deploy(&flake, &[h, "demo", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["generation"], 1);

    // A failed health check: rolled back, exit 1, the step that failed.
    flake.write(&host, &demo(&ioc, "version = \"v2\"; brokenIocs = [ \"iocDemo\" ];", "", ""));
    let out = epnix_deploy(&flake, &[h, "demo", "--json"]);
    assert_exit(&out, 1);
    let err = error(&out, "failed");
    assert!(err["step"].as_str().is_some(), "{err:#}");
    assert!(!err["message"].as_str().unwrap().is_empty());

    flake.write(&host, &demo(&ioc, "version = \"v3\";", "", ""));
    assert_exit(&epnix_deploy(&flake, &[h, "demo", "--json"]), 0);

    for args in [vec!["list"], vec!["status"], vec!["rollback"], vec!["delete-generation", "--keep", "1", "--dry-run"]]
    {
        let mut all = args.clone();
        all.extend([h, "demo", "--json"]);
        let out = epnix_deploy(&flake, &all);
        assert_exit(&out, 0);
        assert_eq!(document(&out)["command"], args[0]);
    }
    let status = json(&epnix_deploy(&flake, &["status", h, "demo", "--json"]));
    let since = status["iocs"][0]["since"].as_str().unwrap();
    assert!(since.len() == 20 && since.ends_with('Z') && since.as_bytes()[10] == b'T', "not RFC 3339: {since}");

    // Failures of the other commands: a generation that is not there.
    let out = epnix_deploy(&flake, &["rollback", h, "demo", "--to", "9", "--json"]);
    assert_exit(&out, 2);
    assert!(error(&out, "bad-input")["message"].as_str().unwrap().contains("no generation 9"));
    let out = epnix_deploy(&flake, &["delete-generation", h, "demo", "9", "--json"]);
    assert_exit(&out, 2);
    error(&out, "bad-input");
    let out = epnix_deploy(&flake, &["list", h, "nothere", "--json"]);
    assert_exit(&out, 2);
    error(&out, "bad-input");

    let out = epnix_deploy(&flake, &["delete-generation", h, "demo", "--keep", "1", "--json"]);
    assert_exit(&out, 0);
    let out = epnix_deploy(&flake, &["remove", h, "demo", "--purge", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["removed"], serde_json::json!(["iocDemo"]));
    let out = epnix_deploy(&flake, &["remove", h, "demo", "--json"]);
    assert_exit(&out, 2);
    error(&out, "bad-input");
}

/// Finding 3 of the first-hour issue: mistakes get a "did you mean", and a
/// mistyped flag is never answered with a dangerous one.
#[test]
fn mistakes_get_a_did_you_mean_and_never_a_dangerous_flag() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    let h = host.name.as_str();
    flake.write(&host, &demo(&ioc, "", "", ""));

    let out = epnix_deploy(&flake, &["demo", h]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("the host comes first"), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("epnix-deploy … {h} demo")), "{}", stderr(&out));

    let out = epnix_deploy(&flake, &[h, "dmeo"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("did you mean `demo`?"), "{}", stderr(&out));

    let typo = format!("{}x", &h[..h.len() - 1]);
    let out = epnix_deploy(&flake, &["status", &typo, "demo"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains(&format!("did you mean `{h}`?")), "{}", stderr(&out));

    // An unknown word where the host goes: neither a host nor a command.
    let out = epnix_deploy(&flake, &["lsit", "demo"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("`epnix-deploy list"), "{}", stderr(&out));

    for (typed, unwanted) in [("--skip-checks", "--skip-hostname-check"), ("--on", "--activation-timeout")] {
        let out = run(&[h.to_owned(), "demo".into(), typed.into()]);
        assert_exit(&out, 2);
        assert!(!stderr(&out).contains(unwanted), "{typed} suggested {unwanted}:\n{}", stderr(&out));
        assert!(stderr(&out).contains(typed), "{}", stderr(&out));
    }
    // A close, safe flag is still suggested, and `--json` gets a document.
    let out = run(&["list".into(), h.to_owned(), "demo".into(), "--wdie".into(), "--json".into()]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("--wide"), "{}", stderr(&out));
    let err = error(&out, "bad-input");
    assert_eq!(document(&out)["command"], "list");
    assert_eq!(err["step"], "parse");
    assert_untouched(&host);
}
