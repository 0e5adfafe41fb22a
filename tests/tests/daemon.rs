//! The daemon and CLI with real traffic: flips under load, kill -9 and
//! restart, metrics, and bad input that changes nothing.

use std::{net::SocketAddr, time::Duration};

use switch_tests::{
    daemon::Daemon,
    lab::Lab,
    traffic::{Load, Stream, line_servers},
};

fn vip() -> SocketAddr {
    "198.18.10.10:80".parse().unwrap()
}

fn servers(lab: &Lab) {
    line_servers(lab, (1..=4).map(|i| Lab::backend(false, i, 8080)).collect());
}

fn ask(lab: &Lab, mut s: Stream) -> (String, Stream) {
    lab.cli.run(move || (s.ask(), s)).unwrap()
}

#[test]
fn kill_9_and_restart_under_load_breaks_nothing() {
    let lab = Lab::new().unwrap();
    servers(&lab);
    let mut d = Daemon::start(&lab, "kill9", &service()).unwrap();
    // The API socket is 0660; the hash seed was made at random and persisted.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&d.api).unwrap().permissions().mode() & 0o777,
        0o660
    );
    let seed = |d: &Daemon| -> u64 {
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.dir.join("state/state.json")).unwrap())
                .unwrap();
        state["programmer"]["seed"].as_u64().unwrap()
    };
    let seed_before = seed(&d);
    let stream = lab.cli.run(|| Stream::open(vip())).unwrap();
    let (backend, stream) = ask(&lab, stream);
    assert!(
        backend == "198.18.1.11:8080" || backend == "198.18.1.12:8080",
        "{backend}"
    );

    let load = Load::start(&lab.cli, vip());
    std::thread::sleep(Duration::from_millis(300));
    d.kill9();
    std::thread::sleep(Duration::from_millis(300));
    // With no daemon at all, forwarding goes on.
    let (b, stream) = ask(&lab, stream);
    assert_eq!(b, backend, "stream moved while the daemon was dead");

    d.spawn().unwrap();
    assert_eq!(
        seed(&d),
        seed_before,
        "a restart keeps the deployment's seed"
    );
    let status = d.ok(&["status", "--json"]).unwrap();
    assert!(
        status.contains("\"blue\"") && status.contains("198.18.1.11:8080"),
        "{status}"
    );
    // After the restart the daemon can still steer: flip to green.
    d.ok(&["flip", "web", "--to", "green"]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (b, _stream) = ask(&lab, stream);
    assert_eq!(
        b, backend,
        "established stream moved by the flip after restart"
    );
    let fresh = lab.cli.run(|| Stream::open(vip()).ask()).unwrap();
    assert!(
        fresh == "198.18.1.13:8080" || fresh == "198.18.1.14:8080",
        "new connection after flip went to {fresh}"
    );

    let (ok, failed, _) = load.finish();
    eprintln!("connections during kill -9, restart and flip: {ok} ok, {failed} failed");
    assert!(ok > 50, "load generator made too few connections: {ok}");
    assert_eq!(failed, 0);
}

#[test]
fn fifty_flips_under_load_fail_no_connection() {
    let lab = Lab::new().unwrap();
    servers(&lab);
    let d = Daemon::start(&lab, "flips", &service()).unwrap();
    // A long-lived stream opened before the first flip.
    let stream = lab.cli.run(|| Stream::open(vip())).unwrap();
    let (first, mut stream) = ask(&lab, stream);
    let load = Load::start(&lab.cli, vip());
    for i in 0..50 {
        let to = if i % 2 == 0 { "green" } else { "blue" };
        d.ok(&["flip", "web", "--to", to]).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        if i % 10 == 9 {
            let (b, s) = ask(&lab, stream);
            stream = s;
            assert_eq!(b, first, "the long-lived stream moved after flip {i}");
        }
    }
    // Status shows live rates while the load runs.
    let st = d.status("web").unwrap();
    let rate: f64 = st["pools"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["backends"].as_array().unwrap().clone())
        .map(|b| b["new_flows_per_s"].as_f64().unwrap())
        .sum();
    assert!(rate > 10.0, "new flows per second under load: {rate}");
    let (ok, failed, answers) = load.finish();
    eprintln!("connections during 50 flips: {ok} ok, {failed} failed");
    eprintln!("{}", d.ok(&["status"]).unwrap());
    assert!(ok > 100, "load generator made too few connections: {ok}");
    assert_eq!(failed, 0);
    let green = answers
        .iter()
        .filter(|a| a.ends_with(".13:8080") || a.ends_with(".14:8080"))
        .count();
    assert!(
        green > 0 && green < answers.len(),
        "both pools served during the flips"
    );
}

