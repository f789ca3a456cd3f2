//! Safe activation: a switch (a deploy or a rollback) ends with healthy
//! IOCs on the generation asked for, or with the host back where it was.
//!
//! Before the switch the host gets a restore point (the top's current units
//! and generation) and a rollback script, both under
//! `/var/lib/epnix-deploy/<top>/`. The same script undoes the switch in every
//! case: run by the deployer when a health check fails, by a transient
//! systemd timer ("magic rollback") when the deployer stops answering, or at
//! boot when a reboot ended that timer. The deployer keeps the timer from
//! firing with heartbeats, sent by a thread of their own so that nothing the
//! checks do can delay them, and disarms it only over a *new* SSH login,
//! which proves the host can still be reached.
//!
//! Whoever moves the restore point away first owns the outcome: the rollback
//! script, or the confirmation. So a late confirmation and a firing timer can
//! never both win. Before the tool claims an outcome, it reads the host.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::config::{HEARTBEAT_INTERVAL_SECS, HealthCheck};
use crate::exit::{BadInput, Exit, Failure};
use crate::host;
use crate::layout;
use crate::plan::{Guarded, Plan};
use crate::process::tail;
use crate::progress::{Progress, Step};
use crate::remote;
use crate::ssh::{self, ConnectionLost, Detached, Lock, LoginAhead, Remote, RemoteCmd};
use crate::target::Target;

/// Set by the Ctrl-C handler; long steps look at it and stop.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// How a switch protects the host.
#[derive(Clone, Debug)]
pub struct Safety {
    /// Arm the host-side rollback timer.
    pub magic_rollback: bool,
    /// How long the host waits for the deployer before it rolls back.
    pub confirm_timeout: Duration,
    /// How long all health checks together may take.
    pub activation_timeout: Duration,
    /// What each IOC must pass, by name: the IOCs that run something new
    /// their own checks, the others only to stay up.
    pub checks: BTreeMap<String, HealthCheck>,
}

/// Takes the deploy lock of `top` on the host, after checking that the SSH
/// user is root and (with `expect_name`, from [`Target::expected_hostname`])
/// that the host answers as that name: a wrong host or user is refused
/// before anything is written there. With `inspect` (its arguments,
/// [`host::inspect_args`]), the host's state is read under the lock in the
/// same round trip.
/// Returns the holder line of a deploy that died holding it, for a note.
pub fn take_lock(
    remote: &mut Remote,
    target: &Target,
    top: &str,
    who: &str,
    expect_name: Option<&str>,
    break_lock: bool,
    inspect: Option<Vec<String>>,
) -> Result<(Option<String>, Option<host::HostState>)> {
    if break_lock {
        let said = remote.run(&remote::BREAK_LOCK.for_top(top, &[] as &[&str]))?;
        if let Some(pids) = said.trim().strip_prefix("foreign") {
            return Err(Failure::new(
                Exit::Busy,
                format!(
                    "on `{target}`: the lock of top `{top}` is held by process(es){pids}, which are not a deploy: they were left alone\n\
                     hint: look at them on the host (`ps -p {}`) and end them if they should not be there",
                    pids.split_whitespace().collect::<Vec<_>>().join(",")
                ),
            )
            .into());
        }
    }
    let mut args = vec![who.to_owned(), expect_name.unwrap_or("").to_owned()];
    if let Some(inspect) = &inspect {
        args.push(remote::INSPECT.text());
        args.extend(inspect.iter().cloned());
    }
    let end = inspect.as_ref().map(|a| format!("{} end", a[0]));
    match remote.hold_lock(&remote::LOCK.for_top(top, &args), end.as_deref())? {
        Lock::Held { stale, report } => {
            let state = inspect.map(|a| host::parse_inspect(&a[0], &report)).transpose()?;
            Ok((stale, state))
        }
        Lock::Busy(holder) => Err(Failure::new(
            Exit::Busy,
            format!(
                "another deploy of top `{top}` to `{target}` is running: {holder}\n\
                 hint: wait for it; if that deploy is gone (its machine crashed, or its network hangs), \
                 break the lock with `--break-lock`"
            ),
        )
        .into()),
        Lock::NotRoot(user) => Err(BadInput::new(format!(
            "on `{target}`: the SSH user `{user}` is not root, and managing IOC units needs root; nothing was changed"
        ))
        .hint(
            "set `sshUser = \"root\"` for this host (or give it as `root@host`), or a `privilegeEscalationCommand` \
             that makes the user root",
        )
        .into()),
        Lock::WrongHost(name) => Err(wrong_host(target, &name).into()),
    }
}

