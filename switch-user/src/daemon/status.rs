//! `switch status`: what each service looks like now, from the controller and the maps.

use super::*;

pub(super) fn status(s: &Shared, only: Option<&str>) -> Result<Vec<ServiceStatus>> {
    if let Some(name) = only {
        s.ctl.service(name)?;
    }
    let mut out = Vec::new();
    for (name, spec) in &s.ctl.services {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        out.push(service_status(s, name, spec)?);
    }
    Ok(out)
}

fn service_status(
    s: &Shared,
    name: &str,
    spec: &crate::model::config::ServiceConfig,
) -> Result<ServiceStatus> {
    let placed = s
        .ctl
        .programmer
        .services
        .get(name)
        .ok_or_else(|| anyhow!("{name} not placed"))?;
    let st = s.dp.service_stats(placed.id)?;
    let misses = s.dp.service_misses(placed.id)?;
    let (pools, lingering) = pools_status(s, name, spec, placed)?;
    let strategy = s.ctl.strategies.get(name);
    Ok(ServiceStatus {
        strategy: strategy.map(|st| st.describe(now_ms())),
        strategy_kind: strategy.map(|st| st.kind()),
        phase: strategy.map(|st| st.phase().kind()),
        progress: strategy.map(|st| st.progress()),
        name: name.to_string(),
        vip: spec.vip,
        protocol: spec.protocol,
        mode: spec.mode,
        packets: st.packets,
        new_flows: st.new_flows,
        no_backend: st.no_backend,
        nonsyn_miss: misses.nonsyn_miss,
        nonsyn_miss_prev: misses.nonsyn_miss_prev,
        pools,
        lingering,
        shadow: s
            .ctl
            .shadows
            .get(name)
            .map(|spec| crate::model::shadow::ShadowStatus {
                spec: spec.clone(),
                report: s.ctl.shadow_reports.get(name).cloned().unwrap_or_default(),
            }),
        fleet: s
            .fleet
            .as_ref()
            .map(|f| crate::adapters::fleet::agent::status(f, name, spec)),
        bgp: s.bgp.as_ref().map(|_| s.bgp_status.clone()),
        announced: s
            .bgp
            .as_ref()
            .map(|_| s.bgp_status.announced.contains(&spec.vip.ip())),
    })
}

/// Each pool with its share and backends, and the backends lingering.
fn pools_status(
    s: &Shared,
    name: &str,
    spec: &crate::model::config::ServiceConfig,
    placed: &crate::engine::programmer::Placed,
) -> Result<(Vec<PoolStatus>, Vec<BackendStatus>)> {
    let weights: Vec<u64> = spec
        .pools
        .iter()
        .map(|p| {
            if p.backends.iter().any(|b| b.state() == AdminState::Active) {
                p.weight as u64
            } else {
                0
            }
        })
        .collect();
    let total: u64 = weights.iter().sum();
    let unhealthy = s.ctl.unhealthy();
    let mut pools = Vec::new();
    for (p, w) in spec.pools.iter().zip(&weights) {
        let mut backends = Vec::new();
        for b in &p.backends {
            let state = match b.state() {
                AdminState::Active => api::BackendState::Active,
                AdminState::Draining => api::BackendState::Draining,
            };
            let index = placed.backends[&b.addr()];
            backends.push(backend_status(
                s,
                &unhealthy,
                b.addr(),
                &p.name,
                b.weight(),
                state,
                index,
            )?);
        }
        pools.push(PoolStatus {
            name: p.name.clone(),
            weight: p.weight,
            share: if total == 0 {
                0.0
            } else {
                100.0 * *w as f64 / total as f64
            },
            backends,
        });
    }
    let mut lingering = Vec::new();
    for (addr, l) in s.ctl.lingering.get(name).into_iter().flatten() {
        if let Some(&index) = placed.lingering.get(addr) {
            let state = api::BackendState::Lingering;
            lingering.push(backend_status(
                s, &unhealthy, *addr, &l.pool, 0, state, index,
            )?);
        }
    }
    Ok((pools, lingering))
}

fn backend_status(
    s: &Shared,
    unhealthy: &BTreeSet<SocketAddr>,
    addr: SocketAddr,
    pool: &str,
    weight: u32,
    state: api::BackendState,
    index: u32,
) -> Result<BackendStatus> {
    let bs = s.dp.backend_stats(index)?;
    let health = s.ctl.health.get(&addr);
    Ok(BackendStatus {
        // As the table treats it (in a fleet: the fleet's verdict).
        healthy: !unhealthy.contains(&addr),
        health_error: health.and_then(|h| h.last_error.clone()),
        addr,
        pool: pool.to_string(),
        weight,
        state,
        packets: bs.packets,
        new_flows: bs.new_flows,
        rsts: bs.rsts,
        active_flows: s.flow_counts.get(&index).copied().unwrap_or(0),
        packets_per_s: s.rates.get(&index).map(|r| r.0).unwrap_or(0.0),
        new_flows_per_s: s.rates.get(&index).map(|r| r.1).unwrap_or(0.0),
    })
}
