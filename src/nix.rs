//! The Nix commands a deploy runs on the deployer's machine, and the
//! evaluation of the flake's `epnixDeploy`.
//!
//! Only flags that both Debian's Nix 2.8 and current Nix (2.18+) understand
//! are used, so the tool works with either.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use camino::Utf8PathBuf;
use serde::Deserialize;

use crate::config::Config;
use crate::exit::BadInput;
use crate::process::{Cmd, shell_quote};
use crate::target::Target;

/// A flake reference, with the inputs overridden for this run
/// (`--override-input`, passed to every Nix command that reads the flake).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flake {
    pub reference: String,
    /// `(input, flake reference)` pairs, in the order given.
    pub override_inputs: Vec<(String, String)>,
}

impl Flake {
    pub fn new(reference: impl Into<String>) -> Flake {
        Flake { reference: reference.into(), override_inputs: Vec::new() }
    }

    /// `flake#attr`, followed by the overrides.
    fn installable(&self, attr: &str) -> Vec<String> {
        let mut args = vec![format!("{}#{attr}", self.reference)];
        args.extend(self.overrides());
        args
    }

    fn overrides(&self) -> Vec<String> {
        self.override_inputs
            .iter()
            .flat_map(|(input, to)| ["--override-input".to_owned(), input.clone(), to.clone()])
            .collect()
    }
}

/// Users should not have to edit `nix.conf` to run the tool.
fn nix() -> Cmd {
    Cmd::new("nix").args(["--extra-experimental-features", "nix-command flakes"])
}

/// Evaluates the whole `epnixDeploy` output; packages become store paths.
pub fn eval_config(flake: &Flake) -> Cmd {
    nix().args(["eval", "--json"]).args(flake.installable("epnixDeploy"))
}

/// The attribute names of `epnixDeploy.<level>` (for completion): the set
/// itself is not evaluated, only its names. A lock file is never written:
/// completing must not change the user's flake.
pub fn attr_names(flake: &Flake, level: &str) -> Cmd {
    nix()
        .args(["eval", "--json", "--no-write-lock-file"])
        .args(flake.installable(&format!("epnixDeploy.{level}")))
        .args(["--apply", "builtins.attrNames"])
}

/// Evaluates and checks the flake's `epnixDeploy`. A flake that does not
/// evaluate is bad input: nothing has been touched yet.
pub fn evaluate(flake: &Flake) -> Result<Config> {
    let json = eval_config(flake).output().map_err(|err| {
        let text = err.to_string();
        let cwd = std::env::current_dir().unwrap_or_default();
        BadInput::new(format!("could not evaluate `{}#epnixDeploy`:\n{text}", flake.reference)).hint(eval_hint(
            &flake.reference,
            &cwd,
            &text,
        ))
    })?;
    let value: serde_json::Value = serde_json::from_str(&json).context("reading the JSON of `nix eval`")?;
    Ok(Config::parse(&value)?)
}

/// What to do about a failed evaluation, from Nix's own message: a flake
/// that is not there, an input that cannot be fetched (the template's
/// published address, offline), an output that is missing. Nix says the
/// same of a missing flake and a missing input ("No such file or
/// directory", git's "does not appear to be a git repository"): the path it
/// names tells them apart, the flake's own directory (`reference`, against
/// `cwd`) or another one.
fn eval_hint(reference: &str, cwd: &Path, stderr: &str) -> String {
    let has = |needle: &str| stderr.contains(needle);
    let missing = missing_path(stderr);
    let own = missing.is_some_and(|m| local_dir(reference, cwd).is_some_and(|dir| Path::new(m) == dir));
    // Inside the store, the path is in a copy of a source, which may be the
    // flake's own copy: only a path outside it is surely an input's.
    let input_missing = missing.is_some_and(|m| !own && !m.starts_with("/nix/store/"));
    if has("does not provide attribute") && has("epnixDeploy") {
        "the flake has no `epnixDeploy` output: is `--flake` the right flake? Start one with \
         `nix flake init -t <epnix-deploy>#top`"
            .to_owned()
    } else if !input_missing
        && (own || has("does not contain a 'flake.nix'") || has("is not a flake") || has("No such file or directory"))
    {
        "no flake there: run the command in the flake's directory, or pass `--flake <path or reference>`".to_owned()
    } else if input_missing
        || has("unable to download")
        || has("Could not resolve host")
        || has("unable to fetch")
        || has("cannot fetch")
        || has("Failed to open archive")
        || has("unable to update")
        || has("does not exist")
    {
        "an input of the flake cannot be fetched from here: fetch it once online, or point it at a copy with \
         `--override-input <input> <flake reference>` (e.g. `--override-input epnix-deploy path:/src/epnix-deploy`)"
            .to_owned()
    } else {
        "the lines above are Nix's own error; `nix eval <flake>#epnixDeploy --show-trace` shows more".to_owned()
    }
}