/// A host whose name is not the one it must answer as
/// ([`Target::expected_hostname`]), as microvm.nix's `sshSwitch` refuses
/// it: a wrong address in the config must not replace another host's IOCs.
pub fn wrong_host(target: &Target, hostname: &str) -> BadInput {
    let err = BadInput::new(format!(
        "`{}` answers as host `{hostname}`, not `{}`: refusing to change it",
        target.hostname,
        target.expected_hostname().unwrap_or("?")
    ));
    match &target.name {
        Some(name) => {
            let at = format!("{}.hosts.{}", crate::config::ROOT, crate::config::attr(name));
            err.hint(format!(
                "if `{}` is another machine, fix `{at}.hostname`; if it is the right one, set \
                 `{at}.expectedHostname = \"{hostname}\"` (the machine's real name), or pass `--skip-hostname-check`",
                target.hostname
            ))
        }
        None => err.hint("pass `--skip-hostname-check` if it is the right machine"),
    }
}

/// The refusal of a command that would change a top while the host has a
/// rollback of an unconfirmed switch pending: that rollback would undo it.
pub fn rollback_pending(target: &Target, top: &str) -> Failure {
    Failure::new(
        Exit::Busy,
        format!(
            "on `{target}`: a rollback of an unconfirmed switch of `{top}` is pending (armed, running, or due at the next boot); nothing was changed\n\
             hint: it fires within that switch's `confirmTimeout`; wait for it, then check with `epnix-deploy list {target} {top}`"
        ),
    )
}

/// Saves the restore point and, with magic rollback, arms the timer and the
/// rollback at boot, in one call: the host is never left with one of them
/// and not the other.
pub fn prepare_cmd(plan: &Plan, safety: &Safety) -> RemoteCmd {
    let top = plan.top.as_str();
    let mut args = vec![
        if safety.magic_rollback { "yes" } else { "no" }.to_owned(),
        layout::rollback_unit(top),
        format!("{}s", safety.confirm_timeout.as_secs()),
        layout::boot_rollback_unit(),
        layout::state_dir().to_string(),
        remote::ROLLBACK.text(),
        remote::ROLLBACK_AT_BOOT.text(),
    ];
    args.extend(plan.touched());
    remote::PREPARE.for_top(top, &args)
}

/// The heartbeats of an armed rollback, on a thread of their own. Each is a
/// new channel of the master connection, run by `ssh` itself (for this
/// machine, a process of its own), so no check command, journal read or
/// switch can hold one up.
struct Heartbeat {
    stop: Arc<AtomicBool>,
    /// What the host last said: [`BEAT_OK`], [`BEAT_ROLLING_BACK`] or [`BEAT_LOST`].
    said: Arc<AtomicU8>,
    thread: Option<JoinHandle<()>>,
}

const BEAT_OK: u8 = 0;
/// The host has claimed the restore point: its own rollback runs.
const BEAT_ROLLING_BACK: u8 = 1;
/// No heartbeat got through for longer than the interval.
const BEAT_LOST: u8 = 2;

impl Heartbeat {
    fn start(beat: Detached) -> Heartbeat {
        let stop = Arc::new(AtomicBool::new(false));
        let said = Arc::new(AtomicU8::new(BEAT_OK));
        let interval = Duration::from_secs(HEARTBEAT_INTERVAL_SECS);
        let thread = {
            let (stop, said) = (Arc::clone(&stop), Arc::clone(&said));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let now = match beat.run(interval) {
                        Ok(out) if out.status.success() => BEAT_OK,
                        Ok(out) if String::from_utf8_lossy(&out.stdout).contains("rolling-back") => BEAT_ROLLING_BACK,
                        _ => BEAT_LOST,
                    };
                    said.store(now, Ordering::SeqCst);
                    if now == BEAT_ROLLING_BACK {
                        return;
                    }
                    while started.elapsed() < interval && !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
        };
        Heartbeat { stop, said, thread: Some(thread) }
    }

    fn host_rolls_back(&self) -> bool {
        self.said.load(Ordering::SeqCst) == BEAT_ROLLING_BACK
    }

    fn end(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.end();
    }
}

/// How the confirmation proves the host can still be reached: a new SSH
/// login. On this machine there is no login to prove; what the
/// confirmation proves is that the tool, from a process of its own, still
/// reaches the host's systemd after the checks, alive and in charge.
pub fn fresh_login(target: &Target) -> &'static str {
    match target.local {
        Some(_) => "from a new process",
        None => "over a new SSH login",
    }
}

/// The confirmation made ready ahead ([`LoginAhead::start_then`]): a new
/// login, and on it `confirm.sh` started and waiting on the host for the
/// word to go. Confirming then costs one round trip.
fn ready_confirmation(target: &Target, confirm: RemoteCmd) -> LoginAhead<Waiting> {
    LoginAhead::start_then(target, move |fresh| {
        let waiting = fresh.detached(&confirm).spawn().with_context(|| format!("could not run `{confirm}`"))?;
        Ok(Waiting(Some(waiting)))
    })
}

/// `confirm.sh` waiting for the word to go. Dropped unused, its stdin
/// closes: it ends with nothing confirmed, and is waited for.
struct Waiting(Option<std::process::Child>);

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(mut waiting) = self.0.take() {
            drop(waiting.stdin.take());
            let _ = waiting.wait();
        }
    }
}

