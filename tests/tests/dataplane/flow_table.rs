//! The flow table: full, aged by the data plane's clock, and the address filters.

use super::*;

#[test]
fn a_full_flow_table_keeps_serving_and_active_flows_keep_their_backend() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            let mut spec = service(false, Protocol::Tcp, ForwardMode::Nat, 50, 50);
            let cap = Capacity { flows: 4096, ..Capacity::small() };
            let (mut dp, mut p) = setup_with(&spec, false, cap);
            let send = |dp: &mut Dataplane, a: u8, b: u8, port: u16, flags: u8| {
                send_tcp(dp, c0, c0_mac, a, b, port, flags)
            };
            // 500 flows that keep talking and 500 that go quiet.
            let mut active = BTreeMap::new();
            let mut idle = BTreeMap::new();
            for i in 0..500u16 {
                active.insert(i, send(&mut dp, 1, (i % 250) as u8, 1000 + i, SYN));
                idle.insert(i, send(&mut dp, 2, (i % 250) as u8, 1000 + i, SYN));
            }
            // A flip: a flow that lost its pin would now land elsewhere.
            spec.pools[0].weight = 0;
            spec.pools[1].weight = 100;
            p.apply(&mut dp, &spec, &BTreeSet::new()).unwrap();
            // 40,000 new flows through a 4,096-entry table, the active flows
            // sending a packet every 2,000 of them.
            for n in 0..40_000u32 {
                send(&mut dp, 100 + (n / 60_000) as u8, (n >> 8) as u8, (n & 0xff) as u16 + 2000, SYN);
                if n % 2000 == 0 {
                    for i in 0..500u16 {
                        send(&mut dp, 1, (i % 250) as u8, 1000 + i, ACK);
                    }
                }
            }
            let kept = |dp: &mut Dataplane, a: u8, m: &BTreeMap<u16, IpAddr>| {
                m.iter().filter(|(i, b)| send(dp, a, (**i % 250) as u8, 1000 + **i, ACK) == **b).count() as f64 / m.len() as f64
            };
            let (ka, ki) = (kept(&mut dp, 1, &active), kept(&mut dp, 2, &idle));
            eprintln!(
                "flow table of 4,096 after 40,000 new flows and a flip: {:.1}% of active flows and {:.1}% of idle flows kept their backend",
                ka * 100.0,
                ki * 100.0
            );
            assert!(ka >= 0.99, "active flows lost their backend under eviction pressure: {ka}");
        })
        .unwrap();
}

/// Pins age by the data plane's clock (`CLOCK`, which the daemon ticks), not
/// by a clock of the kernel's: a UDP flow keeps its backend across a flip
/// while it is younger than `udp_idle` on that clock, and is chosen again by
/// the new table once it has been idle longer.
#[test]
fn pins_age_by_the_data_planes_clock() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            let mut spec = service(false, Protocol::Udp, ForwardMode::Nat, 100, 0);
            let (mut dp, mut p) = setup_standalone(&spec);
            let mut clock = dp.clock().unwrap();
            let idle = DaemonConfig::default().udp_idle.as_nanos() as u64;
            let send = |dp: &mut Dataplane, port: u16| {
                let f = frame(
                    [2; 6],
                    c0_mac,
                    client(false),
                    port,
                    spec_vip(),
                    80,
                    L4::Udp,
                    b"x",
                );
                let (v, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                assert_eq!(v, XDP_REDIRECT);
                check(&out).unwrap().dst
            };
            let blue = [backend(false, 11, 0).ip(), backend(false, 12, 0).ip()];
            let green = [backend(false, 13, 0).ip(), backend(false, 14, 0).ip()];
            let ports = 3000..3040;
            for port in ports.clone() {
                assert!(blue.contains(&send(&mut dp, port)));
            }
            spec.pools[0].weight = 0;
            spec.pools[1].weight = 100;
            p.apply(&mut dp, &spec, &BTreeSet::new()).unwrap();
            let t0 = clock.read().unwrap();
            assert!(t0 > 0, "loading the data plane starts its clock");
            // Time that the data plane's clock does not see does not count.
            std::thread::sleep(std::time::Duration::from_millis(50));
            for port in ports.clone() {
                assert!(blue.contains(&send(&mut dp, port)), "a young pin moved");
            }
            // Just under the idle time: kept (and refreshed).
            let t1 = t0 + idle - 1_000_000_000;
            clock.set(t1).unwrap();
            for port in ports.clone() {
                assert!(blue.contains(&send(&mut dp, port)), "a live pin expired");
            }
            // Idle longer than udp_idle since that packet: the table decides.
            clock.set(t1 + idle + 1_000_000_000).unwrap();
            for port in ports.clone() {
                assert!(
                    green.contains(&send(&mut dp, port)),
                    "an idle pin outlived udp_idle"
                );
            }
        })
        .unwrap();
}

