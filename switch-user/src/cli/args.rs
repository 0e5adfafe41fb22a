//! The command line: every command, its arguments and their parsers.

use super::*;

#[derive(Parser)]
#[command(
    name = "switch",
    version,
    about = "Zero-downtime L4 traffic switcher (XDP)"
)]
pub struct Cli {
    /// The daemon's API socket.
    #[arg(
        long,
        global = true,
        env = "SWITCH_API",
        default_value = "/run/switch/switch.sock"
    )]
    pub(super) api: PathBuf,
    #[command(subcommand)]
    pub(super) cmd: Cmd,
}

#[derive(Subcommand)]
pub(super) enum Cmd {
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
pub(super) enum NoDataArg {
    Hold,
    Pass,
    Fail,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum Action {
    Add,
    Remove,
    Drain,
    Undrain,
}

pub(super) fn parse_weight(s: &str) -> Result<(String, u32), String> {
    let (pool, w) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected POOL=WEIGHT, e.g. green=5"))?;
    let w: u32 = w
        .parse()
        .map_err(|_| format!("{s:?}: weight {w:?} is not a whole number from 0 to 1000000"))?;
    if w > crate::model::config::MAX_WEIGHT {
        return Err(format!("{s:?}: weight {w} is above the maximum 1000000"));
    }
    Ok((pool.to_string(), w))
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 30s or 2m: {e}"))
}

pub(super) fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage like 10%"))?;
    if !(v > 0.0 && v <= 100.0) {
        return Err(format!("{s:?}: a sample is above 0% and at most 100%"));
    }
    Ok(v)
}

pub(super) fn parse_size(s: &str) -> Result<usize, String> {
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

pub(super) fn parse_pair(s: &str) -> Result<(SocketAddr, SocketAddr), String> {
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

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(super) enum FleetAction {
    Leave,
    Join,
}
