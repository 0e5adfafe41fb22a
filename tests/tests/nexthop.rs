//! The cached next hop (no route lookup per packet): it gives the same
//! frames as the route lookup, falls back to it for packets above the
//! cached MTU, and follows a backend whose MAC or route changes. Also the
//! verifier's instruction budget of every program.

use std::{collections::BTreeSet, time::Duration};

use switch_common::Reason;
use switch_tests::{
    L4, SYN,
    daemon::Daemon,
    fixture::{Lab, backend, client, run, vip},
    frame,
    lab::Lab as Lab3,
    traffic::line_servers,
};
use switch_user::{
    config::{BackendConfig, DaemonConfig, ForwardMode, PoolConfig, Protocol, ServiceConfig},
    daemon::cache_nexthops,
    dataplane::{Capacity, Dataplane},
    programmer::Programmer,
};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

fn service(v6: bool, proto: Protocol, mode: ForwardMode) -> ServiceConfig {
    let port = if mode == ForwardMode::Dsr { 80 } else { 8080 };
    ServiceConfig {
        name: "web".into(),
        vip: vip(v6, 80),
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
            name: "blue".into(),
            weight: 100,
            backends: [11, 12]
                .iter()
                .map(|&i| BackendConfig::Addr(backend(v6, i, port)))
                .collect(),
        }],
        cohorts: vec![],
    }
}

fn load(spec: &ServiceConfig) -> (Dataplane, Programmer) {
    let mut dp = Dataplane::load(None, Capacity::small()).unwrap();
    dp.add_device("c0").unwrap();
    dp.add_device("b0").unwrap();
    let mut p = Programmer::new(0x5eed, Capacity::small());
    p.init(&mut dp, &DaemonConfig::default()).unwrap();
    p.apply(&mut dp, spec, &BTreeSet::new()).unwrap();
    (dp, p)
}

fn reason(dp: &Dataplane, r: Reason) -> u64 {
    dp.reasons()
        .unwrap()
        .into_iter()
        .find(|(x, _)| *x == r)
        .map(|(_, n)| n)
        .unwrap_or(0)
}

/// Every mode, family and protocol: the frame that leaves through a cached
/// next hop is the frame the route lookup would have produced, byte for byte.
#[test]
fn the_cached_next_hop_gives_the_route_lookups_frames() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            for mode in [ForwardMode::Nat, ForwardMode::Fullnat, ForwardMode::Dsr] {
                for v6 in [false, true] {
                    for proto in [Protocol::Tcp, Protocol::Udp] {
                        let what = format!("{mode:?} v6={v6} {proto:?}");
                        let spec = service(v6, proto, mode);
                        let f = |port: u16| {
                            frame(
                                [2, 0, 0, 0, 0, 9],
                                c0_mac,
                                client(v6),
                                port,
                                spec.vip.ip(),
                                80,
                                match proto {
                                    Protocol::Tcp => L4::Tcp { flags: SYN },
                                    Protocol::Udp => L4::Udp,
                                },
                                b"payload",
                            )
                        };
                        // The same new flows through a data plane that asks
                        // the kernel and one with cached next hops.
                        let (mut slow, _ps) = load(&spec);
                        let (mut fast, pf) = load(&spec);
                        let n = cache_nexthops(&mut fast, &pf).unwrap();
                        assert_eq!(n, 2, "{what}: both backends cached");
                        for port in 40_000..40_020 {
                            let a = run(slow.program().unwrap(), c0, &f(port)).unwrap();
                            let b = run(fast.program().unwrap(), c0, &f(port)).unwrap();
                            assert_eq!(a.0, XDP_REDIRECT, "{what}");
                            assert_eq!(a, b, "{what}: port {port}");
                        }
                    }
                }
            }
        })
        .unwrap();
}