/// Once serving, no thread of the daemon holds more than CAP_BPF,
/// CAP_NET_ADMIN and CAP_PERFMON (capabilities are per thread: one started
/// before the drop would keep them all).
#[test]
fn every_thread_keeps_only_the_kept_capabilities() {
    let lab = Lab::new().unwrap();
    servers(&lab);
    let d = Daemon::start(&lab, "caps", &service()).unwrap();
    // Traffic and a command, so worker threads exist too.
    lab.cli.run(|| Stream::open(vip()).ask()).unwrap();
    d.ok(&["status"]).unwrap();
    let kept = switch_user::privileges::kept_mask();
    let threads = d.thread_caps().unwrap();
    assert!(threads.len() >= 3, "{threads:?}");
    for (name, eff, prm) in &threads {
        assert_eq!(eff & !kept, 0, "thread {name} keeps CapEff {eff:#x}");
        assert_eq!(prm & !kept, 0, "thread {name} keeps CapPrm {prm:#x}");
    }
    assert!(
        threads.iter().any(|(n, _, _)| n == "clock"),
        "the clock thread runs: {threads:?}"
    );
    drop(d);
}

#[test]
fn metrics_are_served_read_only() {
    let lab = Lab::new().unwrap();
    servers(&lab);
    let d =
        Daemon::start_with(&lab, "metrics", "metrics = \"127.0.0.1:9560\"", &service()).unwrap();
    for _ in 0..5 {
        lab.cli.run(|| Stream::open(vip()).ask()).unwrap();
    }
    let page = lab
        .sw
        .exec("curl -sf http://127.0.0.1:9560/metrics")
        .unwrap();
    for want in [
        "switch_packets_total{reason=\"forwarded\"}",
        "switch_service_new_flows_total{service=\"web\"} 5",
        "switch_pool_weight{service=\"web\",pool=\"blue\"} 100",
        "switch_backend_new_flows_total{service=\"web\",pool=\"blue\",backend=\"198.18.1.11:8080\"}",
        "switch_backend_healthy{",
        "switch_last_change_timestamp_seconds{service=\"web\"}",
    ] {
        assert!(page.contains(want), "metrics lack {want}:\n{page}");
    }
    let post = lab
        .sw
        .exec("curl -s -o /dev/null -w '%{http_code}' -X POST http://127.0.0.1:9560/metrics")
        .unwrap();
    assert_eq!(post.trim(), "405");
    drop(d);
}

