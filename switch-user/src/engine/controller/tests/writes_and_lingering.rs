//! Failed map writes commit nothing; removed backends linger until their flows end.

use super::*;

fn snapshot(c: &Controller) -> String {
    serde_json::to_string(c).unwrap()
}

fn backend_cmd(action: BackendAction, addr: &str, now: bool) -> Command {
    Command::Backend {
        service: "web".into(),
        pool: "blue".into(),
        addr: addr.parse().unwrap(),
        action,
        weight: None,
        now,
        linger_limit_ms: None,
    }
}

/// With a data plane whose writes fail, every command fails and leaves
/// the whole controller (state, strategies, health, undo, history)
/// exactly as it was; the same command then succeeds once the maps work.
/// One piece on purpose: a table of every command that writes.
#[test]
fn a_failed_write_commits_nothing_for_every_command() {
    let svc = |s: &str| s.to_string();
    let flip = Command::Flip {
        service: svc("web"),
        to: svc("green"),
        preview: None,
        auto_promote_ms: None,
        drain_ms: None,
    };
    let preview = Command::Flip {
        service: svc("web"),
        to: svc("green"),
        preview: Some("198.18.50.0/24".parse().unwrap()),
        auto_promote_ms: None,
        drain_ms: None,
    };
    let weights = Command::Weights {
        service: svc("web"),
        weights: [(svc("green"), 30)].into(),
    };
    let apply = Command::Apply {
        services: {
            let mut f = ConfigFile::parse(CONFIG).unwrap().services;
            f[0].pools[0].weight = 60;
            f
        },
    };
    // (set-up commands that must succeed first, the command under test)
    let cases: Vec<(Vec<Command>, Command)> = vec![
        (vec![], weights.clone()),
        (vec![], flip.clone()),
        (vec![], canary(vec![10, 100])),
        (vec![], apply),
        (
            vec![canary(vec![10, 100])],
            Command::Promote {
                service: svc("web"),
            },
        ),
        (
            vec![preview.clone()],
            Command::Promote {
                service: svc("web"),
            },
        ),
        (
            vec![canary(vec![10, 100])],
            Command::Abort {
                service: svc("web"),
            },
        ),
        (
            vec![preview],
            Command::Abort {
                service: svc("web"),
            },
        ),
        (
            vec![flip.clone()],
            Command::Rollback {
                service: svc("web"),
            },
        ),
        (
            vec![canary(vec![10, 100])],
            Command::Rollback {
                service: svc("web"),
            },
        ),
        (
            vec![],
            backend_cmd(BackendAction::Add, "198.18.1.13:8080", false),
        ),
        (
            vec![],
            backend_cmd(BackendAction::Remove, "198.18.1.12:8080", false),
        ),
        (
            vec![],
            backend_cmd(BackendAction::Remove, "198.18.1.12:8080", true),
        ),
        (
            vec![],
            backend_cmd(BackendAction::Drain, "198.18.1.12:8080", false),
        ),
        (
            vec![backend_cmd(BackendAction::Drain, "198.18.1.12:8080", false)],
            backend_cmd(BackendAction::Undrain, "198.18.1.12:8080", false),
        ),
    ];
    for (setup_cmds, cmd) in cases {
        let (mut c, mut m) = setup();
        for s in &setup_cmds {
            c.handle(&mut m, s, 1).unwrap();
        }
        let before = snapshot(&c);
        let services_before = m.services.clone();
        m.broken = true;
        let e = c.handle(&mut m, &cmd, 2);
        assert!(e.is_err(), "{cmd:?} should fail with broken maps");
        assert_eq!(snapshot(&c), before, "{cmd:?} committed something");
        assert_eq!(
            m.services, services_before,
            "{cmd:?} reached the commit point"
        );
        m.broken = false;
        c.handle(&mut m, &cmd, 3)
            .unwrap_or_else(|e| panic!("{cmd:?} after repair: {e}"));
        assert_ne!(snapshot(&c), before, "{cmd:?} did nothing");
    }
}

