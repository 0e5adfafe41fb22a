//! The strategies on a fake clock with fake signals.

use super::*;

fn sig(
    to_flows: u64,
    to_rsts: u64,
    from_flows: u64,
    from_rsts: u64,
    to_unhealthy: usize,
) -> Signals {
    let mut s = Signals::new();
    let mut green = PoolSignals {
        new_flows: to_flows,
        rsts: to_rsts,
        synacks: to_flows,
        ..Default::default()
    };
    for i in 0..2u8 {
        green.backends.insert(
            format!("198.18.2.{i}:80").parse().unwrap(),
            BackendSignals {
                healthy: (i as usize) >= to_unhealthy,
                healthy_since_ms: Some(0),
                active_flows: 0,
                flows_counted_ms: u64::MAX,
            },
        );
    }
    s.insert("green".into(), green);
    s.insert(
        "blue".into(),
        PoolSignals {
            new_flows: from_flows,
            rsts: from_rsts,
            synacks: from_flows,
            ..Default::default()
        },
    );
    s
}

/// Gates for tests without traffic: steps do not wait for connections.
fn quiet() -> Gates {
    Gates {
        min_flows: 0,
        ..Default::default()
    }
}

fn w(changes: &[Change]) -> Option<(u32, u32)> {
    changes.iter().find_map(|c| match c {
        Change::Weights(m) => Some((m["green"], m["blue"])),
        _ => None,
    })
}

#[test]
fn canary_walks_its_steps_and_succeeds() {
    let s = sig(0, 0, 0, 0, 0);
    let (mut c, ch) = Canary::start(
        "green",
        "blue",
        vec![1, 5, 25, 50, 100],
        1000,
        quiet(),
        0,
        &s,
    );
    assert_eq!(w(&ch), Some((1, 99)));
    assert!(c.tick(500, &s).is_empty(), "holds for the interval");
    assert_eq!(w(&c.tick(1000, &s)), Some((5, 95)));
    assert_eq!(w(&c.tick(2000, &s)), Some((25, 75)));
    assert_eq!(w(&c.tick(3000, &s)), Some((50, 50)));
    assert_eq!(w(&c.tick(4000, &s)), Some((100, 0)));
    assert!(c.tick(5000, &s).is_empty());
    assert_eq!(c.phase, Phase::Succeeded);
}

#[test]
fn canary_rolls_back_on_an_unhealthy_backend() {
    let (mut c, _) = Canary::start(
        "green",
        "blue",
        vec![10, 50, 100],
        1000,
        quiet(),
        0,
        &sig(0, 0, 0, 0, 0),
    );
    assert_eq!(w(&c.tick(1000, &sig(0, 0, 0, 0, 0))), Some((50, 50)));
    assert_eq!(w(&c.tick(1100, &sig(0, 0, 0, 0, 1))), Some((0, 100)));
    assert!(
        matches!(&c.phase, Phase::RolledBack(why) if why.contains("unhealthy")),
        "{:?}",
        c.phase
    );
    assert!(
        c.tick(5000, &sig(0, 0, 0, 0, 0)).is_empty(),
        "a rolled-back canary stays put"
    );
}

#[test]
fn canary_rst_gate_compares_against_the_old_pool() {
    let (mut c, _) = Canary::start(
        "green",
        "blue",
        vec![10, 100],
        1000,
        Gates::default(),
        0,
        &sig(100, 5, 1000, 50, 0),
    );
    // Same ratio as blue (5%): passes.
    assert!(c.tick(100, &sig(200, 10, 2000, 100, 0)).is_empty());
    assert_eq!(c.phase, Phase::Running);
    // Too few new flows to judge: inconclusive, holds.
    let (mut c2, _) = Canary::start(
        "green",
        "blue",
        vec![10, 100],
        1000,
        Gates::default(),
        0,
        &sig(0, 0, 0, 0, 0),
    );
    assert!(c2.tick(100, &sig(5, 5, 100, 0, 0)).is_empty());
    assert_eq!(c2.phase, Phase::Running);
    // 50% RSTs against 5%: rolls back.
    assert_eq!(w(&c.tick(200, &sig(300, 60, 3000, 150, 0))), Some((0, 100)));
    assert!(matches!(&c.phase, Phase::RolledBack(why) if why.contains("RST")));
}

