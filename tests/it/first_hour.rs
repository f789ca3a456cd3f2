//! What a user meets in the first hour: progress as a terminal shows it
//! (plain lines on `TERM=dumb`, every command with `-v`, nothing but the
//! error with `-q`), a flake whose input cannot be fetched until
//! `--override-input` points it elsewhere, and a host whose real name is not
//! its name in the configuration (`expectedHostname`).

use std::process::{Command, Output, Stdio};

use crate::support::{
    TestFlake, TestIoc, assert_exit, assert_untouched, caget_eventually, demo, document, epnix_deploy, json,
    profile_link, run, stderr,
};
use crate::testbed::{TestHost, shell_quote};

/// Runs the tool with `args` and the test flake, its stderr on a terminal
/// (a pty from util-linux's `script`) whose `TERM` is `term`, its stdout to
/// a file. The pty's own `\n` → `\r\n` is turned off, so any `\r` on stderr
/// is the tool's.
fn on_terminal(term: &str, flake: &TestFlake, args: &[&str]) -> Output {
    let tmp = tempfile::tempdir().expect("temp dir");
    let stdout_file = tmp.path().join("stdout");
    let mut words = vec![shell_quote(env!("CARGO_BIN_EXE_epnix-deploy"))];
    words.extend(args.iter().map(|a| shell_quote(a)));
    words.extend(["--flake".to_owned(), shell_quote(&flake.reference())]);
    let command = format!(
        "stty -onlcr; test -t 2 || exit 99; exec {} > {}",
        words.join(" "),
        shell_quote(&stdout_file.display().to_string())
    );
    let out = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env("TERM", term)
        .env("NIX_CONFIG", "substituters =")
        .stdin(Stdio::null())
        .output()
        .expect("running script");
    assert_ne!(out.status.code(), Some(99), "stderr is not a terminal under `script`");
    let output = Output {
        status: out.status,
        stdout: std::fs::read(&stdout_file).expect("reading the tool's stdout"),
        // What the pty carried: the tool's stderr.
        stderr: out.stdout,
    };
    eprintln!(
        "epnix-deploy {args:?} on a terminal (TERM={term}) exited {}\n--- stdout\n{}--- stderr\n{:?}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The steps of a first deploy with magic rollback, in order.
const STEPS: [&str; 9] =
    ["evaluate", "build", "connect", "generation", "copy", "arm rollback", "switch", "check", "confirm"];

#[test]
fn progress_on_a_terminal_plain_verbose_and_quiet() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    let h = host.name.as_str();
    flake.write(&host, &demo(&ioc, "version = \"v1\";", "", ""));

    // The control: a terminal that can draw gets spinners, so the pty is
    // a terminal to the tool, and the plain lines below are its choice.
    let out = on_terminal("xterm-256color", &flake, &[h, "demo", "--dry-run"]);
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("\r\x1b[2K"), "no spinner drawn on an xterm: {:?}", stderr(&out));

    // `TERM=dumb`: one line as each step starts and one as it ends, nothing
    // redrawn, and no commands.
    let out = on_terminal("dumb", &flake, &[h, "demo"]);
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(!err.contains('\r') && !err.contains('\x1b'), "drawn, not written: {err:?}");
    let lines: Vec<&str> = err.lines().collect();
    let want: Vec<String> =
        STEPS.iter().flat_map(|s| [format!("{h}: {s} ..."), format!("{h}: {s} done in ")]).collect();
    assert_eq!(lines.len(), want.len(), "one line per step start and end:\n{err}");
    for (line, want) in lines.iter().zip(&want) {
        assert!(line.starts_with(want.as_str()), "{want:?} expected, found {line:?} in:\n{err}");
    }
    assert_eq!(profile_link(&host), "demo-1-link");

    // `-v`: the steps, and every command with its arguments as it runs,
    // local ones and remote ones (a host-side script by its name).
    flake.write(&host, &demo(&ioc, "version = \"v2\";", "", ""));
    let out = on_terminal("dumb", &flake, &["-v", h, "demo"]);
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(!err.contains('\r') && !err.contains('\x1b'), "drawn, not written: {err:?}");
    let has_line = |start: &str, part: &str| err.lines().any(|l| l.starts_with(start) && l.contains(part));
    let nix = "local: $ nix --extra-experimental-features 'nix-command flakes'";
    let remote = format!("{h}: $ sh");
    for (start, part) in [
        (format!("{nix} build --no-link --json "), "#epnixDeploy.tops.demo.package".to_owned()),
        ("local: $ nix-store --export /nix/store/".to_owned(), "-epnix-demo-generation".to_owned()),
        (format!("{remote} import.sh"), String::new()),
        (format!("{h}: $ ssh "), format!("-p {} ", host.port)),
        (format!("{remote} lock.sh /etc/systemd/system demo "), format!(" {h}")),
        (format!("{remote} wait_healthy.sh "), " epnix-iocDemo.service ".to_owned()),
        (format!("{remote} switch.sh /etc/systemd/system demo "), " restart:epnix-iocDemo.service".to_owned()),
        (format!("{remote} confirm.sh /etc/systemd/system demo "), String::new()),
        (format!("{h}: switch ..."), String::new()),
    ] {
        assert!(has_line(&start, &part), "no line {start:?}…{part:?} in:\n{err}");
    }
    assert_eq!(profile_link(&host), "demo-2-link");

    // `-q`, even where spinners could be drawn: nothing on stderr, the
    // result on stdout.
    flake.write(&host, &demo(&ioc, "version = \"v3\";", "", ""));
    let out = on_terminal("xterm-256color", &flake, &["-q", h, "demo"]);
    assert_exit(&out, 0);
    assert_eq!(stderr(&out), "");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("HOST "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(h) && l.contains(" demo ") && l.contains("3 (new)") && l.contains("iocDemo")),
        "{table}"
    );
    assert_eq!(profile_link(&host), "demo-3-link");
    caget_eventually(&host, "iocDemo:version", &ioc, "v3");

    // `-q` and a mistake: the error and its hint, and nothing else.
    let out = on_terminal("xterm-256color", &flake, &["-q", h, "demoo"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.starts_with("error: there is no top `demoo`"), "{err:?}");
    assert!(err.contains("did you mean `demo`?"), "{err:?}");
    assert!(!err.contains("failed in") && !err.contains('\x1b'), "a step was shown: {err:?}");
    assert_eq!(out.stdout, b"");
}

