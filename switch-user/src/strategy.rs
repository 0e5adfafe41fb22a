//! Deployment strategies as state machines, free of I/O and of the clock:
//! `tick` takes the time and what the data plane and health checks say,
//! and returns the changes to make. The controller applies them; tests drive
//! them with a fake clock and fake signals.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

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

/// Gates checked during every canary step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gates {
    /// Roll back when more backends of the new pool than this are unhealthy.
    pub max_unhealthy: usize,
    /// Roll back when the new pool's RST-per-new-flow ratio exceeds the old
    /// pool's by more than this (absolute, 0..1).
    pub max_rst_excess: f64,
    /// Roll back when the share of the new pool's connection attempts its
    /// backends never answered (no SYN-ACK) exceeds the old pool's by more
    /// than this (absolute, 0..1).
    #[serde(default = "default_unanswered")]
    pub max_unanswered_excess: f64,
    /// New flows the new pool needs in a step before the ratio gates can
    /// fail; with fewer they are inconclusive and the step holds (it does
    /// not advance) until enough have come.
    pub min_flows: u64,
    /// An application metric from Prometheus that must stay at or below a
    /// threshold (e.g. an error rate of the new version).
    #[serde(default)]
    pub prometheus: Option<PromGate>,
    /// The canary starts only after a shadow to the same pool has run this
    /// long with an error rate at most `max_shadow_error_excess` above the
    /// live pool's.
    #[serde(default)]
    pub after_shadow_ms: Option<u64>,
    #[serde(default = "default_shadow_excess")]
    pub max_shadow_error_excess: f64,
}

fn default_shadow_excess() -> f64 {
    0.01
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromGate {
    /// Base address of the Prometheus HTTP API, e.g. http://127.0.0.1:9090.
    pub url: String,
    /// An instant query returning one number.
    pub query: String,
    /// Roll back when the value is above this.
    pub max: f64,
    /// What an empty result (or a failed query) means.
    pub on_no_data: NoData,
    /// Sent as `Authorization: Bearer ...` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoData {
    /// Do not advance the step until the query returns a value.
    Hold,
    /// Treat as passing.
    Pass,
    /// Roll back.
    Fail,
}

/// The latest answer of a canary's Prometheus query.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    Value(f64),
    NoData,
    Failed(String),
}