#[test]
fn blue_green_drain_waits_for_the_old_pools_flows() {
    let flows = |n: u64| -> Signals {
        let mut p = PoolSignals::default();
        p.backends.insert(
            "198.18.1.11:80".parse().unwrap(),
            BackendSignals {
                healthy: true,
                healthy_since_ms: Some(0),
                active_flows: n,
                flows_counted_ms: u64::MAX,
            },
        );
        [("blue".to_string(), p)].into()
    };
    let (mut b, ch) = BlueGreen::start("green", "blue", None, None, Some(1000), 0);
    assert_eq!(w(&ch), Some((100, 0)));
    assert!(b.draining());
    b.tick(500, &flows(3));
    assert!(b.draining(), "flows left, within the timeout");
    b.tick(600, &flows(0));
    assert_eq!(b.phase, Phase::Succeeded);
    let (mut b, _) = BlueGreen::start("green", "blue", None, None, Some(1000), 0);
    b.tick(1000, &flows(2));
    assert_eq!((b.phase.clone(), b.drain_left), (Phase::Succeeded, Some(2)));
}

#[test]
fn canary_rolls_back_when_connection_attempts_go_unanswered() {
    let (mut c, _) = Canary::start(
        "green",
        "blue",
        vec![10, 100],
        1000,
        Gates::default(),
        0,
        &sig(0, 0, 0, 0, 0),
    );
    let mut s = sig(100, 0, 1000, 0, 0);
    s.get_mut("green").unwrap().synacks = 40; // 60% unanswered
    assert_eq!(w(&c.tick(100, &s)), Some((0, 100)));
    assert!(
        matches!(&c.phase, Phase::RolledBack(why) if why.contains("no answer")),
        "{:?}",
        c.phase
    );
}

#[test]
fn a_step_waits_for_traffic_and_for_prometheus() {
    let gates = Gates {
        prometheus: Some(PromGate {
            token: None,
            url: "http://127.0.0.1:9090".into(),
            query: "errors".into(),
            max: 0.05,
            on_no_data: NoData::Hold,
        }),
        ..Default::default()
    };
    let (mut c, _) = Canary::start(
        "green",
        "blue",
        vec![10, 100],
        1000,
        gates,
        0,
        &sig(0, 0, 0, 0, 0),
    );
    assert!(
        c.tick(1000, &sig(5, 0, 50, 0, 0)).is_empty(),
        "too few connections"
    );
    assert!(c.waiting.as_ref().unwrap().contains("new connections"));
    assert!(
        c.tick(1100, &sig(50, 0, 500, 0, 0)).is_empty(),
        "no Prometheus answer yet"
    );
    c.reading = Some(Reading::NoData);
    assert!(
        c.tick(1200, &sig(50, 0, 500, 0, 0)).is_empty(),
        "no data: hold"
    );
    c.reading = Some(Reading::Value(0.01));
    assert_eq!(w(&c.tick(1300, &sig(50, 0, 500, 0, 0))), Some((100, 0)));
    c.reading = Some(Reading::Value(0.5));
    assert_eq!(w(&c.tick(1400, &sig(60, 0, 600, 0, 0))), Some((0, 100)));
    assert!(matches!(&c.phase, Phase::RolledBack(why) if why.contains("Prometheus")));
    // With on_no_data = fail, no data rolls back.
    let mut gates = quiet();
    gates.prometheus = Some(PromGate {
        token: None,
        url: "http://x:1".into(),
        query: "q".into(),
        max: 1.0,
        on_no_data: NoData::Fail,
    });
    let (mut c, _) = Canary::start(
        "green",
        "blue",
        vec![10, 100],
        1000,
        gates,
        0,
        &sig(0, 0, 0, 0, 0),
    );
    c.reading = Some(Reading::NoData);
    assert_eq!(w(&c.tick(10, &sig(0, 0, 0, 0, 0))), Some((0, 100)));
}

#[test]
fn canary_pause_resume_promote_abort() {
    let s = sig(0, 0, 0, 0, 0);
    let (mut c, _) = Canary::start("green", "blue", vec![10, 50, 100], 1000, quiet(), 0, &s);
    c.pause(600);
    assert!(c.tick(5000, &s).is_empty(), "paused: no step");
    c.resume(10_000);
    assert!(c.tick(10_300, &s).is_empty(), "resumed with 400ms left");
    assert_eq!(w(&c.tick(10_400, &s)), Some((50, 50)));
    assert_eq!(w(&c.clone().promote()), Some((100, 0)));
    assert_eq!(w(&c.abort(None)), Some((0, 100)));
    assert_eq!(c.phase, Phase::Aborted);
}

