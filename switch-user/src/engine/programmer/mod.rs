//! Turns the desired state of services into map entries, in an order that
//! keeps every packet consistent: backends first, then the new table into a
//! free slot, then one write of the service entry that makes it all live.
//!
//! It talks to the kernel only through [`Maps`], so it is tested without one.

mod apply;
mod entries;

pub use entries::{addr_bytes, family, service_key, to_table};
use entries::{commit_point, echo_key, mode_flag, real_key, service_entry, set_bit};

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use switch_common::{
    AddrFilter, Backend, BackendState, CONFIG_FULLNAT, CONFIG_NAT, CONFIG_READY, Config, FAMILY_V4,
    FAMILY_V6, Mode, NO_BACKEND, NO_PREV_TABLE, NextHop, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP,
    PROTO_UDP, Real, RealKey, SERVICE_CLIENT_AFFINITY, Service, ServiceKey, TABLE_SIZE, Table,
    hash::backend_ident,
    table::{self, BackendSpec, PoolSpec},
};

pub use crate::engine::maps::{HISTORY_TABLES, Maps};
use crate::model::config::{AdminState, Affinity, ForwardMode, Protocol, ServiceConfig};

/// A retired table slot is not rewritten for this long: far longer than any
/// XDP run that may still be reading it.
const TABLE_QUIESCE: Duration = Duration::from_millis(20);

/// Where one service lives in the maps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Placed {
    pub id: u32,
    pub table: u32,
    pub cohort_table: Option<u32>,
    pub spec: ServiceConfig,
    /// Backend address -> global backend index.
    pub backends: BTreeMap<SocketAddr, u32>,
    /// Removed backends that keep their index (and so their established
    /// flows) until the controller releases them.
    #[serde(default)]
    pub lingering: BTreeMap<SocketAddr, u32>,
    /// The table live before the last change, kept so that a flow without a
    /// pin whose slot changed hands goes back to its previous owner.
    #[serde(default)]
    pub prev_table: Option<u32>,
}

/// Allocation state; persisted by the daemon so a restart adopts the pinned
/// maps with the same indexes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Programmer {
    pub seed: u32,
    pub max_services: u32,
    pub max_backends: u32,
    pub max_tables: u32,
    pub services: BTreeMap<String, Placed>,
    /// Generation last given to each backend index.
    generations: BTreeMap<u32, u32>,
    free_tables: VecDeque<u32>,
    /// Flow timeouts in ns: TCP close grace, TCP idle, UDP idle.
    timeouts: [u64; 3],
    #[serde(skip)]
    retired: Vec<(u32, Option<Instant>)>,
    /// Services that keep a previous table, oldest change first (at most
    /// `HISTORY_TABLES`).
    #[serde(default)]
    history: VecDeque<String>,
    /// Keep previous tables at all (on by default; off only to show in a
    /// test what they are for).
    #[serde(default = "yes")]
    pub slot_history: bool,
    /// A fleet behind ECMP: nat replies of connections another host
    /// forwarded are recognised by the table (`CONFIG_TABLE_REPLIES`).
    #[serde(default)]
    pub table_replies: bool,
    /// Address filters with every bit set (every packet takes the exact
    /// lookups). The daemon starts with them open: until its own program
    /// is attached, the program reading them may be an older build whose
    /// filter hash differs, and a filter may cost a lookup, never a VIP.
    #[serde(skip)]
    pub filters_open: bool,
}

fn yes() -> bool {
    true
}

impl Programmer {
    pub fn new(seed: u32, cap: crate::engine::maps::Capacity) -> Self {
        Programmer {
            seed,
            max_services: cap.services,
            max_backends: cap.backends,
            max_tables: cap.tables,
            services: BTreeMap::new(),
            generations: BTreeMap::new(),
            free_tables: (0..cap.tables).collect(),
            timeouts: [10_000_000_000, 3_600_000_000_000, 30_000_000_000],
            retired: Vec::new(),
            history: VecDeque::new(),
            slot_history: true,
            table_replies: false,
            filters_open: false,
        }
    }

    /// Writes the global config (seed, timeouts) and marks the program ready.
    pub fn init(
        &mut self,
        maps: &mut dyn Maps,
        d: &crate::model::config::DaemonConfig,
    ) -> Result<()> {
        self.timeouts = [
            d.tcp_close_grace.as_nanos() as u64,
            d.tcp_idle.as_nanos() as u64,
            d.udp_idle.as_nanos() as u64,
        ];
        self.write_config(maps)
    }

