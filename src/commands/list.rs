//! `list`: a top's generations on a host, with what became of each.

use anyhow::Result;
use schemars::JsonSchema;
use serde::Serialize;

use super::{RollbackRecord, connect, current};
use crate::host::{self, Generation, HostState, Outcome};
use crate::output::{self, Render, Style};
use crate::progress::Progress;
use crate::table;
use crate::target::Selection;

/// `list`'s result.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListReport {
    pub host: String,
    pub top: String,
    /// Oldest first.
    pub generations: Vec<GenerationInfo>,
}

/// One generation.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GenerationInfo {
    pub generation: u32,
    /// When it was made, in RFC 3339.
    pub created: String,
    pub current: bool,
    /// What became of it.
    pub outcome: Outcome,
    /// The generation's store path.
    pub store_path: String,
    /// The top's build it runs.
    pub build: String,
    /// `user@machine`, when epnix-deploy made it.
    pub deployer: Option<String>,
    /// The flake's git commit, `dirty`, or `null` when unknown.
    pub revision: Option<String>,
    /// The IOCs it runs; `null` for a generation made by hand.
    pub iocs: Option<Vec<String>>,
    /// The latest time the host rolled back away from it.
    pub rolled_back: Option<RollbackRecord>,
    /// The same times as seconds since the epoch, for tables.
    #[serde(skip)]
    created_secs: i64,
}

fn info(state: &HostState, g: &Generation) -> GenerationInfo {
    let rolled_back = state.rollbacks.iter().rev().find(|e| e.from == Some(g.number) && e.at >= g.created);
    let made_by = g.made_by.as_ref();
    GenerationInfo {
        generation: g.number,
        created: output::rfc3339(g.created),
        current: state.current == Some(g.number),
        outcome: state.outcome(g),
        store_path: g.store_path.to_string(),
        build: g.top_build().to_string(),
        deployer: made_by.map(|m| m.deployer.clone()).filter(|d| !d.is_empty()),
        revision: made_by.map(|m| m.revision.clone()).filter(|r| !r.is_empty()),
        iocs: made_by.map(|m| m.iocs.clone()),
        rolled_back: rolled_back.map(RollbackRecord::from),
        created_secs: g.created,
    }
}

pub fn run(sel: &Selection, progress: &Progress) -> Result<ListReport> {
    let (target, _, remote, state) = connect(sel, progress, None, host::Depth::History)?;
    remote.close();
    current(&state, &target, &sel.top)?;
    Ok(ListReport {
        host: target.label.clone(),
        top: sel.top.clone(),
        generations: state.generations.iter().map(|g| info(&state, g)).collect(),
    })
}

impl Render for ListReport {
    fn text(&self, style: &Style) -> String {
        let mut table =
            vec![["GEN", "DATE (UTC)", "", "OUTCOME", "BUILD", "DEPLOYER", "REVISION", "IOCS"].map(String::from)];
        for row in &self.generations {
            table.push([
                row.generation.to_string(),
                output::utc_minutes(row.created_secs),
                if row.current { "(current)".into() } else { String::new() },
                row.outcome.as_str().to_owned(),
                if style.short_paths { output::short_store_path(&row.build) } else { row.build.clone() },
                row.deployer.clone().unwrap_or_else(|| "-".into()),
                row.revision.as_deref().map_or("-".into(), |r| r.chars().take(12).collect()),
                match &row.iocs {
                    None => "(made by hand)".into(),
                    Some(iocs) if iocs.is_empty() => "(none)".into(),
                    Some(iocs) => iocs.join(", "),
                },
            ]);
        }
        table::render(&table)
    }

    fn notes(&self) -> Vec<String> {
        let rolled_back = self.generations.iter().filter_map(|g| Some((g.generation, g.rolled_back.as_ref()?)));
        rolled_back
            .map(|(generation, rb)| {
                let why = match rb.reason.as_str() {
                    "unconfirmed" => "the switch was not confirmed in time, so the host did it by itself",
                    "reboot" => "the host rebooted before the switch was confirmed, and did it at boot",
                    "failed-checks" => "its IOCs failed their health checks",
                    other => other,
                };
                let failed = if rb.ok { "" } else { " (some steps of the rollback failed)" };
                format!(
                    "note: generation {generation} was rolled back to {} at {}: {why}{failed}",
                    rb.to.map_or("nothing".to_owned(), |t| t.to_string()),
                    rb.at
                )
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::host::{MadeBy, RollbackEvent};

    /// Three generations: one by hand, one rolled back by the host at boot,
    /// and the current one.
    pub(crate) fn sample() -> ListReport {
        let mut state = crate::commands::tests::six(&[2]);
        state.generations.truncate(3);
        state.current = Some(3);
        for g in &mut state.generations {
            g.store_path = format!("/nix/store/{}-myTop-generation", format!("{}", g.number).repeat(32)).into();
        }
        state.verdicts.iter_mut().zip(&state.generations).for_each(|(v, g)| v.store_path = g.store_path.clone());
        for g in &mut state.generations[1..] {
            g.build = Some(format!("/nix/store/{}-myTop", "a".repeat(32)).into());
            g.made_by = Some(MadeBy {
                deployer: "ops@laptop".into(),
                revision: "226d58f0c2b1e0aa".into(),
                iocs: vec!["iocA".into(), "iocB".into()],
            });
            g.created += 1_795_314_000;
        }
        state.rollbacks =
            vec![RollbackEvent { at: 1_795_314_250, from: Some(2), to: Some(1), reason: "reboot".into(), ok: true }];
        ListReport {
            host: "ioc1".into(),
            top: "myTop".into(),
            generations: state.generations.iter().map(|g| info(&state, g)).collect(),
        }
    }

    #[test]
    fn the_table_and_its_notes() {
        let report = sample();
        insta::assert_snapshot!(report.text(&Style { short_paths: true }));
        insta::assert_snapshot!(report.notes().join("\n"));
    }
}
