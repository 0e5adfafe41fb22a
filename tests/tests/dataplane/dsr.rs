//! Direct server return: only the Ethernet header changes.

use super::*;

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
