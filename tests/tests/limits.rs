//! The daemon under scale, faults and bad callers: thousands of backends
//! at start-up, huge and idle API clients, a second daemon on the same
//! state.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use switch_tests::{daemon::Daemon, lab::Lab, traffic::ask_once};

/// `n` backend addresses from 198.18.64.0 on, all held by the backend host
/// (on `lo`) and routed to it by the switch host in four /20s, one per lab
/// backend address, so they resolve through four next hops.
fn many_backends(lab: &Lab, n: u32) -> Vec<SocketAddr> {
    let base = u32::from(std::net::Ipv4Addr::new(198, 18, 64, 0));
    let addrs: Vec<SocketAddr> = (0..n)
        .map(|i| SocketAddr::new(std::net::Ipv4Addr::from(base + i).into(), 8080))
        .collect();
    let script: String = addrs
        .iter()
        .map(|a| format!("addr add {}/32 dev lo\n", a.ip()))
        .collect();
    let file = std::env::temp_dir().join(format!("switch-limits-{}.batch", std::process::id()));
    std::fs::write(&file, script).unwrap();
    lab.be
        .exec(&format!("ip -batch {}", file.display()))
        .unwrap();
    let _ = std::fs::remove_file(&file);
    for (i, gw) in (11..=14).enumerate() {
        lab.sw
            .exec(&format!(
                "ip route add 198.18.{}.0/20 via 198.18.1.{gw}",
                64 + 16 * i
            ))
            .unwrap();
    }
    addrs
}

/// One line server on every address of the backend host.
fn any_address_server(lab: &Lab) {
    switch_tests::traffic::line_servers(lab, vec!["0.0.0.0:8080".parse().unwrap()]);
}

#[test]
fn ten_thousand_backend_addresses_are_ready_within_ten_seconds() {
    let lab = Lab::new().unwrap();
    let addrs = many_backends(&lab, 10_000);
    any_address_server(&lab);
    let list = |a: &[SocketAddr]| {
        a.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let service = format!(
        r#"
[[service]]
name = "big"
vip = "198.18.10.10:80"
protocol = "tcp"
pools = [
  {{ name = "blue",  weight = 100, backends = [{}] }},
  {{ name = "green", weight = 0,   backends = [{}] }},
]
"#,
        list(&addrs[..5_000]),
        list(&addrs[5_000..])
    );
    let t = Instant::now();
    let d = Daemon::start(&lab, "big", &service).unwrap();
    // Ready: the API answers with the whole service.
    let st = d.status("big").unwrap();
    let ready = t.elapsed();
    eprintln!("10,000 backend addresses: ready in {ready:?}");
    assert!(ready < Duration::from_secs(10), "ready after {ready:?}");
    assert_eq!(
        st["pools"][0]["backends"].as_array().map(|b| b.len()),
        Some(5_000),
        "{st}"
    );
    // Neighbours resolved: new connections through the VIP are answered
    // from their first packet, by backends all over the range.
    let vip: SocketAddr = "198.18.10.10:80".parse().unwrap();
    let answers = lab
        .cli
        .run(move || (0..20).map(|_| ask_once(vip, None)).collect::<Vec<_>>())
        .unwrap();
    let ok = answers.iter().filter(|a| a.is_ok()).count();
    assert_eq!(ok, 20, "{answers:?}");
    // The switch resolved the next hops of the three /20s in use.
    let neigh = lab.sw.exec("ip neigh show dev sw1").unwrap();
    for gw in 11..=13 {
        assert!(
            neigh.contains(&format!("198.18.1.{gw} ")) && !neigh.contains("FAILED"),
            "{neigh}"
        );
    }
}
