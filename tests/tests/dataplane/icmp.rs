//! ICMP errors about VIP flows: to the backend that owns the flow, the
//! quote turned back into what the backend sent, every checksum right.

use etherparse::{
    Icmpv4Type, Icmpv6Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice,
    icmpv4::DestUnreachableHeader,
};

use super::*;

const ROUTER4: [u8; 4] = [198, 18, 0, 254];
const ROUTER6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe];

/// What a router sends to the VIP about our reply `VIP:80 -> client:cport`
/// (TCP): "fragmentation needed, MTU 1300" / "packet too big, MTU 1300",
/// quoting the reply's IP header and the first 8 bytes of its TCP header
/// (`quote_len` cuts it shorter).
fn too_big(
    mac: [u8; 6],
    v6: bool,
    vip: IpAddr,
    client: IpAddr,
    cport: u16,
    quote_len: usize,
) -> Vec<u8> {
    // The quoted packet as it left: VIP -> client, 1460 bytes of payload.
    let inner = PacketBuilder::ethernet2([0; 6], [0; 6]);
    let inner = match (vip, client) {
        (IpAddr::V4(v), IpAddr::V4(c)) => inner.ipv4(v.octets(), c.octets(), 63),
        (IpAddr::V6(v), IpAddr::V6(c)) => inner.ipv6(v.octets(), c.octets(), 63),
        _ => unreachable!(),
    }
    .tcp(80, cport, 1000, 64000)
    .ack(1);
    let mut quoted = Vec::new();
    inner.write(&mut quoted, &[0u8; 1460]).unwrap();
    let ip_len = if v6 { 40 } else { 20 };
    let quote = &quoted[14..14 + (ip_len + 8).min(quote_len)];
    let outer = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xfe], mac);
    let mut out = Vec::new();
    if v6 {
        let IpAddr::V6(v) = vip else { unreachable!() };
        outer
            .ipv6(ROUTER6, v.octets(), 64)
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1300 })
            .write(&mut out, quote)
            .unwrap();
    } else {
        let IpAddr::V4(v) = vip else { unreachable!() };
        outer
            .ipv4(ROUTER4, v.octets(), 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1300 },
            ))
            .write(&mut out, quote)
            .unwrap();
    }
    out
}

/// The ICMP error as it left for the backend, checked field by field:
/// (outer destination, quoted source, quoted source port, quoted
/// destination, quoted destination port).
fn read_out(out: &[u8], v6: bool) -> (IpAddr, IpAddr, u16, IpAddr, u16) {
    let p = SlicedPacket::from_ethernet(out).unwrap();
    let (dst, src_b) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "outer IPv4 checksum"
            );
            (IpAddr::from(h.destination), h.source.to_vec())
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header().to_header();
            (IpAddr::from(h.destination), h.source.to_vec())
        }
        other => panic!("not IP: {other:?}"),
    };
    let quote = match &p.transport {
        Some(TransportSlice::Icmpv4(icmp)) => {
            assert!(!v6);
            let h = icmp.header();
            assert_eq!(
                h.checksum,
                h.icmp_type.calc_checksum(icmp.payload()),
                "ICMPv4 checksum"
            );
            assert_eq!(
                h.icmp_type,
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1300
                })
            );
            icmp.payload().to_vec()
        }
        Some(TransportSlice::Icmpv6(icmp)) => {
            assert!(v6);
            let h = icmp.header();
            let (IpAddr::V6(d), Ok(s)) = (dst, <[u8; 16]>::try_from(src_b.as_slice())) else {
                panic!("v6 addresses")
            };
            assert_eq!(
                h.checksum,
                h.icmp_type
                    .calc_checksum(s, d.octets(), icmp.payload())
                    .unwrap(),
                "ICMPv6 checksum (pseudo-header with the new destination)"
            );
            assert_eq!(h.icmp_type, Icmpv6Type::PacketTooBig { mtu: 1300 });
            icmp.payload().to_vec()
        }
        other => panic!("not ICMP: {other:?}"),
    };
    // The quote, read as an IP packet of its own (cut short: lax).
    let q = etherparse::LaxSlicedPacket::from_ip(&quote).unwrap();
    let (qsrc, qdst) = match &q.net {
        Some(etherparse::LaxNetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "quoted IPv4 checksum"
            );
            (IpAddr::from(h.source), IpAddr::from(h.destination))
        }
        Some(etherparse::LaxNetSlice::Ipv6(ip)) => {
            let h = ip.header().to_header();
            (IpAddr::from(h.source), IpAddr::from(h.destination))
        }
        other => panic!("quote not IP: {other:?}"),
    };
    let l4 = if v6 { 40 } else { 20 };
    let sport = u16::from_be_bytes([quote[l4], quote[l4 + 1]]);
    let dport = u16::from_be_bytes([quote[l4 + 2], quote[l4 + 3]]);
    (dst, qsrc, sport, qdst, dport)
}

