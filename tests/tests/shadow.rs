//! Shadow deployments with real nginx and real clients: a sample of live
//! connections is replayed to the shadow pool, byte for byte and in order;
//! clients only ever see the live pool; what the shadow does wrong shows in
//! the report, never to a client.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use switch_tests::{daemon::Daemon, lab::Lab, sh};

const LIVE: [&str; 2] = ["198.18.1.11:8080", "198.18.1.12:8080"];
const SHADOW: [&str; 2] = ["198.18.1.13:8080", "198.18.1.14:8080"];

fn config(extra: &str) -> String {
    switch_tests::service::blue_green(8080, extra)
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("switch-shadow-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// nginx on `addrs` in the backend namespace; every request line goes to
/// `dir/access-<addr>.log`; it answers `code` with a body naming itself.
fn nginx(lab: &Lab, dir: &Path, name: &str, addrs: &[&str], code: u16) {
    let d = dir.display();
    let mut servers = String::new();
    for a in addrs {
        servers.push_str(&format!(
            "  server {{ listen {a}; access_log {d}/access-{a}.log line; location / {{ return {code} \"{name} {a}\\n\"; }} }}\n"
        ));
    }
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  client_body_temp_path {d}/body-{name};\n  proxy_temp_path {d}/proxy-{name};\n  fastcgi_temp_path {d}/fcgi-{name};\n  uwsgi_temp_path {d}/uwsgi-{name};\n  scgi_temp_path {d}/scgi-{name};\n  default_type text/plain;\n  keepalive_requests 1000;\n  log_format line '$request $request_length';\n{servers}}}\n"
        ),
    )
    .unwrap();
    lab.be
        .exec(&format!("nginx -c {}", conf.display()))
        .unwrap();
}

