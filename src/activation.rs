//! Safe activation: a deploy either ends with healthy IOCs on the new
//! generation, or with the host back on the previous one.
//!
//! Before the switch the host gets a restore point (the top's current units
//! and generation) and a rollback script, both under
//! `/var/lib/epnix-deploy/<top>/`. The same script undoes the switch in every
//! case: run by the deployer when a health check fails, or run by a
//! transient systemd timer ("magic rollback") when the deployer stops
//! answering. The deployer keeps the timer from firing with heartbeats over
//! its connection, and disarms it only over a *new* SSH login, which proves
//! the host can still be reached.
//!
//! Whoever moves the restore point away first owns the outcome: the rollback
//! script, or the confirmation. So a late confirmation and a firing timer can
//! never both win.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::config::HealthCheck;
use crate::exit::{BUSY, Failure};
use crate::host;
use crate::layout;
use crate::process::tail;
use crate::progress::Step;
use crate::ssh::{Lock, Remote, RemoteCmd};
use crate::target::Target;

/// Set by the Ctrl-C handler; long steps look at it and stop.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// How a deploy protects the host.
#[derive(Clone, Debug)]
pub struct Safety {
    /// Arm the host-side rollback timer.
    pub magic_rollback: bool,
    /// How long the host waits for the deployer before it rolls back.
    pub confirm_timeout: Duration,
    /// How long all health checks together may take.
    pub activation_timeout: Duration,
}

/// The transient units of the armed rollback: `<name>.timer` and `<name>.service`.
pub fn rollback_unit(top: &str) -> String {
    format!("epnix-rollback-{top}")
}

/// `$1` the lock file, `$2` who asks. Prints `locked` and holds the lock while
/// its stdin is open (the deployer's connection), or prints `busy <holder>`.
/// A holder file whose lock is free was left by a deploy that died: it is
/// reported as `stale`.
const LOCK: &str = r#"set -eu
mkdir -p "${1%/*}"
exec 9>>"$1"
if ! flock -n 9; then
  printf 'busy %s\n' "$(cat "$1.holder" 2>/dev/null || echo unknown)"
  exit 0
fi
stale=$(cat "$1.holder" 2>/dev/null || true)
printf '%s, since %s, pid %s\n' "$2" "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$$" > "$1.holder"
printf 'locked %s\n' "$stale"
while read -r _; do :; done
rm -f "$1.holder"
"#;

/// `$1` the lock file. Ends the process that holds it (from its holder
/// line) so a lock left by a deploy whose connection hangs can be broken.
const BREAK_LOCK: &str = r#"set -eu
pid=$(sed -n 's/.*, pid \([0-9]*\)$/\1/p' "$1.holder" 2>/dev/null || true)
[ -n "$pid" ] && kill "$pid" 2>/dev/null || true
# Children of the holder may keep the lock's file open a moment longer.
flock -w 5 "$1" true || true
rm -f "$1.holder"
"#;

/// Takes the deploy lock of `top` on the host. Returns the holder line of a
/// deploy that died holding it, for a note.
pub fn take_lock(
    remote: &mut Remote,
    target: &Target,
    top: &str,
    who: &str,
    break_lock: bool,
) -> Result<Option<String>> {
    let lock_file = layout::records(top).join("lock");
    if break_lock {
        remote.run(&RemoteCmd::script(BREAK_LOCK, &[lock_file.as_str()]))?;
    }
    match remote.hold_lock(&RemoteCmd::script(LOCK, &[lock_file.as_str(), who]))? {
        Lock::Held { stale } => Ok(stale),
        Lock::Busy(holder) => Err(Failure::new(
            BUSY,
            format!(
                "another deploy of top `{top}` to `{target}` is running: {holder}\n\
                 hint: wait for it; if that deploy is gone (its machine crashed, or its network hangs), \
                 break the lock with `--break-lock`"
            ),
        )
        .into()),
    }
}