#[test]
fn a_too_big_error_about_a_vip_flow_goes_to_its_backend_as_the_backend_sent_it() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            for v6 in [false, true] {
                for mode in [ForwardMode::Nat, ForwardMode::Fullnat, ForwardMode::Dsr] {
                    let mut spec = service(v6, Protocol::Tcp, mode, 100, 0);
                    let source: IpAddr = if v6 {
                        "2001:2:1::1".parse().unwrap()
                    } else {
                        "198.18.1.1".parse().unwrap()
                    };
                    if mode == ForwardMode::Fullnat {
                        spec.source = Some(source);
                    }
                    let (mut dp, _p) = setup_standalone(&spec);
                    let what = format!("v6={v6} {mode:?}");
                    // The connection: its SYN pins a backend.
                    let f = frame(
                        [2; 6],
                        c0_mac,
                        client(v6),
                        40_000,
                        spec.vip.ip(),
                        80,
                        L4::Tcp { flags: SYN },
                        b"",
                    );
                    let (v, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                    assert_eq!(v, XDP_REDIRECT, "{what}");
                    let fwd = check(&out).unwrap();
                    // The backend, as the backend itself sees the flow.
                    let (backend_addr, backend_port, peer, peer_port) = match mode {
                        ForwardMode::Dsr => (spec.vip.ip(), 80, client(v6), 40_000),
                        ForwardMode::Fullnat => (fwd.dst, fwd.dport, fwd.src, fwd.sport),
                        ForwardMode::Nat => (fwd.dst, fwd.dport, client(v6), 40_000),
                    };
                    let dmac = fwd.dmac;

                    let icmp = too_big(c0_mac, v6, spec.vip.ip(), client(v6), 40_000, 1000);
                    let (v, out) = run(dp.program().unwrap(), c0, &icmp).unwrap();
                    assert_eq!(v, XDP_REDIRECT, "{what}: not sent on");
                    assert_eq!(reason(&dp, Reason::IcmpToBackend), 1, "{what}");
                    let (dst, qsrc, qsport, qdst, qdport) = read_out(&out, v6);
                    assert_eq!(&out[..6], &dmac, "{what}: to the flow's backend's MAC");
                    if mode == ForwardMode::Dsr {
                        // Untouched: the backend holds the VIP.
                        assert_eq!(dst, spec.vip.ip(), "{what}");
                    } else {
                        assert_eq!(dst, fwd.dst, "{what}: addressed to the backend");
                    }
                    assert_eq!(
                        (qsrc, qsport, qdst, qdport),
                        (backend_addr, backend_port, peer, peer_port),
                        "{what}: the quote is what the backend sent"
                    );

                    // A flow nobody opened: passed untouched.
                    let other = too_big(c0_mac, v6, spec.vip.ip(), client(v6), 41_234, 1000);
                    let (v, out) = run(dp.program().unwrap(), c0, &other).unwrap();
                    assert_eq!(v, XDP_PASS, "{what}");
                    assert_eq!(out, other, "{what}: changed");
                    assert_eq!(reason(&dp, Reason::IcmpUnknownFlow), 1, "{what}");

                    // A quote cut before the ports: passed untouched.
                    let short = too_big(
                        c0_mac,
                        v6,
                        spec.vip.ip(),
                        client(v6),
                        40_000,
                        if v6 { 44 } else { 24 },
                    );
                    let (v, out) = run(dp.program().unwrap(), c0, &short).unwrap();
                    assert_eq!(v, XDP_PASS, "{what}");
                    assert_eq!(out, short, "{what}: changed");
                    assert_eq!(reason(&dp, Reason::IcmpPassed), 1, "{what}");
                }
            }
        })
        .unwrap();
}