fn log_lines(dir: &Path, addrs: &[&str]) -> Vec<String> {
    addrs
        .iter()
        .flat_map(|a| {
            std::fs::read_to_string(dir.join(format!("access-{a}.log")))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// curl from the client namespace: each URL on the command line over one
/// connection (keep-alive); the bodies, one per line.
fn curl(lab: &Lab, urls: &[String]) -> Vec<String> {
    let out = lab
        .cli
        .exec(&format!(
            "curl -s --max-time 5 {}",
            urls.iter()
                .map(|u| format!("'{u}'"))
                .collect::<Vec<_>>()
                .join(" ")
        ))
        .unwrap();
    out.lines().map(str::to_string).collect()
}

fn report(d: &Daemon) -> serde_json::Value {
    d.status("web").unwrap()["shadow"]["report"].clone()
}

#[test]
fn a_ten_percent_shadow_sees_ten_percent_of_the_requests_and_clients_see_none_of_it() {
    let lab = Lab::new().unwrap();
    let dir = tempdir("sample");
    nginx(&lab, &dir, "live", &LIVE, 200);
    nginx(&lab, &dir, "shadow", &SHADOW, 200);
    let d = Daemon::start(&lab, "shadow", &config("")).unwrap();
    d.ok(&["shadow", "web", "--to", "green", "--sample", "10%"])
        .unwrap();
    // 1,000 requests over fresh connections, each with its own path.
    let mut bodies = vec![];
    for batch in 0..50 {
        for i in 0..20 {
            let n = batch * 20 + i;
            bodies.extend(curl(&lab, &[format!("http://198.18.10.10/req/{n}?x={n}")]));
        }
    }
    assert_eq!(bodies.len(), 1000, "every client got an answer");
    assert!(
        bodies.iter().all(|b| b.starts_with("live ")),
        "a client saw the shadow: {:?}",
        bodies.iter().find(|b| !b.starts_with("live "))
    );
    std::thread::sleep(Duration::from_millis(1500));
    let live = log_lines(&dir, &LIVE);
    let shadow = log_lines(&dir, &SHADOW);
    assert_eq!(live.len(), 1000);
    eprintln!("shadow saw {} of 1000 requests", shadow.len());
    assert!(
        (70..=130).contains(&shadow.len()),
        "{} requests replayed, want 10% ± 3%",
        shadow.len()
    );
    // Byte-identical request lines: each replayed one is one the live pool
    // served.
    for line in &shadow {
        assert!(live.contains(line), "replayed {line:?} was never sent live");
    }
    let r = report(&d);
    assert_eq!(r["replayed"].as_u64(), Some(shadow.len() as u64), "{r}");
    assert!(r["shadow_statuses"]["2xx"].as_u64().unwrap() >= 70, "{r}");
    assert!(r["live_statuses"]["2xx"].as_u64().unwrap() >= 70, "{r}");
    assert!(r["live_ttfb"]["count"].as_u64().unwrap() >= 70, "{r}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn keep_alive_connections_are_replayed_whole_and_in_order() {
    let lab = Lab::new().unwrap();
    let dir = tempdir("keepalive");
    nginx(&lab, &dir, "live", &LIVE, 200);
    nginx(&lab, &dir, "shadow", &SHADOW, 200);
    let d = Daemon::start(&lab, "shadowka", &config("")).unwrap();
    d.ok(&["shadow", "web", "--to", "green", "--sample", "25%"])
        .unwrap();
    for c in 0..40 {
        let urls: Vec<String> = (0..4)
            .map(|i| format!("http://198.18.10.10/conn/{c}/req/{i}"))
            .collect();
        assert_eq!(curl(&lab, &urls).len(), 4);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let shadow = log_lines(&dir, &SHADOW);
    assert!(!shadow.is_empty(), "nothing replayed");
    // Per connection: all four requests, in order.
    let mut per_conn: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for line in &shadow {
        let path = line.split_whitespace().nth(1).unwrap().to_string();
        let conn = path.split('/').nth(2).unwrap().to_string();
        per_conn.entry(conn).or_default().push(path);
    }
    for (conn, paths) in &per_conn {
        let want: Vec<String> = (0..4).map(|i| format!("/conn/{conn}/req/{i}")).collect();
        assert_eq!(
            paths, &want,
            "connection {conn} replayed out of order or in part"
        );
    }
    eprintln!("{} keep-alive connections replayed whole", per_conn.len());
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failing_shadow_shows_in_the_report_and_keeps_its_canary_from_starting() {
    let lab = Lab::new().unwrap();
    let dir = tempdir("fail");
    nginx(&lab, &dir, "live", &LIVE, 200);
    nginx(&lab, &dir, "shadow", &SHADOW, 500);
    let d = Daemon::start(&lab, "shadow500", &config("")).unwrap();
    d.ok(&["shadow", "web", "--to", "green", "--sample", "50%"])
        .unwrap();
    for n in 0..60 {
        let b = curl(&lab, &[format!("http://198.18.10.10/{n}")]);
        assert!(b[0].starts_with("live "), "{b:?}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let r = report(&d);
    assert!(r["shadow_statuses"]["5xx"].as_u64().unwrap() > 10, "{r}");
    assert_eq!(r["live_statuses"]["5xx"], 0, "{r}");
    assert!(r["shadow_error_rate"].as_f64().unwrap() > 0.9, "{r}");
    let (ok, msg) = d
        .cli(&[
            "canary",
            "web",
            "--to",
            "green",
            "--after-shadow",
            "0s",
            "--max-shadow-error-excess",
            "0.01",
        ])
        .unwrap();
    assert!(!ok, "a canary to a failing shadow started");
    assert!(msg.contains("error rate"), "{msg}");
    assert_eq!(d.status("web").unwrap()["pools"][1]["weight"], 0);
    // Metrics carry it with bounded labels.
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_shadow_pool_that_is_down_changes_nothing_for_clients() {
    let lab = Lab::new().unwrap();
    let dir = tempdir("down");
    nginx(&lab, &dir, "live", &LIVE, 200);
    // No shadow servers at all: connections to it are refused.
    let d = Daemon::start(&lab, "shadowdown", &config("")).unwrap();
    d.ok(&["shadow", "web", "--to", "green", "--sample", "100%"])
        .unwrap();
    for n in 0..50 {
        let b = curl(&lab, &[format!("http://198.18.10.10/{n}")]);
        assert_eq!(b.len(), 1, "request {n} failed");
        assert!(b[0].starts_with("live "));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let r = report(&d);
    assert!(r["refused"].as_u64().unwrap() >= 40, "{r}");
    assert_eq!(r["replayed"], 0, "{r}");
    d.ok(&["shadow", "web", "--stop"]).unwrap();
    let st = d.status("web").unwrap();
    assert_eq!(st["shadow"]["spec"]["ended"], "stopped", "{st}");
    let h = d.ok(&["history", "web"]).unwrap();
    assert!(
        h.contains("shadow to green started") && h.contains("shadow stopped"),
        "{h}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn udp_datagrams_reach_the_shadow_and_its_replies_never_reach_the_client() {
    let lab = Lab::new().unwrap();
    let live: Vec<SocketAddr> = (1..=2).map(|i| Lab::backend(false, i, 5353)).collect();
    let shadow: Vec<SocketAddr> = (3..=4).map(|i| Lab::backend(false, i, 5353)).collect();
    // Every server answers with its own address and counts what it got.
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    {
        let seen = seen.clone();
        let all: Vec<SocketAddr> = live.iter().chain(&shadow).copied().collect();
        let shadow = shadow.clone();
        lab.be
            .run(move || {
                for a in all {
                    let u = std::net::UdpSocket::bind(a).unwrap();
                    let (seen, is_shadow) = (seen.clone(), shadow.contains(&a));
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 1500];
                        while let Ok((n, peer)) = u.recv_from(&mut buf) {
                            if is_shadow {
                                seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            let mut answer = format!("{a} ").into_bytes();
                            answer.extend_from_slice(&buf[..n]);
                            let _ = u.send_to(&answer, peer);
                        }
                    });
                }
            })
            .unwrap();
    }
    let cfg = format!(
        r#"
[[service]]
name = "dns"
vip = "198.18.10.10:53"
protocol = "udp"
pools = [
  {{ name = "blue",  weight = 100, backends = ["{}", "{}"] }},
  {{ name = "green", weight = 0,   backends = ["{}", "{}"] }},
]
"#,
        live[0], live[1], shadow[0], shadow[1]
    );
    let d = Daemon::start(&lab, "shadowudp", &cfg).unwrap();
    d.ok(&["shadow", "dns", "--to", "green", "--sample", "100%"])
        .unwrap();
    let answers = lab
        .cli
        .run(|| {
            let mut out = vec![];
            for i in 0..20 {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                s.send_to(format!("q{i}").as_bytes(), "198.18.10.10:53")
                    .unwrap();
                let mut buf = [0u8; 1500];
                // Everything that comes back within the timeout.
                while let Ok((n, _)) = s.recv_from(&mut buf) {
                    out.push(String::from_utf8_lossy(&buf[..n]).to_string());
                }
            }
            out
        })
        .unwrap();
    assert_eq!(answers.len(), 20, "one answer per datagram: {answers:?}");
    for a in &answers {
        assert!(
            a.starts_with("198.18.1.11:") || a.starts_with("198.18.1.12:"),
            "a shadow reply reached the client: {a}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    eprintln!("{}", d.status("dns").unwrap()["shadow"]);
    assert!(
        seen.load(std::sync::atomic::Ordering::Relaxed) >= 20,
        "the shadow got {} datagrams",
        seen.load(std::sync::atomic::Ordering::Relaxed)
    );
    let r = d.status("dns").unwrap()["shadow"]["report"].clone();
    assert!(r["datagrams"].as_u64().unwrap() >= 20, "{r}");
    assert!(r["datagram_replies"].as_u64().unwrap() >= 20, "{r}");
}

/// 20,000 sampled connections to a shadow that accepts and never answers:
/// replays stay within --max-sessions, the rest is counted, and the
/// daemon's memory stays bounded.
#[test]
fn a_slow_shadow_cannot_make_the_daemon_grow() {
    let lab = Lab::new().unwrap();
    let dir = tempdir("slow");
    nginx(&lab, &dir, "live", &LIVE, 200);
    // A shadow that accepts and then says nothing.
    lab.be
        .run(|| {
            for a in SHADOW {
                let l = std::net::TcpListener::bind(a).unwrap();
                std::thread::spawn(move || {
                    let mut held = vec![];
                    for c in l.incoming().flatten() {
                        held.push(c);
                    }
                });
            }
        })
        .unwrap();
    let d = Daemon::start(&lab, "shadowslow", &config("")).unwrap();
    d.ok(&[
        "shadow",
        "web",
        "--to",
        "green",
        "--sample",
        "100%",
        "--max-sessions",
        "50",
        "--max-buffer",
        "4KiB",
    ])
    .unwrap();
    let rss_before = d.rss_kib().unwrap();
    let cli = lab.cli.name.clone();
    // 20,000 connections from the client (wrk, no keep-alive).
    sh(&format!(
        "ip netns exec {cli} wrk -t2 -c50 -d6s -H 'Connection: close' http://198.18.10.10/ >/dev/null 2>&1 || true"
    ))
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let r = report(&d);
    let sampled = r["sampled"].as_u64().unwrap();
    let overflow = r["overflow"].as_u64().unwrap();
    let rss_after = d.rss_kib().unwrap();
    eprintln!("sampled {sampled}, overflow {overflow}, rss {rss_before} -> {rss_after} KiB; {r}");
    assert!(sampled >= 2000, "{r}");
    assert!(overflow > 0, "past --max-sessions nothing was counted: {r}");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the daemon grew from {rss_before} to {rss_after} KiB"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A shadow is a strategy like the others: persisted, and it goes on after
/// the daemon is killed and started again.
#[test]
fn a_shadow_survives_a_daemon_restart() {
    let lab = Lab::new().unwrap();
    let dir = tempdir("restart");
    nginx(&lab, &dir, "live", &LIVE, 200);
    nginx(&lab, &dir, "shadow", &SHADOW, 200);
    let mut d = Daemon::start(&lab, "shadowrestart", &config("")).unwrap();
    d.ok(&[
        "shadow", "web", "--to", "green", "--sample", "100%", "--for", "10m",
    ])
    .unwrap();
    d.kill9();
    d.spawn().unwrap();
    let st = d.status("web").unwrap();
    assert_eq!(st["shadow"]["spec"]["to"], "green", "{st}");
    assert!(st["shadow"]["spec"]["ended"].is_null(), "{st}");
    for n in 0..20 {
        let b = curl(&lab, &[format!("http://198.18.10.10/after-restart/{n}")]);
        assert!(b[0].starts_with("live "));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let shadow = log_lines(&dir, &SHADOW);
    assert_eq!(shadow.len(), 20, "{shadow:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Requests split over many packets (a 48 KiB POST body) are replayed
/// whole: the shadow logs the same request, of the same length.
#[test]
fn requests_over_many_packets_are_replayed_byte_for_byte() {
    let lab = Lab::new().unwrap();
    let dir = tempdir("big");
    nginx(&lab, &dir, "live", &LIVE, 200);
    nginx(&lab, &dir, "shadow", &SHADOW, 200);
    let d = Daemon::start(&lab, "shadowbig", &config("")).unwrap();
    d.ok(&["shadow", "web", "--to", "green", "--sample", "100%"])
        .unwrap();
    let body = dir.join("body");
    std::fs::write(&body, vec![b'x'; 48 * 1024]).unwrap();
    for n in 0..10 {
        let out = lab
            .cli
            .exec(&format!(
                "curl -s --max-time 5 --data-binary @{} http://198.18.10.10/upload/{n}",
                body.display()
            ))
            .unwrap();
        assert!(out.starts_with("live "), "{out}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let mut live = log_lines(&dir, &LIVE);
    let mut shadow = log_lines(&dir, &SHADOW);
    live.sort();
    shadow.sort();
    assert_eq!(live.len(), 10);
    assert_eq!(
        shadow, live,
        "the shadow got other requests than the live pool"
    );
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A shadow pool nobody answers for (blackholed): replays time out, clients
/// see nothing of it.
#[test]
fn a_blackholed_shadow_pool_changes_nothing_for_clients() {
    let lab = Lab::new().unwrap();
    let dir = tempdir("blackhole");
    nginx(&lab, &dir, "live", &LIVE, 200);
    // No host has these addresses: SYNs to them go unanswered.
    let cfg = config("")
        .replace(SHADOW[0], "198.18.1.41:8080")
        .replace(SHADOW[1], "198.18.1.42:8080");
    let d = Daemon::start(&lab, "shadowhole", &cfg).unwrap();
    d.ok(&["shadow", "web", "--to", "green", "--sample", "100%"])
        .unwrap();
    let t = std::time::Instant::now();
    for n in 0..20 {
        let b = curl(&lab, &[format!("http://198.18.10.10/{n}")]);
        assert_eq!(b.len(), 1, "request {n} failed");
        assert!(b[0].starts_with("live "));
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "clients were slowed down"
    );
    std::thread::sleep(Duration::from_millis(3000));
    let r = report(&d);
    assert!(
        r["timed_out"].as_u64().unwrap() + r["reset"].as_u64().unwrap() >= 10,
        "{r}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
