//! Shell completion, driven through bash itself: a bash without startup
//! files sources what `epnix-deploy completions bash` prints, with the
//! binary on its PATH, and calls the function that `complete -p
//! epnix-deploy` names as bash would on a TAB. The names come from small
//! flakes in temporary directories; no test host is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Sources the registration, sets the completion variables from the line
/// (`$1`) and the words bash would split it into (the rest), calls the
/// completion function and prints the reply, one candidate a line.
/// `compopt` works only inside a completion that readline started, so it is
/// a no-op here.
const HARNESS: &str = r#"
source <(epnix-deploy completions bash) || exit 90
spec=$(complete -p epnix-deploy) || exit 91
fn=${spec##*-F }
fn=${fn%% *}
compopt() { :; }
COMP_LINE=$1
COMP_POINT=${#COMP_LINE}
shift
COMP_WORDS=("$@")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMP_TYPE=9
"$fn" epnix-deploy "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
for candidate in "${COMPREPLY[@]}"; do
  printf '%s\n' "$candidate"
done
"#;

const HOSTS: [&str; 2] = ["ioc-server-1", "ioc-server-2"];
const TOPS: [&str; 2] = ["linacTop", "ringTop"];

/// The subcommands that take a host and a top.
const COMMANDS: [&str; 6] = ["deploy", "list", "status", "rollback", "delete-generation", "remove"];

/// A flake with two hosts and two tops. Completion evaluates only the
/// names of `epnixDeploy.hosts` and `epnixDeploy.tops`, so plain values do.
/// Its one input (a flake beside it) has no lock entry: evaluating it
/// without `--no-write-lock-file` would write `flake.lock`.
fn names_flake() -> tempfile::TempDir {
    let dir = empty_dir();
    std::fs::create_dir(dir.path().join("input")).expect("creating the input's directory");
    std::fs::write(dir.path().join("input/flake.nix"), "{ outputs = { self }: { }; }\n").expect("writing the input");
    let text = format!(
        r#"{{
  inputs.input.url = "path:{}/input";
  outputs = {{ self, input }}: {{
    epnixDeploy = {{
      hosts = {{ ioc-server-1 = {{ }}; ioc-server-2 = {{ }}; }};
      tops = {{ linacTop = {{ }}; ringTop = {{ }}; }};
    }};
  }};
}}
"#,
        dir.path().display()
    );
    std::fs::write(dir.path().join("flake.nix"), text).expect("writing flake.nix");
    dir
}

fn flake(text: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("epnix-complete-").tempdir().expect("temp dir");
    std::fs::write(dir.path().join("flake.nix"), text).expect("writing flake.nix");
    dir
}

fn empty_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("epnix-complete-").tempdir().expect("temp dir")
}

/// The words bash makes of `line` for completion: split at blanks, and
/// `=` and `:` as words of their own (`COMP_WORDBREAKS`); a line that ends
/// in a blank ends in an empty word, the one being completed.
fn bash_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    for blank_separated in line.split_whitespace() {
        let mut word = String::new();
        let mut chars = blank_separated.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '=' || c == ':' {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                let mut breaks = c.to_string();
                while let Some(&next) = chars.peek().filter(|n| **n == '=' || **n == ':') {
                    breaks.push(next);
                    chars.next();
                }
                words.push(breaks);
            } else {
                word.push(c);
            }
        }
        if !word.is_empty() {
            words.push(word);
        }
    }
    if line.ends_with(' ') {
        words.push(String::new());
    }
    words
}

/// What bash offers for `line` (the cursor at its end), run in `cwd`. The
/// completion must succeed and print nothing on stderr: it would land in
/// the user's terminal.
fn complete(cwd: &Path, line: &str) -> Vec<String> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_epnix-deploy"));
    let path =
        format!("{}:{}", bin.parent().expect("the binary's directory").display(), std::env::var("PATH").unwrap());
    let output = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", HARNESS, "bash", line])
        .args(bash_words(line))
        .current_dir(cwd)
        .env("PATH", path)
        .env_remove("COMPLETE")
        // Nothing to fetch: the test flakes have no inputs.
        .env("NIX_CONFIG", "substituters =")
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!("{line:?} offers {:?}", stdout.lines().collect::<Vec<_>>());
    assert!(output.status.success(), "completing {line:?}: bash exited {}\nstderr:\n{stderr}", output.status);
    assert_eq!(stderr, "", "completing {line:?} printed on stderr");
    stdout.lines().map(str::to_owned).collect()
}

#[track_caller]
fn assert_offers(offered: &[String], wanted: &[&str]) {
    for want in wanted {
        assert!(offered.iter().any(|o| o == want), "{want:?} is not offered; offered: {offered:?}");
    }
}

