//! The daemon under scale, faults and bad callers: thousands of backends
//! at start-up, huge and idle API clients, a second daemon on the same
//! state.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use switch_tests::{daemon::Daemon, lab::Lab, traffic::ask_once};

/// One line server on every address of the backend host.
fn any_address_server(lab: &Lab) {
    switch_tests::traffic::line_servers(lab, vec!["0.0.0.0:8080".parse().unwrap()]);
}

#[test]
fn ten_thousand_backend_addresses_are_ready_within_ten_seconds() {
    let lab = Lab::new().unwrap();
    let addrs = switch_tests::scale::many_backends(&lab, 10_000).unwrap();
    any_address_server(&lab);
    let service = switch_tests::scale::big_service(&addrs);
    let t = Instant::now();
    let d = Daemon::start(&lab, "big", &service).unwrap();
    // Ready: the API socket is there (it appears once the maps are written,
    // the program attached and the next hops resolved) ...
    let ready = t.elapsed();
    // ... and answers with the whole service (a debug build printing
    // 5,000 backends as JSON takes a while of its own on a busy machine).
    let st = d.status("big").unwrap();
    eprintln!(
        "10,000 backend addresses: ready in {ready:?}, status answered after {:?}",
        t.elapsed()
    );
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

fn raise_own_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max.min(65_536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
}

#[test]
fn a_huge_request_and_two_thousand_idle_callers_leave_status_answering() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    raise_own_fd_limit();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, "bounds", &switch_tests::service::blue_green(8080, "")).unwrap();

    // 100 MiB with no newline: refused once the bound is passed, and the
    // connection closed (the rest is never read).
    let mut big = UnixStream::connect(&d.api).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let reader = big.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0usize;
        for _ in 0..100 {
            if big.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let mut answer = String::new();
    BufReader::new(reader).read_line(&mut answer).unwrap();
    assert!(answer.contains("at most 1048576 bytes"), "{answer}");
    let sent = writer.join().unwrap();
    assert!(sent < 100 << 20, "the daemon read all {sent} bytes");

    // 2,000 idle callers: the newest take the places of the oldest, and an
    // operator still gets status at once.
    let idle: Vec<UnixStream> = (0..2_000)
        .map(|_| UnixStream::connect(&d.api).unwrap())
        .collect();
    let t = Instant::now();
    let st = d.status("web").unwrap();
    let took = t.elapsed();
    assert_eq!(st["pools"][0]["name"], "blue");
    assert!(took < Duration::from_secs(1), "status took {took:?}");
    // The daemon holds at most its cap of them: most were closed.
    let open = idle
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            // A closed peer reads 0; an open idle one would block.
            !matches!(std::io::Read::read(&mut &**s, &mut b), Ok(0))
        })
        .count();
    assert!(open <= 256, "{open} idle connections kept");
    drop(idle);

    // A request still works on a fresh connection after all that.
    let (ok, out) = d.cli(&["weights", "web", "blue=90", "green=10"]).unwrap();
    assert!(ok, "{out}");
}

#[test]
fn a_second_daemon_on_the_same_state_refuses_and_the_first_serves_on() {
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, "twice", &switch_tests::service::blue_green(8080, "")).unwrap();
    let pid = d.child.as_ref().unwrap().id();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.sw.name))
        .arg(switch_tests::daemon::switch_bin().unwrap())
        .args(["daemon", "--config"])
        .arg(&d.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is in use by another switch daemon") && err.contains(&format!("pid {pid}")),
        "{err}"
    );
    // The live socket is still there and answers.
    assert!(d.api.exists());
    d.status("web").unwrap();
}

