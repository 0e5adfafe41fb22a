//! Hostile and mangled frames through the real XDP object: at least 100,000
//! per run, from a printed seed (replay with SWITCH_FUZZ_SEED=<hex>).
//!
//! Every frame must get a defined verdict (never XDP_ABORTED) and exactly
//! one reason count; a frame passed to the kernel untouched comes out bit
//! for bit; a forwarded frame whose checksums were right going in has right
//! checksums coming out (the switch patches checksums incrementally, so it
//! neither breaks a good one nor repairs a corrupted one).

use std::{collections::BTreeSet, net::IpAddr};

use proptest::{
    prelude::*,
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};
use switch_tests::{
    L4, check,
    fixture::{Lab, backend, client, run, vip},
    frame,
};
use switch_user::{
    config::{BackendConfig, DaemonConfig, ForwardMode, PoolConfig, Protocol, ServiceConfig},
    dataplane::{Capacity, Dataplane},
    programmer::Programmer,
};

const FRAMES: u32 = 100_000;

fn service(name: &str, v6: bool, proto: Protocol, port: u16, mode: ForwardMode) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        vip: vip(v6, port),
        protocol: proto,
        mode,
        affinity: Default::default(),
        source: (mode == ForwardMode::Fullnat).then(|| {
            if v6 {
                "2001:2:1::1".parse().unwrap()
            } else {
                "198.18.1.1".parse().unwrap()
            }
        }),
        health: None,
        pools: vec![PoolConfig {
            name: "p".into(),
            weight: 1,
            backends: (11..=12)
                .map(|i| {
                    BackendConfig::Addr(backend(
                        v6,
                        i,
                        if mode == ForwardMode::Dsr { port } else { 8080 },
                    ))
                })
                .collect(),
        }],
        cohorts: vec![],
    }
}

/// What to do to a well-formed frame.
#[derive(Clone, Debug)]
enum Mutation {
    None,
    Truncate(usize),
    Flip(usize, u8),
    Ihl(u8),
    Frag(u16),
    Vlan(u8),
    Ipv6Next(u8),
    TotLen(u16),
    Ttl(u8),
    EtherType(u16),
}

#[derive(Clone, Debug)]
struct Case {
    v6: bool,
    udp: bool,
    /// Which VIP port (80 tcp/udp nat, 53 fullnat, 8080 dsr) or none.
    target: u8,
    sport: u16,
    flags: u8,
    payload: usize,
    mutation: Mutation,
    /// A frame of random bytes instead.
    random: Option<Vec<u8>>,
    /// An ICMP message to the VIP instead (kind index, quote length): an
    /// error quoting a reply of the VIP's, or an echo, or another type.
    icmp: Option<(u8, usize)>,
}

fn case() -> impl Strategy<Value = Case> {
    let mutation = prop_oneof![
        3 => Just(Mutation::None),
        2 => (0usize..120).prop_map(Mutation::Truncate),
        2 => (0usize..120, 1u8..=255).prop_map(|(p, x)| Mutation::Flip(p, x)),
        1 => (0u8..16).prop_map(Mutation::Ihl),
        1 => any::<u16>().prop_map(Mutation::Frag),
        1 => (1u8..4).prop_map(Mutation::Vlan),
        1 => any::<u8>().prop_map(Mutation::Ipv6Next),
        1 => any::<u16>().prop_map(Mutation::TotLen),
        1 => (0u8..3).prop_map(Mutation::Ttl),
        1 => any::<u16>().prop_map(Mutation::EtherType),
    ];
    (
        any::<bool>(),
        any::<bool>(),
        0u8..4,
        1u16..,
        any::<u8>(),
        0usize..64,
        mutation,
        prop::option::weighted(0.1, prop::collection::vec(any::<u8>(), 14..200)),
        prop::option::weighted(0.15, (0u8..6, 0usize..90)),
    )
        .prop_map(
            |(v6, udp, target, sport, flags, payload, mutation, random, icmp)| Case {
                v6,
                udp,
                target,
                sport,
                flags,
                payload,
                mutation,
                random,
                icmp,
            },
        )
}

