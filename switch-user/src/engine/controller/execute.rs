//! Executing a plan: write the maps (on a copy of the programmer), then commit state and history.

use super::*;

impl Controller {
    /// Writes a plan's maps, then commits it. The programmer works on a copy
    /// of its allocation state, so a failed write leaves it (and every
    /// other part of the controller) as it was. One piece: write, then
    /// commit, in one place, so no path commits without writing.
    pub(super) fn execute(&mut self, maps: &mut dyn Maps, plan: Plan, now: u64) -> Result<()> {
        let mut health = self.health.clone();
        for (addr, h) in &plan.health {
            match h {
                Some(h) => {
                    health.insert(*addr, h.clone());
                }
                None => {
                    health.remove(addr);
                }
            }
        }
        // A removed backend that is down (or cut on purpose) leaves with its
        // flows; a healthy one lingers.
        let cut: BTreeSet<SocketAddr> = plan
            .removed
            .keys()
            .filter(|a| plan.cut.contains(a) || health.get(a).is_some_and(|h| !h.healthy))
            .copied()
            .collect();
        let mut programmer = self.programmer.clone();
        if let Some(spec) = &plan.spec {
            // 1. Write. Nothing is committed before this succeeds.
            let local = unhealthy_of(&health);
            let unhealthy = match &self.fleet_health {
                Some(f) => f.unhealthy(&local),
                None => local,
            };
            programmer.check(spec)?;
            programmer
                .apply(maps, spec, &unhealthy)
                .map_err(WriteFailed)?;
            for addr in &cut {
                programmer
                    .release(maps, &plan.service, *addr)
                    .map_err(WriteFailed)?;
            }
        }
        // 2. Commit.
        self.programmer = programmer;
        if let Some(spec) = plan.spec {
            self.services.insert(plan.service.clone(), spec);
        }
        let lingering = self.lingering.entry(plan.service.clone()).or_default();
        for (addr, (pool, until_ms)) in &plan.removed {
            if cut.contains(addr) {
                health.remove(addr);
            } else {
                lingering.insert(
                    *addr,
                    Lingering {
                        pool: pool.clone(),
                        since_ms: now,
                        until_ms: *until_ms,
                    },
                );
            }
        }
        // A backend that came back stops lingering (it kept its index).
        if let Some(spec) = self.services.get(&plan.service) {
            lingering.retain(|a, _| {
                !spec
                    .pools
                    .iter()
                    .any(|p| p.backends.iter().any(|b| b.addr() == *a))
            });
        }
        self.health = health;
        if let Some(st) = plan.strategy {
            self.strategies.insert(plan.service.clone(), st);
        }
        match plan.undo {
            Some(Some(w)) => {
                self.undo.insert(plan.service.clone(), w);
            }
            Some(None) => {
                self.undo.remove(&plan.service);
            }
            None => {}
        }
        self.record(now, &plan.service, plan.what, true);
        Ok(())
    }

    pub(super) fn apply_all(
        &mut self,
        maps: &mut dyn Maps,
        services: &[ServiceConfig],
        now: u64,
    ) -> Result<()> {
        let file = ConfigFile {
            services: services.to_vec(),
            ..Default::default()
        };
        file.validate()?;
        // Check everything before the first write.
        let mut trial = self.programmer.clone();
        for name in self.services.keys() {
            if !services.iter().any(|s| &s.name == name) {
                trial.services.remove(name);
            }
        }
        for s in services {
            trial.check(s)?;
        }
        // Write on a copy; commit only when every service went in.
        let mut next = self.clone();
        let gone: Vec<String> = next
            .services
            .keys()
            .filter(|n| !services.iter().any(|s| &s.name == *n))
            .cloned()
            .collect();
        for name in gone {
            next.programmer.remove(maps, &name).map_err(WriteFailed)?;
            next.services.remove(&name);
            next.strategies.remove(&name);
            next.lingering.remove(&name);
            next.undo.remove(&name);
            next.record(now, &name, "removed".into(), true);
        }
        for s in services {
            if next.services.get(&s.name) == Some(s) {
                continue;
            }
            let mut plan = Plan::new(&s.name, "applied");
            if s.health.is_some() {
                for b in s.pools.iter().flat_map(|p| &p.backends) {
                    if !next.health.contains_key(&b.addr()) {
                        plan.health.push((b.addr(), Some(Health::new(true, now))));
                    }
                }
            }
            if let Some(old) = next.services.get(&s.name) {
                for p in &old.pools {
                    for b in &p.backends {
                        if s.pools
                            .iter()
                            .all(|q| q.backends.iter().all(|c| c.addr() != b.addr()))
                        {
                            plan.removed.insert(b.addr(), (p.name.clone(), None));
                        }
                    }
                }
            }
            plan.spec = Some(s.clone());
            next.execute(maps, plan, now)?;
        }
        *self = next;
        Ok(())
    }
}
