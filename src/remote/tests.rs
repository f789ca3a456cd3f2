//! The host-side scripts' branches, run for real against a temporary directory
//! that stands in for a host: its unit directory, the top's profile and its
//! state directory. `sh`, coreutils, grep, sed, cmp and flock are the real
//! ones; `systemctl` and `nix-env` are small stand-ins on `PATH` that append
//! their argv to a log, and `nix-env` moves the profile links as the real one
//! does.

use super::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TOP: &str = "demo";

/// Logs its argv; while the file `$HOLD` exists (at most ~10 s), it waits,
/// and says so by creating `$HOLD.held`: a test can stop a script right after
/// its first `systemctl` call. With `$NO_MANAGER` set it fails, as
/// `systemctl --user` does when the user's manager does not run.
const SYSTEMCTL: &str = r#"#!/bin/sh
echo "systemctl $*" >>"$CALLS"
if [ -n "${NO_MANAGER:-}" ]; then exit 1; fi
i=0
while [ -e "$HOLD" ] && [ $i -lt 1000 ]; do
  : >"$HOLD.held"
  sleep 0.01
  i=$((i + 1))
done
"#;

/// Logs its argv, and does to the profile links what the real nix-env does:
/// `--switch-generation N` points the profile at `PROFILE-N-link` (which
/// must exist), `--set PATH` makes the next `PROFILE-N-link` and points the
/// profile at it.
const NIX_ENV: &str = r#"#!/bin/sh
echo "nix-env $*" >>"$CALLS"
profile='' op='' arg=''
while [ $# -gt 0 ]; do
  case $1 in
    --profile) profile=$2 ;;
    --switch-generation) op=switch arg=$2 ;;
    --set) op=set arg=$2 ;;
    *) echo "nix-env stand-in: unexpected argument $1" >&2; exit 2 ;;
  esac
  shift 2
done
name=${profile##*/}
case $op in
  switch)
    if [ ! -L "$profile-$arg-link" ]; then echo "error: generation $arg does not exist" >&2; exit 1; fi
    ln -sfn "$name-$arg-link" "$profile"
    ;;
  set)
    last=0
    for link in "$profile"-*-link; do
      n=${link#"$profile"-}
      n=${n%-link}
      case $n in '' | *[!0-9]*) continue ;; esac
      if [ "$n" -gt "$last" ]; then last=$n; fi
    done
    ln -s "$arg" "$profile-$((last + 1))-link"
    ln -sfn "$name-$((last + 1))-link" "$profile"
    ;;
esac
"#;

/// A temporary directory standing in for a host, for the top `demo`.
struct FakeHost {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

/// What a script did: its exit code and output.
#[derive(Debug)]
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl FakeHost {
    fn new() -> FakeHost {
        let tmp = tempfile::Builder::new().prefix("epnix-remote-").tempdir().expect("create a temporary directory");
        // Canonical: break_lock.sh compares the lock's path with what /proc says.
        let root = tmp.path().canonicalize().unwrap();
        let host = FakeHost { _tmp: tmp, root };
        for dir in [host.unit_dir(), host.profile().parent().unwrap().to_owned(), host.bin(), host.root.join("store")] {
            std::fs::create_dir_all(dir).unwrap();
        }
        for (name, text) in [("systemctl", SYSTEMCTL), ("nix-env", NIX_ENV)] {
            std::fs::write(host.bin().join(name), text).unwrap();
            std::fs::set_permissions(host.bin().join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        host
    }

    fn unit_dir(&self) -> PathBuf {
        self.root.join("etc/systemd/system")
    }

    fn profile(&self) -> PathBuf {
        self.root.join("profiles/epnix").join(TOP)
    }

    fn records(&self) -> PathBuf {
        self.root.join("state").join(TOP)
    }

    fn bin(&self) -> PathBuf {
        self.root.join("bin")
    }

    fn hold(&self) -> PathBuf {
        self.root.join("hold")
    }

    /// The seven leading arguments, as `remote::context` gives them for a
    /// real host, pointing into this one.
    fn context(&self) -> Vec<String> {
        let real = context(TOP);
        vec![
            path_str(&self.unit_dir()),
            real[1].clone(),
            real[2].clone(),
            path_str(&self.profile()),
            path_str(&self.records()),
            real[5].clone(),
            path_str(&self.root.join("units.lock")),
        ]
    }

    /// `sh -c TEXT epnix-deploy ARGS...`, as the host runs a script, with the
    /// stand-ins first on PATH.
    fn command(&self, script: Script, args: &[String]) -> Command {
        self.command_for(Manager::System, script, args)
    }

    /// [`FakeHost::command`], for the IOCs of `manager`.
    fn command_for(&self, manager: Manager, script: Script, args: &[String]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script.text_for(manager)).arg("epnix-deploy").args(args);
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", self.bin().display()))
            .env("CALLS", self.root.join("calls"))
            .env("HOLD", self.hold());
        cmd
    }

    /// Runs `script` with the context, then `extra`; `stdin` on its stdin.
    fn run_with_stdin(&self, script: Script, extra: &[&str], stdin: &str) -> Ran {
        let mut args = self.context();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut child = self
            .command(script, &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sh");
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `script` with `args` alone, for scripts not about one top.
    fn run_bare(&self, script: Script, args: &[&str]) -> Ran {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let output = self.command(script, &args).stdin(Stdio::null()).output().expect("run sh");
        Ran {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn run(&self, script: Script, extra: &[&str]) -> Ran {
        self.run_with_stdin(script, extra, "")
    }

    /// A store path (a directory under `store/`).
    fn store_path(&self, name: &str) -> PathBuf {
        let path = self.root.join("store").join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    /// Generation `n` of the profile `name` (ours by default), pointing at a
    /// new store path; the profile points at it.
    fn add_generation_of(&self, name: &str, n: u32, store: &str) -> PathBuf {
        let profile = self.profile().with_file_name(name);
        let path = self.store_path(store);
        symlink(&path, link_of(&profile, n)).unwrap();
        let _ = std::fs::remove_file(&profile);
        symlink(format!("{name}-{n}-link"), &profile).unwrap();
        path
    }

    fn add_generation(&self, n: u32, store: &str) -> PathBuf {
        self.add_generation_of(TOP, n, store)
    }

    fn write_unit(&self, name: &str, text: &str) {
        std::fs::write(self.unit_dir().join(name), text).unwrap();
    }

    fn unit(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.unit_dir().join(name)).ok()
    }

    fn remove_unit(&self, name: &str) {
        std::fs::remove_file(self.unit_dir().join(name)).unwrap();
    }

    /// Saves the restore point the way a deploy without magic rollback does
    /// (arming needs systemd-run): prepare.sh.
    fn prepare(&self, touched: &[&str]) {
        let (rollback, boot) = (ROLLBACK.text(), ROLLBACK_AT_BOOT.text());
        let state = path_str(self.records().parent().unwrap());
        let mut args = vec!["no", "epnix.rollback-demo", "30s", "epnix.rollback-at-boot.service", state.as_str()];
        args.extend([rollback.as_str(), boot.as_str()]);
        args.extend(touched);
        let ran = self.run(PREPARE, &args);
        assert_eq!(ran.code, Some(0), "prepare.sh: {ran:?}");
        self.forget_calls();
    }

    /// The stand-ins' calls so far, one line each.
    fn calls(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.root.join("calls")).unwrap_or_default();
        text.lines().map(str::to_owned).collect()
    }

    fn forget_calls(&self) {
        let _ = std::fs::remove_file(self.root.join("calls"));
    }

    /// Where the profile points (its own link target), if it exists.
    fn profile_target(&self) -> Option<String> {
        std::fs::read_link(self.profile()).ok().map(|t| path_str(&t))
    }

    /// The lines of a file in the state directory, split into words.
    fn record_lines(&self, file: &str) -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(self.records().join(file)).unwrap_or_default();
        text.lines().map(|l| l.split(' ').map(str::to_owned).collect()).collect()
    }

    fn exists(&self, path: &Path) -> bool {
        path.symlink_metadata().is_ok()
    }

    /// Every file, link and directory of the host, with contents and targets:
    /// equal snapshots mean nothing changed.
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut all = BTreeMap::new();
        for dir in [self.unit_dir(), self.profile().parent().unwrap().to_owned(), self.root.join("state")] {
            walk(&dir, &mut all);
        }
        all
    }
}

fn walk(path: &Path, all: &mut BTreeMap<PathBuf, String>) {
    let Ok(meta) = path.symlink_metadata() else { return };
    let what = if meta.file_type().is_symlink() {
        format!("-> {}", std::fs::read_link(path).unwrap().display())
    } else if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            walk(&entry.unwrap().path(), all);
        }
        "directory".to_owned()
    } else {
        std::fs::read_to_string(path).unwrap_or_else(|_| "(not text)".to_owned())
    };
    all.insert(path.to_owned(), what);
}

fn path_str(path: &Path) -> String {
    path.to_str().expect("a UTF-8 path").to_owned()
}

fn link_of(profile: &Path, n: u32) -> PathBuf {
    let name = profile.file_name().unwrap().to_str().unwrap();
    profile.with_file_name(format!("{name}-{n}-link"))
}

/// A unit file of `top`, at some version.
fn unit_of(top: &str, version: &str) -> String {
    format!(
        "[Unit]\nDescription=an IOC, {version}\n{}\n\n[Service]\nExecStart=/bin/true {version}\n",
        unit::owner_line(top)
    )
}

/// A time written by a script: now, give or take a minute.
fn assert_recent(time: &str) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let time: u64 = time.parse().unwrap_or_else(|_| panic!("not a time: {time:?}"));
    assert!(time.abs_diff(now) < 60, "time {time} is not now ({now})");
}