#[test]
fn blue_green_preview_then_auto_promote() {
    let cidr: ipnet::IpNet = "198.18.50.0/24".parse().unwrap();
    let (mut b, ch) = BlueGreen::start("green", "blue", Some(cidr), Some(1000), None, 0);
    assert_eq!(
        ch,
        vec![Change::Cohort {
            cidr,
            pool: Some("green".into())
        }]
    );
    assert!(b.tick(500, &sig(0, 0, 0, 0, 0)).is_empty());
    let ch = b.tick(1000, &sig(0, 0, 0, 0, 0));
    assert_eq!(w(&ch), Some((100, 0)));
    assert!(ch.contains(&Change::Cohort { cidr, pool: None }));
    assert_eq!(b.phase, Phase::Succeeded);
    // An unhealthy new pool during preview aborts it.
    let (mut b, _) = BlueGreen::start("green", "blue", Some(cidr), Some(1000), None, 0);
    assert_eq!(w(&b.tick(10, &sig(0, 0, 0, 0, 1))), Some((0, 100)));
    assert!(matches!(b.phase, Phase::RolledBack(_)));
}

fn rolling_sig(flows_old: u64, new_healthy_since: Option<u64>) -> Signals {
    let mut p = PoolSignals::default();
    p.backends.insert(
        "198.18.1.11:80".parse().unwrap(),
        BackendSignals {
            healthy: true,
            healthy_since_ms: Some(0),
            active_flows: flows_old,
            flows_counted_ms: u64::MAX,
        },
    );
    p.backends.insert(
        "198.18.1.21:80".parse().unwrap(),
        BackendSignals {
            healthy: new_healthy_since.is_some(),
            healthy_since_ms: new_healthy_since,
            active_flows: 0,
            flows_counted_ms: u64::MAX,
        },
    );
    [("blue".to_string(), p)].into()
}

#[test]
fn rolling_drains_removes_adds_and_waits_for_health() {
    let (old, new): (SocketAddr, SocketAddr) = (
        "198.18.1.11:80".parse().unwrap(),
        "198.18.1.21:80".parse().unwrap(),
    );
    let mut r = Rolling::start("blue", vec![(old, new)], 1, 10_000, 500, 5_000);
    assert_eq!(
        r.tick(0, &rolling_sig(3, None)),
        vec![Change::DrainBackend {
            pool: "blue".into(),
            addr: old
        }]
    );
    assert!(
        r.tick(100, &rolling_sig(3, None)).is_empty(),
        "waits while flows remain"
    );
    assert_eq!(
        r.tick(200, &rolling_sig(0, None)),
        vec![
            Change::RemoveBackend {
                pool: "blue".into(),
                addr: old,
                linger_limit_ms: None,
            },
            Change::AddBackend {
                pool: "blue".into(),
                addr: new
            }
        ]
    );
    assert!(
        r.tick(300, &rolling_sig(0, Some(300))).is_empty(),
        "healthy, but not long enough"
    );
    assert!(r.tick(800, &rolling_sig(0, Some(300))).is_empty());
    assert_eq!(r.phase, Phase::Succeeded);
}

#[test]
fn a_drain_does_not_trust_a_flow_count_taken_before_it_began() {
    let (old, new): (SocketAddr, SocketAddr) = (
        "198.18.1.11:80".parse().unwrap(),
        "198.18.1.21:80".parse().unwrap(),
    );
    let mut r = Rolling::start("blue", vec![(old, new)], 1, 10_000, 500, 5_000);
    r.tick(100, &rolling_sig(3, None));
    let mut stale = rolling_sig(0, None);
    stale
        .get_mut("blue")
        .unwrap()
        .backends
        .get_mut(&old)
        .unwrap()
        .flows_counted_ms = 50;
    assert!(
        r.tick(200, &stale).is_empty(),
        "a count from before the drain says nothing"
    );
    assert_eq!(
        r.tick(300, &rolling_sig(0, None)).len(),
        2,
        "a fresh zero ends the drain"
    );
}

#[test]
fn rolling_drain_timeout_and_holding_on_a_sick_replacement() {
    let (old, new): (SocketAddr, SocketAddr) = (
        "198.18.1.11:80".parse().unwrap(),
        "198.18.1.21:80".parse().unwrap(),
    );
    let mut r = Rolling::start("blue", vec![(old, new)], 1, 1_000, 500, 2_000);
    r.tick(0, &rolling_sig(3, None));
    assert_eq!(
        r.tick(1_000, &rolling_sig(3, None)).len(),
        2,
        "drain timeout reached: remove and add"
    );
    assert!(r.tick(2_000, &rolling_sig(0, None)).is_empty());
    r.tick(3_000, &rolling_sig(0, None));
    assert!(
        matches!(&r.phase, Phase::Holding(why) if why.contains("did not become healthy")),
        "{:?}",
        r.phase
    );
}
