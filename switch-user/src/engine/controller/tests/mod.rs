//! The controller against fake maps and a fake clock.

mod writes_and_lingering;

use super::*;
use crate::{engine::maps::Capacity, engine::strategy::PoolSignals};
use switch_common::{Backend, Config, Real, RealKey, Service, ServiceKey, Table};

/// Records writes instead of making them; can be told to fail.
#[derive(Default)]
struct FakeMaps {
    services: BTreeMap<[u8; 20], Service>,
    writes: usize,
    /// Backend index -> state written last.
    backends: BTreeMap<u32, u8>,
    /// Every write fails while set.
    broken: bool,
}

impl FakeMaps {
    fn check(&self) -> Result<()> {
        if self.broken {
            bail!("map write failed (test)");
        }
        Ok(())
    }
}

fn k(key: &ServiceKey) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[..16].copy_from_slice(&key.addr);
    out[16..18].copy_from_slice(&key.port.to_ne_bytes());
    out[18] = key.proto;
    out[19] = key.family;
    out
}

impl Maps for FakeMaps {
    fn set_config(&mut self, _: &Config) -> Result<()> {
        self.check()
    }
    fn write_table(&mut self, _: u32, _: &Table) -> Result<()> {
        self.check()?;
        self.writes += 1;
        Ok(())
    }
    fn set_service(&mut self, key: &ServiceKey, s: &Service) -> Result<()> {
        self.check()?;
        self.services.insert(k(key), *s);
        Ok(())
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.check()?;
        self.services.remove(&k(key));
        Ok(())
    }
    fn set_backend(&mut self, i: u32, b: &Backend) -> Result<()> {
        self.check()?;
        self.backends.insert(i, b.state);
        Ok(())
    }
    fn set_real(&mut self, _: &RealKey, _: &Real) -> Result<()> {
        self.check()
    }
    fn set_vip_filter(&mut self, _: &switch_common::AddrFilter) -> Result<()> {
        self.check()
    }
    fn set_reply_filter(&mut self, _: &switch_common::AddrFilter) -> Result<()> {
        self.check()
    }
    fn set_nexthop(&mut self, _: u32, _: &switch_common::NextHop) -> Result<()> {
        self.check()
    }
    fn set_shadow(&mut self, _: u32, _: u32) -> Result<()> {
        self.check()
    }
    fn remove_real(&mut self, _: &RealKey) -> Result<()> {
        self.check()
    }
    fn set_cohort(&mut self, _: u32, _: [u8; 16], _: u32, _: bool) -> Result<()> {
        self.check()
    }
}

const CONFIG: &str = r#"
[[service]]
name = "web"
vip = "198.18.0.10:80"
protocol = "tcp"
health = { kind = "tcp", interval = "1s", rise = 2, fall = 2 }
pools = [
  { name = "blue",  weight = 100, backends = ["198.18.1.11:8080", "198.18.1.12:8080"] },
  { name = "green", weight = 0,   backends = ["198.18.2.11:8080", "198.18.2.12:8080"] },
]
"#;

fn setup() -> (Controller, FakeMaps) {
    let mut maps = FakeMaps::default();
    let mut c = Controller::new(Programmer::new(1, Capacity::small()));
    let file = ConfigFile::parse(CONFIG).unwrap();
    c.handle(
        &mut maps,
        &Command::Apply {
            services: file.services,
        },
        0,
    )
    .unwrap();
    (c, maps)
}

fn weights(c: &Controller) -> (u32, u32) {
    let s = &c.services["web"];
    (
        s.pool("blue").unwrap().weight,
        s.pool("green").unwrap().weight,
    )
}

fn canary(steps: Vec<u32>) -> Command {
    Command::Canary {
        service: "web".into(),
        to: "green".into(),
        steps,
        interval_ms: 1000,
        // No traffic in these tests: steps must not wait for connections.
        gates: crate::engine::strategy::Gates {
            min_flows: 0,
            ..Default::default()
        },
    }
}

#[test]
fn canary_runs_to_completion_on_ticks() {
    let (mut c, mut m) = setup();
    c.handle(&mut m, &canary(vec![10, 50, 100]), 0).unwrap();
    assert_eq!(weights(&c), (90, 10));
    let none = BTreeMap::new();
    c.tick(&mut m, &none, 1000).unwrap();
    assert_eq!(weights(&c), (50, 50));
    c.tick(&mut m, &none, 2000).unwrap();
    assert_eq!(weights(&c), (0, 100));
    c.tick(&mut m, &none, 3000).unwrap();
    assert_eq!(c.strategies["web"].phase(), &Phase::Succeeded);
    assert!(c.history.iter().any(|e| e.what.contains("succeeded")));
}

