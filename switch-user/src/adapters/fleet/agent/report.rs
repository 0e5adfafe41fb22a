//! What this host reports to the fleet, and the fleet part of `switch status`.

use super::*;

/// This host's figures, as the leader sums them.
pub(super) fn report(s: &Parts<'_>) -> Option<HostReport> {
    let f = &*s.fleet;
    let mut r = HostReport {
        host: f.cfg.host.clone(),
        identity: f.identity.clone(),
        epoch: f.epoch.clone(),
        at_ms: now_ms(),
        applied: f.applied,
        revisions: f.revisions.clone(),
        health_revision: f.health_revision,
        flows_counted_ms: s.flow_counts_ms,
        ..Default::default()
    };
    for (name, spec) in &s.ctl.services {
        let Some(placed) = s.ctl.programmer.services.get(name) else {
            continue;
        };
        let mut pools = BTreeMap::new();
        for p in &spec.pools {
            let mut c = [0u64; 3];
            for b in &p.backends {
                if let Some(st) = placed
                    .backends
                    .get(&b.addr())
                    .and_then(|i| s.dp.backend_stats(*i).ok())
                {
                    c[0] += st.new_flows;
                    c[1] += st.rsts;
                    c[2] += st.synacks;
                }
            }
            pools.insert(p.name.clone(), c);
        }
        r.pools.insert(name.clone(), pools);
        let flows = placed
            .backends
            .iter()
            .chain(&placed.lingering)
            .map(|(a, i)| (*a, s.flow_counts.get(i).copied().unwrap_or(0)))
            .collect();
        r.flows.insert(name.clone(), flows);
        if spec.health.is_some() {
            for b in spec.pools.iter().flat_map(|p| &p.backends) {
                let ok = s.ctl.health.get(&b.addr()).is_none_or(|h| h.healthy);
                r.health.insert(b.addr(), ok);
            }
        }
    }
    Some(r)
}

/// The fleet part of `switch status` for one service.
pub fn status(f: &FleetState, name: &str, spec: &ServiceConfig) -> crate::model::api::FleetStatus {
    use crate::model::api::{FleetBackendStatus, FleetHostStatus, FleetPoolStatus};
    let now = now_ms();
    let live: Vec<&HostReport> = f.hosts.values().collect();
    let mut names: std::collections::BTreeSet<&String> = f.hosts.keys().collect();
    names.extend(f.ledger.hosts.keys());
    let hosts = names
        .into_iter()
        .map(|h| {
            let r = f.hosts.get(h);
            FleetHostStatus {
                name: h.clone(),
                alive: r.is_some(),
                leader: f.leader.as_ref() == Some(h),
                applied_revision: r.map(|r| r.applied).unwrap_or(0),
                revision: r.and_then(|r| r.revisions.get(name).copied()),
                health_revision: r.map(|r| r.health_revision).unwrap_or(0),
                new_flows: r
                    .and_then(|r| r.pools.get(name))
                    .map(|p| p.values().map(|c| c[0]).sum())
                    .unwrap_or(0),
                last_report_ms_ago: r.map(|r| now.saturating_sub(r.at_ms)),
            }
        })
        .collect();
    // The ledger (kept by the leader) covers hosts that died or restarted;
    // the live reports may be a little newer.
    let mut totals = f.ledger.clone();
    for r in &live {
        totals.update(r);
    }
    let totals = totals.totals();
    let pools = spec
        .pools
        .iter()
        .map(|p| {
            let c = totals
                .get(name)
                .and_then(|t| t.get(&p.name))
                .copied()
                .unwrap_or_default();
            FleetPoolStatus {
                name: p.name.clone(),
                new_flows: c[0],
                rsts: c[1],
                synacks: c[2],
            }
        })
        .collect();
    let backends = spec
        .pools
        .iter()
        .flat_map(|p| p.backends.iter().map(move |b| (p, b.addr())))
        .map(|(p, a)| {
            let v = f.verdict.get(&a);
            FleetBackendStatus {
                addr: a,
                pool: p.name.clone(),
                active_flows: super::super::live_flows(&live, name, a),
                healthy: v.is_none_or(|v| v.healthy),
                down_votes: v.map(|v| v.down).unwrap_or(0),
                hosts: v.map(|v| v.hosts).unwrap_or(live.len() as u32),
            }
        })
        .collect();
    crate::model::api::FleetStatus {
        host: f.cfg.host.clone(),
        leader: f.leader.clone(),
        etcd_reachable: f.reachable,
        revision: f.revisions.get(name).copied().unwrap_or(0),
        health_revision: f.health_revision,
        applied_revision: f.applied,
        refused: f.refused.clone(),
        rejected_record: f.rejected.get(name).cloned(),
        rejected_records_total: f.rejected_total,
        etcd_error: f.etcd_error.clone(),
        hosts,
        pools,
        backends,
    }
}
