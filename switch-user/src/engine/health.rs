//! Health verdicts: a run of probe results becomes healthy or not with
//! rise and fall, as HAProxy's `inter`/`rise`/`fall`. Pure; the probes are
//! `adapters::health`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub healthy: bool,
    /// When `healthy` last changed (ms).
    pub since_ms: u64,
    ok_run: u32,
    fail_run: u32,
    pub last_error: Option<String>,
}

impl Health {
    pub fn new(healthy: bool, now: u64) -> Self {
        Health {
            healthy,
            since_ms: now,
            ok_run: 0,
            fail_run: 0,
            last_error: None,
        }
    }

    /// Counts one probe result; true when the state flipped.
    pub fn record(&mut self, result: Result<(), String>, rise: u32, fall: u32, now: u64) -> bool {
        match result {
            Ok(()) => {
                self.ok_run += 1;
                self.fail_run = 0;
                if !self.healthy && self.ok_run >= rise {
                    self.healthy = true;
                    self.since_ms = now;
                    self.last_error = None;
                    return true;
                }
            }
            Err(e) => {
                self.fail_run += 1;
                self.ok_run = 0;
                self.last_error = Some(e);
                if self.healthy && self.fail_run >= fall {
                    self.healthy = false;
                    self.since_ms = now;
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_then_rise() {
        let mut h = Health::new(true, 0);
        assert!(!h.record(Err("x".into()), 2, 3, 1));
        assert!(!h.record(Err("x".into()), 2, 3, 2));
        assert!(h.record(Err("x".into()), 2, 3, 3), "third failure: down");
        assert!(!h.healthy);
        assert!(!h.record(Ok(()), 2, 3, 4));
        assert!(h.record(Ok(()), 2, 3, 5), "second success: up");
        assert!(h.healthy && h.since_ms == 5);
        // A success between failures resets the count.
        h.record(Err("x".into()), 2, 3, 6);
        h.record(Err("x".into()), 2, 3, 7);
        h.record(Ok(()), 2, 3, 8);
        assert!(!h.record(Err("x".into()), 2, 3, 9));
        assert!(h.healthy);
    }
}
