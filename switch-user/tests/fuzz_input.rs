//! Fuzzing the control inputs: the config parser and the API request
//! decoder never panic; a semantic error names the field that is wrong; a
//! refused command leaves the state and the maps exactly as they were.

use std::collections::BTreeMap;

use anyhow::Result;
use proptest::prelude::*;
use switch_common::{Backend, Config, Real, RealKey, Service, ServiceKey, Table};
use switch_user::{
    api::{Command, Request},
    config::ConfigFile,
    controller::Controller,
    dataplane::Capacity,
    programmer::{Maps, Programmer},
};

/// Counts writes; the state of the fake maps is the list of writes.
#[derive(Default, Clone, PartialEq, Debug)]
struct FakeMaps {
    writes: Vec<String>,
}

impl Maps for FakeMaps {
    fn set_config(&mut self, c: &Config) -> Result<()> {
        self.writes.push(format!("config {c:?}"));
        Ok(())
    }
    fn write_table(&mut self, slot: u32, _: &Table) -> Result<()> {
        self.writes.push(format!("table {slot}"));
        Ok(())
    }
    fn set_service(&mut self, k: &ServiceKey, s: &Service) -> Result<()> {
        self.writes.push(format!("service {k:?} {s:?}"));
        Ok(())
    }
    fn set_vip_filter(&mut self, _: &switch_common::AddrFilter) -> Result<()> {
        self.writes.push("vip filter".into());
        Ok(())
    }
    fn set_reply_filter(&mut self, _: &switch_common::AddrFilter) -> Result<()> {
        self.writes.push("reply filter".into());
        Ok(())
    }
    fn set_shadow(&mut self, id: u32, sample: u32) -> Result<()> {
        self.writes.push(format!("shadow {id} {sample}"));
        Ok(())
    }
    fn set_nexthop(&mut self, i: u32, h: &switch_common::NextHop) -> Result<()> {
        self.writes.push(format!("nexthop {i} {h:?}"));
        Ok(())
    }
    fn remove_service(&mut self, k: &ServiceKey) -> Result<()> {
        self.writes.push(format!("rm service {k:?}"));
        Ok(())
    }
    fn set_backend(&mut self, i: u32, b: &Backend) -> Result<()> {
        self.writes.push(format!("backend {i} {b:?}"));
        Ok(())
    }
    fn set_real(&mut self, k: &RealKey, r: &Real) -> Result<()> {
        self.writes.push(format!("real {k:?} {r:?}"));
        Ok(())
    }
    fn remove_real(&mut self, k: &RealKey) -> Result<()> {
        self.writes.push(format!("rm real {k:?}"));
        Ok(())
    }
    fn set_cohort(&mut self, s: u32, a: [u8; 16], p: u32, on: bool) -> Result<()> {
        self.writes.push(format!("cohort {s} {a:?}/{p} {on}"));
        Ok(())
    }
}

const FIELDS: &[&str] = &[
    "name", "vip", "pools", "weight", "backends", "cohorts", "health", "source", "protocol",
    "mode", "daemon.", "interval", "expect", "affinity", "addr", "state", "path",
];

