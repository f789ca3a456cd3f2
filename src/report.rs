//! What a switch (a deploy or a rollback) reports: the summary table, or
//! `--json`.

use std::collections::BTreeMap;

use camino::Utf8PathBuf;
use serde::Serialize;

use crate::plan::{Plan, Switch};
use crate::target::Target;

/// The outcome of a switch, printed as the summary or as `--json`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub host: String,
    pub top: String,
    /// The top's build that runs.
    pub store_path: Utf8PathBuf,
    /// The profile generation the top runs from; `None` on a dry run of a
    /// first deploy.
    pub generation: Option<u32>,
    /// The generation before.
    pub previous_generation: Option<u32>,
    pub new_generation: bool,
    pub dry_run: bool,
    pub iocs: BTreeMap<String, &'static str>,
}

pub fn report(target: &Target, plan: &Plan, generation: Option<u32>, previous: Option<u32>, dry_run: bool) -> Report {
    Report {
        host: target.label.clone(),
        top: plan.top.clone(),
        store_path: plan.build.clone(),
        generation,
        previous_generation: previous,
        new_generation: plan.switch == Switch::New && generation != previous,
        dry_run,
        iocs: plan.iocs.iter().map(|(name, change)| (name.clone(), change.as_str())).collect(),
    }
}

/// Prints the summary table on stdout.
pub fn print_summary(report: &Report) {
    let generation = match (report.generation, report.previous_generation) {
        (_, _) if report.dry_run => "dry run".to_owned(),
        (Some(g), _) if report.new_generation => format!("{g} (new)"),
        (Some(g), Some(p)) if g != p => format!("{g} (was {p})"),
        (Some(g), _) => format!("{g} (unchanged)"),
        (None, _) => "-".to_owned(),
    };
    let mut rows = vec![["HOST".to_owned(), "TOP".into(), "GENERATION".into(), "IOC".into(), "STATUS".into()]];
    for (ioc, status) in &report.iocs {
        rows.push([report.host.clone(), report.top.clone(), generation.clone(), ioc.clone(), (*status).to_owned()]);
    }
    if report.iocs.is_empty() {
        rows.push([report.host.clone(), report.top.clone(), generation, "-".into(), "no IOC enabled".into()]);
    }
    print!("{}", crate::table::render(&rows));
}