#[test]
fn an_echo_request_to_a_vip_is_answered_and_one_to_another_address_passes() {
    let lab = Lab::new().unwrap();
    let (c0, c0_mac) = (lab.c0, lab.c0_mac);
    lab.ns
        .run(move || {
            for v6 in [false, true] {
                let spec = service(v6, Protocol::Tcp, ForwardMode::Nat, 100, 0);
                let (mut dp, _p) = setup_standalone(&spec);
                let ping = |to: IpAddr| {
                    let b = PacketBuilder::ethernet2(CLIENT_MAC, c0_mac);
                    let mut out = Vec::new();
                    match (client(v6), to) {
                        (IpAddr::V4(c), IpAddr::V4(t)) => b
                            .ipv4(c.octets(), t.octets(), 64)
                            .icmpv4_echo_request(7, 1)
                            .write(&mut out, b"ping payload")
                            .unwrap(),
                        (IpAddr::V6(c), IpAddr::V6(t)) => b
                            .ipv6(c.octets(), t.octets(), 64)
                            .icmpv6_echo_request(7, 1)
                            .write(&mut out, b"ping payload")
                            .unwrap(),
                        _ => unreachable!(),
                    }
                    out
                };
                let (v, out) = run(dp.program().unwrap(), c0, &ping(spec.vip.ip())).unwrap();
                // Out of the interface it came in on (a redirect to it).
                assert_eq!(v, XDP_REDIRECT, "v6={v6}");
                assert_eq!(&out[..6], &CLIENT_MAC, "v6={v6}: back to the sender");
                assert_eq!(&out[6..12], &c0_mac, "v6={v6}");
                let p = SlicedPacket::from_ethernet(&out).unwrap();
                match (&p.net, &p.transport) {
                    (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Icmpv4(icmp))) => {
                        let h = ip.header().to_header();
                        assert_eq!(h.header_checksum, h.calc_header_checksum());
                        assert_eq!(IpAddr::from(h.source), spec.vip.ip());
                        assert_eq!(IpAddr::from(h.destination), client(v6));
                        let ih = icmp.header();
                        assert_eq!(ih.checksum, ih.icmp_type.calc_checksum(icmp.payload()));
                        assert!(matches!(ih.icmp_type, Icmpv4Type::EchoReply(e) if e.id == 7 && e.seq == 1));
                        assert_eq!(icmp.payload(), b"ping payload");
                    }
                    (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(icmp))) => {
                        let h = ip.header().to_header();
                        assert_eq!(IpAddr::from(h.source), spec.vip.ip());
                        assert_eq!(IpAddr::from(h.destination), client(v6));
                        let ih = icmp.header();
                        assert_eq!(
                            ih.checksum,
                            ih.icmp_type
                                .calc_checksum(h.source, h.destination, icmp.payload())
                                .unwrap()
                        );
                        assert!(matches!(ih.icmp_type, Icmpv6Type::EchoReply(e) if e.id == 7 && e.seq == 1));
                    }
                    other => panic!("v6={v6}: {other:?}"),
                }
                assert_eq!(reason(&dp, Reason::IcmpEchoReply), 1);
                // Not a VIP: the kernel's to answer (or not).
                let other: IpAddr = if v6 {
                    "2001:2:ff::99".parse().unwrap()
                } else {
                    "198.18.10.99".parse().unwrap()
                };
                let f = ping(other);
                let (v, out) = run(dp.program().unwrap(), c0, &f).unwrap();
                assert_eq!((v, out), (XDP_PASS, f), "v6={v6}");
            }
        })
        .unwrap();
}
