//! Prometheus metrics: a read-only text exposition rendered from the same
//! status the CLI shows, served over plain HTTP on `daemon.metrics`.

use std::{collections::BTreeMap, fmt::Write as _};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::api::ServiceStatus;

/// Label values are quoted; backslash, quote and newline are escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render(
    services: &[ServiceStatus],
    reasons: &BTreeMap<String, u64>,
    last_change_ms: &BTreeMap<String, u64>,
) -> String {
    let mut o = String::new();
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(
            o,
            "# HELP switch_{name} {help}\n# TYPE switch_{name} {kind}"
        );
    };
    family(
        &mut o,
        "packets_total",
        "counter",
        "Packets seen by the XDP program, by verdict reason.",
    );
    for (r, n) in reasons {
        let _ = writeln!(o, "switch_packets_total{{reason=\"{}\"}} {n}", esc(r));
    }
    type ServiceField = fn(&ServiceStatus) -> u64;
    let per_service: [(&str, &str, ServiceField); 3] = [
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
    ];
    for (name, help, f) in per_service {
        family(&mut o, name, "counter", help);
        for s in services {
            let _ = writeln!(o, "switch_{name}{{service=\"{}\"}} {}", esc(&s.name), f(s));
        }
    }
    family(&mut o, "pool_weight", "gauge", "Configured pool weight.");
    for s in services {
        for p in &s.pools {
            let _ = writeln!(
                o,
                "switch_pool_weight{{service=\"{}\",pool=\"{}\"}} {}",
                esc(&s.name),
                esc(&p.name),
                p.weight
            );
        }
    }
    family(
        &mut o,
        "pool_share_ratio",
        "gauge",
        "Share of new flows the pool receives (0..1).",
    );
    for s in services {
        for p in &s.pools {
            let _ = writeln!(
                o,
                "switch_pool_share_ratio{{service=\"{}\",pool=\"{}\"}} {}",
                esc(&s.name),
                esc(&p.name),
                p.share / 100.0
            );
        }
    }
    type Field = fn(&crate::api::BackendStatus) -> u64;
    let per_backend: [(&str, &str, &str, Field); 7] = [
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
            "1 when the backend is draining.",
            |b| (b.state == "draining") as u64,
        ),
        (
            "backend_new_flows_per_second",
            "gauge",
            "New flows per second over the last second.",
            |b| b.new_flows_per_s.round() as u64,
        ),
    ];
    for (name, kind, help, f) in per_backend {
        family(&mut o, name, kind, help);
        for s in services {
            for p in &s.pools {
                for b in &p.backends {
                    let _ = writeln!(
                        o,
                        "switch_{name}{{service=\"{}\",pool=\"{}\",backend=\"{}\"}} {}",
                        esc(&s.name),
                        esc(&p.name),
                        b.addr,
                        f(b)
                    );
                }
            }
        }
    }
    family(
        &mut o,
        "strategy_progress_ratio",
        "gauge",
        "Progress of the service's strategy (0..1).",
    );
    for s in services {
        if let (Some(st), Some(p)) = (&s.strategy, s.progress) {
            let _ = writeln!(
                o,
                "switch_strategy_progress_ratio{{service=\"{}\",strategy=\"{}\"}} {p}",
                esc(&s.name),
                esc(st)
            );
        }
    }
    family(
        &mut o,
        "last_change_timestamp_seconds",
        "gauge",
        "When the service last changed (flip, step, weights).",
    );
    for (svc, ms) in last_change_ms {
        let _ = writeln!(
            o,
            "switch_last_change_timestamp_seconds{{service=\"{}\"}} {:.3}",
            esc(svc),
            *ms as f64 / 1000.0
        );
    }
    o
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
