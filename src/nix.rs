//! The Nix commands a deploy runs on the deployer's machine.
//!
//! Only flags that both Debian's Nix 2.8 and current Nix (2.18+) understand
//! are used, so the tool works with either.

use anyhow::{Context, Result};
use camino::Utf8PathBuf;
use serde::Deserialize;

use crate::process::Cmd;
use crate::target::Target;

/// Users should not have to edit `nix.conf` to run the tool.
fn nix() -> Cmd {
    Cmd::new("nix").args(["--extra-experimental-features", "nix-command flakes"])
}

/// Evaluates the whole `epnixDeploy` output; packages become store paths.
pub fn eval_config(flake: &str) -> Cmd {
    nix().args(["eval", "--json"]).arg(format!("{flake}#epnixDeploy"))
}

/// Builds a package of the configuration, e.g. `tops.<top>.package`,
/// without a GC root in the working directory.
pub fn build_package(flake: &str, attr: &str) -> Cmd {
    nix().args(["build", "--no-link", "--json"]).arg(format!("{flake}#epnixDeploy.{attr}"))
}

/// Builds a Nix expression that reads files outside the store (hence
/// `--impure`), without a GC root in the working directory.
pub fn build_expr(expr: &str) -> Cmd {
    nix().args(["build", "--impure", "--no-link", "--json", "--expr"]).arg(expr)
}

/// Reads where the flake comes from, for the generation's record.
pub fn flake_metadata(flake: &str) -> Cmd {
    nix().args(["flake", "metadata", "--json"]).arg(flake)
}

/// The flake's git revision from `nix flake metadata --json`: the commit,
/// `dirty` for a git tree with uncommitted changes, or empty when the flake
/// is not in git.
pub fn parse_revision(stdout: &str) -> Result<String> {
    let meta: serde_json::Value = serde_json::from_str(stdout).context("reading the JSON of `nix flake metadata`")?;
    if let Some(rev) = meta["revision"].as_str() {
        return Ok(rev.to_owned());
    }
    // Current Nix reports `dirtyRevision`; Nix 2.8 only leaves `revision` out.
    let git = meta["locked"]["type"].as_str() == Some("git") || meta["dirtyRevision"].is_string();
    Ok(if git { "dirty".to_owned() } else { String::new() })
}

#[derive(Deserialize)]
struct BuildResult {
    outputs: std::collections::BTreeMap<String, Utf8PathBuf>,
}

/// The `out` path from `nix build --json`.
pub fn parse_build_output(stdout: &str) -> Result<Utf8PathBuf> {
    let results: Vec<BuildResult> = serde_json::from_str(stdout).context("reading the JSON of `nix build --json`")?;
    results
        .into_iter()
        .next()
        .and_then(|mut r| r.outputs.remove("out"))
        .context("`nix build --json` reported no `out` path")
}

/// Copies `paths` and their closures to the host, riding the master connection at
/// `control_socket`. The port and user are already settled by the master.
/// `remote_nix_store` names the host's `nix-store` when it is not on the
/// PATH of a non-interactive SSH command (multi-user installs).
pub fn copy_to(
    target: &Target,
    control_socket: &str,
    paths: &[&str],
    remote_nix_store: Option<&str>,
    substitute_on_destination: bool,
) -> Cmd {
    let mut cmd = nix().env("NIX_SSHOPTS", format!("-o ControlMaster=no -o ControlPath={control_socket}")).arg("copy");
    if substitute_on_destination {
        cmd = cmd.arg("--substitute-on-destination");
    }
    let mut store = format!("ssh://{}", target.destination());
    if let Some(program) = remote_nix_store {
        store.push_str(&format!("?remote-program={program}"));
    }
    cmd.arg("--to").arg(store).args(paths.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_output_of_nix_2_8_and_later() {
        let out = r#"[{"drvPath":"/nix/store/x.drv","outputs":{"out":"/nix/store/abc-top"}}]"#;
        assert_eq!(parse_build_output(out).unwrap(), "/nix/store/abc-top");
    }

    #[test]
    fn revisions_of_clean_dirty_and_plain_flakes() {
        assert_eq!(parse_revision(r#"{"revision":"226d58f","locked":{"type":"git"}}"#).unwrap(), "226d58f");
        assert_eq!(parse_revision(r#"{"locked":{"type":"git","url":"file:///x"}}"#).unwrap(), "dirty");
        assert_eq!(parse_revision(r#"{"dirtyRevision":"226d58f-dirty","locked":{"type":"git"}}"#).unwrap(), "dirty");
        assert_eq!(parse_revision(r#"{"locked":{"type":"path","path":"/x"}}"#).unwrap(), "");
    }

    #[test]
    fn copy_rides_the_master_connection() {
        let target = Target::resolve("root@10.0.0.5:2201", None).unwrap();
        let cmd = copy_to(&target, "/tmp/e/master", &["/nix/store/abc-top"], None, true);
        assert_eq!(
            cmd.to_string(),
            "NIX_SSHOPTS='-o ControlMaster=no -o ControlPath=/tmp/e/master' nix --extra-experimental-features 'nix-command flakes' copy --substitute-on-destination --to ssh://root@10.0.0.5 /nix/store/abc-top"
        );
    }

    #[test]
    fn copy_names_the_remote_nix_store_when_it_is_off_the_path() {
        let target = Target::resolve("root@h", None).unwrap();
        let cmd =
            copy_to(&target, "/s", &["/nix/store/abc"], Some("/nix/var/nix/profiles/default/bin/nix-store"), false);
        assert!(
            cmd.to_string().ends_with(
                "--to 'ssh://root@h?remote-program=/nix/var/nix/profiles/default/bin/nix-store' /nix/store/abc"
            ),
            "{cmd}"
        );
    }
}
