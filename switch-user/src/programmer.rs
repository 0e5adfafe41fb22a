//! Turns the desired state of services into map entries, in an order that
//! keeps every packet consistent: backends first, then the new table into a
//! free slot, then one write of the service entry that makes it all live.
//!
//! It talks to the kernel only through [`Maps`], so it is tested without one.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use switch_common::{
    AddrFilter, Backend, BackendState, CONFIG_FULLNAT, CONFIG_NAT, CONFIG_READY, Config, FAMILY_V4,
    FAMILY_V6, Mode, NO_BACKEND, NO_PREV_TABLE, NextHop, PROTO_TCP, PROTO_UDP, Real, RealKey,
    SERVICE_CLIENT_AFFINITY, Service, ServiceKey, TABLE_SIZE, Table,
    hash::backend_ident,
    table::{self, BackendSpec, PoolSpec},
};

use crate::config::{AdminState, Affinity, ForwardMode, Protocol, ServiceConfig};

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

/// A retired table slot is not rewritten for this long: far longer than any
/// XDP run that may still be reading it.
const TABLE_QUIESCE: Duration = Duration::from_millis(20);

pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

pub fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 }
}

pub fn service_key(s: &ServiceConfig) -> ServiceKey {
    ServiceKey {
        addr: addr_bytes(s.vip.ip()),
        port: s.vip.port().to_be(),
        proto: match s.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        },
        family: family(s.vip.ip()),
    }
}

fn real_key(s: &ServiceConfig, a: SocketAddr) -> RealKey {
    let k = service_key(s);
    RealKey {
        addr: addr_bytes(a.ip()),
        port: a.port().to_be(),
        proto: k.proto,
        family: k.family,
    }
}

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

/// Previous tables kept at once: the services changed most recently. The
/// daemon sizes `TABLES` for them.
pub const HISTORY_TABLES: u32 = 64;

