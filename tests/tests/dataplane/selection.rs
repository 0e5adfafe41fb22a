//! Choosing a backend: weights, flips, cohorts, affinity, draining; established flows keep theirs.

use super::*;

#[test]
fn established_flows_keep_their_backend_across_a_flip() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            let mut spec = service(false, Protocol::Tcp, ForwardMode::Nat, 100, 0);
            let (mut dp, mut p) = setup_standalone(&spec);
            let send = |dp: &mut Dataplane, port: u16, flags: u8| {
                let f = frame(
                    [2; 6],
                    c0_mac,
                    client(false),
                    port,
                    spec_vip(),
                    80,
                    L4::Tcp { flags },
                    b"",
                );
                let (v, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                assert_eq!(v, XDP_REDIRECT);
                check(&out).unwrap().dst
            };
            let blue: Vec<IpAddr> = vec![backend(false, 11, 0).ip(), backend(false, 12, 0).ip()];
            let green: Vec<IpAddr> = vec![backend(false, 13, 0).ip(), backend(false, 14, 0).ip()];
            let mut pinned = BTreeMap::new();
            for port in 1000..1200 {
                let b = send(&mut dp, port, SYN);
                assert!(blue.contains(&b));
                pinned.insert(port, b);
            }
            // Flip to green.
            spec.pools[0].weight = 0;
            spec.pools[1].weight = 100;
            p.apply(&mut dp, &spec, &BTreeSet::new()).unwrap();
            for (port, b) in &pinned {
                assert_eq!(send(&mut dp, *port, ACK), *b, "established flow moved");
            }
            for port in 2000..2200 {
                assert!(
                    green.contains(&send(&mut dp, port, SYN)),
                    "new flow not on green"
                );
            }
            // A closing flow still reaches its backend during the grace time.
            assert_eq!(send(&mut dp, 1000, FIN | ACK), pinned[&1000]);
            assert_eq!(send(&mut dp, 1000, ACK), pinned[&1000]);

            // Removing a healthy blue backend keeps its flows (it lingers);
            // releasing it re-chooses them.
            let gone = spec.pools[0].backends.remove(0).addr();
            p.apply(&mut dp, &spec, &BTreeSet::new()).unwrap();
            for (port, b) in pinned.iter().filter(|(_, b)| **b == blue[0]) {
                assert_eq!(
                    send(&mut dp, *port, ACK),
                    *b,
                    "a lingering backend lost a flow"
                );
            }
            p.release(&mut dp, &spec.name, gone).unwrap();
            let moved = pinned
                .iter()
                .filter(|(_, b)| **b == blue[0])
                .map(|(port, _)| send(&mut dp, *port, ACK));
            for b in moved {
                assert!(
                    green.contains(&b),
                    "flow of a removed backend goes where the table says"
                );
            }
        })
        .unwrap();
}

#[test]
fn split_of_100k_flows_matches_the_weights() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            let spec = service(false, Protocol::Udp, ForwardMode::Nat, 70, 30);
            let (mut dp, _p) = setup_standalone(&spec);
            let mut counts: BTreeMap<IpAddr, u32> = BTreeMap::new();
            let n = 100_000u32;
            for i in 0..n {
                let src = IpAddr::V4(std::net::Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8));
                let port = 1024 + (i % 50_000) as u16;
                let f = frame([2; 6], c0_mac, src, port, spec.vip.ip(), 80, L4::Udp, b"");
                let (v, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                assert_eq!(v, XDP_REDIRECT);
                *counts.entry(check(&out).unwrap().dst).or_default() += 1;
            }
            let share = |ids: [u8; 2]| {
                ids.iter()
                    .map(|i| {
                        counts
                            .get(&backend(false, *i, 0).ip())
                            .copied()
                            .unwrap_or(0)
                    })
                    .sum::<u32>() as f64
                    / n as f64
            };
            let green = share([13, 14]);
            eprintln!(
                "green share of {n} flows: {green:.4} (want 0.30 ± 0.005); per backend {counts:?}"
            );
            assert!((green - 0.30).abs() <= 0.005, "green share {green}");
            assert!((share([11, 12]) - 0.70).abs() <= 0.005);
        })
        .unwrap();
}