#[test]
fn a_panic_ends_the_daemon_and_its_successor_adopts_everything_under_load() {
    use switch_tests::http;
    let lab = Lab::new().unwrap();
    let mut d = Daemon::prepare(
        &lab.sw,
        "panic",
        &["sw0", "sw1"],
        "",
        &switch_tests::service::blue_green(8080, ""),
    )
    .unwrap();
    let www = d.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    http::start_backends_with(
        &lab,
        &www,
        "  keepalive_requests 100000000;\n  keepalive_timeout 300s;",
    )
    .unwrap();
    // A panic in the strategy tick, with the state lock held, 2 s in.
    d.env.push(("SWITCH_TEST_PANIC".into(), "tick:2000".into()));
    d.spawn().unwrap();
    d.ok(&["weights", "web", "blue=60", "green=40"]).unwrap();
    let cli = lab.cli.name.clone();
    let load = std::thread::spawn(move || {
        switch_tests::sh(&format!(
            "ip netns exec {cli} wrk -t2 -c16 -d8s http://198.18.10.10:80/"
        ))
    });
    // It ends by itself, loudly (not a process that stays up half dead).
    let t = Instant::now();
    let status = loop {
        if let Some(s) = d.child.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "the daemon did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(70), "{status}");
    d.child = None;
    // The service manager's restart: the successor adopts it all.
    d.env.clear();
    d.spawn().unwrap();
    let st = d.status("web").unwrap();
    assert_eq!(st["pools"][0]["weight"], 60, "{st}");
    assert_eq!(st["pools"][1]["weight"], 40, "{st}");
    let out = load.join().unwrap().unwrap();
    assert!(
        !out.contains("Socket errors") && !out.contains("Non-2xx"),
        "wrk saw errors:\n{out}"
    );
    assert!(out.contains("Requests/sec"), "{out}");
}

#[test]
fn with_256_descriptors_shadows_are_shed_before_a_health_probe_fails() {
    use switch_tests::traffic::line_servers;
    raise_own_fd_limit();
    let lab = Lab::new().unwrap();
    line_servers(
        &lab,
        (1..=4).map(|i| Lab::backend(false, i, 8080)).collect(),
    );
    let mut d = Daemon::prepare(
        &lab.sw,
        "nofile",
        &["sw0", "sw1"],
        "",
        &switch_tests::service::blue_green(
            8080,
            r#"health = { kind = "tcp", interval = "100ms", timeout = "200ms", rise = 1, fall = 2 }"#,
        ),
    )
    .unwrap();
    d.nofile = Some(256);
    d.spawn().unwrap();
    d.wait_for("web", 5, |st| {
        st["pools"][0]["backends"]
            .as_array()
            .is_some_and(|b| b.iter().all(|b| b["healthy"] == true))
    })
    .unwrap();
    d.ok(&["shadow", "web", "--to", "green", "--sample", "100%"])
        .unwrap();
    // 400 clients that connect, say a line and then hold on (as clients
    // that vanish do, until the sweep): each sampled, each wanting a
    // replay socket.
    let vip: SocketAddr = "198.18.10.10:80".parse().unwrap();
    let held = lab
        .cli
        .run(move || {
            (0..400)
                .filter_map(|_| {
                    let mut s =
                        std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(2)).ok()?;
                    std::io::Write::write_all(&mut s, b"hi\n").ok()?;
                    Some(s)
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(held.len() >= 390, "{} clients connected", held.len());
    // Probes every 100 ms for 3 s: no backend goes down, and the API
    // answers throughout.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        let st = d.status("web").unwrap();
        for p in st["pools"].as_array().unwrap() {
            for b in p["backends"].as_array().unwrap() {
                assert_eq!(b["healthy"], true, "a backend went down: {st}");
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = d.status("web").unwrap();
    let report = &st["shadow"]["report"];
    assert!(
        report["overflow"].as_u64().unwrap_or(0) > 0,
        "no replay was shed: {report}"
    );
    drop(held);
}

/// A mount that goes away with the test, even when it fails.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = switch_tests::sh(&format!("umount -l {}", self.0.display()));
    }
}

/// Each weights change, refused while `state_dir` cannot take the new
/// state, leaves status, the state file and the traffic as they were.
fn refused_while_not_durable(d: &Daemon, lab: &Lab, want: &str) {
    let state = std::fs::read(d.dir.join("state/state.json")).unwrap();
    let (ok, out) = d.cli(&["weights", "web", "blue=0", "green=100"]).unwrap();
    assert!(!ok, "{out}");
    assert!(
        out.lines().count() == 1
            && out.contains("cannot be made durable")
            && out.contains("nothing changed")
            && out.contains(want),
        "{out}"
    );
    let st = d.status("web").unwrap();
    assert_eq!(st["pools"][0]["weight"], 100, "{st}");
    assert_eq!(
        std::fs::read(d.dir.join("state/state.json")).unwrap(),
        state
    );
    // The maps too: new connections still go to blue.
    let vip: SocketAddr = "198.18.10.10:80".parse().unwrap();
    let answers = lab
        .cli
        .run(move || (0..10).map(|_| ask_once(vip, None)).collect::<Vec<_>>())
        .unwrap();
    for a in answers {
        let a = a.unwrap();
        assert!(a.ends_with(".11:8080") || a.ends_with(".12:8080"), "{a}");
    }
}

#[test]
fn a_full_or_read_only_state_dir_refuses_commands_and_changes_nothing() {
    let lab = Lab::new().unwrap();
    switch_tests::traffic::line_servers(
        &lab,
        (1..=4).map(|i| Lab::backend(false, i, 8080)).collect(),
    );
    let mut d = Daemon::prepare(
        &lab.sw,
        "disk",
        &["sw0", "sw1"],
        "",
        &switch_tests::service::blue_green(8080, ""),
    )
    .unwrap();
    let state = d.dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    switch_tests::sh(&format!(
        "mount -t tmpfs -o size=1m switch-test {}",
        state.display()
    ))
    .unwrap();
    let _mount = Mount(state.clone());
    d.spawn().unwrap();

    // Full: a file takes every byte left.
    let _ = switch_tests::sh(&format!(
        "dd if=/dev/zero of={}/filler bs=4k 2>/dev/null",
        state.display()
    ));
    refused_while_not_durable(&d, &lab, "No space left on device");
    std::fs::remove_file(state.join("filler")).unwrap();
    d.ok(&["weights", "web", "blue=90", "green=10"]).unwrap();
    d.ok(&["weights", "web", "blue=100", "green=0"]).unwrap();

    // Read-only.
    switch_tests::sh(&format!("mount -o remount,ro {}", state.display())).unwrap();
    refused_while_not_durable(&d, &lab, "Read-only file system");
    switch_tests::sh(&format!("mount -o remount,rw {}", state.display())).unwrap();
    d.ok(&["weights", "web", "blue=80", "green=20"]).unwrap();
    // The refusals are in the audit trail.
    let h = d.ok(&["history", "web"]).unwrap();
    assert!(h.matches("REFUSED").count() >= 2, "{h}");
    d.kill9();
}
