//! `cargo xtask demo`: a self-contained lab in network namespaces: clients,
//! the switch host running `switch daemon`, and pools of real nginx servers
//! that answer with their version. Under continuous client load it runs a
//! blue-green flip and a rollback, a rolling replacement of the blue pool,
//! a canary 1→5→25→50→100 with gates, a shadow of a broken version (found
//! before any user sees it), and a canary of a broken version
//! that the gates roll back. It shows the live view as it goes, ends with a
//! summary table and writes a PNG chart of each version's share of traffic.
//! Every namespace, process and pin it made is removed at the end, also on
//! Ctrl-C or failure.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use switch_tests::{daemon::Daemon, lab::Lab, traffic::add_backend_addrs};

static STOP: AtomicBool = AtomicBool::new(false);

#[derive(Parser)]
#[command(about = "switch demo: deployments under load in network namespaces")]
struct Args {
    /// Seconds each phase runs (the canary's steps share one phase).
    #[arg(long, default_value_t = 4)]
    phase_secs: u64,
    /// Concurrent client threads.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Where the chart goes (default: switch-demo.png, or
    /// switch-demo-fleet.png with --fleet).
    #[arg(long)]
    chart: Option<PathBuf>,
    /// The fleet demo: a BGP router, three switch hosts agreeing through
    /// etcd, a canary driven from one host and a host lost mid-canary.
    #[arg(long)]
    fleet: bool,
}

/// (version, addresses): v1 blue, v1.1 its replacements, v2 green, v3 broken.
fn fleet() -> Vec<(&'static str, Vec<SocketAddr>)> {
    let a = |i: u8| -> SocketAddr { format!("198.18.1.{i}:8080").parse().unwrap() };
    vec![
        ("blue-v1", vec![a(11), a(12)]),
        ("blue-v1.1", vec![a(21), a(22)]),
        ("green-v2", vec![a(13), a(14)]),
        ("broken-v3", vec![a(31), a(32)]),
    ]
}

const VIP: &str = "198.18.10.10:80";

fn nginx_config(dir: &std::path::Path) -> String {
    let mut servers = String::new();
    for (version, addrs) in fleet()
        .into_iter()
        .filter(|(v, _)| !v.starts_with("broken"))
    {
        for a in addrs {
            servers.push_str(&format!(
                "  server {{\n    listen {a};\n    location = /healthz {{ return 200 \"ok\\n\"; }}\n    location / {{ return 200 \"{version} from {a}\\n\"; }}\n  }}\n"
            ));
        }
    }
    let d = dir.display();
    format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\ndaemon on;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  keepalive_timeout 0;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  default_type text/plain;\n{servers}}}\n"
    )
}

fn service_config() -> String {
    let list = |v: &str| {
        fleet()
            .into_iter()
            .find(|(n, _)| *n == v)
            .map(|(_, a)| {
                a.iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    format!(
        r#"[[service]]
name = "web"
vip = "{VIP}"
protocol = "tcp"
health = {{ kind = "http", path = "/healthz", interval = "250ms", timeout = "200ms", rise = 2, fall = 2 }}
pools = [
  {{ name = "blue",   weight = 100, backends = [{}] }},
  {{ name = "green",  weight = 0,   backends = [{}] }},
  {{ name = "broken", weight = 0,   backends = [{}] }},
]
"#,
        list("blue-v1"),
        list("green-v2"),
        list("broken-v3")
    )
}

/// The broken version: passes its health checks, but resets every real
/// request (a crash under load), which the canary's RST gate sees.
fn broken_servers(lab: &Lab) -> Result<()> {
    let addrs = fleet()
        .into_iter()
        .find(|(v, _)| v.starts_with("broken"))
        .map(|(_, a)| a)
        .unwrap_or_default();
    lab.be.run(move || -> Result<()> {
        for a in addrs {
            let l = std::net::TcpListener::bind(a)?;
            std::thread::spawn(move || {
                for c in l.incoming() {
                    let Ok(mut c) = c else { continue };
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 512];
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let n = c.read(&mut buf).unwrap_or(0);
                        if buf[..n].starts_with(b"GET /healthz") {
                            let _ =
                                c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
                            return;
                        }
                        // The close sends an RST.
                        switch_tests::traffic::reset_on_close(&c);
                    });
                }
            });
        }
        Ok(())
    })?
}

