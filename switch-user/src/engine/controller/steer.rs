//! Steering a running strategy: pause, resume, promote, abort, rollback.

use super::*;

impl Controller {
    pub(super) fn pause(
        &mut self,
        maps: &mut dyn Maps,
        service: &str,
        pause: bool,
        now: u64,
    ) -> Result<()> {
        self.service(service)?;
        let Some(Strategy::Canary(c)) = self.running(service) else {
            bail!(
                "service {service:?} has no running canary to {}",
                if pause { "pause" } else { "resume" }
            );
        };
        let mut c = c.clone();
        if pause {
            c.pause(now);
        } else {
            c.resume(now);
        }
        let mut plan = Plan::new(service, if pause { "paused" } else { "resumed" });
        plan.strategy = Some(Strategy::Canary(c));
        self.execute(maps, plan, now)
    }

    pub(super) fn promote(&mut self, maps: &mut dyn Maps, service: &str, now: u64) -> Result<()> {
        self.service(service)?;
        let mut st = match self.running(service) {
            Some(st @ (Strategy::Canary(_) | Strategy::BlueGreen(_))) => st.clone(),
            _ => bail!("service {service:?} has no running canary or preview to promote"),
        };
        let changes = match &mut st {
            Strategy::Canary(c) => c.promote(),
            Strategy::BlueGreen(b) => b.promote(now),
            Strategy::Rolling(_) => vec![],
        };
        let mut plan = self.plan_changes(service, &changes, "promoted".into(), now)?;
        plan.strategy = Some(st);
        self.execute(maps, plan, now)
    }

    pub(super) fn abort(&mut self, maps: &mut dyn Maps, service: &str, now: u64) -> Result<()> {
        self.service(service)?;
        let Some(st) = self.running(service) else {
            bail!("service {service:?} has no running strategy to abort");
        };
        let mut st = st.clone();
        let changes = match &mut st {
            Strategy::Canary(c) => c.abort(None),
            Strategy::BlueGreen(b) => b.abort(None),
            Strategy::Rolling(r) => {
                r.phase = Phase::Aborted;
                vec![]
            }
        };
        let mut plan = self.plan_changes(service, &changes, "aborted".into(), now)?;
        plan.strategy = Some(st);
        self.execute(maps, plan, now)
    }

    pub(super) fn rollback(&mut self, maps: &mut dyn Maps, service: &str, now: u64) -> Result<()> {
        self.service(service)?;
        let Some(weights) = self.undo.get(service).cloned() else {
            bail!("service {service:?} has no flip or canary to roll back");
        };
        let mut strategy = self.strategies.get(service).cloned();
        if let Some(st) = &mut strategy {
            if matches!(st, Strategy::Rolling(_)) {
                bail!("rollback: a rolling replacement cannot be undone; abort it instead");
            }
            st.set_phase(Phase::Aborted);
        }
        let mut changes = vec![Change::Weights(weights)];
        if let Some(Strategy::BlueGreen(BlueGreen {
            preview: Some(cidr),
            ..
        })) = &strategy
        {
            changes.push(Change::Cohort {
                cidr: *cidr,
                pool: None,
            });
        }
        let mut plan = self.plan_changes(service, &changes, "rolled back".into(), now)?;
        plan.strategy = strategy;
        plan.undo = Some(None);
        self.execute(maps, plan, now)
    }
}
