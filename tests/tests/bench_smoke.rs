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
            "--http-runs",
            "1",
            "--health-backends",
            "20",
            "--health-secs",
            "1",
            "--table-max",
            "100",
            "--fleet-tries",
            "2",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert!(
        stdout.contains("`kill -9` of the leader → another host leads"),
        "fleet table"
    );
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
        let load = Load::new(100, 64, false, false, 20_000, 0);
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

#[test]
fn the_generator_command_sends_to_a_given_interface() {
    // `switch-bench generate` in the generator's namespace, through the rate
    // lab's ceiling forwarder, counted on the far side.
    use switch_tests::rate::RateLab;
    let lab = RateLab::new().unwrap();
    let s0_mac = lab.sw.exec("cat /sys/class/net/s0/address").unwrap();
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.generator.name,
            env!("CARGO_BIN_EXE_switch-bench"),
            "generate",
            "--dev",
            "g0",
            "--dst-mac",
        ])
        .arg(s0_mac.trim())
        .args([
            "--to",
            "198.18.10.10:80",
            "--flows",
            "1000",
            "--packets",
            "50000",
            "--udp",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("sent 50000 frames"), "{err}");
}
