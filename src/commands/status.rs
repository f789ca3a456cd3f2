//! `status`: where a top stands on a host now, IOC by IOC.

use anyhow::Result;
use schemars::JsonSchema;
use serde::Serialize;

use super::{RollbackRecord, connect};
use crate::host::{self, Outcome};
use crate::layout;
use crate::output::{self, Render, Style};
use crate::progress::Progress;
use crate::table;
use crate::target::Selection;

/// `status`'s result.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub host: String,
    pub top: String,
    /// The current generation; `null` when the top is not deployed.
    pub generation: Option<u32>,
    pub outcome: Option<Outcome>,
    /// The current generation's store path.
    pub store_path: Option<String>,
    /// The top's build the current generation runs.
    pub build: Option<String>,
    /// A switch is unconfirmed and its rollback armed, running, or due at boot.
    pub rollback_pending: bool,
    pub iocs: Vec<IocStatus>,
    pub last_rollback: Option<RollbackRecord>,
}

/// One IOC's unit, as systemd sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IocStatus {
    pub ioc: String,
    pub unit: String,
    /// systemd's `ActiveState`, e.g. `active`, `failed`.
    pub active_state: String,
    /// systemd's `SubState`, e.g. `running`.
    pub sub_state: String,
    /// When it last became active, in RFC 3339.
    pub since: Option<String>,
    /// systemd's restarts of the unit.
    pub restarts: u64,
    /// Why the running process is not what the unit and the profile say.
    pub drift: Option<String>,
}

pub fn run(sel: &Selection, progress: &Progress) -> Result<StatusReport> {
    let (target, _, remote, state) = connect(sel, progress, None, host::Depth::Current)?;
    remote.close();
    let iocs = state
        .units_of(&sel.top)
        .map(|(ioc, _)| {
            let process = state.processes.get(ioc).cloned().unwrap_or_default();
            IocStatus {
                ioc: ioc.clone(),
                unit: layout::unit_name(ioc),
                active_state: process.state.active.clone(),
                sub_state: process.state.sub.clone(),
                since: process.state.since.map(output::rfc3339),
                restarts: process.state.restarts,
                drift: state.drift(ioc).map(|d| d.describe()),
            }
        })
        .collect();
    let current = state.current_generation();
    Ok(StatusReport {
        host: target.label.clone(),
        top: sel.top.clone(),
        generation: state.current,
        outcome: current.map(|g| state.outcome(g)),
        store_path: current.map(|g| g.store_path.to_string()),
        build: current.map(|g| g.top_build().to_string()),
        rollback_pending: state.rollback_pending,
        iocs,
        last_rollback: state.rollbacks.last().map(RollbackRecord::from),
    })
}

impl Render for StatusReport {
    fn text(&self, _: &Style) -> String {
        let mut out = match (self.generation, &self.store_path) {
            (Some(g), Some(path)) => format!(
                "{} on {}: generation {g}, {} ({path})\n",
                self.top,
                self.host,
                self.outcome.map_or("unknown", Outcome::as_str)
            ),
            _ => format!("{} on {}: not deployed\n", self.top, self.host),
        };
        if self.rollback_pending {
            out += "a rollback is pending: the last switch is not confirmed (yet)\n";
        }
        if let Some(rb) = &self.last_rollback {
            out += &format!(
                "last rollback: {}, to generation {} ({})\n",
                rb.at,
                rb.to.map_or("none".to_owned(), |t| t.to_string()),
                rb.reason
            );
        }
        let mut rows = vec![["IOC", "UNIT", "STATE", "SINCE", "RESTARTS", "DRIFT"].map(String::from)];
        for ioc in &self.iocs {
            rows.push([
                ioc.ioc.clone(),
                ioc.unit.clone(),
                format!("{} ({})", ioc.active_state, ioc.sub_state),
                ioc.since.clone().unwrap_or_else(|| "-".into()),
                ioc.restarts.to_string(),
                ioc.drift.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        out + &table::render(&rows)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> StatusReport {
        StatusReport {
            host: "ioc1".into(),
            top: "myTop".into(),
            generation: Some(3),
            outcome: Some(Outcome::Healthy),
            store_path: Some("/nix/store/5v1x3k0hq2n8y9cz0m1p2r3s4t5u6w7a-myTop-generation".into()),
            build: Some("/nix/store/637jmx64rzqbcx8nmhggpywpyiyjqcyc-myTop".into()),
            rollback_pending: false,
            iocs: vec![
                IocStatus {
                    ioc: "iocA".into(),
                    unit: "epnix-iocA.service".into(),
                    active_state: "active".into(),
                    sub_state: "running".into(),
                    since: Some(output::rfc3339(1_795_314_273)),
                    restarts: 0,
                    drift: None,
                },
                IocStatus {
                    ioc: "iocB".into(),
                    unit: "epnix-iocB.service".into(),
                    active_state: "failed".into(),
                    sub_state: "failed".into(),
                    since: None,
                    restarts: 3,
                    drift: Some("the unit file changed after the IOC started".into()),
                },
            ],
            last_rollback: Some(RollbackRecord {
                at: output::rfc3339(1_795_310_000),
                to: Some(2),
                reason: "failed-checks".into(),
                ok: true,
            }),
        }
    }

    #[test]
    fn the_table() {
        insta::assert_snapshot!(sample().text(&Style::default()));
    }
}
