//! `cargo xtask bench`: per-packet cost of each path of the real XDP object
//! through BPF_PROG_TEST_RUN, next to the harness floor and a minimal
//! program measured in the same run.
//!
//! Every path runs `--runs` times with repeat = 1 on a fresh copy of its
//! input (with repeat > 1 a rewriting program would see its own output).
//! Runs are grouped in batches; the table gives the median batch mean and
//! the min–max over batches. Every run's verdict is checked, and every
//! 1,000th output is parsed and checked by an independent parser.

use std::{collections::BTreeSet, net::IpAddr, time::Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use switch_common::checksum;
use switch_tests::lab::Lab as Lab3;
use switch_tests::{
    ACK, L4, SYN, check,
    fixture::{Lab, backend, backend_mac, client, test_run, vip},
    frame,
};
use switch_user::{
    config::{BackendConfig, DaemonConfig, PoolConfig, Protocol, ServiceConfig},
    dataplane::{Capacity, Dataplane},
    programmer::Programmer,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

#[derive(Parser, Clone)]
struct Args {
    /// Runs per path.
    #[arg(long, default_value_t = 1_000_000)]
    runs: u32,
    /// Only the per-packet rows whose name contains this (profiling).
    #[arg(long)]
    only: Option<String>,
    /// Flow-table sizes for the established-flow rows (0 to skip).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1_000u32, 100_000, 1_000_000])]
    table_sizes: Vec<u32>,
    /// Write the report to this markdown file as well.
    #[arg(long)]
    write: Option<std::path::PathBuf>,
    /// Forwarding rate: frames per measurement (0 skips the rate part).
    #[arg(long, default_value_t = 2_000_000)]
    rate_packets: u32,
    /// Forwarding rate: measurements per forwarder (median, min–max).
    #[arg(long, default_value_t = 3)]
    rate_runs: u32,
    /// Forwarding rate: distinct flows the generator cycles through.
    #[arg(long, default_value_t = 10_000)]
    flows: u32,
    /// Forwarding rate: frame size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Forwarding rate: frames per second to offer (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pps: u64,
    /// Forwarding rate: IPv6 instead of IPv4.
    #[arg(long)]
    v6: bool,
    /// Forwarding rate: UDP instead of TCP SYNs.
    #[arg(long)]
    udp: bool,
    /// Forwarding rate: how the generator sends (auto: the first the kernel
    /// accepts of live-frames, xdp-loop, sendmmsg, packet-ring).
    #[arg(long, default_value = "auto", value_parser = switch_tests::generator::Choice::parse)]
    send_path: switch_tests::generator::Choice,
    /// Real HTTP: seconds of wrk per forwarder (0 skips this part).
    #[arg(long, default_value_t = 5)]
    http_secs: u64,
    /// Real HTTP: wrk runs per forwarder.
    #[arg(long, default_value_t = 3)]
    http_runs: u32,
    /// Fleet: tries of each fleet measurement (convergence, fail-over; 0 skips).
    #[arg(long, default_value_t = 20)]
    fleet_tries: usize,
    /// Control plane: health-checked backends for the daemon's cost (0 skips this part).
    #[arg(long, default_value_t = 1000)]
    health_backends: u32,
    /// Control plane: seconds over which the daemon's CPU is measured.
    #[arg(long, default_value_t = 10)]
    health_secs: u64,
    /// Control plane: the largest selection table to time (10 .. 10000 backends).
    #[arg(long, default_value_t = 10_000)]
    table_max: u32,
    /// Control plane: daemon start-up with services of these many backend
    /// addresses (at most 16384).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1_000u32, 10_000])]
    startup_sizes: Vec<u32>,
    /// Starts per size (the median is reported).
    #[arg(long, default_value_t = 3)]
    startup_runs: usize,
}

struct Row {
    path: String,
    median: f64,
    min: f64,
    max: f64,
    verdict: &'static str,
}

/// `switch-bench generate`: the packet generator on its own, for operators:
/// TCP SYNs or UDP datagrams from many flows out of one interface.
#[derive(Parser)]
struct GenArgs {
    /// Interface to send from (in this network namespace).
    #[arg(long)]
    dev: String,
    /// Destination MAC: the switch host's interface on that link.
    #[arg(long, value_parser = parse_mac)]
    dst_mac: [u8; 6],
    /// Where to send, e.g. 198.18.10.10:80 (a VIP).
    #[arg(long)]
    to: std::net::SocketAddr,
    /// First source address; flows vary its low 16 bits.
    #[arg(long)]
    from: Option<IpAddr>,
    #[arg(long, default_value_t = 10_000)]
    flows: u32,
    /// Frame size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Frames per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pps: u64,
    /// Seconds to run (or --packets).
    #[arg(long, default_value_t = 0)]
    secs: u64,
    #[arg(long, default_value_t = 1_000_000)]
    packets: u32,
    /// UDP instead of TCP SYNs.
    #[arg(long)]
    udp: bool,
    /// How frames leave: auto (the first the kernel accepts of live-frames,
    /// xdp-loop, sendmmsg, packet-ring) or one of them.
    #[arg(long, default_value = "auto", value_parser = switch_tests::generator::Choice::parse)]
    send_path: switch_tests::generator::Choice,
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    switch_tests::parse_mac(s)
        .map_err(|_| format!("{s:?} is not a MAC address like 02:00:00:00:00:01"))
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("generate") {
        let g = GenArgs::parse_from(std::env::args().skip(1));
        let mut load = switch_tests::generator::Load::new(
            g.flows,
            g.size,
            g.to.is_ipv6(),
            g.udp,
            g.packets,
            g.pps,
        );
        load.to = g.to;
        if let Some(from) = g.from {
            load.from = from;
        }
        load.secs = g.secs;
        load.path = g.send_path;
        if let Err(e) = switch_tests::generator::run(&g.dev, g.dst_mac, &load) {
            eprintln!("generate failed: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let args = Args::parse();
    let _ = ONLY.set(args.only.clone());
    if let Err(e) = run(args) {
        eprintln!("bench failed: {e:#}");
        std::process::exit(1);
    }
}

fn service(v6: bool) -> ServiceConfig {
    ServiceConfig {
        name: if v6 { "web6" } else { "web" }.into(),
        vip: vip(v6, 80),
        protocol: Protocol::Tcp,
        mode: Default::default(),
        affinity: Default::default(),
        source: None,
        health: None,
        pools: vec![PoolConfig {
            name: "blue".into(),
            weight: 100,
            backends: (11..=14)
                .map(|i| BackendConfig::Addr(backend(v6, i, 8080)))
                .collect(),
        }],
        cohorts: vec![],
    }
}

/// Sets the source port of a TCP frame, keeping its checksum right.
fn set_sport(f: &mut [u8], l4: usize, port: u16) {
    let old = [f[l4], f[l4 + 1]];
    let new = port.to_be_bytes();
    let c = u16::from_be_bytes([f[l4 + 16], f[l4 + 17]]);
    f[l4 + 16..l4 + 18].copy_from_slice(&checksum::replace(c, &old, &new).to_be_bytes());
    f[l4..l4 + 2].copy_from_slice(&new);
}

/// Sets the last two bytes of the source address (IPv4: also the header checksum).
fn set_src_low(f: &mut [u8], v6: bool, l4: usize, low: u16) {
    let at = if v6 { 14 + 8 + 14 } else { 14 + 12 + 2 };
    let old = [f[at], f[at + 1]];
    let new = low.to_be_bytes();
    if !v6 {
        let c = u16::from_be_bytes([f[24], f[25]]);
        f[24..26].copy_from_slice(&checksum::replace(c, &old, &new).to_be_bytes());
    }
    let c = u16::from_be_bytes([f[l4 + 16], f[l4 + 17]]);
    f[l4 + 16..l4 + 18].copy_from_slice(&checksum::replace(c, &old, &new).to_be_bytes());
    f[at..at + 2].copy_from_slice(&new);
}

/// New flows counted by every service so far.
fn new_flows(dp: &Dataplane) -> Result<u64> {
    let mut n = 0;
    for (_, svc) in dp.services()? {
        n += dp.service_stats(svc.id)?.new_flows;
    }
    Ok(n)
}

/// The timed established rows must have found every flow in the table: a
/// miss would time the new-flow path under the wrong name.
fn no_misses(dp: &Dataplane, before: u64, rows: &[Row]) -> Result<()> {
    let after = new_flows(dp)?;
    if after != before {
        bail!(
            "{}: {} flow-table misses during an established row",
            rows.last().map(|r| r.path.as_str()).unwrap_or("?"),
            after - before
        );
    }
    Ok(())
}

/// `--only`, for `time`.
static ONLY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Times `runs` runs; `next(i)` gives run i's input; `want` its verdict.
fn time(
    name: &str,
    prog: &aya::programs::Xdp,
    ifindex: u32,
    runs: u32,
    want: u32,
    mut next: impl FnMut(u32) -> Vec<u8>,
    mut verify: impl FnMut(&[u8]) -> Result<()>,
) -> Result<Row> {
    if ONLY
        .get()
        .and_then(|o| o.as_ref())
        .is_some_and(|o| !name.contains(o.as_str()))
    {
        return Ok(Row {
            path: name.to_string(),
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
            verdict: "skipped",
        });
    }
    let batch = (runs / 100).max(100);
    let mut means = Vec::new();
    let (mut sum, mut n) = (0u64, 0u32);
    let started = Instant::now();
    for i in 0..runs {
        let input = next(i);
        let r = test_run(prog, ifindex, &input)?;
        if r.verdict != want {
            bail!("{name}: run {i} gave verdict {} (want {want})", r.verdict);
        }
        if i % 1000 == 0 {
            verify(&r.out).map_err(|e| anyhow::anyhow!("{name}: run {i}: {e}"))?;
        }
        sum += r.duration_ns as u64;
        n += 1;
        if n == batch {
            means.push(sum as f64 / n as f64);
            (sum, n) = (0, 0);
        }
    }
    if means.is_empty() {
        means.push(sum as f64 / n.max(1) as f64);
    }
    means.sort_by(f64::total_cmp);
    eprintln!(
        "  {name}: {runs} runs in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(Row {
        path: name.into(),
        median: means[means.len() / 2],
        min: means[0],
        max: means[means.len() - 1],
        verdict: match want {
            XDP_PASS => "PASS",
            XDP_TX => "TX",
            _ => "REDIRECT",
        },
    })
}

/// Part 3: wrk against nginx backends, directly and through each forwarder.
fn http_report(args: &Args) -> Result<(String, Vec<(String, f64)>)> {
    use switch_tests::http::*;
    let lab = Lab3::new()?;
    let dir = std::env::temp_dir().join(format!("switch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    start_backends(&lab, &dir)?;
    let secs = args.http_secs;
    let conns = 32;
    let runs = args.http_runs.max(1);
    // Median run by requests/s, with the min and max of all runs.
    let median = |url: &str| -> Result<(WrkResult, f64, f64)> {
        let mut all = Vec::new();
        for _ in 0..runs {
            all.push(wrk(&lab, url, secs, conns)?);
        }
        all.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        let (lo, hi) = (all[0].rps, all[all.len() - 1].rps);
        Ok((all.swap_remove(all.len() / 2), lo, hi))
    };
    let mut rows: Vec<(&str, (WrkResult, f64, f64))> = Vec::new();
    settle();
    rows.push((
        "direct to one backend (no balancer)",
        median("http://198.18.1.11:8080/")?,
    ));
    let stop = start_switch(&lab, "198.18.10.10:80")?;
    settle();
    rows.push(("switch (XDP, nat)", median("http://198.18.10.10/")?));
    drop(stop);
    start_haproxy(&lab, &dir, "198.18.10.20:80")?;
    settle();
    rows.push(("HAProxy 2.6, TCP mode", median("http://198.18.10.20/")?));
    start_nginx_stream(&lab, &dir, "198.18.10.30:80")?;
    settle();
    rows.push(("nginx 1.22 stream", median("http://198.18.10.30/")?));
    let _ = std::fs::remove_dir_all(&dir);
    let direct = rows[0].1.0.rps;
    let mut out = format!(
        "wrk -t2 -c{conns} -d{secs}s (keep-alive) from the client namespace, {runs} runs per path (median by requests/s, min–max); nginx answering a short body on four backends; every process shares the same 2 cores.\n\n| path | requests/s (min–max) | p50 ms | p99 ms | errors | × direct |\n|---|---:|---:|---:|---:|---:|\n"
    );
    for (name, (r, lo, hi)) in &rows {
        out.push_str(&format!(
            "| {name} | {:.0} ({lo:.0}–{hi:.0}) | {:.2} | {:.2} | {} | {:.2} |\n",
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.rps / direct
        ));
        eprintln!("  {name}: {:.0} req/s", r.rps);
    }
    let bars = rows
        .iter()
        .map(|(n, (r, _, _))| (n.to_string(), r.rps))
        .collect();
    out.push_str(&shadow_cost(args)?);
    Ok((out, bars))
}

/// What a 10% shadow costs live traffic: the daemon with and without one,
/// same lab, same run (wrk with fresh connections, so sampled flows are
/// replayed all the time).
fn shadow_cost(args: &Args) -> Result<String> {
    use switch_tests::http::*;
    let lab = Lab3::new()?;
    let dir = std::env::temp_dir().join(format!("switch-bench-shadow-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The live pool as usual; the shadow pool at the lowest priority, as if
    // on hosts of its own (in production it never shares the live
    // backends' CPUs; here all share two cores).
    start_nginx_on(&lab, &dir, "live", &BACKENDS[..2], "")?;
    start_nginx_on(&lab, &dir, "shadow", &BACKENDS[2..], "nice -n 19")?;
    let config = format!(
        "[[service]]\nname = \"web\"\nvip = \"198.18.10.10:80\"\nprotocol = \"tcp\"\npools = [\n  {{ name = \"blue\", weight = 100, backends = [\"{}\", \"{}\"] }},\n  {{ name = \"green\", weight = 0, backends = [\"{}\", \"{}\"] }},\n]\n",
        BACKENDS[0], BACKENDS[1], BACKENDS[2], BACKENDS[3]
    );
    let d = switch_tests::daemon::Daemon::start(&lab, "bench-shadow", &config)?;
    let secs = args.http_secs;
    let runs = args.http_runs.max(1);
    let conns = 32;
    // Connection: close: every request is a new connection, 10% of them
    // sampled and replayed.
    let run_wrk = |lab: &Lab3| {
        wrk_with(
            lab,
            "http://198.18.10.10/",
            secs,
            conns,
            "-H 'Connection: close'",
        )
    };
    let median = |lab: &Lab3| -> Result<WrkResult> {
        let mut all = Vec::new();
        for _ in 0..runs {
            all.push(run_wrk(lab)?);
        }
        all.sort_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms));
        Ok(all.swap_remove(all.len() / 2))
    };
    settle();
    let without = median(&lab)?;
    d.ok(&["shadow", "web", "--to", "green", "--sample", "10%"])?;
    settle();
    let with = median(&lab)?;
    let st = d.status("web")?;
    let replayed = st["shadow"]["report"]["replayed"].as_u64().unwrap_or(0);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "  shadow: p99 {:.2} -> {:.2} ms, {:.0} -> {:.0} req/s",
        without.p99_ms, with.p99_ms, without.rps, with.rps
    );
    Ok(format!(
        "\n### What a shadow costs live traffic\n\nThe daemon, wrk -t2 -c{conns} -d{secs}s with `Connection: close` (every request a new connection), {runs} runs each (median by p99), without a shadow and then with a 10% shadow to the other pool ({replayed} connections replayed during the runs). The daemon replays at the lowest CPU priority; the shadow pool's nginx runs at the lowest priority too, standing in for hosts of its own (on this machine every process shares two cores).\n\n| live traffic | requests/s | p50 ms | p99 ms |\n|---|---:|---:|---:|\n| no shadow | {:.0} | {:.2} | {:.2} |\n| 10% shadow | {:.0} ({:+.1}%) | {:.2} | {:.2} ({:+.1}%) |\n",
        without.rps,
        without.p50_ms,
        without.p99_ms,
        with.rps,
        (with.rps / without.rps - 1.0) * 100.0,
        with.p50_ms,
        with.p99_ms,
        (with.p99_ms / without.p99_ms - 1.0) * 100.0
    ))
}

/// Part 4: how fast the control plane acts and what the daemon costs.
/// Fleet: command → every host applied, and leader fail-over, with a real
/// etcd and three daemons in namespaces (see tests/src/fleet.rs).
fn fleet_report(tries: usize) -> Result<String> {
    use switch_tests::fleet::{FleetLab, SEED, backend, measure_convergence, measure_failover};
    let lab = FleetLab::new(3)?;
    lab.start_backends(&[1, 2, 3, 4])?;
    let svc = switch_tests::fleet::blue_green(
        "web",
        &format!("{}:80", switch_tests::fleet::VIP),
        "",
        backend,
    );
    let mut ds = Vec::new();
    for i in 1..=3 {
        ds.push(lab.daemon(i, &svc, "lease = \"2s\"", SEED)?);
    }
    let t = std::time::Instant::now();
    while ds
        .iter()
        .any(|d| switch_tests::fleet::leader(d).ok().flatten().is_none())
    {
        if t.elapsed() > std::time::Duration::from_secs(20) {
            bail!("the fleet did not form");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let conv = measure_convergence(&ds, tries)?;
    let fail = measure_failover(&mut ds, tries)?;
    let stats = |v: &[std::time::Duration]| {
        let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        (ms[ms.len() / 2], ms[ms.len() - 1], ms[0])
    };
    let (cm, cx, cn) = stats(&conv);
    let (fm, fx, fnn) = stats(&fail);
    Ok(format!(
        "Three daemons in their own namespaces (real XDP), one etcd {} member, lease 2 s; {tries} tries each.\n\n\
         | measurement | median | max | min |\n|---|---|---|---|\n\
         | command on one host → every host applied (`switch weights`, polled through `status`) | {cm:.0} ms | {cx:.0} ms | {cn:.0} ms |\n\
         | `kill -9` of the leader → another host leads | {fm:.0} ms | {fx:.0} ms | {fnn:.0} ms |\n\n\
         Fail-over is bounded by the lease (the dead leader's key lives until etcd expires it) plus the watch that reports it and one campaign; convergence by the watch's latency plus a table build per host.\n",
        std::process::Command::new("etcd")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s
                .lines()
                .next()
                .map(|l| l.trim_start_matches("etcd Version: ").to_string()))
            .unwrap_or_default()
    ))
}

fn control_report(args: &Args) -> Result<String> {
    use switch_common::{hash::backend_ident, table};
    let mut out = String::from(
        "Selection-table build (userspace, one pool of N equal backends and one of N/10; median of 11):\n\n| backends | build ms |\n|---:|---:|\n",
    );
    for n in [10u32, 100, 1_000, 10_000]
        .into_iter()
        .filter(|n| *n <= args.table_max)
    {
        let mk = |count: u32, base: u32| -> Vec<table::BackendSpec> {
            (0..count)
                .map(|i| {
                    let ip = (0xc612_0000u32 + base + i).to_be_bytes();
                    let mut a = [0u8; 16];
                    a[..4].copy_from_slice(&ip);
                    table::BackendSpec {
                        index: (base + i) as u16,
                        ident: backend_ident(1, &a, 80),
                        weight: 1,
                        eligible: true,
                    }
                })
                .collect()
        };
        let pools = vec![
            table::PoolSpec {
                weight: 90,
                backends: mk(n, 0),
            },
            table::PoolSpec {
                weight: 10,
                backends: mk((n / 10).max(1), 20_000),
            },
        ];
        let mut times = Vec::new();
        for _ in 0..11 {
            let t = Instant::now();
            std::hint::black_box(table::build(1, &pools));
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        out.push_str(&format!("| {n} | {:.1} |\n", times[5]));
        eprintln!("  table of {n} backends: {:.1} ms", times[5]);
    }
    out.push_str(&flip_latency()?);
    out.push_str(&startup_time(
        &args.startup_sizes,
        args.startup_runs.max(1),
    )?);
    out.push_str(&health_cost(args.health_backends, args.health_secs.max(1))?);
    Ok(out)
}

/// From `switch daemon` starting to its API answering, with a service of
/// `sizes` backend addresses (next hops resolved before it is ready);
/// median of `runs` starts, each in a fresh lab.
fn startup_time(sizes: &[u32], runs: usize) -> Result<String> {
    use switch_tests::{daemon::Daemon, scale};
    let mut out = format!(
        "\nDaemon start-up to a ready API (maps written, program attached, next hops resolved; median of {runs}):\n\n| backend addresses | ready ms | first status ms |\n|---:|---:|---:|\n"
    );
    for &n in sizes {
        let mut ready = Vec::new();
        let mut answered = Vec::new();
        for _ in 0..runs {
            let lab = Lab3::new()?;
            let addrs = scale::many_backends(&lab, n)?;
            let t = Instant::now();
            let d = Daemon::start(&lab, "benchstart", &scale::big_service(&addrs))?;
            ready.push(t.elapsed().as_secs_f64() * 1000.0);
            d.status("big")?;
            answered.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ready.sort_by(f64::total_cmp);
        answered.sort_by(f64::total_cmp);
        out.push_str(&format!(
            "| {n} | {:.0} | {:.0} |\n",
            ready[runs / 2],
            answered[runs / 2]
        ));
        eprintln!(
            "  start-up with {n} backends: ready in {:.0} ms",
            ready[runs / 2]
        );
    }
    Ok(out)
}

/// From `switch flip` returning to the first new connection answered by
/// the new pool, with a client opening connections back to back.
fn flip_latency() -> Result<String> {
    use switch_tests::{
        daemon::Daemon,
        traffic::{ask_once, line_servers},
    };
    let lab = Lab3::new()?;
    line_servers(
        &lab,
        (1..=4).map(|i| Lab3::backend(false, i, 8080)).collect(),
    );
    let d = Daemon::start(&lab, "benchflip", FLIP_SERVICE)?;
    let vip: std::net::SocketAddr = "198.18.10.10:80".parse()?;
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, String)>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (l, st, path) = (
        log.clone(),
        stop.clone(),
        format!("/run/netns/{}", lab.cli.name),
    );
    let client = std::thread::spawn(move || {
        switch_tests::enter(&path).unwrap();
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(who) = ask_once(vip, None) {
                l.lock().unwrap().push((Instant::now(), who));
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut lat = Vec::new();
    for i in 0..20 {
        let to_green = i % 2 == 0;
        d.ok(&[
            "flip",
            "web",
            "--to",
            if to_green { "green" } else { "blue" },
        ])?;
        let back = Instant::now();
        let t = Instant::now();
        loop {
            let hit = log
                .lock()
                .unwrap()
                .iter()
                .find(|(at, who)| {
                    *at >= back
                        && (who.ends_with(".13:8080") || who.ends_with(".14:8080")) == to_green
                })
                .map(|(at, _)| *at);
            if let Some(at) = hit {
                lat.push(at.duration_since(back).as_secs_f64() * 1000.0);
                break;
            }
            if t.elapsed().as_secs() > 5 {
                bail!("no connection reached the new pool within 5 s of a flip");
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    client
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))?;
    lat.sort_by(f64::total_cmp);
    eprintln!(
        "  flip to first new flow: median {:.2} ms",
        lat[lat.len() / 2]
    );
    Ok(format!(
        "\n`switch flip` returned → first new connection answered by the new pool, 20 flips, a client opening connections back to back: median {:.2} ms, min {:.2} ms, max {:.2} ms (this includes the connection's own round trip).\n",
        lat[lat.len() / 2],
        lat[0],
        lat[lat.len() - 1]
    ))
}

const FLIP_SERVICE: &str = r#"
[[service]]
name = "web"
vip = "198.18.10.10:80"
protocol = "tcp"
pools = [
  { name = "blue",  weight = 100, backends = ["198.18.1.11:8080", "198.18.1.12:8080"] },
  { name = "green", weight = 0,   backends = ["198.18.1.13:8080", "198.18.1.14:8080"] },
]
"#;

/// The daemon's CPU and memory while TCP-checking `n` backends every second.
fn health_cost(n: u32, secs: u64) -> Result<String> {
    use switch_tests::daemon::Daemon;
    let lab = Lab3::new()?;
    let mut batch = String::new();
    let addrs: Vec<String> = (0..n)
        .map(|i| format!("198.18.{}.{}", 4 + i / 250, 1 + i % 250))
        .collect();
    for a in &addrs {
        batch.push_str(&format!("addr add {a}/16 dev be0\n"));
    }
    let file = std::env::temp_dir().join(format!("switch-bench-addrs-{}", std::process::id()));
    std::fs::write(&file, batch)?;
    lab.be.exec(&format!("ip -batch {}", file.display()))?;
    let _ = std::fs::remove_file(&file);
    lab.sw
        .exec("ip route add 198.18.0.0/16 dev sw1 2>/dev/null || true")?;
    lab.be.run(|| {
        let l = std::net::TcpListener::bind("0.0.0.0:9000").unwrap();
        std::thread::spawn(move || {
            for c in l.incoming() {
                drop(c)
            }
        });
    })?;
    let backends = addrs
        .iter()
        .map(|a| format!("\"{a}:9000\""))
        .collect::<Vec<_>>()
        .join(", ");
    let svc = format!(
        "[[service]]\nname = \"many\"\nvip = \"198.18.10.50:9000\"\nprotocol = \"tcp\"\nhealth = {{ kind = \"tcp\", interval = \"1s\", timeout = \"500ms\", rise = 2, fall = 2 }}\npools = [ {{ name = \"p\", weight = 1, backends = [{backends}] }} ]\n"
    );
    let d = Daemon::start(&lab, "benchhealth", &svc)?;
    std::thread::sleep(std::time::Duration::from_secs(secs.min(3)));
    let ticks = |d: &Daemon| -> Result<u64> {
        let pid = d.child.as_ref().context("daemon")?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .map(|x| x.1)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
    };
    let (t0, c0) = (Instant::now(), ticks(&d)?);
    std::thread::sleep(std::time::Duration::from_secs(secs));
    let (secs, c1) = (t0.elapsed().as_secs_f64(), ticks(&d)?);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (c1 - c0) as f64 / hz / secs * 100.0;
    let rss = d.rss_kib()?;
    let st = d.status("many")?;
    let healthy = st["pools"][0]["backends"]
        .as_array()
        .map(|b| b.iter().filter(|x| x["healthy"] == true).count())
        .unwrap_or(0);
    eprintln!("  health checks of {n} backends: {cpu:.1}% CPU, {rss} KiB");
    Ok(format!(
        "\nDaemon while TCP-checking {n} backends every second ({healthy} healthy), over {secs:.0} s: {cpu:.1}% of one core, {:.1} MiB resident.\n",
        rss as f64 / 1024.0
    ))
}

/// Part 2: frames offered by the generator through each forwarder,
/// counted on the far side. First the generator alone on every send path
/// the kernel accepts (so the choice is measured, and the ceiling row can
/// be seen to be the path's limit, not the generator's), then every
/// forwarder on the chosen path.
fn rate_report(args: &Args) -> Result<(String, Vec<(String, f64)>)> {
    use switch_tests::rate::{Choice, Forwarder, Load, RateLab, RateResult, SendPath, measure};
    let lab = RateLab::new()?;
    let mut load = Load::new(
        args.flows,
        args.size,
        args.v6,
        args.udp,
        args.rate_packets,
        args.pps,
    );
    load.path = args.send_path;
    let median = |f: Forwarder, load: &Load| -> Result<(RateResult, f64, f64)> {
        let mut runs = Vec::new();
        for _ in 0..args.rate_runs.max(1) {
            runs.push(measure(&lab, f, load)?);
        }
        runs.sort_by(|a, b| a.delivered_pps.total_cmp(&b.delivered_pps));
        let (lo, hi) = (runs[0].delivered_pps, runs[runs.len() - 1].delivered_pps);
        Ok((runs.swap_remove(runs.len() / 2), lo, hi))
    };
    // The generator on its own, path by path.
    let mut alone =
        String::from("| send path | generator alone, Mpps delivered (min–max) |\n|---|---:|\n");
    let paths = match args.send_path {
        Choice::Auto => SendPath::ALL.to_vec(),
        Choice::Only(p) => vec![p],
    };
    for p in paths {
        let mut l = load.clone();
        l.path = Choice::Only(p);
        match median(Forwarder::Alone, &l) {
            Ok((m, lo, hi)) => {
                eprintln!("  generator alone, {p}: {:.2} Mpps", m.delivered_pps / 1e6);
                alone.push_str(&format!(
                    "| {p} | {:.2} ({:.2}–{:.2}) |\n",
                    m.delivered_pps / 1e6,
                    lo / 1e6,
                    hi / 1e6
                ));
            }
            Err(e) => alone.push_str(&format!("| {p} | refused: {} |\n", one_line(&e))),
        }
    }
    let mut rows = Vec::new();
    for f in [
        Forwarder::Alone,
        Forwarder::Redirect,
        Forwarder::Switch,
        Forwarder::Nftables,
    ] {
        let (mid, lo, hi) = median(f, &load)?;
        eprintln!(
            "  {}: {:.2} Mpps delivered ({})",
            f.name(),
            mid.delivered_pps / 1e6,
            mid.path
        );
        rows.push((f, mid, lo, hi));
    }
    let path = rows[0].1.path;
    let ceiling = rows[1].1.delivered_pps;
    let mut out = format!(
        "{} frames of {} bytes ({} {}, {} flows) per measurement from the generator on one veth, sent by **{path}** (the first send path this kernel accepted), through the forwarder in the switch namespace, counted by an XDP program on the far veth; median of {} measurements (min–max). On this 2-core VM the generator, the forwarder and the sink share the cores, so \"offered\" is what the whole path accepted. HAProxy is not in this table: a proxy terminates TCP, so a flood of SYNs never reaches the backends to be counted; it is compared on real connections in the next section.\n\nWhat each send path offers on its own (the sink on the switch's own interface, no forwarder):\n\n{alone}\n",
        load.packets,
        load.size,
        if args.v6 { "IPv6" } else { "IPv4" },
        if load.udp { "UDP" } else { "TCP SYN" },
        load.flows,
        args.rate_runs.max(1)
    );
    out.push_str("| forwarder | offered Mpps | delivered Mpps (min–max) | loss | × ceiling |\n|---|---:|---:|---:|---:|\n");
    for (f, m, lo, hi) in &rows {
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} ({:.2}–{:.2}) | {:.1}% | {:.2} |\n",
            f.name(),
            m.offered_pps / 1e6,
            m.delivered_pps / 1e6,
            lo / 1e6,
            hi / 1e6,
            m.loss() * 100.0,
            m.delivered_pps / ceiling
        ));
    }
    if rows[0].1.delivered_pps < ceiling * 1.1 {
        out.push_str("\n**The generator alone is within 10% of the ceiling: on this path the rows below measure the generator as much as the forwarders.**\n");
    }
    let bars = rows
        .iter()
        .map(|(f, m, _, _)| (f.name().to_string(), m.delivered_pps / 1e6))
        .collect();
    Ok((out, bars))
}

/// An error as one line of a markdown table or paragraph.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace(['\n', '|'], " ")
}

/// Runs one part of the report after the per-packet table: a part that
/// fails is reported as failed, with its reason, and the others still run.
fn part<T: Default>(name: &str, f: impl FnOnce() -> Result<T>) -> (T, Option<String>) {
    match f() {
        Ok(v) => (v, None),
        Err(e) => {
            eprintln!("  {name} failed: {e:#}");
            (
                T::default(),
                Some(format!(
                    "**This part failed in this run**: {}\n",
                    one_line(&e)
                )),
            )
        }
    }
}

fn run(args: Args) -> Result<()> {
    let lab = Lab::new()?;
    let (c0, b0, c0_mac, b0_mac) = (lab.c0, lab.b0, lab.c0_mac, lab.b0_mac);
    let a = args.clone();
    let rows = lab.ns.run(move || -> Result<Vec<Row>> {
        let runs = a.runs;
        let max_flows = a.table_sizes.iter().copied().max().unwrap_or(0).max(65_536) * 2;
        // Room for every row's pins, SYNs' too: the new-flow rows measure
        // an insert, not an eviction (as Katran's figure does).
        let cap = Capacity {
            flows: max_flows,
            half_open: max_flows,
            ..Capacity::small()
        };
        let mut dp = Dataplane::load(None, cap)?;
        dp.add_device("c0")?;
        dp.add_device("b0")?;
        let mut p = Programmer::new(0x5eed, cap);
        p.init(&mut dp, &DaemonConfig::default())?;
        p.apply(&mut dp, &service(false), &BTreeSet::new())?;
        p.apply(&mut dp, &service(true), &BTreeSet::new())?;
        // Next hops cached as the daemon does it (the fast path).
        let cached = switch_user::daemon::cache_nexthops(&mut dp, &p)?;
        eprintln!("  {cached} backend next hops cached");
        // The reference programs live in their own object; the minimal one
        // looks up the same service entries as the switch.
        let mut reference = switch_tests::reference::Reference::load()?;
        for (k, v) in dp.services()? {
            reference.set_service(&k, &v)?;
        }
        let floor = switch_tests::fixture::share(reference.program("bench_floor")?)?;
        let minimal = switch_tests::fixture::share(reference.program("bench_minimal")?)?;
        let sw = switch_tests::fixture::share(dp.program()?)?;

        let syn = |v6: bool| {
            frame(
                [2; 6],
                c0_mac,
                client(v6),
                1024,
                vip(v6, 80).ip(),
                80,
                L4::Tcp { flags: SYN },
                b"",
            )
        };
        let ack = |v6: bool| {
            frame(
                [2; 6],
                c0_mac,
                client(v6),
                999,
                vip(v6, 80).ip(),
                80,
                L4::Tcp { flags: ACK },
                b"",
            )
        };
        let l4_off = |v6: bool| if v6 { 14 + 40 } else { 14 + 20 };
        let to_backend = |out: &[u8]| -> Result<()> {
            let s = check(out)?;
            if s.dport != 8080 {
                bail!("not rewritten to a backend: {s:?}");
            }
            Ok(())
        };
        let any = |_: &[u8]| Ok(());
        let mut rows = Vec::new();
        let v4syn = syn(false);
        rows.push(time(
            "floor (XDP_PASS only)",
            &floor,
            c0,
            runs,
            XDP_PASS,
            |_| v4syn.clone(),
            any,
        )?);
        rows.push(time(
            "minimal (parse + 1 lookup + XDP_TX)",
            &minimal,
            c0,
            runs,
            XDP_TX,
            |_| v4syn.clone(),
            any,
        )?);
        let other = frame(
            [2; 6],
            c0_mac,
            client(false),
            5555,
            "198.18.0.1".parse::<IpAddr>()?,
            22,
            L4::Tcp { flags: ACK },
            b"",
        );
        rows.push(time(
            "switch: non-VIP packet",
            &sw,
            c0,
            runs,
            XDP_PASS,
            |_| other.clone(),
            |o| {
                if o != other.as_slice() {
                    bail!("non-VIP packet was changed");
                }
                Ok(())
            },
        )?);
        for v6 in [false, true] {
            let fam = if v6 { "IPv6" } else { "IPv4" };
            let base = syn(v6);
            let l4 = l4_off(v6);
            rows.push(time(
                &format!("switch: new TCP flow, {fam}"),
                &sw,
                c0,
                runs,
                XDP_REDIRECT,
                |i| {
                    let mut f = base.clone();
                    set_src_low(&mut f, v6, l4, (i >> 16) as u16);
                    set_sport(&mut f, l4, i as u16);
                    f
                },
                to_backend,
            )?);
            let est = ack(v6);
            // A clean table, the flow in it, then only hits.
            dp.clear_flows()?;
            test_run(&sw, c0, &est)?;
            let misses = new_flows(&dp)?;
            rows.push(time(
                &format!("switch: established flow, {fam}"),
                &sw,
                c0,
                runs,
                XDP_REDIRECT,
                |_| est.clone(),
                to_backend,
            )?);
            no_misses(&dp, misses, &rows)?;
            dp.clear_flows()?;
        }
        // Replies: from a backend that has seen a flow.
        let s = check(&test_run(&sw, c0, &ack(false))?.out)?;
        let i = match s.dst {
            IpAddr::V4(a) => a.octets()[3],
            _ => 0,
        };
        let reply = frame(
            backend_mac(i),
            b0_mac,
            s.dst,
            8080,
            client(false),
            999,
            L4::Tcp { flags: ACK },
            b"",
        );
        rows.push(time(
            "switch: reply (nat return path), IPv4",
            &sw,
            b0,
            runs,
            XDP_REDIRECT,
            |_| reply.clone(),
            |o| {
                let s = check(o)?;
                if s.sport != 80 {
                    bail!("reply not rewritten to the VIP: {s:?}");
                }
                Ok(())
            },
        )?);
        // Established flows with the flow table holding N other flows.
        for &n in a.table_sizes.iter().filter(|n| **n > 0) {
            let base = frame(
                [2; 6],
                c0_mac,
                "198.19.0.0".parse::<IpAddr>()?,
                1,
                vip(false, 80).ip(),
                80,
                L4::Tcp { flags: ACK },
                b"",
            );
            let l4 = l4_off(false);
            dp.clear_flows()?;
            let t = Instant::now();
            for k in 0..n {
                let mut f = base.clone();
                set_src_low(&mut f, false, l4, (k >> 16) as u16 + 1);
                set_sport(&mut f, l4, k as u16);
                test_run(&sw, c0, &f)?;
            }
            eprintln!(
                "  filled the flow table with {n} flows in {:.1}s",
                t.elapsed().as_secs_f64()
            );
            let misses = new_flows(&dp)?;
            rows.push(time(
                &format!("switch: established flows, {n} in table"),
                &sw,
                c0,
                runs,
                XDP_REDIRECT,
                |i| {
                    let mut f = base.clone();
                    let k = i % n;
                    set_src_low(&mut f, false, l4, (k >> 16) as u16 + 1);
                    set_sport(&mut f, l4, k as u16);
                    f
                },
                to_backend,
            )?);
            no_misses(&dp, misses, &rows)?;
        }
        Ok(rows)
    })??;

    let minimal = rows
        .iter()
        .find(|r| r.path.starts_with("minimal"))
        .map(|r| r.median)
        .unwrap_or(1.0);
    let mut report = String::new();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    report.push_str(&format!(
        "Machine: {} ({} cores, {}), kernel {}, commit {commit}, {date}.\n\n",
        host.trim(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu,
        kernel.trim()
    ));
    report.push_str(&format!(
        "Per-packet cost, BPF_PROG_TEST_RUN, repeat = 1 on a fresh input, {} runs per path; ns per packet as the median of {} batch means (min–max over batches).\n\n",
        args.runs,
        (args.runs / (args.runs / 100).max(100)).max(1)
    ));
    report.push_str(
        "| path | verdict | ns/packet median | min–max | × minimal |\n|---|---|---:|---:|---:|\n",
    );
    for r in &rows {
        report.push_str(&format!(
            "| {} | {} | {:.0} | {:.0}–{:.0} | {:.2} |\n",
            r.path,
            r.verdict,
            r.median,
            r.min,
            r.max,
            r.median / minimal
        ));
    }
    println!("{report}");
    let mut failed = Vec::new();
    let mut note = |name: &str, f: Option<String>| {
        if f.is_some() {
            failed.push(name.to_string());
        }
        f.unwrap_or_default()
    };
    let ((rate, rate_bars), e) = part("forwarding rate", || {
        if args.rate_packets > 0 {
            rate_report(&args)
        } else {
            Ok(Default::default())
        }
    });
    let rate = note("forwarding rate", e) + &rate;
    println!("{rate}");
    let ((http, http_bars), e) = part("HTTP", || {
        if args.http_secs > 0 {
            http_report(&args)
        } else {
            Ok(Default::default())
        }
    });
    let http = note("HTTP", e) + &http;
    println!("{http}");
    let (control, e) = part("control plane", || {
        if args.health_backends > 0 {
            control_report(&args)
        } else {
            Ok(String::new())
        }
    });
    let control = note("control plane", e) + &control;
    println!("{control}");
    let (fleet, e) = part("fleet", || {
        if args.fleet_tries > 0 {
            fleet_report(args.fleet_tries)
        } else {
            Ok(String::new())
        }
    });
    let fleet = note("fleet", e) + &fleet;
    println!("{fleet}");
    if let Some(path) = args.write {
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        std::fs::create_dir_all(dir)?;
        let cost_bars: Vec<(String, f64)> =
            rows.iter().map(|r| (r.path.clone(), r.median)).collect();
        switch_bench::chart::bars(
            &dir.join("bench-cost.png"),
            "Per-packet cost (BPF_PROG_TEST_RUN)",
            "ns per packet",
            &cost_bars,
        )?;
        let mut charts = String::from("\n![per-packet cost](bench-cost.png)\n");
        if !rate_bars.is_empty() {
            switch_bench::chart::bars(
                &dir.join("bench-rate.png"),
                "Forwarding rate, same topology and run",
                "Mpps delivered",
                &rate_bars,
            )?;
            charts.push_str("![forwarding rate](bench-rate.png)\n");
        }
        if !http_bars.is_empty() {
            switch_bench::chart::bars(
                &dir.join("bench-http.png"),
                "HTTP through each path (wrk)",
                "requests/s",
                &http_bars,
            )?;
            charts.push_str("![HTTP requests per second](bench-http.png)\n");
        }
        // Hand-written notes (before/after, where the time goes) follow the
        // figures, so a new run keeps them.
        let notes = std::fs::read_to_string(dir.join("bench-notes.md"))
            .map(|n| format!("\n{n}"))
            .unwrap_or_default();
        let doc = format!(
            "# Benchmarks\n\nProduced by `cargo xtask bench`; every figure below comes from one run, next to the baselines of the same run.\n\n## Per-packet cost\n\n{report}\nThe floor is the cost of the test harness itself (a program that only returns XDP_PASS). \"minimal\" parses Ethernet and the IP/L4 headers, does one hash lookup and returns XDP_TX: the least any L4 balancer does. Each path's verdict was checked on every run and its output bytes parsed and checksum-verified on every 1,000th run.\n\n## Forwarding rate\n\n{rate}\n## Real TCP/HTTP\n\n{http}\n## Control plane\n\n{control}\n## Fleet\n\n{fleet}\n## Charts\n{charts}{notes}"
        );
        std::fs::create_dir_all(path.parent().unwrap_or(std::path::Path::new(".")))?;
        std::fs::write(&path, doc)?;
        eprintln!("wrote {}", path.display());
    }
    if !failed.is_empty() {
        bail!(
            "these parts of the report failed (the others ran): {}",
            failed.join(", ")
        );
    }
    Ok(())
}