/// Says `go` to a confirmation made ready ahead, and waits for its end.
fn confirm_now(ahead: LoginAhead<Waiting>, target: &Target) -> Result<()> {
    let (fresh, mut waiting) = ahead.finish_then().with_context(|| format!("confirming {}", fresh_login(target)))?;
    let mut waiting = waiting.0.take().expect("started with the login");
    // A write that fails means `confirm.sh` ended already: its status says how.
    if let Some(mut stdin) = waiting.stdin.take() {
        let _ = std::io::Write::write_all(&mut stdin, b"go\n");
    }
    let output = waiting.wait_with_output();
    fresh.close();
    let output = output.context("waiting for `confirm.sh`")?;
    match output.status.code() {
        Some(0) => Ok(()),
        Some(255) | None => {
            Err(ConnectionLost(format!("on `{target}`: the SSH connection was lost confirming the switch")).into())
        }
        Some(code) => anyhow::bail!(
            "`confirm.sh` failed (exit status: {code}):\n{}",
            tail(&String::from_utf8_lossy(&output.stderr))
        ),
    }
}

/// The host began its own rollback while the deployer was still at work.
#[derive(Debug)]
struct HostRollsBack;

impl std::fmt::Display for HostRollsBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the host began to roll back by itself: no heartbeat reached it within `confirmTimeout`")
    }
}

impl std::error::Error for HostRollsBack {}

/// Where a switch started from, for the messages and for judging where the
/// host ended.
pub struct Before {
    /// The generation before the switch; `None` when the top was not there.
    pub generation: Option<u32>,
}

impl Before {
    fn describe(&self, top: &str) -> String {
        match self.generation {
            Some(g) => format!("generation {g}"),
            None => format!("no deployment of `{top}` (this was its first deploy)"),
        }
    }
}

/// What goes to the host in the switch's own call, before the rollback is
/// armed: what would each cost a round trip of its own.
#[derive(Default)]
pub struct Ahead {
    /// The store paths the host lacks, from a local `nix-store --export`
    /// whose output is the call's stdin; a stream cut short (the deployer
    /// stopped) changes nothing on the host.
    pub export: Option<crate::process::Running>,
    /// The host-wide profile of its procServ from Nix, set before the
    /// top's switch: a rollback of the top leaves it.
    pub procserv: Option<RemoteCmd>,
}