#[test]
fn bad_cli_input_is_refused_and_changes_nothing() {
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, "badinput", &service()).unwrap();
    let before = d.ok(&["status", "--json"]).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["weights", "nosuch", "blue=1"], "no service named"),
        (&["weights", "web", "purple=5"], "no pool \"purple\""),
        (&["weights", "web", "blue=lots"], "not a whole number"),
        (&["weights", "web", "blue=-1"], "not a whole number"),
        (&["weights", "web", "blue=0", "green=0"], "weight 0"),
        (&["weights", "web", "blue=2000000"], "above the maximum"),
        (&["flip", "web", "--to", "purple"], "no pool \"purple\""),
        (
            &["canary", "web", "--to", "green", "--steps", "50,5"],
            "rising",
        ),
        (
            &["canary", "web", "--to", "green", "--interval", "soon"],
            "not a duration",
        ),
        (
            &[
                "rolling",
                "web",
                "--pool",
                "blue",
                "--replace",
                "198.18.9.9:80=198.18.9.8:80",
            ],
            "not in pool",
        ),
        (&["pause", "web"], "no running canary"),
        (&["rollback", "web"], "no flip or canary"),
        (
            &["backend", "add", "web", "blue", "198.18.1.11:8080"],
            "already in pool",
        ),
        (
            &["backend", "drain", "web", "blue", "198.18.9.9:8080"],
            "not in pool",
        ),
        (
            &["backend", "add", "web", "blue", "[2001:2::9]:8080"],
            "family",
        ),
        (&["history", "nosuch"], "no service named"),
        // Ceilings and shapes (model::limits).
        (
            &[
                "shadow", "web", "--to", "green", "--sample", "10%", "--for", "400days",
            ],
            "above the ceiling",
        ),
        (
            &["canary", "web", "--to", "green", "--interval", "60days"],
            "above the ceiling",
        ),
        (&["weights", "web\r\nx", "blue=1"], "letters, digits"),
    ];
    for (args, want) in cases {
        let (ok, out) = d.cli(args).unwrap();
        assert!(!ok, "switch {} should fail", args.join(" "));
        // One line says it all (clap adds a "--help" hint below its own).
        assert!(
            out.lines().next().unwrap_or("").contains(want),
            "switch {}: first line of {out:?} should say {want:?}",
            args.join(" ")
        );
    }
    assert_eq!(
        d.ok(&["status", "--json"]).unwrap(),
        before,
        "a refused command changed state"
    );
    // Two strategies at once are refused, and the first keeps running.
    d.ok(&[
        "canary",
        "web",
        "--to",
        "green",
        "--steps",
        "10,100",
        "--interval",
        "60s",
    ])
    .unwrap();
    let (ok, out) = d.cli(&["flip", "web", "--to", "green"]).unwrap();
    assert!(
        !ok && out.contains("already has a running strategy"),
        "{out}"
    );

    // A daemon that is not there: one line, non-zero exit.
    let out = std::process::Command::new(switch_tests::daemon::switch_bin().unwrap())
        .args(["--api", "/nonexistent/switch.sock", "status"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot reach the switch daemon") && err.trim().lines().count() == 1,
        "{err}"
    );
}

#[test]
fn stopping_the_daemon_keeps_forwarding_and_detach_stops_it() {
    let lab = Lab::new().unwrap();
    servers(&lab);
    let mut d = Daemon::start(&lab, "detach", &service()).unwrap();
    assert!(
        lab.cli
            .run(|| switch_tests::traffic::ask_once(vip(), None))
            .unwrap()
            .is_ok()
    );
    d.terminate().unwrap();
    for _ in 0..20 {
        let r = lab
            .cli
            .run(|| switch_tests::traffic::ask_once(vip(), None))
            .unwrap();
        assert!(r.is_ok(), "forwarding stopped with the daemon: {r:?}");
    }
    // Detach while a daemon runs: the links go even though it holds them.
    d.spawn().unwrap();
    let out = std::process::Command::new(switch_tests::daemon::switch_bin().unwrap())
        .arg("detach")
        .arg("--pin-dir")
        .arg(&d.pins)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("link_sw0") && text.contains("link_sw1") && text.contains("FLOWS"),
        "{text}"
    );
    assert!(!d.pins.exists());
    let r = lab
        .cli
        .run(|| std::net::TcpStream::connect_timeout(&vip(), Duration::from_millis(700)))
        .unwrap();
    assert!(r.is_err(), "still forwarding after detach");
}

#[test]
fn the_shipped_systemd_unit_is_well_formed() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/switch.service"
    ))
    .unwrap();
    for want in [
        "ExecStart=/usr/local/bin/switch daemon",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_BPF",
        "RuntimeDirectoryMode=0755",
        "LimitNOFILE=",
        "KillMode=process",
    ] {
        assert!(unit.contains(want), "unit lacks {want}");
    }
    // systemd-analyze, where present, checks it for real.
    if let Ok(out) = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/switch.service"
        ))
        .output()
    {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("Unknown key") && !err.contains("Invalid"),
            "{err}"
        );
    }
}

fn service() -> String {
    switch_tests::service::blue_green(8080, "")
}
