//! nat and fullnat: both ends rewritten, replies back to the client.

use super::*;

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
