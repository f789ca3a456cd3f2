//! The NixOS module through the real module system (issue 13):
//! `nix/tests/module-check.nix` evaluates `nix/module.nix` with nixpkgs'
//! `lib.evalModules`, once with each vendored nixpkgs `lib` (current, and the
//! nixos-25.11 era of `flake.lock`), with `NIX_ABORT_ON_WARN=1` so that any
//! deprecation warning is an error. It forces every option's type and the
//! units, checks that the assertions refuse what the tool refuses, and
//! compares the module's units with the tool's. No test host is needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use epnix_deploy::config::{self, Config};
use epnix_deploy::layout;
use epnix_deploy::unit::{self, HostFacts};
use serde_json::Value;

use crate::parity::{CONFIG, TOP, nix_string, repo, repo_file};

/// The vendored nixpkgs `lib` snapshots (see `../shared/vendor/README.md`).
const LIBS: [&str; 2] = ["nixpkgs-lib-de42d44", "nixpkgs-lib-d788520"];

/// What `fakePackage "myTop"` and `fakePackage "procServ-2.8.0"` stand for.
const PACKAGE: &str = "/nix/store/00000000000000000000000000000000-myTop";
const PROCSERV: &str = "/nix/store/00000000000000000000000000000000-procServ-2.8.0/bin/procServ";

/// The vendored `lib`s, unpacked into a temporary directory that goes when
/// this is dropped.
struct Libs {
    dir: tempfile::TempDir,
}

impl Libs {
    fn unpack() -> Libs {
        let vendor = repo().join("../shared/vendor");
        let dir = tempfile::tempdir().expect("temp dir");
        for name in LIBS {
            let tarball = vendor.join(format!("{name}.tar.gz"));
            assert!(
                tarball.is_file(),
                "{} is missing: the module check needs the vendored nixpkgs lib",
                tarball.display()
            );
            let status =
                Command::new("tar").arg("xzf").arg(&tarball).arg("-C").arg(dir.path()).status().expect("running tar");
            assert!(status.success(), "unpacking {}", tarball.display());
        }
        Libs { dir }
    }

    /// Each `lib` directory, with the name of its snapshot.
    fn each(&self) -> Vec<(&'static str, PathBuf)> {
        LIBS.iter().map(|name| (*name, self.dir.path().join(name).join("lib"))).collect()
    }
}

/// Evaluates `body` with `check` bound to `nix/tests/module-check.nix` for
/// `lib`, and `fake` to its `fakePackage`; `Err` holds Nix's stderr.
fn try_eval(lib: &Path, body: &str) -> Result<Value, String> {
    let expr = format!(
        "let check = import {harness} {{ lib = import {lib}; }}; fake = check.fakePackage; in {body}",
        harness = repo_file("nix/tests/module-check.nix"),
        lib = nix_string(&lib.display().to_string()),
    );
    let output = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command flakes"])
        .args(["eval", "--impure", "--json", "--expr", &expr])
        .env("NIX_CONFIG", "substituters =")
        // Any warning of nixpkgs' lib (a deprecation) is an error.
        .env("NIX_ABORT_ON_WARN", "1")
        .output()
        .expect("running nix");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).expect("nix eval prints JSON"))
    } else {
        Err(stderr)
    }
}

fn eval(lib: &Path, body: &str) -> Value {
    try_eval(lib, body).unwrap_or_else(|stderr| panic!("evaluating with {}:\n{body}\n{stderr}", lib.display()))
}

/// `result` of the module for `services.epnix.iocs = <iocs>`: the failed
/// assertions' messages, the warnings and the units.
fn result(lib: &Path, iocs: &str) -> Value {
    eval(lib, &format!("check.result {{ services.epnix.iocs = {iocs}; }}"))
}

fn failed(result: &Value) -> Vec<String> {
    serde_json::from_value(result["failed"].clone()).expect("a list of messages")
}