/// The protected switch: a restore point and (with magic rollback) an armed
/// timer and heartbeats first; then the switch, the health checks, and
/// either the confirmation over a new login or the rollback. Every way it
/// can end is classified here, after reading the host where it can.
/// Returns the generation the host runs.
pub fn switch_safely(
    remote: &Remote,
    target: &Target,
    plan: &Plan,
    before: &Before,
    safety: &Safety,
    mut ahead: Ahead,
    progress: &Progress,
) -> Result<Option<u32>> {
    let (top, checks) = (plan.top.as_str(), &safety.checks);
    // The copy, arming, the switch and the checks are one call: each starts
    // on the host as soon as the one before is done, with no round trip
    // between them.
    let prepare = prepare_cmd(plan, safety);
    let wait = wait_cmd(checks, safety.activation_timeout);
    let mut held = Vec::new();
    if ahead.export.is_some() {
        held.push(remote::IMPORT.cmd(&[] as &[&str]));
    }
    held.extend(ahead.procserv.clone());
    held.extend([prepare.clone(), plan.switch_cmd(Guarded::ByRestorePoint)]);
    let stdin = ahead.export.as_mut().and_then(crate::process::Running::take_stdout).map(Into::into);
    let mut stream = remote.lines_fed(&remote::steps(&held, wait.as_ref()), stdin)?;
    if let Some(export) = ahead.export.take() {
        let step = progress.step(&target.label, "copy");
        let imported = StepEnd::read(&mut stream, "import", target);
        let exported = export.wait();
        // Ctrl-C ended the export too; an import it cut short changed nothing.
        if interrupted() && imported.as_ref().is_ok_and(|i| i.code != 0) {
            return Err(Failure::new(Exit::Interrupted, format!("interrupted: nothing changed on `{target}`")).into());
        }
        let imported = imported?;
        if imported.code != 0 {
            let local = exported.err().map(|err| format!("\n{err}")).unwrap_or_default();
            anyhow::bail!(
                "on `{target}`: `nix-store --import` of the store paths failed (exit status: {}):\n{}{local}",
                imported.code,
                imported.stderr.trim_end()
            );
        }
        step.done("");
    }
    if let Some(procserv) = &ahead.procserv {
        let step = progress.step(&target.label, "procServ");
        let set = StepEnd::succeeded(&mut stream, procserv, target)?;
        step.done(&format!("{} -> {}", layout::procserv_profile(), set.stdout.trim()));
    }
    let step = progress.step(&target.label, "arm rollback");
    StepEnd::succeeded(&mut stream, &prepare, target)?;
    let mut heartbeat = None;
    if safety.magic_rollback {
        heartbeat =
            Some(Heartbeat::start(remote.detached(&remote::HEARTBEAT.for_top(top, &[layout::rollback_unit(top)]))));
        step.done(&format!(
            "the host rolls back by itself unless confirmed within {}s (also after a reboot)",
            safety.confirm_timeout.as_secs()
        ));
    } else {
        step.done("restore point saved (magic rollback off)");
    }

    let mut switched = None;
    let mut confirm_ahead = None;
    let outcome = (|| -> Result<Option<u32>> {
        let step = progress.step(&target.label, "switch");
        let end = StepEnd::read(&mut stream, "switch", target)?;
        let generation = switch_result(end.code, &end.stdout, &end.stderr, top)?;
        switched = generation;
        step.done(&generation.map(|g| format!("generation {g}")).unwrap_or_default());
        // The confirmation's new login, with `confirm.sh` started on it to
        // wait for the word to go, is made while the IOCs settle: it still
        // proves that the host takes new logins once they are up, and it is
        // ready when the checks end. Three times what the first login took,
        // and a round of the checks, leave room for the channel after it.
        let settle = Duration::from_secs(checks.values().map(|c| c.settle_time).min().unwrap_or(0));
        let lead = remote.login_took() * 3 + Duration::from_millis(300);
        let confirm_args = {
            let verdict = generation.map_or_else(|| "-".to_owned(), |g| g.to_string());
            let store_path = plan.generation_path.clone().map_or_else(|| "-".to_owned(), |p| p.into_string());
            [layout::rollback_unit(top), verdict, store_path, "wait".to_owned()]
        };
        let mut up_since = None;
        let mut ready = || {
            let up = *up_since.get_or_insert_with(Instant::now);
            if safety.magic_rollback && confirm_ahead.is_none() && up.elapsed() + lead >= settle {
                confirm_ahead = Some(ready_confirmation(target, remote::CONFIRM.for_top(top, &confirm_args)));
            }
        };
        let step = progress.step(&target.label, "check");
        let watch = || match &heartbeat {
            Some(h) if h.host_rolls_back() => Err(HostRollsBack.into()),
            _ => Ok(()),
        };
        if wait.is_some() {
            follow_checks(remote, &mut stream, checks, safety.activation_timeout, &watch, &mut ready, &step)?;
        }
        if safety.magic_rollback && confirm_ahead.is_none() {
            confirm_ahead = Some(ready_confirmation(target, remote::CONFIRM.for_top(top, &confirm_args)));
        }
        step.done(&format!("{} IOC(s) healthy", checks.len()));
        Ok(generation)
    })();
    // The checks are over: the host-side waiter ends with its channel.
    drop(stream);
    let host_rolled_back = heartbeat.as_ref().is_some_and(Heartbeat::host_rolls_back);
    let back_to = before.describe(top);

    match outcome {
        Ok(generation) => {
            // The heartbeats go on until the confirmation is in: a slow new
            // login must not let the timer fire.
            let step = progress.step(&target.label, "confirm");
            let confirmed = match confirm_ahead.take() {
                Some(ahead) => confirm_now(ahead, target),
                None => {
                    let verdict = generation.map_or_else(|| "-".to_owned(), |g| g.to_string());
                    let store_path = plan.generation_path.clone().map_or_else(|| "-".to_owned(), |p| p.into_string());
                    remote
                        .run(&remote::CONFIRM.for_top(top, &[layout::rollback_unit(top), verdict, store_path]))
                        .map(drop)
                }
            };
            if let Some(h) = heartbeat.as_mut() {
                h.end();
            }
            match confirmed {
                Ok(_) => {
                    let how = format!("{}; rollback disarmed", fresh_login(target));
                    step.done(if safety.magic_rollback { &how } else { "" });
                    // A switch that kept the generation still runs on it.
                    Ok(generation.or(before.generation))
                }
                Err(err) if err.to_string().contains("already rolled back") => {
                    drop(step);
                    Err(settled(remote, target, top, before, "the host rolled back by itself before the switch could be confirmed (is `confirmTimeout` too short for the checks?)".into()))
                }
                Err(err) => {
                    let fate = if safety.magic_rollback {
                        format!(
                            "the host rolls back by itself to {back_to} unless confirmed within {}s of the last contact",
                            safety.confirm_timeout.as_secs()
                        )
                    } else {
                        "magic rollback is off: the host stays on it, and its restore point stays until the next switch"
                            .to_owned()
                    };
                    Err(Failure::new(
                        Exit::Unknown,
                        format!(
                            "the IOCs are healthy on generation {}, but the switch could not be confirmed: {err:#}\n{fate}\n\
                             hint: check where it ended with `epnix-deploy list {target} {top}`",
                            generation.or(before.generation).map_or("?".to_owned(), |g| g.to_string()),
                        ),
                    )
                    .into())
                }
            }
        }
        Err(err) if host_rolled_back || err.downcast_ref::<HostRollsBack>().is_some() => {
            drop(heartbeat);
            Err(settled(remote, target, top, before, format!("{err:#}")))
        }
        Err(err) if ssh::is_connection_lost(&err) || interrupted() => {
            drop(heartbeat);
            let now_on = switched.map_or("the new generation".to_owned(), |g| format!("generation {g}"));
            let fate = if safety.magic_rollback {
                format!(
                    "the armed rollback is in charge: unless confirmed, the host goes back to {back_to} by itself within {}s (or at its next boot)",
                    safety.confirm_timeout.as_secs()
                )
            } else {
                format!("magic rollback is off: the host may stay on {now_on}, unchecked")
            };
            Err(Failure::new(
                Exit::Unknown,
                format!(
                    "{err:#}\nthe outcome on `{target}` is unknown: {fate}\n\
                     hint: see where it ended with `epnix-deploy list {target} {top}`; `epnix-deploy rollback {target} {top}` goes back by hand"
                ),
            )
            .into())
        }
        Err(err) if err.downcast_ref::<Claimed>().is_some() => {
            drop(heartbeat);
            // Nothing changed: the restore point goes, and with it the timer.
            remote.run(&remote::CONFIRM.for_top(top, &[layout::rollback_unit(top), "-".into(), "-".into()]))?;
            Err(BadInput::new(format!("on `{target}`: {err}; nothing was changed"))
                .hint("IOC names must be unique per host: rename one of the IOCs")
                .into())
        }
        Err(err) => {
            drop(heartbeat);
            let step = progress.step(&target.label, "roll back");
            // Whether the rollback itself went through: then a failure is of
            // the restored IOCs.
            let mut rolled_back = false;
            let verified = roll_back(remote, top, "failed-checks").and_then(|rb| {
                rolled_back = true;
                let restored = rb.iocs.iter().map(|ioc| (ioc.clone(), HealthCheck::running())).collect();
                check_health(remote, &restored, safety.activation_timeout, &|| Ok(()), &step)
            });
            match verified {
                Ok(()) => {
                    step.done(&format!("back to {back_to}"));
                    Err(Failure::new(
                        Exit::Failed,
                        format!("{err:#}\nrolled back: `{target}` is back to {back_to}, and its IOCs are active"),
                    )
                    .into())
                }
                Err(rollback_err) if ssh::is_connection_lost(&rollback_err) => Err(Failure::new(
                    Exit::Unknown,
                    format!(
                        "{err:#}\nrolling back to {back_to}, the connection was lost: {rollback_err:#}\n\
                         hint: the host finishes a started rollback by itself (also at its next boot); see where it ended with `epnix-deploy list {target} {top}`"
                    ),
                )
                .into()),
                Err(rollback_err) if rolled_back => Err(Failure::new(
                    Exit::NeedsAttention,
                    format!(
                        "{err:#}\nrolled back to {back_to}, but the restored IOCs do not run: {rollback_err:#}\n\
                         the host needs attention\n\
                         hint: look with `epnix-deploy status {target} {top}` and `journalctl -u 'epnix-*'` on the host"
                    ),
                )
                .into()),
                Err(rollback_err) => {
                    drop(step);
                    Err(settled(remote, target, top, before, format!("{err:#}\nthe rollback reported: {rollback_err:#}")))
                }
            }
        }
    }
    // A confirmation made ready for a switch that is not confirmed ends
    // unused when `confirm_ahead` drops.
}

