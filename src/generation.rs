//! A generation's store path: the top's build together with the units,
//! health checks and origin deployed with it (`nix/generation.nix`).
//!
//! Because the units are inside the store path, a change of units alone is
//! a new store path, and `nix-env --set` makes a new generation for it on
//! every Nix version. A generation can never be paired with the wrong
//! units, and nothing about it changes once it exists.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{Value, json};

use crate::config::HealthCheck;
use crate::nix;

/// What a new generation holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec<'a> {
    pub top_name: &'a str,
    /// The top's build.
    pub top: &'a Utf8Path,
    /// Unit texts by IOC name.
    pub units: &'a BTreeMap<String, String>,
    /// Health checks by IOC name.
    pub checks: &'a BTreeMap<String, HealthCheck>,
    /// `user@machine` of the deployer.
    pub deployer: &'a str,
    /// The flake's revision, `dirty`, or empty.
    pub revision: &'a str,
}

/// Builds the generation's store path on the deployer's machine; `nix copy`
/// then takes it to the host along with the top.
pub fn build(spec: &Spec) -> Result<Utf8PathBuf> {
    let (_dir, expr) = expression(spec, None)?;
    let stdout = nix::build_expr(&expr).output().map_err(|err| {
        anyhow::Error::new(err).context(format!("building the generation of top `{}` failed", spec.top_name))
    })?;
    nix::parse_build_output(&stdout)
}

/// A generation for the host to build: its derivation, and the store path
/// the build will have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instantiated {
    pub derivation: Utf8PathBuf,
    pub path: Utf8PathBuf,
}

/// Writes the generation's derivation to the deployer's store and builds
/// nothing: the top is named by its derivation `top_drv`, so the top need
/// not be on the deployer; `nix copy --derivation` takes both to the host,
/// which builds them.
pub fn instantiate(spec: &Spec, top_drv: &Utf8Path) -> Result<Instantiated> {
    let (_dir, expr) = expression(spec, Some(top_drv))?;
    let expr = format!("let g = {expr}; in {{ derivation = g.drvPath; path = g.outPath; }}");
    let stdout = nix::eval_expr(&expr).output().map_err(|err| {
        anyhow::Error::new(err).context(format!("evaluating the generation of top `{}` failed", spec.top_name))
    })?;
    let value: Value = serde_json::from_str(&stdout).context("reading the JSON of `nix eval`")?;
    let field = |key: &str| value[key].as_str().map(Utf8PathBuf::from).context("`nix eval` gave no store path");
    Ok(Instantiated { derivation: field("derivation")?, path: field("path")? })
}

/// The expression of the generation, with its files in a temporary
/// directory that must live while Nix reads them.
fn expression(spec: &Spec, top_drv: Option<&Utf8Path>) -> Result<(tempfile::TempDir, String)> {
    let dir =
        tempfile::Builder::new().prefix("epnix-generation-").tempdir().context("creating a temporary directory")?;
    let expr_file = dir.path().join("generation.nix");
    std::fs::write(&expr_file, include_str!("../nix/generation.nix")).context("writing generation.nix")?;
    let input = dir.path().join("input.json");
    std::fs::write(&input, input_json(spec, top_drv).to_string()).context("writing the generation's input")?;
    let path = |p: &std::path::Path| serde_json::to_string(&p.to_string_lossy()).expect("strings serialize");
    let expr = format!("import (/. + {}) {{ input = {}; }}", path(&expr_file), path(&input));
    Ok((dir, expr))
}

fn input_json(spec: &Spec, top_drv: Option<&Utf8Path>) -> Value {
    let units: BTreeMap<String, &String> =
        spec.units.iter().map(|(ioc, text)| (crate::layout::unit_name(ioc), text)).collect();
    let meta = format!("deployer={}\nrevision={}\n", one_line(spec.deployer), one_line(spec.revision));
    let mut input = json!({
        "name": spec.top_name,
        "top": spec.top.as_str(),
        "units": units,
        "checks": checks_json(spec.checks).to_string(),
        "meta": meta,
    });
    if let Some(drv) = top_drv {
        input["topDrv"] = drv.as_str().into();
    }
    input
}

fn one_line(value: &str) -> String {
    value.replace(['\n', '\r'], " ")
}

/// The health checks as the generation stores them.
pub fn checks_json(checks: &BTreeMap<String, HealthCheck>) -> Value {
    let entries = checks.iter().map(|(ioc, c)| {
        let check = json!({
            "settleTime": c.settle_time,
            "readyLine": c.ready_line,
            "command": c.command,
            "commandTimeout": c.command_timeout,
        });
        (ioc.clone(), check)
    });
    Value::Object(entries.collect())
}

/// Reads a generation's `checks.json`. An IOC missing from it, or a file
/// that does not parse, gets the checks that need no configuration.
pub fn parse_checks(text: &str) -> BTreeMap<String, HealthCheck> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else { return BTreeMap::new() };
    map.into_iter()
        .map(|(ioc, v)| {
            let fallback = HealthCheck::running();
            let check = HealthCheck {
                settle_time: v["settleTime"].as_u64().unwrap_or(fallback.settle_time),
                ready_line: v["readyLine"].as_str().map(str::to_owned),
                command: v["command"].as_str().map(str::to_owned),
                command_timeout: v["commandTimeout"].as_u64().unwrap_or(fallback.command_timeout),
            };
            (ioc, check)
        })
        .collect()
}

/// Reads a generation's `meta`: `(deployer, revision)`.
pub fn parse_meta(text: &str) -> (String, String) {
    let field =
        |key: &str| text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).unwrap_or("").trim().to_owned();
    (field("deployer"), field("revision"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_survive_the_round_trip() {
        let checks = BTreeMap::from([
            ("a".to_owned(), HealthCheck::default()),
            (
                "b".to_owned(),
                HealthCheck { settle_time: 0, ready_line: None, command: Some("caget x".into()), command_timeout: 3 },
            ),
        ]);
        assert_eq!(parse_checks(&checks_json(&checks).to_string()), checks);
        assert!(parse_checks("not json").is_empty());
    }

    #[test]
    fn meta_is_one_line_per_value() {
        let units = BTreeMap::new();
        let checks = BTreeMap::new();
        let spec = Spec {
            top_name: "t",
            top: Utf8Path::new("/nix/store/abc-t"),
            units: &units,
            checks: &checks,
            deployer: "ops@laptop",
            revision: "dirty\nrevision=forged",
        };
        let meta = input_json(&spec, None)["meta"].as_str().unwrap().to_owned();
        assert_eq!(parse_meta(&meta), ("ops@laptop".to_owned(), "dirty revision=forged".to_owned()));
    }
}
