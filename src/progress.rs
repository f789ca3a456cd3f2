//! Progress on stderr: one line per host and step, with elapsed time.
//!
//! On a terminal each step is an indicatif spinner that turns into a finished
//! line; elsewhere (CI logs, pipes) the same steps are plain lines. stdout is
//! never touched: it carries results only.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bars: Option<MultiProgress>,
}

impl Progress {
    /// Spinners when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Progress {
        let tty = std::io::stderr().is_terminal();
        Progress { bars: tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())) }
    }

    /// Starts a step; finish it with [`Step::done`]. A step dropped unfinished
    /// (an error returned early) is shown as failed.
    pub fn step(&self, host: &str, name: &str) -> Step {
        let label = format!("{host}: {name}");
        let bar = match &self.bars {
            Some(bars) => {
                let bar = bars.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix} {wide_msg} {elapsed:>4}").expect("valid template"),
                );
                bar.set_prefix(label.clone());
                bar.enable_steady_tick(Duration::from_millis(100));
                Some(bar)
            }
            None => {
                eprintln!("{label} ...");
                None
            }
        };
        Step { bar, label, started: Instant::now(), finished: false }
    }

    /// A message that is not a step, kept clear of the spinners.
    pub fn note(&self, message: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(message);
            }
            None => eprintln!("{message}"),
        }
    }
}

impl Default for Progress {
    fn default() -> Progress {
        Progress::new()
    }
}

pub struct Step {
    bar: Option<ProgressBar>,
    label: String,
    started: Instant,
    finished: bool,
}

impl Step {
    /// Shows what the step is doing right now.
    pub fn update(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_owned());
        }
    }

    pub fn done(mut self, detail: &str) {
        self.finish("done", detail);
    }

    fn finish(&mut self, outcome: &str, detail: &str) {
        self.finished = true;
        let elapsed = format!("{:.1}s", self.started.elapsed().as_secs_f64());
        let sep = if detail.is_empty() { "" } else { ": " };
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
            self.finish("failed", "");
        }
    }
}