    /// Closes the address filters opened for start-up (`filters_open`),
    /// once this build's program is attached.
    pub fn close_filters(&mut self, maps: &mut dyn Maps) -> Result<()> {
        self.filters_open = false;
        self.write_config(maps)
    }

    /// The global config (its flags say which reply lookups are needed) and
    /// the address filters, from the placed services.
    fn write_config(&self, maps: &mut dyn Maps) -> Result<()> {
        self.write_config_with(maps, None)
    }

    /// The same with `also`'s reply lookups, backends and VIP switched on
    /// too: written before it goes live (extras only cost a lookup).
    fn write_config_with(&self, maps: &mut dyn Maps, also: Option<&ServiceConfig>) -> Result<()> {
        self.write_filters(maps, also)?;
        let flags = self
            .services
            .values()
            .map(|p| p.spec.mode)
            .chain(also.map(|s| s.mode))
            .fold(CONFIG_READY, |f, m| f | mode_flag(m))
            | if self.table_replies {
                switch_common::CONFIG_TABLE_REPLIES
            } else {
                0
            };
        maps.set_config(&Config {
            seed: self.seed,
            flags,
            tcp_close_grace_ns: self.timeouts[0],
            tcp_idle_ns: self.timeouts[1],
            udp_idle_ns: self.timeouts[2],
        })
    }

    /// One bit per backend address of every nat or fullnat service (and of
    /// `also`): replies can only come from those; and one per VIP.
    fn write_filters(&self, maps: &mut dyn Maps, also: Option<&ServiceConfig>) -> Result<()> {
        let mut f = AddrFilter {
            words: [0; switch_common::hash::REPLY_FILTER_WORDS],
        };
        let mut set = |a: SocketAddr| set_bit(&mut f, a.ip());
        for p in self.services.values() {
            if p.spec.mode != ForwardMode::Dsr {
                p.backends
                    .keys()
                    .chain(p.lingering.keys())
                    .for_each(|a| set(*a));
            }
        }
        if let Some(spec) = also.filter(|s| s.mode != ForwardMode::Dsr) {
            spec.pools
                .iter()
                .flat_map(|p| &p.backends)
                .for_each(|b| set(b.addr()));
        }
        if self.filters_open {
            f.words = [u64::MAX; switch_common::hash::REPLY_FILTER_WORDS];
        }
        maps.set_reply_filter(&f)?;
        // The VIPs, likewise.
        let mut v = AddrFilter {
            words: [0; switch_common::hash::REPLY_FILTER_WORDS],
        };
        let vips = self
            .services
            .values()
            .map(|p| p.spec.vip)
            .chain(also.map(|s| s.vip));
        for vip in vips {
            set_bit(&mut v, vip.ip());
        }
        if self.filters_open {
            v.words = [u64::MAX; switch_common::hash::REPLY_FILTER_WORDS];
        }
        maps.set_vip_filter(&v)
    }

    fn used_backends(&self) -> BTreeSet<u32> {
        self.services
            .values()
            .flat_map(|p| p.backends.values().chain(p.lingering.values()).copied())
            .collect()
    }

    fn take_table(&mut self) -> Result<u32> {
        // Retired slots come back once quiet.
        let now = Instant::now();
        let mut i = 0;
        while i < self.retired.len() {
            if self.retired[i]
                .1
                .is_none_or(|t| now.duration_since(t) >= TABLE_QUIESCE)
            {
                let (slot, _) = self.retired.swap_remove(i);
                self.free_tables.push_back(slot);
            } else {
                i += 1;
            }
        }
        if let Some(s) = self.free_tables.pop_front() {
            return Ok(s);
        }
        if let Some(&(slot, Some(t))) = self.retired.iter().min_by_key(|r| r.1) {
            std::thread::sleep(TABLE_QUIESCE.saturating_sub(now.duration_since(t)));
            self.retired.retain(|r| r.0 != slot);
            return Ok(slot);
        }
        bail!("selection table capacity ({}) exhausted", self.max_tables)
    }

    fn retire_table(&mut self, slot: u32) {
        self.retired.push((slot, Some(Instant::now())));
    }

