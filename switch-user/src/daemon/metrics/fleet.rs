//! Fleet and BGP figures: hosts, leader, fleet-wide pools and backends, sessions and announcements.

use super::*;

/// Fleet mode only: this host's view of the fleet, and fleet-wide figures.
/// One piece on purpose: a list of families, each a few lines, in the
/// order the page shows them.
pub(super) fn fleet(o: &mut Page, services: &[ServiceStatus]) {
    let Some(f) = services.iter().find_map(|s| s.fleet.as_ref()) else {
        return;
    };
    o.family(
        "fleet_etcd_reachable",
        "gauge",
        "1 while this host reaches etcd.",
    );
    o.sample("fleet_etcd_reachable", Labels::None, f.etcd_reachable as u8);
    o.family(
        "fleet_rejected_records_total",
        "counter",
        "Service records read from etcd and not applied (unreadable or invalid); status names the key and why.",
    );
    o.sample(
        "fleet_rejected_records_total",
        Labels::None,
        f.rejected_records_total,
    );
    o.family(
        "fleet_is_leader",
        "gauge",
        "1 while this host leads the fleet (runs its strategies).",
    );
    o.sample(
        "fleet_is_leader",
        Labels::None,
        (f.leader.as_deref() == Some(f.host.as_str())) as u8,
    );
    o.family(
        "fleet_applied_revision",
        "gauge",
        "The etcd revision this host has applied.",
    );
    o.sample("fleet_applied_revision", Labels::None, f.applied_revision);
    type HostField = fn(&crate::model::api::FleetHostStatus) -> i64;
    let per_host: [(&str, &str, HostField); 3] = [
        ("fleet_host_alive", "1 while the host's lease lives.", |h| {
            h.alive as i64
        }),
        (
            "fleet_host_leader",
            "1 for the host that leads the fleet.",
            |h| h.leader as i64,
        ),
        (
            "fleet_host_applied_revision",
            "The etcd revision each host reports it has applied.",
            |h| h.applied_revision,
        ),
    ];
    for (name, help, field) in per_host {
        o.family(name, "gauge", help);
        for h in &f.hosts {
            o.sample(name, Labels::Host(&h.name), field(h));
        }
    }
    let fleets: Vec<(&str, &crate::model::api::FleetStatus)> = services
        .iter()
        .filter_map(|s| s.fleet.as_ref().map(|f| (s.name.as_str(), f)))
        .collect();
    o.family(
        "fleet_service_revision",
        "gauge",
        "The service's generation (etcd revision) this host forwards with.",
    );
    for (svc, f) in &fleets {
        o.sample("fleet_service_revision", Labels::Service(svc), f.revision);
    }
    type PoolField = fn(&crate::model::api::FleetPoolStatus) -> u64;
    let per_pool: [(&str, &str, PoolField); 3] = [
        (
            "fleet_pool_new_flows_total",
            "New flows to the pool on every host of the fleet.",
            |p| p.new_flows,
        ),
        (
            "fleet_pool_rsts_total",
            "TCP RSTs from the pool's backends on every host.",
            |p| p.rsts,
        ),
        (
            "fleet_pool_synacks_total",
            "SYN-ACKs from the pool's backends on every host.",
            |p| p.synacks,
        ),
    ];
    for (name, help, field) in per_pool {
        o.family(name, "counter", help);
        for (svc, f) in &fleets {
            for p in &f.pools {
                o.sample(name, Labels::Pool(svc, &p.name), field(p));
            }
        }
    }
    type BackendField = fn(&crate::model::api::FleetBackendStatus) -> u64;
    let per_backend: [(&str, &str, BackendField); 3] = [
        (
            "fleet_backend_active_flows",
            "Flows pinned to the backend on every live host.",
            |b| b.active_flows,
        ),
        (
            "fleet_backend_healthy",
            "1 when the fleet's verdict is healthy.",
            |b| b.healthy as u64,
        ),
        (
            "fleet_backend_down_votes",
            "Live hosts whose probes say the backend is down.",
            |b| b.down_votes as u64,
        ),
    ];
    for (name, help, field) in per_backend {
        o.family(name, "gauge", help);
        for (svc, f) in &fleets {
            for b in &f.backends {
                o.sample(name, Labels::Backend(svc, &b.pool, b.addr), field(b));
            }
        }
    }
}

/// With `[bgp]`: what this host announces and its sessions.
pub(super) fn bgp(o: &mut Page, services: &[ServiceStatus]) {
    let Some(b) = services.iter().find_map(|s| s.bgp.as_ref()) else {
        return;
    };
    o.family(
        "bgp_announced",
        "gauge",
        "1 while a neighbor is told about the VIP, as BIRD reports it: per service, or per VIP and neighbor.",
    );
    for s in services {
        if let Some(a) = s.announced {
            o.sample("bgp_announced", Labels::Service(&s.name), a as u8);
        }
    }
    let vips: std::collections::BTreeSet<std::net::IpAddr> =
        services.iter().map(|s| s.vip.ip()).collect();
    for v in vips {
        for x in b
            .sessions
            .iter()
            .filter(|x| x.neighbor.is_ipv4() == v.is_ipv4())
        {
            let told = x.state == "Established" && x.exported.contains(&v);
            o.sample("bgp_announced", Labels::Route(v, x.neighbor), told as u8);
        }
    }
    o.family(
        "bgp_restarts_total",
        "counter",
        "Times the daemon found BIRD dead and started it again.",
    );
    o.sample("bgp_restarts_total", Labels::None, b.restarts);
    o.family(
        "bgp_session_established",
        "gauge",
        "1 while the BGP session with the neighbor is established.",
    );
    for x in &b.sessions {
        o.sample(
            "bgp_session_established",
            Labels::Neighbor(x.neighbor),
            (x.state == "Established") as u8,
        );
    }
}