/// A child process of this test, killed (by its PID) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

// ---------------------------------------------------------------- rollback.sh

/// A deploy of `demo` switched from generation 1 to 2 and was not confirmed.
/// Generation 1 ran `changed`, `removed`, `drifted` and `kept`; the switch
/// rewrote `changed`, removed `removed` and added `added` (what the restore
/// point lists as touched), then someone edited `drifted` by hand. Units of
/// another top and one without a marker sit beside them. Returns the host
/// and generation 2's store path.
fn switched_host() -> (FakeHost, PathBuf) {
    let host = FakeHost::new();
    host.add_generation(1, "v1-top");
    for u in ["changed", "removed", "drifted", "kept"] {
        host.write_unit(&format!("epnix-{u}.service"), &unit_of(TOP, "v1"));
    }
    host.write_unit("epnix-theirs.service", &unit_of("other", "v1"));
    host.write_unit("epnix-handmade.service", "[Service]\nExecStart=/bin/true\n");
    host.prepare(&["epnix-changed.service", "epnix-removed.service", "epnix-added.service"]);

    let v2 = host.add_generation(2, "v2-top");
    // What switch.sh notes once the profile moved: the generation switched to.
    std::fs::write(host.records().join("restore/switched"), format!("2 {}\n", path_str(&v2))).unwrap();
    host.write_unit("epnix-changed.service", &unit_of(TOP, "v2"));
    host.remove_unit("epnix-removed.service");
    host.write_unit("epnix-added.service", &unit_of(TOP, "v2"));
    host.write_unit("epnix-drifted.service", &unit_of(TOP, "v1, edited by hand"));
    (host, v2)
}

fn rollback(host: &FakeHost, reason: &str) -> Ran {
    host.run(ROLLBACK, &[reason])
}

#[test]
fn rollback_restores_the_previous_generation_and_its_units() {
    let (host, v2) = switched_host();
    let ran = rollback(&host, "failed-checks");

    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(ran.stdout.ends_with("rolled back from 2 to 1\n"), "{ran:?}");
    // Units: byte for byte as the restore point saved them.
    for u in ["changed", "removed", "drifted", "kept"] {
        assert_eq!(host.unit(&format!("epnix-{u}.service")), Some(unit_of(TOP, "v1")), "epnix-{u}.service");
    }
    assert_eq!(host.unit("epnix-added.service"), None, "the unit the switch added is still there");
    assert_eq!(host.unit("epnix-theirs.service"), Some(unit_of("other", "v1")), "another top's unit changed");
    assert_eq!(host.unit("epnix-handmade.service").as_deref(), Some("[Service]\nExecStart=/bin/true\n"));
    // The build: generation 1 again.
    assert_eq!(host.profile_target().as_deref(), Some("demo-1-link"));
    let calls = host.calls();
    let switch = format!("nix-env --profile {} --switch-generation 1", host.profile().display());
    assert!(calls.contains(&switch), "no `{switch}` in {calls:#?}");
    // systemd: the added unit stopped and disabled, a reload, then the
    // touched and rewritten units restarted and the others only started.
    assert!(calls.contains(&"systemctl disable --now --quiet epnix-added.service".into()), "{calls:#?}");
    let reload = calls.iter().position(|c| c == "systemctl daemon-reload").expect("no daemon-reload");
    for u in ["changed", "removed", "drifted"] {
        let restart = calls.iter().position(|c| *c == format!("systemctl restart epnix-{u}.service"));
        assert!(restart.is_some_and(|i| i > reload), "epnix-{u}.service not restarted after the reload: {calls:#?}");
        assert!(ran.stdout.contains(&format!("restored epnix-{u}.service\n")), "{ran:?}");
    }
    assert!(calls.contains(&"systemctl start epnix-kept.service".into()), "{calls:#?}");
    assert!(!calls.contains(&"systemctl restart epnix-kept.service".into()), "an untouched unit restarted");
    for u in ["changed", "removed", "drifted", "kept"] {
        assert!(calls.contains(&format!("systemctl enable --quiet epnix-{u}.service")), "{calls:#?}");
    }
    assert!(!calls.iter().any(|c| c.contains("theirs") || c.contains("handmade")), "{calls:#?}");
    // What happened, for `list` and `status`.
    let outcomes = host.record_lines("outcomes");
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_recent(&outcomes[0][0]);
    assert_eq!(outcomes[0][1..], ["2", "failed", path_str(&v2).as_str()]);
    let events = host.record_lines("events");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_recent(&events[0][0]);
    assert_eq!(events[0][1..], ["2", "1", "failed-checks", "0"]);
    // The restore point is used up.
    assert!(!host.exists(&host.records().join("restore")), "restore/ is left");
    assert!(!host.exists(&host.records().join("restore.rolling")), "restore.rolling/ is left");
}

#[test]
fn rollback_outcome_says_why() {
    for (reason, outcome) in [("failed-checks", "failed"), ("unconfirmed", "unconfirmed"), ("reboot", "unconfirmed")] {
        let (host, v2) = switched_host();
        let ran = rollback(&host, reason);
        assert_eq!(ran.code, Some(0), "{reason}: {ran:?}");
        let outcomes = host.record_lines("outcomes");
        assert_eq!(outcomes.len(), 1, "{reason}: {outcomes:?}");
        assert_eq!(outcomes[0][1..], ["2", outcome, path_str(&v2).as_str()], "reason {reason}");
        assert_eq!(host.record_lines("events")[0][3], reason);
    }
}

#[test]
fn rollback_of_a_failed_first_deploy_takes_the_top_away() {
    let host = FakeHost::new();
    // Another top whose name starts with ours: its links match our glob.
    host.add_generation_of("demo-b", 1, "other-top");
    host.prepare(&["epnix-a.service"]);
    assert_eq!(std::fs::read_to_string(host.records().join("restore/generation")).unwrap(), "none\n");

    let v1 = host.add_generation(1, "v1-top");
    std::fs::write(host.records().join("restore/switched"), format!("1 {}\n", path_str(&v1))).unwrap();
    host.write_unit("epnix-a.service", &unit_of(TOP, "v1"));
    let ran = rollback(&host, "failed-checks");

    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(ran.stdout.ends_with("rolled back from 1 to none\n"), "{ran:?}");
    assert_eq!(host.unit("epnix-a.service"), None, "the first deploy's unit is still there");
    let calls = host.calls();
    assert!(calls.contains(&"systemctl disable --now --quiet epnix-a.service".into()), "{calls:#?}");
    assert!(!calls.iter().any(|c| c.starts_with("nix-env")), "{calls:#?}");
    assert!(!host.exists(&host.profile()), "the profile is still there");
    assert!(!host.exists(&link_of(&host.profile(), 1)), "generation 1's link is still there");
    let other = host.profile().with_file_name("demo-b");
    assert!(host.exists(&link_of(&other, 1)), "another top's generation went too");
    assert!(host.exists(&other), "another top's profile went too");
    let events = host.record_lines("events");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0][1..], ["1", "none", "failed-checks", "0"]);
    assert!(!host.exists(&host.records().join("restore")), "restore/ is left");
    assert!(!host.exists(&host.records().join("restore.rolling")), "restore.rolling/ is left");
}