/// The error of a switch whose rollback is done or under way on the host:
/// waits for the host's own rollback to end, reads where the host is, and
/// says what is true: back where it was and running ([`Exit::Failed`]), or
/// not ([`Exit::NeedsAttention`]).
fn settled(remote: &Remote, target: &Target, top: &str, before: &Before, why: String) -> anyhow::Error {
    let back_to = before.describe(top);
    let deadline = Instant::now() + Duration::from_secs(120);
    let state = loop {
        match host::inspect(remote, top, host::Depth::Current) {
            Ok(state) if !state.rollback_pending || Instant::now() > deadline => break Ok(state),
            Ok(_) => std::thread::sleep(Duration::from_millis(500)),
            Err(err) => break Err(err),
        }
    };
    let state = match state {
        Ok(state) => state,
        Err(err) => {
            return Failure::new(
                Exit::Unknown,
                format!(
                    "{why}\nreading the host afterwards failed: {err:#}\n\
                     hint: see where it ended with `epnix-deploy list {target} {top}`"
                ),
            )
            .into();
        }
    };
    let inactive: Vec<&String> = state
        .units_of(top)
        .filter(|(ioc, _)| state.processes.get(*ioc).is_none_or(|p| p.state.active != "active"))
        .map(|(ioc, _)| ioc)
        .collect();
    // The host's rollback says whether each of its steps went through.
    let rollback_ok = state.rollbacks.last().is_none_or(|e| e.ok);
    if state.current == before.generation && inactive.is_empty() && !state.rollback_pending && rollback_ok {
        Failure::new(
            Exit::Failed,
            format!("{why}\nrolled back: `{target}` is back to {back_to}, and its IOCs are active"),
        )
        .into()
    } else {
        let now_on = state.current.map_or("no generation".to_owned(), |g| format!("generation {g}"));
        let down = if !rollback_ok {
            ", and some steps of its rollback failed (see `epnix-deploy list`)".to_owned()
        } else if inactive.is_empty() {
            String::new()
        } else {
            format!(
                ", and these IOCs are not active: {}",
                inactive.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )
        };
        Failure::new(
            Exit::NeedsAttention,
            format!(
                "{why}\nthe host needs attention: `{top}` is on {now_on} (it was on {back_to}){down}\n\
                 hint: look with `epnix-deploy status {target} {top}` and `journalctl -u 'epnix-*'` on the host"
            ),
        )
        .into()
    }
}

