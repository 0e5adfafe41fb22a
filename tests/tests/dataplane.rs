//! The real XDP object through BPF_PROG_TEST_RUN: packet in, verdict and
//! packet out, every field and checksum checked by an independent parser.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use switch_common::Reason;
use switch_tests::{
    ACK, FIN, L4, SYN, check,
    fixture::{CLIENT_MAC, Lab, backend, backend_mac, client, run, vip},
    frame,
};
use switch_user::{
    config::{BackendConfig, DaemonConfig, ForwardMode, PoolConfig, Protocol, ServiceConfig},
    dataplane::{Capacity, Dataplane},
    programmer::Programmer,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

fn service(v6: bool, proto: Protocol, mode: ForwardMode, blue: u32, green: u32) -> ServiceConfig {
    let port = if mode == ForwardMode::Dsr { 80 } else { 8080 };
    let pool = |name: &str, weight, ids: [u8; 2]| PoolConfig {
        name: name.into(),
        weight,
        backends: ids
            .iter()
            .map(|&i| BackendConfig::Addr(backend(v6, i, port)))
            .collect(),
    };
    ServiceConfig {
        name: "web".into(),
        vip: vip(v6, 80),
        protocol: proto,
        mode,
        affinity: Default::default(),
        source: None,
        health: None,
        pools: vec![pool("blue", blue, [11, 12]), pool("green", green, [13, 14])],
        cohorts: vec![],
    }
}

fn reason(dp: &Dataplane, r: Reason) -> u64 {
    dp.reasons()
        .unwrap()
        .into_iter()
        .find(|(x, _)| *x == r)
        .unwrap()
        .1
}

fn l4(proto: Protocol) -> L4 {
    match proto {
        Protocol::Tcp => L4::Tcp { flags: SYN },
        Protocol::Udp => L4::Udp,
    }
}

#[test]
fn nat_forward_and_reply_every_family_and_protocol() {
    let lab = Lab::new().unwrap();
    let (c0, b0, c0_mac, b0_mac) = (lab.c0, lab.b0, lab.c0_mac, lab.b0_mac);
    lab.ns
        .run(move || {
            for v6 in [false, true] {
                for proto in [Protocol::Tcp, Protocol::Udp] {
                    let lab_spec = service(v6, proto, ForwardMode::Nat, 100, 0);
                    let (mut dp, _p) = setup_standalone(&lab_spec);
                    let prog = dp.program().unwrap();
                    let f = frame(
                        [2, 0, 0, 0, 0, 9],
                        c0_mac,
                        client(v6),
                        40_000,
                        lab_spec.vip.ip(),
                        80,
                        l4(proto),
                        b"hello",
                    );
                    let (verdict, out) = run(prog, c0, &f).unwrap();
                    assert_eq!(verdict, XDP_REDIRECT, "v6={v6} {proto:?}");
                    let seen = check(&out).unwrap_or_else(|e| panic!("v6={v6} {proto:?}: {e}"));
                    assert_eq!(seen.src, client(v6));
                    assert_eq!(seen.sport, 40_000);
                    assert!(
                        [backend(v6, 11, 8080), backend(v6, 12, 8080)]
                            .contains(&SocketAddr::new(seen.dst, seen.dport)),
                        "{seen:?}"
                    );
                    let i = match seen.dst {
                        IpAddr::V4(a) => a.octets()[3],
                        IpAddr::V6(a) => a.octets()[15],
                    };
                    assert_eq!(seen.dmac, backend_mac(i));
                    assert_eq!(seen.smac, b0_mac);
                    assert_eq!(seen.ttl, 63);
                    assert_eq!(seen.payload, b"hello");

                    // The reply from that backend goes back out as the VIP.
                    let r = frame(
                        backend_mac(i),
                        b0_mac,
                        seen.dst,
                        seen.dport,
                        client(v6),
                        40_000,
                        match proto {
                            Protocol::Tcp => L4::Tcp { flags: SYN | ACK },
                            Protocol::Udp => L4::Udp,
                        },
                        b"world",
                    );
                    let (verdict, out) = run(dp.program().unwrap(), b0, &r).unwrap();
                    assert_eq!(verdict, XDP_REDIRECT);
                    let seen = check(&out).unwrap();
                    assert_eq!(SocketAddr::new(seen.src, seen.sport), lab_spec.vip);
                    assert_eq!(seen.dst, client(v6));
                    assert_eq!(seen.dmac, CLIENT_MAC);
                    assert_eq!(seen.smac, c0_mac);
                    assert_eq!(reason(&dp, Reason::Forwarded), 1);
                    assert_eq!(reason(&dp, Reason::ReplyForwarded), 1);
                }
            }
        })
        .unwrap();
}

/// A nat reply asks the kernel for its route once per (client, backend,
/// link) and keeps the answer until the network watch moves the epoch on;
/// a packet larger than any the kernel forwarded asks again, and with the
/// cache off every reply asks.
#[test]
fn nat_replies_keep_the_kernels_route_answer_until_the_network_changes() {
    let lab = Lab::new().unwrap();
    let (c0, b0, c0_mac, b0_mac) = (lab.c0, lab.b0, lab.c0_mac, lab.b0_mac);
    lab.ns
        .run(move || {
            for v6 in [false, true] {
                let spec = service(v6, Protocol::Tcp, ForwardMode::Nat, 100, 0);
                let (mut dp, _p) = setup_standalone(&spec);
                let f = frame(
                    [2, 0, 0, 0, 0, 9],
                    c0_mac,
                    client(v6),
                    40_000,
                    spec.vip.ip(),
                    80,
                    L4::Tcp { flags: SYN },
                    b"",
                );
                let (verdict, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                assert_eq!(verdict, XDP_REDIRECT);
                let to = check(&out).unwrap();
                let i = match to.dst {
                    IpAddr::V4(a) => a.octets()[3],
                    IpAddr::V6(a) => a.octets()[15],
                };
                let reply = |len: usize| {
                    frame(
                        backend_mac(i),
                        b0_mac,
                        to.dst,
                        to.dport,
                        client(v6),
                        40_000,
                        L4::Tcp { flags: ACK },
                        &vec![7u8; len],
                    )
                };
                // The reply as it leaves: from the VIP, to the client, its
                // frame; whatever answered the route, it must be whole.
                let send = |dp: &mut Dataplane, len: usize| -> (Vec<u8>, [u8; 6]) {
                    let (verdict, out) = run(dp.program().unwrap(), b0, &reply(len)).unwrap();
                    assert_eq!(verdict, XDP_REDIRECT, "v6={v6}");
                    let seen = check(&out).unwrap();
                    assert_eq!(SocketAddr::new(seen.src, seen.sport), spec.vip);
                    assert_eq!(seen.dst, client(v6));
                    assert_eq!(seen.smac, c0_mac);
                    assert_eq!(seen.ttl, 63);
                    assert_eq!(seen.payload.len(), len);
                    (out, seen.dmac)
                };
                let neigh = |mac: &str| client_neighbour(client(v6), mac);
                let (asked, mac) = send(&mut dp, 100);
                assert_eq!(mac, CLIENT_MAC);
                let (kept, mac) = send(&mut dp, 100);
                assert_eq!(mac, CLIENT_MAC);
                assert_eq!(asked, kept, "the kept answer gives the kernel's frame");

                // The kernel learns another MAC: the kept answer holds
                // until the epoch moves...
                neigh("02:00:00:00:0a:01");
                assert_eq!(send(&mut dp, 100).1, CLIENT_MAC);
                // ...except for a packet larger than the kernel forwarded
                // (the MTU check stays the kernel's); its answer is kept.
                assert_eq!(send(&mut dp, 1000).1, [2, 0, 0, 0, 0x0a, 1]);
                neigh("02:00:00:00:0a:02");
                assert_eq!(send(&mut dp, 100).1, [2, 0, 0, 0, 0x0a, 1]);
                let mut hops = dp.reply_hops().unwrap();
                hops.advance().unwrap();
                assert_eq!(send(&mut dp, 100).1, [2, 0, 0, 0, 0x0a, 2]);

                // Off (routing rules by port): every reply asks.
                hops.set_off(true).unwrap();
                neigh("02:00:00:00:0a:03");
                assert_eq!(send(&mut dp, 100).1, [2, 0, 0, 0, 0x0a, 3]);
                neigh("02:00:00:00:00:02");
                assert_eq!(send(&mut dp, 100).1, CLIENT_MAC);
                // On again: nothing kept from before counts.
                hops.set_off(false).unwrap();
                assert_eq!(send(&mut dp, 100).1, CLIENT_MAC);
                assert_eq!(reason(&dp, Reason::ReplyForwarded), 9);
            }
        })
        .unwrap();
}

/// Two clients whose replies share a slot of the replies' route cache
/// (direct-mapped): each reply takes the slot from the other, and every
/// one still reaches its own client's MAC.
#[test]
fn replies_of_clients_that_share_a_cache_slot_each_reach_their_client() {
    let lab = Lab::new().unwrap();
    let (c0, b0, c0_mac, b0_mac) = (lab.c0, lab.b0, lab.c0_mac, lab.b0_mac);
    lab.ns
        .run(move || {
            let mut spec = service(true, Protocol::Tcp, ForwardMode::Nat, 100, 0);
            spec.pools[0].backends.truncate(1);
            let backend_ip: std::net::Ipv6Addr = "2001:2:1::b".parse().unwrap();
            // The key exactly as the data plane builds it (see ReplyHopKey).
            let slot = |client: std::net::Ipv6Addr| {
                let key = switch_common::ReplyHopKey {
                    dst: client.octets(),
                    src: backend_ip.octets(),
                    ifindex: b0,
                    family: switch_common::FAMILY_V6,
                    tos: 0,
                    proto: switch_common::PROTO_TCP,
                    _pad: 0,
                };
                let words: [u64; 5] = unsafe { core::mem::transmute(key) };
                switch_common::hash::reply_hop_slot(&words, switch_common::REPLY_HOP_SLOTS)
            };
            let a: std::net::Ipv6Addr = "2001:2::2".parse().unwrap();
            let b = (3u64..)
                .map(|i| std::net::Ipv6Addr::from(u128::from(a) & !0xffff_ffff_ffff | i as u128))
                .find(|&c| slot(c) == slot(a))
                .unwrap();
            client_neighbour(IpAddr::V6(b), "02:00:00:00:0b:0b");
            let (mut dp, _p) = setup_standalone(&spec);
            for c in [a, b] {
                let f = frame(
                    [2, 0, 0, 0, 0, 9],
                    c0_mac,
                    IpAddr::V6(c),
                    40_000,
                    spec.vip.ip(),
                    80,
                    L4::Tcp { flags: SYN },
                    b"",
                );
                let (verdict, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                assert_eq!(verdict, XDP_REDIRECT);
                assert_eq!(check(&out).unwrap().dst, IpAddr::V6(backend_ip));
            }
            for round in 0..4 {
                for (c, mac) in [(a, CLIENT_MAC), (b, [2, 0, 0, 0, 0x0b, 0x0b])] {
                    let r = frame(
                        backend_mac(11),
                        b0_mac,
                        IpAddr::V6(backend_ip),
                        8080,
                        IpAddr::V6(c),
                        40_000,
                        L4::Tcp { flags: ACK },
                        b"data",
                    );
                    let (verdict, out) = run(dp.program().unwrap(), b0, &r).unwrap();
                    assert_eq!(verdict, XDP_REDIRECT, "round {round}, {c}");
                    let seen = check(&out).unwrap();
                    assert_eq!(seen.dst, IpAddr::V6(c));
                    assert_eq!(seen.dmac, mac, "round {round}: the reply to {c}");
                    assert_eq!(SocketAddr::new(seen.src, seen.sport), spec.vip);
                }
            }
            switch_tests::sh(&format!("ip neigh del {b} dev c0")).unwrap();
        })
        .unwrap();
}

/// A client's VIP connection ends, and the client then reaches the
/// backend's own address from the same port (the backend sees the same
/// 4-tuple, reused): its SYN-ACK answers another SYN than the pin's, so
/// it and everything after it pass untouched. The VIP connection's own
/// SYN-ACK (retransmitted, or with TCP Fast Open data acknowledged) is
/// still rewritten.
#[test]
fn a_direct_connection_reusing_a_vip_connections_port_gets_its_replies_untouched() {
    let lab = Lab::new().unwrap();
    let (c0, b0, c0_mac, b0_mac) = (lab.c0, lab.b0, lab.c0_mac, lab.b0_mac);
    lab.ns
        .run(move || {
            for v6 in [false, true] {
                let mut spec = service(v6, Protocol::Tcp, ForwardMode::Nat, 100, 0);
                spec.pools[0].backends.truncate(1);
                let (mut dp, _p) = setup_standalone(&spec);
                let b = backend(v6, 11, 8080);
                let to_vip = |flags: u8| {
                    frame(
                        [2, 0, 0, 0, 0, 9],
                        c0_mac,
                        client(v6),
                        40_000,
                        spec.vip.ip(),
                        80,
                        L4::Tcp { flags },
                        b"",
                    )
                };
                // From the backend to the client's port 40000, acknowledging
                // `ack` (the client's SYN had sequence 1000).
                let from_backend = |syn: bool, ack: u32| {
                    let builder = etherparse::PacketBuilder::ethernet2(backend_mac(11), b0_mac);
                    let builder = match (b.ip(), client(v6)) {
                        (IpAddr::V4(s), IpAddr::V4(d)) => builder.ipv4(s.octets(), d.octets(), 64),
                        (IpAddr::V6(s), IpAddr::V6(d)) => builder.ipv6(s.octets(), d.octets(), 64),
                        _ => unreachable!(),
                    };
                    let mut t = builder.tcp(8080, 40_000, 7_000, 64_240).ack(ack);
                    if syn {
                        t = t.syn();
                    }
                    let mut out = Vec::new();
                    t.write(&mut out, b"").unwrap();
                    out
                };
                let verdict_of = |dp: &mut Dataplane, f: &[u8]| {
                    let (verdict, out) = run(dp.program().unwrap(), b0, f).unwrap();
                    (verdict, out)
                };
                // The VIP connection: its SYN, and the backend's SYN-ACK
                // (plain, and acknowledging 200 bytes of Fast Open data).
                let (verdict, _) = run(dp.program().unwrap(), c0, &to_vip(SYN)).unwrap();
                assert_eq!(verdict, XDP_REDIRECT);
                for ack in [1001, 1201] {
                    let (verdict, out) = verdict_of(&mut dp, &from_backend(true, ack));
                    assert_eq!(verdict, XDP_REDIRECT, "v6={v6} ack={ack}");
                    let seen = check(&out).unwrap();
                    assert_eq!(SocketAddr::new(seen.src, seen.sport), spec.vip);
                }
                // It ends; the client connects to the backend directly
                // from the same port (another sequence number).
                let (verdict, _) = run(dp.program().unwrap(), c0, &to_vip(FIN | ACK)).unwrap();
                assert_eq!(verdict, XDP_REDIRECT);
                let before = reason(&dp, Reason::ReplyNotOurs);
                for (syn, ack) in [(true, 90_001), (false, 90_001), (false, 90_101)] {
                    let f = from_backend(syn, ack);
                    let (verdict, out) = verdict_of(&mut dp, &f);
                    assert_eq!(verdict, XDP_PASS, "v6={v6} syn={syn}: not the VIP's reply");
                    assert_eq!(out, f, "passed untouched");
                }
                assert_eq!(reason(&dp, Reason::ReplyNotOurs), before + 3);
            }
        })
        .unwrap();
}

/// The lab's neighbour entry for a client (on c0), as the kernel learns it.
fn client_neighbour(addr: IpAddr, mac: &str) {
    switch_tests::sh(&format!(
        "ip neigh replace {addr} lladdr {mac} dev c0 nud permanent"
    ))
    .unwrap();
}

fn setup_standalone(spec: &ServiceConfig) -> (Dataplane, Programmer) {
    setup(spec, false)
}

/// `filters_open`: as the daemon starts (see `Programmer::filters_open`).
fn setup(spec: &ServiceConfig, filters_open: bool) -> (Dataplane, Programmer) {
    let mut dp = Dataplane::load(None, Capacity::small()).expect("load");
    dp.add_device("c0").unwrap();
    dp.add_device("b0").unwrap();
    let mut p = Programmer::new(0x5eed, Capacity::small());
    p.filters_open = filters_open;
    p.init(&mut dp, &DaemonConfig::default()).unwrap();
    p.apply(&mut dp, spec, &BTreeSet::new()).unwrap();
    (dp, p)
}

#[test]
fn dsr_changes_only_the_ethernet_header() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac, b0_mac) = (lab.c0, lab.c0_mac, lab.b0_mac);
    lab.ns
        .run(move || {
            for v6 in [false, true] {
                let spec = service(v6, Protocol::Tcp, ForwardMode::Dsr, 100, 0);
                let (mut dp, _p) = setup_standalone(&spec);
                let f = frame(
                    [2, 0, 0, 0, 0, 9],
                    c0_mac,
                    client(v6),
                    40_001,
                    spec.vip.ip(),
                    80,
                    L4::Tcp { flags: SYN },
                    b"x",
                );
                let (verdict, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                assert_eq!(verdict, XDP_REDIRECT);
                assert_eq!(out[12..], f[12..], "IP packet must be untouched");
                let seen = check(&out).unwrap();
                assert!([backend_mac(11), backend_mac(12)].contains(&seen.dmac));
                assert_eq!(seen.smac, b0_mac);
            }
        })
        .unwrap();
}

#[test]
fn packets_not_for_a_vip_pass_bit_for_bit() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            let spec = service(false, Protocol::Tcp, ForwardMode::Nat, 100, 0);
            let (mut dp, _p) = setup_standalone(&spec);
            let other_port = frame(
                [2; 6],
                c0_mac,
                client(false),
                1,
                spec.vip.ip(),
                22,
                L4::Tcp { flags: SYN },
                b"",
            );
            let other_addr = frame(
                [2; 6],
                c0_mac,
                client(false),
                1,
                "198.18.0.1".parse().unwrap(),
                80,
                L4::Udp,
                b"",
            );
            let mut arp = vec![0xffu8; 6];
            arp.extend_from_slice(&[2; 6]);
            arp.extend_from_slice(&[0x08, 0x06]);
            arp.extend_from_slice(&[0u8; 28]);
            for f in [other_port, other_addr, arp] {
                let (verdict, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                assert_eq!(verdict, XDP_PASS);
                assert_eq!(out, f);
            }
            assert_eq!(reason(&dp, Reason::NotVip), 2);
            assert_eq!(reason(&dp, Reason::NotIp), 1);
        })
        .unwrap();
}

