//! `switch`: the daemon and the operator's CLI in one binary.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::{Result, anyhow, bail};
use clap::{Parser, Subcommand};
use std::time::Duration;

use switch_user::{
    api::{BackendAction, Command, Response, ServiceStatus},
    config::ConfigFile,
    daemon, dataplane,
    strategy::{Gates, NoData, PromGate},
};

#[derive(Parser)]
#[command(
    name = "switch",
    version,
    about = "Zero-downtime L4 traffic switcher (XDP)"
)]
struct Cli {
    /// The daemon's API socket.
    #[arg(
        long,
        global = true,
        env = "SWITCH_API",
        default_value = "/run/switch/switch.sock"
    )]
    api: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: load or adopt the XDP program, serve the API.
    Daemon {
        #[arg(long, default_value = "/etc/switch/switch.toml")]
        config: PathBuf,
    },
    /// Apply a config file's services (declarative, idempotent).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Pools, weights, backend states and counters.
    Status {
        service: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Set pool weights now, e.g. `switch weights web blue=95 green=5`.
    Weights {
        service: String,
        #[arg(required = true, value_parser = parse_weight)]
        weights: Vec<(String, u32)>,
    },
    /// Send all new connections to one pool; established ones stay.
    Flip {
        service: String,
        #[arg(long)]
        to: String,
        /// Blue-green with a preview: only this source CIDR sees the new pool
        /// until `switch promote` (or --auto-promote).
        #[arg(long)]
        preview: Option<ipnet::IpNet>,
        /// With --preview: promote by itself after this long with a healthy
        /// new pool, e.g. 60s.
        #[arg(long, value_parser = parse_duration, requires = "preview")]
        auto_promote: Option<Duration>,
        /// After the flip, wait this long at most for the old pool's flows to
        /// end (shown in status; the old pool must stay up until then).
        #[arg(long, value_parser = parse_duration)]
        drain: Option<Duration>,
    },
    /// Move new connections to a pool in steps, checking gates at each.
    Canary {
        service: String,
        #[arg(long)]
        to: String,
        /// Percentages of new connections, rising, e.g. 1,5,25,50,100.
        #[arg(long, value_delimiter = ',', default_value = "1,5,25,50,100")]
        steps: Vec<u32>,
        /// How long each step is held, e.g. 30s.
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        interval: Duration,
        /// Roll back when more new-pool backends than this are unhealthy.
        #[arg(long, default_value_t = 0)]
        max_unhealthy: usize,
        /// Roll back when the new pool's RSTs per new connection exceed the
        /// old pool's by more than this (0..1).
        #[arg(long, default_value_t = 0.05)]
        max_rst_excess: f64,
        /// Roll back when the new pool leaves more connection attempts
        /// unanswered (no SYN-ACK) than the old one by more than this (0..1).
        #[arg(long, default_value_t = 0.10)]
        max_unanswered_excess: f64,
        /// New connections a step needs before the ratio gates can judge it;
        /// the step does not advance before (0: never wait).
        #[arg(long, default_value_t = 20)]
        min_flows: u64,
        /// Prometheus gate: the HTTP API to ask, e.g. http://127.0.0.1:9090.
        #[arg(long, requires_all = ["query", "max"])]
        prometheus: Option<String>,
        /// Prometheus gate: an instant query returning one number.
        #[arg(long, requires = "prometheus")]
        query: Option<String>,
        /// Prometheus gate: roll back when the value is above this.
        #[arg(long, requires = "prometheus")]
        max: Option<f64>,
        /// Prometheus gate: what no data (or a failed query) means.
        #[arg(long, value_enum, default_value = "hold")]
        on_no_data: NoDataArg,
        /// Prometheus gate: a bearer token for the query API.
        #[arg(long, env = "SWITCH_PROMETHEUS_TOKEN", hide_env_values = true)]
        prometheus_token: Option<String>,
        /// Start only after a shadow to the same pool has run this long
        /// within --max-shadow-error-excess, e.g. 5m.
        #[arg(long, value_parser = parse_duration)]
        after_shadow: Option<Duration>,
        /// With --after-shadow: how far the shadow's error rate may exceed
        /// the live pool's (0..1).
        #[arg(long, default_value_t = 0.01)]
        max_shadow_error_excess: f64,
    },
    /// Replace backends of a pool N at a time: drain, remove, add, wait healthy.
    Rolling {
        service: String,
        #[arg(long)]
        pool: String,
        /// OLD=NEW backend address pairs.
        #[arg(long, required = true, num_args = 1.., value_parser = parse_pair)]
        replace: Vec<(SocketAddr, SocketAddr)>,
        #[arg(long, default_value_t = 1)]
        max_unavailable: usize,
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        drain_timeout: Duration,
        /// How long a replacement must stay healthy before the next one.
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        min_healthy: Duration,
        /// Hold when a replacement is not healthy after this long.
        #[arg(long, value_parser = parse_duration, default_value = "60s")]
        progress_deadline: Duration,
        /// A replaced backend that is still healthy keeps its established
        /// connections until they end; with this, at most this long.
        #[arg(long, value_parser = parse_duration)]
        linger_limit: Option<Duration>,
    },
    /// Hold a running canary at its step.
    Pause { service: String },
    /// Continue a paused canary.
    Resume { service: String },
    /// Finish a canary or preview now: all new connections to the new pool.
    Promote { service: String },
    /// Stop the running strategy; a canary or preview goes back to the old pool.
    Abort { service: String },
    /// Undo the last flip or canary at once.
    Rollback { service: String },
    /// Live view of a service and its running strategy.
    Watch {
        service: String,
        /// Refresh interval.
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        every: Duration,
        /// Stop after this many refreshes (0: until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Add, remove, drain or undrain one backend.
    Backend {
        #[arg(value_enum)]
        action: Action,
        service: String,
        pool: String,
        addr: SocketAddr,
        #[arg(long)]
        weight: Option<u32>,
        /// remove: cut the backend's established connections now. Without
        /// it a healthy removed backend lingers until they end.
        #[arg(long)]
        now: bool,
        /// remove: cut them after this long at most.
        #[arg(long, value_parser = parse_duration, conflicts_with = "now")]
        linger_limit: Option<Duration>,
    },
    /// Every change of a service, with time and outcome.
    History {
        service: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop forwarding: remove the pinned program links and maps.
    Detach {
        #[arg(long, default_value = "/sys/fs/bpf/switch")]
        pin_dir: PathBuf,
        /// The daemon's state directory: its BGP speaker (if any) is stopped
        /// too, so the router stops sending here.
        #[arg(long, default_value = "/var/lib/switch")]
        state_dir: PathBuf,
    },
    /// This host in the fleet: `leave` withdraws its VIPs from BGP (the
    /// router sends new traffic to the other hosts; established flows here
    /// go on being forwarded), `join` announces them again.
    Fleet {
        #[arg(value_enum)]
        action: FleetAction,
    },
    /// Replay a sample of new connections to another pool and judge its
    /// answers; clients never see them. `--stop` ends it.
    Shadow {
        service: String,
        #[arg(long, required_unless_present = "stop")]
        to: Option<String>,
        /// Share of new connections, e.g. 10% (or 10).
        #[arg(long, value_parser = parse_percent, default_value = "10%")]
        sample: f64,
        /// End by itself after this long, e.g. 10m.
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Replays at once; past it, sampled connections are not replayed
        /// (counted).
        #[arg(long, default_value_t = 1000)]
        max_sessions: usize,
        /// Bytes a replay may hold back, e.g. 64KiB; past it the replay
        /// ends (counted).
        #[arg(long, value_parser = parse_size, default_value = "64KiB")]
        max_buffer: usize,
        #[arg(long, conflicts_with_all = ["to", "duration"])]
        stop: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum NoDataArg {
    Hold,
    Pass,
    Fail,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Action {
    Add,
    Remove,
    Drain,
    Undrain,
}

fn parse_weight(s: &str) -> Result<(String, u32), String> {
    let (pool, w) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected POOL=WEIGHT, e.g. green=5"))?;
    let w: u32 = w
        .parse()
        .map_err(|_| format!("{s:?}: weight {w:?} is not a whole number from 0 to 1000000"))?;
    if w > switch_user::config::MAX_WEIGHT {
        return Err(format!("{s:?}: weight {w} is above the maximum 1000000"));
    }
    Ok((pool.to_string(), w))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Daemon { .. }) {
        init_log();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr through `tracing`; `RUST_LOG` chooses what (default info).
fn init_log() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn simple(api: &std::path::Path, cmd: Command, service: &str, done: &str) -> Result<()> {
    send(api, cmd)?;
    println!("{service}: {done}");
    Ok(())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 30s or 2m: {e}"))
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage like 10%"))?;
    if !(v > 0.0 && v <= 100.0) {
        return Err(format!("{s:?}: a sample is above 0% and at most 100%"));
    }
    Ok(v)
}

fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, mul) = [
        ("KiB", 1024),
        ("MiB", 1 << 20),
        ("KB", 1000),
        ("MB", 1_000_000),
        ("B", 1),
    ]
    .iter()
    .find_map(|(suffix, m)| t.strip_suffix(suffix).map(|n| (n, *m)))
    .unwrap_or((t, 1));
    let n: usize = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 64KiB"))?;
    match n.checked_mul(mul) {
        Some(0) | None => Err(format!("{s:?}: a size above 0 is needed")),
        Some(v) => Ok(v),
    }
}

fn parse_pair(s: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (a, b) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected OLD=NEW, e.g. 198.18.1.11:80=198.18.1.21:80"))?;
    let a = a
        .parse()
        .map_err(|_| format!("{a:?} is not an address:port"))?;
    let b = b
        .parse()
        .map_err(|_| format!("{b:?} is not an address:port"))?;
    Ok((a, b))
}

fn send(api: &std::path::Path, cmd: Command) -> Result<Response> {
    let r = daemon::call(api, cmd)?;
    if !r.ok {
        bail!("{}", r.error.unwrap_or_else(|| "refused".into()));
    }
    Ok(r)
}

fn run(cli: Cli) -> Result<()> {
    let api = cli.api;
    match cli.cmd {
        Cmd::Daemon { config } => {
            daemon::run(&config, std::env::var_os("SWITCH_API").map(PathBuf::from))
        }
        Cmd::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow!("cannot read {}: {e}", file.display()))?;
            let c = ConfigFile::parse(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            send(
                &api,
                Command::Apply {
                    services: c.services,
                },
            )?;
            println!("applied {}", file.display());
            Ok(())
        }
        Cmd::Status { service, json } => {
            let r = send(&api, Command::Status { service })?;
            let st = r.status.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
                if let Some(reasons) = r.reasons {
                    let line: Vec<String> =
                        reasons.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!("packets by verdict: {}", line.join(" "));
                }
            }
            Ok(())
        }
        Cmd::Weights { service, weights } => {
            let weights: BTreeMap<String, u32> = weights.into_iter().collect();
            send(
                &api,
                Command::Weights {
                    service: service.clone(),
                    weights,
                },
            )?;
            println!("{service}: weights set");
            Ok(())
        }
        Cmd::Flip {
            service,
            to,
            preview,
            auto_promote,
            drain,
        } => {
            send(
                &api,
                Command::Flip {
                    service: service.clone(),
                    to: to.clone(),
                    preview,
                    auto_promote_ms: auto_promote.map(|d| d.as_millis() as u64),
                    drain_ms: drain.map(|d| d.as_millis() as u64),
                },
            )?;
            match preview {
                Some(p) => println!(
                    "{service}: {p} now sees {to}; `switch promote {service}` sends everyone"
                ),
                None => println!(
                    "{service}: new connections now go to {to}; established ones stay where they are"
                ),
            }
            Ok(())
        }
        Cmd::Canary {
            service,
            to,
            steps,
            interval,
            max_unhealthy,
            max_rst_excess,
            max_unanswered_excess,
            min_flows,
            prometheus,
            query,
            max,
            on_no_data,
            prometheus_token,
            after_shadow,
            max_shadow_error_excess,
        } => {
            for (name, v) in [
                ("--max-rst-excess", max_rst_excess),
                ("--max-unanswered-excess", max_unanswered_excess),
            ] {
                if !(0.0..=1.0).contains(&v) {
                    bail!("{name}: {v} is not between 0 and 1");
                }
            }
            send(
                &api,
                Command::Canary {
                    service: service.clone(),
                    to: to.clone(),
                    steps: steps.clone(),
                    interval_ms: interval.as_millis() as u64,
                    gates: Gates {
                        max_unhealthy,
                        max_rst_excess,
                        max_unanswered_excess,
                        min_flows,
                        prometheus: prometheus.map(|url| PromGate {
                            url,
                            query: query.unwrap_or_default(),
                            max: max.unwrap_or(f64::INFINITY),
                            on_no_data: match on_no_data {
                                NoDataArg::Hold => NoData::Hold,
                                NoDataArg::Pass => NoData::Pass,
                                NoDataArg::Fail => NoData::Fail,
                            },
                            token: prometheus_token,
                        }),
                        after_shadow_ms: after_shadow.map(|d| d.as_millis() as u64),
                        max_shadow_error_excess,
                    },
                },
            )?;
            println!("{service}: canary to {to} started at {}%", steps[0]);
            Ok(())
        }
        Cmd::Rolling {
            service,
            pool,
            replace,
            max_unavailable,
            drain_timeout,
            min_healthy,
            progress_deadline,
            linger_limit,
        } => {
            let n = replace.len();
            send(
                &api,
                Command::Rolling {
                    service: service.clone(),
                    pool,
                    replace,
                    max_unavailable,
                    drain_timeout_ms: drain_timeout.as_millis() as u64,
                    min_healthy_ms: min_healthy.as_millis() as u64,
                    progress_deadline_ms: progress_deadline.as_millis() as u64,
                    linger_limit_ms: linger_limit.map(|d| d.as_millis() as u64),
                },
            )?;
            println!("{service}: rolling replacement of {n} backend(s) started");
            Ok(())
        }
        Cmd::Pause { service } => simple(
            &api,
            Command::Pause {
                service: service.clone(),
            },
            &service,
            "paused",
        ),
        Cmd::Resume { service } => simple(
            &api,
            Command::Resume {
                service: service.clone(),
            },
            &service,
            "resumed",
        ),
        Cmd::Promote { service } => simple(
            &api,
            Command::Promote {
                service: service.clone(),
            },
            &service,
            "promoted",
        ),
        Cmd::Abort { service } => simple(
            &api,
            Command::Abort {
                service: service.clone(),
            },
            &service,
            "aborted",
        ),
        Cmd::Rollback { service } => simple(
            &api,
            Command::Rollback {
                service: service.clone(),
            },
            &service,
            "rolled back",
        ),
        Cmd::Watch {
            service,
            every,
            count,
        } => {
            let mut n = 0;
            loop {
                let r = send(
                    &api,
                    Command::Status {
                        service: Some(service.clone()),
                    },
                )?;
                let st = r.status.unwrap_or_default();
                // Clear the screen only on a terminal, so the view can be logged.
                if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    print!("\x1b[2J\x1b[H");
                }
                println!(
                    "{}",
                    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                );
                print_status(&st);
                n += 1;
                if count != 0 && n >= count {
                    return Ok(());
                }
                std::thread::sleep(every);
            }
        }
        Cmd::Backend {
            action,
            service,
            pool,
            addr,
            weight,
            now,
            linger_limit,
        } => {
            let action = match action {
                Action::Add => BackendAction::Add,
                Action::Remove => BackendAction::Remove,
                Action::Drain => BackendAction::Drain,
                Action::Undrain => BackendAction::Undrain,
            };
            send(
                &api,
                Command::Backend {
                    service,
                    pool,
                    addr,
                    action,
                    weight,
                    now,
                    linger_limit_ms: linger_limit.map(|d| d.as_millis() as u64),
                },
            )?;
            println!("done");
            Ok(())
        }
        Cmd::History { service, json } => {
            let r = send(&api, Command::History { service })?;
            let h = r.history.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&h)?);
            } else {
                for e in h {
                    let t = humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms),
                    );
                    println!(
                        "{t}  {}  {}",
                        if e.ok { "ok    " } else { "FAILED" },
                        e.what
                    );
                }
            }
            Ok(())
        }
        Cmd::Shadow {
            service,
            to,
            sample,
            duration,
            max_sessions,
            max_buffer,
            stop,
        } => {
            send(
                &api,
                Command::Shadow {
                    service: service.clone(),
                    to: to.clone(),
                    sample_percent: sample,
                    for_ms: duration.map(|d| d.as_millis() as u64),
                    max_sessions,
                    max_buffer,
                    stop,
                },
            )?;
            if stop {
                println!("{service}: shadow stopped");
            } else {
                println!(
                    "{service}: {sample}% of new connections now also replayed to {}; clients only ever see the live pool",
                    to.unwrap_or_default()
                );
            }
            Ok(())
        }
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "switch", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            Ok(())
        }
        Cmd::Fleet { action } => {
            let join = matches!(action, FleetAction::Join);
            send(&api, Command::Membership { join })?;
            println!(
                "{}",
                if join {
                    "joined: this host announces its VIPs again"
                } else {
                    "left: VIPs withdrawn; established flows keep being forwarded here"
                }
            );
            Ok(())
        }
        Cmd::Detach { pin_dir, state_dir } => {
            if switch_user::bgp::stop(&state_dir)? {
                println!("stopped the BGP speaker: VIPs withdrawn");
            }
            let removed = dataplane::detach(&pin_dir)?;
            if removed.is_empty() {
                println!("nothing pinned under {}", pin_dir.display());
            } else {
                println!("removed from {}: {}", pin_dir.display(), removed.join(", "));
            }
            Ok(())
        }
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum FleetAction {
    Leave,
    Join,
}

