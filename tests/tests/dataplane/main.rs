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

mod dsr;
mod flow_table;
mod hostile;
mod icmp;
mod nat;
mod replies;
mod selection;

pub const XDP_DROP: u32 = 1;

pub const XDP_PASS: u32 = 2;

pub const XDP_REDIRECT: u32 = 4;

pub fn service(
    v6: bool,
    proto: Protocol,
    mode: ForwardMode,
    blue: u32,
    green: u32,
) -> ServiceConfig {
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

pub fn reason(dp: &Dataplane, r: Reason) -> u64 {
    dp.reasons()
        .unwrap()
        .into_iter()
        .find(|(x, _)| *x == r)
        .unwrap()
        .1
}

pub fn l4(proto: Protocol) -> L4 {
    match proto {
        Protocol::Tcp => L4::Tcp { flags: SYN },
        Protocol::Udp => L4::Udp,
    }
}

/// The lab's neighbour entry for a client (on c0), as the kernel learns it.
pub fn client_neighbour(addr: IpAddr, mac: &str) {
    switch_tests::sh(&format!(
        "ip neigh replace {addr} lladdr {mac} dev c0 nud permanent"
    ))
    .unwrap();
}

pub fn setup_standalone(spec: &ServiceConfig) -> (Dataplane, Programmer) {
    setup(spec, false)
}

/// `filters_open`: as the daemon starts (see `Programmer::filters_open`).
pub fn setup(spec: &ServiceConfig, filters_open: bool) -> (Dataplane, Programmer) {
    setup_with(spec, filters_open, Capacity::small())
}

/// The same with maps of capacity `cap`.
pub fn setup_with(
    spec: &ServiceConfig,
    filters_open: bool,
    cap: Capacity,
) -> (Dataplane, Programmer) {
    let mut dp = Dataplane::load(None, cap).expect("load");
    dp.add_device("c0").unwrap();
    dp.add_device("b0").unwrap();
    let mut p = Programmer::new(0x5eed, cap);
    p.filters_open = filters_open;
    p.init(&mut dp, &DaemonConfig::default()).unwrap();
    p.apply(&mut dp, spec, &BTreeSet::new()).unwrap();
    (dp, p)
}

/// Sends one TCP frame from 198.19.`a`.`b`:`port` to the VIP (port 80) on
/// c0; it must be forwarded, and the backend it went to is returned.
pub fn send_tcp(
    dp: &mut Dataplane,
    c0: u32,
    c0_mac: [u8; 6],
    a: u8,
    b: u8,
    port: u16,
    flags: u8,
) -> IpAddr {
    let src = IpAddr::V4(std::net::Ipv4Addr::new(198, 19, a, b));
    let f = frame(
        [2; 6],
        c0_mac,
        src,
        port,
        spec_vip(),
        80,
        L4::Tcp { flags },
        b"",
    );
    let (v, out) = run(dp.program().unwrap(), c0, &f).unwrap();
    assert_eq!(v, XDP_REDIRECT, "a flow was not forwarded");
    check(&out).unwrap().dst
}

pub fn spec_vip() -> IpAddr {
    vip(false, 80).ip()
}