fn default_unanswered() -> f64 {
    0.10
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            max_unhealthy: 0,
            max_rst_excess: 0.05,
            max_unanswered_excess: default_unanswered(),
            min_flows: 20,
            prometheus: None,
            after_shadow_ms: None,
            max_shadow_error_excess: default_shadow_excess(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    pub to: String,
    pub from: String,
    pub steps: Vec<u32>,
    pub interval_ms: u64,
    pub gates: Gates,
    pub step: usize,
    pub step_started_ms: u64,
    /// Time spent in the current step before a pause.
    pub paused_elapsed_ms: u64,
    /// (new flows, rsts, synacks) of `to` and `from` when the step started.
    pub baseline: [(u64, u64, u64); 2],
    pub phase: Phase,
    /// The Prometheus gate's latest answer, set by the daemon before a tick.
    #[serde(skip)]
    pub reading: Option<Reading>,
    /// Why the step is not advancing although its time is up.
    #[serde(skip)]
    pub waiting: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlueGreen {
    pub to: String,
    pub from: String,
    pub preview: Option<ipnet::IpNet>,
    /// Promote by itself after the new pool has been healthy this long.
    pub auto_promote_ms: Option<u64>,
    pub started_ms: u64,
    /// After the flip, wait this long for the old pool's flows to end.
    #[serde(default)]
    pub drain_ms: Option<u64>,
    /// When all new flows went to the new pool.
    #[serde(default)]
    pub flipped_ms: Option<u64>,
    /// Flows still on the old pool when the drain timed out.
    #[serde(default)]
    pub drain_left: Option<u64>,
    pub phase: Phase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "stage", content = "since_ms")]
pub enum Stage {
    Pending,
    Draining(u64),
    Adding(u64),
    Done,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rolling {
    pub pool: String,
    pub replace: Vec<(SocketAddr, SocketAddr)>,
    pub stages: Vec<Stage>,
    pub max_unavailable: usize,
    pub drain_timeout_ms: u64,
    pub min_healthy_ms: u64,
    /// Hold when a replacement is not healthy this long after being added.
    pub progress_deadline_ms: u64,
    /// A removed backend's established flows are cut after this long (None:
    /// they stay until they end or the backend goes down).
    #[serde(default)]
    pub linger_limit_ms: Option<u64>,
    pub phase: Phase,
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

impl Canary {
    /// Starts at the first step.
    pub fn start(
        to: &str,
        from: &str,
        steps: Vec<u32>,
        interval_ms: u64,
        gates: Gates,
        now: u64,
        s: &Signals,
    ) -> (Canary, Vec<Change>) {
        let first = steps[0];
        let c = Canary {
            to: to.into(),
            from: from.into(),
            steps,
            interval_ms,
            gates,
            step: 0,
            step_started_ms: now,
            paused_elapsed_ms: 0,
            baseline: [counters(s, to), counters(s, from)],
            phase: Phase::Running,
            reading: None,
            waiting: None,
        };
        let change = weights(&[(to, first), (from, 100 - first)]);
        (c, vec![change])
    }

    pub fn weight(&self) -> u32 {
        match self.phase {
            Phase::RolledBack(_) | Phase::Aborted => 0,
            _ => self.steps[self.step.min(self.steps.len() - 1)],
        }
    }

    fn set(&self, w: u32) -> Change {
        weights(&[(&self.to, w), (&self.from, 100 - w)])
    }

    /// The first failing gate, if any.
    fn failed_gate(&self, s: &Signals) -> Option<String> {
        let bad = unhealthy(s, &self.to);
        if bad > self.gates.max_unhealthy {
            return Some(format!("{bad} unhealthy backend(s) in pool {}", self.to));
        }
        if let Some(g) = &self.gates.prometheus {
            match &self.reading {
                Some(Reading::Value(v)) if *v > g.max => {
                    return Some(format!(
                        "Prometheus query {:?} is {v} (above {})",
                        g.query, g.max
                    ));
                }
                Some(Reading::NoData) if g.on_no_data == NoData::Fail => {
                    return Some(format!("Prometheus query {:?} returned no data", g.query));
                }
                Some(Reading::Failed(e)) if g.on_no_data == NoData::Fail => {
                    return Some(format!("Prometheus query {:?} failed: {e}", g.query));
                }
                _ => {}
            }
        }
        let delta = |now: (u64, u64, u64), base: (u64, u64, u64)| {
            (
                now.0.saturating_sub(base.0),
                now.1.saturating_sub(base.1),
                now.2.saturating_sub(base.2),
            )
        };
        let (nf, nr, ns) = delta(counters(s, &self.to), self.baseline[0]);
        let (of, or, os) = delta(counters(s, &self.from), self.baseline[1]);
        if nf < self.gates.min_flows {
            return None; // inconclusive: too few flows to judge
        }
        let ratio = |x: u64, n: u64| {
            if n == 0 {
                0.0
            } else {
                x.min(n) as f64 / n as f64
            }
        };
        let new_unanswered = ratio(nf.saturating_sub(ns), nf);
        let old_unanswered = ratio(of.saturating_sub(os), of);
        if new_unanswered > old_unanswered + self.gates.max_unanswered_excess {
            return Some(format!(
                "{:.1}% of connection attempts to pool {} got no answer against {:.1}% for {} (allowed excess {:.1}%)",
                new_unanswered * 100.0,
                self.to,
                old_unanswered * 100.0,
                self.from,
                self.gates.max_unanswered_excess * 100.0
            ));
        }
        let new_ratio = nr as f64 / nf as f64;
        let old_ratio = if of == 0 { 0.0 } else { or as f64 / of as f64 };
        if new_ratio > old_ratio + self.gates.max_rst_excess {
            return Some(format!(
                "RST ratio of pool {} is {:.1}% against {:.1}% for {} (allowed excess {:.1}%)",
                self.to,
                new_ratio * 100.0,
                old_ratio * 100.0,
                self.from,
                self.gates.max_rst_excess * 100.0
            ));
        }
        None
    }

    pub fn tick(&mut self, now: u64, s: &Signals) -> Vec<Change> {
        if self.phase != Phase::Running {
            return vec![];
        }
        if let Some(why) = self.failed_gate(s) {
            self.phase = Phase::RolledBack(why);
            return vec![self.set(0)];
        }
        if now.saturating_sub(self.step_started_ms) < self.interval_ms {
            return vec![];
        }
        self.waiting = self.inconclusive(s);
        if self.waiting.is_some() {
            return vec![];
        }
        if self.step + 1 >= self.steps.len() {
            self.phase = Phase::Succeeded;
            return vec![];
        }
        self.step += 1;
        self.step_started_ms = now;
        self.baseline = [counters(s, &self.to), counters(s, &self.from)];
        vec![self.set(self.steps[self.step])]
    }

    /// Why the gates cannot judge this step yet, if they cannot.
    fn inconclusive(&self, s: &Signals) -> Option<String> {
        for pool in [&self.to, &self.from] {
            if let Some((at, host)) = s.get(pool).and_then(|p| p.as_of.as_ref())
                && *at < self.step_started_ms + self.interval_ms
            {
                return Some(format!(
                    "waiting for host {host} to report this step's figures"
                ));
            }
        }
        let flows = counters(s, &self.to).0.saturating_sub(self.baseline[0].0);
        if flows < self.gates.min_flows {
            return Some(format!(
                "waiting for {} new connections on {} in this step (have {flows})",
                self.gates.min_flows, self.to
            ));
        }
        if let Some(g) = &self.gates.prometheus {
            match &self.reading {
                None => return Some("waiting for the first Prometheus answer".into()),
                Some(Reading::NoData | Reading::Failed(_)) if g.on_no_data == NoData::Hold => {
                    return Some(format!(
                        "waiting for data from Prometheus query {:?}",
                        g.query
                    ));
                }
                _ => {}
            }
        }
        None
    }

    pub fn pause(&mut self, now: u64) {
        if self.phase == Phase::Running {
            self.paused_elapsed_ms = now.saturating_sub(self.step_started_ms);
            self.phase = Phase::Paused;
        }
    }

    pub fn resume(&mut self, now: u64) {
        if self.phase == Phase::Paused {
            self.step_started_ms = now.saturating_sub(self.paused_elapsed_ms);
            self.phase = Phase::Running;
        }
    }

    pub fn promote(&mut self) -> Vec<Change> {
        self.step = self.steps.len() - 1;
        self.phase = Phase::Succeeded;
        vec![self.set(100)]
    }

    pub fn abort(&mut self, why: Option<String>) -> Vec<Change> {
        self.phase = match why {
            Some(w) => Phase::RolledBack(w),
            None => Phase::Aborted,
        };
        vec![self.set(0)]
    }
}

impl BlueGreen {
    /// Without a preview, flips at once; with one, first pins the preview
    /// CIDR to the new pool. With a drain, stays running after the flip
    /// until the old pool's flows have ended or the drain timed out.
    pub fn start(
        to: &str,
        from: &str,
        preview: Option<ipnet::IpNet>,
        auto_promote_ms: Option<u64>,
        drain_ms: Option<u64>,
        now: u64,
    ) -> (BlueGreen, Vec<Change>) {
        let mut b = BlueGreen {
            to: to.into(),
            from: from.into(),
            preview,
            auto_promote_ms,
            started_ms: now,
            drain_ms,
            flipped_ms: None,
            drain_left: None,
            phase: Phase::Running,
        };
        let changes = match preview {
            Some(cidr) => vec![Change::Cohort {
                cidr,
                pool: Some(to.into()),
            }],
            None => b.flip(now),
        };
        (b, changes)
    }

    fn flip(&mut self, now: u64) -> Vec<Change> {
        self.flipped_ms = Some(now);
        if self.drain_ms.is_none() {
            self.phase = Phase::Succeeded;
        }
        let mut c = vec![weights(&[(&self.to, 100), (&self.from, 0)])];
        if let Some(cidr) = self.preview {
            c.push(Change::Cohort { cidr, pool: None });
        }
        c
    }

    /// Flows still pinned to the old pool.
    /// Flows still on the old pool, or None if not counted since `after`.
    fn old_flows(&self, s: &Signals, after: u64) -> Option<u64> {
        let Some(p) = s.get(&self.from) else {
            return Some(0);
        };
        if p.backends.values().any(|b| b.flows_counted_ms <= after) {
            return None;
        }
        Some(p.backends.values().map(|b| b.active_flows).sum())
    }

    pub fn tick(&mut self, now: u64, s: &Signals) -> Vec<Change> {
        if self.phase != Phase::Running {
            return vec![];
        }
        if let Some(flipped) = self.flipped_ms {
            // Draining the old pool: nothing to change, only to watch.
            let left = self.old_flows(s, flipped);
            if left == Some(0) {
                self.phase = Phase::Succeeded;
            } else if now.saturating_sub(flipped) >= self.drain_ms.unwrap_or(0) {
                self.drain_left = left;
                self.phase = Phase::Succeeded;
            }
            return vec![];
        }
        let bad = unhealthy(s, &self.to);
        if bad > 0 {
            return self.abort(Some(format!(
                "{bad} unhealthy backend(s) in pool {} during preview",
                self.to
            )));
        }
        match self.auto_promote_ms {
            Some(after) if now.saturating_sub(self.started_ms) >= after => self.flip(now),
            _ => vec![],
        }
    }

    pub fn promote(&mut self, now: u64) -> Vec<Change> {
        if self.flipped_ms.is_some() {
            return vec![];
        }
        self.flip(now)
    }

    pub fn abort(&mut self, why: Option<String>) -> Vec<Change> {
        self.phase = match why {
            Some(w) => Phase::RolledBack(w),
            None => Phase::Aborted,
        };
        let mut c = vec![weights(&[(&self.to, 0), (&self.from, 100)])];
        if let Some(cidr) = self.preview {
            c.push(Change::Cohort { cidr, pool: None });
        }
        c
    }

    /// True while it waits for the old pool's flows to end.
    pub fn draining(&self) -> bool {
        self.phase == Phase::Running && self.flipped_ms.is_some()
    }
}

impl Rolling {
    pub fn start(
        pool: &str,
        replace: Vec<(SocketAddr, SocketAddr)>,
        max_unavailable: usize,
        drain_timeout_ms: u64,
        min_healthy_ms: u64,
        progress_deadline_ms: u64,
    ) -> Rolling {
        Rolling {
            pool: pool.into(),
            stages: vec![Stage::Pending; replace.len()],
            replace,
            max_unavailable: max_unavailable.max(1),
            drain_timeout_ms,
            min_healthy_ms,
            progress_deadline_ms,
            linger_limit_ms: None,
            phase: Phase::Running,
        }
    }

    /// Replacements done so far.
    pub fn done(&self) -> usize {
        self.stages.iter().filter(|s| **s == Stage::Done).count()
    }

    pub fn tick(&mut self, now: u64, s: &Signals) -> Vec<Change> {
        if self.phase != Phase::Running {
            return vec![];
        }
        let empty = PoolSignals::default();
        let pool = s.get(&self.pool).unwrap_or(&empty);
        let mut changes = Vec::new();
        for i in 0..self.replace.len() {
            let (old, new) = self.replace[i];
            match self.stages[i] {
                Stage::Pending => {
                    let busy = self
                        .stages
                        .iter()
                        .filter(|s| matches!(s, Stage::Draining(_) | Stage::Adding(_)))
                        .count();
                    if busy < self.max_unavailable {
                        changes.push(Change::DrainBackend {
                            pool: self.pool.clone(),
                            addr: old,
                        });
                        self.stages[i] = Stage::Draining(now);
                    }
                }
                Stage::Draining(since) => {
                    let drained = pool
                        .backends
                        .get(&old)
                        .is_none_or(|b| b.active_flows == 0 && b.flows_counted_ms > since);
                    if drained || now.saturating_sub(since) >= self.drain_timeout_ms {
                        changes.push(Change::RemoveBackend {
                            pool: self.pool.clone(),
                            addr: old,
                            linger_limit_ms: self.linger_limit_ms,
                        });
                        changes.push(Change::AddBackend {
                            pool: self.pool.clone(),
                            addr: new,
                        });
                        self.stages[i] = Stage::Adding(now);
                    }
                }
                Stage::Adding(since) => {
                    let b = pool.backends.get(&new);
                    let healthy_for = b
                        .filter(|b| b.healthy)
                        .and_then(|b| b.healthy_since_ms)
                        .map(|t| now.saturating_sub(t.max(since)));
                    if healthy_for.is_some_and(|d| d >= self.min_healthy_ms) {
                        self.stages[i] = Stage::Done;
                    } else if now.saturating_sub(since) >= self.progress_deadline_ms {
                        self.phase = Phase::Holding(format!(
                            "replacement {new} for {old} did not become healthy"
                        ));
                        return changes;
                    }
                }
                Stage::Done => {}
            }
        }
        if self.stages.iter().all(|s| *s == Stage::Done) {
            self.phase = Phase::Succeeded;
        }
        changes
    }
}

/// Which strategy, as a type: for status, metrics labels and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    Canary,
    BlueGreen,
    Rolling,
}

impl StrategyKind {
    pub fn name(self) -> &'static str {
        match self {
            StrategyKind::Canary => "canary",
            StrategyKind::BlueGreen => "blue_green",
            StrategyKind::Rolling => "rolling",
        }
    }
}

/// A phase without its free-text reason: bounded, for labels and scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseKind {
    Running,
    Paused,
    Holding,
    Succeeded,
    RolledBack,
    Aborted,
}