/// An ICMP message from a router to the VIP; errors quote the VIP's reply
/// to the client (cut to `quote_len` bytes).
fn icmp_frame(
    c: &Case,
    c0_mac: [u8; 6],
    kind: u8,
    quote_len: usize,
    port: u16,
    udp: bool,
) -> Vec<u8> {
    use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder};
    let l4 = if udp {
        L4::Udp
    } else {
        L4::Tcp { flags: 0x10 }
    };
    let reply = frame(
        [0; 6],
        [0; 6],
        vip(c.v6, port).ip(),
        port,
        client(c.v6),
        c.sport,
        l4,
        &[0x5a; 32],
    );
    let quote = &reply[14..(14 + quote_len).min(reply.len())];
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xfe], c0_mac);
    let mut out = Vec::new();
    match vip(c.v6, port).ip() {
        IpAddr::V4(v) => {
            let kinds = [3u8, 11, 8, 0, 5, 12];
            b.ipv4([198, 18, 0, 254], v.octets(), 64)
                .icmpv4(Icmpv4Type::Unknown {
                    type_u8: kinds[kind as usize % 6],
                    code_u8: 4,
                    bytes5to8: [0, 0, 5, 20],
                })
                .write(&mut out, quote)
                .unwrap();
        }
        IpAddr::V6(v) => {
            let kinds = [1u8, 2, 3, 128, 129, 135];
            b.ipv6(
                [0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe],
                v.octets(),
                64,
            )
            .icmpv6(Icmpv6Type::Unknown {
                type_u8: kinds[kind as usize % 6],
                code_u8: 0,
                bytes5to8: [0, 0, 5, 20],
            })
            .write(&mut out, quote)
            .unwrap();
        }
    }
    out
}

fn build(c: &Case, c0_mac: [u8; 6]) -> (Vec<u8>, bool) {
    if let Some(r) = &c.random {
        return (r.clone(), false);
    }
    let port = [80u16, 53, 8080, 9999][c.target as usize];
    let udp = match c.target {
        0 => c.udp,
        1 => true,
        _ => false,
    };
    let l4 = if udp {
        L4::Udp
    } else {
        L4::Tcp {
            flags: c.flags & 0x17,
        }
    };
    let dst: IpAddr = if c.target == 3 {
        if c.v6 {
            "2001:2::99".parse().unwrap()
        } else {
            "198.18.0.99".parse().unwrap()
        }
    } else {
        vip(c.v6, port).ip()
    };
    let mut f = match c.icmp {
        Some((kind, quote_len)) if c.target != 3 => {
            icmp_frame(c, c0_mac, kind, quote_len, port, udp)
        }
        _ => frame(
            [2, 0, 0, 0, 0, 7],
            c0_mac,
            client(c.v6),
            c.sport,
            dst,
            port,
            l4,
            &vec![0x5a; c.payload],
        ),
    };
    let ip = 14;
    let intact = matches!(c.mutation, Mutation::None);
    match c.mutation {
        Mutation::None => {}
        Mutation::Truncate(n) => f.truncate(n.max(14)),
        Mutation::Flip(p, x) => {
            let p = p % f.len();
            f[p] ^= x;
        }
        Mutation::Ihl(v) if !c.v6 => f[ip] = 0x40 | v,
        Mutation::Frag(v) if !c.v6 => f[ip + 6..ip + 8].copy_from_slice(&v.to_be_bytes()),
        Mutation::TotLen(v) if !c.v6 => f[ip + 2..ip + 4].copy_from_slice(&v.to_be_bytes()),
        Mutation::TotLen(v) => f[ip + 4..ip + 6].copy_from_slice(&v.to_be_bytes()),
        Mutation::Ttl(v) if !c.v6 => f[ip + 8] = v,
        Mutation::Ttl(v) => f[ip + 7] = v,
        Mutation::Ipv6Next(v) if c.v6 => f[ip + 6] = v,
        Mutation::Vlan(n) => {
            for _ in 0..n {
                let mut g = f[..12].to_vec();
                g.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
                g.extend_from_slice(&f[12..]);
                f = g;
            }
        }
        Mutation::EtherType(t) => f[12..14].copy_from_slice(&t.to_be_bytes()),
        _ => {}
    }
    (f, intact)
}