/// The fleet block of `switch status`: hosts, leader, fleet-wide figures.
fn print_fleet(f: &switch_user::api::FleetStatus) {
    println!(
        "  fleet: this host {}, leader {}, etcd {}, generation {} (health {}), applied revision {}",
        f.host,
        f.leader.as_deref().unwrap_or("none"),
        if f.etcd_reachable {
            "reachable"
        } else {
            "UNREACHABLE"
        },
        f.revision,
        f.health_revision,
        f.applied_revision
    );
    if let Some(why) = &f.refused {
        println!("  fleet: NOT JOINED: {why}");
    }
    for h in &f.hosts {
        println!(
            "    host {:<16} {:<5} {:<7} generation {:<8} applied {:<8} new flows {}",
            h.name,
            if h.alive { "alive" } else { "DEAD" },
            if h.leader { "leader" } else { "" },
            h.revision
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
            h.applied_revision,
            h.new_flows
        );
    }
    for p in &f.pools {
        println!(
            "    fleet pool {:<10} new flows {:<10} rst {:<8} syn-ack {}",
            p.name, p.new_flows, p.rsts, p.synacks
        );
    }
    for b in &f.backends {
        println!(
            "    fleet backend {:<40} {:<9} flows {:<8} down votes {}/{}",
            b.addr,
            if b.healthy { "healthy" } else { "DOWN" },
            b.active_flows,
            b.down_votes,
            b.hosts
        );
    }
}