#[track_caller]
fn assert_lacks(offered: &[String], unwanted: &[&str]) {
    for unwanted in unwanted {
        assert!(!offered.iter().any(|o| o == unwanted), "{unwanted:?} is offered; offered: {offered:?}");
    }
}

#[test]
fn every_subcommand_completes_its_flags_and_values() {
    let dir = empty_dir();
    assert_offers(&complete(dir.path(), "epnix-deploy list --"), &["--json", "--wide", "--flake"]);
    assert_offers(&complete(dir.path(), "epnix-deploy rollback --"), &["--to", "--force"]);
    assert_offers(&complete(dir.path(), "epnix-deploy delete-generation --k"), &["--keep"]);
    assert_offers(&complete(dir.path(), "epnix-deploy completions "), &["bash", "zsh", "fish"]);
    assert_eq!(complete(dir.path(), "epnix-deploy completions z"), ["zsh"]);
}

#[test]
fn the_first_word_is_a_subcommand_or_a_host_of_the_flake_here() {
    let flake = names_flake();
    let offered = complete(flake.path(), "epnix-deploy ");
    assert_offers(&offered, &["deploy", "list", "rollback", "completions"]);
    assert_offers(&offered, &HOSTS);
    assert_lacks(&offered, &TOPS);
    assert_eq!(complete(flake.path(), "epnix-deploy ioc"), HOSTS);
}

#[test]
fn hosts_and_tops_complete_after_every_command_from_the_flake_option() {
    let flake = names_flake();
    let elsewhere = empty_dir();
    let dir = flake.path().display();
    for command in COMMANDS {
        let offered = complete(elsewhere.path(), &format!("epnix-deploy {command} --flake {dir} "));
        assert_offers(&offered, &HOSTS);
        assert_lacks(&offered, &TOPS);
        let offered = complete(elsewhere.path(), &format!("epnix-deploy {command} --flake {dir} ioc-server-1 "));
        assert_offers(&offered, &TOPS);
        assert_lacks(&offered, &HOSTS);
    }
    assert_eq!(
        complete(elsewhere.path(), &format!("epnix-deploy rollback --flake {dir} ioc-server-1 ri")),
        ["ringTop"]
    );
    assert!(!flake.path().join("flake.lock").exists(), "completing wrote a lock file into the flake");
}

/// bash splits `--flake=DIR` and `path:DIR` into several words; they name
/// the flake all the same.
#[test]
fn a_flake_given_with_equals_or_a_flake_reference_type_is_read() {
    let flake = names_flake();
    let elsewhere = empty_dir();
    let dir = flake.path().display();
    let offered = complete(elsewhere.path(), &format!("epnix-deploy status --flake={dir} "));
    assert_offers(&offered, &HOSTS);
    let offered = complete(elsewhere.path(), &format!("epnix-deploy list --flake path:{dir} ioc-server-2 "));
    assert_offers(&offered, &TOPS);
    assert_lacks(&offered, &HOSTS);
}

/// `epnix-deploy HOST TOP` deploys: after a host, a subcommand's name is
/// no longer a choice, a top is.
#[test]
fn after_a_host_without_a_subcommand_come_the_tops() {
    let flake = names_flake();
    let offered = complete(flake.path(), "epnix-deploy ioc-server-1 ");
    assert_offers(&offered, &TOPS);
    assert_offers(&offered, &["--dry-run"]);
    assert_lacks(&offered, &["list", "deploy", "completions"]);
    assert_lacks(&offered, &HOSTS);
    let offered = complete(flake.path(), "epnix-deploy --dry-run --flake . ioc-server-1 ");
    assert_offers(&offered, &TOPS);
    assert_lacks(&offered, &["list"]);
}

/// Without a flake, or with one that does not evaluate, names are left
/// out and everything else completes, quietly.
#[test]
fn without_a_flake_no_names_and_no_noise() {
    let dir = empty_dir();
    let offered = complete(dir.path(), "epnix-deploy list ");
    assert_offers(&offered, &["--wide", "--flake"]);
    assert_lacks(&offered, &HOSTS);
    let offered = complete(dir.path(), "epnix-deploy ");
    assert_offers(&offered, &["list"]);
    assert_lacks(&offered, &HOSTS);

    let broken = flake("{ outputs = { self }: { epnixDeploy = throw \"no configuration here\"; }; }\n");
    let offered = complete(dir.path(), &format!("epnix-deploy status --flake {} ", broken.path().display()));
    assert_offers(&offered, &["--json"]);
    assert_lacks(&offered, &HOSTS);
}
