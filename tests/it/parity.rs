//! The Nix side agrees with the Rust side (issue 5), checked with the local
//! `nix eval` and no nixpkgs: `nix/unit.nix` renders, byte for byte, the units
//! `unit::render` renders; `nix/config.nix` refuses what `Config::parse`
//! refuses, at the same attribute path; the template's `epnixDeploy` is a
//! valid configuration; and Nix reads `flake.lock` as the lock of
//! `flake.nix`. No test host is needed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use epnix_deploy::config::{self, Config};
use epnix_deploy::layout;
use epnix_deploy::unit::{self, HostFacts};
use serde_json::Value;

pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A Nix string literal holding `text`.
pub(crate) fn nix_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes").replace('$', "\\$")
}

/// The absolute path of `path` in the repository, as a Nix string (which
/// `import` takes).
pub(crate) fn repo_file(path: &str) -> String {
    nix_string(&repo().join(path).display().to_string())
}

/// Runs `nix` with `args`, the way the tool runs it, and returns stdout.
fn nix(args: &[&str]) -> String {
    let output = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command flakes"])
        .args(args)
        // No binary cache is reachable here; asking one only costs retries.
        .env("NIX_CONFIG", "substituters =")
        .output()
        .expect("running nix");
    assert!(
        output.status.success(),
        "nix {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("nix prints UTF-8")
}

/// The value of the Nix expression `expr`, as JSON.
fn eval(expr: &str) -> Value {
    serde_json::from_str(&nix(&["eval", "--impure", "--json", "--expr", expr])).expect("nix eval prints JSON")
}

/// One top whose IOCs cover what the unit must escape and every IOC option
/// the unit depends on; with the other settings, it uses every option of
/// the schema, so that both sides must accept each. `off` shares `tcp`'s
/// port, which is fine because it is disabled. Some values sit at the limits
/// the checks allow, so that both sides must accept them: the shortest
/// `confirmTimeout`, `tcp`'s check that takes all of `activationTimeout`,
/// `off`'s 32 KiB environment value.
pub(crate) const TOP: &str = "myTop";
pub(crate) const CONFIG: &str = r#"{
  hosts.h = {
    hostname = "h.example.org";
    expectedHostname = "ioc-h.lab";
    sshUser = "root";
    sshPort = 2222;
    sshOpts = [ "-i" "/root/.ssh/ioc" ];
    tags = [ "linac" ];
    magicRollback = false;
    buildOnTarget = true;
    procServ.package = "/nix/store/00000000000000000000000000000000-procServ-2.8.0";
    conserver = {
      enable = true;
      includeFile = "/etc/conserver/iocs.cf";
      configFile = "/etc/conserver.cf";
      service = "conserver.service";
    };
    privilegeEscalationCommand = [ "doas" "-n" ];
  };
  hosts.here = {
    hostname = "localhost";
    local = true;
  };
  tops.myTop = {
    package = "/nix/store/00000000000000000000000000000000-myTop";
    hosts = [ "h" ];
    activationTimeout = 120;
    magicRollback = true;
    confirmTimeout = 5;
    iocs = {
      plain = {
        workingDirectory = "iocBoot/iocPlain";
        description = "Vakuum – Ünïcode";
        healthCheck = {
          settleTime = 0;
          readyLine = null;
          command = "caget -w 2 plain:heartbeat";
          commandTimeout = 3;
        };
      };
      quoting = {
        workingDirectory = "./ioc Boot//100%/";
        startupScript = "st \"$x\".cmd";
        environment = {
          QUOTES = "say \"hi\"";
          BACKSLASHES = "C:\\epics\\ and \\\" and \\n";
          DOLLARS = "$HOME, $${HOME}, $$";
          PERCENT = "100% %n %%";
          UNICODE = "µA ✓";
          EMPTY = "";
          # Quoted whole, so its last backslash is no line continuation.
          TRAILING = "ends in \\";
        };
        description = "50% \"quoted\" $x \\ end";
      };
      tcp = {
        workingDirectory = ".";
        startupScript = "iocBoot/iocTcp/st.cmd";
        procServ.console = 2001;
        healthCheck = {
          readyLine = "tcp: ready";
          settleTime = 110;
          command = "true";
          commandTimeout = 10;
        };
      };
      off = {
        workingDirectory = "iocBoot/iocOff";
        procServ.console = 2001;
        environment.BIG = builtins.concatStringsSep "" (builtins.genList (_: "x") 32768);
        enable = false;
      };
    };
  };
}"#;

