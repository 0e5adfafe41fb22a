//! What a canary checks all through every step: its gates, as an operator
//! gives them (CLI, API, config) and as the strategy keeps them.

use serde::{Deserialize, Serialize};

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
