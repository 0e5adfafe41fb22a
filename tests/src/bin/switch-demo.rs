//! `cargo xtask demo`: a self-contained lab in network namespaces. A client,
//! the switch host running `switch daemon`, and a blue and a green pool of
//! HTTP servers. Under client load it flips blue -> green and back, and
//! shows where requests went. Removes every namespace, process and pin it
//! made, also on Ctrl-C or failure.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use switch_tests::lab::Lab;

static STOP: AtomicBool = AtomicBool::new(false);

struct Cleanup {
    daemon: Option<Child>,
    dir: PathBuf,
    pins: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = switch_user::dataplane::detach(&self.pins);
        let _ = std::fs::remove_dir_all(&self.dir);
        eprintln!("demo: cleaned up namespaces, daemon, pins");
    }
}

fn main() {
    let _ = ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst));
    if let Err(e) = run() {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

fn version_of(addr: SocketAddr) -> &'static str {
    let last = match addr.ip() {
        std::net::IpAddr::V4(a) => a.octets()[3],
        std::net::IpAddr::V6(a) => a.octets()[15],
    };
    if last <= 12 { "blue" } else { "green" }
}

/// Tiny HTTP servers, one per backend address, answering with their version.
fn start_backends(lab: &Lab, stop: Arc<AtomicBool>) -> Result<()> {
    lab.be.run(move || -> Result<()> {
        for i in 1..=4 {
            let addr = Lab::backend(false, i, 8080);
            let l = TcpListener::bind(addr)?;
            let stop = stop.clone();
            std::thread::spawn(move || {
                for c in l.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(mut c) = c else { continue };
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 1024];
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let _ = c.read(&mut buf);
                        let body = format!("{} from {addr}\n", version_of(addr));
                        let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                    });
                }
            });
        }
        Ok(())
    })?
}

fn run() -> Result<()> {
    let exe_dir = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    let switch = exe_dir.join("switch");
    if !switch.exists() {
        bail!(
            "{} not found: run the demo with `cargo xtask demo`",
            switch.display()
        );
    }
    let lab = Lab::new()?;
    let dir = std::env::temp_dir().join(format!("switch-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pins = PathBuf::from(format!("/sys/fs/bpf/switch-demo-{}", std::process::id()));
    let api = dir.join("switch.sock");
    let mut cleanup = Cleanup {
        daemon: None,
        dir: dir.clone(),
        pins: pins.clone(),
    };

    let stop = Arc::new(AtomicBool::new(false));
    start_backends(&lab, stop.clone())?;
    let config = format!(
        r#"[daemon]
interfaces = ["sw0", "sw1"]
api = "{api}"
pin_dir = "{pins}"
state_dir = "{state}"

[[service]]
name = "web"
vip = "198.18.10.10:80"
protocol = "tcp"
pools = [
  {{ name = "blue",  weight = 100, backends = ["198.18.1.11:8080", "198.18.1.12:8080"] }},
  {{ name = "green", weight = 0,   backends = ["198.18.1.13:8080", "198.18.1.14:8080"] }},
]
"#,
        api = api.display(),
        pins = pins.display(),
        state = dir.join("state").display()
    );
    let config_path = dir.join("switch.toml");
    std::fs::write(&config_path, config)?;
    println!(
        "== lab: client {} -> switch {} -> backends {} (blue .11 .12, green .13 .14)",
        lab.cli.name, lab.sw.name, lab.be.name
    );
    // nsenter, not `ip netns exec`: the latter remounts /sys, which hides
    // the host's bpffs and with it the pins a restarted daemon must adopt.
    let daemon = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.sw.name))
        .arg(&switch)
        .args(["daemon", "--config"])
        .arg(&config_path)
        .spawn()?;
    cleanup.daemon = Some(daemon);
    let t = Instant::now();
    while !api.exists() {
        if t.elapsed() > Duration::from_secs(20) {
            bail!("daemon did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let cli = |args: &[&str]| -> Result<String> {
        let out = Command::new(&switch)
            .arg("--api")
            .arg(&api)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "switch {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };

    // A long-lived connection opened on blue before any flip.
    let long = lab.cli.run(|| {
        TcpStream::connect_timeout(&"198.18.10.10:80".parse().unwrap(), Duration::from_secs(3))
    })??;
    let mut phases: Vec<(String, BTreeMap<&'static str, u32>, u32)> = Vec::new();
    for (phase, action) in [
        ("blue (start)", None),
        ("after flip to green", Some("green")),
        ("after rollback to blue", Some("blue")),
    ] {
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        if let Some(to) = action {
            print!(
                "$ switch flip web --to {to}\n{}",
                cli(&["flip", "web", "--to", to])?
            );
        }
        let (counts, failed) = lab.cli.run(|| {
            let mut counts: BTreeMap<&'static str, u32> = BTreeMap::new();
            let mut failed = 0;
            for _ in 0..200 {
                match get("198.18.10.10:80".parse().unwrap()) {
                    Ok(body) if body.starts_with("blue") => *counts.entry("blue").or_default() += 1,
                    Ok(_) => *counts.entry("green").or_default() += 1,
                    Err(_) => failed += 1,
                }
            }
            (counts, failed)
        })?;
        println!("{phase:<24} requests: {counts:?}  failed: {failed}");
        phases.push((phase.to_string(), counts, failed));
    }
    // The long-lived connection still reaches its original (blue) backend.
    let mut long = long;
    long.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n")?;
    let mut body = String::new();
    long.set_read_timeout(Some(Duration::from_secs(3)))?;
    long.read_to_string(&mut body)?;
    println!(
        "connection opened before both flips answered: {}",
        body.lines().last().unwrap_or("")
    );
    println!("$ switch status\n{}", cli(&["status"])?);
    println!("$ switch history web\n{}", cli(&["history", "web"])?);
    println!(
        "\n== summary\n{:<24} {:>6} {:>6} {:>7}",
        "phase", "blue", "green", "failed"
    );
    let mut total_failed = 0;
    for (phase, counts, failed) in &phases {
        println!(
            "{phase:<24} {:>6} {:>6} {:>7}",
            counts.get("blue").unwrap_or(&0),
            counts.get("green").unwrap_or(&0),
            failed
        );
        total_failed += failed;
    }
    stop.store(true, Ordering::Relaxed);
    drop(cleanup);
    if total_failed > 0 {
        bail!("{total_failed} requests failed");
    }
    Ok(())
}

fn get(vip: SocketAddr) -> Result<String> {
    let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(3))?;
    c.set_read_timeout(Some(Duration::from_secs(3)))?;
    c.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n")?;
    let mut s = String::new();
    c.read_to_string(&mut s)?;
    Ok(s.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}