/// The tool's units for the IOCs of top `TOP` of `config`, changed in the
/// three places where the module's differ: the first comment, no ownership
/// marker, and the top's store path instead of its profile.
fn tool_units_as_the_module_writes_them(config: &Config) -> BTreeMap<String, String> {
    let facts = HostFacts { procserv: PROCSERV.into(), procserv_oneshot: true };
    let top = &config.tops[TOP];
    top.iocs
        .iter()
        .filter(|(_, ioc)| ioc.enable)
        .map(|(name, ioc)| {
            let text = unit::render(TOP, name, ioc, &facts)
                .replace(
                    &format!("# Written by epnix-deploy for top `{TOP}`. Do not edit: the next deploy replaces it.\n"),
                    "# Written by the NixOS module services.epnix.iocs. Do not edit: change the NixOS configuration.\n",
                )
                .replace(&format!("X-EpnixDeploy-Top={TOP}\n"), "")
                .replace(layout::profile(TOP).as_str(), top.package.as_str());
            (layout::unit_name(name), text)
        })
        .collect()
}

fn units_of(result: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(result["units"].clone()).expect("units are strings")
}

/// Every option, with its type, default, example and description, as the
/// NixOS manual renders them; and the module declares every IOC option of
/// `epnixDeploy` but `healthCheck`.
#[test]
fn every_option_evaluates_and_the_ioc_options_are_the_tools() {
    let libs = Libs::unpack();
    let schema = config::schema();
    let keys =
        |level: &str| -> Vec<String> { serde_json::from_value(schema["levels"][level]["keys"].clone()).unwrap() };
    for (name, lib) in libs.each() {
        let options = eval(&lib, "check.options");
        let names: Vec<&str> = options.as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
        let ioc = "services.epnix.iocs.<name>";
        let mut want: Vec<String> = keys("ioc")
            .into_iter()
            .filter(|key| key != "healthCheck" && key != "procServ")
            .map(|key| format!("{ioc}.{key}"))
            .collect();
        want.extend(keys("iocProcServ").into_iter().map(|key| format!("{ioc}.procServ.{key}")));
        for option in &want {
            assert!(names.contains(&option.as_str()), "{name}: the module has no option {option}: {names:#?}");
        }
        for option in ["services.epnix.procServ.package", "services.epnix.iocs.<name>.package"] {
            assert!(names.contains(&option), "{name}: {option}");
        }
    }
}

/// Problem 1: with current nixpkgs, every evaluation of an IOC warned that
/// `lib.cli.toGNUCommandLine` is deprecated, which `NIX_ABORT_ON_WARN=1`
/// turns into an error.
#[test]
fn an_ioc_evaluates_with_no_warning_on_either_lib() {
    let libs = Libs::unpack();
    for (name, lib) in libs.each() {
        let result = result(
            &lib,
            r#"{ a = { package = fake "myTop"; workingDirectory = "iocBoot/iocA"; procServ.options.quiet = true; }; }"#,
        );
        assert_eq!(failed(&result), Vec::<String>::new(), "{name}");
        assert_eq!(result["warnings"], serde_json::json!([]), "{name}");
        assert!(units_of(&result).contains_key("epnix-a.service"), "{name}: {result}");
    }
}

/// The module's units for the parity test's top, set with `lib.nixosIocs`,
/// are the tool's, but for the three differences; each is wanted by
/// `multi-user.target`.
#[test]
fn the_module_renders_the_units_the_tool_installs() {
    let libs = Libs::unpack();
    let config_file = repo_file("nix/config.nix");
    let lib_file = repo_file("nix/lib.nix");
    for (name, lib) in libs.each() {
        let value = eval(
            &lib,
            &format!(
                r#"let
                  cfg = (import {config_file}).check {CONFIG};
                  top = cfg.tops.{TOP} // {{ package = fake "myTop"; }};
                in {{
                  inherit cfg;
                  module = check.result {{ services.epnix.iocs = (import {lib_file}).nixosIocs top; }};
                }}"#
            ),
        );
        let config = Config::parse(&value["cfg"]).expect("the tool accepts CONFIG");
        assert_eq!(config.tops[TOP].package.as_str(), PACKAGE);
        let module = &value["module"];
        assert_eq!(failed(module), Vec::<String>::new(), "{name}");
        let got = units_of(module);
        let want = tool_units_as_the_module_writes_them(&config);
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{name}");
        for (unit, text) in &want {
            assert_eq!(&got[unit], text, "{name}: {unit}");
            assert_eq!(module["wantedBy"][unit], serde_json::json!(["multi-user.target"]), "{name}: {unit}");
        }
    }
}

