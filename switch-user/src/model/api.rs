//! The daemon's API: one JSON request per line on a Unix socket, one JSON
//! response per line back. `v` is the protocol version.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{
    model::config::{ForwardMode, Protocol, ServiceConfig},
    model::kinds::{PhaseKind, StrategyKind},
};

pub const VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    /// How the caller came, when not by hand: `config reload` for
    /// `switch apply -f` (the unit's ExecReload). A hint for the audit
    /// trail; who the caller is comes from the socket, never from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    #[serde(flatten)]
    pub cmd: Command,
}

/// What a caller may do, by its groups (`daemon.api_read_group`,
/// `api_group`, `api_admin_group`); each level includes those below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// status, history.
    Read,
    /// Every command that steers traffic.
    Steer,
    /// detach, fleet leave/join.
    Admin,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Read => "read",
            Level::Steer => "steer",
            Level::Admin => "admin",
        }
    }
}

/// Who made a change, for the audit trail.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Actor {
    pub uid: u32,
    /// The user name of `uid` on the daemon's host (the uid when it has none).
    pub user: String,
    /// The host whose daemon took the command.
    pub host: String,
    /// socket, config reload, config (the daemon's start-up).
    pub via: String,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{} ({})", self.user, self.host, self.via)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    Status {
        service: Option<String>,
    },
    /// `switch fleet leave` (join = false) / `switch fleet join`: this host
    /// withdraws its VIPs from BGP, or announces them again. Local to the
    /// host; established flows keep being forwarded.
    Membership {
        join: bool,
    },
    /// Replace the whole set of services (declarative, idempotent).
    Apply {
        services: Vec<ServiceConfig>,
    },
    Weights {
        service: String,
        weights: BTreeMap<String, u32>,
    },
    /// Blue-green: all new flows to `to` at once; with `preview`, first only
    /// that source CIDR, then all on `promote` or after `auto_promote_ms`.
    Flip {
        service: String,
        to: String,
        #[serde(default)]
        preview: Option<ipnet::IpNet>,
        #[serde(default)]
        auto_promote_ms: Option<u64>,
        /// After the flip, wait for the old pool's flows to end, at most this long.
        #[serde(default)]
        drain_ms: Option<u64>,
    },
    Canary {
        service: String,
        to: String,
        steps: Vec<u32>,
        interval_ms: u64,
        #[serde(default)]
        gates: crate::model::gates::Gates,
    },
    Rolling {
        service: String,
        pool: String,
        replace: Vec<(SocketAddr, SocketAddr)>,
        max_unavailable: usize,
        drain_timeout_ms: u64,
        min_healthy_ms: u64,
        progress_deadline_ms: u64,
        /// Removed backends keep their established flows at most this long
        /// (absent: until the flows end or the backend goes down).
        #[serde(default)]
        linger_limit_ms: Option<u64>,
    },
    Pause {
        service: String,
    },
    Resume {
        service: String,
    },
    Promote {
        service: String,
    },
    Abort {
        service: String,
    },
    /// Undo the last flip or canary at once.
    Rollback {
        service: String,
    },
    Backend {
        service: String,
        pool: String,
        addr: SocketAddr,
        action: BackendAction,
        weight: Option<u32>,
        /// remove: cut the backend's established flows at once instead of
        /// letting them finish.
        #[serde(default)]
        now: bool,
        /// remove: cut them after this long at most.
        #[serde(default)]
        linger_limit_ms: Option<u64>,
    },
    History {
        service: String,
    },
    /// Start (or, with `stop`, end) a shadow: a sample of the service's new
    /// connections is replayed to pool `to`; its answers are judged and
    /// thrown away.
    Shadow {
        service: String,
        #[serde(default)]
        to: Option<String>,
        /// Percent of new connections (flows) sampled, 0 < x <= 100.
        #[serde(default)]
        sample_percent: f64,
        /// End by itself after this long.
        #[serde(default)]
        for_ms: Option<u64>,
        #[serde(default = "default_max_sessions")]
        max_sessions: usize,
        #[serde(default = "default_max_buffer")]
        max_buffer: usize,
        #[serde(default)]
        stop: bool,
    },
    /// `switch detach`: the daemon withdraws its VIPs, removes the program
    /// and every pin, and exits. Forwarding stops: every connection breaks.
    Detach,
}

fn default_max_sessions() -> usize {
    1000
}

fn default_max_buffer() -> usize {
    64 * 1024
}

