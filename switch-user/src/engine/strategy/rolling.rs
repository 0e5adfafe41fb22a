//! A rolling replacement: backends drained, removed and replaced a few at a time, each replacement healthy before the next.

use super::*;

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
