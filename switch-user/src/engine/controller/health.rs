//! Health verdicts, probe targets, and backends that linger until their flows end.

use super::*;

impl Controller {
    /// The backends to probe: every backend of a service with health checks,
    /// lingering ones too (a lingering backend that goes down lets go of its
    /// flows).
    pub fn probe_targets(&self) -> Vec<(String, SocketAddr, HealthConfig)> {
        let mut out = Vec::new();
        for svc in self.services.values() {
            let Some(h) = &svc.health else { continue };
            for b in svc.pools.iter().flat_map(|p| &p.backends) {
                out.push((svc.name.clone(), b.addr(), h.clone()));
            }
            for addr in self
                .lingering
                .get(&svc.name)
                .into_iter()
                .flat_map(|l| l.keys())
            {
                out.push((svc.name.clone(), *addr, h.clone()));
            }
        }
        out
    }

    /// Lets go of lingering backends whose flows have ended (counted after
    /// they began lingering), that went down, or whose hard limit passed.
    /// `flows` is live flows per backend index, counted at `counted_ms`.
    pub fn settle_lingering(
        &mut self,
        maps: &mut dyn Maps,
        flows: &HashMap<u32, u64>,
        counted_ms: u64,
        now: u64,
    ) -> Result<()> {
        let mut done = Vec::new();
        let unhealthy = self.unhealthy();
        for (service, backends) in &self.lingering {
            let Some(placed) = self.programmer.services.get(service) else {
                continue;
            };
            for (addr, l) in backends {
                let Some(index) = placed.lingering.get(addr) else {
                    done.push((service.clone(), *addr, "released"));
                    continue;
                };
                let why = if unhealthy.contains(addr) {
                    Some("down: its remaining flows are cut")
                } else if l.until_ms.is_some_and(|u| now >= u) {
                    Some("linger limit reached: its remaining flows are cut")
                } else if counted_ms > l.since_ms && flows.get(index).copied().unwrap_or(0) == 0 {
                    Some("no flows left")
                } else {
                    None
                };
                if let Some(why) = why {
                    done.push((service.clone(), *addr, why));
                }
            }
        }
        for (service, addr, why) in done {
            let mut programmer = self.programmer.clone();
            programmer.release(maps, &service, addr)?;
            self.programmer = programmer;
            if let Some(l) = self.lingering.get_mut(&service) {
                l.remove(&addr);
            }
            self.health.remove(&addr);
            self.record(
                now,
                &service,
                format!("lingering backend {addr} released: {why}"),
                true,
            );
        }
        self.lingering.retain(|_, l| !l.is_empty());
        Ok(())
    }

    /// A health probe result, applied at once (tests; the daemon batches
    /// with `record_health` + `apply_health`).
    pub fn health_result(
        &mut self,
        maps: &mut dyn Maps,
        service: &str,
        addr: SocketAddr,
        result: Result<(), String>,
        now: u64,
    ) -> Result<()> {
        if self.record_health(service, addr, result, now) {
            self.apply_health(maps, service, now)?;
        }
        Ok(())
    }

    /// Counts one probe result; true when the backend's state flipped (the
    /// service then needs `apply_health`). The flip goes into the history.
    pub fn record_health(
        &mut self,
        service: &str,
        addr: SocketAddr,
        result: Result<(), String>,
        now: u64,
    ) -> bool {
        let Some(cfg) = self.services.get(service).and_then(|s| s.health.clone()) else {
            return false;
        };
        let h = self
            .health
            .entry(addr)
            .or_insert_with(|| Health::new(true, now));
        let err = result.clone().err();
        if !h.record(result, cfg.rise, cfg.fall, now) {
            return false;
        }
        let what = if h.healthy {
            format!("backend {addr} healthy")
        } else {
            format!("backend {addr} unhealthy: {}", err.unwrap_or_default())
        };
        self.record(now, service, what, true);
        true
    }

    /// Rewrites a service after health changes: unhealthy backends leave its
    /// table, recovered ones come back. One rebuild for any number of
    /// changes, which matters with many backends.
    pub fn apply_health(&mut self, maps: &mut dyn Maps, service: &str, _now: u64) -> Result<()> {
        let s = self.service(service)?.clone();
        let unhealthy = self.unhealthy();
        let mut programmer = self.programmer.clone();
        programmer.apply(maps, &s, &unhealthy)?;
        self.programmer = programmer;
        Ok(())
    }
}
