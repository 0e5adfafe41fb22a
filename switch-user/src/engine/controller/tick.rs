//! The strategy tick: signals in, changes out, executed like any command.

use super::*;

impl Controller {
    /// Advances every running strategy. `signals` per service. A step whose
    /// map write fails is not taken: the strategy stays where it was and is
    /// tried again on the next tick.
    pub fn tick(
        &mut self,
        maps: &mut dyn Maps,
        signals: &BTreeMap<String, Signals>,
        now: u64,
    ) -> Result<()> {
        let names: Vec<String> = self
            .strategies
            .iter()
            .filter(|(_, s)| s.phase().is_active())
            .map(|(n, _)| n.clone())
            .collect();
        let mut failed = None;
        for name in names {
            let empty = Signals::new();
            let sig = signals.get(&name).unwrap_or(&empty);
            let Some(current) = self.strategies.get(&name) else {
                continue;
            };
            let mut next = current.clone();
            let before = next.phase().clone();
            let changes = next.tick(now, sig);
            let after = next.phase().clone();
            let desc = next.describe(now);
            if !changes.is_empty() {
                let what = format!("{desc}; {}", describe(&changes));
                let mut plan = self.plan_changes(&name, &changes, what, now)?;
                plan.strategy = Some(next);
                if let Err(e) = self.execute(maps, plan, now) {
                    failed = Some(e.context(format!("{name}: strategy step not taken")));
                }
                continue;
            }
            if before != after {
                self.record(
                    now,
                    &name,
                    desc,
                    !matches!(after, Phase::RolledBack(_) | Phase::Holding(_)),
                );
            }
            // Progress without a map change (step timers, baselines).
            self.strategies.insert(name, next);
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether live-flow counts matter now (a drain, or lingering backends).
    pub fn wants_flow_counts(&self) -> bool {
        !self.lingering.is_empty()
            || self
                .strategies
                .values()
                .any(|s| matches!(s, Strategy::Rolling(r) if r.phase.is_active()))
    }
}