/// A flake whose `epnixDeploy` comes from an input that is not there, as a
/// site's flake offline or with a moved checkout: the hint names
/// `--override-input`, and with it pointing at the real flake the same
/// command works.
#[test]
fn an_input_that_cannot_be_fetched_hints_at_override_input_which_then_works() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    let h = host.name.as_str();
    flake.write(&host, &demo(&ioc, "version = \"v1\";", "", ""));
    // Outside git, so a `path:` flake; without a lock, which Nix leaves
    // unwritten when the input fails or is overridden.
    let outer = tempfile::Builder::new().prefix("epnix-outer-").tempdir().expect("temp dir");
    std::fs::write(
        outer.path().join("flake.nix"),
        r#"{
  inputs.site.url = "path:/nonexistent/epnix-site";
  outputs = { self, site }: { inherit (site) epnixDeploy; };
}
"#,
    )
    .expect("writing the outer flake");
    let outer_ref = format!("path:{}", outer.path().display());
    let args = |extra: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = [h, "demo", "--flake", &outer_ref, "--dry-run"].map(str::to_owned).to_vec();
        all.extend(extra.iter().map(|a| (*a).to_owned()));
        all
    };

    let out = run(&args(&[]));
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("/nonexistent/epnix-site"), "Nix's own words: {err}");
    let hint = err.lines().find(|l| l.starts_with("hint: ")).unwrap_or_else(|| panic!("no hint in:\n{err}"));
    assert!(hint.contains("an input of the flake cannot be fetched"), "{hint}");
    assert!(hint.contains("`--override-input <input> <flake reference>`"), "{hint}");

    let out = run(&args(&["--json"]));
    assert_exit(&out, 2);
    let doc = document(&out);
    assert_eq!(doc["outcome"], "bad-input", "{doc:#}");
    assert_eq!(doc["error"]["step"], "evaluate", "{doc:#}");
    assert!(doc["error"]["hint"].as_str().is_some_and(|h| h.contains("--override-input")), "{doc:#}");
    assert_untouched(&host);

    let out = run(&args(&["--override-input", "site", &flake.reference()]));
    assert_exit(&out, 0);
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("profile /nix/var/nix/profiles/epnix/demo: new, generation 1"), "{plan}");
    let out = run(&args(&["--override-input", "site", &flake.reference(), "--json"]));
    assert_exit(&out, 0);
    assert_eq!(json(&out)["dryRun"], true);
    assert_untouched(&host);
}

/// A host under a name in the configuration that is not the name it
/// answers to: refused until `expectedHostname` says its real name.
#[test]
fn a_host_configured_under_another_name_needs_expected_hostname() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    let real = host.name.as_str();
    let alias = "lab-ioc";
    let top = demo(&ioc, "version = \"v1\";", "", "");
    let at = format!("epnixDeploy.hosts.{alias}");

    // By default the host must answer as its name in the configuration.
    flake.write_as(&host, alias, &top);
    let out = epnix_deploy(&flake, &[alias, "demo"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("`127.0.0.1` answers as host `{real}`, not `{alias}`: refusing to change it")),
        "{err}"
    );
    assert!(err.contains(&format!("set `{at}.expectedHostname = \"{real}\"` (the machine's real name)")), "{err}");
    assert_untouched(&host);

    // A wrong `expectedHostname`: refused the same, by a dry run too.
    flake.write_full(&host, alias, "expectedHostname = \"ioc-elsewhere\";", &top);
    for dry_run in [false, true] {
        let mut args = vec![alias, "demo", "--json"];
        if dry_run {
            args.push("--dry-run");
        }
        let out = epnix_deploy(&flake, &args);
        assert_exit(&out, 2);
        let doc = document(&out);
        assert_eq!(doc["outcome"], "bad-input", "{doc:#}");
        let message = doc["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("answers as host `{real}`, not `ioc-elsewhere`")), "{doc:#}");
        let hint = doc["error"]["hint"].as_str().unwrap();
        assert!(hint.contains(&format!("`{at}.expectedHostname = \"{real}\"`")), "{hint}");
        assert!(hint.contains("`--skip-hostname-check`"), "{hint}");
        assert_untouched(&host);
    }

    // The real name: deployed.
    flake.write_full(&host, alias, &format!("expectedHostname = \"{real}\";"), &top);
    let out = epnix_deploy(&flake, &[alias, "demo"]);
    assert_exit(&out, 0);
    assert_eq!(profile_link(&host), "demo-1-link");
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");
}