#[test]
fn removing_one_backend_moves_no_slot_of_the_others() {
    let lab = Lab::new().unwrap();
    lab.ns
        .run(move || {
            let mut spec = service(false, Protocol::Tcp, ForwardMode::Nat, 100, 0);
            spec.pools[0].backends = (11..=14)
                .map(|i| BackendConfig::Addr(backend(false, i, 8080)))
                .collect();
            spec.pools.truncate(1);
            let (mut dp, mut p) = setup_standalone(&spec);
            let slot = |dp: &Dataplane| dp.services().unwrap()[0].1.table;
            let before = dp.read_table(slot(&dp)).unwrap();
            let removed_index = p.services["web"].backends[&backend(false, 12, 8080)] as u16;
            spec.pools[0].backends.remove(1);
            p.apply(&mut dp, &spec, &BTreeSet::new()).unwrap();
            let after = dp.read_table(slot(&dp)).unwrap();
            let mut moved = 0;
            for (b, a) in before.slots.iter().zip(after.slots.iter()) {
                if *b == removed_index {
                    assert_ne!(*a, removed_index);
                    moved += 1;
                } else {
                    assert_eq!(b, a, "a slot of another backend moved");
                }
            }
            eprintln!(
                "removing 1 of 4 backends moved {moved} of {} slots, all its own",
                before.slots.len()
            );
        })
        .unwrap();
}

#[test]
fn flips_under_a_packet_stream_never_leave_the_two_pools() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            let spec = service(false, Protocol::Udp, ForwardMode::Nat, 100, 0);
            let (mut dp, mut p) = setup_standalone(&spec);
            let prog = switch_tests::fixture::share(dp.program().unwrap()).unwrap();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stop2 = stop.clone();
            // A second thread runs the same program through its fd while
            // the main thread flips 50 times.
            let streamer = std::thread::spawn(move || {
                let mut seen: BTreeMap<u32, u64> = BTreeMap::new();
                let mut i = 0u32;
                while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    let src = IpAddr::V4(std::net::Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8));
                    let f = frame(
                        [2; 6],
                        c0_mac,
                        src,
                        1024 + (i % 60_000) as u16,
                        spec_vip(),
                        80,
                        L4::Udp,
                        b"",
                    );
                    let (v, out) = switch_tests::fixture::run(&prog, c0, &f).unwrap();
                    let dst = if v == XDP_REDIRECT {
                        u32::from(match check(&out).unwrap().dst {
                            IpAddr::V4(a) => a,
                            _ => unreachable!(),
                        })
                    } else {
                        0
                    };
                    *seen.entry(dst).or_default() += 1;
                    i += 1;
                }
                seen
            });
            let mut s = spec.clone();
            for flip in 0..50 {
                let green = flip % 2 == 0;
                s.pools[0].weight = if green { 0 } else { 100 };
                s.pools[1].weight = if green { 100 } else { 0 };
                p.apply(&mut dp, &s, &BTreeSet::new()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let seen = streamer.join().unwrap();
            let allowed: BTreeSet<u32> = (11..=14)
                .map(|i| u32::from(std::net::Ipv4Addr::new(198, 18, 1, i)))
                .collect();
            let total: u64 = seen.values().sum();
            eprintln!("{total} packets during 50 flips: {seen:?}");
            assert!(total > 1000);
            for dst in seen.keys() {
                assert!(
                    allowed.contains(dst),
                    "packet went to {dst:#x} (0 = not redirected)"
                );
            }
        })
        .unwrap();
}