#[test]
fn a_failing_health_check_rolls_a_canary_back() {
    let (mut c, mut m) = setup();
    c.handle(&mut m, &canary(vec![10, 50, 100]), 0).unwrap();
    let green: SocketAddr = "198.18.2.11:8080".parse().unwrap();
    for t in [100, 200] {
        c.health_result(&mut m, "web", green, Err("refused".into()), t)
            .unwrap();
    }
    assert!(c.unhealthy().contains(&green));
    let mut pools = Signals::new();
    let mut g = PoolSignals::default();
    g.backends.insert(
        green,
        crate::engine::strategy::BackendSignals {
            healthy: false,
            ..Default::default()
        },
    );
    pools.insert("green".into(), g);
    c.tick(&mut m, &[("web".to_string(), pools)].into(), 300)
        .unwrap();
    assert_eq!(weights(&c), (100, 0));
    assert!(matches!(c.strategies["web"].phase(), Phase::RolledBack(_)));
}

#[test]
fn refused_commands_change_nothing() {
    let (mut c, mut m) = setup();
    c.handle(&mut m, &canary(vec![10, 100]), 0).unwrap();
    let before = (c.services.clone(), m.services.clone(), m.writes);
    let bad = [
        canary(vec![5, 100]),
        Command::Flip {
            service: "web".into(),
            to: "green".into(),
            preview: None,
            auto_promote_ms: None,
            drain_ms: None,
        },
        Command::Canary {
            service: "web".into(),
            to: "nope".into(),
            steps: vec![1],
            interval_ms: 1,
            gates: Default::default(),
        },
        Command::Weights {
            service: "web".into(),
            weights: [("nope".to_string(), 1)].into(),
        },
        Command::Rolling {
            service: "web".into(),
            pool: "blue".into(),
            replace: vec![(
                "198.18.9.9:1".parse().unwrap(),
                "198.18.9.8:1".parse().unwrap(),
            )],
            max_unavailable: 1,
            drain_timeout_ms: 1,
            min_healthy_ms: 1,
            progress_deadline_ms: 1,
            linger_limit_ms: None,
        },
        Command::Resume {
            service: "nope".into(),
        },
    ];
    for cmd in &bad {
        assert!(
            c.handle(&mut m, cmd, 10).is_err(),
            "{cmd:?} should be refused"
        );
    }
    assert_eq!((c.services.clone(), m.services.clone(), m.writes), before);
}