/// The path that Nix, or the git it runs, reports as not there.
fn missing_path(stderr: &str) -> Option<&str> {
    let between = |start: &str, end: &str| {
        let rest = &stderr[stderr.find(start)? + start.len()..];
        Some(&rest[..rest.find(end)?]).filter(|path| !path.contains('\n'))
    };
    between("getting status of '", "': No such file or directory")
        .or_else(|| between("fatal: '", "' does not appear to be a git repository"))
}

/// The directory of a local flake reference (`.`, `/srv/top`, `path:…`,
/// `git+file://…`), made absolute against `cwd`; None for any other.
fn local_dir(reference: &str, cwd: &Path) -> Option<PathBuf> {
    let path = ["path:", "git+file://", "file://"].iter().find_map(|p| reference.strip_prefix(p)).unwrap_or(reference);
    let path = path.split('?').next().unwrap_or(path);
    if !path.starts_with(['/', '.']) {
        return None;
    }
    let mut dir = cwd.to_path_buf();
    for part in Path::new(path).components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                dir.pop();
            }
            other => dir.push(other),
        }
    }
    Some(dir)
}

/// Builds a package of the configuration, e.g. `tops.<top>.package`,
/// without a GC root in the working directory.
pub fn build_package(flake: &Flake, attr: &str) -> Cmd {
    nix().args(["build", "--no-link", "--json"]).args(flake.installable(&format!("epnixDeploy.{attr}")))
}

/// The derivation of a package of the configuration, e.g.
/// `tops.<top>.package`: evaluating `drvPath` writes it (and the
/// derivations it needs) to the store, and builds nothing.
pub fn derivation_of(flake: &Flake, attr: &str) -> Cmd {
    nix().args(["eval", "--raw"]).args(flake.installable(&format!("epnixDeploy.{attr}.drvPath")))
}

/// Evaluates a Nix expression that reads files outside the store (hence
/// `--impure`) to JSON, building nothing.
pub fn eval_expr(expr: &str) -> Cmd {
    nix().args(["eval", "--json", "--impure", "--expr"]).arg(expr)
}

/// Builds a Nix expression that reads files outside the store (hence
/// `--impure`), without a GC root in the working directory.
pub fn build_expr(expr: &str) -> Cmd {
    nix().args(["build", "--impure", "--no-link", "--json", "--expr"]).arg(expr)
}