/// The rollback script, installed as `restore/rollback.sh` with every restore
/// point. Arguments: top, profile, records directory, reason (a word: it
/// reaches systemd's command line, which expands `$` and `%`).
const ROLLBACK_SCRIPT: &str = r#"set -u
top=$1 profile=$2 records=$3 reason=$4
PATH="$PATH:/nix/var/nix/profiles/default/bin:/run/current-system/sw/bin"
rp=$records/restore.rolling
# Claim the restore point; without it there is nothing to do: the deploy was
# confirmed, or another rollback got it first.
mv "$records/restore" "$rp" 2>/dev/null || { echo "nothing to roll back"; exit 0; }
prev=$(cat "$rp/generation")
from=$(readlink "$profile" 2>/dev/null || echo none); from=${from%-link}; from=${from##*-}
status=0
for f in /etc/systemd/system/epnix-*.service; do
  [ -f "$f" ] || continue
  grep -qxF "X-EpnixDeploy-Top=$top" "$f" || continue
  u=${f##*/}
  if [ ! -f "$rp/units/$u" ]; then
    systemctl disable --now --quiet "$u" || status=1
    rm -f "$f"
  fi
done
for f in "$rp"/units/*.service; do
  [ -f "$f" ] || continue
  u=${f##*/}
  cp "$f" "/etc/systemd/system/$u.epnix-tmp" && mv -f "/etc/systemd/system/$u.epnix-tmp" "/etc/systemd/system/$u" || status=1
done
if [ "$prev" = none ]; then
  # A first deploy: there is no generation to go back to, so the profile goes.
  dir=${profile%/*} name=${profile##*/}
  rm -f "$profile"
  for l in "$dir/$name"-*-link; do
    n=${l##*/}; n=${n#"$name"-}; n=${n%-link}
    case $n in ''|*[!0-9]*) continue ;; esac
    rm -f "$l"; rm -rf "$records/$n"
  done
else
  nix-env --profile "$profile" --switch-generation "$prev" || status=1
fi
systemctl daemon-reload || status=1
for f in "$rp"/units/*.service; do
  [ -f "$f" ] || continue
  u=${f##*/}
  systemctl enable --quiet "$u" || status=1
  systemctl restart "$u" || status=1
  echo "restored $u"
done
echo "$(date +%s) $from $prev $reason $status" >> "$records/events"
rm -rf "$rp"
echo "rolled back from $from to $prev"
exit $status
"#;

/// `$1` top, `$2` profile, `$3` records directory; the rollback script on
/// stdin. Saves the top's current units and generation as the restore point.
const PREPARE: &str = r#"set -eu
rp=$3/restore
rm -rf "$rp" "$rp.rolling"
mkdir -p "$rp/units"
cat > "$rp/rollback.sh"
if [ -L "$2" ]; then
  l=$(readlink "$2"); n=${l%-link}; echo "${n##*-}" > "$rp/generation"
else
  echo none > "$rp/generation"
fi
for f in /etc/systemd/system/epnix-*.service; do
  [ -f "$f" ] || continue
  if grep -qxF "X-EpnixDeploy-Top=$1" "$f"; then cp -p "$f" "$rp/units/"; fi
done
"#;

/// `$1` unit name, `$2` seconds, then the rollback script's arguments.
/// Timers default to a minute of accuracy: ask for a tenth of a second. The
/// heartbeats restart the timer, which the default start rate limit (5 in
/// 10 s) would soon refuse.
const ARM: &str = r#"set -eu
unit=$1 secs=$2; shift 2
systemctl stop "$unit.timer" 2>/dev/null || true
systemctl reset-failed "$unit.service" "$unit.timer" 2>/dev/null || true
systemd-run --quiet --unit="$unit" --on-active="$secs" --timer-property=AccuracySec=100ms \
  --timer-property=StartLimitIntervalSec=0 \
  --description="epnix-deploy: roll back an unconfirmed deploy" /bin/sh "$@"
"#;

/// How often the deployer tells the host it is still there.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// `$1` unit name, `$2` records directory. Restarting the timer starts its
/// countdown again. Fails when the rollback has begun.
const HEARTBEAT: &str = r#"set -eu
[ -d "$2/restore" ] || { echo "the host has begun to roll back" >&2; exit 3; }
systemctl restart "$1.timer"
"#;