#[test]
fn hard_cases_have_a_verdict_and_a_counter() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            let spec = service(false, Protocol::Tcp, ForwardMode::Nat, 100, 0);
            let (mut dp, _p) = setup_standalone(&spec);
            let good = frame(
                [2; 6],
                c0_mac,
                client(false),
                5,
                spec.vip.ip(),
                80,
                L4::Tcp { flags: SYN },
                b"",
            );
            let good6 = frame(
                [2; 6],
                c0_mac,
                client(true),
                5,
                vip(true, 80).ip(),
                80,
                L4::Tcp { flags: SYN },
                b"",
            );

            let mut cases: Vec<(&str, Vec<u8>, u32, Reason)> = Vec::new();
            for cut in [14usize, 20, 30, 40, 50] {
                cases.push((
                    "truncated",
                    good[..cut].to_vec(),
                    XDP_PASS,
                    Reason::Truncated,
                ));
            }
            let mut opts = good.clone();
            opts[14] = 0x46;
            cases.push(("ipv4 options", opts, XDP_PASS, Reason::Ipv4Options));
            let mut bad_ihl = good.clone();
            bad_ihl[14] = 0x44;
            cases.push(("ihl 4", bad_ihl, XDP_PASS, Reason::Malformed));
            let mut frag = good.clone();
            frag[20] = 0x20; // more fragments
            cases.push(("fragment", frag, XDP_PASS, Reason::Fragment));
            let mut ttl1 = good.clone();
            ttl1[22] = 1;
            cases.push(("ttl 1", ttl1, XDP_PASS, Reason::TtlExpired));
            let mut vlan = good[..12].to_vec();
            vlan.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
            vlan.extend_from_slice(&good[12..]);
            cases.push(("vlan", vlan, XDP_PASS, Reason::Vlan));
            let mut ext = good6.clone();
            ext[20] = 0; // hop-by-hop first
            cases.push(("ipv6 ext header", ext, XDP_PASS, Reason::Ipv6ExtHeader));
            let mut long_len = good.clone();
            long_len[16] = 0x0f; // total length beyond the frame
            cases.push((
                "ip length beyond frame",
                long_len,
                XDP_PASS,
                Reason::Truncated,
            ));

            for (name, f, want, why) in cases {
                let before = reason(&dp, why);
                let (verdict, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                assert_eq!(verdict, want, "{name}");
                assert_eq!(out, f, "{name}: a passed frame is untouched");
                assert_eq!(reason(&dp, why), before + 1, "{name}: counter {why:?}");
            }

            // The largest frame one XDP buffer holds (4 KiB page less head-
            // and tailroom; the program does not declare xdp.frags, so the
            // kernel refuses an MTU above it) is forwarded with correct
            // checksums. Frames shorter than an Ethernet header never reach
            // an XDP program (the kernel rejects them first).
            let jumbo = frame(
                [2; 6],
                c0_mac,
                client(false),
                6,
                spec.vip.ip(),
                80,
                L4::Tcp { flags: ACK },
                &vec![7u8; 3400],
            );
            let (verdict, out) = run(dp.program().unwrap(), c0, &jumbo).unwrap();
            assert_eq!(verdict, XDP_REDIRECT);
            check(&out).unwrap();
        })
        .unwrap();
}

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

