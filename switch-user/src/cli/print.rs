//! Tables for people: `switch status` and `switch watch`.

use super::*;

/// The fleet block of `switch status`: hosts, leader, fleet-wide figures.
pub(super) fn print_fleet(f: &crate::model::api::FleetStatus) {
    println!(
        "  fleet: this host {}, leader {}, etcd {}, generation {} (health {}), applied revision {}",
        f.host,
        f.leader.as_deref().unwrap_or("none"),
        if f.etcd_reachable {
            "reachable"
        } else {
            "UNREACHABLE"
        },
        f.revision,
        f.health_revision,
        f.applied_revision
    );
    if let Some(why) = &f.refused {
        println!("  fleet: NOT JOINED: {why}");
    }
    if let Some(why) = &f.etcd_error {
        println!("  fleet: etcd: {why}");
    }
    if let Some(why) = &f.rejected_record {
        println!("  fleet: RECORD REJECTED, last good state kept: {why}");
    }
    for h in &f.hosts {
        println!(
            "    host {:<16} {:<5} {:<7} generation {:<8} applied {:<8} new flows {}",
            h.name,
            if h.alive { "alive" } else { "DEAD" },
            if h.leader { "leader" } else { "" },
            h.revision
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
            h.applied_revision,
            h.new_flows
        );
    }
    for p in &f.pools {
        println!(
            "    fleet pool {:<10} new flows {:<10} rst {:<8} syn-ack {}",
            p.name, p.new_flows, p.rsts, p.synacks
        );
    }
    for b in &f.backends {
        println!(
            "    fleet backend {:<40} {:<9} flows {:<8} down votes {}/{}",
            b.addr,
            if b.healthy { "healthy" } else { "DOWN" },
            b.active_flows,
            b.down_votes,
            b.hosts
        );
    }
}

pub(super) fn print_status(st: &[ServiceStatus]) {
    for s in st {
        print_service(s);
    }
}

fn print_backend(b: &crate::model::api::BackendStatus) {
    println!(
        "    {:<40} {:<9} {:<9} w{:<4} flows {:<6} new {:<8} ({:>7.1}/s) pkts {:<10} ({:>9.1}/s) rst {}",
        b.addr,
        b.state.name(),
        if b.healthy { "healthy" } else { "UNHEALTHY" },
        b.weight,
        b.active_flows,
        b.new_flows,
        b.new_flows_per_s,
        b.packets,
        b.packets_per_s,
        b.rsts
    );
}

fn print_service(s: &ServiceStatus) {
    println!(
        "{}  {} {} {}  packets {}  new flows {}  dropped (no backend) {}  unpinned non-SYN {} (to previous owner {})",
        s.name,
        s.vip,
        serde_json::to_value(s.protocol)
            .unwrap_or_default()
            .as_str()
            .unwrap_or("?"),
        serde_json::to_value(s.mode)
            .unwrap_or_default()
            .as_str()
            .unwrap_or("?"),
        s.packets,
        s.new_flows,
        s.no_backend,
        s.nonsyn_miss,
        s.nonsyn_miss_prev
    );
    if let Some(st) = &s.strategy {
        let p = s.progress.unwrap_or(0.0).clamp(0.0, 1.0);
        let filled = (p * 30.0).round() as usize;
        println!(
            "  strategy: {st}\n  [{}{}] {:>3.0}%",
            "#".repeat(filled),
            "-".repeat(30 - filled),
            p * 100.0
        );
    }
    if let Some(f) = &s.fleet {
        print_fleet(f);
    }
    if let Some(b) = &s.bgp {
        print_bgp(b, s.vip.ip(), s.announced == Some(true));
    }
    for p in &s.pools {
        println!(
            "  pool {:<10} weight {:<6} share {:>6.2}%",
            p.name, p.weight, p.share
        );
        for b in &p.backends {
            print_backend(b);
        }
    }
    if let Some(sh) = &s.shadow {
        print_shadow(sh);
    }
    if !s.lingering.is_empty() {
        println!("  lingering (removed, established flows kept until they end)");
        for b in &s.lingering {
            print_backend(b);
        }
    }
}

fn print_shadow(sh: &crate::model::shadow::ShadowStatus) {
    let r = &sh.report;
    println!(
        "  shadow to {} ({}% of new connections, {}): sampled {} replayed {} refused {} reset {} timed out {} overflow {} ring lost {}",
        sh.spec.to,
        sh.spec.sample_percent,
        sh.spec.ended.as_deref().unwrap_or("running"),
        r.sampled,
        r.replayed,
        r.refused,
        r.reset,
        r.timed_out,
        r.overflow,
        r.ring_lost
    );
    println!(
        "    first byte p50/p99: shadow {:.2}/{:.2} ms, live {:.2}/{:.2} ms; errors: shadow {:.1}%, live {:.1}%; 5xx shadow {} live {}; bytes shadow {} live {}",
        r.shadow_ttfb.p50_ms,
        r.shadow_ttfb.p99_ms,
        r.live_ttfb.p50_ms,
        r.live_ttfb.p99_ms,
        r.shadow_error_rate * 100.0,
        r.live_error_rate * 100.0,
        r.shadow_statuses.c5,
        r.live_statuses.c5,
        r.bytes_received,
        r.live_bytes
    );
}

fn print_bgp(b: &crate::model::bgp::BgpStatus, vip: std::net::IpAddr, announced: bool) {
    let this = if announced {
        "announced".to_string()
    } else {
        match b.not_announced.get(&vip) {
            Some(why) => format!("NOT announced ({why})"),
            None => "NOT announced".to_string(),
        }
    };
    println!(
        "  bgp: AS {}, this VIP {this}; sessions: {}{}",
        b.asn,
        b.sessions
            .iter()
            .map(|x| format!("{} {}", x.neighbor, x.state))
            .collect::<Vec<_>>()
            .join(", "),
        b.withdrawn
            .as_ref()
            .map(|w| format!(" (withdrawn: {w})"))
            .unwrap_or_default()
    );
}