/// `$1` unit name, `$2` records directory. Disarms the timer and takes the
/// restore point away; fails if the rollback got there first.
const CONFIRM: &str = r#"set -eu
systemctl stop "$1.timer" 2>/dev/null || true
mv "$2/restore" "$2/restore.confirmed" 2>/dev/null || { echo "the host has already rolled back" >&2; exit 3; }
rm -rf "$2/restore.confirmed"
"#;

/// Saves the restore point and installs the rollback script.
pub fn prepare(remote: &Remote, top: &str) -> Result<()> {
    let cmd = RemoteCmd::script(PREPARE, &[top, layout::profile(top).as_str(), layout::records(top).as_str()])
        .with_stdin(ROLLBACK_SCRIPT.to_owned());
    remote.run(&cmd).map(drop)
}

fn rollback_args(top: &str, reason: &str) -> Vec<String> {
    let records = layout::records(top);
    vec![
        records.join("restore/rollback.sh").into_string(),
        top.to_owned(),
        layout::profile(top).into_string(),
        records.into_string(),
        reason.to_owned(),
    ]
}

/// Arms the host to roll back by itself after `timeout` without a heartbeat.
pub fn arm(remote: &Remote, top: &str, timeout: Duration) -> Result<()> {
    let unit = rollback_unit(top);
    let secs = format!("{}s", timeout.as_secs().max(1));
    let mut args = vec![unit.as_str(), secs.as_str()];
    let rollback = rollback_args(top, "unconfirmed");
    args.extend(rollback.iter().map(String::as_str));
    remote.run(&RemoteCmd::script(ARM, &args)).map(drop)
}

pub fn heartbeat(remote: &Remote, top: &str) -> Result<()> {
    remote.run(&RemoteCmd::script(HEARTBEAT, &[&rollback_unit(top), layout::records(top).as_str()])).map(drop)
}

/// Confirms the deploy over a new SSH login: the proof that the host can
/// still be reached by the deployer after the switch.
pub fn confirm(target: &Target, top: &str) -> Result<()> {
    let fresh = Remote::connect(target).context("confirming over a new SSH login")?;
    let result = fresh.run(&RemoteCmd::script(CONFIRM, &[&rollback_unit(top), layout::records(top).as_str()]));
    fresh.close();
    result.map(drop)
}

/// Confirms without a timer (magic rollback off): only the restore point goes.
pub fn release(remote: &Remote, top: &str) -> Result<()> {
    remote.run(&RemoteCmd::script(CONFIRM, &[&rollback_unit(top), layout::records(top).as_str()])).map(drop)
}

/// What the rollback did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolledBack {
    pub to: Option<u32>,
    /// The IOCs whose units were restored and restarted.
    pub iocs: Vec<String>,
}

/// Rolls back now, over the deployer's connection, with the host's own script.
pub fn roll_back(remote: &Remote, top: &str, reason: &str) -> Result<RolledBack> {
    let unit = rollback_unit(top);
    // The timer must not fire into the rollback we run ourselves.
    remote.run(&RemoteCmd::new(["systemctl", "stop", &format!("{unit}.timer")]))?;
    let mut argv = vec!["/bin/sh".to_owned()];
    argv.extend(rollback_args(top, reason));
    let output = remote.run(&RemoteCmd::new(argv))?;
    parse_rollback(&output)
}

fn parse_rollback(output: &str) -> Result<RolledBack> {
    let mut iocs = Vec::new();
    let mut to = None;
    for line in output.lines() {
        if let Some(unit) = line.strip_prefix("restored ") {
            iocs.extend(layout::ioc_of_unit(unit).map(str::to_owned));
        } else if let Some(rest) = line.strip_prefix("rolled back from ") {
            let target = rest.rsplit(' ').next().unwrap_or("none");
            to = target.parse().ok();
        } else if line == "nothing to roll back" {
            anyhow::bail!("the host had no restore point: it had already rolled back, or the deploy was confirmed");
        }
    }
    Ok(RolledBack { to, iocs })
}

