//! `switch`: the daemon and the operator's CLI in one binary.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::{Result, anyhow, bail};
use clap::{Parser, Subcommand};
use switch_user::{
    api::{BackendAction, Command, Response, ServiceStatus},
    config::ConfigFile,
    daemon, dataplane,
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
    },
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

fn init_log() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::Level::Info
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!(
                    "switch daemon: {} {}",
                    r.level().as_str().to_lowercase(),
                    r.args()
                );
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
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
        Cmd::Flip { service, to } => {
            send(
                &api,
                Command::Flip {
                    service: service.clone(),
                    to: to.clone(),
                },
            )?;
            println!(
                "{service}: new connections now go to {to}; established ones stay where they are"
            );
            Ok(())
        }
        Cmd::Backend {
            action,
            service,
            pool,
            addr,
            weight,
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
        Cmd::Detach { pin_dir } => {
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

fn print_status(st: &[ServiceStatus]) {
    for s in st {
        println!(
            "{}  {} {} {}  packets {}  new flows {}  dropped (no backend) {}",
            s.name, s.vip, s.protocol, s.mode, s.packets, s.new_flows, s.no_backend
        );
        for p in &s.pools {
            println!(
                "  pool {:<10} weight {:<6} share {:>6.2}%",
                p.name, p.weight, p.share
            );
            for b in &p.backends {
                println!(
                    "    {:<40} {:<9} w{:<4} flows {:<6} new {:<8} pkts {:<10} rst {}",
                    b.addr, b.state, b.weight, b.active_flows, b.new_flows, b.packets, b.rsts
                );
            }
        }
    }
}
