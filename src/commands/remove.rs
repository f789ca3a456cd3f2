//! `remove`: takes a top off a host, and with `--purge` its generations.

use anyhow::Result;
use schemars::JsonSchema;
use serde::Serialize;

use super::{Changing, Freed, collect_garbage, connect, update_conserver};
use crate::conserver::ConserverReport;
use crate::exit::{BadInput, Exit, Failure};
use crate::host;
use crate::layout;
use crate::output::{Render, Style};
use crate::progress::Progress;
use crate::remote;
use crate::table;
use crate::target::Selection;

/// What `remove` should do.
#[derive(Clone, Debug)]
pub struct RemoveOptions {
    pub selection: Selection,
    /// Also delete the profile, its generations and the top's state.
    pub purge: bool,
    /// Run the host's garbage collector afterwards.
    pub gc: bool,
    pub changing: Changing,
}

/// `remove`'s result.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoveReport {
    pub host: String,
    pub top: String,
    /// The IOCs whose units were stopped and removed.
    pub removed: Vec<String>,
    /// The generations deleted (with `--purge`).
    pub deleted: Vec<u32>,
    pub freed: Option<Freed>,
    /// The host's conserver include file, when the host asks for conserver.
    pub conserver: Option<ConserverReport>,
}

/// Takes a top off a host: stops and removes its units. Its generations
/// stay (a later deploy or rollback brings it back) unless `purge`.
pub fn run(opts: &RemoveOptions, progress: &Progress) -> Result<RemoveReport> {
    let sel = &opts.selection;
    let (target, config, remote, state) = connect(sel, progress, Some(opts.changing), host::Depth::Current)?;
    if state.current.is_none() && state.units_of(&sel.top).next().is_none() && state.generations.is_empty() {
        return Err(BadInput::new(format!("top `{}` is not on `{target}`: nothing to remove", sel.top)).into());
    }
    let step = progress.step(&target.label, "remove");
    let output = remote.output(&remote::REMOVE.for_top(&sel.top, &[if opts.purge { "yes" } else { "no" }]))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let removed: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("removed "))
        .filter_map(layout::ioc_of_unit)
        .map(str::to_owned)
        .collect();
    let deleted: Vec<u32> = stdout.lines().filter_map(|l| l.strip_prefix("deleted ")?.parse().ok()).collect();
    if !output.status.success() {
        return Err(Failure::new(
            Exit::NeedsAttention,
            format!(
                "removing top `{}` from `{target}` failed halfway ({}): removed {}\n{}\n\
                 hint: look with `epnix-deploy status {target} {}`",
                sel.top,
                output.status,
                if removed.is_empty() { "nothing".to_owned() } else { removed.join(", ") },
                crate::process::tail(&String::from_utf8_lossy(&output.stderr)),
                sel.top
            ),
        )
        .into());
    }
    step.done(&format!("{} unit(s) removed", removed.len()));
    let conserver = update_conserver(&remote, &target, config.as_ref(), progress);
    let freed = if opts.gc { collect_garbage(&remote, &target, progress)? } else { None };
    remote.close();
    Ok(RemoveReport { host: target.label.clone(), top: sel.top.clone(), removed, deleted, freed, conserver })
}

impl Render for RemoveReport {
    fn text(&self, _: &Style) -> String {
        let list = |v: Vec<String>| if v.is_empty() { "none".to_owned() } else { v.join(", ") };
        let mut rows = vec![["HOST", "TOP", "REMOVED", "DELETED", "FREED"].map(String::from)];
        rows.push([
            self.host.clone(),
            self.top.clone(),
            list(self.removed.clone()),
            list(self.deleted.iter().map(u32::to_string).collect()),
            self.freed.as_ref().map_or("-".to_owned(), Freed::to_string),
        ]);
        table::render(&rows)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> RemoveReport {
        RemoveReport {
            host: "ioc1".into(),
            top: "myTop".into(),
            removed: vec!["iocA".into(), "iocB".into()],
            deleted: vec![1, 2, 3],
            freed: Some(Freed { store_paths: 7, mebibytes: 3.5 }),
            conserver: None,
        }
    }

    #[test]
    fn the_table() {
        insta::assert_snapshot!(sample().text(&Style::default()));
    }
}
