//! The page against a golden file; labels that do not change with time or text.

use super::*;
use crate::{
    model::api::PoolStatus,
    model::config::{ForwardMode, Protocol},
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

/// One status with every kind of figure the page has (a long literal on
/// purpose: the golden page is made from it).
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
        shadow: Some(crate::model::shadow::ShadowStatus {
            spec: crate::model::shadow::ShadowSpec {
                to: "green".into(),
                sample_percent: 10.0,
                sample: 6554,
                started_ms: 1_700_000_000_000,
                until_ms: None,
                max_sessions: 1000,
                max_buffer: 65536,
                ended: None,
            },
            report: crate::model::shadow::Report {
                sampled: 12,
                replayed: 11,
                ..Default::default()
            },
        }),
        fleet: Some(crate::model::api::FleetStatus {
            host: "sw-a".into(),
            leader: Some("sw-b".into()),
            etcd_reachable: true,
            revision: 42,
            health_revision: 40,
            applied_revision: 57,
            refused: None,
            rejected_record: None,
            rejected_records_total: 0,
            etcd_error: None,
            hosts: vec![
                crate::model::api::FleetHostStatus {
                    name: "sw-a".into(),
                    alive: true,
                    leader: false,
                    applied_revision: 57,
                    revision: Some(42),
                    health_revision: 40,
                    new_flows: 10,
                    last_report_ms_ago: Some(300),
                },
                crate::model::api::FleetHostStatus {
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
            pools: vec![crate::model::api::FleetPoolStatus {
                name: "green".into(),
                new_flows: 22,
                rsts: 1,
                synacks: 21,
            }],
            backends: vec![crate::model::api::FleetBackendStatus {
                addr: "198.18.1.13:8080".parse().unwrap(),
                pool: "green".into(),
                active_flows: 7,
                healthy: true,
                down_votes: 1,
                hosts: 2,
            }],
        }),
        bgp: Some(crate::model::bgp::BgpStatus {
            asn: 65001,
            sessions: vec![crate::model::bgp::Session {
                neighbor: "198.18.0.254".parse().unwrap(),
                state: "Established".into(),
                exported: vec!["198.18.0.10".parse().unwrap()],
                families: vec!["ipv4".into()],
                accepted: vec!["ipv4".into()],
            }],
            announced: vec!["198.18.0.10".parse().unwrap()],
            ..Default::default()
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