/// Makes sure the IOCs of a plan that changes nothing run: starts those
/// that do not, restarts none. Returns the generation the host runs.
pub fn ensure_running(
    remote: &Remote,
    plan: &Plan,
    current: Option<u32>,
    progress: &Progress,
    target: &Target,
    timeout: Duration,
) -> Result<Option<u32>> {
    let generation = current.map(|g| format!("generation {g} (unchanged)")).unwrap_or_default();
    let step = progress.step(&target.label, "switch");
    // Every IOC already enabled and active: nothing to do on the host.
    if plan.actions().is_empty() {
        step.done(&format!("{generation}; every IOC already runs"));
        return Ok(current);
    }
    apply(remote, plan, Guarded::No)?;
    step.done(&generation);
    let step = progress.step(&target.label, "activate");
    let starting: BTreeMap<String, HealthCheck> =
        plan.health_checks(&BTreeMap::new()).into_keys().map(|ioc| (ioc, HealthCheck::active())).collect();
    check_health(remote, &starting, timeout, &|| Ok(()), &step)?;
    step.done(&format!("{} IOC(s) active", starting.len()));
    Ok(current)
}

/// A unit name claimed by another top, found by the switch before it changed
/// anything.
#[derive(Debug)]
struct Claimed(String);

impl std::fmt::Display for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Claimed {}

/// Carries out the plan's switch in one round trip; returns the generation
/// the profile points at afterwards.
pub fn apply(remote: &Remote, plan: &Plan, guarded: Guarded) -> Result<Option<u32>> {
    let output = remote.output(&plan.switch_cmd(guarded))?;
    // ssh reserves 255 for its own failures.
    let code = output.status.code().unwrap_or(255);
    switch_result(
        code,
        &String::from_utf8_lossy(&output.stdout),
        &tail(&String::from_utf8_lossy(&output.stderr)),
        &plan.top,
    )
}

/// What `switch.sh` ended with, from its exit CODE, its stdout and the tail
/// of its stderr: the generation the profile points at afterwards.
fn switch_result(code: i32, stdout: &str, stderr: &str, top: &str) -> Result<Option<u32>> {
    match code {
        0 => {}
        20 => {
            let words: Vec<&str> = stdout.trim().split(' ').collect();
            let (unit, owner) = (words.get(1).unwrap_or(&"?"), words.get(2).unwrap_or(&"-"));
            let owner = if *owner == "-" {
                "no top (a unit epnix-deploy did not write)".to_owned()
            } else {
                format!("top `{owner}`")
            };
            return Err(Claimed(format!("`{unit}` belongs to {owner}, which claimed it first")).into());
        }
        // Nothing changed: the host rolled back before the switch began.
        21 => return Err(HostRollsBack.into()),
        255 => {
            return Err(ConnectionLost(format!("on `{top}`: the SSH connection was lost during the switch")).into());
        }
        _ => anyhow::bail!("the switch failed (exit status: {code}):\n{stderr}"),
    }
    let generation = stdout
        .lines()
        .find_map(|l| l.strip_prefix("generation "))
        .map(|link| host::parse_generation(link).with_context(|| format!("`nix-env` left the profile at `{link}`")));
    Ok(match generation {
        Some(g) => Some(g?),
        None => None,
    })
}

/// How a step of a [`remote::steps`] call ended.
struct StepEnd {
    code: i32,
    stdout: String,
    /// The tail of its stderr, on a failure.
    stderr: String,
}

impl StepEnd {
    /// Reads the end of step `cmd` (a script command), which must succeed.
    fn succeeded(lines: &mut ssh::Lines<'_>, cmd: &RemoteCmd, target: &Target) -> Result<StepEnd> {
        let end = StepEnd::read(lines, cmd.script.unwrap_or_default(), target)?;
        if end.code != 0 {
            anyhow::bail!("on `{target}`: `{cmd}` failed (exit status: {}):\n{}", end.code, end.stderr.trim_end());
        }
        Ok(end)
    }

    /// Reads the lines of step `name` up to its end. A call that ends
    /// before (the connection was lost) is [`ConnectionLost`].
    fn read(lines: &mut ssh::Lines<'_>, name: &str, target: &Target) -> Result<StepEnd> {
        let (mut stdout, mut stderr) = (String::new(), String::new());
        let lost = || ConnectionLost(format!("on `{target}`: the SSH connection was lost during `{name}.sh`"));
        loop {
            let Some(line) = lines.next_line()? else { return Err(lost().into()) };
            if let Some(end) = line.strip_prefix("epnix-step ") {
                let code = end.strip_prefix(name).and_then(|c| c.trim().parse().ok());
                let code = code.with_context(|| format!("`steps.sh` said `{line}` at the end of `{name}.sh`"))?;
                return Ok(StepEnd { code, stdout, stderr });
            }
            let (to, line) = match line.strip_prefix("epnix-stderr ") {
                Some(line) => (&mut stderr, line),
                None => (&mut stdout, line.as_str()),
            };
            to.push_str(line);
            to.push('\n');
        }
    }
}