    /// Checks that `spec` can be applied (capacity, conflicts) without
    /// writing anything.
    pub fn check(&self, spec: &ServiceConfig) -> Result<()> {
        spec.validate()?;
        let key = service_key(spec);
        for (name, p) in &self.services {
            if name != &spec.name && service_key(&p.spec) == key {
                bail!("vip: {} is already the VIP of service {name:?}", spec.vip);
            }
        }
        if !self.services.contains_key(&spec.name)
            && self.services.len() as u32 >= self.max_services
        {
            bail!("service capacity ({}) exhausted", self.max_services);
        }
        let existing = self.services.get(&spec.name);
        let new: usize = spec
            .pools
            .iter()
            .flat_map(|p| &p.backends)
            .filter(|b| {
                existing.is_none_or(|e| {
                    !e.backends.contains_key(&b.addr()) && !e.lingering.contains_key(&b.addr())
                })
            })
            .count();
        let free = self.max_backends as usize - self.used_backends().len();
        if new > free {
            bail!("backend capacity exhausted: {new} new backends, {free} free");
        }
        let tables = 1 + usize::from(!spec.cohorts.is_empty());
        // Previous tables give way to a new service's tables.
        let spare = self.free_tables.len() + self.retired.len() + self.history.len();
        if tables > spare {
            bail!("selection table capacity ({}) exhausted", self.max_tables);
        }
        Ok(())
    }

    /// Drops the previous table of the service changed longest ago: its
    /// service entry is rewritten without it, then the table is retired.
    /// False when no service keeps one.
    fn forget_oldest_history(&mut self, maps: &mut dyn Maps) -> Result<bool> {
        let Some(name) = self.history.pop_front() else {
            return Ok(false);
        };
        let Some(p) = self.services.get(&name) else {
            return Ok(true);
        };
        let Some(prev) = p.prev_table else {
            return Ok(true);
        };
        let entry = service_entry(p.id, p.table, p.cohort_table, None, &p.spec);
        commit_point(maps, &service_key(&p.spec), &entry)?;
        if let Some(p) = self.services.get_mut(&name) {
            p.prev_table = None;
        }
        self.retire_table(prev);
        Ok(true)
    }

    /// Lets go of a lingering backend: its pinned flows are re-chosen and
    /// its index is free again.
    pub fn release(&mut self, maps: &mut dyn Maps, service: &str, addr: SocketAddr) -> Result<()> {
        let Some(p) = self.services.get_mut(service) else {
            return Ok(());
        };
        let Some(index) = p.lingering.remove(&addr) else {
            return Ok(());
        };
        let spec = p.spec.clone();
        self.release_backend(maps, &spec, addr, index)
    }

    fn release_backend(
        &mut self,
        maps: &mut dyn Maps,
        spec: &ServiceConfig,
        a: SocketAddr,
        index: u32,
    ) -> Result<()> {
        // Unused: pinned flows are re-chosen rather than sent to a backend
        // that is gone; the next occupant gets a new generation.
        maps.set_backend(index, &Backend::default())?;
        maps.remove_real(&real_key(spec, a))
    }

    /// Removes a service: the VIP stops being forwarded at once.
    pub fn remove(&mut self, maps: &mut dyn Maps, name: &str) -> Result<()> {
        let p = self
            .services
            .remove(name)
            .ok_or_else(|| anyhow!("no service named {name:?}"))?;
        maps.remove_service(&service_key(&p.spec))?;
        // The VIP stops answering ping with its last service.
        if !self
            .services
            .values()
            .any(|o| o.spec.vip.ip() == p.spec.vip.ip())
        {
            maps.remove_service(&echo_key(&p.spec))?;
        }
        self.retire_table(p.table);
        if let Some(t) = p.prev_table {
            self.retire_table(t);
        }
        self.history.retain(|n| n != name);
        if let Some(t) = p.cohort_table {
            self.retire_table(t);
        }
        for c in &p.spec.cohorts {
            maps.set_cohort(
                p.id,
                addr_bytes(c.cidr.addr()),
                c.cidr.prefix_len() as u32,
                false,
            )?;
        }
        for (a, index) in p.backends.iter().chain(&p.lingering) {
            self.release_backend(maps, &p.spec, *a, *index)?;
        }
        self.write_config(maps)
    }

    fn pool_specs(
        &self,
        spec: &ServiceConfig,
        backends: &BTreeMap<SocketAddr, u32>,
        unhealthy: &BTreeSet<SocketAddr>,
        only: Option<&String>,
    ) -> Vec<PoolSpec> {
        spec.pools
            .iter()
            .filter(|p| only.is_none_or(|o| *o == p.name))
            .map(|p| PoolSpec {
                weight: if only.is_some() { 1 } else { p.weight },
                backends: p
                    .backends
                    .iter()
                    .map(|b| BackendSpec {
                        index: backends[&b.addr()] as u16,
                        ident: backend_ident(
                            self.seed,
                            &addr_bytes(b.addr().ip()),
                            b.addr().port(),
                        ),
                        weight: b.weight(),
                        eligible: b.state() == AdminState::Active && !unhealthy.contains(&b.addr()),
                    })
                    .collect(),
            })
            .collect()
    }
}