impl Command {
    /// The command's name, for logs and spans.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status { .. } => "status",
            Command::Membership { join: true } => "fleet join",
            Command::Membership { join: false } => "fleet leave",
            Command::Apply { .. } => "apply",
            Command::Weights { .. } => "weights",
            Command::Flip { .. } => "flip",
            Command::Canary { .. } => "canary",
            Command::Rolling { .. } => "rolling",
            Command::Pause { .. } => "pause",
            Command::Resume { .. } => "resume",
            Command::Promote { .. } => "promote",
            Command::Abort { .. } => "abort",
            Command::Rollback { .. } => "rollback",
            Command::Backend { .. } => "backend",
            Command::History { .. } => "history",
            Command::Shadow { .. } => "shadow",
            Command::Detach => "detach",
        }
    }

    /// Names, durations, counts and sizes within their shapes and ceilings
    /// (`model::limits`); a command past one is refused whole.
    pub fn check_inputs(&self) -> anyhow::Result<()> {
        use super::limits::{self, duration_ms};
        if let Some(s) = self.service() {
            // `-` names the refusals that named no service (history).
            if !(s == "-" && matches!(self, Command::History { .. })) {
                limits::name("service", s)?;
            }
        }
        match self {
            Command::Weights { weights, .. } => {
                for pool in weights.keys() {
                    limits::name("pool", pool)?;
                }
            }
            Command::Flip {
                to,
                auto_promote_ms,
                drain_ms,
                ..
            } => {
                limits::name("to", to)?;
                duration_ms("auto_promote", auto_promote_ms.unwrap_or(0))?;
                duration_ms("drain", drain_ms.unwrap_or(0))?;
            }
            Command::Canary {
                to,
                steps,
                interval_ms,
                gates,
                ..
            } => {
                limits::name("to", to)?;
                limits::count("steps", steps.len(), limits::MAX_STEPS)?;
                duration_ms("interval", *interval_ms)?;
                duration_ms("after_shadow", gates.after_shadow_ms.unwrap_or(0))?;
                if let Some(p) = &gates.prometheus {
                    limits::printable("prometheus.url", &p.url)?;
                    limits::printable("prometheus.token", p.token.as_deref().unwrap_or(""))?;
                    limits::count("prometheus.query", p.query.len(), limits::MAX_TEXT)?;
                }
            }
            Command::Rolling {
                pool,
                replace,
                drain_timeout_ms,
                min_healthy_ms,
                progress_deadline_ms,
                linger_limit_ms,
                ..
            } => {
                limits::name("pool", pool)?;
                limits::count("replace", replace.len(), limits::MAX_REPLACEMENTS)?;
                duration_ms("drain_timeout", *drain_timeout_ms)?;
                duration_ms("min_healthy", *min_healthy_ms)?;
                duration_ms("progress_deadline", *progress_deadline_ms)?;
                duration_ms("linger_limit", linger_limit_ms.unwrap_or(0))?;
            }
            Command::Backend {
                pool,
                linger_limit_ms,
                ..
            } => {
                limits::name("pool", pool)?;
                duration_ms("linger_limit", linger_limit_ms.unwrap_or(0))?;
            }
            Command::Shadow {
                to,
                for_ms,
                max_sessions,
                max_buffer,
                ..
            } => {
                if let Some(to) = to {
                    limits::name("to", to)?;
                }
                duration_ms("for", for_ms.unwrap_or(0))?;
                limits::count("max_sessions", *max_sessions, limits::MAX_SHADOW_SESSIONS)?;
                limits::count("max_buffer", *max_buffer, limits::MAX_SHADOW_BUFFER)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The level a caller needs for this command.
    pub fn level(&self) -> Level {
        match self {
            Command::Status { .. } | Command::History { .. } => Level::Read,
            Command::Membership { .. } | Command::Detach => Level::Admin,
            _ => Level::Steer,
        }
    }

    /// The service a command is about, if one.
    pub fn service(&self) -> Option<&str> {
        match self {
            Command::Status { service } => service.as_deref(),
            Command::Apply { .. } | Command::Membership { .. } | Command::Detach => None,
            Command::Weights { service, .. }
            | Command::Flip { service, .. }
            | Command::Canary { service, .. }
            | Command::Rolling { service, .. }
            | Command::Pause { service }
            | Command::Resume { service }
            | Command::Promote { service }
            | Command::Abort { service }
            | Command::Rollback { service }
            | Command::Backend { service, .. }
            | Command::History { service }
            | Command::Shadow { service, .. } => Some(service),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendAction {
    Add,
    Remove,
    Drain,
    Undrain,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `error`: what kind of refusal it was, when it was one (a failed
    /// write or an internal error has none).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub refusal: Option<crate::model::error::RefusalKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Vec<ServiceStatus>>,
    /// Data-plane verdict counters by reason (status only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reasons: Option<BTreeMap<String, u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<Event>>,
}

impl Response {
    pub fn ok() -> Self {
        Response {
            ok: true,
            error: None,
            refusal: None,
            status: None,
            reasons: None,
            history: None,
        }
    }
    /// An error as the operator sees it (one line), with its refusal kind.
    pub fn failed(e: &anyhow::Error) -> Self {
        Response {
            refusal: crate::model::error::refusal_of(e),
            ..Response::err(format!("{e:#}"))
        }
    }

    pub fn err(e: impl std::fmt::Display) -> Self {
        Response {
            ok: false,
            error: Some(e.to_string()),
            refusal: None,
            status: None,
            reasons: None,
            history: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub mode: ForwardMode,
    pub packets: u64,
    pub new_flows: u64,
    pub no_backend: u64,
    /// TCP packets that were not a SYN and found no pin (evicted, or another
    /// host's flow): those the current table placed, and those sent back to
    /// their slot's previous owner (the slot changed in the last change).
    #[serde(default)]
    pub nonsyn_miss: u64,
    #[serde(default)]
    pub nonsyn_miss_prev: u64,
    pub pools: Vec<PoolStatus>,
    /// The running (or last) strategy, in one line for people.
    #[serde(default)]
    pub strategy: Option<String>,
    /// The same as types, for scripts: which strategy and its phase.
    #[serde(default)]
    pub strategy_kind: Option<StrategyKind>,
    #[serde(default)]
    pub phase: Option<PhaseKind>,
    #[serde(default)]
    pub progress: Option<f64>,
    /// Removed backends still carrying established flows.
    #[serde(default)]
    pub lingering: Vec<BackendStatus>,
    /// The service's shadow and what it found, when one runs or ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::model::shadow::ShadowStatus>,
    /// Fleet mode: the hosts, the leader, and fleet-wide figures (the
    /// fields above are this host's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
    /// With `[bgp]`: sessions and what this host announces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<crate::model::bgp::BgpStatus>,
    /// Whether this host announces the service's VIP (with `[bgp]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// This host.
    pub host: String,
    /// The host that runs strategies (None: none right now).
    pub leader: Option<String>,
    pub etcd_reachable: bool,
    /// The service's generation (its record's etcd revision) applied here.
    pub revision: i64,
    /// The revision of the fleet's health verdict applied here. Hosts with
    /// the same `revision` and `health_revision` forward with the same table.
    pub health_revision: i64,
    /// The etcd revision this host has applied.
    pub applied_revision: i64,
    /// Why this host does not take part, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Records read from etcd and not applied (this service's, if any):
    /// the key and why; the host keeps the last good state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_record: Option<String>,
    /// Records rejected on this host since it started (all services).
    #[serde(default)]
    pub rejected_records_total: u64,
    /// Why etcd does not talk to this host, when it does not (TLS,
    /// password, permissions, unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_error: Option<String>,
    pub hosts: Vec<FleetHostStatus>,
    /// Fleet-wide counters per pool (every host, restarts included).
    pub pools: Vec<FleetPoolStatus>,
    pub backends: Vec<FleetBackendStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetHostStatus {
    pub name: String,
    /// Its lease is alive (it reported within the lease).
    pub alive: bool,
    pub leader: bool,
    /// The etcd revision it has applied, and its generation of this service.
    pub applied_revision: i64,
    pub revision: Option<i64>,
    pub health_revision: i64,
    /// Its own new flows for this service (all pools).
    pub new_flows: u64,
    pub last_report_ms_ago: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetPoolStatus {
    pub name: String,
    pub new_flows: u64,
    pub rsts: u64,
    pub synacks: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetBackendStatus {
    pub addr: SocketAddr,
    pub pool: String,
    /// Live flows on every live host.
    pub active_flows: u64,
    /// The fleet's verdict (true without health checks).
    pub healthy: bool,
    /// Live hosts whose probes say it is down, out of `hosts`.
    pub down_votes: u32,
    pub hosts: u32,
}

/// A backend's state as the data plane treats it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Gets new flows (when healthy).
    Active,
    /// No new flows; established flows continue.
    Draining,
    /// Removed from its pool but still healthy: established flows continue
    /// until they end (or the operator's limit).
    Lingering,
}

impl BackendState {
    pub fn name(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Draining => "draining",
            BackendState::Lingering => "lingering",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    pub weight: u32,
    /// Share of new flows, in percent of the table.
    pub share: f64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendStatus {
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: BackendState,
    /// The pool (for lingering backends: the pool it was removed from).
    #[serde(default)]
    pub pool: String,
    pub packets: u64,
    pub new_flows: u64,
    pub rsts: u64,
    pub active_flows: u64,
    /// Packets and new flows per second over the last second.
    #[serde(default)]
    pub packets_per_s: f64,
    #[serde(default)]
    pub new_flows_per_s: f64,
    #[serde(default)]
    pub healthy: bool,
    #[serde(default)]
    pub health_error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub service: String,
    pub what: String,
    pub ok: bool,
    /// Who asked for it; absent for what the daemon did by itself
    /// (strategy steps, health, lingering backends released).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    #[serde(default)]
    pub outcome: Outcome,
}

impl Event {
    /// A refused command, for the audit trail: under its service (or `-`
    /// when it names none), with who asked and why it was refused.
    pub fn refused(now: u64, cmd: &Command, actor: &Actor, why: &str) -> Event {
        Event {
            at_ms: now,
            service: cmd.service().unwrap_or("-").to_string(),
            what: format!("{} refused: {why}", cmd.name()),
            ok: false,
            actor: Some(actor.clone()),
            outcome: Outcome::Refused,
        }
    }
}

/// What became of the command an event records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// In the maps and committed.
    #[default]
    Applied,
    /// Refused (invalid, not permitted, conflicting, unavailable): nothing
    /// changed.
    Refused,
}