/// A health check that did not pass.
#[derive(Debug)]
pub struct HealthFailure {
    pub ioc: String,
    pub check: String,
    pub journal: String,
}

impl std::fmt::Display for HealthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IOC `{}` failed its health check: {}", self.ioc, self.check)?;
        if !self.journal.trim().is_empty() {
            write!(f, "\nlast lines of its log:\n{}", tail(&self.journal))?;
        }
        Ok(())
    }
}

impl std::error::Error for HealthFailure {}

/// `$1` nonce, then pairs of an invocation id and a ready line (empty for
/// none). Prints, per invocation, whether the line and a crash appeared in
/// the output of that run of the unit. The crash is procServ's
/// `@@@ Received a sigChild`: without `--oneshot` procServ restarts a dead
/// IOC itself and systemd never sees the crash.
const PROBE: &str = r#"set -u
nonce=$1; shift
while [ $# -ge 2 ]; do
  id=$1 line=$2; shift 2
  out=$(journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID="$id" 2>/dev/null || true)
  ready=no crashed=no
  if [ -n "$line" ] && printf '%s\n' "$out" | grep -qF -- "$line"; then ready=yes; fi
  if printf '%s\n' "$out" | grep -qF -- '@@@ Received a sigChild'; then crashed=yes; fi
  printf '%s %s %s %s\n' "$nonce" "$id" "$ready" "$crashed"
done
"#;

/// `$1` seconds, `$2` the command.
const RUN_CHECK: &str = r#"timeout --kill-after=2 "$1" sh -c "$2" 2>&1"#;

/// Where one IOC is in its checks.
#[derive(Clone, Debug, PartialEq)]
enum Stage {
    /// Not active yet, or its ready line has not appeared.
    Starting,
    /// Ready since this instant; settling.
    Ready(Instant),
    Passed,
}

/// Checks that each IOC comes up and stays up: the unit is active, its ready
/// line appears in this run's output, it runs `settle_time` without a
/// restart, and its check command passes. `keepalive` runs on every round
/// (the magic rollback's heartbeat). Fails on the first IOC that fails.
pub fn check_health(
    remote: &Remote,
    checks: &BTreeMap<String, HealthCheck>,
    timeout: Duration,
    keepalive: &dyn Fn() -> Result<()>,
    step: &Step,
) -> Result<()> {
    if checks.is_empty() {
        return Ok(());
    }
    let units: BTreeMap<String, String> = checks.keys().map(|ioc| (layout::unit_name(ioc), ioc.clone())).collect();
    let show = host::show_units_cmd(units.keys().cloned());
    let started = Instant::now();
    let mut last_keepalive: Option<Instant> = None;
    let mut baseline: BTreeMap<String, host::UnitState> = BTreeMap::new();
    let mut stages: BTreeMap<&String, Stage> = checks.keys().map(|ioc| (ioc, Stage::Starting)).collect();
    let fail = |ioc: &str, check: String| -> anyhow::Error {
        let journal = remote
            .run(&RemoteCmd::new([
                "journalctl",
                "--no-pager",
                "--lines=15",
                "-o",
                "cat",
                "--unit",
                &layout::unit_name(ioc),
            ]))
            .unwrap_or_default();
        HealthFailure { ioc: ioc.to_owned(), check, journal }.into()
    };
    loop {
        if interrupted() {
            anyhow::bail!(crate::ssh::ConnectionLost("interrupted during the health checks".into()));
        }
        if last_keepalive.is_none_or(|t| t.elapsed() >= HEARTBEAT_INTERVAL) {
            keepalive()?;
            last_keepalive = Some(Instant::now());
        }
        let states = host::parse_show(&remote.run(&show)?);
        for (unit, ioc) in &units {
            let state = states.get(unit).cloned().unwrap_or_default();
            let first = baseline.entry(unit.clone()).or_insert_with(|| state.clone());
            if state.active == "failed" {
                return Err(fail(ioc, format!("the unit failed ({})", state.sub)));
            }
            if state.restarts > first.restarts || (!first.invocation.is_empty() && state.invocation != first.invocation)
            {
                return Err(fail(ioc, "it crashed and systemd restarted it".into()));
            }
            if first.invocation.is_empty() {
                *first = state.clone();
            }
        }

        // One round trip for all the journals that matter now.
        let nonce = host::nonce();
        let mut probe_args = vec![nonce.clone()];
        for (unit, ioc) in &units {
            let state = &states.get(unit).cloned().unwrap_or_default();
            if state.active == "active" && !state.invocation.is_empty() {
                probe_args.push(state.invocation.clone());
                probe_args.push(checks[ioc].ready_line.clone().unwrap_or_default());
            }
        }
        let probe_args: Vec<&str> = probe_args.iter().map(String::as_str).collect();
        let probe = remote.run(&RemoteCmd::script(PROBE, &probe_args))?;
        let mut journal: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
        for line in probe.lines().filter_map(|l| l.strip_prefix(nonce.as_str())) {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let [id, ready, crashed] = words[..] {
                journal.insert(id, (ready == "yes", crashed == "yes"));
            }
        }

        for (unit, ioc) in &units {
            let check = &checks[ioc];
            let state = states.get(unit).cloned().unwrap_or_default();
            let (ready, crashed) = journal.get(state.invocation.as_str()).copied().unwrap_or((false, false));
            if crashed {
                return Err(fail(ioc, "the IOC exited and procServ restarted it".into()));
            }
            let now = Instant::now();
            let entry = stages.get_mut(ioc).expect("every IOC has a stage");
            if *entry == Stage::Starting && state.active == "active" && (ready || check.ready_line.is_none()) {
                *entry = Stage::Ready(now);
            }
            if let Stage::Ready(since) = *entry {
                if now.duration_since(since) >= Duration::from_secs(check.settle_time) {
                    if let Some(command) = &check.command {
                        step.update(&format!("{ioc}: running its check command"));
                        let secs = check.command_timeout.to_string();
                        let output = remote.output(&RemoteCmd::script(RUN_CHECK, &[&secs, command]))?;
                        if !output.status.success() {
                            let said = String::from_utf8_lossy(&output.stdout).into_owned();
                            let how = match output.status.code() {
                                Some(124) => format!("timed out after {}s", check.command_timeout),
                                _ => format!("exited with {}", output.status),
                            };
                            return Err(fail(ioc, format!("its check command `{command}` {how}:\n{}", tail(&said))));
                        }
                    }
                    *entry = Stage::Passed;
                }
            }
        }

        let waiting: Vec<(&String, &Stage)> =
            stages.iter().filter(|(_, p)| **p != Stage::Passed).map(|(i, p)| (*i, p)).collect();
        if waiting.is_empty() {
            return Ok(());
        }
        step.update(&format!(
            "checking {}",
            waiting
                .iter()
                .map(|(ioc, p)| format!("{ioc} ({})", if **p == Stage::Starting { "starting" } else { "settling" }))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if started.elapsed() > timeout {
            let (ioc, p) = waiting[0];
            let check = match (p, &checks[ioc].ready_line) {
                (Stage::Starting, Some(line)) => format!("its ready line `{line}` did not appear"),
                (Stage::Starting, None) => "its unit did not become active".to_owned(),
                _ => "it did not settle".to_owned(),
            };
            return Err(fail(ioc, format!("{check} within the activation timeout of {}s", timeout.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_output_names_the_generation_and_the_iocs() {
        let out = "restored epnix-a.service\nrestored epnix-b.service\nrolled back from 4 to 3\n";
        assert_eq!(parse_rollback(out).unwrap(), RolledBack { to: Some(3), iocs: vec!["a".into(), "b".into()] });
        assert_eq!(parse_rollback("rolled back from 1 to none\n").unwrap().to, None);
        assert!(parse_rollback("nothing to roll back\n").is_err());
    }
}
