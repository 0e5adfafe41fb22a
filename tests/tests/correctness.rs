//! Defects found when the switch was tried as a new user would, each with
//! the real daemon and real traffic: replies only for our own flows, every
//! mode forwarding from its first packet (health checks or not) and after
//! the neighbour table is flushed, and removed backends that keep their
//! established connections.

use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use switch_tests::{
    daemon::Daemon,
    http,
    lab::Lab,
    traffic::{Stream, ask_once, line_servers},
};

fn svc(name: &str, vip: SocketAddr, mode: &str, extra: &str, backends: &[SocketAddr]) -> String {
    format!(
        r#"
[[service]]
name = "{name}"
vip = "{vip}"
protocol = "tcp"
mode = "{mode}"
{extra}
pools = [ {{ name = "blue", weight = 100, backends = [{}] }} ]
"#,
        backends
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A connection with a short connect timeout: it only succeeds when the
/// first SYN gets through (the retransmit comes after 1 s).
fn ask_first_try(to: SocketAddr) -> std::io::Result<String> {
    use std::io::{BufRead, BufReader, Write};
    let s = TcpStream::connect_timeout(&to, Duration::from_millis(900))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut w = s.try_clone()?;
    w.write_all(b"hi\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

#[test]
fn direct_connections_to_a_backend_through_the_switch_keep_working() {
    let lab = Lab::new().unwrap();
    let v4 = Lab::backend(false, 1, 8080);
    let v6 = Lab::backend(true, 1, 8080);
    line_servers(&lab, vec![v4, v6]);
    let config = svc("web", Lab::vip(false, 80), "nat", "", &[v4])
        + &svc("web6", Lab::vip(true, 80), "nat", "", &[v6]);
    let d = Daemon::start(&lab, "direct", &config).unwrap();
    let (vip4, vip6) = (Lab::vip(false, 80), Lab::vip(true, 80));
    let answers = lab
        .cli
        .run(move || {
            let mut out = vec![];
            for _ in 0..20 {
                // Through the VIP and straight to the same backend's own
                // address and port, interleaved.
                out.push(("vip4", ask_once(vip4, None)));
                out.push(("direct4", ask_once(v4, None)));
                out.push(("vip6", ask_once(vip6, None)));
                out.push(("direct6", ask_once(v6, None)));
            }
            out
        })
        .unwrap();
    for (what, a) in &answers {
        let a = a
            .as_ref()
            .unwrap_or_else(|e| panic!("{what} connection failed: {e}"));
        let want = if what.ends_with('4') { v4 } else { v6 };
        assert_eq!(a, &want.to_string(), "{what}");
    }
    let st = d.status("web").unwrap();
    assert_eq!(st["new_flows"], 20, "VIP connections counted: {st}");
}

/// Every mode and family, with and without health checks: the first
/// connection right after the daemon applied the service succeeds at its
/// first SYN, and after `ip neigh flush` on the switch host traffic is back
/// within a second.
#[test]
fn every_mode_forwards_from_the_first_packet_and_after_a_neighbour_flush() {
    let health =
        r#"health = { kind = "tcp", interval = "200ms", timeout = "100ms", rise = 1, fall = 2 }"#;
    for v6 in [false, true] {
        for mode in ["nat", "fullnat", "dsr"] {
            for with_health in [false, true] {
                let what = format!("{mode}, IPv6 {v6}, health checks: {with_health}");
                let lab = Lab::new().unwrap();
                let b = Lab::backend(v6, 1, if mode == "dsr" { 80 } else { 8080 });
                let vip = Lab::vip(v6, 80);
                let mut servers = vec![b];
                if mode == "dsr" {
                    // dsr backends hold the VIP and answer from it.
                    servers.push(vip);
                }
                line_servers(&lab, servers);
                let source = match (mode, v6) {
                    ("fullnat", false) => "source = \"198.18.1.1\"\n",
                    ("fullnat", true) => "source = \"2001:2:1::1\"\n",
                    _ => "",
                };
                let extra = format!("{source}{}", if with_health { health } else { "" });
                let d = Daemon::start(&lab, "first", &svc("web", vip, mode, &extra, &[b])).unwrap();
                let first = lab.cli.run(move || ask_first_try(vip)).unwrap();
                assert!(first.is_ok(), "{what}: first connection: {first:?}");

                lab.sw.exec("ip neigh flush all").unwrap();
                std::thread::sleep(Duration::from_millis(600));
                let after = lab
                    .cli
                    .run(move || (0..5).map(|_| ask_first_try(vip)).collect::<Vec<_>>())
                    .unwrap();
                assert!(
                    after.iter().all(|a| a.is_ok()),
                    "{what}: after a flush: {after:?}"
                );
                drop(d);
            }
        }
    }
}

/// A rolling replacement with a short drain timeout under keep-alive load
/// (wrk's connections never close by themselves) while the old backends
/// keep running: no request fails, the old backends linger with their
/// connections and are let go once those end.
#[test]
fn a_rolling_replacement_under_keep_alive_load_breaks_no_connection() {
    let lab = Lab::new().unwrap();
    let dir = tempdir("linger");
    // Connections that never close by themselves (nginx closes a keep-alive
    // connection after 1,000 requests by default).
    http::start_backends_with(
        &lab,
        &dir,
        "  keepalive_requests 100000000;\n  keepalive_timeout 300s;",
    )
    .unwrap();
    let old = [http::BACKENDS[0], http::BACKENDS[1]];
    let new = [http::BACKENDS[2], http::BACKENDS[3]];
    let config = format!(
        r#"
[[service]]
name = "web"
vip = "198.18.10.10:80"
protocol = "tcp"
pools = [ {{ name = "blue", weight = 100, backends = ["{}", "{}"] }} ]
"#,
        old[0], old[1]
    );
    let d = Daemon::start(&lab, "linger", &config).unwrap();
    let wrk = {
        let cli = lab.cli.name.clone();
        std::thread::spawn(move || {
            switch_tests::sh(&format!(
                "ip netns exec {cli} wrk -t2 -c16 -d8s http://198.18.10.10:80/"
            ))
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let pairs: Vec<String> = old
        .iter()
        .zip(new)
        .map(|(o, n)| format!("{o}={n}"))
        .collect();
    let mut args = vec![
        "rolling",
        "web",
        "--pool",
        "blue",
        "--drain-timeout",
        "500ms",
        "--min-healthy",
        "100ms",
        "--replace",
    ];
    args.extend(pairs.iter().map(|s| s.as_str()));
    d.ok(&args).unwrap();
    let st = d
        .wait_for("web", 6, |st| {
            st["phase"] == "succeeded" && st["lingering"].as_array().is_some_and(|l| l.len() == 2)
        })
        .unwrap();
    for l in st["lingering"].as_array().unwrap() {
        assert_eq!(l["state"], "lingering", "{l}");
        assert!(
            l["active_flows"].as_u64().unwrap_or(0) > 0,
            "a lingering backend shows its live flows: {l}"
        );
    }
    let out = wrk.join().unwrap().unwrap();
    eprintln!("{out}");
    assert!(
        !out.contains("Socket errors"),
        "wrk saw socket errors:\n{out}"
    );
    assert!(!out.contains("Non-2xx"), "wrk saw failed requests:\n{out}");
    // wrk is gone: the old backends are let go.
    d.wait_for("web", 10, |st| {
        st["lingering"].as_array().is_some_and(|l| l.is_empty())
    })
    .unwrap();
    let h = d.ok(&["history", "web"]).unwrap();
    assert!(h.contains("released: no flows left"), "{h}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `backend remove --now` cuts a healthy backend's connections on purpose;
/// without it they stay.
#[test]
fn a_removed_backend_keeps_a_long_lived_stream_unless_cut_on_purpose() {
    let lab = Lab::new().unwrap();
    let b: Vec<SocketAddr> = (1..=2).map(|i| Lab::backend(false, i, 8080)).collect();
    line_servers(&lab, b.clone());
    let d = Daemon::start(&lab, "cut", &svc("web", Lab::vip(false, 80), "nat", "", &b)).unwrap();
    let vip = Lab::vip(false, 80);
    // Streams until both backends carry one.
    let mut streams = lab
        .cli
        .run(move || {
            let mut s: Vec<Stream> = vec![];
            let mut seen = std::collections::BTreeSet::new();
            while seen.len() < 2 {
                let mut st = Stream::open(vip);
                seen.insert(st.ask());
                s.push(st);
            }
            s
        })
        .unwrap();
    let first = b[0].to_string();
    d.ok(&["backend", "remove", "web", "blue", &first]).unwrap();
    // Every stream still reaches the backend it began on.
    let (streams2, answers) = lab
        .cli
        .run(move || {
            let a: Vec<String> = streams.iter_mut().map(|s| s.ask()).collect();
            (streams, a)
        })
        .unwrap();
    streams = streams2;
    assert!(answers.contains(&first), "{answers:?}");
    let st = d.status("web").unwrap();
    assert_eq!(st["lingering"][0]["addr"], first.as_str(), "{st}");
    // Re-add it, then remove it with --now: its streams are re-chosen onto
    // the other backend (the old connection is gone for its server).
    d.ok(&["backend", "add", "web", "blue", &first]).unwrap();
    d.ok(&["backend", "remove", "web", "blue", &first, "--now"])
        .unwrap();
    let st = d.status("web").unwrap();
    assert!(st["lingering"].as_array().unwrap().is_empty(), "{st}");
    drop(streams);
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("switch-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A lingering backend's connection survives a kill -9 and restart of the
/// daemon, and the restarted daemon lets the backend go once it ends.
#[test]
fn a_lingering_backend_survives_a_daemon_restart() {
    let lab = Lab::new().unwrap();
    let b: Vec<SocketAddr> = (1..=2).map(|i| Lab::backend(false, i, 8080)).collect();
    line_servers(&lab, b.clone());
    let mut d = Daemon::start(
        &lab,
        "lingerrestart",
        &svc("web", Lab::vip(false, 80), "nat", "", &b),
    )
    .unwrap();
    let vip = Lab::vip(false, 80);
    let (mut stream, first) = lab
        .cli
        .run(move || {
            let mut s = Stream::open(vip);
            let a = s.ask();
            (s, a)
        })
        .unwrap();
    d.ok(&["backend", "remove", "web", "blue", &first]).unwrap();
    d.kill9();
    d.spawn().unwrap();
    let st = d.status("web").unwrap();
    assert_eq!(st["lingering"][0]["addr"], first.as_str(), "{st}");
    let (s2, again) = lab
        .cli
        .run(move || {
            let a = stream.ask();
            (stream, a)
        })
        .unwrap();
    assert_eq!(again, first, "the stream moved across the restart");
    drop(s2);
    d.wait_for("web", 10, |st| {
        st["lingering"].as_array().is_some_and(|l| l.is_empty())
    })
    .unwrap();
}
