//! Strategy and phase kinds without their data: bounded names for status,
//! metrics labels and scripts.

use serde::{Deserialize, Serialize};

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