/// Reads where the flake comes from, for the generation's record.
pub fn flake_metadata(flake: &Flake) -> Cmd {
    nix().args(["flake", "metadata", "--json"]).arg(&flake.reference).args(flake.overrides())
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
/// `escalation` runs it as root, for a login that is not: the store of a
/// single-user install (Debian's `nix-bin`) belongs to root, and a
/// daemon's takes paths without signatures only from a trusted user, which
/// root always is. Nix runs the remote program as `PROGRAM --serve --write`
/// through ssh, so its words travel as one shell line (each word quoted),
/// percent-encoded in the store URL; Nix 2.8 and current Nix both read it
/// so.
pub fn copy_to(
    target: &Target,
    control_socket: &str,
    paths: &[&str],
    escalation: &[String],
    remote_nix_store: Option<&str>,
    substitute_on_destination: bool,
) -> Cmd {
    let cmd = copy(control_socket);
    let cmd = if substitute_on_destination { cmd.arg("--substitute-on-destination") } else { cmd };
    to_store(cmd, target, paths, escalation, remote_nix_store)
}

/// Copies derivations (`.drv` files) and their closures, not their outputs,
/// to the host, for the host to build: `--derivation` means the same in Nix
/// 2.8 and current Nix.
pub fn copy_derivations_to(
    target: &Target,
    control_socket: &str,
    derivations: &[&str],
    escalation: &[String],
    remote_nix_store: Option<&str>,
) -> Cmd {
    to_store(copy(control_socket).arg("--derivation"), target, derivations, escalation, remote_nix_store)
}

/// The store paths as a stream for `nix-store --import` on the host: the
/// paths a host lacks go in the switch's own call ([`crate::remote::IMPORT`]).
/// The same in Nix 2.8 and current Nix.
pub fn export(paths: &[&str]) -> Cmd {
    Cmd::new("nix-store").arg("--export").args(paths.iter().copied())
}

/// Every store path that `paths` need, themselves included.
pub fn closure(paths: &[&str]) -> Cmd {
    Cmd::new("nix-store").args(["--query", "--requisites"]).args(paths.iter().copied())
}

/// Whether a Nix command failed only for losing a race of two Nix
/// processes setting up a store that was never used, which a second try
/// finds set up: one makes `/nix/var/nix/gcroots/profiles` under the
/// other; one holds the new database while it writes its schema (Nix gives
/// up on a busy database there without waiting); the daemon, started by its
/// socket, drops a connection while it starts. `message`: the error, with
/// Nix's stderr.
pub fn first_use_race(message: &str) -> bool {
    (message.contains("creating symlink from") && message.contains("File exists"))
        || (message.contains("SQLite database") && message.contains("is busy"))
        || (message.contains("cannot open connection to remote store 'daemon'")
            && message.contains("Connection reset by peer"))
}

/// `nix copy`, riding the master connection at `control_socket`.
fn copy(control_socket: &str) -> Cmd {
    nix().env("NIX_SSHOPTS", format!("-o ControlMaster=no -o ControlPath={control_socket}")).arg("copy")
}

/// `--to` the host's store, then `paths`.
/// With `escalation` or `remote_nix_store`, the program the host runs.
fn to_store(cmd: Cmd, target: &Target, paths: &[&str], escalation: &[String], remote_nix_store: Option<&str>) -> Cmd {
    let mut store = format!("ssh://{}", target.destination());
    if remote_nix_store.is_some() || !escalation.is_empty() {
        let program = escalation.iter().map(String::as_str).chain([remote_nix_store.unwrap_or("nix-store")]);
        let line = program.map(shell_quote).collect::<Vec<_>>().join(" ");
        store.push_str(&format!("?remote-program={}", percent_encode(&line)));
    }
    cmd.arg("--to").arg(store).args(paths.iter().copied())
}

/// `text` as a URL query value: every byte but the unreserved ones and `/`
/// as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_race_to_set_up_a_fresh_store_is_told_from_other_failures() {
        for race in [
            "error: creating symlink from '/nix/var/nix/gcroots/profiles' to '/nix/var/nix/profiles': File exists",
            "error: SQLite database '/nix/var/nix/db/db.sqlite' is busy\nerror: cannot connect to 'root@127.0.0.1'",
            "error: cannot open connection to remote store 'daemon': error: reading from file: Connection reset by peer",
        ] {
            assert!(first_use_race(race), "{race}");
        }
        assert!(!first_use_race("error: cannot connect to 'root@127.0.0.1'"));
        assert!(!first_use_race("error: cannot open connection to remote store 'daemon': Permission denied"));
    }

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
    fn overridden_inputs_reach_every_command_that_reads_the_flake() {
        let flake = Flake {
            reference: ".".into(),
            override_inputs: vec![("epnix-deploy".into(), "path:/src/epnix-deploy".into())],
        };
        for cmd in [eval_config(&flake), build_package(&flake, "tops.t.package"), flake_metadata(&flake)] {
            assert!(cmd.to_string().ends_with(" --override-input epnix-deploy path:/src/epnix-deploy"), "{cmd}");
        }
    }

    #[test]
    fn failed_evaluations_get_a_hint_that_fits() {
        let hint = |reference: &str, stderr: &str| eval_hint(reference, Path::new("/home/ops/site"), stderr);
        let missing = "error: flake 'git+file:///x' does not provide attribute 'packages.x86_64-linux.epnixDeploy', 'legacyPackages.x86_64-linux.epnixDeploy' or 'epnixDeploy'";
        assert!(hint(".", missing).contains("no `epnixDeploy` output"));
        let offline = "error: unable to download 'https://api.github.com/repos/x/y/commits/HEAD': Could not resolve host: api.github.com (6)";
        assert!(hint(".", offline).contains("--override-input"));
        let nothing = "error: path '/tmp/x' does not contain a 'flake.nix', searching up";
        assert!(hint("/tmp/x", nothing).contains("--flake"));
        // A flake in git without a `flake.nix`: its copy in the store has none.
        let no_file = "error: getting status of '/nix/store/0ccn-source/flake.nix': No such file or directory";
        assert!(hint("git+file:///tmp/x", no_file).contains("no flake there"));
    }

    /// Nix 2.8 words a missing `path:` or `git+file:` flake and a missing
    /// input of that kind alike; only the path it names differs.
    #[test]
    fn a_missing_input_is_told_from_a_missing_flake() {
        let hint = |reference: &str, stderr: &str| eval_hint(reference, Path::new("/home/ops/site"), stderr);
        let status = |path: &str| format!("error: getting status of '{path}': No such file or directory");
        let git = |path: &str| {
            format!(
                "fatal: '{path}' does not appear to be a git repository\nerror: program 'git' failed with exit code 128"
            )
        };
        for reference in ["path:/srv/top", "/srv/top", "git+file:///srv/top?ref=main", "path:../../../srv/top"] {
            assert!(hint(reference, &status("/srv/top")).contains("no flake there"), "{reference}");
            assert!(hint(reference, &git("/srv/top")).contains("no flake there"), "{reference}");
            assert!(hint(reference, &status("/src/epnix-deploy")).contains("--override-input"), "{reference}");
            assert!(hint(reference, &git("/src/epnix-deploy")).contains("--override-input"), "{reference}");
        }
        assert!(hint(".", &status("/home/ops/site")).contains("no flake there"));
        assert!(hint("./", &status("/home/ops/epnix-deploy")).contains("--override-input"));
        assert!(hint("github:epics/top", &status("/src/epnix-deploy")).contains("--override-input"));
    }

    #[test]
    fn copy_rides_the_master_connection() {
        let target = Target::resolve("root@10.0.0.5:2201", None).unwrap();
        let cmd = copy_to(&target, "/tmp/e/master", &["/nix/store/abc-top"], &[], None, true);
        assert_eq!(
            cmd.to_string(),
            "NIX_SSHOPTS='-o ControlMaster=no -o ControlPath=/tmp/e/master' nix --extra-experimental-features 'nix-command flakes' copy --substitute-on-destination --to ssh://root@10.0.0.5 /nix/store/abc-top"
        );
    }

    #[test]
    fn derivations_travel_for_the_host_to_build() {
        let target = Target::resolve("root@10.0.0.5", None).unwrap();
        let cmd = copy_derivations_to(&target, "/tmp/e/master", &["/nix/store/abc-g.drv"], &[], None);
        assert!(cmd.to_string().ends_with(" copy --derivation --to ssh://root@10.0.0.5 /nix/store/abc-g.drv"), "{cmd}");
        let flake = Flake::new(".");
        assert_eq!(
            derivation_of(&flake, "tops.t.package").to_string(),
            "nix --extra-experimental-features 'nix-command flakes' eval --raw '.#epnixDeploy.tops.t.package.drvPath'"
        );
    }

    #[test]
    fn copy_names_the_remote_nix_store_when_it_is_off_the_path() {
        let target = Target::resolve("root@h", None).unwrap();
        let cmd = copy_to(
            &target,
            "/s",
            &["/nix/store/abc"],
            &[],
            Some("/nix/var/nix/profiles/default/bin/nix-store"),
            false,
        );
        assert!(
            cmd.to_string().ends_with(
                "--to 'ssh://root@h?remote-program=/nix/var/nix/profiles/default/bin/nix-store' /nix/store/abc"
            ),
            "{cmd}"
        );
    }

    /// A login that is not root copies through its escalation command, as
    /// one percent-encoded shell line.
    #[test]
    fn copy_as_a_user_that_is_not_root_goes_through_its_escalation() {
        let target = Target::resolve("ops@h", None).unwrap();
        let sudo = crate::target::default_escalation();
        let cmd = copy_to(&target, "/s", &["/nix/store/abc"], &sudo, None, false);
        assert!(
            cmd.to_string().ends_with("--to 'ssh://ops@h?remote-program=sudo%20-n%20--%20nix-store' /nix/store/abc"),
            "{cmd}"
        );
        let odd = ["run as".to_owned(), "root".to_owned()];
        let cmd = copy_to(&target, "/s", &["/nix/store/abc"], &odd, Some("/opt/nix-store"), false);
        assert!(cmd.to_string().contains("remote-program=%27run%20as%27%20root%20/opt/nix-store'"), "{cmd}");
    }
}
