//! Real TCP and UDP through the loaded program, in driver mode on veth,
//! for each forwarding mode and both address families.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use switch_common::Reason;
use switch_tests::lab::Lab;
use switch_user::{
    config::{BackendConfig, DaemonConfig, ForwardMode, PoolConfig, Protocol, ServiceConfig},
    dataplane::{Capacity, Dataplane},
    programmer::Programmer,
};

/// Servers on every backend address that answer with the address they were
/// reached on. Stop by dropping the returned flag's owner.
fn start_servers(lab: &Lab, port: u16, stop: Arc<AtomicBool>) {
    let s = stop.clone();
    lab.be
        .run(move || {
            let tcp = TcpListener::bind(("::", port)).unwrap();
            tcp.set_nonblocking(true).unwrap();
            // One UDP socket per address, so each answers from the address
            // it was reached on (a backend's own for nat, the VIP for dsr).
            let mut addrs: Vec<SocketAddr> = (1..=4)
                .flat_map(|i| [Lab::backend(false, i, port), Lab::backend(true, i, port)])
                .collect();
            addrs.extend([Lab::vip(false, port), Lab::vip(true, port)]);
            let udp: Vec<UdpSocket> = addrs.iter().map(|a| UdpSocket::bind(a).unwrap()).collect();
            for u in &udp {
                u.set_nonblocking(true).unwrap();
            }
            std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((mut c, peer)) => {
                            let local = c.local_addr().unwrap();
                            let mut buf = [0u8; 64];
                            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                            let _ = c.read(&mut buf);
                            let _ = c.write_all(
                                format!("{} {}", canon(local), canon(peer).ip()).as_bytes(),
                            );
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                    let mut buf = [0u8; 64];
                    for u in &udp {
                        if let Ok((_, peer)) = u.recv_from(&mut buf) {
                            let _ = u.send_to(b"udp", peer);
                        }
                    }
                }
            });
        })
        .unwrap();
}

fn canon(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        _ => a,
    }
}

fn spec(v6: bool, proto: Protocol, mode: ForwardMode) -> ServiceConfig {
    ServiceConfig {
        name: "web".into(),
        vip: Lab::vip(v6, 80),
        protocol: proto,
        mode,
        affinity: Default::default(),
        source: None,
        health: None,
        pools: vec![PoolConfig {
            name: "blue".into(),
            weight: 100,
            backends: (1..=4)
                .map(|i| BackendConfig::Addr(Lab::backend(v6, i, 80)))
                .collect(),
        }],
        cohorts: vec![],
    }
}

#[test]
fn tcp_and_udp_through_xdp_in_every_mode_and_family() {
    let lab = Lab::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    start_servers(&lab, 80, stop.clone());
    for mode in [ForwardMode::Nat, ForwardMode::Dsr, ForwardMode::Fullnat] {
        for v6 in [false, true] {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
            let (stats_tx, stats_rx) = std::sync::mpsc::channel();
            let sw_path = format!("/run/netns/{}", lab.sw.name);
            let source: std::net::IpAddr = if v6 {
                "2001:2:1::1".parse().unwrap()
            } else {
                "198.18.1.1".parse().unwrap()
            };
            let client: std::net::IpAddr = if v6 {
                "2001:2::2".parse().unwrap()
            } else {
                "198.18.0.2".parse().unwrap()
            };
            let mut tcp_spec = spec(v6, Protocol::Tcp, mode);
            if mode == ForwardMode::Fullnat {
                tcp_spec.source = Some(source);
            }
            let mut udp_spec = tcp_spec.clone();
            udp_spec.protocol = Protocol::Udp;
            udp_spec.name = "dns".into();
            // The switch host: load, attach in driver mode, program.
            let sw = std::thread::spawn(move || {
                switch_tests::enter(&sw_path).unwrap();
                let mut dp = Dataplane::load(None, Capacity::small()).unwrap();
                let mut p = Programmer::new(7, Capacity::small());
                p.init(&mut dp, &DaemonConfig::default()).unwrap();
                p.apply(&mut dp, &tcp_spec, &BTreeSet::new()).unwrap();
                p.apply(&mut dp, &udp_spec, &BTreeSet::new()).unwrap();
                for dev in ["sw0", "sw1"] {
                    let m = dp.attach(dev).unwrap();
                    assert_eq!(format!("{m:?}"), "Driver", "{dev} must run native XDP");
                }
                ready_tx.send(()).unwrap();
                rx.recv().unwrap();
                let reasons: BTreeMap<&'static str, u64> = dp
                    .reasons()
                    .unwrap()
                    .into_iter()
                    .map(|(r, n)| (r.name(), n))
                    .collect();
                stats_tx.send(reasons).unwrap();
                // Dropping `dp` detaches (nothing is pinned).
            });
            ready_rx.recv().unwrap();

            let vip = Lab::vip(v6, 80);
            let answers = lab
                .cli
                .run(move || {
                    let mut seen = BTreeMap::new();
                    for _ in 0..40 {
                        let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(3))
                            .expect("tcp connect to VIP");
                        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                        c.write_all(b"hi").unwrap();
                        let mut s = String::new();
                        c.read_to_string(&mut s).expect("tcp answer");
                        *seen.entry(s).or_insert(0) += 1;
                    }
                    let u = UdpSocket::bind(if vip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
                        .unwrap();
                    u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut udp_ok = 0;
                    for _ in 0..10 {
                        u.send_to(b"q", vip).unwrap();
                        let mut buf = [0u8; 16];
                        if let Ok((n, from)) = u.recv_from(&mut buf) {
                            assert_eq!(from, vip, "UDP answer must come from the VIP");
                            assert_eq!(&buf[..n], b"udp");
                            udp_ok += 1;
                        }
                    }
                    (seen, udp_ok)
                })
                .unwrap();
            tx.send(()).unwrap();
            let reasons = stats_rx.recv().unwrap();
            sw.join().unwrap();
            let (seen, udp_ok) = answers;
            eprintln!(
                "{mode:?} v6={v6}: tcp answers {seen:?}, udp {udp_ok}/10, reasons {reasons:?}"
            );
            assert_eq!(seen.values().sum::<i32>(), 40);
            if mode != ForwardMode::Dsr {
                // Several backends answered, each on its own address; nat
                // keeps the client's address, fullnat shows the switch's.
                assert!(
                    seen.len() >= 2,
                    "connections spread over backends: {seen:?}"
                );
                let want_peer = if mode == ForwardMode::Nat {
                    client
                } else {
                    source
                };
                for k in seen.keys() {
                    let (local, peer) = k.split_once(' ').unwrap();
                    let a: SocketAddr = local.parse().unwrap();
                    assert!(
                        (1..=4).any(|i| Lab::backend(v6, i, 80) == a),
                        "answer from {a}"
                    );
                    let peer: std::net::IpAddr = peer.parse().unwrap();
                    assert_eq!(peer, want_peer, "{mode:?}: source seen by the backend");
                }
                assert!(reasons["reply_forwarded"] > 0);
            } else {
                let (local, peer) = seen.keys().next().unwrap().split_once(' ').unwrap();
                assert_eq!(
                    local,
                    Lab::vip(v6, 80).to_string(),
                    "dsr backends answer as the VIP"
                );
                assert_eq!(peer.parse::<std::net::IpAddr>().unwrap(), client);
            }
            assert!(reasons[Reason::Forwarded.name()] > 0);
            assert!(udp_ok >= 9, "udp answers {udp_ok}/10");
        }
    }
    stop.store(true, Ordering::Relaxed);
}
