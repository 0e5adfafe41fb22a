//! Prometheus metrics: a read-only text exposition rendered from the same
//! status the CLI shows, served over plain HTTP on `daemon.metrics`.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::{
    api::{BackendState, BackendStatus, ServiceStatus},
    strategy::{PhaseKind, StrategyKind},
};

/// Every label set the exposition uses. Values are bounded: names from the
/// configuration, addresses, and enums; never free text (a label that
/// changes with time makes a new series on every scrape).
enum Labels<'a> {
    Reason(&'a str),
    Service(&'a str),
    Pool(&'a str, &'a str),
    Backend(&'a str, &'a str, SocketAddr),
    Strategy(&'a str, StrategyKind),
    Phase(&'a str, StrategyKind, PhaseKind),
    /// A service and fixed (label, value) pairs from this module.
    Fixed(&'a str, &'static [(&'static str, &'static str)]),
    /// A switch host of the fleet (names from the fleet's config).
    Host(&'a str),
    /// A BGP neighbor (addresses from the config).
    Neighbor(std::net::IpAddr),
    None,
}

impl Labels<'_> {
    fn render(&self) -> String {
        let pairs: Vec<(&str, String)> = match self {
            Labels::Reason(r) => vec![("reason", r.to_string())],
            Labels::Service(s) => vec![("service", s.to_string())],
            Labels::Pool(s, p) => vec![("service", s.to_string()), ("pool", p.to_string())],
            Labels::Backend(s, p, b) => vec![
                ("service", s.to_string()),
                ("pool", p.to_string()),
                ("backend", b.to_string()),
            ],
            Labels::Strategy(s, k) => {
                vec![("service", s.to_string()), ("kind", k.name().to_string())]
            }
            Labels::Phase(s, k, p) => vec![
                ("service", s.to_string()),
                ("kind", k.name().to_string()),
                ("phase", p.name().to_string()),
            ],
            Labels::Fixed(s, pairs) => std::iter::once(("service", s.to_string()))
                .chain(pairs.iter().map(|(k, v)| (*k, v.to_string())))
                .collect(),
            Labels::Host(h) => vec![("host", h.to_string())],
            Labels::Neighbor(n) => vec![("neighbor", n.to_string())],
            Labels::None => return String::new(),
        };
        let inner: Vec<String> = pairs
            .into_iter()
            .map(|(k, v)| format!("{k}=\"{}\"", esc(&v)))
            .collect();
        format!("{{{}}}", inner.join(","))
    }
}

/// Label values are quoted; backslash, quote and newline are escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Page(String);

impl Page {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.0,
            "# HELP switch_{name} {help}\n# TYPE switch_{name} {kind}"
        );
    }
    fn sample(&mut self, name: &str, labels: Labels, value: impl std::fmt::Display) {
        let _ = writeln!(self.0, "switch_{name}{} {value}", labels.render());
    }
}

const PHASES: [PhaseKind; 6] = [
    PhaseKind::Running,
    PhaseKind::Paused,
    PhaseKind::Holding,
    PhaseKind::Succeeded,
    PhaseKind::RolledBack,
    PhaseKind::Aborted,
];

/// The shadows' figures: bounded labels only (outcome, side, class).
fn shadows(o: &mut Page, services: &[ServiceStatus]) {
    let with: Vec<(&str, &crate::shadow::ShadowStatus)> = services
        .iter()
        .filter_map(|s| s.shadow.as_ref().map(|sh| (s.name.as_str(), sh)))
        .collect();
    o.family(
        "shadow_running",
        "gauge",
        "1 while the service's shadow runs.",
    );
    for (svc, sh) in &with {
        o.sample(
            "shadow_running",
            Labels::Service(svc),
            sh.spec.running() as u8,
        );
    }
    o.family(
        "shadow_connections_total",
        "counter",
        "Sampled connections by what became of their replay.",
    );
    type Outcome = fn(&crate::shadow::Report) -> u64;
    let outcomes: [(&'static [(&'static str, &'static str)], Outcome); 7] = [
        (&[("outcome", "sampled")], |r| r.sampled),
        (&[("outcome", "replayed")], |r| r.replayed),
        (&[("outcome", "refused")], |r| r.refused),
        (&[("outcome", "reset")], |r| r.reset),
        (&[("outcome", "timed_out")], |r| r.timed_out),
        (&[("outcome", "overflow")], |r| r.overflow),
        (&[("outcome", "ring_lost")], |r| r.ring_lost),
    ];
    for (svc, sh) in &with {
        for (labels, f) in &outcomes {
            o.sample(
                "shadow_connections_total",
                Labels::Fixed(svc, labels),
                f(&sh.report),
            );
        }
    }
    o.family(
        "shadow_responses_total",
        "counter",
        "HTTP/1.x responses of the shadow and of the live pool for the sampled connections, by status class.",
    );
    type Class = fn(&crate::shadow::Statuses) -> u64;
    let classes: [(&'static str, Class); 5] = [
        ("1xx", |s| s.c1),
        ("2xx", |s| s.c2),
        ("3xx", |s| s.c3),
        ("4xx", |s| s.c4),
        ("5xx", |s| s.c5),
    ];
    const SIDES: [[(&str, &str); 2]; 10] = [
        [("side", "shadow"), ("class", "1xx")],
        [("side", "shadow"), ("class", "2xx")],
        [("side", "shadow"), ("class", "3xx")],
        [("side", "shadow"), ("class", "4xx")],
        [("side", "shadow"), ("class", "5xx")],
        [("side", "live"), ("class", "1xx")],
        [("side", "live"), ("class", "2xx")],
        [("side", "live"), ("class", "3xx")],
        [("side", "live"), ("class", "4xx")],
        [("side", "live"), ("class", "5xx")],
    ];
    for (svc, sh) in &with {
        for (i, (_, f)) in classes.iter().enumerate() {
            o.sample(
                "shadow_responses_total",
                Labels::Fixed(svc, &SIDES[i]),
                f(&sh.report.shadow_statuses),
            );
            o.sample(
                "shadow_responses_total",
                Labels::Fixed(svc, &SIDES[i + 5]),
                f(&sh.report.live_statuses),
            );
        }
    }
    o.family(
        "shadow_first_byte_seconds",
        "gauge",
        "Time to the first answer byte, shadow and live, p50 and p99.",
    );
    const Q: [[(&str, &str); 2]; 4] = [
        [("side", "shadow"), ("quantile", "0.5")],
        [("side", "shadow"), ("quantile", "0.99")],
        [("side", "live"), ("quantile", "0.5")],
        [("side", "live"), ("quantile", "0.99")],
    ];
    for (svc, sh) in &with {
        let r = &sh.report;
        let v = [
            r.shadow_ttfb.p50_ms,
            r.shadow_ttfb.p99_ms,
            r.live_ttfb.p50_ms,
            r.live_ttfb.p99_ms,
        ];
        for (labels, ms) in Q.iter().zip(v) {
            o.sample(
                "shadow_first_byte_seconds",
                Labels::Fixed(svc, labels),
                ms / 1000.0,
            );
        }
    }
}

/// Every backend of a service with the pool it is in (lingering ones with
/// the pool they left).
fn backends(s: &ServiceStatus) -> impl Iterator<Item = &BackendStatus> {
    s.pools
        .iter()
        .flat_map(|p| p.backends.iter())
        .chain(s.lingering.iter())
}

pub fn render(
    services: &[ServiceStatus],
    reasons: &BTreeMap<String, u64>,
    last_change_ms: &BTreeMap<String, u64>,
) -> String {
    let mut o = Page(String::new());
    o.family(
        "packets_total",
        "counter",
        "Packets seen by the XDP program, by verdict reason.",
    );
    for (r, n) in reasons {
        o.sample("packets_total", Labels::Reason(r), n);
    }
    type ServiceField = fn(&ServiceStatus) -> u64;
    let per_service: [(&str, &str, ServiceField); 5] = [
        (
            "service_packets_total",
            "Packets to the service's VIP.",
            |s| s.packets,
        ),
        (
            "service_new_flows_total",
            "New flows to the service.",
            |s| s.new_flows,
        ),
        (
            "service_no_backend_total",
            "Packets dropped for want of an eligible backend.",
            |s| s.no_backend,
        ),
        (
            "service_nonsyn_miss_total",
            "TCP packets that were not a SYN, found no pin, and went by the current table.",
            |s| s.nonsyn_miss,
        ),
        (
            "service_nonsyn_miss_prev_total",
            "TCP packets that were not a SYN, found no pin, and went to their slot's previous owner.",
            |s| s.nonsyn_miss_prev,
        ),
    ];
    for (name, help, f) in per_service {
        o.family(name, "counter", help);
        for s in services {
            o.sample(name, Labels::Service(&s.name), f(s));
        }
    }
    o.family("pool_weight", "gauge", "Configured pool weight.");
    for s in services {
        for p in &s.pools {
            o.sample("pool_weight", Labels::Pool(&s.name, &p.name), p.weight);
        }
    }
    o.family(
        "pool_share_ratio",
        "gauge",
        "Share of new flows the pool receives (0..1).",
    );
    for s in services {
        for p in &s.pools {
            o.sample(
                "pool_share_ratio",
                Labels::Pool(&s.name, &p.name),
                p.share / 100.0,
            );
        }
    }
    type Field = fn(&BackendStatus) -> u64;
    let per_backend: [(&str, &str, &str, Field); 8] = [
        (
            "backend_packets_total",
            "counter",
            "Packets to and from the backend.",
            |b| b.packets,
        ),
        (
            "backend_new_flows_total",
            "counter",
            "New flows sent to the backend.",
            |b| b.new_flows,
        ),
        (
            "backend_rsts_total",
            "counter",
            "TCP RSTs sent by the backend.",
            |b| b.rsts,
        ),
        (
            "backend_active_flows",
            "gauge",
            "Flows pinned to the backend.",
            |b| b.active_flows,
        ),
        (
            "backend_healthy",
            "gauge",
            "1 when the backend passes its health checks.",
            |b| b.healthy as u64,
        ),
        (
            "backend_draining",
            "gauge",
            "1 when the backend is draining (no new flows).",
            |b| (b.state == BackendState::Draining) as u64,
        ),
        (
            "backend_lingering",
            "gauge",
            "1 when the backend was removed but keeps its established flows.",
            |b| (b.state == BackendState::Lingering) as u64,
        ),
        (
            "backend_new_flows_per_second",
            "gauge",
            "New flows per second over the last second.",
            |b| b.new_flows_per_s.round() as u64,
        ),
    ];
    for (name, kind, help, f) in per_backend {
        o.family(name, kind, help);
        for s in services {
            for b in backends(s) {
                o.sample(name, Labels::Backend(&s.name, &b.pool, b.addr), f(b));
            }
        }
    }
    o.family(
        "strategy_progress_ratio",
        "gauge",
        "Progress of the service's strategy (0..1).",
    );
    for s in services {
        if let (Some(k), Some(p)) = (s.strategy_kind, s.progress) {
            o.sample("strategy_progress_ratio", Labels::Strategy(&s.name, k), p);
        }
    }
    o.family(
        "strategy_phase",
        "gauge",
        "1 for the phase the service's strategy is in, 0 for the others.",
    );
    for s in services {
        if let (Some(k), Some(phase)) = (s.strategy_kind, s.phase) {
            for p in PHASES {
                o.sample(
                    "strategy_phase",
                    Labels::Phase(&s.name, k, p),
                    (p == phase) as u8,
                );
            }
        }
    }
    shadows(&mut o, services);
    fleet(&mut o, services);
    bgp(&mut o, services);
    o.family(
        "last_change_timestamp_seconds",
        "gauge",
        "When the service last changed (flip, step, weights).",
    );
    for (svc, ms) in last_change_ms {
        o.sample(
            "last_change_timestamp_seconds",
            Labels::Service(svc),
            format!("{:.3}", *ms as f64 / 1000.0),
        );
    }
    o.0
}

/// With `[bgp]`: what this host announces and its sessions.
fn bgp(o: &mut Page, services: &[ServiceStatus]) {
    let Some(b) = services.iter().find_map(|s| s.bgp.as_ref()) else {
        return;
    };
    o.family(
        "bgp_announced",
        "gauge",
        "1 while this host announces the service's VIP over BGP.",
    );
    for s in services {
        if let Some(a) = s.announced {
            o.sample("bgp_announced", Labels::Service(&s.name), a as u8);
        }
    }
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

/// Fleet mode only: this host's view of the fleet, and fleet-wide figures.
fn fleet(o: &mut Page, services: &[ServiceStatus]) {
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
    type HostField = fn(&crate::api::FleetHostStatus) -> i64;
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
    let fleets: Vec<(&str, &crate::api::FleetStatus)> = services
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
    type PoolField = fn(&crate::api::FleetPoolStatus) -> u64;
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
    type BackendField = fn(&crate::api::FleetBackendStatus) -> u64;
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

/// Serves `GET /metrics`; anything else gets 404 or 405. `body` renders
/// the page for each scrape.
pub async fn serve(listener: TcpListener, body: impl Fn() -> String + Send + Sync + 'static) {
    let body = std::sync::Arc::new(body);
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let body = body.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
                .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let mut parts = req.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, text) = match (method, path) {
                ("GET", "/metrics") => (
                    "200 OK",
                    tokio::task::spawn_blocking(move || body())
                        .await
                        .unwrap_or_default(),
                ),
                ("GET", _) => ("404 Not Found", "not found: try /metrics\n".to_string()),
                _ => (
                    "405 Method Not Allowed",
                    "the metrics endpoint is read-only\n".to_string(),
                ),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::PoolStatus,
        config::{ForwardMode, Protocol},
    };

    fn backend(addr: &str, pool: &str, state: BackendState) -> BackendStatus {
        BackendStatus {
            addr: addr.parse().unwrap(),
            pool: pool.into(),
            weight: 1,
            state,
            packets: 10,
            new_flows: 2,
            rsts: 0,
            active_flows: 1,
            packets_per_s: 1.0,
            new_flows_per_s: 0.4,
            healthy: true,
            health_error: None,
        }
    }

    fn status(description: &str, phase: PhaseKind) -> Vec<ServiceStatus> {
        vec![ServiceStatus {
            name: "web".into(),
            vip: "198.18.0.10:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            mode: ForwardMode::Nat,
            packets: 100,
            new_flows: 20,
            no_backend: 0,
            nonsyn_miss: 3,
            nonsyn_miss_prev: 1,
            pools: vec![
                PoolStatus {
                    name: "blue".into(),
                    weight: 95,
                    share: 95.0,
                    backends: vec![backend("198.18.1.11:8080", "blue", BackendState::Active)],
                },
                PoolStatus {
                    name: "green".into(),
                    weight: 5,
                    share: 5.0,
                    backends: vec![backend("198.18.2.11:8080", "green", BackendState::Draining)],
                },
            ],
            strategy: Some(description.into()),
            strategy_kind: Some(StrategyKind::Canary),
            phase: Some(phase),
            progress: Some(0.05),
            lingering: vec![backend("198.18.1.12:8080", "blue", BackendState::Lingering)],
            shadow: Some(crate::shadow::ShadowStatus {
                spec: crate::shadow::ShadowSpec {
                    to: "green".into(),
                    sample_percent: 10.0,
                    sample: 6554,
                    started_ms: 1_700_000_000_000,
                    until_ms: None,
                    max_sessions: 1000,
                    max_buffer: 65536,
                    ended: None,
                },
                report: crate::shadow::Report {
                    sampled: 12,
                    replayed: 11,
                    ..Default::default()
                },
            }),
            fleet: Some(crate::api::FleetStatus {
                host: "sw-a".into(),
                leader: Some("sw-b".into()),
                etcd_reachable: true,
                revision: 42,
                health_revision: 40,
                applied_revision: 57,
                refused: None,
                hosts: vec![
                    crate::api::FleetHostStatus {
                        name: "sw-a".into(),
                        alive: true,
                        leader: false,
                        applied_revision: 57,
                        revision: Some(42),
                        health_revision: 40,
                        new_flows: 10,
                        last_report_ms_ago: Some(300),
                    },
                    crate::api::FleetHostStatus {
                        name: "sw-b".into(),
                        alive: true,
                        leader: true,
                        applied_revision: 56,
                        revision: Some(42),
                        health_revision: 40,
                        new_flows: 12,
                        last_report_ms_ago: Some(800),
                    },
                ],
                pools: vec![crate::api::FleetPoolStatus {
                    name: "green".into(),
                    new_flows: 22,
                    rsts: 1,
                    synacks: 21,
                }],
                backends: vec![crate::api::FleetBackendStatus {
                    addr: "198.18.1.13:8080".parse().unwrap(),
                    pool: "green".into(),
                    active_flows: 7,
                    healthy: true,
                    down_votes: 1,
                    hosts: 2,
                }],
            }),
            bgp: Some(crate::bgp::BgpStatus {
                asn: 65001,
                sessions: vec![crate::bgp::Session {
                    neighbor: "198.18.0.254".parse().unwrap(),
                    state: "Established".into(),
                }],
                announced: vec!["198.18.0.10".parse().unwrap()],
                withdrawn: None,
            }),
            announced: Some(true),
        }]
    }

    fn series(page: &str) -> Vec<String> {
        page.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
            .collect()
    }

    #[test]
    fn the_page_matches_the_golden_file() {
        let reasons = [("forwarded".to_string(), 7)].into();
        let last = [("web".to_string(), 1_700_000_000_000)].into();
        let page = render(
            &status(
                "canary blue -> green: step 2/5 at 5%, running, next step in 12s",
                PhaseKind::Running,
            ),
            &reasons,
            &last,
        );
        let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/metrics.txt");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(golden, &page).unwrap();
        }
        let want = std::fs::read_to_string(golden).unwrap();
        assert_eq!(page, want, "UPDATE_GOLDEN=1 rewrites the golden file");
    }

    #[test]
    fn labels_do_not_change_with_time_or_text() {
        let (r, l) = (BTreeMap::new(), BTreeMap::new());
        let a = render(
            &status("step 1/5, next step in 12s", PhaseKind::Running),
            &r,
            &l,
        );
        let b = render(
            &status("step 1/5, next step in 3s", PhaseKind::Paused),
            &r,
            &l,
        );
        let c = render(
            &status(
                "rolled back: resets 0.4 above blue's",
                PhaseKind::RolledBack,
            ),
            &r,
            &l,
        );
        assert_eq!(series(&a), series(&b));
        assert_eq!(series(&a), series(&c));
        assert!(!a.contains("next step"), "free text never reaches a label");
    }
}