/// The units the tool installs for the IOCs of `CONFIG`, keyed by file name.
fn rust_units(config: &Config, oneshot: bool) -> BTreeMap<String, String> {
    let facts = HostFacts { procserv: "/usr/bin/procServ".into(), procserv_oneshot: oneshot };
    config.tops[TOP]
        .iocs
        .iter()
        // As the plan does: a disabled IOC gets no unit, a deployed one is removed.
        .filter(|(_, ioc)| ioc.enable)
        .map(|(name, ioc)| (layout::unit_name(name), unit::render(TOP, name, ioc, &facts)))
        .collect()
}

/// `CONFIG` itself and its units rendered by `nix/unit.nix` with `common`,
/// the arguments that all IOCs share (Nix attribute set bindings).
fn nix_side(common: &str) -> (Config, Value) {
    let value = eval(&format!(
        r#"let
          config = import {config};
          unit = import {unit};
          cfg = config.check {CONFIG};
          units = oneshot: unit.units ({{ inherit oneshot; procServ = "/usr/bin/procServ"; }} // {{ {common} }})
            (builtins.mapAttrs (_: ioc: {{ ioc = config.ioc ioc; }}) cfg.tops.{TOP}.iocs);
        in {{ inherit cfg; oneshot = units true; old = units false; }}"#,
        config = repo_file("nix/config.nix"),
        unit = repo_file("nix/unit.nix"),
    ));
    let config = Config::parse(&value["cfg"]).expect("the tool accepts CONFIG");
    (config, value)
}

/// `nix/schema.json`, which both `.nix` files read, holds what
/// `config::schema` says. With `UPDATE_SCHEMA=1`, the test writes it instead.
#[test]
fn the_schema_file_is_current() {
    let path = repo().join("nix/schema.json");
    let want = serde_json::to_string_pretty(&config::schema()).expect("JSON") + "\n";
    if std::env::var_os("UPDATE_SCHEMA").is_some_and(|v| v == "1") {
        std::fs::write(&path, &want).expect("writing nix/schema.json");
        return;
    }
    let got = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "nix/schema.json is not what src/config.rs says; rewrite it with\n  \
         UPDATE_SCHEMA=1 cargo test --test it the_schema_file_is_current\nand commit it"
    );
}

/// `CONFIG` sets every key of every level of the schema, so that both sides
/// must accept each: a new option fails here until `CONFIG` uses it.
#[test]
fn the_parity_configuration_uses_every_key() {
    let value = eval(&format!("let config = import {}; in config.check {CONFIG}", repo_file("nix/config.nix")));
    let schema = config::schema();
    for (name, level) in schema["levels"].as_object().expect("levels") {
        let at: Vec<&str> = level["at"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        let mut nodes = vec![&value];
        for part in &at {
            nodes = nodes
                .into_iter()
                .flat_map(|node| match *part {
                    "*" => node.as_object().map(|map| map.values().collect()).unwrap_or_default(),
                    part => node.get(part).into_iter().collect::<Vec<_>>(),
                })
                .collect();
        }
        for key in level["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()) {
            assert!(
                nodes.iter().any(|node| node.get(key).is_some()),
                "CONFIG in tests/it/parity.rs never sets `{key}` at {}: use it there",
                if at.is_empty() { "the top level".to_owned() } else { format!("`{}` ({name})", at.join(".")) }
            );
        }
    }
}

fn units_of(value: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(value.clone()).expect("units are strings")
}

#[test]
fn nix_renders_the_units_the_tool_installs() {
    let profile = layout::profile(TOP);
    let (config, nix) = nix_side(&format!("top = {}; topDir = {};", nix_string(TOP), nix_string(profile.as_str())));
    for (key, oneshot) in [("oneshot", true), ("old", false)] {
        let want = rust_units(&config, oneshot);
        let got = units_of(&nix[key]);
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "unit names, oneshot {oneshot}");
        for (name, text) in &want {
            assert_eq!(&got[name], text, "{name}, oneshot {oneshot}");
        }
    }
}

