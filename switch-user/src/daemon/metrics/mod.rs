//! Prometheus metrics: a read-only text exposition rendered from the same
//! status the CLI shows, served over plain HTTP on `daemon.metrics`.

mod fleet;
mod shadows;
#[cfg(test)]
mod tests;

use fleet::{bgp, fleet};
use shadows::shadows;

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::{
    engine::strategy::{PhaseKind, StrategyKind},
    model::api::{BackendState, BackendStatus, ServiceStatus},
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
    /// A VIP and a BGP neighbor it is (or is not) exported to.
    Route(std::net::IpAddr, std::net::IpAddr),
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
            Labels::Route(v, n) => vec![("vip", v.to_string()), ("neighbor", n.to_string())],
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
    per_service(&mut o, services);
    per_backend(&mut o, services);
    strategies(&mut o, services);
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

/// Per service: its counters, its pools' weights and shares.
fn per_service(o: &mut Page, services: &[ServiceStatus]) {
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
}

/// Per backend: counters, flows, health and admin state.
fn per_backend(o: &mut Page, services: &[ServiceStatus]) {
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
}

/// Per running strategy: progress and phase.
fn strategies(o: &mut Page, services: &[ServiceStatus]) {
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