#[test]
fn a_strategy_step_whose_write_fails_is_not_taken() {
    let (mut c, mut m) = setup();
    c.handle(&mut m, &canary(vec![10, 50, 100]), 0).unwrap();
    let before = snapshot(&c);
    m.broken = true;
    assert!(c.tick(&mut m, &BTreeMap::new(), 1000).is_err());
    assert_eq!(snapshot(&c), before);
    m.broken = false;
    c.tick(&mut m, &BTreeMap::new(), 1100).unwrap();
    assert_eq!(weights(&c), (50, 50));
}

#[test]
fn a_removed_healthy_backend_lingers_until_its_flows_end() {
    let (mut c, mut m) = setup();
    let gone: SocketAddr = "198.18.1.12:8080".parse().unwrap();
    c.handle(
        &mut m,
        &backend_cmd(BackendAction::Remove, "198.18.1.12:8080", false),
        10,
    )
    .unwrap();
    let index = c.programmer.services["web"].lingering[&gone];
    // Pins kept: the data plane sees it as draining, not unused.
    assert_eq!(
        m.backends[&index],
        switch_common::BackendState::Draining as u8
    );
    assert!(c.lingering["web"].contains_key(&gone));
    // A count taken before it began lingering proves nothing.
    c.settle_lingering(&mut m, &HashMap::new(), 5, 20).unwrap();
    assert!(c.lingering.contains_key("web"));
    // Live flows: it stays.
    c.settle_lingering(&mut m, &[(index, 3)].into(), 15, 20)
        .unwrap();
    assert!(c.lingering.contains_key("web"));
    // No flows left: released, the slot is unused again.
    c.settle_lingering(&mut m, &HashMap::new(), 30, 40).unwrap();
    assert!(!c.lingering.contains_key("web"));
    assert_eq!(
        m.backends[&index],
        switch_common::BackendState::Unused as u8
    );
    assert!(
        c.history
            .iter()
            .any(|e| e.what.contains("released: no flows left"))
    );
}

#[test]
fn a_lingering_backend_is_cut_when_down_or_past_its_limit_and_kept_when_readded() {
    let (mut c, mut m) = setup();
    let a: SocketAddr = "198.18.1.12:8080".parse().unwrap();
    c.handle(
        &mut m,
        &backend_cmd(BackendAction::Remove, "198.18.1.12:8080", false),
        10,
    )
    .unwrap();
    let index = c.programmer.services["web"].lingering[&a];
    // Down while lingering: its flows go.
    for t in [20, 30] {
        c.record_health("web", a, Err("refused".into()), t);
    }
    c.settle_lingering(&mut m, &[(index, 3)].into(), 35, 40)
        .unwrap();
    assert!(!c.lingering.contains_key("web"));

    // Limit: cut after it even with flows.
    let (mut c, mut m) = setup();
    c.handle(
        &mut m,
        &Command::Backend {
            service: "web".into(),
            pool: "blue".into(),
            addr: a,
            action: BackendAction::Remove,
            weight: None,
            now: false,
            linger_limit_ms: Some(100),
        },
        10,
    )
    .unwrap();
    let index = c.programmer.services["web"].lingering[&a];
    c.settle_lingering(&mut m, &[(index, 3)].into(), 50, 60)
        .unwrap();
    assert!(c.lingering.contains_key("web"));
    c.settle_lingering(&mut m, &[(index, 3)].into(), 105, 110)
        .unwrap();
    assert!(!c.lingering.contains_key("web"));

    // Added back while lingering: same index, pins intact.
    let (mut c, mut m) = setup();
    c.handle(
        &mut m,
        &backend_cmd(BackendAction::Remove, "198.18.1.12:8080", false),
        10,
    )
    .unwrap();
    let index = c.programmer.services["web"].lingering[&a];
    c.handle(
        &mut m,
        &backend_cmd(BackendAction::Add, "198.18.1.12:8080", false),
        20,
    )
    .unwrap();
    assert_eq!(c.programmer.services["web"].backends[&a], index);
    assert!(c.lingering.get("web").is_none_or(|l| l.is_empty()));

    // --now: cut at once.
    let (mut c, mut m) = setup();
    c.handle(
        &mut m,
        &backend_cmd(BackendAction::Remove, "198.18.1.12:8080", true),
        10,
    )
    .unwrap();
    assert!(c.lingering.get("web").is_none_or(|l| l.is_empty()));
    assert!(c.programmer.services["web"].lingering.is_empty());
}