#[test]
fn an_apply_with_overlapping_vips_is_refused_whole() {
    let (mut c, mut m) = setup();
    let before = (c.services.clone(), m.writes);
    let mut two = ConfigFile::parse(CONFIG).unwrap().services;
    let mut other = two[0].clone();
    other.name = "api".into();
    two.push(other);
    let e = c
        .handle(&mut m, &Command::Apply { services: two }, 5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already the VIP"), "{e}");
    assert_eq!(
        (c.services.clone(), m.writes),
        before,
        "nothing applied half-way"
    );
}

#[test]
fn a_flip_to_an_all_down_pool_is_refused() {
    let (mut c, mut m) = setup();
    for addr in ["198.18.2.11:8080", "198.18.2.12:8080"] {
        for t in [1, 2] {
            c.health_result(
                &mut m,
                "web",
                addr.parse().unwrap(),
                Err("refused".into()),
                t,
            )
            .unwrap();
        }
    }
    let before = (c.services.clone(), m.writes);
    let flip = Command::Flip {
        service: "web".into(),
        to: "green".into(),
        preview: None,
        auto_promote_ms: None,
        drain_ms: None,
    };
    let e = c.handle(&mut m, &flip, 10).unwrap_err().to_string();
    assert!(e.contains("no active, healthy backend"), "{e}");
    assert_eq!((c.services.clone(), m.writes), before);
}

#[test]
fn manual_weights_stop_a_canary_and_rollback_restores() {
    let (mut c, mut m) = setup();
    c.handle(&mut m, &canary(vec![10, 100]), 0).unwrap();
    c.handle(
        &mut m,
        &Command::Weights {
            service: "web".into(),
            weights: [("green".to_string(), 30), ("blue".to_string(), 70)].into(),
        },
        5,
    )
    .unwrap();
    assert_eq!(c.strategies["web"].phase(), &Phase::Aborted);
    c.handle(
        &mut m,
        &Command::Flip {
            service: "web".into(),
            to: "green".into(),
            preview: None,
            auto_promote_ms: None,
            drain_ms: None,
        },
        10,
    )
    .unwrap();
    assert_eq!(weights(&c), (0, 100));
    c.handle(
        &mut m,
        &Command::Rollback {
            service: "web".into(),
        },
        20,
    )
    .unwrap();
    assert_eq!(weights(&c), (70, 30));
}

#[test]
fn crash_and_resume_from_persisted_state() {
    let (mut c, mut m) = setup();
    c.handle(&mut m, &canary(vec![10, 50, 100]), 0).unwrap();
    c.tick(&mut m, &BTreeMap::new(), 1000).unwrap();
    let saved = serde_json::to_vec(&c).unwrap();
    drop(c);
    // A new daemon with fresh maps: the same step, and it goes on.
    let mut c: Controller = serde_json::from_slice(&saved).unwrap();
    let mut m = FakeMaps::default();
    c.reapply(&mut m).unwrap();
    assert_eq!(weights(&c), (50, 50));
    c.tick(&mut m, &BTreeMap::new(), 2000).unwrap();
    assert_eq!(weights(&c), (0, 100));
}

#[test]
fn rolling_replaces_with_health() {
    let (mut c, mut m) = setup();
    let (old, new): (SocketAddr, SocketAddr) = (
        "198.18.1.11:8080".parse().unwrap(),
        "198.18.1.21:8080".parse().unwrap(),
    );
    c.handle(
        &mut m,
        &Command::Rolling {
            service: "web".into(),
            pool: "blue".into(),
            replace: vec![(old, new)],
            max_unavailable: 1,
            drain_timeout_ms: 1000,
            min_healthy_ms: 500,
            progress_deadline_ms: 5000,
            linger_limit_ms: None,
        },
        0,
    )
    .unwrap();
    let none = BTreeMap::new();
    c.tick(&mut m, &none, 0).unwrap();
    assert_eq!(
        c.services["web"].pools[0].backends[0].state(),
        AdminState::Draining
    );
    c.tick(&mut m, &none, 10).unwrap(); // no flows left
    let addrs: Vec<SocketAddr> = c.services["web"].pools[0]
        .backends
        .iter()
        .map(|b| b.addr())
        .collect();
    assert!(addrs.contains(&new) && !addrs.contains(&old));
    assert!(
        c.unhealthy().contains(&new),
        "new backend not healthy before its checks pass"
    );
    for t in [100, 200] {
        c.health_result(&mut m, "web", new, Ok(()), t).unwrap();
    }
    let mut g = PoolSignals::default();
    g.backends.insert(
        new,
        crate::engine::strategy::BackendSignals {
            healthy: true,
            healthy_since_ms: Some(200),
            active_flows: 0,
            flows_counted_ms: u64::MAX,
        },
    );
    let sig: BTreeMap<String, Signals> =
        [("web".to_string(), [("blue".to_string(), g)].into())].into();
    c.tick(&mut m, &sig, 800).unwrap();
    assert_eq!(c.strategies["web"].phase(), &Phase::Succeeded);
}

/// The daemon's clock with the wall clock stepped an hour either way
/// half-way through: a canary step, a linger limit and a shadow's `--for`
/// each fall due after their own time, not early and not an hour late.
#[test]
fn wall_clock_steps_neither_hurry_nor_stall_a_canary_a_linger_or_a_shadow() {
    use crate::engine::clock::{Clock, Readings};
    const HOUR: i64 = 3_600_000;
    for step in [HOUR, -HOUR] {
        let (boot0, wall0) = (5_000u64, 1_700_000_000_000u64);
        let clock = Clock::start(
            None,
            "boot",
            Readings {
                boot_ms: boot0,
                wall_ms: wall0,
            },
        );
        // `t` ms after the start; the wall clock stepped from 500 ms on.
        let at = |t: u64| {
            clock.now(Readings {
                boot_ms: boot0 + t,
                wall_ms: (wall0 as i64 + t as i64 + if t >= 500 { step } else { 0 }) as u64,
            })
        };
        let (mut c, mut m) = setup();
        let none = BTreeMap::new();
        // Canary: steps every 1,000 ms.
        c.handle(&mut m, &canary(vec![10, 50, 100]), at(0)).unwrap();
        c.tick(&mut m, &none, at(900)).unwrap();
        assert_eq!(weights(&c), (90, 10), "step {step}: early");
        c.tick(&mut m, &none, at(1_000)).unwrap();
        assert_eq!(weights(&c), (50, 50), "step {step}: stalled");
        // Linger limit: 1,000 ms.
        let a: SocketAddr = "198.18.1.12:8080".parse().unwrap();
        c.handle(
            &mut m,
            &Command::Backend {
                service: "web".into(),
                pool: "blue".into(),
                addr: a,
                action: BackendAction::Remove,
                weight: None,
                now: false,
                linger_limit_ms: Some(1_000),
            },
            at(1_000),
        )
        .unwrap();
        let index = c.programmer.services["web"].lingering[&a];
        let flows = [(index, 3)].into();
        c.settle_lingering(&mut m, &flows, at(1_900), at(1_900))
            .unwrap();
        assert!(c.lingering.contains_key("web"), "step {step}: cut early");
        c.settle_lingering(&mut m, &flows, at(2_000), at(2_000))
            .unwrap();
        assert!(!c.lingering.contains_key("web"), "step {step}: kept late");
        // Shadow for 1,000 ms.
        c.handle(
            &mut m,
            &Command::Shadow {
                service: "web".into(),
                to: Some("green".into()),
                sample_percent: 10.0,
                for_ms: Some(1_000),
                max_sessions: 10,
                max_buffer: 1024,
                stop: false,
            },
            at(2_000),
        )
        .unwrap();
        c.expire_shadows(&mut m, at(2_900)).unwrap();
        assert!(c.shadows["web"].running(), "step {step}: ended early");
        c.expire_shadows(&mut m, at(3_000)).unwrap();
        assert!(!c.shadows["web"].running(), "step {step}: ran late");
    }
}
