//! The seam between the fleet agent and the daemon it runs in: the agent
//! owns this trait, the daemon implements it, so the agent never reaches
//! into the daemon's own state.

use std::collections::HashMap;

use anyhow::Result;
use switch_common::BackendStats;

use super::state::FleetState;
use crate::engine::{controller::Controller, maps::Maps};

/// What the agent needs of the daemon.
pub trait Host: Send {
    /// The parts the agent reads and writes, borrowed together; `None`
    /// outside fleet mode (the agent is not started then).
    fn parts(&mut self) -> Option<Parts<'_>>;
    /// The controller changed through the agent (adopted records): bring
    /// what follows it in step (shadow replays) and cache it (`state.json`).
    fn committed(&mut self);
}

/// The map writes of `Maps` and the per-backend counters the host reports.
pub trait HostMaps: Maps {
    fn backend_stats(&self, index: u32) -> Result<BackendStats>;
}

/// The daemon's state as the agent sees it.
pub struct Parts<'a> {
    pub fleet: &'a mut FleetState,
    pub ctl: &'a mut Controller,
    pub dp: &'a mut dyn HostMaps,
    /// Live flows per backend index, and when they were counted (ms).
    pub flow_counts: &'a HashMap<u32, u64>,
    pub flow_counts_ms: u64,
    /// Set when the agent changed the controller: see `Host::committed`.
    pub committed: bool,
}
