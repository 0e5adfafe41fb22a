//! Path MTU through the switch: a router with a smaller MTU towards the
//! client answers the backends' too-large segments with ICMP addressed to
//! the VIP; the switch hands it to the backend, which sends smaller.

use switch_tests::{
    daemon::Daemon,
    path_lab::{PathLab, bulk_servers},
};

const SIZE: usize = 300_000;

fn services() -> String {
    let mut s = String::new();
    for (v6, vip, port_b, mode, source) in [
        (false, "198.18.10.10:80", 8080, "nat", None),
        (false, "198.18.10.11:80", 80, "dsr", None),
        (
            false,
            "198.18.10.12:80",
            8080,
            "fullnat",
            Some("198.18.1.1"),
        ),
        (true, "[2001:2:ff::10]:80", 8080, "nat", None),
        (true, "[2001:2:ff::11]:80", 80, "dsr", None),
        (
            true,
            "[2001:2:ff::12]:80",
            8080,
            "fullnat",
            Some("2001:2:1::1"),
        ),
    ] {
        let backend = if v6 {
            format!("[2001:2:1::b]:{port_b}")
        } else {
            format!("198.18.1.11:{port_b}")
        };
        s.push_str(&format!(
            "[[service]]\nname = \"{mode}{}\"\nvip = \"{vip}\"\nprotocol = \"tcp\"\nmode = \"{mode}\"\n{}pools = [ {{ name = \"blue\", weight = 100, backends = [\"{backend}\"] }} ]\n\n",
            if v6 { "6" } else { "4" },
            source
                .map(|a| format!("source = \"{a}\"\n"))
                .unwrap_or_default()
        ));
    }
    s
}

#[test]
fn downloads_complete_through_a_smaller_mtu_on_the_way_in_every_mode() {
    // PMTU_MTU=1500: the same lab without the smaller link (to check the lab).
    let mtu = std::env::var("PMTU_MTU")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(1300);
    let lab = PathLab::new(mtu).unwrap();
    bulk_servers(&lab.be, &[80, 8080], SIZE).unwrap();
    let d = Daemon::start_in(&lab.sw, "pmtu", &["sw0", "sw1"], "", &services()).unwrap();
    for (name, url) in [
        ("nat4", "http://198.18.10.10/"),
        ("dsr4", "http://198.18.10.11/"),
        ("fullnat4", "http://198.18.10.12/"),
        ("nat6", "http://[2001:2:ff::10]/"),
        ("dsr6", "http://[2001:2:ff::11]/"),
        ("fullnat6", "http://[2001:2:ff::12]/"),
    ] {
        lab.flush_backend_pmtu().unwrap();
        let got = lab
            .cli
            .exec(&format!(
                "curl -s -o /dev/null -w %{{size_download}} --max-time 8 {url} || true"
            ))
            .unwrap();
        assert_eq!(
            got.trim(),
            SIZE.to_string(),
            "{name}: the download stalled (path-MTU black hole)"
        );
    }
    // VIPs answer ping, in every mode; other addresses do not.
    for vip in [
        "198.18.10.10",
        "198.18.10.11",
        "198.18.10.12",
        "2001:2:ff::10",
        "2001:2:ff::11",
        "2001:2:ff::12",
    ] {
        lab.cli
            .exec(&format!("ping -c 2 -i 0.2 -W 2 {vip} >/dev/null"))
            .unwrap_or_else(|e| {
                panic!(
                    "ping {vip}: {e:#}\n{}",
                    d.ok(&["status"]).unwrap_or_default()
                );
            });
    }
    assert!(
        lab.cli
            .exec("ping -c 1 -W 1 198.18.10.99 >/dev/null")
            .is_err(),
        "an address that is no VIP answered"
    );
    // The router's reports reached the backends through the switch (one
    // at least per download: the first too-large segment).
    let st = d.ok(&["status"]).unwrap();
    let sent: u64 = st
        .split_whitespace()
        .find_map(|w| w.strip_prefix("icmp_to_backend="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if mtu < 1500 {
        assert!(sent >= 6, "{sent} ICMP errors sent on to backends:\n{st}");
    }
}
