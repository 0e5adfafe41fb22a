//! Deployment strategies as state machines, free of I/O and of the clock:
//! `tick` takes the time and what the data plane and health checks say,
//! and returns the changes to make. The controller applies them; tests drive
//! them with a fake clock and fake signals.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

mod blue_green;
mod canary;
mod rolling;
#[cfg(test)]
mod tests;

pub use crate::model::gates::{Gates, NoData, PromGate, Reading};
pub use crate::model::kinds::{PhaseKind, StrategyKind};
pub use blue_green::BlueGreen;
pub use canary::Canary;
pub use rolling::Rolling;

/// What the data plane and health checks say about one pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolSignals {
    /// Counters since the daemon's maps were created (monotonic).
    pub new_flows: u64,
    pub rsts: u64,
    /// SYN-ACKs from the pool's backends (nat/fullnat TCP only).
    pub synacks: u64,
    pub backends: BTreeMap<SocketAddr, BackendSignals>,
    /// Fleet mode: the oldest last report among live hosts (ms, host). A
    /// step is not judged on figures that miss part of it.
    pub as_of: Option<(u64, String)>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendSignals {
    /// Passing health checks (always true without health checks).
    pub healthy: bool,
    /// Since when it has been healthy without a break (ms).
    pub healthy_since_ms: Option<u64>,
    pub active_flows: u64,
    /// When `active_flows` was counted (ms). A drain only trusts a count
    /// taken after it began.
    pub flows_counted_ms: u64,
}

pub type Signals = BTreeMap<String, PoolSignals>;

/// A change the controller makes to the service's desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Set these pool weights (others unchanged).
    Weights(BTreeMap<String, u32>),
    AddBackend {
        pool: String,
        addr: SocketAddr,
    },
    DrainBackend {
        pool: String,
        addr: SocketAddr,
    },
    /// Out of the pool; a healthy backend lingers with its established
    /// flows (at most `linger_limit_ms` when set).
    RemoveBackend {
        pool: String,
        addr: SocketAddr,
        linger_limit_ms: Option<u64>,
    },
    /// Pin this source CIDR to a pool (preview), or unpin it.
    Cohort {
        cidr: ipnet::IpNet,
        pool: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase", content = "why")]
pub enum Phase {
    Running,
    Paused,
    /// Stopped on its own and waiting for the operator (e.g. a replacement
    /// that never became healthy).
    Holding(String),
    Succeeded,
    RolledBack(String),
    Aborted,
}

impl Phase {
    pub fn is_active(&self) -> bool {
        matches!(self, Phase::Running | Phase::Paused | Phase::Holding(_))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Strategy {
    Canary(Canary),
    BlueGreen(BlueGreen),
    Rolling(Rolling),
}

fn weights(pairs: &[(&str, u32)]) -> Change {
    Change::Weights(pairs.iter().map(|(p, w)| (p.to_string(), *w)).collect())
}

fn counters(s: &Signals, pool: &str) -> (u64, u64, u64) {
    s.get(pool)
        .map(|p| (p.new_flows, p.rsts, p.synacks))
        .unwrap_or((0, 0, 0))
}

fn unhealthy(s: &Signals, pool: &str) -> usize {
    s.get(pool)
        .map(|p| p.backends.values().filter(|b| !b.healthy).count())
        .unwrap_or(0)
}

impl Phase {
    pub fn kind(&self) -> PhaseKind {
        match self {
            Phase::Running => PhaseKind::Running,
            Phase::Paused => PhaseKind::Paused,
            Phase::Holding(_) => PhaseKind::Holding,
            Phase::Succeeded => PhaseKind::Succeeded,
            Phase::RolledBack(_) => PhaseKind::RolledBack,
            Phase::Aborted => PhaseKind::Aborted,
        }
    }

    /// The free-text reason of a holding or rolled-back phase.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Phase::Holding(w) | Phase::RolledBack(w) => Some(w),
            _ => None,
        }
    }
}

impl Strategy {
    pub fn kind(&self) -> StrategyKind {
        match self {
            Strategy::Canary(_) => StrategyKind::Canary,
            Strategy::BlueGreen(_) => StrategyKind::BlueGreen,
            Strategy::Rolling(_) => StrategyKind::Rolling,
        }
    }

    pub fn set_phase(&mut self, phase: Phase) {
        match self {
            Strategy::Canary(c) => c.phase = phase,
            Strategy::BlueGreen(b) => b.phase = phase,
            Strategy::Rolling(r) => r.phase = phase,
        }
    }

    pub fn phase(&self) -> &Phase {
        match self {
            Strategy::Canary(c) => &c.phase,
            Strategy::BlueGreen(b) => &b.phase,
            Strategy::Rolling(r) => &r.phase,
        }
    }

    pub fn tick(&mut self, now: u64, s: &Signals) -> Vec<Change> {
        match self {
            Strategy::Canary(c) => c.tick(now, s),
            Strategy::BlueGreen(b) => b.tick(now, s),
            Strategy::Rolling(r) => r.tick(now, s),
        }
    }

    /// One line: what it is doing now.
    pub fn describe(&self, now: u64) -> String {
        let phase = match self.phase() {
            Phase::Running => "running".to_string(),
            Phase::Paused => "paused".to_string(),
            Phase::Holding(w) => format!("holding: {w}"),
            Phase::Succeeded => "succeeded".to_string(),
            Phase::RolledBack(w) => format!("rolled back: {w}"),
            Phase::Aborted => "aborted".to_string(),
        };
        match self {
            Strategy::Canary(c) => {
                let left = c
                    .interval_ms
                    .saturating_sub(now.saturating_sub(c.step_started_ms))
                    / 1000;
                format!(
                    "canary {} -> {}: step {}/{} at {}%, {phase}{}",
                    c.from,
                    c.to,
                    c.step + 1,
                    c.steps.len(),
                    c.weight(),
                    if let (Phase::Running, Some(w)) = (&c.phase, &c.waiting) {
                        format!(", {w}")
                    } else if c.phase == Phase::Running {
                        format!(", next step in {left}s")
                    } else {
                        String::new()
                    }
                )
            }
            Strategy::BlueGreen(b) => format!(
                "blue-green {} -> {}{}: {}{}",
                b.from,
                b.to,
                b.preview.map(|p| format!(" (preview {p})")).unwrap_or_default(),
                if b.draining() { format!("draining {}", b.from) } else { phase },
                b.drain_left
                    .map(|n| format!(" (drain timed out; {n} flows still on {} keep their backends until they close)", b.from))
                    .unwrap_or_default()
            ),
            Strategy::Rolling(r) => format!(
                "rolling pool {}: {}/{} replaced, {phase}",
                r.pool,
                r.done(),
                r.replace.len()
            ),
        }
    }

    /// Progress 0.0..=1.0 for the live view.
    pub fn progress(&self) -> f64 {
        match self {
            Strategy::Canary(c) => c.weight() as f64 / 100.0,
            Strategy::BlueGreen(b) => {
                if b.phase == Phase::Succeeded {
                    1.0
                } else {
                    0.0
                }
            }
            Strategy::Rolling(r) => r.done() as f64 / r.replace.len().max(1) as f64,
        }
    }
}