#[test]
fn a_disabled_ioc_gets_no_unit() {
    let (config, nix) = nix_side(r#"top = "myTop"; topDir = "/nix/var/nix/profiles/epnix/myTop";"#);
    assert!(!config.tops[TOP].iocs["off"].enable);
    let units = units_of(&nix["oneshot"]);
    assert!(units.contains_key("epnix-tcp.service"), "{units:?}");
    assert!(!units.contains_key("epnix-off.service"), "{units:?}");
}

/// The NixOS module's unit differs from the tool's in exactly three places:
/// its first comment, no ownership marker (the tool must never take the
/// unit over), and `--chdir` under the top's store path instead of its
/// profile. Everything the IOC sees is the same.
#[test]
fn the_module_unit_differs_only_in_owner_and_top_directory() {
    let package = "/nix/store/00000000000000000000000000000000-myTop";
    let (config, nix) = nix_side(&format!("topDir = {};", nix_string(package)));
    let got = units_of(&nix["oneshot"]);
    let want = rust_units(&config, true);
    assert_eq!(got.len(), want.len());
    for (name, tool_unit) in want {
        let module_unit = tool_unit
            .replace(
                &format!("# Written by epnix-deploy for top `{TOP}`. Do not edit: the next deploy replaces it.\n"),
                "# Written by the NixOS module services.epnix.iocs. Do not edit: change the NixOS configuration.\n",
            )
            .replace(&format!("X-EpnixDeploy-Top={TOP}\n"), "")
            .replace(layout::profile(TOP).as_str(), package);
        assert_eq!(got[&name], module_unit, "{name}");
        assert_eq!(unit::owner(&got[&name]), None, "{name}");
    }
}

/// Configurations the tool refuses, as Nix expressions: each makes one
/// mistake. `base` fills in the rest of a valid configuration around top `t`,
/// `withU` adds a top `u` on the same host.
fn bad_configs() -> Vec<String> {
    let ioc = |attrs: &str| format!("base {{ iocs.i = {{ {attrs} }}; }}");
    let top = |attrs: &str| format!("base {{ {attrs} }}");
    let mut configs: Vec<String> = [
        "",
        r#"workingDirectory = "../x";"#,
        r#"workingDirectory = "/etc";"#,
        r#"workingDirectory = "a\tb";"#,
        r#"workingDirectory = 1;"#,
        r#"workingDirectory = "a"; startupScript = "../../../st.cmd";"#,
        r#"workingDirectory = "a"; startupScript = ".";"#,
        r#"workingDirectory = "a"; workingDir = "x";"#,
        r#"workingDirectory = "a"; environment."1BAD" = "x";"#,
        r#"workingDirectory = "a"; environment.A = "x\ny";"#,
        r#"workingDirectory = "a"; environment.A = 1;"#,
        r#"workingDirectory = "a"; environment = [ ];"#,
        r#"workingDirectory = "a"; procServ.console = "tcp";"#,
        r#"workingDirectory = "a"; procServ.console = 0;"#,
        r#"workingDirectory = "a"; procServ.console = 70000;"#,
        // Below 1024, a port needs a capability the IOC's dynamic user lacks.
        r#"workingDirectory = "a"; procServ.console = 80;"#,
        r#"workingDirectory = "a"; procServ.console = 1023;"#,
        r#"workingDirectory = "a"; procServ.port = 2000;"#,
        r#"workingDirectory = "a"; description = "two\nlines";"#,
        r#"workingDirectory = "a"; description = null;"#,
        // A trailing backslash would join the unit's next line.
        r#"workingDirectory = "a"; description = "ends in \\";"#,
        // systemd cannot load a unit line over 1 MiB.
        r#"workingDirectory = "a"; environment.BIG = builtins.foldl' (s: _: s + s) "x" (builtins.genList (i: i) 21);"#,
        r#"workingDirectory = "a"; environment.BIG = builtins.concatStringsSep "" (builtins.genList (_: "x") 32769);"#,
        r#"workingDirectory = "a"; enable = "yes";"#,
        r#"workingDirectory = "a"; healthCheck.settleTime = -1;"#,
        r#"workingDirectory = "a"; healthCheck.commandTimeout = 0;"#,
        r#"workingDirectory = "a"; healthCheck.settleTime = 1.5;"#,
        r#"workingDirectory = "a"; healthCheck.settleTime = 86401;"#,
        r#"workingDirectory = "a"; healthCheck.commandTimeout = 86401;"#,
        r#"workingDirectory = "a"; healthCheck.readyLine = "a\nb";"#,
        r#"workingDirectory = "a"; healthCheck.command = 1;"#,
        r#"workingDirectory = "a"; healthCheck.ready = "x";"#,
    ]
    .iter()
    .map(|attrs| ioc(attrs))
    .collect();
    configs.extend(
        [
            r#"package = "relative";"#,
            "package = 1;",
            r#"hosts = [ "nope" ];"#,
            "hosts = \"h\";",
            "iocs = { };",
            r#"iocs."bad name".workingDirectory = "a";"#,
            "activationTimeout = 1.5;",
            r#"magicRollback = "no";"#,
            "confirmTimeout = -3;",
            "activationTimeout = 0;",
            "activationTimeout = 86401;",
            // The host's timer must outlast two heartbeats, 2 s apart.
            "confirmTimeout = 0;",
            "confirmTimeout = 4;",
            // `1e+14` in JSON, and the same as an integer.
            "confirmTimeout = 1.0e14;",
            "confirmTimeout = 100000000000000;",
            // A check that cannot finish within the activation timeout.
            r#"activationTimeout = 10; iocs.i = { workingDirectory = "a"; healthCheck.settleTime = 11; };"#,
            r#"iocs.i = { workingDirectory = "a"; healthCheck.settleTime = 61; };"#,
            r#"iocs.i = { workingDirectory = "a"; healthCheck = { settleTime = 55; command = "true"; }; };"#,
            r#"activationTimeout = 20; iocs.i = { workingDirectory = "a"; healthCheck = { settleTime = 5; command = "true"; commandTimeout = 16; }; };"#,
            "activationTimeOut = 5;",
            r#"iocs = { a = { workingDirectory = "a"; procServ.console = 2000; }; b = { workingDirectory = "b"; procServ.console = 2000; }; };"#,
        ]
        .iter()
        .map(|attrs| top(attrs)),
    );
    configs.extend(
        [
            r#"{ hostz = { }; }"#,
            r#"{ hosts.h.hostname = "-oProxyCommand=x"; }"#,
            r#"{ hosts.h.hostname = " h"; }"#,
            r#"{ hosts.h = { }; }"#,
            r#"{ hosts.h = { hostname = "h"; sshPort = "22"; }; }"#,
            r#"{ hosts.h = { hostname = "h"; expectedHostname = "ioc h"; }; }"#,
            r#"{ hosts.h = { hostname = "h"; expectedHostname = "-h"; }; }"#,
            r#"{ hosts.h = { hostname = "h"; expectedHostname = 1; }; }"#,
            r#"{ hosts.h = { hostname = "h"; sshOpts = "-v"; }; }"#,
            r#"{ hosts.h = { hostname = "h"; tags = [ 1 ]; }; }"#,
            r#"{ hosts.h = { hostname = "h"; magicRollback = 1; }; }"#,
            r#"{ hosts.h = { hostname = "h"; buildOnTarget = "yes"; }; }"#,
            r#"{ hosts.h = { hostname = "h"; sshUsr = "root"; }; }"#,
            r#"{ hosts.h = { hostname = "h"; procServ.package = "procServ"; }; }"#,
            r#"{ hosts.h = { hostname = "h"; procServ.package = 1; }; }"#,
            r#"{ hosts.h = { hostname = "h"; procServ.pkg = "/nix/store/p"; }; }"#,
            r#"{ hosts.h = { hostname = "h"; conserver = true; }; }"#,
            r#"{ hosts.h = { hostname = "h"; conserver.enable = "yes"; }; }"#,
            r#"{ hosts.h = { hostname = "h"; conserver.enabled = true; }; }"#,
            r#"{ hosts.h = { hostname = "h"; conserver.includeFile = "epnix-deploy.cf"; }; }"#,
            r#"{ hosts.h = { hostname = "h"; conserver.includeFile = "/etc/conserver/"; }; }"#,
            r#"{ hosts.h = { hostname = "h"; conserver.includeFile = "/etc/my iocs.cf"; }; }"#,
            r#"{ hosts.h = { hostname = "h"; conserver.configFile = 1; }; }"#,
            // The include file is rewritten whole: never conserver's own configuration.
            r#"{ hosts.h = { hostname = "h"; conserver.includeFile = "/etc/conserver/conserver.cf"; }; }"#,
            r#"{ hosts.h = { hostname = "h"; conserver = { includeFile = "/etc/c.cf"; configFile = "/etc/c.cf"; }; }; }"#,
            r#"{ hosts.h = { hostname = "h"; conserver.service = "-H x"; }; }"#,
            r#"{ hosts.h = { hostname = "h"; local = "yes"; }; }"#,
            // Only this machine is local.
            r#"{ hosts.h = { hostname = "h"; local = true; }; }"#,
            r#"{ hosts.h = { hostname = "h"; privilegeEscalationCommand = "sudo"; }; }"#,
            r#"{ hosts.h = { hostname = "h"; privilegeEscalationCommand = [ ]; }; }"#,
            r#"{ hosts.h = { hostname = "h"; privilegeEscalationCommand = [ "sudo" "" ]; }; }"#,
            r#"{ hosts."-h".hostname = "h"; }"#,
            // The name of the host's procServ profile is no top's.
            r#"{ tops.procServ = { package = "/nix/store/t"; iocs.i.workingDirectory = "a"; }; }"#,
            // Two tops on one host: IOC names and TCP ports must differ.
            r#"withU { iocs.i.workingDirectory = "a"; } (base { })"#,
            r#"withU { iocs.j = { workingDirectory = "a"; procServ.console = 2000; }; } (base { iocs.i = { workingDirectory = "a"; procServ.console = 2000; }; })"#,
        ]
        .map(String::from),
    );
    configs
}

#[test]
fn nix_refuses_what_the_tool_refuses_at_the_same_path() {
    let configs = bad_configs();
    let cases = eval(&format!(
        r#"let
          config = import {config};
          base = top: {{
            hosts.h.hostname = "h.example.org";
            tops.t = {{ package = "/nix/store/t"; hosts = [ "h" ]; iocs.i.workingDirectory = "a"; }} // top;
          }};
          withU = top: cfg: cfg // {{ tops = cfg.tops // {{ u = {{ package = "/nix/store/u"; hosts = [ "h" ]; }} // top; }}; }};
        in map (cfg: {{ json = cfg; errors = config.errors cfg; }}) [ {list} ]"#,
        config = repo_file("nix/config.nix"),
        list = configs.iter().map(|c| format!("({c})")).collect::<Vec<_>>().join(" "),
    ));
    let cases = cases.as_array().expect("a list");
    assert_eq!(cases.len(), configs.len());
    for (config, case) in configs.iter().zip(cases) {
        let rust = match Config::parse(&case["json"]) {
            Ok(_) => panic!("the tool accepts {config}, meant to be wrong"),
            Err(err) => err.to_string(),
        };
        // "<attribute path>: <what is wrong>"
        let path = rust.split_once(": ").map_or(rust.as_str(), |(path, _)| path);
        let errors: Vec<&str> = case["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("{path}: "))),
            "{config}\nthe tool says: {rust}\nNix says: {errors:#?}"
        );
    }
}

#[test]
fn nix_accepts_what_the_tool_accepts() {
    let value = eval(&format!(
        "let config = import {}; cfg = {CONFIG}; in {{ json = cfg; errors = config.errors cfg; }}",
        repo_file("nix/config.nix")
    ));
    Config::parse(&value["json"]).expect("the tool accepts CONFIG");
    assert_eq!(value["errors"], serde_json::json!([]));
}

/// The template's flake, evaluated with its inputs replaced: epnix-deploy is
/// this repository's `flake.nix` (with no nixpkgs: its `lib` and module must
/// not need it), and the top's package, which only EPNix and nixpkgs can
/// build, is the test fixture top. Its `epnixDeploy` passes `checkConfig`
/// and the tool's checks, and its NixOS module gets the same IOCs.
#[test]
fn the_template_evaluates_to_a_valid_configuration() {
    let value = eval(&format!(
        r#"let
          noNixpkgs = throw "needs nixpkgs";
          epnix-deploy = (import {flake}).outputs {{ self = epnix-deploy; nixpkgs = noNixpkgs; }};
          template = (import {template}).outputs {{
            self = template // {{ packages.x86_64-linux.default = import {fixture} {{ }}; }};
            epnix = throw "EPNix builds the top, which this evaluation replaced";
            inherit epnix-deploy;
          }};
        in {{
          inherit (template) epnixDeploy;
          iocs = template.nixosModules.default.services.epnix.iocs;
          imports = map toString template.nixosModules.default.imports;
          apps = builtins.attrNames template.apps.x86_64-linux;
          input = (import {template}).inputs.epnix-deploy.url;
        }}"#,
        flake = repo_file("flake.nix"),
        template = repo_file("templates/top/flake.nix"),
        fixture = repo_file("tests/fixtures/top.nix"),
    ));
    let config = Config::parse(&value["epnixDeploy"]).expect("the tool accepts the template's epnixDeploy");
    let top = &config.tops["myTop"];
    assert_eq!(top.hosts, ["ioc-server-1"]);
    let iocs = value["iocs"].as_object().expect("services.epnix.iocs");
    assert_eq!(iocs.keys().collect::<Vec<_>>(), top.iocs.keys().collect::<Vec<_>>());
    for ioc in iocs.values() {
        assert_eq!(ioc["package"].as_str(), Some(top.package.as_str()));
    }
    assert_eq!(value["imports"], serde_json::json!([repo().join("nix/module.nix").display().to_string()]));
    // `nix run` with no attribute deploys; the input is this repository.
    assert_eq!(value["apps"], serde_json::json!(["default", "deploy"]));
    assert_eq!(value["input"], "github:epics-extensions/epnix-deploy");
}

/// Nix reads the hand-written `flake.lock` as the up-to-date lock of
/// `flake.nix`: it would otherwise have to fetch nixpkgs to relock, which it
/// cannot here, and `--no-update-lock-file` turns any change into an error.
#[test]
fn flake_lock_is_the_lock_of_flake_nix() {
    let dir = tempfile::tempdir().expect("temp dir");
    for file in ["flake.nix", "flake.lock"] {
        std::fs::copy(repo().join(file), dir.path().join(file)).expect("copying the flake");
    }
    let reference = format!("path:{}", dir.path().display());
    let metadata: Value =
        serde_json::from_str(&nix(&["flake", "metadata", "--json", "--no-update-lock-file", &reference]))
            .expect("JSON metadata");
    let lock: Value = serde_json::from_str(&std::fs::read_to_string(repo().join("flake.lock")).unwrap()).unwrap();
    assert_eq!(metadata["locks"], lock);
    let locked = &lock["nodes"]["nixpkgs"]["locked"];
    assert_eq!(locked["type"], "github");
    assert_eq!((locked["owner"].as_str(), locked["repo"].as_str()), (Some("NixOS"), Some("nixpkgs")));
    assert!(locked["rev"].as_str().is_some_and(|rev| rev.len() == 40), "{locked}");
    assert!(locked["narHash"].as_str().is_some_and(|hash| hash.starts_with("sha256-")), "{locked}");
    let unchanged = std::fs::read_to_string(dir.path().join("flake.lock")).unwrap();
    assert_eq!(unchanged, std::fs::read_to_string(repo().join("flake.lock")).unwrap());
}
