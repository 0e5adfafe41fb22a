//! Frames that are not ours or not well-formed: passed untouched or dropped, always counted.

use super::*;

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
