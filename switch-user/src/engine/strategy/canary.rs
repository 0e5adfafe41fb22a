//! A canary: a growing share of new connections to the new pool, step by step, each step held and checked by its gates; rolled back when one fails.

use super::*;

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