/// Problem 4: `environment` takes a path or a package, as `epnixDeploy`
/// does, so `lib.nixosIocs` works for a top that uses one; the unit holds
/// its store path, as the tool's does.
#[test]
fn environment_values_may_be_paths_and_packages() {
    let libs = Libs::unpack();
    let file = nix_string(&repo().join("nix/schema.json").display().to_string());
    let config_file = repo_file("nix/config.nix");
    let lib_file = repo_file("nix/lib.nix");
    for (name, lib) in libs.each() {
        let value = eval(
            &lib,
            &format!(
                r#"let
                  top = {{
                    package = fake "myTop";
                    iocs.a = {{
                      workingDirectory = "iocBoot/iocA";
                      environment = {{ FILE = /. + {file}; DATA = fake "data"; TEXT = "x"; }};
                    }};
                  }};
                in {{
                  cfg = (import {config_file}).check {{ tops.{TOP} = top; }};
                  module = check.result {{ services.epnix.iocs = (import {lib_file}).nixosIocs top; }};
                }}"#
            ),
        );
        let config = Config::parse(&value["cfg"]).expect("the tool accepts paths and packages in environment");
        let env = &config.tops[TOP].iocs["a"].environment;
        assert!(env["FILE"].starts_with("/nix/store/") && env["FILE"].ends_with("-schema.json"), "{env:?}");
        assert_eq!(env["DATA"], "/nix/store/00000000000000000000000000000000-data");
        let module = &value["module"];
        assert_eq!(failed(module), Vec::<String>::new(), "{name}");
        assert_eq!(units_of(module), tool_units_as_the_module_writes_them(&config), "{name}");
    }
}

/// Problem 2: `procServ.options` keep an option's value in the option's own
/// word. procServ declares `logstamp` with an optional argument, which getopt
/// takes only from the same word: `--logstamp "[%H:%M]"` made the format the
/// console endpoint, and procServ exited 22.
#[test]
fn procserv_options_keep_their_value_in_their_word() {
    let libs = Libs::unpack();
    for (name, lib) in libs.each() {
        let result = result(
            &lib,
            r#"{ a = {
              package = fake "myTop";
              workingDirectory = "iocBoot/iocA";
              procServ.options = { logstamp = "[%H:%M]"; info-file = "/run/epics/a/info"; quiet = true; wait = false; ignore = [ "^D" "^C" ]; q = true; };
            }; }"#,
        );
        let unit = &units_of(&result)["epnix-a.service"];
        let exec = unit.lines().find(|line| line.starts_with("ExecStart=")).expect("ExecStart");
        assert!(
            exec.ends_with(
                " --chdir=/nix/store/00000000000000000000000000000000-myTop/iocBoot/iocA \"--ignore=^D\" \"--ignore=^C\" \
                 --info-file=/run/epics/a/info \"--logstamp=[%%H:%%M]\" -q --quiet unix:/run/epics/a/console ./st.cmd"
            ),
            "{name}: {exec}"
        );
    }
}

/// IOCs the tool would refuse, each with (part of) the message of the
/// assertion that must fail. `ok` IOCs around them keep the rest valid.
const BAD: &[(&str, &str)] = &[
    (
        r#"{ "bad name" = { package = fake "t"; workingDirectory = "a"; }; }"#,
        "services.epnix.iocs.\"bad name\": `bad name` is not a valid IOC name",
    ),
    (
        r#"{ a = { package = fake "t"; workingDirectory = "../x"; }; }"#,
        "services.epnix.iocs.a.workingDirectory: `../x` leads outside the top",
    ),
    (r#"{ a = { package = fake "t"; workingDirectory = "/etc"; }; }"#, "workingDirectory: `/etc` is absolute"),
    (
        r#"{ a = { package = fake "t"; workingDirectory = "a"; startupScript = "../../st.cmd"; }; }"#,
        "services.epnix.iocs.a.startupScript: `../../st.cmd` leads outside the top",
    ),
    (
        r#"{ a = { package = fake "t"; workingDirectory = "a"; environment.A = "x\ny"; }; }"#,
        "services.epnix.iocs.a.environment.A: contains a line break",
    ),
    (
        r#"{ a = { package = fake "t"; workingDirectory = "a"; environment."1A" = "x"; }; }"#,
        "environment.\"1A\": is not a valid environment variable name",
    ),
    (
        r#"{ a = { package = fake "t"; workingDirectory = "a"; procServ.console = 80; }; }"#,
        "services.epnix.iocs.a.procServ.console: TCP port 80 is below 1024",
    ),
    (
        r#"{ a = { package = fake "t"; workingDirectory = "a"; description = "ends in \\"; }; }"#,
        "services.epnix.iocs.a.description: ends in a backslash",
    ),
    (
        r#"{ a = { package = fake "t"; workingDirectory = "a"; procServ.console = 2001; };
             b = { package = fake "t"; workingDirectory = "b"; procServ.console = 2001; }; }"#,
        "services.epnix.iocs.b.procServ.console: TCP port 2001 is also used by services.epnix.iocs.a.procServ.console",
    ),
];