fn checksums_ok(f: &[u8]) -> bool {
    check(f).is_ok()
}

#[test]
fn a_hundred_thousand_hostile_frames() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    let seed: [u8; 32] = match std::env::var("SWITCH_FUZZ_SEED") {
        Ok(hex) => {
            let v: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            v.try_into().expect("SWITCH_FUZZ_SEED: 64 hex digits")
        }
        Err(_) => rand_seed(),
    };
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    eprintln!("fuzz seed: SWITCH_FUZZ_SEED={hex}");
    lab.ns
        .run(move || {
            let mut dp = Dataplane::load(None, Capacity::small()).unwrap();
            dp.add_device("c0").unwrap();
            dp.add_device("b0").unwrap();
            let mut p = Programmer::new(0x5eed, Capacity::small());
            p.init(&mut dp, &DaemonConfig::default()).unwrap();
            for s in [
                service("tcp4", false, Protocol::Tcp, 80, ForwardMode::Nat),
                service("udp4", false, Protocol::Udp, 80, ForwardMode::Nat),
                service("tcp6", true, Protocol::Tcp, 80, ForwardMode::Nat),
                service("udp6", true, Protocol::Udp, 80, ForwardMode::Nat),
                service("fnat4", false, Protocol::Udp, 53, ForwardMode::Fullnat),
                service("fnat6", true, Protocol::Udp, 53, ForwardMode::Fullnat),
                service("dsr4", false, Protocol::Tcp, 8080, ForwardMode::Dsr),
                service("dsr6", true, Protocol::Tcp, 8080, ForwardMode::Dsr),
            ] {
                p.apply(&mut dp, &s, &BTreeSet::new()).unwrap();
            }
            let total = |dp: &Dataplane| dp.reasons().unwrap().iter().map(|(_, n)| *n).sum::<u64>();
            let before = total(&dp);
            let mut runner = TestRunner::new_with_rng(
                Config {
                    cases: FRAMES,
                    failure_persistence: None,
                    ..Config::default()
                },
                TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
            );
            let runs = std::cell::Cell::new(0u64);
            let verdicts = std::cell::RefCell::new([0u64; 5]);
            let prog = dp.program().unwrap();
            let result = runner.run(&case(), |c| {
                let (f, intact) = build(&c, c0_mac);
                let (verdict, out) =
                    run(prog, c0, &f).map_err(|e| TestCaseError::fail(format!("test run: {e}")))?;
                runs.set(runs.get() + 1);
                prop_assert!((1..=4).contains(&verdict), "verdict {verdict} for {c:?}");
                verdicts.borrow_mut()[verdict as usize] += 1;
                let good_in = checksums_ok(&f);
                if verdict == 4 || (verdict == 2 && out != f) {
                    // Rewritten: good checksums stay good.
                    if good_in {
                        prop_assert!(checksums_ok(&out), "good checksums broken for {c:?}");
                    }
                }
                if intact && c.target == 3 {
                    prop_assert_eq!(verdict, 2);
                    prop_assert!(out == f, "a frame not for a VIP was changed: {:?}", c);
                }
                Ok(())
            });
            if let Err(e) = result {
                panic!("{e}\nreplay with SWITCH_FUZZ_SEED={hex}");
            }
            let counted = total(&dp) - before;
            let v = verdicts.borrow();
            eprintln!(
                "{} frames: {} dropped, {} passed, {} redirected, {} counted in REASONS",
                runs.get(),
                v[1],
                v[2],
                v[4],
                counted
            );
            assert!(runs.get() >= FRAMES as u64);
            assert_eq!(counted, runs.get(), "every frame counted exactly once");
        })
        .unwrap();
}

/// 32 random bytes from std's per-process hasher keys.
fn rand_seed() -> [u8; 32] {
    use std::hash::{BuildHasher, Hasher};
    let mut s = [0u8; 32];
    for chunk in s.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        chunk.copy_from_slice(&h.finish().to_ne_bytes());
    }
    s
}