#[test]
fn rollback_without_a_restore_point_changes_nothing() {
    let host = FakeHost::new();
    host.add_generation(1, "v1-top");
    host.add_generation(2, "v2-top");
    host.write_unit("epnix-a.service", &unit_of(TOP, "v2"));
    std::fs::create_dir_all(host.records()).unwrap();
    let before = host.snapshot();

    let ran = rollback(&host, "unconfirmed");

    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(ran.stdout, "nothing to roll back\n");
    assert_eq!(host.snapshot(), before, "the host changed");
    assert_eq!(host.calls(), Vec::<String>::new());
}

/// The timer and the deployer (or the boot unit) may start a rollback at
/// once: the one that claims the restore point acts; the other waits for it
/// and then does nothing.
#[test]
fn of_two_racing_rollbacks_only_the_first_acts() {
    let (host, _) = switched_host();
    // The first stops at its first systemctl call, having claimed the restore point.
    std::fs::write(host.hold(), "").unwrap();
    let mut args = host.context();
    args.push("unconfirmed".into());
    let mut first = Proc(host.command(ROLLBACK, &args).stdout(Stdio::piped()).spawn().expect("run sh"));
    let held = host.hold().with_extension("held");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !held.exists() {
        assert!(first.running(), "the first rollback ended without calling systemctl");
        assert!(Instant::now() < deadline, "the first rollback did not reach systemctl in 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(host.exists(&host.records().join("restore.rolling")), "the first rollback has not claimed it");
    let calls_before = host.calls();

    let mut args = host.context();
    args.push("failed-checks".into());
    let mut second = Proc(host.command(ROLLBACK, &args).stdout(Stdio::piped()).spawn().expect("run sh"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(second.running(), "the second rollback did not wait for the first");
    assert_eq!(host.calls(), calls_before, "the second rollback called something");
    std::fs::remove_file(host.hold()).unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(first.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(first.0.wait().unwrap().success());
    assert!(stdout.ends_with("rolled back from 2 to 1\n"), "first rollback: {stdout}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(second.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(second.0.wait().unwrap().success());
    assert_eq!(stdout, "nothing to roll back\n");
    let events = host.record_lines("events");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0][3], "unconfirmed", "the second rollback's reason was recorded");
    assert_eq!(host.record_lines("outcomes").len(), 1);
}

/// A unit name that another top claimed while this top's switch was
/// unconfirmed stays that top's: the rollback does not take it back.
#[test]
fn rollback_leaves_a_unit_name_another_top_claimed_meanwhile() {
    let (host, _) = switched_host();
    // `removed` went with the switch; another top took the name since.
    host.write_unit("epnix-removed.service", &unit_of("other", "v1"));
    let ran = rollback(&host, "unconfirmed");

    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.stderr.contains("not restored epnix-removed.service: another top claimed it"), "{ran:?}");
    assert!(ran.stdout.ends_with("rolled back from 2 to 1, with errors (see above)\n"), "{ran:?}");
    assert_eq!(host.unit("epnix-removed.service"), Some(unit_of("other", "v1")));
    assert!(!host.calls().iter().any(|c| c.contains("epnix-removed")), "{:#?}", host.calls());
    // The rest went back all the same.
    assert_eq!(host.unit("epnix-changed.service"), Some(unit_of(TOP, "v1")));
    assert_eq!(host.profile_target().as_deref(), Some("demo-1-link"));
    assert_eq!(host.record_lines("events")[0][4], "1", "the event does not say it failed");
}

/// A rollback that died after it claimed the restore point (its connection
/// closed, the host lost power) is resumed by the next one, instead of
/// leaving the top pending for good.
#[test]
fn a_rollback_left_half_done_is_resumed() {
    let (host, _) = switched_host();
    std::fs::rename(host.records().join("restore"), host.records().join("restore.rolling")).unwrap();
    let ran = rollback(&host, "unconfirmed");

    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(ran.stdout.ends_with("rolled back from 2 to 1\n"), "{ran:?}");
    assert_eq!(host.unit("epnix-removed.service"), Some(unit_of(TOP, "v1")));
    assert!(!host.exists(&host.records().join("restore.rolling")), "restore.rolling/ is left");
}

/// The deployer's connection may close while its rollback runs: the
/// rollback's output then goes nowhere, and it goes on to the end.
#[test]
fn a_rollback_whose_output_is_gone_finishes() {
    let (host, _) = switched_host();
    let mut args = host.context();
    args.push("failed-checks".into());
    let mut child = host.command(ROLLBACK, &args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    drop(child.stdout.take());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(host.profile_target().as_deref(), Some("demo-1-link"));
    assert_eq!(host.unit("epnix-removed.service"), Some(unit_of(TOP, "v1")));
    assert_eq!(host.record_lines("events").len(), 1);
    assert!(!host.exists(&host.records().join("restore.rolling")), "restore.rolling/ is left");
}

/// At boot, an armed restore point is rolled back (its timer died with the
/// reboot); one that was never armed (magic rollback off) is left alone.
#[test]
fn at_boot_only_armed_restore_points_roll_back() {
    for armed in [true, false] {
        let (host, _) = switched_host();
        if armed {
            std::fs::write(host.records().join("restore/armed"), "").unwrap();
        }
        let state = host.records().parent().unwrap().to_owned();
        let ran = host.run_bare(ROLLBACK_AT_BOOT, &[&path_str(&state)]);
        assert_eq!(ran.code, Some(0), "{ran:?}");
        let back = host.profile_target().as_deref() == Some("demo-1-link");
        assert_eq!(back, armed, "armed: {armed}: {ran:?}");
        if armed {
            assert_eq!(host.record_lines("events")[0][3], "reboot");
            assert!(!host.exists(&host.records().join("restore")), "restore/ is left");
        } else {
            assert!(host.exists(&host.records().join("restore")), "an unarmed restore point went");
        }
    }
}

/// A switch that kept the generation (a restart for drift, a unit put
/// back) and failed is rolled back, but notes no generation as failed: the
/// host is still on the one it was on.
#[test]
fn rollback_of_a_switch_that_kept_the_generation_notes_no_outcome() {
    let (host, _) = switched_host();
    std::fs::write(host.records().join("restore/switched"), "").unwrap();
    let ran = rollback(&host, "failed-checks");
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(host.record_lines("outcomes").is_empty(), "{:?}", host.record_lines("outcomes"));
    assert_eq!(host.record_lines("events")[0][1], "none");
}

/// A deployer that went between saving the restore point and the switch
/// left nothing to undo: the restore point goes, no IOC is restarted.
#[test]
fn rollback_of_a_switch_that_never_started_only_discards_the_restore_point() {
    let host = FakeHost::new();
    host.add_generation(1, "v1-top");
    host.write_unit("epnix-a.service", &unit_of(TOP, "v1"));
    host.prepare(&["epnix-a.service"]);
    let ran = rollback(&host, "unconfirmed");

    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(ran.stdout, "nothing to roll back: the switch never started\n");
    assert_eq!(host.calls(), Vec::<String>::new());
    assert!(!host.exists(&host.records().join("restore")), "the restore point is left");
    assert!(host.record_lines("outcomes").is_empty() && host.record_lines("events").is_empty());
}

// ---------------------------------------------------------------- switch.sh

/// A host running generation 1 of `demo` with its unit `mine`, beside a unit
/// of another top and one without a marker; and new unit files to install.
fn host_with_neighbours() -> (FakeHost, PathBuf) {
    let host = FakeHost::new();
    host.add_generation(1, "v1-top");
    host.write_unit("epnix-mine.service", &unit_of(TOP, "v1"));
    host.write_unit("epnix-theirs.service", &unit_of("other", "v1"));
    host.write_unit("epnix-handmade.service", "[Service]\nExecStart=/bin/true\n");
    let src = host.root.join("new-units");
    std::fs::create_dir_all(&src).unwrap();
    for u in ["mine", "theirs", "handmade", "new"] {
        std::fs::write(src.join(format!("epnix-{u}.service")), unit_of(TOP, "v2")).unwrap();
    }
    (host, src)
}

fn switch(host: &FakeHost, src: &Path, target: &Path, units: &[&str]) -> Ran {
    let mut args = vec!["set".to_owned(), path_str(target), path_str(src), "no".to_owned()];
    for u in units {
        args.extend(["write", "enable", "restart"].map(|verb| format!("{verb}:{u}")));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    host.run(SWITCH, &args)
}

#[test]
fn switch_refuses_a_unit_it_does_not_own_and_changes_nothing() {
    for (unit, owner) in [("epnix-theirs.service", "other"), ("epnix-handmade.service", "-")] {
        let (host, src) = host_with_neighbours();
        let v2 = host.store_path("v2-top");
        let before = host.snapshot();

        // Ours first: the check comes before any change, whatever the order.
        let ran = switch(&host, &src, &v2, &["epnix-mine.service", unit]);

        assert_eq!(ran.code, Some(20), "{unit}: {ran:?}");
        assert_eq!(ran.stdout, format!("claimed {unit} {owner}\n"));
        assert_eq!(host.snapshot(), before, "{unit}: the host changed");
        assert_eq!(host.calls(), Vec::<String>::new(), "{unit}: something was called");
    }
}

#[test]
fn switch_sets_the_profile_and_installs_its_units() {
    let (host, src) = host_with_neighbours();
    let v2 = host.store_path("v2-top");

    let ran = switch(&host, &src, &v2, &["epnix-mine.service", "epnix-new.service"]);

    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(ran.stdout, "generation demo-2-link\n");
    assert_eq!(std::fs::read_link(link_of(&host.profile(), 2)).unwrap(), v2);
    assert_eq!(host.unit("epnix-mine.service"), Some(unit_of(TOP, "v2")));
    assert_eq!(host.unit("epnix-new.service"), Some(unit_of(TOP, "v2")));
    assert_eq!(
        host.calls()[1..],
        [
            "systemctl daemon-reload",
            "systemctl enable --quiet epnix-mine.service epnix-new.service",
            "systemctl restart epnix-mine.service epnix-new.service",
        ]
    );
}

/// A guarded switch marks its restore point used; once the host's rollback
/// has taken the restore point, a guarded switch changes nothing.
#[test]
fn a_guarded_switch_marks_its_restore_point_and_refuses_without_one() {
    let (host, src) = host_with_neighbours();
    let v2 = host.store_path("v2-top");
    let guarded = |host: &FakeHost| {
        let mut args = vec!["set".to_owned(), path_str(&v2), path_str(&src), "yes".to_owned()];
        args.extend(["write", "enable", "restart"].map(|verb| format!("{verb}:epnix-mine.service")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        host.run(SWITCH, &args)
    };
    // The state directory exists: the deploy lock made it.
    std::fs::create_dir_all(host.records()).unwrap();
    let before = host.snapshot();
    let ran = guarded(&host);
    assert_eq!((ran.code, ran.stdout.as_str()), (Some(21), "rolled-back\n"), "{ran:?}");
    let mut after = host.snapshot();
    after.retain(|path, _| !path.ends_with("rollback.lock"));
    assert_eq!(after, before, "the host changed");
    assert_eq!(host.calls(), Vec::<String>::new());

    host.prepare(&["epnix-mine.service"]);
    let ran = guarded(&host);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(host.exists(&host.records().join("restore/switched")), "the restore point is not marked");
}

// ---------------------------------------------------------------- confirm.sh

const TIMER: &str = "epnix.rollback-demo";

#[test]
fn confirm_takes_the_restore_point_and_notes_a_healthy_generation() {
    let (host, v2) = switched_host();

    let ran = host.run(CONFIRM, &[TIMER, "2", path_str(&v2).as_str()]);

    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(host.calls(), [format!("systemctl stop {TIMER}.timer")]);
    for dir in ["restore", "restore.confirmed", "restore.rolling"] {
        assert!(!host.exists(&host.records().join(dir)), "{dir}/ is left");
    }
    let outcomes = host.record_lines("outcomes");
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_recent(&outcomes[0][0]);
    assert_eq!(outcomes[0][1..], ["2", "healthy", path_str(&v2).as_str()]);
    // And a rollback has nothing left to act on.
    assert_eq!(rollback(&host, "unconfirmed").stdout, "nothing to roll back\n");
}

/// Made ready ahead (`wait`), the confirmation acts only on the deployer's
/// `go`: a deployer gone first (the end of stdin) confirms nothing.
#[test]
fn a_waiting_confirmation_confirms_only_on_go() {
    for (said, code) in [("", Some(4)), ("stop\n", Some(4)), ("go\n", Some(0))] {
        let (host, v2) = switched_host();
        let ran = host.run_with_stdin(CONFIRM, &[TIMER, "2", path_str(&v2).as_str(), "wait"], said);
        assert_eq!(ran.code, code, "{said:?}: {ran:?}");
        let confirmed = code == Some(0);
        assert_eq!(!host.exists(&host.records().join("restore")), confirmed, "{said:?}");
        assert_eq!(host.record_lines("outcomes").len(), usize::from(confirmed), "{said:?}");
    }
}

#[test]
fn confirm_of_a_switch_that_changed_nothing_notes_no_outcome() {
    let (host, _) = switched_host();

    let ran = host.run(CONFIRM, &[TIMER, "-", "-"]);

    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(!host.exists(&host.records().join("restore")), "restore/ is left");
    assert!(!host.exists(&host.records().join("outcomes")), "an outcome was written");
}

#[test]
fn confirm_fails_once_the_host_has_rolled_back() {
    let (host, v2) = switched_host();
    assert_eq!(rollback(&host, "unconfirmed").code, Some(0));
    let outcomes = host.record_lines("outcomes");

    let ran = host.run(CONFIRM, &[TIMER, "2", path_str(&v2).as_str()]);

    assert_eq!(ran.code, Some(3), "{ran:?}");
    assert!(ran.stderr.contains("already rolled back"), "{ran:?}");
    assert_eq!(host.record_lines("outcomes"), outcomes, "confirm wrote an outcome");
}

// ---------------------------------------------------------------- lock.sh and break_lock.sh

/// A process of this test that holds nothing.
fn innocent() -> Proc {
    Proc(Command::new("sleep").arg("60").spawn().expect("run sleep"))
}

fn forge_holder(host: &FakeHost, pid: u32) {
    std::fs::create_dir_all(host.records()).unwrap();
    let holder = format!("someone@elsewhere, since 2024-01-01 00:00:00 UTC, pid {pid}\n");
    std::fs::write(host.records().join("lock.holder"), holder).unwrap();
}

/// Starts `sh -c SCRIPT sh LOCK` and waits for its first line (`locked`).
fn holding(script: &str, lock: &Path) -> Proc {
    let mut p =
        Proc(Command::new("sh").args(["-c", script, "sh"]).arg(lock).stdout(Stdio::piped()).spawn().expect("run sh"));
    let mut line = String::new();
    BufReader::new(p.0.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "locked\n");
    p
}

#[test]
fn break_lock_spares_a_forged_holder_of_a_free_lock() {
    let host = FakeHost::new();
    let mut victim = innocent();
    forge_holder(&host, victim.0.id());
    std::fs::write(host.records().join("lock"), "").unwrap();

    let ran = host.run(BREAK_LOCK, &[]);

    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(ran.stdout, "free\n");
    assert!(victim.running(), "break_lock.sh killed the PID of a forged holder line");
    assert!(!host.exists(&host.records().join("lock.holder")), "the stale holder line is left");
}

#[test]
fn break_lock_spares_a_forged_holder_and_a_foreign_holder() {
    let host = FakeHost::new();
    let mut victim = innocent();
    forge_holder(&host, victim.0.id());
    let lock = host.records().join("lock");
    // Holds the lock, but not on fd 9 as lock.sh does: not a deploy.
    let mut foreign = holding(r#"exec 3>>"$1"; flock 3; echo locked; exec sleep 60"#, &lock);

    let ran = host.run(BREAK_LOCK, &[]);

    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(ran.stdout, format!("foreign {}\n", foreign.0.id()));
    assert!(victim.running(), "break_lock.sh killed the PID of a forged holder line");
    assert!(foreign.running(), "break_lock.sh killed a process that is not a deploy");
}

#[test]
fn lock_is_held_while_its_connection_lasts_and_break_lock_ends_it() {
    let host = FakeHost::new();
    let lock_cmd = |want: &str| {
        let mut args = host.context();
        args.extend(["tester@here".to_owned(), want.to_owned()]);
        host.command(LOCK, &args)
    };
    let mut first = Proc(lock_cmd("").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("run sh"));
    let mut line = String::new();
    BufReader::new(first.0.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "locked \n", "no stale holder expected");
    let holder = std::fs::read_to_string(host.records().join("lock.holder")).unwrap();
    assert!(holder.starts_with("tester@here, since "), "{holder}");
    assert!(holder.ends_with(&format!(", pid {}\n", first.0.id())), "{holder} (lock.sh is {})", first.0.id());

    let busy = lock_cmd("").stdin(Stdio::null()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&busy.stdout), format!("busy {holder}"));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let wrong = lock_cmd("not-this-host").stdin(Stdio::null()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&wrong.stdout), format!("wronghost {hostname}"));

    let ran = host.run(BREAK_LOCK, &[]);

    assert_eq!(ran.stdout, format!("ended {}\n", first.0.id()), "{ran:?}");
    assert!(!first.0.wait().unwrap().success(), "lock.sh was not ended");
    assert!(!host.exists(&host.records().join("lock.holder")), "the holder line is left");
    assert_eq!(host.run(BREAK_LOCK, &[]).stdout, "free\n");
}

#[test]
fn lock_reads_the_host_under_the_lock_in_the_same_call() {
    let host = FakeHost::new();
    let mut args = host.context();
    args.extend(["tester@here".to_owned(), String::new(), INSPECT.text()]);
    args.extend(["@@n@@".to_owned(), "no".to_owned(), "/nowhere/procServ".to_owned()]);
    let mut lock = Proc(host.command(LOCK, &args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap());
    let mut out = BufReader::new(lock.0.stdout.take().unwrap());
    let mut said = String::new();
    while !said.ends_with("@@n@@ end\n") {
        assert!(out.read_line(&mut said).unwrap() > 0, "lock.sh ended: {said}");
    }
    assert!(said.starts_with("locked \n@@n@@ "), "{said}");
    let state = crate::host::parse_inspect("@@n@@", said.split_once('\n').unwrap().1).unwrap();
    assert_eq!(state.hostname, std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim());
    // Still held after the report.
    assert!(host.exists(&host.records().join("lock.holder")));
    drop(lock.0.stdin.take());
    assert!(lock.0.wait().unwrap().success());
}

// ---------------------------------------------------------------- conserver.sh

/// A unit that `unit::render` writes for IOC `name` of `top`, with `console`.
fn rendered(top: &str, name: &str, working_directory: &str, script: &str, console: crate::config::Console) -> String {
    let ioc = crate::config::Ioc {
        working_directory: working_directory.into(),
        startup_script: script.into(),
        environment: BTreeMap::new(),
        console,
        description: None,
        enable: true,
        health_check: crate::config::HealthCheck::default(),
    };
    let facts = unit::HostFacts { procserv: "/usr/bin/procServ".into(), procserv_oneshot: true };
    unit::render(top, name, &ioc, &facts)
}

impl FakeHost {
    fn conserver_dir(&self) -> PathBuf {
        self.root.join("etc/conserver")
    }

    /// conserver.sh with the host's paths; `service` names the stand-in's unit.
    fn conserver(&self) -> Ran {
        let dir = self.conserver_dir();
        let (include, config) = (path_str(&dir.join("epnix-deploy.cf")), path_str(&dir.join("conserver.cf")));
        let (units, lock) = (path_str(&self.unit_dir()), path_str(&self.root.join("units.lock")));
        let owner = unit::owner_line("");
        self.run_bare(CONSERVER, &[&units, &owner, &lock, &include, &config, "conserver-server.service", "epnix.none"])
    }

    fn include_file(&self) -> String {
        std::fs::read_to_string(self.conserver_dir().join("epnix-deploy.cf")).unwrap_or_default()
    }

    /// `systemctl show` answers with `pid` as the service's main process.
    fn conserver_runs_as(&self, pid: u32) {
        let stand_in = format!("#!/bin/sh\necho \"systemctl $*\" >>\"$CALLS\"\ncase $1 in show) echo {pid} ;; esac\n");
        std::fs::write(self.bin().join("systemctl"), stand_in).unwrap();
    }
}

const HEADER: &str = "# Written by epnix-deploy: one console per IOC it runs on this host, of every top.\n\
                      # Do not edit: each deploy, rollback and remove of epnix-deploy rewrites it.\n";

/// Every top's IOCs get a console, read from their units however their
/// paths are quoted; units that are not ours get none.
#[test]
fn conserver_lists_the_consoles_of_every_top_and_writes_only_on_change() {
    use crate::config::Console;
    let host = FakeHost::new();
    std::fs::create_dir_all(host.conserver_dir()).unwrap();
    host.write_unit("epnix-a.service", &rendered(TOP, "a", "iocBoot/iocA", "./st.cmd", Console::Unix));
    // Words that look like a console, in quoted paths before and after it.
    host.write_unit(
        "epnix-b.service",
        &rendered("other", "b", "ioc 2001 ./x", "./st \"$x\" 7 unix:/y.cmd", Console::Tcp(2002)),
    );
    host.write_unit("epnix-c.service", &rendered(TOP, "c", "ioc unix:/z c", "./st 2003.cmd", Console::Unix));
    host.write_unit("epnix-handmade.service", "[Service]\nExecStart=/usr/bin/procServ 2004 ./st.cmd\n");
    host.write_unit("epnix-edited.service", &format!("{}\n[Service]\nExecStart=/bin/true\n", unit::owner_line(TOP)));

    let ran = host.conserver();

    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(
        ran.stdout,
        "console a uds /run/epics/a/console\nconsole b host 2002\nconsole c uds /run/epics/c/console\n\
         unreadable epnix-edited.service\nchanged yes\nincluded absent\nconserver none\nreloaded no\n"
    );
    assert_eq!(
        host.include_file(),
        format!(
            "{HEADER}console a {{ master localhost; type uds; uds /run/epics/a/console; }}\n\
             console b {{ master localhost; type host; host 127.0.0.1; port 2002; }}\n\
             console c {{ master localhost; type uds; uds /run/epics/c/console; }}\n"
        )
    );
    let written = std::fs::metadata(host.conserver_dir().join("epnix-deploy.cf")).unwrap().modified().unwrap();
    assert!(!host.conserver_dir().join("epnix-deploy.cf.epnix-tmp").exists(), "the temporary file is left");

    let again = host.conserver();
    assert!(again.stdout.contains("changed no\n"), "{again:?}");
    let kept = std::fs::metadata(host.conserver_dir().join("epnix-deploy.cf")).unwrap().modified().unwrap();
    assert_eq!(kept, written, "an unchanged file was written again");
    assert!(!host.conserver_dir().join("epnix-deploy.cf.epnix-tmp").exists(), "the temporary file is left");

    // Without IOCs, a placeholder keeps conserver from stopping.
    for u in ["a", "b", "c", "edited"] {
        host.remove_unit(&format!("epnix-{u}.service"));
    }
    let ran = host.conserver();
    assert!(ran.stdout.starts_with("changed yes\n"), "{ran:?}");
    assert_eq!(
        host.include_file(),
        format!(
            "{HEADER}console epnix.none {{ master localhost; type noop; motd \"no IOC of epnix-deploy runs on this \
             host\"; }}\n"
        )
    );
}

/// The `#include` line is found in conserver's configuration or in a file
/// it includes, with white space around the path.
#[test]
fn conserver_looks_for_the_include_line() {
    let host = FakeHost::new();
    let dir = host.conserver_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let include = path_str(&dir.join("epnix-deploy.cf"));
    let included = |host: &FakeHost| {
        let ran = host.conserver();
        assert_eq!(ran.code, Some(0), "{ran:?}");
        ran.stdout.lines().find_map(|l| l.strip_prefix("included ")).unwrap().to_owned()
    };
    assert_eq!(included(&host), "absent");
    std::fs::write(dir.join("conserver.cf"), format!("config * {{ }}\n# #include {include}\n #include {include}\n"))
        .unwrap();
    assert_eq!(included(&host), "no");
    std::fs::write(dir.join("conserver.cf"), format!("config * {{ }}\n#include \t{include}  \n")).unwrap();
    assert_eq!(included(&host), "yes");
    let site = path_str(&dir.join("site.cf"));
    std::fs::write(dir.join("conserver.cf"), format!("#include {site}\n")).unwrap();
    std::fs::write(dir.join("site.cf"), format!("#include {}\n#include {include}\n", path_str(&dir.join("none.cf"))))
        .unwrap();
    assert_eq!(included(&host), "yes");
    // A loop of includes ends.
    std::fs::write(dir.join("site.cf"), format!("#include {}\n", path_str(&dir.join("conserver.cf")))).unwrap();
    assert_eq!(included(&host), "no");
}

/// A running conserver is told to re-read its configuration when the file
/// changed and is included, and only then.
#[test]
fn conserver_rereads_its_configuration_only_after_a_change() {
    let host = FakeHost::new();
    let dir = host.conserver_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let hups = host.root.join("hups");
    let mut conserver = Proc(
        Command::new("sh")
            .arg("-c")
            .arg(r#"trap 'echo hup >>"$0"' HUP; echo ready; while :; do sleep 0.05; done"#)
            .arg(&hups)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run sh"),
    );
    let mut line = String::new();
    BufReader::new(conserver.0.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    host.conserver_runs_as(conserver.0.id());
    host.write_unit("epnix-a.service", &rendered(TOP, "a", ".", "./st.cmd", crate::config::Console::Unix));
    let hup_count = || {
        // The trap runs between two sleeps.
        std::thread::sleep(Duration::from_millis(300));
        std::fs::read_to_string(&hups).unwrap_or_default().lines().count()
    };
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| Some(l.strip_prefix("Uid:")?.split_whitespace().next()?.to_owned()))
        .unwrap();

    // Not included: no signal, and the file is written all the same.
    std::fs::write(dir.join("conserver.cf"), "config * { }\n").unwrap();
    let ran = host.conserver();
    let user = ran.stdout.lines().find_map(|l| l.strip_prefix(&format!("conserver {uid} "))).map(str::to_owned);
    assert!(user.is_some_and(|u| !u.is_empty()), "{ran:?}");
    assert!(ran.stdout.contains("changed yes\nincluded no\n") && ran.stdout.ends_with("\nreloaded no\n"), "{ran:?}");
    assert_eq!(hup_count(), 0);
    assert!(host.calls().contains(&"systemctl show --property=MainPID --value conserver-server.service".to_owned()));

    std::fs::write(dir.join("conserver.cf"), format!("#include {}\n", path_str(&dir.join("epnix-deploy.cf")))).unwrap();
    host.write_unit("epnix-b.service", &rendered(TOP, "b", ".", "./st.cmd", crate::config::Console::Tcp(2001)));
    let ran = host.conserver();
    assert!(ran.stdout.contains("changed yes\nincluded yes\n") && ran.stdout.ends_with("reloaded yes\n"), "{ran:?}");
    assert_eq!(hup_count(), 1);

    let ran = host.conserver();
    assert!(ran.stdout.contains("changed no\n") && ran.stdout.ends_with("reloaded no\n"), "{ran:?}");
    assert_eq!(hup_count(), 1, "signalled without a change");
    assert!(conserver.running());
}

#[test]
fn conserver_without_its_directory_writes_nothing() {
    let host = FakeHost::new();
    let ran = host.conserver();
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.stderr.ends_with("etc/conserver does not exist: is conserver installed?\n"), "{ran:?}");
    assert!(!host.conserver_dir().exists());
}

// ---------------------------------------------------------------- locate.sh, service.sh, logs.sh, console.sh

/// Replaces the host's `systemctl` with one that also answers: `is-active`
/// and `is-enabled` from `units` (unit, active state, enabled state), and
/// `start`, `stop` or `restart` of a unit in `failing` with exit 1. It
/// logs every call, as the plain stand-in does.
fn fake_systemd(host: &FakeHost, units: &[(&str, &str, &str)], failing: &[&str]) {
    let mut text = String::from("#!/bin/sh\necho \"systemctl $*\" >>\"$CALLS\"\ncase $1:$2 in\n");
    for (unit, active, enabled) in units {
        text += &format!("  is-active:{unit}) echo {active}; [ {active} = active ] ;;\n");
        text += &format!("  is-enabled:{unit}) echo {enabled} ;;\n");
    }
    for unit in failing {
        text +=
            &format!("  start:{unit} | stop:{unit} | restart:{unit}) echo \"Job for {unit} failed.\" >&2; exit 1 ;;\n");
    }
    text += "  show:*) for u; do case $u in epnix-*) printf 'Id=%s\\nActiveState=active\\n\\n' \"$u\" ;; esac; done ;;\nesac\n";
    std::fs::write(host.bin().join("systemctl"), text).unwrap();
}

/// A stand-in for a host program `name` on the host's `PATH`.
fn stand_in(host: &FakeHost, name: &str, text: &str) {
    let path = host.bin().join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn marker_key() -> String {
    unit::owner_line("")
}

#[test]
fn locate_lists_every_ioc_unit_and_the_state_of_those_asked_for() {
    let host = FakeHost::new();
    host.write_unit("epnix-a.service", &unit_of("linac", "v1"));
    host.write_unit("epnix-r.service", &unit_of("ring", "v1"));
    host.write_unit("epnix-mine.service", "[Service]\nExecStart=/bin/procServ 2000 ./st.cmd\n");
    host.write_unit("other.service", &unit_of("linac", "v1"));
    fake_systemd(&host, &[("epnix-a.service", "active", "enabled")], &[]);
    let dir = path_str(&host.unit_dir());

    let ran = host.run_bare(LOCATE, &[&dir, &marker_key(), "epnix-a.service", "epnix-gone.service"]);

    assert_eq!(ran.code, Some(0), "{ran:?}");
    let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines[0], format!("uid {}", uid.trim()));
    assert!(lines[1] == "socat yes" || lines[1] == "socat no", "{lines:?}");
    assert_eq!(
        lines[2..],
        [
            "unit epnix-a.service linac /bin/true v1",
            "unit epnix-mine.service - /bin/procServ 2000 ./st.cmd",
            "unit epnix-r.service ring /bin/true v1",
            "state epnix-a.service active enabled",
        ]
    );
}

/// `service.sh ACTION` on `a` (top linac) and `r` (top ring).
fn service(host: &FakeHost, action: &str) -> Ran {
    let dir = path_str(&host.unit_dir());
    let records = |top: &str| path_str(&host.root.join("state").join(top));
    let (linac, ring) = (unit::owner_line("linac"), unit::owner_line("ring"));
    let args = [action, &dir, "epnix-a.service", &linac, &records("linac"), "epnix-r.service", &ring, &records("ring")];
    host.run_bare(SERVICE, &args)
}

fn service_host() -> FakeHost {
    let host = FakeHost::new();
    host.write_unit("epnix-a.service", &unit_of("linac", "v1"));
    host.write_unit("epnix-r.service", &unit_of("ring", "v1"));
    host
}

#[test]
fn service_acts_on_each_unit_and_says_what_it_did() {
    let host = service_host();
    fake_systemd(&host, &[("epnix-a.service", "active", "enabled"), ("epnix-r.service", "inactive", "enabled")], &[]);

    let ran = service(&host, "start");

    assert_eq!(ran.code, Some(0), "{ran:?}");
    let (did, show) = ran.stdout.split_once("\n\n").unwrap();
    assert_eq!(did, "did epnix-a.service unchanged\ndid epnix-r.service started");
    assert!(show.starts_with("Id=epnix-a.service\nActiveState=active\n\nId=epnix-r.service"), "{show}");
    let acts: Vec<String> = host.calls().into_iter().filter(|c| !c.starts_with("systemctl is-")).collect();
    assert_eq!(acts[0], "systemctl start epnix-r.service");
    assert!(acts[1].starts_with("systemctl show --timestamp=unix "), "{acts:?}");

    host.forget_calls();
    let ran = service(&host, "stop");
    assert_eq!(ran.stdout.split_once("\n\n").unwrap().0, "did epnix-a.service stopped\ndid epnix-r.service unchanged");
    host.forget_calls();
    let ran = service(&host, "restart");
    assert_eq!(
        ran.stdout.split_once("\n\n").unwrap().0,
        "did epnix-a.service restarted\ndid epnix-r.service restarted"
    );
}

#[test]
fn service_goes_on_past_a_failure_and_says_so() {
    let host = service_host();
    fake_systemd(&host, &[], &["epnix-a.service"]);

    let ran = service(&host, "restart");

    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.stdout.starts_with("did epnix-a.service failed\ndid epnix-r.service restarted\n\n"), "{ran:?}");
    assert!(ran.stderr.contains("Job for epnix-a.service failed."), "{ran:?}");
}

#[test]
fn service_changes_nothing_for_a_unit_that_moved_or_a_pending_rollback() {
    let host = service_host();
    fake_systemd(&host, &[], &[]);
    host.write_unit("epnix-r.service", &unit_of("booster", "v1"));
    let ran = service(&host, "stop");
    assert_eq!((ran.code, ran.stdout.as_str()), (Some(20), "moved epnix-r.service\n"), "{ran:?}");
    host.remove_unit("epnix-r.service");
    let ran = service(&host, "stop");
    assert_eq!((ran.code, ran.stdout.as_str()), (Some(20), "moved epnix-r.service\n"), "{ran:?}");
    assert!(host.calls().is_empty(), "{:?}", host.calls());

    host.write_unit("epnix-r.service", &unit_of("ring", "v1"));
    let restore = host.root.join("state/ring/restore");
    std::fs::create_dir_all(&restore).unwrap();
    std::fs::write(restore.join("armed"), "").unwrap();
    let ran = service(&host, "stop");
    assert_eq!((ran.code, ran.stdout.as_str()), (Some(21), "pending epnix-r.service\n"), "{ran:?}");
    std::fs::remove_file(restore.join("armed")).unwrap();
    std::fs::create_dir_all(host.root.join("state/ring/restore.rolling")).unwrap();
    let ran = service(&host, "stop");
    assert_eq!((ran.code, ran.stdout.as_str()), (Some(21), "pending epnix-r.service\n"), "{ran:?}");
    assert!(host.calls().is_empty(), "{:?}", host.calls());
}

/// A `journalctl` that logs its argv, refuses `--since=bad`, and when
/// following runs until it is ended, noting its PID.
const JOURNALCTL: &str = r#"#!/bin/sh
echo "journalctl $*" >>"$CALLS"
for a; do
  case $a in --since=bad) echo "Failed to parse timestamp: bad" >&2; exit 1 ;; --follow) echo $$ >"$CALLS.pid"; exec sleep 60 ;; esac
done
echo "2026-12-03T10:00:00+00:00 host procServ[1]: iocRun: All initialization complete"
"#;

#[test]
fn logs_prints_the_journal_and_refuses_a_time_journalctl_cannot_read() {
    let host = FakeHost::new();
    stand_in(&host, "journalctl", JOURNALCTL);

    let ran = host.run_bare(LOGS, &["epnix-a.service", "no", "--lines=50", "--since=today"]);

    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(ran.stdout.ends_with("iocRun: All initialization complete\n"), "{ran:?}");
    assert_eq!(
        host.calls(),
        [
            "journalctl --quiet --lines=0 --since=today",
            "journalctl --unit=epnix-a.service --no-pager --output=short-iso --utc --lines=50 --since=today",
        ]
    );
    let ran = host.run_bare(LOGS, &["epnix-a.service", "no", "--since=bad"]);
    assert_eq!((ran.code, ran.stdout.as_str()), (Some(64), ""), "{ran:?}");
}

#[test]
fn a_follow_ends_with_its_connection_however_quiet_the_journal() {
    let host = FakeHost::new();
    stand_in(&host, "journalctl", JOURNALCTL);
    let args: Vec<String> = ["epnix-a.service", "yes", "--lines=5"].map(str::to_owned).to_vec();
    let mut follow = Proc(host.command(LOGS, &args).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap());
    let pid_file = host.root.join("calls.pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pid_file.exists() {
        assert!(Instant::now() < deadline, "journalctl never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let journalctl = std::fs::read_to_string(&pid_file).unwrap().trim().to_owned();
    assert!(follow.running());

    // The deployer is gone: its end of the connection closes.
    drop(follow.0.stdin.take());

    let deadline = Instant::now() + Duration::from_secs(10);
    while follow.running() {
        assert!(Instant::now() < deadline, "logs.sh outlived its connection");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!Path::new(&format!("/proc/{journalctl}")).exists(), "journalctl {journalctl} was left running");
    assert!(host.calls().last().unwrap().ends_with("--follow --lines=5"), "{:?}", host.calls());
}

#[test]
fn console_runs_socat_both_ways_or_only_towards_the_terminal() {
    let host = FakeHost::new();
    stand_in(&host, "socat", "#!/bin/sh\necho \"socat $*\" >>\"$CALLS\"\n");

    let ran = host.run_bare(CONSOLE, &["interactive", "UNIX-CONNECT:/run/epics/a/console"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    // Not on a terminal here, so `stty` complains; socat runs all the same.
    let ran = host.run_bare(CONSOLE, &["read-only", "TCP4:127.0.0.1:2001"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(
        host.calls(),
        ["socat STDIO,raw,echo=0,escape=0x1d UNIX-CONNECT:/run/epics/a/console", "socat -u TCP4:127.0.0.1:2001 STDOUT",]
    );
}

// ---------------------------------------------------------------- identity.sh and a user's manager

/// Runs identity.sh with `words` as the escalation, as `uid` (0: as the
/// tests run, as root; else through `setpriv`), for `manager`.
fn identity(host: &FakeHost, manager: Manager, uid: u32, words: &[&str]) -> String {
    let words: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
    let sh = host.command_for(manager, IDENTITY, &words);
    let mut cmd = if uid == 0 {
        sh
    } else {
        let mut setpriv = Command::new("setpriv");
        setpriv.args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".to_owned()]);
        setpriv.arg(sh.get_program()).args(sh.get_args());
        setpriv.envs(sh.get_envs().filter_map(|(k, v)| Some((k, v?))));
        setpriv
    };
    let out = cmd.stdin(Stdio::null()).output().expect("run identity.sh");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn identity_says_whether_the_escalation_makes_the_login_root() {
    let host = FakeHost::new();
    let nobody = 65534;
    let name = String::from_utf8(Command::new("id").args(["-un", &nobody.to_string()]).output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();
    // Root needs nothing, whatever the words.
    assert_eq!(identity(&host, Manager::System, 0, &["false"]), "user root 0\n");
    // No words: nothing is tried (the lock then says who is not root).
    assert_eq!(identity(&host, Manager::System, nobody, &[]), format!("user {name} {nobody}\n"));
    // Stand-ins for an escalation command: one that works (says 0, as
    // `sudo -n -- id -u` does), one that refuses as sudo does.
    let works = ["sh", "-c", "echo warning >&2; echo 0", "sudo"];
    assert_eq!(identity(&host, Manager::System, nobody, &works), format!("user {name} {nobody}\nroot 0\n"));
    let refuses = ["sh", "-c", "echo 'sudo: a password is required' >&2; exit 1", "sudo"];
    assert_eq!(
        identity(&host, Manager::System, nobody, &refuses),
        format!("user {name} {nobody}\nrefused\nsudo: a password is required\n")
    );
    // A user's manager is the user's own: no escalation, but the manager
    // must answer.
    assert_eq!(identity(&host, Manager::User, 0, &[]), "user root 0\n");
    assert_eq!(host.calls(), ["systemctl --user show-environment"]);
    let no_manager = {
        let mut cmd = host.command_for(Manager::User, IDENTITY, &[]);
        cmd.env("NO_MANAGER", "1").output().unwrap()
    };
    assert_eq!(String::from_utf8_lossy(&no_manager.stdout), "user root 0\nno-manager\n");
}

#[test]
fn a_users_manager_is_told_so_in_every_systemctl_call() {
    let (host, _) = switched_host();

    let args: Vec<String> = host.context().into_iter().chain([TIMER.to_owned()]).collect();
    let ran = host.command_for(Manager::User, HEARTBEAT, &args).output().unwrap();

    assert!(ran.status.success(), "{ran:?}");
    assert_eq!(host.calls(), [format!("systemctl --user restart {TIMER}.timer")]);
}

#[test]
fn a_users_boot_unit_starts_with_its_manager() {
    let host = FakeHost::new();
    std::fs::remove_dir_all(host.unit_dir()).unwrap();
    let (rollback, boot) = (ROLLBACK.text_for(Manager::User), ROLLBACK_AT_BOOT.text_for(Manager::User));
    let state = path_str(host.records().parent().unwrap());
    let mut args = host.context();
    args.extend(["no", TIMER, "30s", "epnix.rollback-at-boot.service", &state, &rollback, &boot].map(str::to_owned));

    let ran = host.command_for(Manager::User, PREPARE, &args).output().unwrap();

    assert!(ran.status.success(), "{ran:?}");
    let unit = host.unit("epnix.rollback-at-boot.service").expect("the boot unit, in a unit directory made for it");
    assert!(unit.contains("\nAfter=basic.target\n") && unit.ends_with("\nWantedBy=default.target\n"), "{unit}");
    assert_eq!(
        host.calls(),
        [
            format!("systemctl --user stop {TIMER}.timer"),
            "systemctl --user daemon-reload".to_owned(),
            "systemctl --user is-enabled --quiet epnix.rollback-at-boot.service".to_owned()
        ]
    );
    // What the host keeps to roll back later is the user's too.
    let kept = std::fs::read_to_string(host.records().join("restore/rollback.sh")).unwrap();
    assert!(kept.starts_with("manager=user\n"), "{kept}");
}

#[test]
fn only_the_systems_manager_needs_root_for_the_lock() {
    let host = FakeHost::new();
    // A state directory that `nobody` may write, on a path it may walk.
    std::fs::set_permissions(&host.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = host.records().parent().unwrap().to_owned();
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    let lock = |manager: Manager| {
        let mut args = host.context();
        args.extend(["tester@here".to_owned(), String::new()]);
        let sh = host.command_for(manager, LOCK, &args);
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(sh.get_program())
            .args(sh.get_args())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    assert!(lock(Manager::System).starts_with("notroot "), "{}", lock(Manager::System));
    assert!(!host.exists(&host.records()), "the system's lock wrote as a user who is not root");
    assert_eq!(lock(Manager::User), "locked \n");
}

#[test]
fn inspect_build_says_what_each_path_is_and_where_it_leads() {
    let host = FakeHost::new();
    let build = host.store_path("abc-top");
    let outside = host.store_path("other");
    std::fs::create_dir_all(build.join("iocBoot/ioc A")).unwrap();
    std::fs::write(build.join("iocBoot/ioc A/st.cmd"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(build.join("iocBoot/ioc A/st.cmd"), std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::write(build.join("README"), "").unwrap();
    symlink(&outside, build.join("escape")).unwrap();
    // Not left to the umask.
    for (path, mode) in [(build.join("iocBoot/ioc A"), 0o755), (outside.clone(), 0o755), (build.join("README"), 0o644)]
    {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let ran = host.run_bare(
        INSPECT_BUILD,
        &[&path_str(&build), "iocBoot/ioc A", "iocBoot/ioc A/st.cmd", "README", "escape", "nothere/st.cmd"],
    );
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            path_str(&build).as_str(),
            &format!("dir 755 {}", path_str(&build.join("iocBoot/ioc A"))),
            &format!("file 555 {}", path_str(&build.join("iocBoot/ioc A/st.cmd"))),
            &format!("file 644 {}", path_str(&build.join("README"))),
            &format!("dir 755 {}", path_str(&outside)),
            "missing - -",
        ]
    );
}

// ---------------------------------------------------------------- steps.sh

/// Runs `steps(held, last)` as the host would, from `dir`.
fn run_steps(held: &[RemoteCmd], last: Option<&RemoteCmd>, dir: &Path, stdout: Stdio) -> Child {
    let cmd = steps(held, last);
    Command::new(&cmd.argv[0]).args(&cmd.argv[1..]).current_dir(dir).stdout(stdout).spawn().expect("run sh")
}

#[test]
fn steps_run_each_part_with_its_own_arguments_then_stream_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let show = "printf '[%s]' \"$@\"; echo";
    let a = RemoteCmd::script("a", show, &["x y", "two\nlines", ""]);
    let b = RemoteCmd::script("b", show, &["$HOME"]);
    let last = RemoteCmd::script("c", "echo \"$#: $*\"", &["1", "2"]);
    let out = run_steps(&[a, b], Some(&last), dir.path(), Stdio::piped()).wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[x y][two\nlines][]\nepnix-step a 0\n[$HOME]\nepnix-step b 0\n2: 1 2\n"
    );
}

#[test]
fn a_failed_step_ends_the_chain_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let a = RemoteCmd::script("a", "echo out; echo one >&2; echo two >&2; exit 3", &[]);
    let b = RemoteCmd::script("b", ": >b-ran", &[]);
    let out = run_steps(&[a, b.clone()], Some(&b), dir.path(), Stdio::piped()).wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\nepnix-stderr one\nepnix-stderr two\nepnix-step a 3\n");
    assert!(!dir.path().join("b-ran").exists(), "a step ran after a failed one");
}

/// A deployer that goes away while a step runs: that step runs to its end,
/// the next one never starts.
#[test]
fn steps_without_their_deployer_finish_the_step_and_start_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let a = RemoteCmd::script("a", "sleep 0.3; echo said; : >a-done", &[]);
    let b = RemoteCmd::script("b", ": >b-ran", &[]);
    let mut child = run_steps(&[a, b.clone()], Some(&b), dir.path(), Stdio::piped());
    drop(child.stdout.take());
    child.wait().unwrap();
    assert!(dir.path().join("a-done").exists(), "the running step was cut short");
    assert!(!dir.path().join("b-ran").exists(), "a step started without its deployer");
}

// ---------------------------------------------------- inspect.sh, import.sh

/// A `nix-store` stand-in: `--check-validity --print-invalid PATHS` prints
/// those that are no directory; `--import` keeps its stdin in `$IMPORTED`
/// and fails on a stream without its end (`END`), as the real one fails on
/// a stream cut short.
const NIX_STORE: &str = r#"#!/bin/sh
case $1 in
  --check-validity)
    shift 2
    for p; do [ -d "$p" ] || echo "$p"; done
    ;;
  --import)
    cat >"$IMPORTED"
    grep -q '^END$' "$IMPORTED" || { echo "error: unexpected end-of-file" >&2; exit 1; }
    ;;
  *) exit 2 ;;
esac
"#;

fn with_nix_store(host: &FakeHost) {
    std::fs::write(host.bin().join("nix-store"), NIX_STORE).unwrap();
    std::fs::set_permissions(host.bin().join("nix-store"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn inspect_names_the_asked_store_paths_the_host_lacks() {
    let host = FakeHost::new();
    with_nix_store(&host);
    let have = path_str(&host.store_path("have"));
    let lacks = path_str(&host.root.join("store/lacks"));
    let inspect = |asked: &str| {
        let ran = host.run(INSPECT, &["@@n@@", "no", "/nowhere/procServ", asked]);
        assert_eq!(ran.code, Some(0), "{ran:?}");
        crate::host::parse_inspect("@@n@@", &ran.stdout).unwrap().missing_paths
    };
    assert_eq!(inspect(&format!("{have}\n{lacks}")), Some([lacks.into()].into()));
    assert_eq!(inspect(&have), Some(Default::default()));
    assert_eq!(inspect(""), None, "asked nothing");
}

#[test]
fn import_takes_the_whole_stream_or_fails() {
    let host = FakeHost::new();
    with_nix_store(&host);
    let imported = host.root.join("imported");
    for (stream, code) in [("nar\nEND\n", Some(0)), ("nar, cut sh", Some(1))] {
        let mut child = host
            .command(IMPORT, &[])
            .env("IMPORTED", &imported)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stream.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), code, "{out:?}");
        assert_eq!(std::fs::read_to_string(&imported).unwrap(), stream);
    }
}