#[test]
fn assertions_refuse_what_the_tool_refuses() {
    let libs = Libs::unpack();
    let list = BAD
        .iter()
        .map(|(iocs, _)| format!("(check.result {{ services.epnix.iocs = {iocs}; }}).failed"))
        .collect::<Vec<_>>();
    for (name, lib) in libs.each() {
        let value = eval(&lib, &format!("[ {} ]", list.join(" ")));
        for ((iocs, message), failed) in BAD.iter().zip(value.as_array().unwrap()) {
            let failed: Vec<String> = serde_json::from_value(failed.clone()).unwrap();
            assert!(failed.iter().any(|m| m.contains(message)), "{name}: {iocs}\nwant: {message}\nfailed: {failed:#?}");
        }
        // A disabled IOC does not clash.
        let result = result(
            &lib,
            r#"{ a = { package = fake "t"; workingDirectory = "a"; procServ.console = 2001; };
                 b = { package = fake "t"; workingDirectory = "b"; procServ.console = 2001; enable = false; }; }"#,
        );
        assert_eq!(failed(&result), Vec::<String>::new(), "{name}");
        assert_eq!(units_of(&result).keys().collect::<Vec<_>>(), ["epnix-a.service"], "{name}");
    }
}

/// Problem 3: forcing the unit of an IOC that its assertion refuses stops
/// with the assertion's message, not with `cannot coerce null to a string`
/// inside `nix/unit.nix`.
#[test]
fn forcing_a_refused_iocs_unit_gives_the_assertions_message() {
    let libs = Libs::unpack();
    for (name, lib) in libs.each() {
        let err = try_eval(
            &lib,
            r#"check.units { services.epnix.iocs.a = { package = fake "t"; workingDirectory = "../x"; }; }"#,
        )
        .expect_err("the unit of an IOC outside its top cannot be rendered");
        assert!(err.contains("services.epnix.iocs.a.workingDirectory: `../x` leads outside the top"), "{name}: {err}");
        assert!(!err.contains("cannot coerce"), "{name}: {err}");
    }
}

/// Problem 5: the README's "The unit" compares every hardening line of the
/// unit with EPNix's unit, and names the options EPNix's unit has.
#[test]
fn the_readme_compares_the_hardening_with_epnix() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let start = readme.find("\n### The unit\n").expect("README has \"### The unit\"");
    let section = &readme[start + 1..];
    let section = &section[..section[4..].find("\n#").map_or(section.len(), |end| end + 4)];
    let options: Vec<&str> = unit::HARDENING.iter().map(|line| line.split_once('=').unwrap().0).collect();
    // The first cell of each row of the comparison table.
    let rows: Vec<&str> =
        section.lines().filter_map(|line| line.strip_prefix("| ")).filter_map(|line| line.split(" |").next()).collect();
    let epnix = ["PrivateUsers", "PrivateMounts", "SystemCallFilter", "CapabilityBoundingSet"];
    for option in options.iter().chain(&epnix) {
        assert!(
            rows.iter().any(|row| row.contains(&format!("`{option}`"))),
            "README's \"The unit\" has no row for {option}: {rows:#?}"
        );
    }
    assert!(!section.contains("EPNix's hardening options"), "the unit's hardening is not simply EPNix's");
}
