//! `cargo xtask demo --fleet`: the demo with a fleet. A BIRD router spreads
//! the clients' connections over three switch hosts by ECMP (each host
//! announces the VIP over BGP), the hosts agree through etcd, and the
//! backends answer with their version. Under load: a canary driven from one
//! host, a host lost mid-canary (its link cut: the router withdraws it, the
//! canary goes on), the host back. It ends with a summary per phase and
//! version, and a chart of each host's share of new connections over time.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use switch_tests::{
    daemon::Daemon,
    fleet::{BgpLab, VIP, VIP6, backend, backend6},
};

/// Backends 1, 2 run blue v1; 3, 4 green v2 (they answer "hello from beN").
fn version(answer: &str) -> &'static str {
    match answer.trim().trim_start_matches("hello from ") {
        "be1" | "be2" => "blue-v1",
        "be3" | "be4" => "green-v2",
        _ => "?",
    }
}

fn request(vip: &str) -> Result<&'static str, &'static str> {
    let vip: SocketAddr = vip.parse().unwrap();
    // Long enough for SYN retransmissions to outlast a route withdrawal.
    switch_tests::http::get_body(vip, Duration::from_secs(6)).map(|body| version(&body))
}

type Log = Arc<Mutex<Vec<(f64, Result<&'static str, &'static str>)>>>;
/// (time, new flows of each host so far).
type HostLog = Arc<Mutex<Vec<(f64, Vec<u64>)>>>;

fn services() -> String {
    let health = "mode = \"dsr\"\nhealth = { kind = \"tcp\", interval = \"300ms\", timeout = \"200ms\", rise = 1, fall = 2 }";
    format!(
        "{}\n{}",
        switch_tests::fleet::blue_green("web", &format!("{VIP}:80"), health, backend),
        // The same backends on an IPv6 VIP, announced by the same hosts.
        switch_tests::fleet::blue_green("web6", &format!("[{VIP6}]:80"), health, backend6)
    )
}

