//! The strategy tick: signals in, strategy steps out; and the Prometheus gate.

use super::*;

/// How often strategies are advanced and their gates checked.
pub(super) const TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// Advances strategies with fresh signals from the data plane. One piece:
/// the signals are read and the strategies ticked under one lock.
pub(super) fn tick(shared: &Mutex<Shared>) -> Result<()> {
    let fleet = shared
        .lock()
        .map_err(|_| anyhow!("state lock poisoned"))?
        .fleet
        .as_ref()
        .map(|f| f.leading.is_some());
    // In a fleet only the leader asks Prometheus, and it moves strategies
    // in its own round (fleet::agent), on fleet-wide figures.
    if fleet != Some(false) {
        ask_prometheus(shared)?;
    }
    // Replays of clients that vanished end in every mode (a fleet's
    // strategies move elsewhere; its shadows run here).
    if let Ok(s) = shared.lock() {
        s.shadow.sweep();
    }
    if fleet.is_some() {
        return Ok(());
    }
    let mut guard = shared.lock().map_err(|_| anyhow!("state lock poisoned"))?;
    let s = &mut *guard;
    if super::watchdog::injected_panic_due("tick") {
        panic!(
            "SWITCH_TEST_PANIC: a panic injected in the strategy tick, with the state lock held"
        );
    }
    if s.ctl.shadows.values().any(|sh| sh.running()) {
        let before = s.ctl.history.len();
        s.ctl.expire_shadows(&mut s.dp, now_ms())?;
        sync_shadows(s);
        if s.ctl.history.len() != before {
            persist(s)?;
        }
    }
    if !s.ctl.lingering.is_empty() {
        let before = s.ctl.history.len();
        let (counts, at) = (s.flow_counts.clone(), s.flow_counts_ms);
        s.ctl.settle_lingering(&mut s.dp, &counts, at, now_ms())?;
        if s.ctl.history.len() != before {
            persist(s)?;
        }
    }
    if !s.ctl.strategies.values().any(|st| st.phase().is_active()) {
        return Ok(());
    }
    let flows = if s.ctl.wants_flow_counts() {
        s.flow_counts.clone()
    } else {
        Default::default()
    };
    let mut all = BTreeMap::new();
    for (name, spec) in &s.ctl.services {
        let Some(placed) = s.ctl.programmer.services.get(name) else {
            continue;
        };
        let mut pools = Signals::new();
        for p in &spec.pools {
            let mut ps = PoolSignals::default();
            for b in &p.backends {
                let index = placed.backends[&b.addr()];
                let st = s.dp.backend_stats(index)?;
                ps.new_flows += st.new_flows;
                ps.rsts += st.rsts;
                ps.synacks += st.synacks;
                let h = s.ctl.health.get(&b.addr());
                ps.backends.insert(
                    b.addr(),
                    BackendSignals {
                        healthy: h.is_none_or(|h| h.healthy),
                        healthy_since_ms: match h {
                            Some(h) if h.healthy => Some(h.since_ms),
                            Some(_) => None,
                            None => Some(0),
                        },
                        active_flows: flows.get(&index).copied().unwrap_or(0),
                        flows_counted_ms: s.flow_counts_ms,
                    },
                );
            }
            pools.insert(p.name.clone(), ps);
        }
        all.insert(name.clone(), pools);
    }
    let before = s.ctl.history.len();
    s.ctl.tick(&mut s.dp, &all, now_ms())?;
    if s.ctl.history.len() != before || s.ctl.strategies.values().any(|st| st.phase().is_active()) {
        persist(s)?;
    }
    Ok(())
}

/// How often a canary's Prometheus query is asked.
pub(super) const PROMETHEUS_EVERY_MS: u64 = 1000;

/// Asks the Prometheus gates of running canaries, outside the state lock
/// (a slow Prometheus must not stall the API), and hands the answers over.
pub(super) fn ask_prometheus(shared: &Mutex<Shared>) -> Result<()> {
    let now = now_ms();
    let due: Vec<(String, PromGate)> = {
        let s = shared.lock().map_err(|_| anyhow!("state lock poisoned"))?;
        s.ctl
            .strategies
            .iter()
            .filter_map(|(name, st)| match st {
                Strategy::Canary(c) if c.phase == Phase::Running => {
                    c.gates.prometheus.clone().map(|g| (name.clone(), g))
                }
                _ => None,
            })
            .filter(|(name, _)| {
                s.prom_asked
                    .get(name)
                    .is_none_or(|t| now.saturating_sub(*t) >= PROMETHEUS_EVERY_MS)
            })
            .collect()
    };
    if due.is_empty() {
        return Ok(());
    }
    let answers: Vec<(String, Reading)> = due
        .into_iter()
        .map(|(name, g)| {
            let r = prometheus::query(
                &g.url,
                &g.query,
                g.token.as_deref(),
                std::time::Duration::from_secs(1),
            );
            (name, r)
        })
        .collect();
    let mut s = shared.lock().map_err(|_| anyhow!("state lock poisoned"))?;
    for (name, r) in answers {
        s.prom_asked.insert(name.clone(), now);
        if let Some(Strategy::Canary(c)) = s.ctl.strategies.get_mut(&name) {
            c.reading = Some(r);
        }
    }
    Ok(())
}
