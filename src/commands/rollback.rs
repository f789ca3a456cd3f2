//! `rollback`: back to the newest healthy generation (or `--to N`), units
//! and checks included, under an armed rollback, exactly like a deploy.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;

use super::{Changing, SwitchReport, connect, current};
use crate::activation::{self, Before, Safety};
use crate::config;
use crate::exit::BadInput;
use crate::host::{self, Generation, HostState, Outcome};
use crate::plan;
use crate::progress::Progress;
use crate::target::{Selection, Target};

/// What `rollback` should do.
#[derive(Clone, Debug)]
pub struct RollbackOptions {
    pub selection: Selection,
    /// The generation to go to; the newest healthy one before the current
    /// by default.
    pub to: Option<u32>,
    /// Go to a generation whose checks failed, or that was not confirmed.
    pub force: bool,
    pub activation_timeout: Option<Duration>,
    pub no_magic_rollback: bool,
    pub changing: Changing,
}

/// Picks the generation a rollback goes to: `--to N`, or the newest healthy
/// one before the current. Returns it and the ones skipped on the way.
/// `--to` the current generation is refused, unless an IOC does not run
/// what it says (`drifted`): then the rollback converges on it.
fn rollback_target<'a>(
    state: &'a HostState,
    current: &'a Generation,
    to: Option<u32>,
    force: bool,
    drifted: bool,
    target: &Target,
    top: &str,
) -> Result<(&'a Generation, Vec<&'a Generation>), BadInput> {
    let numbers = || state.generations.iter().map(|g| g.number.to_string()).collect::<Vec<_>>().join(", ");
    match to {
        Some(n) if n == current.number && drifted => Ok((current, Vec::new())),
        Some(n) if n == current.number => {
            Err(BadInput::new(format!("generation {n} is already the current generation of `{top}`"))
                .hint(format!("generations on `{target}`: {}", numbers())))
        }
        Some(n) => {
            let g = state.generations.iter().find(|g| g.number == n).ok_or_else(|| {
                BadInput::new(format!("top `{top}` on `{target}` has no generation {n}"))
                    .hint(format!("generations there: {}", numbers()))
            })?;
            match state.outcome(g) {
                outcome @ (Outcome::Failed | Outcome::Unconfirmed) if !force => Err(BadInput::new(format!(
                    "generation {n} of `{top}` is {}: it was rolled back before",
                    outcome.as_str()
                ))
                .hint(format!("`epnix-deploy list {target} {top}` says why; `--force` goes there all the same"))),
                _ => Ok((g, Vec::new())),
            }
        }
        None => {
            let mut skipped = Vec::new();
            for g in state.generations.iter().rev().filter(|g| g.number < current.number) {
                if state.outcome(g) == Outcome::Healthy {
                    return Ok((g, skipped));
                }
                skipped.push(g);
            }
            let others: Vec<String> =
                skipped.iter().map(|g| format!("{} ({})", g.number, state.outcome(g).as_str())).collect();
            Err(BadInput::new(format!(
                "`{top}` on `{target}` has no healthy generation before the current one ({}){}",
                current.number,
                if others.is_empty() { String::new() } else { format!("; older ones: {}", others.join(", ")) }
            ))
            .hint("`epnix-deploy list` shows the generations; `--to N` picks one (with `--force` for a failed one)"))
        }
    }
}

/// Switches the profile to an earlier (or any other) generation, restores
/// the units stored with it, and checks its IOCs with its own checks under
/// an armed rollback, exactly like a deploy. If they fail, the host goes
/// back to where it was before the rollback.
pub fn run(opts: &RollbackOptions, progress: &Progress) -> Result<SwitchReport> {
    let sel = &opts.selection;
    let (target, config, remote, state) = connect(sel, progress, Some(opts.changing), host::Depth::Current)?;
    let current = current(&state, &target, &sel.top)?;
    let drifted = state.units_of(&sel.top).any(|(ioc, _)| state.drift(ioc).is_some());
    let (wanted, skipped) = rollback_target(&state, current, opts.to, opts.force, drifted, &target, &sel.top)?;
    for g in skipped {
        progress.note(&format!("note: skipped generation {} ({})", g.number, state.outcome(g).as_str()));
    }

    let (units, stored_checks) = match host::fetch_generation(&remote, &sel.top, wanted.number)? {
        Some(stored) => stored,
        None => {
            progress.note(&format!(
                "note: generation {} was not made by epnix-deploy: the top rolls back, the current units stay",
                wanted.number
            ));
            (state.units_of(&sel.top).map(|(n, t)| (n.clone(), t.clone())).collect(), BTreeMap::new())
        }
    };
    let mut plan = plan::switch_to(&sel.top, wanted.number, wanted.top_build(), units, &state, &target.label)?;
    // What the confirmation notes as healthy: this generation, by its path.
    plan.generation_path = Some(wanted.store_path.clone());

    let top = config.as_ref().and_then(|c| c.tops.get(&sel.top));
    let host_magic =
        config.as_ref().zip(target.name.as_ref()).and_then(|(c, n)| c.hosts.get(n)).is_none_or(|h| h.magic_rollback);
    let safety = Safety {
        magic_rollback: !opts.no_magic_rollback && top.is_none_or(|t| t.magic_rollback) && host_magic,
        confirm_timeout: Duration::from_secs(top.map_or(config::DEFAULT_CONFIRM_TIMEOUT_SECS, |t| t.confirm_timeout)),
        activation_timeout: opts.activation_timeout.unwrap_or(Duration::from_secs(
            top.map_or(config::DEFAULT_ACTIVATION_TIMEOUT_SECS, |t| t.activation_timeout),
        )),
        checks: plan.health_checks(&stored_checks),
    };
    let before = Before { generation: state.current };
    let generation =
        activation::switch_safely(&remote, &target, &plan, &before, &safety, Default::default(), progress)?;
    let conserver = super::update_conserver(&remote, &target, config.as_ref(), progress);
    remote.close();
    Ok(SwitchReport { conserver, ..SwitchReport::new(&target, &plan, generation, state.current) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::tests::six;

    #[test]
    fn rollback_skips_failed_generations_and_says_so() {
        let state = six(&[4, 5]);
        let target = Target::resolve("root@h", None).unwrap();
        let current = state.current_generation().unwrap();
        let (to, skipped) = rollback_target(&state, current, None, false, false, &target, "t").unwrap();
        assert_eq!(to.number, 3);
        assert_eq!(skipped.iter().map(|g| g.number).collect::<Vec<_>>(), [5, 4]);
        let err = rollback_target(&state, current, Some(5), false, false, &target, "t").unwrap_err().to_string();
        assert!(err.contains("generation 5 of `t` is failed") && err.contains("--force"), "{err}");
        assert_eq!(rollback_target(&state, current, Some(5), true, false, &target, "t").unwrap().0.number, 5);
        // The current generation: only to converge on it.
        assert!(rollback_target(&state, current, Some(6), false, false, &target, "t").is_err());
        assert_eq!(rollback_target(&state, current, Some(6), false, true, &target, "t").unwrap().0.number, 6);

        let none_healthy = six(&[1, 2, 3, 4, 5]);
        let err = rollback_target(&none_healthy, current, None, false, false, &target, "t").unwrap_err().to_string();
        assert!(err.contains("no healthy generation before the current one (6)"), "{err}");
    }
}