#[test]
fn a_cohort_always_reaches_its_pool_and_nobody_else_does() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            let mut spec = service(false, Protocol::Tcp, ForwardMode::Nat, 100, 0);
            spec.cohorts = vec![switch_user::config::CohortConfig {
                cidr: "198.19.5.0/24".parse().unwrap(),
                pool: "green".into(),
            }];
            let (mut dp, _p) = setup_standalone(&spec);
            let green: Vec<IpAddr> = vec![backend(false, 13, 0).ip(), backend(false, 14, 0).ip()];
            for i in 0..500u32 {
                let inside = IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 5, i as u8));
                let outside = IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 6, i as u8));
                for (src, want_green) in [(inside, true), (outside, false)] {
                    let f = frame(
                        [2; 6],
                        c0_mac,
                        src,
                        2000 + i as u16,
                        spec.vip.ip(),
                        80,
                        L4::Tcp { flags: SYN },
                        b"",
                    );
                    let (v, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                    assert_eq!(v, XDP_REDIRECT);
                    assert_eq!(
                        green.contains(&check(&out).unwrap().dst),
                        want_green,
                        "{src}"
                    );
                }
            }
        })
        .unwrap();
}

#[test]
fn client_affinity_keeps_one_client_on_one_backend() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            let mut spec = service(false, Protocol::Udp, ForwardMode::Nat, 50, 50);
            spec.affinity = switch_user::config::Affinity::Client;
            let (mut dp, _p) = setup_standalone(&spec);
            let mut per_client: BTreeMap<IpAddr, BTreeSet<IpAddr>> = BTreeMap::new();
            for c in 0..50u8 {
                let src = IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 7, c));
                for port in 0..20u16 {
                    let f = frame(
                        [2; 6],
                        c0_mac,
                        src,
                        3000 + port,
                        spec.vip.ip(),
                        80,
                        L4::Udp,
                        b"",
                    );
                    let (v, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                    assert_eq!(v, XDP_REDIRECT);
                    per_client
                        .entry(src)
                        .or_default()
                        .insert(check(&out).unwrap().dst);
                }
            }
            for (c, backends) in &per_client {
                assert_eq!(backends.len(), 1, "client {c} saw {backends:?}");
            }
            let distinct: BTreeSet<_> = per_client.values().flatten().collect();
            assert!(
                distinct.len() >= 3,
                "clients spread over backends: {distinct:?}"
            );
        })
        .unwrap();
}

#[test]
fn a_draining_backend_keeps_its_flows_and_gets_no_new_ones() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            let mut spec = service(false, Protocol::Tcp, ForwardMode::Nat, 100, 0);
            let (mut dp, mut p) = setup_standalone(&spec);
            let send = |dp: &mut Dataplane, port: u16, flags: u8| {
                let f = frame(
                    [2; 6],
                    c0_mac,
                    client(false),
                    port,
                    spec_vip(),
                    80,
                    L4::Tcp { flags },
                    b"",
                );
                let (v, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                assert_eq!(v, XDP_REDIRECT);
                check(&out).unwrap().dst
            };
            let drained = backend(false, 11, 8080);
            let mut on_drained = Vec::new();
            for port in 5000..5200 {
                if send(&mut dp, port, SYN) == drained.ip() {
                    on_drained.push(port);
                }
            }
            assert!(!on_drained.is_empty());
            spec.pools[0].backends[0] = BackendConfig::Full {
                addr: drained,
                weight: 1,
                state: switch_user::config::AdminState::Draining,
            };
            p.apply(&mut dp, &spec, &BTreeSet::new()).unwrap();
            for port in &on_drained {
                assert_eq!(
                    send(&mut dp, *port, ACK),
                    drained.ip(),
                    "a draining backend's flow moved"
                );
            }
            for port in 6000..6300 {
                assert_ne!(
                    send(&mut dp, port, SYN),
                    drained.ip(),
                    "a draining backend got a new flow"
                );
            }
            // Marked down (failed health checks), its flows are re-chosen.
            let down: BTreeSet<SocketAddr> = [drained].into();
            p.apply(&mut dp, &spec, &down).unwrap();
            for port in &on_drained {
                assert_ne!(send(&mut dp, *port, ACK), drained.ip());
            }
        })
        .unwrap();
}
