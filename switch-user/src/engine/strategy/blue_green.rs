//! Blue-green: every new connection to the other pool at once (or first a preview cohort), the old pool drained and kept warm.

use super::*;

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
