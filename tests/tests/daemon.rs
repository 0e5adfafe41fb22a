//! The daemon and CLI with real traffic: kill -9 under load, restart,
//! adoption of pinned state, and bad input that changes nothing.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use switch_tests::{daemon::Daemon, lab::Lab};

const SERVICE: &str = r#"
[[service]]
name = "web"
vip = "198.18.10.10:80"
protocol = "tcp"
pools = [
  { name = "blue",  weight = 100, backends = ["198.18.1.11:8080", "198.18.1.12:8080"] },
  { name = "green", weight = 0,   backends = ["198.18.1.13:8080", "198.18.1.14:8080"] },
]
"#;

/// Line servers on every backend: each line is answered with the backend's
/// address, for as long as the connection lives.
fn start_backends(lab: &Lab, stop: Arc<AtomicBool>) {
    lab.be
        .run(move || {
            for i in 1..=4 {
                let addr = Lab::backend(false, i, 8080);
                let l = TcpListener::bind(addr).unwrap();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    for c in l.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let Ok(c) = c else { continue };
                        std::thread::spawn(move || {
                            let mut w = c.try_clone().unwrap();
                            for line in BufReader::new(c).lines() {
                                let Ok(_) = line else { break };
                                if writeln!(w, "{addr}").is_err() {
                                    break;
                                }
                            }
                        });
                    }
                });
            }
        })
        .unwrap();
}

fn vip() -> SocketAddr {
    "198.18.10.10:80".parse().unwrap()
}

/// A stream that asks its backend who it is.
struct Stream {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Stream {
    fn open() -> Stream {
        let s = TcpStream::connect_timeout(&vip(), Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Stream {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }
    fn ask(&mut self) -> String {
        writeln!(self.w, "who").expect("write on established stream");
        let mut line = String::new();
        self.r
            .read_line(&mut line)
            .expect("read on established stream");
        assert!(!line.is_empty(), "stream closed");
        line.trim().to_string()
    }
}

/// What the test is doing now, for failure messages.
static PHASE: AtomicU32 = AtomicU32::new(0);

/// New connections in a loop until stopped: (ok, failed) counts.
fn load(
    lab: &Lab,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU32>,
    failed: Arc<AtomicU32>,
) -> std::thread::JoinHandle<()> {
    let path = format!("/run/netns/{}", lab.cli.name);
    std::thread::spawn(move || {
        switch_tests::enter(&path).unwrap();
        while !stop.load(Ordering::Relaxed) {
            let mut port = 0;
            let r = (|| -> std::io::Result<()> {
                let s = TcpStream::connect_timeout(&vip(), Duration::from_secs(2))?;
                port = s.local_addr()?.port();
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut w = s.try_clone()?;
                writeln!(w, "hi")?;
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line)?;
                if line.is_empty() {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                Ok(())
            })();
            match r {
                Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    eprintln!(
                        "load: connection from port {port} failed in phase {}: {e}",
                        PHASE.load(Ordering::SeqCst)
                    );
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    })
}

#[test]
fn kill_9_and_restart_under_load_breaks_nothing() {
    let lab = Lab::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // The servers get their own flag: stopping them with the load would
    // drop the last connection in flight and count it as a failure.
    start_backends(&lab, Arc::new(AtomicBool::new(false)));
    let mut d = Daemon::start(&lab, "kill9", SERVICE).unwrap();

    let mut stream = lab.cli.run(Stream::open).unwrap();
    let first = lab.cli.run(move || (stream.ask(), stream)).unwrap();
    let (backend, mut stream) = first;
    assert!(
        backend == "198.18.1.11:8080" || backend == "198.18.1.12:8080",
        "{backend}"
    );

    let (ok, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let loader = load(&lab, stop.clone(), ok.clone(), failed.clone());
    std::thread::sleep(Duration::from_millis(300));

    PHASE.store(1, Ordering::SeqCst);
    d.kill9();
    std::thread::sleep(Duration::from_millis(300));
    // With no daemon at all, forwarding goes on.
    let (b, s) = lab.cli.run(move || (stream.ask(), stream)).unwrap();
    stream = s;
    assert_eq!(b, backend, "stream moved while the daemon was dead");

    PHASE.store(2, Ordering::SeqCst);
    d.spawn().unwrap();
    PHASE.store(3, Ordering::SeqCst);
    let status = d.ok(&["status", "--json"]).unwrap();
    assert!(
        status.contains("\"blue\"") && status.contains("198.18.1.11:8080"),
        "{status}"
    );
    // After the restart the daemon can still steer: flip to green.
    d.ok(&["flip", "web", "--to", "green"]).unwrap();
    PHASE.store(4, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    let (b, _s) = lab.cli.run(move || (stream.ask(), stream)).unwrap();
    assert_eq!(
        b, backend,
        "established stream moved by the flip after restart"
    );
    let fresh = lab.cli.run(|| Stream::open().ask()).unwrap();
    assert!(
        fresh == "198.18.1.13:8080" || fresh == "198.18.1.14:8080",
        "new connection after flip went to {fresh}"
    );

    stop.store(true, Ordering::Relaxed);
    loader.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("connections during kill -9, restart and flip: {ok} ok, {failed} failed");
    assert!(ok > 50, "load generator made too few connections: {ok}");
    assert_eq!(failed, 0);
}

#[test]
fn bad_cli_input_is_refused_and_changes_nothing() {
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, "badinput", SERVICE).unwrap();
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
    ];
    for (args, want) in cases {
        let (ok, out) = d.cli(args).unwrap();
        assert!(!ok, "switch {} should fail", args.join(" "));
        assert!(
            out.contains(want),
            "switch {}: {out:?} should mention {want:?}",
            args.join(" ")
        );
        // One line says it all (clap adds a "--help" hint below its own).
        assert!(
            out.lines().next().unwrap_or("").contains(want),
            "first line: {out:?}"
        );
    }
    assert_eq!(
        d.ok(&["status", "--json"]).unwrap(),
        before,
        "a refused command changed state"
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
fn fifty_flips_under_load_fail_no_connection() {
    let lab = Lab::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // The servers get their own flag: stopping them with the load would
    // drop the last connection in flight and count it as a failure.
    start_backends(&lab, Arc::new(AtomicBool::new(false)));
    let d = Daemon::start(&lab, "flips", SERVICE).unwrap();
    // A long-lived stream opened before the first flip.
    let (first, mut stream) = lab
        .cli
        .run(|| {
            let mut s = Stream::open();
            (s.ask(), s)
        })
        .unwrap();
    let (ok, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let loader = load(&lab, stop.clone(), ok.clone(), failed.clone());
    for i in 0..50 {
        let to = if i % 2 == 0 { "green" } else { "blue" };
        d.ok(&["flip", "web", "--to", to]).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        if i % 10 == 9 {
            let (b, s) = lab.cli.run(move || (stream.ask(), stream)).unwrap();
            stream = s;
            assert_eq!(b, first, "the long-lived stream moved after flip {i}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    loader.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("connections during 50 flips: {ok} ok, {failed} failed");
    eprintln!("{}", d.ok(&["status"]).unwrap());
    assert!(ok > 100, "load generator made too few connections: {ok}");
    assert_eq!(failed, 0);
}
