//! Progress on stderr: one line per host and step, with elapsed time.
//!
//! How much shows is the [`Verbosity`]: nothing at all (`Quiet`), the steps
//! (`Normal`), or the steps and every command as it runs (`Verbose`). Steps
//! are indicatif spinners only on a terminal that can draw them (stderr is
//! a terminal and `TERM` is set and not `dumb`); everywhere else (CI logs,
//! pipes, `TERM=dumb`, `Verbose`) the same steps are plain lines. stdout is
//! never touched: it carries results only.
//!
//! A run over many hosts gives each host a [`Progress`] of its own
//! ([`Progress::for_host`]): on a terminal, one line per host that each of
//! its steps rewrites, while the host works; elsewhere the same plain lines,
//! which name their host anyway. Each host remembers its own failed step.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How much a run tells on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verbosity {
    /// No steps, no notes: only the error, which the caller prints.
    Quiet,
    /// The steps, as spinners on a terminal and as lines elsewhere.
    #[default]
    Normal,
    /// The steps as lines, and every command as it runs: `host: $ …` for a
    /// remote one (a host-side script by its name), `local: $ …` for a
    /// local program.
    Verbose,
}

/// How steps are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Silent,
    Spinners,
    Lines,
}

/// Spinners need a terminal that can move the cursor: stderr is one, and
/// `TERM` names one that is not `dumb`. indicatif would hide itself on the
/// others and show nothing at all, so the decision is ours.
fn can_draw(stderr_is_terminal: bool, term: Option<&str>) -> bool {
    stderr_is_terminal && term.is_some_and(|t| !t.is_empty() && t != "dumb")
}

fn mode(verbosity: Verbosity, stderr_is_terminal: bool, term: Option<&str>) -> Mode {
    match verbosity {
        Verbosity::Quiet => Mode::Silent,
        Verbosity::Normal if can_draw(stderr_is_terminal, term) => Mode::Spinners,
        Verbosity::Normal | Verbosity::Verbose => Mode::Lines,
    }
}

/// Whether commands are traced. Process-wide rather than in [`Progress`]:
/// the commands run in `process` and `ssh`, far below the code that holds
/// the `Progress` (and on the heartbeat thread), and threading a reporter
/// through every function that runs one would change every signature on
/// the way for a debugging aid. One run has one verbosity.
static TRACE: AtomicBool = AtomicBool::new(false);

/// With [`Verbosity::Verbose`], prints `origin: $ command` on stderr:
/// `origin` is the host's label for a remote command, `local` for a local
/// one.
pub fn trace(origin: &str, command: &str) {
    if TRACE.load(Ordering::Relaxed) {
        eprintln!("{}", trace_line(origin, command));
    }
}

fn trace_line(origin: &str, command: &str) -> String {
    format!("{origin}: $ {command}")
}

pub struct Progress {
    mode: Mode,
    bars: Option<MultiProgress>,
    /// A host's one line, on a terminal, in a run over many hosts.
    line: Option<ProgressBar>,
    /// The host and name of the first step that ended unfinished.
    failed: Arc<OnceLock<(String, String)>>,
}

impl Progress {
    /// [`Verbosity::Normal`].
    pub fn new() -> Progress {
        Progress::with_verbosity(Verbosity::Normal)
    }

    /// Also turns the tracing of commands ([`trace`]) on for `Verbose`, off
    /// otherwise.
    pub fn with_verbosity(verbosity: Verbosity) -> Progress {
        TRACE.store(verbosity == Verbosity::Verbose, Ordering::Relaxed);
        let term = std::env::var("TERM").ok();
        let mode = mode(verbosity, std::io::stderr().is_terminal(), term.as_deref());
        let bars = (mode == Mode::Spinners).then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress { mode, bars, line: None, failed: Arc::default() }
    }

    /// The progress of one host in a run over many: its steps share one
    /// line on a terminal, and it remembers its own failed step. End it
    /// with [`Progress::finish_host`].
    pub fn for_host(&self, host: &str) -> Progress {
        let line = self.bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {wide_msg} {elapsed:>4}").expect("valid template"),
            );
            bar.set_prefix(format!("{host}:"));
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Progress { mode: self.mode, bars: self.bars.clone(), line, failed: Arc::default() }
    }

    /// The same host's line, with a failed step of its own: for the host's
    /// next piece of work (its next top).
    pub fn for_next(&self) -> Progress {
        Progress { mode: self.mode, bars: self.bars.clone(), line: self.line.clone(), failed: Arc::default() }
    }

    /// Ends a host's line with how the host ended: the line leaves the
    /// live area and stays above it as text (elsewhere it is a plain line).
    pub fn finish_host(&self, host: &str, ok: bool, summary: &str) {
        let line = format!("{host}: {summary}");
        match (&self.line, &self.bars) {
            (Some(bar), Some(bars)) => {
                bar.finish_and_clear();
                let _ = bars.println(format!("{} {line}", if ok { "✓" } else { "✗" }));
            }
            _ if self.mode == Mode::Silent => {}
            _ => eprintln!("{line}"),
        }
    }

    /// An error, shown whatever the verbosity (`-q` keeps errors), clear
    /// of the spinners.
    pub fn error(&self, message: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(message);
            }
            None => eprintln!("{message}"),
        }
    }

    /// Starts a step; finish it with [`Step::done`]. A step dropped unfinished
    /// (an error returned early) is shown as failed, and the first one is
    /// remembered ([`Progress::failed_step`]).
    pub fn step(&self, host: &str, name: &str) -> Step {
        let label = format!("{host}: {name}");
        let bar = match (&self.line, &self.bars) {
            (Some(line), _) => {
                line.set_message(format!("{name} ..."));
                None
            }
            (None, Some(bars)) => {
                let bar = bars.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix} {wide_msg} {elapsed:>4}").expect("valid template"),
                );
                bar.set_prefix(label.clone());
                bar.enable_steady_tick(Duration::from_millis(100));
                Some(bar)
            }
            (None, None) => {
                if self.mode == Mode::Lines {
                    eprintln!("{label} ...");
                }
                None
            }
        };
        Step {
            bar,
            line: self.line.clone(),
            silent: self.mode == Mode::Silent,
            host: host.to_owned(),
            name: name.to_owned(),
            label,
            started: Instant::now(),
            finished: false,
            failed: Arc::clone(&self.failed),
        }
    }

    /// A message that is not a step, kept clear of the spinners.
    pub fn note(&self, message: &str) {
        match (&self.bars, self.mode) {
            (Some(bars), _) => {
                let _ = bars.println(message);
            }
            (None, Mode::Silent) => {}
            (None, _) => eprintln!("{message}"),
        }
    }

    /// The host and name of the first step that ended unfinished, i.e. the
    /// step an error came out of.
    pub fn failed_step(&self) -> Option<(String, String)> {
        self.failed.get().cloned()
    }
}