impl Programmer {
    pub fn new(seed: u32, cap: crate::dataplane::Capacity) -> Self {
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
    pub fn init(&mut self, maps: &mut dyn Maps, d: &crate::config::DaemonConfig) -> Result<()> {
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

    /// Applies one service: new backends, new table(s), then the single
    /// service write. `unhealthy` backends get no new flows and lose pins.
    pub fn apply(
        &mut self,
        maps: &mut dyn Maps,
        spec: &ServiceConfig,
        unhealthy: &BTreeSet<SocketAddr>,
    ) -> Result<()> {
        self.check(spec)?;
        let key = service_key(spec);
        let old = self.services.get(&spec.name).cloned();
        if let Some(o) = &old
            && service_key(&o.spec) != key
        {
            bail!("vip: a service's VIP cannot change; remove and add it instead");
        }
        let id = match &old {
            Some(o) => o.id,
            None => (0..self.max_services)
                .find(|i| !self.services.values().any(|p| p.id == *i))
                .ok_or_else(|| anyhow!("service capacity exhausted"))?,
        };

        // Indexes for every backend of the new spec.
        let mut used = self.used_backends();
        let mut backends = BTreeMap::new();
        for b in spec.pools.iter().flat_map(|p| &p.backends) {
            let a = b.addr();
            // A lingering backend that comes back keeps its index, and so
            // its established flows.
            let index = match old
                .as_ref()
                .and_then(|o| o.backends.get(&a).or(o.lingering.get(&a)))
            {
                Some(&i) => i,
                None => {
                    let i = (0..self.max_backends)
                        .find(|i| !used.contains(i))
                        .ok_or_else(|| anyhow!("backend capacity exhausted"))?;
                    used.insert(i);
                    let g = self.generations.entry(i).or_insert(0);
                    *g = g.wrapping_add(1);
                    // Whatever the last occupant's next hop was, it is not
                    // this backend's: the slow path until the daemon knows.
                    maps.set_nexthop(i, &NextHop::default())?;
                    i
                }
            };
            backends.insert(a, index);
        }

        let entry = |a: SocketAddr, state: AdminState| Backend {
            addr: addr_bytes(a.ip()),
            port: a.port().to_be(),
            family: family(a.ip()),
            state: if unhealthy.contains(&a) {
                BackendState::Down
            } else if state == AdminState::Draining {
                BackendState::Draining
            } else {
                BackendState::Active
            } as u8,
            generation: 0,
            service: id,
        };

        // 1. Backends (new ones are not in any live table yet).
        for b in spec.pools.iter().flat_map(|p| &p.backends) {
            let index = backends[&b.addr()];
            let mut e = entry(b.addr(), b.state());
            e.generation = self.generations.get(&index).copied().unwrap_or(0);
            maps.set_backend(index, &e)?;
            if spec.mode == ForwardMode::Nat {
                maps.set_real(
                    &real_key(spec, b.addr()),
                    &Real {
                        vip: key.addr,
                        vip_port: key.port,
                        _pad: [0; 2],
                        backend: index,
                    },
                )?;
            }
        }

        // 2. Tables into free slots (previous tables give way when full).
        let needed = 1 + usize::from(!spec.cohorts.is_empty());
        while self.free_tables.len() + self.retired.len() < needed {
            if !self.forget_oldest_history(maps)? {
                break;
            }
        }
        let pools = self.pool_specs(spec, &backends, unhealthy, None);
        let table_slot = self.take_table()?;
        maps.write_table(table_slot, &to_table(&table::build(self.seed, &pools)))?;
        let cohort_pool = spec.cohorts.first().map(|c| c.pool.clone());
        let cohort_table = match &cohort_pool {
            Some(pool) => {
                let slot = self.take_table()?;
                let pools = self.pool_specs(spec, &backends, unhealthy, Some(pool));
                maps.write_table(slot, &to_table(&table::build(self.seed, &pools)))?;
                Some(slot)
            }
            None => None,
        };
        for c in &spec.cohorts {
            maps.set_cohort(
                id,
                addr_bytes(c.cidr.addr()),
                c.cidr.prefix_len() as u32,
                true,
            )?;
        }

        // Backends leaving the pool linger: no new flows (they are in no
        // new table), established flows stay pinned, until released.
        let mut lingering = BTreeMap::new();
        if let Some(o) = &old {
            for (a, index) in o.backends.iter().chain(&o.lingering) {
                if backends.contains_key(a) {
                    continue;
                }
                let mut e = entry(*a, AdminState::Draining);
                e.generation = self.generations.get(index).copied().unwrap_or(0);
                maps.set_backend(*index, &e)?;
                lingering.insert(*a, *index);
            }
        }
        // The reply lookups this service needs are switched on before it
        // goes live (extra flags only cost a lookup).
        self.write_config_with(maps, Some(spec))?;

        // 3. The one write that makes it live. The table it replaces stays
        // readable as the previous one.
        let prev_table = old
            .as_ref()
            .map(|o| o.table)
            .filter(|t| self.slot_history && *t < NO_PREV_TABLE as u32);
        let service = service_entry(id, table_slot, cohort_table, prev_table, spec);
        commit_point(maps, &key, &service)?;

        // 4. Clean up what the old state had and the new one does not. The
        // new state is live: a failure here is logged, not returned, so the
        // caller commits what the data plane now does.
        self.history.retain(|n| n != &spec.name);
        if prev_table.is_some() {
            self.history.push_back(spec.name.clone());
        }
        if let Some(o) = old {
            if prev_table.is_none() {
                self.retire_table(o.table);
            }
            if let Some(t) = o.prev_table {
                self.retire_table(t);
            }
            if let Some(t) = o.cohort_table {
                self.retire_table(t);
            }
            for c in &o.spec.cohorts {
                if !spec.cohorts.contains(c)
                    && let Err(e) = maps.set_cohort(
                        id,
                        addr_bytes(c.cidr.addr()),
                        c.cidr.prefix_len() as u32,
                        false,
                    )
                {
                    tracing::warn!(service = %spec.name, "removing cohort {}: {e:#}", c.cidr);
                }
            }
        }
        self.services.insert(
            spec.name.clone(),
            Placed {
                id,
                table: table_slot,
                cohort_table,
                spec: spec.clone(),
                backends,
                lingering,
                prev_table,
            },
        );
        while self.history.len() > HISTORY_TABLES as usize {
            if let Err(e) = self.forget_oldest_history(maps) {
                tracing::warn!("dropping a previous table: {e:#}");
                break;
            }
        }
        if let Err(e) = self.write_config(maps) {
            tracing::warn!("rewriting the global config: {e:#}");
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

/// Sets an address's bit in a filter (`hash::filter_bit`).
fn set_bit(f: &mut AddrFilter, ip: IpAddr) {
    let bit = switch_common::hash::filter_bit(&addr_bytes(ip));
    f.words[(bit >> 6) as usize] |= 1 << (bit & 63);
}

/// A service's `SERVICES` entry.
fn service_entry(
    id: u32,
    table: u32,
    cohort_table: Option<u32>,
    prev_table: Option<u32>,
    spec: &ServiceConfig,
) -> Service {
    Service {
        id,
        table,
        cohort_table: cohort_table.unwrap_or(u32::MAX),
        mode: match spec.mode {
            ForwardMode::Nat => Mode::Nat,
            ForwardMode::Dsr => Mode::Dsr,
            ForwardMode::Fullnat => Mode::Fullnat,
        } as u8,
        flags: if spec.affinity == Affinity::Client {
            SERVICE_CLIENT_AFFINITY
        } else {
            0
        },
        prev_table: prev_table.map_or(NO_PREV_TABLE, |t| t as u16),
        snat_addr: spec.source.map(addr_bytes).unwrap_or_default(),
    }
}

/// THE COMMIT POINT of every change to a service (a flip, a canary step, a
/// weight, a backend change): one write of its `SERVICES` entry, which now
/// points at the new table. Before it, no packet saw anything new; after
/// it, every new flow does. Everything else is written before it.
fn commit_point(maps: &mut dyn Maps, key: &ServiceKey, service: &Service) -> Result<()> {
    maps.set_service(key, service)
}

fn mode_flag(mode: ForwardMode) -> u32 {
    match mode {
        ForwardMode::Nat => CONFIG_NAT,
        ForwardMode::Fullnat => CONFIG_FULLNAT,
        ForwardMode::Dsr => 0,
    }
}

pub fn to_table(slots: &[u16]) -> Box<Table> {
    let mut t = Box::new(Table {
        slots: [NO_BACKEND; TABLE_SIZE],
        verifier_pad: NO_BACKEND,
    });
    t.slots.copy_from_slice(slots);
    t
}