fn wait(stop: &AtomicBool, secs: f64) -> Result<()> {
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < secs {
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn line(d: &Daemon) -> String {
    d.status("web")
        .map(|st| {
            format!(
                "leader {}, weights blue={} green={}, {}",
                st["fleet"]["leader"].as_str().unwrap_or("none"),
                st["pools"][0]["weight"],
                st["pools"][1]["weight"],
                st["strategy"].as_str().unwrap_or("")
            )
        })
        .unwrap_or_else(|e| format!("({e})"))
}

pub fn run(phase_secs: u64, clients: usize, chart_path: &Path, stop: &AtomicBool) -> Result<()> {
    let lab = BgpLab::new(3)?;
    lab.start_backends()?;
    let mut ds = Vec::new();
    for i in 1..=3 {
        ds.push(lab.daemon(i, &services(), &[])?);
    }
    lab.wait_next_hops(VIP, 3, 30)?;
    lab.wait_next_hops(VIP6, 3, 30)?;
    println!(
        "== fleet lab: client -> BIRD router (ECMP) -> switch hosts sw-1, sw-2, sw-3 (BGP, etcd) -> nginx blue v1 (be1, be2), green v2 (be3, be4)\n   VIPs {VIP}:80 (web, the canary's) and [{VIP6}]:80 (web6), each announced by every host"
    );
    let v6_ok = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let v6_failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let log: Log = Arc::default();
    let hosts: HostLog = Arc::default();
    let load_stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for _ in 0..clients {
        let (log, halt, path) = (
            log.clone(),
            load_stop.clone(),
            format!("/run/netns/{}", lab.cli.name),
        );
        let (ok6, failed6) = (v6_ok.clone(), v6_failed.clone());
        threads.push(std::thread::spawn(move || {
            if switch_tests::enter(&path).is_err() {
                return;
            }
            let (vip4, vip6) = (format!("{VIP}:80"), format!("[{VIP6}]:80"));
            let mut n = 0u64;
            while !halt.load(Ordering::Relaxed) {
                let r = request(&vip4);
                log.lock()
                    .unwrap()
                    .push((started.elapsed().as_secs_f64(), r));
                // Every fourth request also over IPv6.
                n += 1;
                if n.is_multiple_of(4) {
                    match request(&vip6) {
                        Ok(_) => ok6.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed6.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
        }));
    }
    // Each host's new flows, sampled from its own status.
    let sampler = {
        let (hosts, halt) = (hosts.clone(), load_stop.clone());
        let cmds: Vec<(std::path::PathBuf, std::path::PathBuf)> = ds
            .iter()
            .map(|d| {
                (
                    switch_tests::daemon::switch_bin().unwrap_or_default(),
                    d.api.clone(),
                )
            })
            .collect();
        std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                let counts = cmds
                    .iter()
                    .map(|(bin, api)| {
                        std::process::Command::new(bin)
                            .arg("--api")
                            .arg(api)
                            .args(["status", "web", "--json"])
                            .output()
                            .ok()
                            .and_then(|o| {
                                serde_json::from_slice::<serde_json::Value>(&o.stdout).ok()
                            })
                            .and_then(|v| v[0]["new_flows"].as_u64())
                            .unwrap_or(u64::MAX)
                    })
                    .collect();
                hosts
                    .lock()
                    .unwrap()
                    .push((started.elapsed().as_secs_f64(), counts));
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let mut phases: Vec<(String, f64)> = Vec::new();
    let mut phase = |name: &str| {
        if name != "end" {
            println!("\n=== {name}");
        }
        phases.push((name.to_string(), started.elapsed().as_secs_f64()));
    };
    let p = phase_secs as f64;
    let result = (|| -> Result<()> {
        phase("steady: three hosts share the traffic");
        wait(stop, p)?;
        println!("sw-2: {}", line(&ds[1]));
        phase("canary 10→30→60→100 to green v2, started on sw-2");
        let interval = format!("{}ms", (p * 1000.0) as u64);
        println!(
            "$ switch canary web --to green --steps 10,30,60,100 --interval {interval} --min-flows 10   (on sw-2)\n{}",
            ds[1].ok(&[
                "canary",
                "web",
                "--to",
                "green",
                "--steps",
                "10,30,60,100",
                "--interval",
                &interval,
                "--min-flows",
                "10"
            ])?
        );
        wait(stop, p * 1.2)?;
        println!("sw-3: {}", line(&ds[2]));
        phase("sw-1 lost mid-canary (link cut, daemon killed)");
        lab.lab.sws[0].exec("ip link set eth0 down")?;
        ds[0].kill9();
        lab.wait_next_hops(VIP, 2, 15)?;
        println!("router: sw-1 withdrawn; {}", line(&ds[2]));
        wait(stop, p * 1.5)?;
        println!("sw-3: {}", line(&ds[2]));
        phase("sw-1 back");
        lab.lab.sws[0].exec("ip link set eth0 up")?;
        ds[0].spawn()?;
        lab.wait_next_hops(VIP, 3, 30)?;
        println!("router: three next hops again; sw-1: {}", line(&ds[0]));
        let t = Instant::now();
        while !ds[2]
            .status("web")
            .map(|st| st["phase"] == "succeeded")
            .unwrap_or(false)
        {
            if t.elapsed() > Duration::from_secs(60) {
                bail!("the canary did not finish");
            }
            wait(stop, 0.5)?;
        }
        println!("sw-3: {}", line(&ds[2]));
        wait(stop, p)?;
        phase("end");
        Ok(())
    })();
    load_stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let _ = sampler.join();
    result?;
    println!(
        "\n$ switch history web   (any host: the fleet's history)\n{}",
        ds[2].ok(&["history", "web"])?
    );
    let log = std::mem::take(&mut *log.lock().unwrap());
    summary(&log, &phases);
    println!(
        "IPv6 VIP [{VIP6}]:80 through the same hosts, all phases: {} requests, {} failed",
        v6_ok.load(Ordering::Relaxed) + v6_failed.load(Ordering::Relaxed),
        v6_failed.load(Ordering::Relaxed)
    );
    let hosts = std::mem::take(&mut *hosts.lock().unwrap());
    chart(&hosts, &phases, chart_path)?;
    println!(
        "chart of each host's share of new connections: {}",
        chart_path.display()
    );
    drop(ds);
    drop(lab);
    println!("demo: removed namespaces, daemons, BIRD, etcd, nginx and pins");
    Ok(())
}

fn summary(log: &[(f64, Result<&'static str, &'static str>)], phases: &[(String, f64)]) {
    println!("\n== summary: requests per version per phase");
    println!(
        "{:<52} {:>8} {:>9} {:>8}",
        "phase", "blue-v1", "green-v2", "failed"
    );
    let mut failed_all = 0;
    for w in phases.windows(2) {
        let (name, start, end) = (&w[0].0, w[0].1, w[1].1);
        let mut n: BTreeMap<&str, u64> = BTreeMap::new();
        let mut failed = 0;
        for (_, r) in log.iter().filter(|(t, _)| *t >= start && *t < end) {
            match r {
                Ok(v) => *n.entry(v).or_default() += 1,
                Err(_) => failed += 1,
            }
        }
        failed_all += failed;
        println!(
            "{:<52} {:>8} {:>9} {:>8}",
            name,
            n.get("blue-v1").unwrap_or(&0),
            n.get("green-v2").unwrap_or(&0),
            failed
        );
    }
    println!("total requests {}; failed {failed_all}", log.len());
}

fn chart(samples: &[(f64, Vec<u64>)], phases: &[(String, f64)], path: &Path) -> Result<()> {
    use plotters::style::RGBColor;
    let end = phases.last().map(|p| p.1).unwrap_or(1.0);
    // Each host's share of the new connections between two samples (a
    // host that did not answer — its daemon down — counts as none).
    let mut series: Vec<Vec<(f64, f64)>> = vec![vec![]; 3];
    for w in samples.windows(2) {
        let (a, b) = (&w[0].1, &w[1].1);
        let delta: Vec<u64> = (0..3)
            .map(|i| match (a.get(i), b.get(i)) {
                (Some(&x), Some(&y)) if x != u64::MAX && y != u64::MAX => y.saturating_sub(x),
                _ => 0,
            })
            .collect();
        let total: u64 = delta.iter().sum();
        if total == 0 {
            continue;
        }
        for i in 0..3 {
            series[i].push((w[1].0, 100.0 * delta[i] as f64 / total as f64));
        }
    }
    let colors = [
        RGBColor(30, 90, 200),
        RGBColor(30, 160, 60),
        RGBColor(220, 120, 20),
    ];
    let lines = series
        .into_iter()
        .enumerate()
        .map(|(i, s)| (format!("sw-{}", i + 1), colors[i], s))
        .collect();
    let marks: Vec<(String, f64)> = phases
        .iter()
        .filter(|p| p.0 != "end")
        .map(|(name, t)| {
            let label = name.split(':').next().unwrap_or("");
            (label.split(" to ").next().unwrap_or("").to_string(), *t)
        })
        .collect();
    crate::chart::timeline(
        path,
        "switch fleet demo: each host's share of new connections (ECMP)",
        "% of new connections",
        end,
        lines,
        &marks,
    )
}