fn print_status(st: &[ServiceStatus]) {
    let line = |b: &switch_user::api::BackendStatus| {
        println!(
            "    {:<40} {:<9} {:<9} w{:<4} flows {:<6} new {:<8} ({:>7.1}/s) pkts {:<10} ({:>9.1}/s) rst {}",
            b.addr,
            b.state.name(),
            if b.healthy { "healthy" } else { "UNHEALTHY" },
            b.weight,
            b.active_flows,
            b.new_flows,
            b.new_flows_per_s,
            b.packets,
            b.packets_per_s,
            b.rsts
        );
    };
    for s in st {
        println!(
            "{}  {} {} {}  packets {}  new flows {}  dropped (no backend) {}  unpinned non-SYN {} (to previous owner {})",
            s.name,
            s.vip,
            serde_json::to_value(s.protocol)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?"),
            serde_json::to_value(s.mode)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?"),
            s.packets,
            s.new_flows,
            s.no_backend,
            s.nonsyn_miss,
            s.nonsyn_miss_prev
        );
        if let Some(st) = &s.strategy {
            let p = s.progress.unwrap_or(0.0).clamp(0.0, 1.0);
            let filled = (p * 30.0).round() as usize;
            println!(
                "  strategy: {st}\n  [{}{}] {:>3.0}%",
                "#".repeat(filled),
                "-".repeat(30 - filled),
                p * 100.0
            );
        }
        if let Some(f) = &s.fleet {
            print_fleet(f);
        }
        if let Some(b) = &s.bgp {
            println!(
                "  bgp: AS {}, this VIP {}; sessions: {}{}",
                b.asn,
                if s.announced == Some(true) {
                    "announced"
                } else {
                    "NOT announced"
                },
                b.sessions
                    .iter()
                    .map(|x| format!("{} {}", x.neighbor, x.state))
                    .collect::<Vec<_>>()
                    .join(", "),
                b.withdrawn
                    .as_ref()
                    .map(|w| format!(" (withdrawn: {w})"))
                    .unwrap_or_default()
            );
        }
        for p in &s.pools {
            println!(
                "  pool {:<10} weight {:<6} share {:>6.2}%",
                p.name, p.weight, p.share
            );
            for b in &p.backends {
                line(b);
            }
        }
        if let Some(sh) = &s.shadow {
            let r = &sh.report;
            println!(
                "  shadow to {} ({}% of new connections, {}): sampled {} replayed {} refused {} reset {} timed out {} overflow {} ring lost {}",
                sh.spec.to,
                sh.spec.sample_percent,
                sh.spec.ended.as_deref().unwrap_or("running"),
                r.sampled,
                r.replayed,
                r.refused,
                r.reset,
                r.timed_out,
                r.overflow,
                r.ring_lost
            );
            println!(
                "    first byte p50/p99: shadow {:.2}/{:.2} ms, live {:.2}/{:.2} ms; errors: shadow {:.1}%, live {:.1}%; 5xx shadow {} live {}; bytes shadow {} live {}",
                r.shadow_ttfb.p50_ms,
                r.shadow_ttfb.p99_ms,
                r.live_ttfb.p50_ms,
                r.live_ttfb.p99_ms,
                r.shadow_error_rate * 100.0,
                r.live_error_rate * 100.0,
                r.shadow_statuses.c5,
                r.live_statuses.c5,
                r.bytes_received,
                r.live_bytes
            );
        }
        if !s.lingering.is_empty() {
            println!("  lingering (removed, established flows kept until they end)");
            for b in &s.lingering {
                line(b);
            }
        }
    }
}