/// A packet above the egress MTU is never sent through the cache: the
/// route lookup says "fragmentation needed", the packet goes to the kernel
/// (which answers with ICMP) and is counted; smaller ones take the cache.
#[test]
fn a_frame_above_the_egress_mtu_is_counted_and_handed_to_the_kernel() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    let ns = lab.ns.name.clone();
    lab.ns
        .run(move || {
            switch_tests::sh(&format!("ip netns exec {ns} ip link set b0 mtu 1280")).unwrap();
            let spec = service(false, Protocol::Udp, ForwardMode::Nat);
            let (mut dp, p) = load(&spec);
            cache_nexthops(&mut dp, &p).unwrap();
            let f = |port: u16, size: usize| {
                frame(
                    [2, 0, 0, 0, 0, 9],
                    c0_mac,
                    client(false),
                    port,
                    spec.vip.ip(),
                    80,
                    L4::Udp,
                    &vec![7u8; size],
                )
            };
            let (v, _) = run(dp.program().unwrap(), c0, &f(1000, 1000)).unwrap();
            assert_eq!(v, XDP_REDIRECT);
            let before = reason(&dp, Reason::FragNeeded);
            let (v, _) = run(dp.program().unwrap(), c0, &f(1001, 1400)).unwrap();
            assert_eq!(v, XDP_PASS, "too big for b0: to the kernel, not dropped");
            assert_eq!(reason(&dp, Reason::FragNeeded), before + 1);
        })
        .unwrap();
}

/// Every program's verified instruction count stays within the budget kept
/// in `switch-ebpf/verifier-budget.toml`.
#[test]
fn every_program_stays_within_its_verifier_budget() {
    let budget: std::collections::BTreeMap<String, u32> = toml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../switch-ebpf/verifier-budget.toml"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut counts = vec![];
    let mut dp = Dataplane::load(None, Capacity::small()).unwrap();
    counts.push((
        "switch".to_string(),
        dp.program()
            .unwrap()
            .info()
            .unwrap()
            .verified_instruction_count(),
    ));
    let mut r = switch_tests::reference::Reference::load().unwrap();
    for name in [
        "bench_floor",
        "bench_minimal",
        "packet_gen",
        "sink",
        "bench_redirect",
    ] {
        let n = r
            .program(name)
            .unwrap()
            .info()
            .unwrap()
            .verified_instruction_count();
        counts.push((name.to_string(), n));
    }
    for (name, n) in counts {
        let n = n.expect("the kernel reports verified_insns (5.16+)");
        let max = budget[&name];
        eprintln!("{name}: {n} instructions verified (budget {max})");
        assert!(
            n <= max,
            "{name}: {n} verified instructions, over its budget of {max}"
        );
    }
}

fn be_mac(lab: &Lab3) -> String {
    lab.be
        .exec("cat /sys/class/net/be0/address")
        .unwrap()
        .trim()
        .to_string()
}

/// Frames addressed to `mac` on `dev` in namespace `ns` over the next
/// `secs` seconds (tcpdump, started and given time to listen before this
/// returns), one line each.
fn frames_to(ns: &str, dev: &str, mac: &str, secs: u32) -> std::thread::JoinHandle<Vec<String>> {
    let cmd = format!(
        "ip netns exec {ns} timeout {secs} tcpdump -e -n -i {dev} -c 1000 ether dst {mac} 2>/dev/null; true"
    );
    let capture = std::thread::spawn(move || {
        switch_tests::sh(&cmd)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    });
    std::thread::sleep(Duration::from_millis(300));
    capture
}

/// A nat service on the lab's VIP with one backend and no health check.
fn one_backend(b: std::net::SocketAddr) -> String {
    format!(
        "[[service]]\nname = \"web\"\nvip = \"198.18.10.10:80\"\nprotocol = \"tcp\"\npools = [ {{ name = \"blue\", weight = 100, backends = [\"{b}\"] }} ]\n"
    )
}

