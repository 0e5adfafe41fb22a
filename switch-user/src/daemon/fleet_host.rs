//! The daemon as the fleet agent's host: the seam the agent owns
//! (`adapters::fleet::host`), implemented over the daemon's state.

use super::*;
use crate::adapters::fleet::host::{Host, HostMaps, Parts};

impl Host for Shared {
    fn parts(&mut self) -> Option<Parts<'_>> {
        Some(Parts {
            fleet: self.fleet.as_mut()?,
            ctl: &mut self.ctl,
            dp: &mut self.dp,
            flow_counts: &self.flow_counts,
            flow_counts_ms: self.flow_counts_ms,
            committed: false,
        })
    }

    fn committed(&mut self) {
        sync_shadows(self);
        if let Err(e) = persist(self) {
            tracing::warn!("fleet: caching state: {e:#}");
        }
    }
}

impl HostMaps for Dataplane {
    fn backend_stats(&self, index: u32) -> Result<switch_common::BackendStats> {
        Dataplane::backend_stats(self, index)
    }
}