fn service_toml() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("web"),
        Just(""),
        Just("we b"),
        Just("api"),
        Just("w-1")
    ];
    let vip = prop_oneof![
        Just("198.18.0.10:80"),
        Just("198.18.0.10:0"),
        Just("[2001:2::10]:80"),
        Just("198.18.0.11:443")
    ];
    let proto = prop_oneof![Just("tcp"), Just("udp"), Just("sctp")];
    let mode = prop_oneof![Just("nat"), Just("dsr"), Just("fullnat"), Just("magic")];
    let backend = prop_oneof![
        Just("\"198.18.1.11:8080\""),
        Just("\"198.18.1.11:0\""),
        Just("\"[2001:2:1::b]:8080\""),
        Just("{ addr = \"198.18.1.12:80\", weight = 3 }"),
        Just("{ addr = \"198.18.1.13:80\", weight = 2000000 }"),
        Just("{ addr = \"198.18.1.14:80\", state = \"draining\" }"),
        Just("{ addr = \"198.18.1.15:80\", state = \"sleepy\" }"),
    ];
    let pool = (
        prop_oneof![Just("blue"), Just("green"), Just("")],
        0u32..2_000_000,
        prop::collection::vec(backend, 0..3),
    )
        .prop_map(|(n, w, b)| {
            format!(
                "{{ name = \"{n}\", weight = {w}, backends = [{}] }}",
                b.join(", ")
            )
        });
    let health = prop_oneof![
        Just(String::new()),
        Just("health = { kind = \"tcp\" }".to_string()),
        Just("health = { kind = \"http\", path = \"healthz\" }".to_string()),
        Just("health = { kind = \"http\", interval = \"0s\" }".to_string()),
        Just("health = { kind = \"http\", expect = \"2xx\" }".to_string()),
    ];
    (name, vip, proto, mode, prop::collection::vec(pool, 0..3), health, prop::option::of(prop_oneof![Just("198.18.1.1"), Just("2001:2::1")]))
        .prop_map(|(n, v, p, m, pools, h, src)| {
            format!(
                "[[service]]\nname = \"{n}\"\nvip = \"{v}\"\nprotocol = \"{p}\"\nmode = \"{m}\"\n{}\n{h}\npools = [{}]\n",
                src.map(|s| format!("source = \"{s}\"")).unwrap_or_default(),
                pools.join(", ")
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics_the_config_parser(s in ".{0,400}") {
        let _ = ConfigFile::parse(&s);
    }

    #[test]
    fn config_errors_name_the_field(a in service_toml(), b in prop::option::of(service_toml())) {
        let text = format!("{a}\n{}", b.unwrap_or_default());
        if let Err(e) = ConfigFile::parse(&text) {
            let msg = e.to_string();
            prop_assert!(!msg.is_empty());
            // TOML syntax and type errors carry a line and column; ours name the field.
            prop_assert!(FIELDS.iter().any(|f| msg.contains(f)) || msg.contains("line"), "error names no field: {msg}\n{text}");
        }
    }

    #[test]
    fn arbitrary_json_never_panics_the_api_decoder(s in ".{0,300}") {
        let _ = serde_json::from_str::<Request>(&s);
    }

}

proptest! {
    // Each accepted command builds a 65,537-slot table: fewer cases here.
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn refused_commands_change_nothing(cmds in prop::collection::vec(command(), 1..12)) {
        let mut maps = FakeMaps::default();
        let mut ctl = Controller::new(Programmer::new(1, Capacity::small()));
        let base = ConfigFile::parse(BASE).unwrap();
        ctl.handle(&mut maps, &Command::Apply { services: base.services }, 0).unwrap();
        for (i, c) in cmds.iter().enumerate() {
            let before = (ctl.services.clone(), maps.clone(), ctl.undo.clone());
            if ctl.handle(&mut maps, c, 10 + i as u64).is_err() {
                prop_assert_eq!(&(ctl.services.clone(), maps.clone(), ctl.undo.clone()), &before, "refused {:?} changed state", c);
            }
        }
    }
}

const BASE: &str = r#"
[[service]]
name = "web"
vip = "198.18.0.10:80"
protocol = "tcp"
pools = [
  { name = "blue",  weight = 100, backends = ["198.18.1.11:8080", "198.18.1.12:8080"] },
  { name = "green", weight = 0,   backends = ["198.18.2.11:8080"] },
]
"#;

fn command() -> impl Strategy<Value = Command> {
    let svc = prop_oneof![Just("web"), Just("nope")].prop_map(String::from);
    let pool = prop_oneof![Just("blue"), Just("green"), Just("red")].prop_map(String::from);
    let addr = prop_oneof![
        Just("198.18.1.11:8080"),
        Just("198.18.2.11:8080"),
        Just("198.18.9.9:1"),
        Just("[2001:2::1]:80")
    ]
    .prop_map(|a| a.parse().unwrap());
    prop_oneof![
        (
            svc.clone(),
            prop::collection::btree_map(pool.clone(), 0u32..200, 0..3)
        )
            .prop_map(|(service, weights)| Command::Weights {
                service,
                weights: weights.into_iter().collect::<BTreeMap<_, _>>()
            }),
        (svc.clone(), pool.clone()).prop_map(|(service, to)| Command::Flip {
            service,
            to,
            preview: None,
            auto_promote_ms: None,
            drain_ms: None
        }),
        (
            svc.clone(),
            pool.clone(),
            prop::collection::vec(0u32..120, 0..4),
            0u64..3
        )
            .prop_map(|(service, to, steps, interval_ms)| Command::Canary {
                service,
                to,
                steps,
                interval_ms,
                gates: Default::default()
            }),
        (svc.clone(), pool.clone(), addr.clone(), addr.clone()).prop_map(
            |(service, pool, a, b)| Command::Rolling {
                service,
                pool,
                replace: vec![(a, b)],
                max_unavailable: 1,
                drain_timeout_ms: 10,
                min_healthy_ms: 10,
                progress_deadline_ms: 10,
                linger_limit_ms: None
            }
        ),
        svc.clone().prop_map(|service| Command::Pause { service }),
        svc.clone().prop_map(|service| Command::Promote { service }),
        svc.clone().prop_map(|service| Command::Abort { service }),
        svc.clone()
            .prop_map(|service| Command::Rollback { service }),
        (
            svc,
            pool,
            addr,
            prop_oneof![
                Just(switch_user::api::BackendAction::Add),
                Just(switch_user::api::BackendAction::Remove),
                Just(switch_user::api::BackendAction::Drain),
                Just(switch_user::api::BackendAction::Undrain)
            ]
        )
            .prop_map(|(service, pool, addr, action)| Command::Backend {
                service,
                pool,
                addr,
                action,
                weight: None,
                now: false,
                linger_limit_ms: None
            }),
    ]
}