impl Default for Progress {
    fn default() -> Progress {
        Progress::new()
    }
}

pub struct Step {
    bar: Option<ProgressBar>,
    /// The host's one line, which this step rewrites rather than owns.
    line: Option<ProgressBar>,
    silent: bool,
    host: String,
    name: String,
    label: String,
    started: Instant,
    finished: bool,
    failed: Arc<OnceLock<(String, String)>>,
}

impl Step {
    /// Shows what the step is doing right now.
    pub fn update(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_owned());
        }
        if let Some(line) = &self.line {
            line.set_message(format!("{}: {message}", self.name));
        }
    }

    pub fn done(mut self, detail: &str) {
        self.finish("done", detail);
    }

    fn finish(&mut self, outcome: &str, detail: &str) {
        self.finished = true;
        if self.silent {
            return;
        }
        let elapsed = format!("{:.1}s", self.started.elapsed().as_secs_f64());
        let sep = if detail.is_empty() { "" } else { ": " };
        if let Some(host_line) = &self.line {
            host_line.set_message(format!("{} {outcome} in {elapsed}{sep}{detail}", self.name));
            return;
        }
        let line = format!("{} {outcome} in {elapsed}{sep}{detail}", self.label);
        match &self.bar {
            Some(bar) => {
                bar.set_style(ProgressStyle::with_template("{msg}").expect("valid template"));
                bar.finish_with_message(format!("{} {line}", if outcome == "done" { "✓" } else { "✗" }));
            }
            None => eprintln!("{line}"),
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if !self.finished {
            // Only the first: a later step may fail because of it.
            let _ = self.failed.set((self.host.clone(), self.name.clone()));
            self.finish("failed", "");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spinners_only_on_a_terminal_that_can_draw_them() {
        assert_eq!(mode(Verbosity::Normal, true, Some("xterm-256color")), Mode::Spinners);
        assert_eq!(mode(Verbosity::Normal, true, Some("dumb")), Mode::Lines);
        assert_eq!(mode(Verbosity::Normal, true, Some("")), Mode::Lines);
        assert_eq!(mode(Verbosity::Normal, true, None), Mode::Lines);
        assert_eq!(mode(Verbosity::Normal, false, Some("xterm")), Mode::Lines);
        assert_eq!(mode(Verbosity::Verbose, true, Some("xterm")), Mode::Lines);
        assert_eq!(mode(Verbosity::Quiet, true, Some("xterm")), Mode::Silent);
        assert_eq!(mode(Verbosity::Quiet, false, None), Mode::Silent);
    }

    #[test]
    fn traced_commands_name_where_they_run() {
        assert_eq!(trace_line("ioc1", "sh lock.sh demo"), "ioc1: $ sh lock.sh demo");
        assert_eq!(trace_line("local", "nix eval --json .#epnixDeploy"), "local: $ nix eval --json .#epnixDeploy");
    }

    #[test]
    fn the_first_unfinished_step_is_the_failed_one() {
        let progress = Progress::with_verbosity(Verbosity::Quiet);
        progress.step("ioc1", "evaluate").done("");
        assert_eq!(progress.failed_step(), None);
        drop(progress.step("ioc1", "connect"));
        drop(progress.step("ioc1", "roll back"));
        assert_eq!(progress.failed_step(), Some(("ioc1".to_owned(), "connect".to_owned())));
    }

    #[test]
    fn each_host_of_a_run_remembers_its_own_failed_step() {
        let progress = Progress::with_verbosity(Verbosity::Quiet);
        let (one, two) = (progress.for_host("ioc1"), progress.for_host("ioc2"));
        drop(one.step("ioc1", "check"));
        two.step("ioc2", "check").done("");
        assert_eq!(one.failed_step(), Some(("ioc1".to_owned(), "check".to_owned())));
        assert_eq!(two.failed_step(), None);
        assert_eq!(progress.failed_step(), None);
    }
}