impl PhaseKind {
    pub fn name(self) -> &'static str {
        match self {
            PhaseKind::Running => "running",
            PhaseKind::Paused => "paused",
            PhaseKind::Holding => "holding",
            PhaseKind::Succeeded => "succeeded",
            PhaseKind::RolledBack => "rolled_back",
            PhaseKind::Aborted => "aborted",
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(
        to_flows: u64,
        to_rsts: u64,
        from_flows: u64,
        from_rsts: u64,
        to_unhealthy: usize,
    ) -> Signals {
        let mut s = Signals::new();
        let mut green = PoolSignals {
            new_flows: to_flows,
            rsts: to_rsts,
            synacks: to_flows,
            ..Default::default()
        };
        for i in 0..2u8 {
            green.backends.insert(
                format!("198.18.2.{i}:80").parse().unwrap(),
                BackendSignals {
                    healthy: (i as usize) >= to_unhealthy,
                    healthy_since_ms: Some(0),
                    active_flows: 0,
                    flows_counted_ms: u64::MAX,
                },
            );
        }
        s.insert("green".into(), green);
        s.insert(
            "blue".into(),
            PoolSignals {
                new_flows: from_flows,
                rsts: from_rsts,
                synacks: from_flows,
                ..Default::default()
            },
        );
        s
    }

    /// Gates for tests without traffic: steps do not wait for connections.
    fn quiet() -> Gates {
        Gates {
            min_flows: 0,
            ..Default::default()
        }
    }

    fn w(changes: &[Change]) -> Option<(u32, u32)> {
        changes.iter().find_map(|c| match c {
            Change::Weights(m) => Some((m["green"], m["blue"])),
            _ => None,
        })
    }

    #[test]
    fn canary_walks_its_steps_and_succeeds() {
        let s = sig(0, 0, 0, 0, 0);
        let (mut c, ch) = Canary::start(
            "green",
            "blue",
            vec![1, 5, 25, 50, 100],
            1000,
            quiet(),
            0,
            &s,
        );
        assert_eq!(w(&ch), Some((1, 99)));
        assert!(c.tick(500, &s).is_empty(), "holds for the interval");
        assert_eq!(w(&c.tick(1000, &s)), Some((5, 95)));
        assert_eq!(w(&c.tick(2000, &s)), Some((25, 75)));
        assert_eq!(w(&c.tick(3000, &s)), Some((50, 50)));
        assert_eq!(w(&c.tick(4000, &s)), Some((100, 0)));
        assert!(c.tick(5000, &s).is_empty());
        assert_eq!(c.phase, Phase::Succeeded);
    }

    #[test]
    fn canary_rolls_back_on_an_unhealthy_backend() {
        let (mut c, _) = Canary::start(
            "green",
            "blue",
            vec![10, 50, 100],
            1000,
            quiet(),
            0,
            &sig(0, 0, 0, 0, 0),
        );
        assert_eq!(w(&c.tick(1000, &sig(0, 0, 0, 0, 0))), Some((50, 50)));
        assert_eq!(w(&c.tick(1100, &sig(0, 0, 0, 0, 1))), Some((0, 100)));
        assert!(
            matches!(&c.phase, Phase::RolledBack(why) if why.contains("unhealthy")),
            "{:?}",
            c.phase
        );
        assert!(
            c.tick(5000, &sig(0, 0, 0, 0, 0)).is_empty(),
            "a rolled-back canary stays put"
        );
    }

    #[test]
    fn canary_rst_gate_compares_against_the_old_pool() {
        let (mut c, _) = Canary::start(
            "green",
            "blue",
            vec![10, 100],
            1000,
            Gates::default(),
            0,
            &sig(100, 5, 1000, 50, 0),
        );
        // Same ratio as blue (5%): passes.
        assert!(c.tick(100, &sig(200, 10, 2000, 100, 0)).is_empty());
        assert_eq!(c.phase, Phase::Running);
        // Too few new flows to judge: inconclusive, holds.
        let (mut c2, _) = Canary::start(
            "green",
            "blue",
            vec![10, 100],
            1000,
            Gates::default(),
            0,
            &sig(0, 0, 0, 0, 0),
        );
        assert!(c2.tick(100, &sig(5, 5, 100, 0, 0)).is_empty());
        assert_eq!(c2.phase, Phase::Running);
        // 50% RSTs against 5%: rolls back.
        assert_eq!(w(&c.tick(200, &sig(300, 60, 3000, 150, 0))), Some((0, 100)));
        assert!(matches!(&c.phase, Phase::RolledBack(why) if why.contains("RST")));
    }

    #[test]
    fn blue_green_drain_waits_for_the_old_pools_flows() {
        let flows = |n: u64| -> Signals {
            let mut p = PoolSignals::default();
            p.backends.insert(
                "198.18.1.11:80".parse().unwrap(),
                BackendSignals {
                    healthy: true,
                    healthy_since_ms: Some(0),
                    active_flows: n,
                    flows_counted_ms: u64::MAX,
                },
            );
            [("blue".to_string(), p)].into()
        };
        let (mut b, ch) = BlueGreen::start("green", "blue", None, None, Some(1000), 0);
        assert_eq!(w(&ch), Some((100, 0)));
        assert!(b.draining());
        b.tick(500, &flows(3));
        assert!(b.draining(), "flows left, within the timeout");
        b.tick(600, &flows(0));
        assert_eq!(b.phase, Phase::Succeeded);
        let (mut b, _) = BlueGreen::start("green", "blue", None, None, Some(1000), 0);
        b.tick(1000, &flows(2));
        assert_eq!((b.phase.clone(), b.drain_left), (Phase::Succeeded, Some(2)));
    }

    #[test]
    fn canary_rolls_back_when_connection_attempts_go_unanswered() {
        let (mut c, _) = Canary::start(
            "green",
            "blue",
            vec![10, 100],
            1000,
            Gates::default(),
            0,
            &sig(0, 0, 0, 0, 0),
        );
        let mut s = sig(100, 0, 1000, 0, 0);
        s.get_mut("green").unwrap().synacks = 40; // 60% unanswered
        assert_eq!(w(&c.tick(100, &s)), Some((0, 100)));
        assert!(
            matches!(&c.phase, Phase::RolledBack(why) if why.contains("no answer")),
            "{:?}",
            c.phase
        );
    }

    #[test]
    fn a_step_waits_for_traffic_and_for_prometheus() {
        let gates = Gates {
            prometheus: Some(PromGate {
                token: None,
                url: "http://127.0.0.1:9090".into(),
                query: "errors".into(),
                max: 0.05,
                on_no_data: NoData::Hold,
            }),
            ..Default::default()
        };
        let (mut c, _) = Canary::start(
            "green",
            "blue",
            vec![10, 100],
            1000,
            gates,
            0,
            &sig(0, 0, 0, 0, 0),
        );
        assert!(
            c.tick(1000, &sig(5, 0, 50, 0, 0)).is_empty(),
            "too few connections"
        );
        assert!(c.waiting.as_ref().unwrap().contains("new connections"));
        assert!(
            c.tick(1100, &sig(50, 0, 500, 0, 0)).is_empty(),
            "no Prometheus answer yet"
        );
        c.reading = Some(Reading::NoData);
        assert!(
            c.tick(1200, &sig(50, 0, 500, 0, 0)).is_empty(),
            "no data: hold"
        );
        c.reading = Some(Reading::Value(0.01));
        assert_eq!(w(&c.tick(1300, &sig(50, 0, 500, 0, 0))), Some((100, 0)));
        c.reading = Some(Reading::Value(0.5));
        assert_eq!(w(&c.tick(1400, &sig(60, 0, 600, 0, 0))), Some((0, 100)));
        assert!(matches!(&c.phase, Phase::RolledBack(why) if why.contains("Prometheus")));
        // With on_no_data = fail, no data rolls back.
        let mut gates = quiet();
        gates.prometheus = Some(PromGate {
            token: None,
            url: "http://x:1".into(),
            query: "q".into(),
            max: 1.0,
            on_no_data: NoData::Fail,
        });
        let (mut c, _) = Canary::start(
            "green",
            "blue",
            vec![10, 100],
            1000,
            gates,
            0,
            &sig(0, 0, 0, 0, 0),
        );
        c.reading = Some(Reading::NoData);
        assert_eq!(w(&c.tick(10, &sig(0, 0, 0, 0, 0))), Some((0, 100)));
    }

    #[test]
    fn canary_pause_resume_promote_abort() {
        let s = sig(0, 0, 0, 0, 0);
        let (mut c, _) = Canary::start("green", "blue", vec![10, 50, 100], 1000, quiet(), 0, &s);
        c.pause(600);
        assert!(c.tick(5000, &s).is_empty(), "paused: no step");
        c.resume(10_000);
        assert!(c.tick(10_300, &s).is_empty(), "resumed with 400ms left");
        assert_eq!(w(&c.tick(10_400, &s)), Some((50, 50)));
        assert_eq!(w(&c.clone().promote()), Some((100, 0)));
        assert_eq!(w(&c.abort(None)), Some((0, 100)));
        assert_eq!(c.phase, Phase::Aborted);
    }

    #[test]
    fn blue_green_preview_then_auto_promote() {
        let cidr: ipnet::IpNet = "198.18.50.0/24".parse().unwrap();
        let (mut b, ch) = BlueGreen::start("green", "blue", Some(cidr), Some(1000), None, 0);
        assert_eq!(
            ch,
            vec![Change::Cohort {
                cidr,
                pool: Some("green".into())
            }]
        );
        assert!(b.tick(500, &sig(0, 0, 0, 0, 0)).is_empty());
        let ch = b.tick(1000, &sig(0, 0, 0, 0, 0));
        assert_eq!(w(&ch), Some((100, 0)));
        assert!(ch.contains(&Change::Cohort { cidr, pool: None }));
        assert_eq!(b.phase, Phase::Succeeded);
        // An unhealthy new pool during preview aborts it.
        let (mut b, _) = BlueGreen::start("green", "blue", Some(cidr), Some(1000), None, 0);
        assert_eq!(w(&b.tick(10, &sig(0, 0, 0, 0, 1))), Some((0, 100)));
        assert!(matches!(b.phase, Phase::RolledBack(_)));
    }

    fn rolling_sig(flows_old: u64, new_healthy_since: Option<u64>) -> Signals {
        let mut p = PoolSignals::default();
        p.backends.insert(
            "198.18.1.11:80".parse().unwrap(),
            BackendSignals {
                healthy: true,
                healthy_since_ms: Some(0),
                active_flows: flows_old,
                flows_counted_ms: u64::MAX,
            },
        );
        p.backends.insert(
            "198.18.1.21:80".parse().unwrap(),
            BackendSignals {
                healthy: new_healthy_since.is_some(),
                healthy_since_ms: new_healthy_since,
                active_flows: 0,
                flows_counted_ms: u64::MAX,
            },
        );
        [("blue".to_string(), p)].into()
    }

    #[test]
    fn rolling_drains_removes_adds_and_waits_for_health() {
        let (old, new): (SocketAddr, SocketAddr) = (
            "198.18.1.11:80".parse().unwrap(),
            "198.18.1.21:80".parse().unwrap(),
        );
        let mut r = Rolling::start("blue", vec![(old, new)], 1, 10_000, 500, 5_000);
        assert_eq!(
            r.tick(0, &rolling_sig(3, None)),
            vec![Change::DrainBackend {
                pool: "blue".into(),
                addr: old
            }]
        );
        assert!(
            r.tick(100, &rolling_sig(3, None)).is_empty(),
            "waits while flows remain"
        );
        assert_eq!(
            r.tick(200, &rolling_sig(0, None)),
            vec![
                Change::RemoveBackend {
                    pool: "blue".into(),
                    addr: old,
                    linger_limit_ms: None,
                },
                Change::AddBackend {
                    pool: "blue".into(),
                    addr: new
                }
            ]
        );
        assert!(
            r.tick(300, &rolling_sig(0, Some(300))).is_empty(),
            "healthy, but not long enough"
        );
        assert!(r.tick(800, &rolling_sig(0, Some(300))).is_empty());
        assert_eq!(r.phase, Phase::Succeeded);
    }

    #[test]
    fn a_drain_does_not_trust_a_flow_count_taken_before_it_began() {
        let (old, new): (SocketAddr, SocketAddr) = (
            "198.18.1.11:80".parse().unwrap(),
            "198.18.1.21:80".parse().unwrap(),
        );
        let mut r = Rolling::start("blue", vec![(old, new)], 1, 10_000, 500, 5_000);
        r.tick(100, &rolling_sig(3, None));
        let mut stale = rolling_sig(0, None);
        stale
            .get_mut("blue")
            .unwrap()
            .backends
            .get_mut(&old)
            .unwrap()
            .flows_counted_ms = 50;
        assert!(
            r.tick(200, &stale).is_empty(),
            "a count from before the drain says nothing"
        );
        assert_eq!(
            r.tick(300, &rolling_sig(0, None)).len(),
            2,
            "a fresh zero ends the drain"
        );
    }

    #[test]
    fn rolling_drain_timeout_and_holding_on_a_sick_replacement() {
        let (old, new): (SocketAddr, SocketAddr) = (
            "198.18.1.11:80".parse().unwrap(),
            "198.18.1.21:80".parse().unwrap(),
        );
        let mut r = Rolling::start("blue", vec![(old, new)], 1, 1_000, 500, 2_000);
        r.tick(0, &rolling_sig(3, None));
        assert_eq!(
            r.tick(1_000, &rolling_sig(3, None)).len(),
            2,
            "drain timeout reached: remove and add"
        );
        assert!(r.tick(2_000, &rolling_sig(0, None)).is_empty());
        r.tick(3_000, &rolling_sig(0, None));
        assert!(
            matches!(&r.phase, Phase::Holding(why) if why.contains("did not become healthy")),
            "{:?}",
            r.phase
        );
    }
}
