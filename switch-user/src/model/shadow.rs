//! Shadow deployments as the controller and the API see them: what is
//! replayed where, and the report of how the shadow answered. The replays
//! themselves are `adapters::shadow`.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

/// A running (or ended) shadow, as the controller keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowSpec {
    pub to: String,
    pub sample_percent: f64,
    /// Flows in 65,536 that are sampled (what the data plane gets).
    pub sample: u32,
    pub started_ms: u64,
    pub until_ms: Option<u64>,
    pub max_sessions: usize,
    pub max_buffer: usize,
    /// Why it ended, once it has.
    #[serde(default)]
    pub ended: Option<String>,
}

impl ShadowSpec {
    pub fn running(&self) -> bool {
        self.ended.is_none()
    }
}

/// Percentiles of a sample of times.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// HTTP/1.x status classes seen (1xx..5xx); `other` for answers that were
/// not HTTP/1.x.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Statuses {
    #[serde(rename = "1xx")]
    pub c1: u64,
    #[serde(rename = "2xx")]
    pub c2: u64,
    #[serde(rename = "3xx")]
    pub c3: u64,
    #[serde(rename = "4xx")]
    pub c4: u64,
    #[serde(rename = "5xx")]
    pub c5: u64,
}

impl Statuses {
    pub fn add(&mut self, code: u16) {
        match code / 100 {
            1 => self.c1 += 1,
            2 => self.c2 += 1,
            3 => self.c3 += 1,
            4 => self.c4 += 1,
            5 => self.c5 += 1,
            _ => {}
        }
    }
    pub fn total(&self) -> u64 {
        self.c1 + self.c2 + self.c3 + self.c4 + self.c5
    }
}

/// What one shadow backend did with the replays it got.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendReport {
    pub replayed: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub refused: u64,
    pub reset: u64,
    pub timed_out: u64,
    pub statuses: Statuses,
}

/// The shadow's figures against the live pool's, for the same sampled
/// connections.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Sampled connections (TCP) or flows (UDP) seen.
    pub sampled: u64,
    /// Replays that connected and are over (their outcome counted below).
    pub replayed: u64,
    /// Replays whose outcome is known: `replayed` plus those that never
    /// connected (refused, or reset or timed out while connecting).
    pub attempts: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub refused: u64,
    pub reset: u64,
    pub timed_out: u64,
    /// Replays ended early: `max_sessions` reached, `max_buffer` exceeded,
    /// a segment too large to copy.
    pub overflow: u64,
    /// Copies the data plane could not queue (ring buffer full).
    pub ring_lost: u64,
    /// UDP: datagrams sent to the shadow, and its answers (dropped here).
    pub datagrams: u64,
    pub datagram_replies: u64,
    pub shadow_ttfb: Latency,
    pub live_ttfb: Latency,
    pub shadow_statuses: Statuses,
    pub live_statuses: Statuses,
    /// Response bytes of the live pool for the sampled connections.
    pub live_bytes: u64,
    /// (shadow bytes - live bytes) / live bytes over the sampled
    /// connections: how much bigger (or smaller) the shadow's answers are.
    pub response_size_difference: f64,
    /// Share of replays that failed (refused, reset, timed out, 5xx) and
    /// the live pool's share of 5xx answers.
    pub shadow_error_rate: f64,
    pub live_error_rate: f64,
    pub backends: BTreeMap<SocketAddr, BackendReport>,
}

/// `status --json`'s view of a shadow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowStatus {
    pub spec: ShadowSpec,
    pub report: Report,
}