/// One request on a new connection: the version that answered, or why not.
fn request() -> Result<String, &'static str> {
    let body = switch_tests::http::get_body(VIP.parse().unwrap(), Duration::from_secs(2))?;
    Ok(body.split_whitespace().next().unwrap_or("?").to_string())
}

/// (time since start, answer) for every request.
type Log = Arc<Mutex<Vec<(f64, Result<String, &'static str>)>>>;

fn main() {
    let _ = ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: cleaning up");
        STOP.store(true, Ordering::SeqCst);
    });
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

/// Sleeps in small steps so Ctrl-C is noticed, printing the live view.
fn hold(d: &Daemon, secs: f64, until: impl Fn(&Daemon) -> bool) -> Result<()> {
    let t = Instant::now();
    let mut shown = Instant::now() - Duration::from_secs(10);
    while t.elapsed().as_secs_f64() < secs || !until(d) {
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        if t.elapsed().as_secs_f64() > secs + 60.0 {
            bail!("a strategy did not finish in time");
        }
        if shown.elapsed() >= Duration::from_millis(1000) {
            live_view(d);
            shown = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn live_view(d: &Daemon) {
    if let Ok(s) = d.ok(&["status", "web"]) {
        let lines: Vec<&str> = s
            .lines()
            .filter(|l| !l.trim_start().starts_with("packets by verdict"))
            .collect();
        println!("{}", lines.join("\n"));
    }
}

fn strategy_done(d: &Daemon, word: &str) -> bool {
    d.status("web")
        .ok()
        .and_then(|s| s["strategy"].as_str().map(|x| x.contains(word)))
        .unwrap_or(false)
}

fn run(args: Args) -> Result<()> {
    if args.fleet {
        let chart = args
            .chart
            .clone()
            .unwrap_or_else(|| PathBuf::from("switch-demo-fleet.png"));
        return switch_bench::demo_fleet::run(args.phase_secs, args.clients, &chart, &STOP);
    }
    let chart_path = args
        .chart
        .clone()
        .unwrap_or_else(|| PathBuf::from("switch-demo.png"));
    let lab = Lab::new()?;
    let dir = std::env::temp_dir().join(format!("switch-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _dir_guard = RemoveDir(dir.clone());
    let extra: Vec<SocketAddr> = fleet()
        .into_iter()
        .flat_map(|(_, a)| a)
        .filter(|a| {
            !(11..=14).contains(
                &a.ip()
                    .to_string()
                    .rsplit('.')
                    .next()
                    .unwrap()
                    .parse::<u8>()
                    .unwrap(),
            )
        })
        .collect();
    add_backend_addrs(&lab, &extra);
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_config(&dir))?;
    lab.be
        .exec(&format!("nginx -c {}", conf.display()))
        .context("starting nginx (installed by cargo xtask setup)")?;
    broken_servers(&lab)?;
    println!(
        "== lab: client {} -> switch {} -> backends {} (nginx: blue v1, green v2, broken v3)",
        lab.cli.name, lab.sw.name, lab.be.name
    );

    let d = Daemon::start(&lab, "demo", &service_config())?;
    // Wait for the first health checks.
    std::thread::sleep(Duration::from_millis(800));

    let started = Instant::now();
    let log: Log = Arc::default();
    let load_stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let (log, stop, path) = (
            log.clone(),
            load_stop.clone(),
            format!("/run/netns/{}", lab.cli.name),
        );
        clients.push(std::thread::spawn(move || {
            switch_tests::enter(&path).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let r = request();
                log.lock()
                    .unwrap()
                    .push((started.elapsed().as_secs_f64(), r));
            }
        }));
    }
    let mut phases: Vec<(String, f64)> = Vec::new();
    let mut phase = |name: &str| {
        if name != "end" {
            println!("\n=== {name}");
        }
        phases.push((name.to_string(), started.elapsed().as_secs_f64()));
    };
    let p = args.phase_secs as f64;
    let result = (|| -> Result<()> {
        phase("steady on blue v1");
        hold(&d, p / 2.0, |_| true)?;
        phase("blue-green flip to green v2");
        println!(
            "$ switch flip web --to green\n{}",
            d.ok(&["flip", "web", "--to", "green"])?
        );
        hold(&d, p, |_| true)?;
        phase("rollback to blue v1");
        println!("$ switch rollback web\n{}", d.ok(&["rollback", "web"])?);
        hold(&d, p / 2.0, |_| true)?;
        phase("rolling replacement of blue v1 by v1.1");
        let pairs: Vec<String> = fleet()[0]
            .1
            .iter()
            .zip(&fleet()[1].1)
            .map(|(o, n)| format!("{o}={n}"))
            .collect();
        let mut cmd = vec![
            "rolling",
            "web",
            "--pool",
            "blue",
            "--drain-timeout",
            "3s",
            "--min-healthy",
            "500ms",
            "--replace",
        ];
        cmd.extend(pairs.iter().map(String::as_str));
        println!("$ switch {}\n{}", cmd.join(" "), d.ok(&cmd)?);
        hold(&d, 1.0, |d| strategy_done(d, "succeeded"))?;
        phase("canary 1→5→25→50→100 to green v2");
        let interval = format!("{}ms", (p * 1000.0 / 4.0) as u64);
        println!(
            "$ switch canary web --to green --steps 1,5,25,50,100 --interval {interval}\n{}",
            d.ok(&[
                "canary",
                "web",
                "--to",
                "green",
                "--steps",
                "1,5,25,50,100",
                "--interval",
                &interval
            ])?
        );
        hold(&d, 1.0, |d| strategy_done(d, "succeeded"))?;
        hold(&d, p / 2.0, |_| true)?;
        phase("shadow of broken v3 (found broken, no user saw it)");
        println!(
            "$ switch shadow web --to broken --sample 20%\n{}",
            d.ok(&["shadow", "web", "--to", "broken", "--sample", "20%"])?
        );
        hold(&d, p / 2.0, |_| true)?;
        let st = d.status("web")?;
        let r = &st["shadow"]["report"];
        println!(
            "shadow report: {} connections replayed to broken v3: {} reset, {} refused, {} timed out; error rate {:.0}% (live: {:.0}%)",
            r["replayed"],
            r["reset"],
            r["refused"],
            r["timed_out"],
            r["shadow_error_rate"].as_f64().unwrap_or(0.0) * 100.0,
            r["live_error_rate"].as_f64().unwrap_or(0.0) * 100.0
        );
        match d.cli(&["canary", "web", "--to", "broken", "--after-shadow", "1s"])? {
            (false, why) => println!(
                "$ switch canary web --to broken --after-shadow 1s\nrefused: {}",
                why.trim()
            ),
            (true, _) => anyhow::bail!("a canary to a broken shadow started"),
        }
        println!(
            "$ switch shadow web --stop\n{}",
            d.ok(&["shadow", "web", "--stop"])?
        );
        phase("canary of broken v3 (rolled back by its RST gate)");
        println!(
            "$ switch canary web --to broken --steps 5,25,100 --interval 3s --min-flows 20\n{}",
            d.ok(&[
                "canary",
                "web",
                "--to",
                "broken",
                "--steps",
                "5,25,100",
                "--interval",
                "3s",
                "--min-flows",
                "20"
            ])?
        );
        hold(&d, 0.5, |d| strategy_done(d, "rolled back"))?;
        hold(&d, p / 2.0, |_| true)?;
        phase("end");
        Ok(())
    })();
    load_stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    result?;
    println!("\n$ switch history web\n{}", d.ok(&["history", "web"])?);
    let log = std::mem::take(&mut *log.lock().unwrap());
    summary(&log, &phases);
    chart(&log, &phases, &chart_path)?;
    println!(
        "chart of each version's share of requests: {}",
        chart_path.display()
    );
    drop(d);
    drop(lab);
    println!("demo: removed namespaces, daemon, nginx and pins");
    Ok(())
}

struct RemoveDir(PathBuf);
impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const VERSIONS: [&str; 4] = ["blue-v1", "blue-v1.1", "green-v2", "broken-v3"];

fn summary(log: &[(f64, Result<String, &'static str>)], phases: &[(String, f64)]) {
    println!("\n== summary: requests per version per phase");
    println!(
        "{:<48} {:>8} {:>9} {:>8} {:>9} {:>8} {:>7}",
        "phase", "blue-v1", "blue-v1.1", "green-v2", "broken-v3", "failed", "resets"
    );
    let (mut all_failed, mut all_resets) = (0, 0);
    for w in phases.windows(2) {
        let (name, start, end) = (&w[0].0, w[0].1, w[1].1);
        let mut n: BTreeMap<&str, u64> = BTreeMap::new();
        let (mut failed, mut resets) = (0, 0);
        for (t, r) in log.iter().filter(|(t, _)| *t >= start && *t < end) {
            let _ = t;
            match r {
                Ok(v) => {
                    *n.entry(VERSIONS.iter().find(|x| *x == v).copied().unwrap_or("?"))
                        .or_default() += 1
                }
                Err("reset") => {
                    failed += 1;
                    resets += 1
                }
                Err(_) => failed += 1,
            }
        }
        all_failed += failed;
        all_resets += resets;
        println!(
            "{:<48} {:>8} {:>9} {:>8} {:>9} {:>8} {:>7}",
            name,
            n.get("blue-v1").unwrap_or(&0),
            n.get("blue-v1.1").unwrap_or(&0),
            n.get("green-v2").unwrap_or(&0),
            n.get("broken-v3").unwrap_or(&0),
            failed,
            resets
        );
    }
    println!(
        "total requests {}; failed {all_failed}, of which connection resets {all_resets}",
        log.len()
    );
    if all_failed > 0 {
        println!(
            "(failures are requests the broken version reset before its canary was rolled back)"
        );
    }
}

fn chart(
    log: &[(f64, Result<String, &'static str>)],
    phases: &[(String, f64)],
    path: &std::path::Path,
) -> Result<()> {
    use plotters::style::RGBColor;
    let end = phases.last().map(|p| p.1).unwrap_or(1.0);
    let bin = 0.25;
    let bins = (end / bin).ceil() as usize + 1;
    let mut counts = vec![[0u32; 5]; bins];
    for (t, r) in log {
        let b = ((*t / bin) as usize).min(bins - 1);
        let k = match r {
            Ok(v) => VERSIONS.iter().position(|x| x == v).unwrap_or(4),
            Err(_) => 4,
        };
        counts[b][k] += 1;
    }
    let colors = [
        RGBColor(30, 90, 200),
        RGBColor(110, 170, 255),
        RGBColor(30, 160, 60),
        RGBColor(220, 40, 40),
        RGBColor(120, 120, 120),
    ];
    let names = ["blue v1", "blue v1.1", "green v2", "broken v3", "failed"];
    let lines = (0..5)
        .map(|k| {
            let points = counts
                .iter()
                .enumerate()
                .filter(|(_, c)| c.iter().sum::<u32>() > 0)
                .map(|(i, c)| {
                    (
                        i as f64 * bin,
                        100.0 * c[k] as f64 / c.iter().sum::<u32>() as f64,
                    )
                })
                .collect();
            (names[k].to_string(), colors[k], points)
        })
        .collect();
    let marks: Vec<(String, f64)> = phases
        .iter()
        .filter(|p| p.0 != "end")
        .map(|(name, t)| {
            let label = match name.split(' ').next().unwrap_or("") {
                "steady" => "steady",
                "blue-green" => "flip",
                "rollback" => "rollback",
                "rolling" => "rolling",
                "shadow" => "shadow",
                _ if name.contains("broken") => "broken canary",
                _ => "canary",
            };
            (label.to_string(), *t)
        })
        .collect();
    switch_bench::chart::timeline(
        path,
        "switch demo: share of requests by version",
        "% of requests",
        end,
        lines,
        &marks,
    )
}