fn spec_vip() -> IpAddr {
    vip(false, 80).ip()
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
fn a_vip_without_eligible_backends_drops_and_counts() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            let spec = service(false, Protocol::Tcp, ForwardMode::Nat, 0, 0);
            let (mut dp, _p) = setup_standalone(&spec);
            let f = frame(
                [2; 6],
                c0_mac,
                client(false),
                7,
                spec.vip.ip(),
                80,
                L4::Tcp { flags: SYN },
                b"",
            );
            let (verdict, _) = run(dp.program().unwrap(), c0, &f).unwrap();
            assert_eq!(verdict, XDP_DROP);
            assert_eq!(reason(&dp, Reason::NoBackend), 1);
            assert_eq!(dp.service_stats(0).unwrap().no_backend, 1);
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
fn fullnat_rewrites_both_ends_and_replies_find_the_client() {
    let lab = Lab::new().unwrap();
    let (c0, b0, c0_mac, b0_mac) = (lab.c0, lab.b0, lab.c0_mac, lab.b0_mac);
    lab.ns
        .run(move || {
            for v6 in [false, true] {
                for proto in [Protocol::Tcp, Protocol::Udp] {
                    let mut spec = service(v6, proto, ForwardMode::Fullnat, 100, 0);
                    let source: IpAddr = if v6 {
                        "2001:2:1::1".parse().unwrap()
                    } else {
                        "198.18.1.1".parse().unwrap()
                    };
                    spec.source = Some(source);
                    let (mut dp, _p) = setup_standalone(&spec);
                    let mut ports = BTreeSet::new();
                    let mut replies = Vec::new();
                    for cport in [40_000u16, 40_001, 40_002] {
                        let f = frame(
                            [2; 6],
                            c0_mac,
                            client(v6),
                            cport,
                            spec.vip.ip(),
                            80,
                            l4(proto),
                            b"ping",
                        );
                        let (verdict, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                        assert_eq!(verdict, XDP_REDIRECT);
                        let seen = check(&out).unwrap();
                        assert_eq!(seen.src, source, "source rewritten to the switch address");
                        assert!(
                            (1024..32768).contains(&seen.sport),
                            "source port {} outside the reserved range",
                            seen.sport
                        );
                        assert_eq!(seen.dport, 8080);
                        assert_eq!(seen.smac, b0_mac);
                        assert!(ports.insert(seen.sport), "each flow its own source port");
                        let r = frame(
                            seen.dmac,
                            b0_mac,
                            seen.dst,
                            8080,
                            source,
                            seen.sport,
                            match proto {
                                Protocol::Tcp => L4::Tcp { flags: SYN | ACK },
                                Protocol::Udp => L4::Udp,
                            },
                            b"pong",
                        );
                        let (verdict, out) = run(dp.program().unwrap(), b0, &r).unwrap();
                        assert_eq!(verdict, XDP_REDIRECT);
                        let back = check(&out).unwrap();
                        assert_eq!(SocketAddr::new(back.src, back.sport), spec.vip);
                        assert_eq!(
                            SocketAddr::new(back.dst, back.dport),
                            SocketAddr::new(client(v6), cport)
                        );
                        assert_eq!(back.dmac, CLIENT_MAC);
                        assert_eq!(back.payload, b"pong");
                        replies.push(r);
                    }
                    // The kernel's route answer for the client is kept (the
                    // second and third replies above used it) until the
                    // network watch moves the epoch on.
                    let to = |dp: &mut Dataplane| {
                        let (verdict, out) = run(dp.program().unwrap(), b0, &replies[0]).unwrap();
                        assert_eq!(verdict, XDP_REDIRECT);
                        check(&out).unwrap().dmac
                    };
                    let neigh = |mac: &str| client_neighbour(client(v6), mac);
                    neigh("02:00:00:00:0a:05");
                    assert_eq!(to(&mut dp), CLIENT_MAC);
                    dp.reply_hops().unwrap().advance().unwrap();
                    assert_eq!(to(&mut dp), [2, 0, 0, 0, 0x0a, 5]);
                    neigh("02:00:00:00:00:02");
                    // The same flow keeps its source port.
                    let f = frame(
                        [2; 6],
                        c0_mac,
                        client(v6),
                        40_000,
                        spec.vip.ip(),
                        80,
                        l4(proto),
                        b"",
                    );
                    let (_, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                    assert!(ports.contains(&check(&out).unwrap().sport));
                }
            }
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

#[test]
fn dsr_udp_in_both_families() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            for v6 in [false, true] {
                let spec = service(v6, Protocol::Udp, ForwardMode::Dsr, 100, 0);
                let (mut dp, _p) = setup_standalone(&spec);
                let f = frame(
                    [2, 0, 0, 0, 0, 9],
                    c0_mac,
                    client(v6),
                    40_002,
                    spec.vip.ip(),
                    80,
                    L4::Udp,
                    b"q",
                );
                let (verdict, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                assert_eq!(verdict, XDP_REDIRECT);
                assert_eq!(out[12..], f[12..], "IP packet must be untouched");
                assert!([backend_mac(11), backend_mac(12)].contains(&check(&out).unwrap().dmac));
            }
        })
        .unwrap();
}

#[test]
fn a_full_flow_table_keeps_serving_and_active_flows_keep_their_backend() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            let mut spec = service(false, Protocol::Tcp, ForwardMode::Nat, 50, 50);
            let cap = Capacity { flows: 4096, ..Capacity::small() };
            let mut dp = Dataplane::load(None, cap).unwrap();
            dp.add_device("c0").unwrap();
            dp.add_device("b0").unwrap();
            let mut p = Programmer::new(0x5eed, cap);
            p.init(&mut dp, &DaemonConfig::default()).unwrap();
            p.apply(&mut dp, &spec, &BTreeSet::new()).unwrap();
            let send = |dp: &mut Dataplane, a: u8, b: u8, port: u16, flags: u8| {
                let src = IpAddr::V4(std::net::Ipv4Addr::new(198, 19, a, b));
                let f = frame([2; 6], c0_mac, src, port, spec_vip(), 80, L4::Tcp { flags }, b"");
                let (v, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                assert_eq!(v, XDP_REDIRECT, "a flow was not forwarded with the table full");
                check(&out).unwrap().dst
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