/// The daemon starts with the address filters open (every bit set): until
/// its own program is attached, the program reading them may be an older
/// build with another filter hash, and an open filter only costs lookups.
/// Closed, they hold the VIP's and the nat backends' bits, and traffic is
/// handled the same either way.
#[test]
fn address_filters_stay_open_until_closed() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            let spec = service(false, Protocol::Tcp, ForwardMode::Nat, 100, 0);
            let (mut dp, mut p) = setup(&spec, true);
            let ones = |f: &switch_common::AddrFilter| -> u32 {
                f.words.iter().map(|w| w.count_ones()).sum()
            };
            let all = 64 * switch_common::hash::REPLY_FILTER_WORDS as u32;
            let send = |dp: &mut Dataplane, to: IpAddr| {
                let f = frame(
                    [2; 6],
                    c0_mac,
                    client(false),
                    4000,
                    to,
                    80,
                    L4::Tcp { flags: SYN },
                    b"",
                );
                run(dp.program().unwrap(), c0, &f).unwrap().0
            };
            let other: IpAddr = "198.18.7.7".parse().unwrap();
            for closed in [false, true] {
                if closed {
                    p.close_filters(&mut dp).unwrap();
                }
                let (vips, replies) = dp.filters().unwrap();
                if closed {
                    assert_eq!(ones(&vips), 1, "one VIP, one bit");
                    assert_eq!(ones(&replies), 4, "four nat backends");
                } else {
                    assert_eq!((ones(&vips), ones(&replies)), (all, all));
                }
                assert_eq!(send(&mut dp, spec_vip()), XDP_REDIRECT);
                assert_eq!(send(&mut dp, other), XDP_PASS);
            }
        })
        .unwrap();
}

/// A new daemon's clock goes on from where the data plane's clock stood, so
/// time while no daemon ran does not count against pins that packets kept
/// refreshing with the stopped time.
#[test]
fn the_clock_resumes_where_it_stood() {
    let lab = Lab::new().unwrap();
    lab.ns
        .run(move || {
            // Pinned, as the daemon runs it, so a second load adopts the maps.
            struct Pins(std::path::PathBuf);
            impl Drop for Pins {
                fn drop(&mut self) {
                    let _ = switch_user::dataplane::detach(&self.0);
                    let _ = std::fs::remove_dir_all(&self.0);
                }
            }
            let pins = Pins(std::path::PathBuf::from(format!(
                "/sys/fs/bpf/switch-clock-{}",
                std::process::id()
            )));
            let dp = Dataplane::load(Some(&pins.0), Capacity::small()).unwrap();
            let mut stopped = dp.clock().unwrap();
            let host = stopped.read().unwrap();
            assert!(host > 0, "a fresh clock starts at the host's");
            // As if the last daemon stopped ticking 100 s ago.
            let left = host - 100_000_000_000;
            stopped.set(left).unwrap();
            let mut next = dp.clock().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            next.tick().unwrap();
            let now = next.read().unwrap();
            assert!(
                now >= left + 20_000_000 && now < left + 5_000_000_000,
                "the clock jumped from {left} to {now}"
            );
            // Loading again (a restart adopts the pinned maps) leaves it be.
            drop(dp);
            let again = Dataplane::load(Some(&pins.0), Capacity::small()).unwrap();
            assert_eq!(again.clock().unwrap().read().unwrap(), now);
        })
        .unwrap();
}

/// A SYN flood cannot evict an established connection's pin, however long
/// that connection stays quiet: SYN-only connections are pinned in a table
/// of their own (`HALF_OPEN`) until their next packet. 500 connections that
/// completed a handshake and then went quiet, 40,000 SYNs through a
/// 4,096-entry flow table, a flip: every quiet connection keeps its backend.
#[test]
fn a_syn_flood_evicts_no_established_pin_however_quiet() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            let mut spec = service(false, Protocol::Tcp, ForwardMode::Nat, 50, 50);
            let cap = Capacity {
                flows: 4096,
                ..Capacity::small()
            };
            let (mut dp, mut p) = setup_with(&spec, false, cap);
            let send = |dp: &mut Dataplane, a: u8, b: u8, port: u16, flags: u8| {
                send_tcp(dp, c0, c0_mac, a, b, port, flags)
            };
            let mut quiet = BTreeMap::new();
            for i in 0..500u16 {
                let b = send(&mut dp, 1, (i % 250) as u8, 1000 + i, SYN);
                assert_eq!(send(&mut dp, 1, (i % 250) as u8, 1000 + i, ACK), b);
                quiet.insert(i, b);
            }
            let misses = reason(&dp, Reason::Forwarded);
            for n in 0..40_000u32 {
                send(
                    &mut dp,
                    100 + (n / 60_000) as u8,
                    (n >> 8) as u8,
                    (n & 0xff) as u16 + 2000,
                    SYN,
                );
            }
            // A flip: a connection that lost its pin would now land elsewhere.
            spec.pools[0].weight = 0;
            spec.pools[1].weight = 100;
            p.apply(&mut dp, &spec, &BTreeSet::new()).unwrap();
            let id = p.services.values().next().unwrap().id;
            let before = dp.service_misses(id).unwrap();
            let kept = quiet
                .iter()
                .filter(|(i, b)| send(&mut dp, 1, (**i % 250) as u8, 1000 + **i, ACK) == **b)
                .count();
            let after = dp.service_misses(id).unwrap();
            assert!(reason(&dp, Reason::Forwarded) > misses);
            assert_eq!(
                kept, 500,
                "quiet established connections lost their backend to a SYN flood"
            );
            // Kept by their own pins, not rescued by the slot's previous owner.
            assert_eq!(
                (after.nonsyn_miss, after.nonsyn_miss_prev),
                (before.nonsyn_miss, before.nonsyn_miss_prev),
                "quiet established connections lost their pins to a SYN flood"
            );
        })
        .unwrap();
}