/// Another host takes the backend's address (its MAC changes): once the
/// switch host knows the new MAC, traffic follows it within a second, and
/// nothing goes to the old MAC after that.
#[test]
fn traffic_follows_a_backend_whose_mac_changes() {
    let lab = Lab3::new().unwrap();
    let b = Lab3::backend(false, 1, 8080);
    line_servers(&lab, vec![b]);
    let config = one_backend(b);
    let d = Daemon::start(&lab, "mac", &config).unwrap();
    let vip = Lab3::vip(false, 80);
    let ok = lab
        .cli
        .run(move || switch_tests::traffic::ask_once(vip, None))
        .unwrap();
    assert!(ok.is_ok(), "{ok:?}");
    let old = be_mac(&lab);
    let new = "02:aa:bb:cc:dd:01";
    // The backend host's NIC is replaced (frames to the old MAC are now
    // dropped by its stack), and the switch host learns the new MAC (as a
    // gratuitous ARP would tell it).
    lab.be
        .exec(&format!("ip link set be0 address {new}"))
        .unwrap();
    lab.sw
        .exec(&format!("ip neigh replace {} lladdr {new} dev sw1", b.ip()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let capture = frames_to(&lab.be.name, "be0", &old, 3);
    let answers = lab
        .cli
        .run(move || {
            (0..20)
                .map(|_| switch_tests::traffic::ask_once(vip, None))
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");
    let to_old = capture.join().unwrap();
    assert!(
        to_old.is_empty(),
        "frames still sent to the old MAC: {to_old:#?}"
    );
    drop(d);
}

/// The client's NIC is replaced (its MAC changes): nat replies, whose route
/// the data plane keeps per client, follow the switch host's neighbour
/// table at once (the daemon's network watch moves the cache on), and
/// nothing goes to the old MAC after that.
#[test]
fn nat_replies_follow_a_client_whose_mac_changes() {
    let lab = Lab3::new().unwrap();
    let b = Lab3::backend(false, 1, 8080);
    line_servers(&lab, vec![b]);
    let config = one_backend(b);
    let d = Daemon::start(&lab, "climac", &config).unwrap();
    let vip = Lab3::vip(false, 80);
    let ask = |n: usize| {
        lab.cli
            .run(move || {
                (0..n)
                    .map(|_| switch_tests::traffic::ask_once(vip, None))
                    .collect::<Vec<_>>()
            })
            .unwrap()
    };
    let answers = ask(5);
    assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");
    let old = lab
        .cli
        .exec("cat /sys/class/net/cli0/address")
        .unwrap()
        .trim()
        .to_string();
    let new = "02:aa:bb:cc:dd:02";
    lab.cli
        .exec(&format!("ip link set cli0 address {new}"))
        .unwrap();
    lab.sw
        .exec(&format!("ip neigh replace 198.18.0.2 lladdr {new} dev sw0"))
        .unwrap();
    // Well inside the daemon's one-second round: the event must do it.
    std::thread::sleep(Duration::from_millis(150));
    let capture = frames_to(&lab.cli.name, "cli0", &old, 2);
    let answers = ask(20);
    assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");
    let to_old = capture.join().unwrap();
    assert!(
        to_old.is_empty(),
        "replies still sent to the old MAC: {to_old:#?}"
    );
    drop(d);
}

/// The route to a backend moves to another link of the switch host: the
/// cached next hop follows (frames leave through the new link).
#[test]
fn traffic_follows_a_backend_whose_route_changes() {
    let lab = Lab3::new().unwrap();
    let b = Lab3::backend(false, 1, 8080);
    line_servers(&lab, vec![b]);
    // A second link between the switch host and the backend host.
    switch_tests::sh(&format!(
        "ip link add be1 netns {be} type veth peer name sw3 netns {sw}",
        be = lab.be.name,
        sw = lab.sw.name
    ))
    .unwrap();
    lab.be
        .exec("ip link set be1 up && ethtool -K be1 tx off gro on >/dev/null && sysctl -qw net.ipv4.conf.be1.rp_filter=0")
        .unwrap();
    lab.sw
        .exec("ip link set sw3 up && ip addr add 198.18.3.1/24 dev sw3 && ethtool -K sw3 tx off gro on >/dev/null")
        .unwrap();
    lab.be.exec("ip addr add 198.18.3.2/24 dev be1").unwrap();
    let config = one_backend(b);
    let d = Daemon::start_on(&lab, "route", &["sw0", "sw1", "sw3"], "", &config).unwrap();
    let vip = Lab3::vip(false, 80);
    let rx = |dev: &str| -> u64 {
        lab.be
            .exec(&format!("cat /sys/class/net/{dev}/statistics/rx_packets"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let ask = |n: usize| {
        lab.cli
            .run(move || {
                (0..n)
                    .map(|_| switch_tests::traffic::ask_once(vip, None))
                    .collect::<Vec<_>>()
            })
            .unwrap()
    };
    assert!(ask(5).iter().all(|a| a.is_ok()));
    // Now the backend is reached over the new link.
    lab.sw
        .exec(&format!(
            "ip route add {}/32 via 198.18.3.2 dev sw3",
            b.ip()
        ))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let before = rx("be1");
    let answers = ask(20);
    assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");
    let arrived = rx("be1") - before;
    assert!(
        arrived >= 20 * 3,
        "only {arrived} frames arrived over the new link"
    );
    drop(d);
}

/// Flows that lose their pin right after a canary step (evicted, or, in a
/// fleet, arriving at a host that never saw them) keep their backend: a TCP
/// packet that is not a SYN goes to its slot's previous owner. Without the
/// previous table (`slot_history` off) the same packets land on the new
/// owners; that is what the mechanism is for.
#[test]
fn unpinned_flows_return_to_their_previous_owner_after_a_canary_step() {
    use switch_tests::{ACK, check};
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            for history in [true, false] {
                let mut spec = service(false, Protocol::Tcp, ForwardMode::Nat);
                spec.pools.push(PoolConfig {
                    name: "green".into(),
                    weight: 5,
                    backends: [13, 14]
                        .iter()
                        .map(|&i| BackendConfig::Addr(backend(false, i, 8080)))
                        .collect(),
                });
                spec.pools[0].weight = 95;
                let (mut dp, mut p) = load(&spec);
                p.slot_history = history;
                let send = |dp: &mut Dataplane, port: u16, flags: u8| {
                    let f = frame(
                        [2, 0, 0, 0, 0, 9],
                        c0_mac,
                        client(false),
                        port,
                        spec.vip.ip(),
                        80,
                        L4::Tcp { flags },
                        b"",
                    );
                    let (v, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                    assert_eq!(v, XDP_REDIRECT);
                    check(&out).unwrap().dst
                };
                let ports = 1000..3000u16;
                let began: Vec<_> = ports.clone().map(|port| send(&mut dp, port, SYN)).collect();
                // A canary step 5% -> 25%, then every pin is lost.
                spec.pools[0].weight = 75;
                spec.pools[1].weight = 25;
                p.apply(&mut dp, &spec, &BTreeSet::new()).unwrap();
                dp.clear_flows().unwrap();
                let moved = ports
                    .clone()
                    .zip(&began)
                    .filter(|(port, b)| send(&mut dp, *port, ACK) != **b)
                    .count();
                let misses = dp.service_misses(p.services["web"].id).unwrap();
                eprintln!("history {history}: {moved} of 2000 unpinned flows moved; {misses:?}");
                if history {
                    assert_eq!(moved, 0, "an unpinned flow changed backend");
                    assert!(misses.nonsyn_miss_prev > 100, "{misses:?}");
                } else {
                    assert!(moved > 100, "without history some flows must move");
                    assert_eq!(misses.nonsyn_miss_prev, 0);
                }
                // New connections follow the current table all the same.
                let green = (5000..7000u16)
                    .filter(|port| {
                        let d = send(&mut dp, *port, SYN);
                        d == backend(false, 13, 0).ip() || d == backend(false, 14, 0).ip()
                    })
                    .count();
                assert!(
                    (400..600).contains(&green),
                    "{green} of 2000 new flows on green"
                );
            }
        })
        .unwrap();
}

/// The replies' route cache has no ports in its key, so the daemon turns it
/// off while a routing rule (IPv4 or IPv6) selects by port: it must see such
/// rules as iproute2 shows them, and only those.
#[test]
fn routing_rules_by_port_are_seen() {
    let ns = switch_tests::Netns::new("rules").unwrap();
    let by_port = |ns: &switch_tests::Netns| {
        ns.run(switch_user::neighbours::rules_select_by_port)
            .unwrap()
    };
    assert_eq!(by_port(&ns), Some(false));
    ns.exec("ip rule add ipproto tcp table 100 && ip rule add from 198.18.0.0/24 table 101")
        .unwrap();
    assert_eq!(by_port(&ns), Some(false), "no port in these rules");
    ns.exec("ip -6 rule add dport 8000-8080 table 102").unwrap();
    assert_eq!(by_port(&ns), Some(true));
    ns.exec("ip -6 rule del dport 8000-8080 table 102 && ip rule add sport 8080 table 103")
        .unwrap();
    assert_eq!(by_port(&ns), Some(true));
    ns.exec("ip rule del sport 8080 table 103").unwrap();
    assert_eq!(by_port(&ns), Some(false));
}
