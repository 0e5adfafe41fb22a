//! The seam between the engine and the kernel: the map writes the
//! programmer makes (`Maps`; `adapters::dataplane::Dataplane` is the real
//! one, tests and the fleet's dry runs have their own) and the capacities
//! the maps are created with.

use anyhow::Result;
use switch_common::{
    AddrFilter, Backend, Config, NextHop, Real, RealKey, Service, ServiceKey, Table,
};

/// The map writes the programmer needs; `Dataplane` is the real one.
pub trait Maps {
    fn set_config(&mut self, c: &Config) -> Result<()>;
    fn write_table(&mut self, slot: u32, t: &Table) -> Result<()>;
    fn set_service(&mut self, k: &ServiceKey, s: &Service) -> Result<()>;
    fn remove_service(&mut self, k: &ServiceKey) -> Result<()>;
    fn set_backend(&mut self, index: u32, b: &Backend) -> Result<()>;
    /// The cached next hop of a backend index (the daemon's neighbour
    /// round fills it; the programmer clears it when an index changes hands).
    fn set_nexthop(&mut self, index: u32, hop: &NextHop) -> Result<()>;
    /// The bitmap of addresses that may send replies (nat/fullnat backends).
    fn set_reply_filter(&mut self, f: &AddrFilter) -> Result<()>;
    /// The bitmap of addresses that may be VIPs.
    fn set_vip_filter(&mut self, f: &AddrFilter) -> Result<()>;
    /// A service's shadow sample (flows in 65,536; 0: none).
    fn set_shadow(&mut self, id: u32, sample: u32) -> Result<()>;
    fn set_real(&mut self, k: &RealKey, r: &Real) -> Result<()>;
    fn remove_real(&mut self, k: &RealKey) -> Result<()>;
    fn set_cohort(
        &mut self,
        service: u32,
        addr: [u8; 16],
        prefix: u32,
        present: bool,
    ) -> Result<()>;
}

/// Map capacities, fixed when the maps are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub services: u32,
    pub backends: u32,
    pub flows: u32,
    /// Connections that have sent only a SYN (`HALF_OPEN`).
    pub half_open: u32,
    /// Selection tables: one live per service plus spares for changes in
    /// flight and for cohorts.
    pub tables: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            services: switch_common::DEFAULT_MAX_SERVICES,
            backends: switch_common::DEFAULT_MAX_BACKENDS,
            flows: switch_common::DEFAULT_MAX_FLOWS,
            half_open: switch_common::DEFAULT_MAX_HALF_OPEN,
            tables: switch_common::DEFAULT_MAX_SERVICES + 64 + HISTORY_TABLES,
        }
    }
}

impl Capacity {
    /// Small maps for tests and the demo (a table is 128 KiB).
    pub fn small() -> Self {
        Capacity {
            services: 16,
            backends: 256,
            flows: 65_536,
            half_open: 16_384,
            tables: 40,
        }
    }
}

/// Previous tables kept at once: the services changed most recently. The
/// daemon sizes `TABLES` for them.
pub const HISTORY_TABLES: u32 = 64;
