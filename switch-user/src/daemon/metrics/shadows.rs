//! Shadow figures: replays, outcomes, status classes and latencies per service.

use super::*;

/// The shadows' figures: bounded labels only (outcome, side, class).
/// One piece on purpose: a list of families, each a few lines, in the
/// order the page shows them.
pub(super) fn shadows(o: &mut Page, services: &[ServiceStatus]) {
    let with: Vec<(&str, &crate::model::shadow::ShadowStatus)> = services
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
    type Outcome = fn(&crate::model::shadow::Report) -> u64;
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
    type Class = fn(&crate::model::shadow::Statuses) -> u64;
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