/// What the rollback did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolledBack {
    pub to: Option<u32>,
    /// The IOCs whose units were restored and restarted.
    pub iocs: Vec<String>,
}

/// Rolls back now, over the deployer's connection, with the host's own
/// script. The armed timer stays: if the connection drops halfway, it (or
/// the next boot) finishes the job, and if it fires while this runs, only
/// one of them gets the restore point.
fn roll_back(remote: &Remote, top: &str, reason: &str) -> Result<RolledBack> {
    let mut argv = vec!["/bin/sh".to_owned(), layout::records(top).join("restore/rollback.sh").into_string()];
    argv.extend(remote::context(top));
    argv.push(reason.to_owned());
    let output = remote.run(&RemoteCmd::new(argv))?;
    // The timer has nothing left to do.
    let _ = remote.run(&RemoteCmd::systemctl(["stop".to_owned(), format!("{}.timer", layout::rollback_unit(top))]));
    parse_rollback(&output)
}

fn parse_rollback(output: &str) -> Result<RolledBack> {
    let mut iocs = Vec::new();
    let mut to = None;
    for line in output.lines() {
        if let Some(unit) = line.strip_prefix("restored ") {
            iocs.extend(layout::ioc_of_unit(unit).map(str::to_owned));
        } else if let Some(rest) = line.strip_prefix("rolled back from ") {
            let rest = rest.split(',').next().unwrap_or(rest);
            let target = rest.rsplit(' ').next().unwrap_or("none");
            to = target.parse().ok();
        } else if line.starts_with("nothing to roll back") {
            anyhow::bail!("the host had no restore point: its own rollback got there first");
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

/// How often the host-side waiter looks at the units, in seconds.
const CHECK_INTERVAL: &str = "0.2";

/// Checks that each IOC comes up and stays up: the unit is active, its ready
/// line appears in this run's output, it runs `settle_time` without a
/// restart (timed from the ready line's own journal time), and its check
/// command passes. One host-side command (`wait_healthy.sh`) watches all
/// the units at once and streams what it sees; `watch` runs on each of its
/// lines (a tick comes every [`CHECK_INTERVAL`]) and ends the checks with
/// its error (the host began its own rollback). Fails on the first IOC that
/// fails.
pub fn check_health(
    remote: &Remote,
    checks: &BTreeMap<String, HealthCheck>,
    timeout: Duration,
    watch: &dyn Fn() -> Result<()>,
    step: &Step,
) -> Result<()> {
    let Some(wait) = wait_cmd(checks, timeout) else { return Ok(()) };
    let mut events = remote.lines(&wait)?;
    follow_checks(remote, &mut events, checks, timeout, watch, &mut || {}, step)
}

/// The host-side waiter for `checks`; none when there is nothing to check.
fn wait_cmd(checks: &BTreeMap<String, HealthCheck>, timeout: Duration) -> Option<RemoteCmd> {
    if checks.is_empty() {
        return None;
    }
    let mut args = vec![timeout.as_secs().to_string(), CHECK_INTERVAL.to_owned()];
    for (ioc, check) in checks {
        args.extend([
            layout::unit_name(ioc),
            check.ready_line.clone().unwrap_or_default(),
            check.settle_time.to_string(),
        ]);
    }
    Some(remote::WAIT_HEALTHY.cmd(&args))
}

/// Reads the waiter's `events` to a verdict (see [`check_health`]);
/// `ready` runs on each of them (a tick comes every [`CHECK_INTERVAL`]) from
/// when every IOC is up and only settles.
fn follow_checks(
    remote: &Remote,
    events: &mut ssh::Lines<'_>,
    checks: &BTreeMap<String, HealthCheck>,
    timeout: Duration,
    watch: &dyn Fn() -> Result<()>,
    ready: &mut dyn FnMut(),
    step: &Step,
) -> Result<()> {
    let fail = |ioc: &str, check: String| -> anyhow::Error {
        let journal = remote
            .run(&RemoteCmd::journalctl(["--no-pager", "--lines=15", "-o", "cat", "--unit", &layout::unit_name(ioc)]))
            .unwrap_or_default();
        HealthFailure { ioc: ioc.to_owned(), check, journal }.into()
    };
    let mut stages: BTreeMap<&str, &str> = checks.keys().map(|ioc| (ioc.as_str(), "starting")).collect();
    let ioc_of = |unit: &str| -> Result<&String> {
        let ioc = layout::ioc_of_unit(unit).unwrap_or_default();
        checks.get_key_value(ioc).map(|(name, _)| name).with_context(|| format!("the host's checks named `{unit}`"))
    };
    loop {
        if interrupted() {
            anyhow::bail!(ConnectionLost("interrupted during the health checks".into()));
        }
        watch()?;
        if stages.values().all(|stage| *stage != "starting") {
            ready();
        }
        let Some(line) = events.next_line()? else {
            anyhow::bail!("the health checks on the host ended without a verdict");
        };
        let (event, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let (unit, why) = rest.split_once(' ').unwrap_or((rest, ""));
        match event {
            "tick" => continue,
            "done" => return Ok(()),
            "failed" => return Err(fail(ioc_of(unit)?, why.to_owned())),
            "timeout" => {
                let ioc = ioc_of(unit)?;
                let check = match (why, &checks[ioc].ready_line) {
                    ("starting", Some(line)) => format!("its ready line `{line}` did not appear"),
                    ("starting", None) => "its unit did not become active".to_owned(),
                    _ => "it did not settle".to_owned(),
                };
                return Err(fail(ioc, format!("{check} within the activation timeout of {}s", timeout.as_secs())));
            }
            "starting" => {
                stages.insert(ioc_of(unit)?, "starting");
            }
            "settling" => {
                stages.insert(ioc_of(unit)?, "settling");
            }
            "settled" => {
                let ioc = ioc_of(unit)?;
                let check = &checks[ioc];
                if let Some(command) = &check.command {
                    step.update(&format!("{ioc}: running its check command"));
                    run_check_command(remote, ioc, command, check.command_timeout).map_err(|err| match err
                        .downcast::<CheckFailed>()
                    {
                        Ok(failed) => fail(ioc, failed.0),
                        Err(err) => err,
                    })?;
                }
                stages.remove(ioc.as_str());
            }
            _ => anyhow::bail!("the health checks on the host said `{line}`"),
        }
        let waiting: Vec<String> = stages.iter().map(|(ioc, stage)| format!("{ioc} ({stage})")).collect();
        step.update(&format!("checking {}", waiting.join(", ")));
    }
}

/// A check command ran and did not pass.
#[derive(Debug)]
struct CheckFailed(String);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailed {}

/// Runs an IOC's check command on the host, in a scope of its own that is
/// ended with everything in it. A lost connection is an error of its own,
/// never a failed check.
fn run_check_command(remote: &Remote, ioc: &str, command: &str, timeout_secs: u64) -> Result<()> {
    let scope = format!("{}{ioc}-{}", layout::check_scope_prefix(), &host::nonce()[8..20]);
    let output = remote.output(&remote::RUN_CHECK.cmd(&[&timeout_secs.to_string(), command, &scope]))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (said, status) = stdout.trim_end().rsplit_once("\nepnix-check-status ").unwrap_or(("", ""));
    if !output.status.success() || status.is_empty() {
        // run_check.sh itself always ends with 0: anything else is ssh's.
        return Err(ConnectionLost(format!("the SSH connection was lost running the check of `{ioc}`")).into());
    }
    let how = match status {
        "0" => return Ok(()),
        "124" | "137" => format!("timed out after {timeout_secs}s"),
        code => format!("exited with status {code}"),
    };
    Err(CheckFailed(format!("its check command `{command}` {how}:\n{}", tail(said))).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_host_names_both_names_and_the_setting() {
        let config = crate::config::Config::parse(&serde_json::json!({ "hosts": {
            "ioc1": { "hostname": "10.0.0.5" },
            "ioc2": { "hostname": "10.0.0.6", "expectedHostname": "lab-ioc-07" },
        } }))
        .unwrap();
        let err = wrong_host(&Target::resolve("ioc1", Some(&config)).unwrap(), "lab-ioc-03").to_string();
        assert!(
            err.starts_with("`10.0.0.5` answers as host `lab-ioc-03`, not `ioc1`: refusing to change it\n"),
            "{err}"
        );
        let hint = err.split_once("\nhint: ").expect("a hint").1;
        assert!(hint.contains("fix `epnixDeploy.hosts.ioc1.hostname`"), "{hint}");
        assert!(hint.contains("set `epnixDeploy.hosts.ioc1.expectedHostname = \"lab-ioc-03\"`"), "{hint}");
        assert!(hint.contains("`--skip-hostname-check`"), "{hint}");
        let err = wrong_host(&Target::resolve("ioc2", Some(&config)).unwrap(), "ioc2").to_string();
        assert!(err.starts_with("`10.0.0.6` answers as host `ioc2`, not `lab-ioc-07`"), "{err}");
    }

    #[test]
    fn rollback_output_names_the_generation_and_the_iocs() {
        let out = "restored epnix-a.service\nrestored epnix-b.service\nrolled back from 4 to 3\n";
        assert_eq!(parse_rollback(out).unwrap(), RolledBack { to: Some(3), iocs: vec!["a".into(), "b".into()] });
        assert_eq!(parse_rollback("rolled back from 1 to none\n").unwrap().to, None);
        assert_eq!(parse_rollback("rolled back from 4 to 3, with errors (see above)\n").unwrap().to, Some(3));
        assert!(parse_rollback("nothing to roll back\n").is_err());
    }
}
