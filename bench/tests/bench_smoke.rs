//! The benchmark harness runs (a few thousand runs per path) so it cannot
//! rot, and the forwarding-rate lab delivers through every forwarder on
//! every send path this kernel accepts. Timings are printed, never asserted.

use switch_tests::rate::{Choice, Forwarder, Load, RateLab, SendPath, measure, sink};

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
            "--startup-sizes",
            "200",
            "--startup-runs",
            "1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert!(
        !stdout.contains("This part failed"),
        "a part of the report failed"
    );
    assert!(
        stdout.contains("`kill -9` of the leader → another host leads"),
        "fleet table"
    );
    assert!(
        stdout.contains("Daemon start-up to a ready API") && stdout.contains("| 200 |"),
        "start-up table"
    );
    for row in [
        "switch (nat, 4 backends)",
        "generator alone (into a sink, no forwarder)",
        "| XDP loop (devmap broadcast) |",
        "| AF_PACKET sendmmsg |",
    ] {
        assert!(stdout.contains(row), "forwarding-rate table: no row {row}");
    }
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

/// Only live frames may be refused: a hardened kernel says EPERM to
/// `BPF_F_TEST_XDP_LIVE_FRAMES`. Every other path needs nothing beyond what
/// `switch` itself needs (XDP attach, AF_PACKET).
fn may_be_refused(path: SendPath, e: &anyhow::Error) -> bool {
    let e = format!("{e:#}");
    path == SendPath::LiveFrames
        && (e.contains("Operation not permitted") || e.contains("not supported"))
}

#[test]
fn forwarding_rate_harness_delivers_through_every_forwarder_on_every_send_path() {
    let lab = RateLab::new().unwrap();
    let mut worked = Vec::new();
    for path in SendPath::ALL {
        for f in [
            Forwarder::Alone,
            Forwarder::Redirect,
            Forwarder::Switch,
            Forwarder::Nftables,
        ] {
            // A rate every path and forwarder keeps up with, so what is sent
            // arrives: 20,000 frames at 200,000 a second.
            let mut load = Load::new(100, 64, false, false, 20_000, 200_000);
            load.path = Choice::Only(path);
            let r = match measure(&lab, f, &load) {
                Ok(r) => r,
                Err(e) if may_be_refused(path, &e) => {
                    eprintln!("{path}: refused by this kernel ({e:#}), skipped");
                    break;
                }
                Err(e) => panic!("{path} through {}: {e:#}", f.name()),
            };
            eprintln!(
                "{path}, {}: offered {:.0} pps, delivered {:.0} pps",
                f.name(),
                r.offered_pps,
                r.delivered_pps
            );
            assert_eq!(r.path, path);
            assert!(
                r.delivered_pps >= 0.95 * r.offered_pps && r.delivered_pps <= 1.01 * r.offered_pps,
                "{path} through {}: offered {:.0} pps, delivered {:.0} pps",
                f.name(),
                r.offered_pps,
                r.delivered_pps
            );
            worked.push((path, f));
        }
    }
    assert!(worked.len() >= 12, "paths that worked: {worked:?}");
}

fn generate_cmd(lab: &RateLab, extra: &[&str], env: &[(&str, &str)]) -> (bool, String) {
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
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{err}");
    (out.status.success(), err)
}

#[test]
fn the_generator_command_sends_to_a_given_interface() {
    // `switch-bench generate` in the generator's namespace, counted on the
    // switch's side of the link.
    let lab = RateLab::new().unwrap();
    let count = sink(&lab.sw, "s0").unwrap();
    let (ok, err) = generate_cmd(&lab, &[], &[]);
    let arrived = count.finish().unwrap();
    assert!(ok, "{err}");
    assert!(err.contains("sent 50000 frames"), "{err}");
    assert!(err.contains(" by "), "which path: {err}");
    assert!(arrived >= 47_500, "{arrived} of 50000 arrived");
}

#[test]
fn a_refused_send_path_is_named_with_its_fallback() {
    let lab = RateLab::new().unwrap();
    // As on a kernel that refuses live frames: the next path takes over.
    let count = sink(&lab.sw, "s0").unwrap();
    let (ok, err) = generate_cmd(&lab, &[], &[("SWITCH_GEN_REFUSE", "live-frames")]);
    let arrived = count.finish().unwrap();
    assert!(ok, "{err}");
    assert!(
        err.contains("generator: XDP live frames refused (")
            && err.contains("); falling back to XDP loop (devmap broadcast)"),
        "{err}"
    );
    assert!(
        err.contains("sent 50000 frames") && err.contains("by XDP loop (devmap broadcast)"),
        "{err}"
    );
    assert!(arrived >= 47_500, "{arrived} of 50000 arrived");
    // A path asked for by name is not replaced: one sentence, a failure.
    let (ok, err) = generate_cmd(
        &lab,
        &["--send-path", "xdp-loop"],
        &[("SWITCH_GEN_REFUSE", "xdp-loop")],
    );
    assert!(!ok);
    assert!(
        err.contains(
            "generator: XDP loop (devmap broadcast) refused (refused by SWITCH_GEN_REFUSE)"
        ),
        "{err}"
    );
    let (ok, err) = generate_cmd(&lab, &["--send-path", "carrier-pigeon"], &[]);
    assert!(!ok);
    assert!(err.contains("is not a send path"), "{err}");
}
