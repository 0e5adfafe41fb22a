//! The benchmark harness runs (a few thousand runs per path) so it cannot
//! rot. Timings are printed, never asserted.

#[test]
fn bench_harness_runs_every_path() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switch-bench"))
        .args([
            "--runs",
            "2000",
            "--table-sizes",
            "1000",
            "--rate-packets",
            "20000",
            "--rate-runs",
            "1",
            "--http-secs",
            "1",
            "--health-backends",
            "20",
            "--health-secs",
            "1",
            "--table-max",
            "100",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert!(
        stdout.contains("switch (nat, 4 backends)"),
        "forwarding-rate table"
    );
    for path in [
        "floor",
        "minimal",
        "new TCP flow, IPv4",
        "established flow, IPv6",
        "reply",
        "1000 in table",
    ] {
        assert!(stdout.contains(path), "missing row {path}");
    }
}

#[test]
fn forwarding_rate_harness_delivers_through_every_forwarder() {
    use switch_tests::rate::{Forwarder, Load, RateLab, measure};
    let lab = RateLab::new().unwrap();
    for f in [Forwarder::Redirect, Forwarder::Switch, Forwarder::Nftables] {
        let load = Load {
            flows: 100,
            size: 64,
            v6: false,
            udp: false,
            packets: 20_000,
            pps: 0,
        };
        let r = measure(&lab, f, &load).unwrap();
        eprintln!(
            "{}: offered {:.0} pps, delivered {:.0} pps",
            f.name(),
            r.offered_pps,
            r.delivered_pps
        );
        assert!(r.delivered_pps > 0.0, "{} delivered nothing", f.name());
    }
}
