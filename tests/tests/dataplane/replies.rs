//! Replies: the kernel's route answer kept per client, and replies that are not the VIP's left alone.

use super::*;

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
