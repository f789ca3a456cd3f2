//! `delete-generation`: deletes generations of a top on a host, never the
//! current one, and prunes their records; `--gc` runs the collector.

use anyhow::Result;
use schemars::JsonSchema;
use serde::Serialize;

use super::{Changing, Freed, collect_garbage, connect, current};
use crate::exit::BadInput;
use crate::host::{self, HostState, Outcome};
use crate::output::{Render, Style};
use crate::progress::Progress;
use crate::remote;
use crate::table;
use crate::target::Selection;

/// Which generations `delete-generation` removes: nix-env's three forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Doomed {
    Numbers(Vec<u32>),
    /// Older than this many days (the current one always stays).
    OlderThanDays(u32),
    /// All but the newest this many healthy ones (and the current one).
    KeepNewest(u32),
}

#[derive(Clone, Debug)]
pub struct DeleteOptions {
    pub selection: Selection,
    pub doomed: Doomed,
    /// Run the host's garbage collector afterwards.
    pub gc: bool,
    /// Say what would go, change nothing.
    pub dry_run: bool,
    pub changing: Changing,
}

/// `delete-generation`'s result.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeleteReport {
    pub host: String,
    pub top: String,
    pub dry_run: bool,
    pub deleted: Vec<u32>,
    pub remaining: Vec<u32>,
    /// What the garbage collector freed, with `--gc`.
    pub freed: Option<Freed>,
}

/// The generations `doomed` names, never the current one.
fn doomed_numbers(state: &HostState, current: u32, doomed: &Doomed, now: i64) -> Vec<u32> {
    let all = state.generations.iter().filter(|g| g.number != current);
    match doomed {
        Doomed::Numbers(numbers) => numbers.clone(),
        Doomed::OlderThanDays(days) => {
            all.filter(|g| now - g.created > i64::from(*days) * 86_400).map(|g| g.number).collect()
        }
        Doomed::KeepNewest(n) => {
            let keep: Vec<u32> = state
                .generations
                .iter()
                .rev()
                .filter(|g| state.outcome(g) == Outcome::Healthy)
                .take(*n as usize)
                .map(|g| g.number)
                .collect();
            all.filter(|g| !keep.contains(&g.number)).map(|g| g.number).collect()
        }
    }
}

pub fn run(opts: &DeleteOptions, progress: &Progress) -> Result<DeleteReport> {
    let sel = &opts.selection;
    let changing = (!opts.dry_run).then_some(opts.changing);
    let (target, _, remote, state) = connect(sel, progress, changing, host::Depth::Current)?;
    let current = current(&state, &target, &sel.top)?.number;
    if let Doomed::Numbers(numbers) = &opts.doomed {
        if numbers.contains(&current) {
            return Err(BadInput::new(format!(
                "generation {current} is the current generation of `{}`; it is not deleted",
                sel.top
            ))
            .hint(format!("roll back first (`epnix-deploy rollback {target} {}`), then delete it", sel.top))
            .into());
        }
        if let Some(n) = numbers.iter().find(|n| !state.generations.iter().any(|g| g.number == **n)) {
            let all: Vec<String> = state.generations.iter().map(|g| g.number.to_string()).collect();
            return Err(BadInput::new(format!("top `{}` on `{target}` has no generation {n}", sel.top))
                .hint(format!("generations there: {}", all.join(", ")))
                .into());
        }
    }
    let mut deleted = doomed_numbers(&state, current, &opts.doomed, state.now);
    deleted.sort_unstable();
    deleted.dedup();
    let remaining: Vec<u32> = state.generations.iter().map(|g| g.number).filter(|n| !deleted.contains(n)).collect();
    let report = |freed| DeleteReport {
        host: target.label.clone(),
        top: sel.top.clone(),
        dry_run: opts.dry_run,
        deleted: deleted.clone(),
        remaining: remaining.clone(),
        freed,
    };
    if opts.dry_run || deleted.is_empty() {
        remote.close();
        return Ok(report(None));
    }

    let step = progress.step(&target.label, "delete");
    let numbers: Vec<String> = deleted.iter().map(u32::to_string).collect();
    remote.run(&remote::DELETE.for_top(&sel.top, &numbers))?;
    step.done(&format!("{} generation(s) deleted", deleted.len()));
    let freed = if opts.gc { collect_garbage(&remote, &target, progress)? } else { None };
    remote.close();
    Ok(report(freed))
}

impl Render for DeleteReport {
    fn text(&self, _: &Style) -> String {
        let join = |v: &[u32]| {
            if v.is_empty() { "none".to_owned() } else { v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ") }
        };
        let deleted = if self.dry_run { "WOULD DELETE" } else { "DELETED" };
        let mut rows = vec![["HOST", "TOP", deleted, "REMAINING", "FREED"].map(String::from)];
        rows.push([
            self.host.clone(),
            self.top.clone(),
            join(&self.deleted),
            join(&self.remaining),
            match &self.freed {
                Some(f) => f.to_string(),
                None if self.dry_run => "- (dry run)".into(),
                None => "- (no --gc)".into(),
            },
        ]);
        table::render(&rows)
    }
}

/// Parses `--older-than`'s `30d`.
pub fn parse_days(text: &str) -> Result<u32, BadInput> {
    text.strip_suffix('d').and_then(|n| n.parse().ok()).ok_or_else(|| {
        BadInput::new(format!("`--older-than {text}` is not a number of days"))
            .hint("write it as nix-env does, e.g. `30d`")
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::commands::tests::six;

    #[test]
    fn older_than_takes_days() {
        assert_eq!(parse_days("30d").unwrap(), 30);
        assert!(parse_days("30").unwrap_err().to_string().contains("e.g. `30d`"));
    }

    #[test]
    fn keep_counts_healthy_generations_only() {
        let state = six(&[4, 5]);
        // Keep the newest 3 healthy (6, 3, 2) and the current (6).
        assert_eq!(doomed_numbers(&state, 6, &Doomed::KeepNewest(3), 0), [1, 4, 5]);
        assert_eq!(doomed_numbers(&state, 6, &Doomed::OlderThanDays(0), 700), [1, 2, 3, 4, 5]);
    }

    pub(crate) fn sample(dry_run: bool) -> DeleteReport {
        DeleteReport {
            host: "ioc1".into(),
            top: "myTop".into(),
            dry_run,
            deleted: vec![1, 2],
            remaining: vec![3],
            freed: (!dry_run).then_some(Freed { store_paths: 4, mebibytes: 1.25 }),
        }
    }

    #[test]
    fn the_tables() {
        insta::assert_snapshot!(sample(false).text(&Style::default()));
        insta::assert_snapshot!(sample(true).text(&Style::default()));
    }
}
