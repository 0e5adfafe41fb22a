//! The kernel-facing part of the daemon, kept thin: load (or adopt) the XDP
//! object with its pinned maps, attach it, and read/write map entries. All
//! decisions are made elsewhere (`programmer`, `strategy`).

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use crate::programmer::Maps;
use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use switch_common::{
    Backend, BackendStats, CohortKey, Config, NextHop, Real, RealKey, Reason, Service, ServiceKey,
    ServiceStats, Table, names,
};

/// The XDP object, built by build.rs from switch-ebpf.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/switch"));

/// The benchmark's reference programs and generator (a second object built
/// from switch-ebpf); only with the `bench` feature, which the daemon's
/// release build does not enable.
#[cfg(feature = "bench")]
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/switch-bench"));

/// Map capacities, fixed when the maps are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub services: u32,
    pub backends: u32,
    pub flows: u32,
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
            tables: switch_common::DEFAULT_MAX_SERVICES + 64 + crate::programmer::HISTORY_TABLES,
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
            tables: 40,
        }
    }
}

pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    pub capacity: Capacity,
    /// Interfaces in the DEVICES devmap (ifindexes): the only ones a
    /// cached next hop may point at.
    pub devices: std::collections::BTreeSet<u32>,
}

impl Dataplane {
    /// Loads the object. With `pin_dir`, state maps are pinned there, and
    /// maps already pinned by an earlier run are adopted as they are, so a
    /// restart keeps every flow, table and counter.
    pub fn load(pin_dir: Option<&Path>, capacity: Capacity) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::SERVICES, capacity.services)
            .map_max_entries(names::SERVICE_STATS, capacity.services)
            .map_max_entries(names::SERVICE_BY_ID, capacity.services)
            .map_max_entries(names::SERVICE_MISSES, capacity.services)
            .map_max_entries(names::SHADOWS, capacity.services)
            .map_max_entries(names::TABLES, capacity.tables)
            .map_max_entries(names::BACKENDS, capacity.backends)
            .map_max_entries(names::NEXTHOPS, capacity.backends)
            .map_max_entries(names::REALS, capacity.backends)
            .map_max_entries(names::BACKEND_STATS, capacity.backends)
            .map_max_entries(names::FLOWS, capacity.flows);
        let paths: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => {
                ensure_bpffs(dir)?;
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create pin directory {}", dir.display()))?;
                names::PINNED.iter().map(|n| (*n, dir.join(n))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).context("loading the XDP object")?;
        let prog: &mut Xdp = ebpf
            .program_mut(names::PROGRAM)
            .ok_or_else(|| anyhow!("program {} missing from object", names::PROGRAM))?
            .try_into()?;
        prog.load().map_err(verifier_error)?;
        let dp = Dataplane {
            ebpf,
            pin_dir: pin_dir.map(Path::to_path_buf),
            capacity,
            devices: Default::default(),
        };
        // A fresh clock starts at CLOCK_MONOTONIC; an adopted one stays
        // where it stood (the daemon's `Clock::run` moves it on).
        let mut clock = dp.clock()?;
        if clock.read()? == 0 {
            clock.set(monotonic_ns())?;
        }
        Ok(dp)
    }

    /// A handle on the data plane's clock (`CLOCK`), for a thread of its own.
    pub fn clock(&self) -> Result<Clock> {
        let mut clock = Clock {
            map: self.second_handle(names::CLOCK)?,
            behind: 0,
        };
        clock.behind = monotonic_ns().saturating_sub(clock.read()?);
        Ok(clock)
    }

    /// A handle on the replies' route cache (`REPLY_HOPS_EPOCH`), for
    /// the daemon's network watch.
    pub fn reply_hops(&self) -> Result<ReplyHops> {
        let map = self.second_handle(names::REPLY_HOPS_EPOCH)?;
        let now = {
            let a: Array<&MapData, u32> = Array::try_from(&map)?;
            a.get(&0, 0)?
        };
        let off = now == switch_common::REPLY_HOPS_OFF;
        Ok(ReplyHops {
            map,
            epoch: if off { 0 } else { now },
            off,
        })
    }

    pub fn program(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(names::PROGRAM)
            .ok_or_else(|| anyhow!("program missing"))?
            .try_into()?)
    }

    fn link_pin(&self, ifname: &str) -> Option<PathBuf> {
        self.pin_dir
            .as_ref()
            .map(|d| d.join(format!("link_{ifname}")))
    }

    /// Attaches to `ifname` in driver mode (generic as a fallback, with a
    /// warning). If a pinned link from an earlier run exists, the new program
    /// replaces the old one inside that link atomically: not one packet sees
    /// the interface without a program.
    pub fn attach(&mut self, ifname: &str) -> Result<XdpMode> {
        let pin = self.link_pin(ifname);
        if let Some(pin) = pin.as_ref().filter(|p| p.exists()) {
            let pinned = PinnedLink::from_pin(pin)
                .with_context(|| format!("opening pinned link {}", pin.display()))?;
            let link = XdpLink::try_from(FdLink::from(pinned))?;
            self.program()?.attach_to_link(link)?;
            self.add_device(ifname)?;
            return Ok(XdpMode::Driver);
        }
        let mode = match self.program()?.attach(ifname, XdpMode::Driver) {
            Ok(id) => (id, XdpMode::Driver),
            Err(e) => {
                tracing::warn!(
                    "{ifname}: driver-mode XDP failed ({e}); falling back to generic mode"
                );
                let id = self
                    .program()?
                    .attach(ifname, XdpMode::Skb)
                    .with_context(|| format!("attaching XDP to {ifname}"))?;
                (id, XdpMode::Skb)
            }
        };
        if let Some(pin) = pin {
            let link = self.program()?.take_link(mode.0)?;
            let fd: FdLink = link
                .try_into()
                .map_err(|e| anyhow!("link cannot be pinned: {e:?}"))?;
            fd.pin(&pin)
                .with_context(|| format!("pinning link {}", pin.display()))?;
        }
        self.add_device(ifname)?;
        Ok(mode.1)
    }

    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from object"))
    }

    fn map_ref(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from object"))
    }

    pub fn add_device(&mut self, ifname: &str) -> Result<()> {
        let ifindex = ifindex(ifname)?;
        let mut devs: DevMapHash<&mut MapData> = DevMapHash::try_from(self.map(names::DEVICES)?)?;
        devs.insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("adding {ifname} to the devmap"))?;
        self.devices.insert(ifindex);
        Ok(())
    }

    /// Empties the flow table (benchmarks reset it between rows). Returns
    /// how many flows were removed.
    pub fn clear_flows(&mut self) -> Result<usize> {
        let mut m: HashMap<&mut MapData, switch_common::FlowKey, switch_common::Flow> =
            HashMap::try_from(self.map(names::FLOWS)?)?;
        let keys: Vec<switch_common::FlowKey> = m.keys().filter_map(|k| k.ok()).collect();
        for k in &keys {
            let _ = m.remove(k);
        }
        Ok(keys.len())
    }

    pub fn read_table(&self, slot: u32) -> Result<Box<Table>> {
        let a: Array<&MapData, Table> = Array::try_from(self.map_ref(names::TABLES)?)?;
        Ok(Box::new(a.get(&slot, 0)?))
    }

    /// The VIP and reply address filters as the data plane reads them.
    pub fn filters(&self) -> Result<(switch_common::AddrFilter, switch_common::AddrFilter)> {
        let get = |name: &str| -> Result<switch_common::AddrFilter> {
            let a: Array<&MapData, switch_common::AddrFilter> =
                Array::try_from(self.map_ref(name)?)?;
            Ok(a.get(&0, 0)?)
        };
        Ok((get(names::VIP_FILTER)?, get(names::REPLY_FILTER)?))
    }

    pub fn services(&self) -> Result<Vec<(ServiceKey, Service)>> {
        let m: HashMap<&MapData, ServiceKey, Service> =
            HashMap::try_from(self.map_ref(names::SERVICES)?)?;
        Ok(m.iter().collect::<Result<_, _>>()?)
    }

    /// A second handle on the flow table (and what counting needs), for a
    /// thread that scans it without holding the daemon's state lock.
    pub fn flow_scanner(&self) -> Result<FlowScanner> {
        Ok(FlowScanner {
            flows: self.second_handle(names::FLOWS)?,
            backends: self.second_handle(names::BACKENDS)?,
            config: self.second_handle(names::CONFIG)?,
            clock: self.clock()?,
        })
    }

    /// A handle of its own on a hash or array map, for a thread that uses
    /// it without holding the daemon's state lock.
    fn second_handle(&self, name: &str) -> Result<aya::maps::Map> {
        let data = match self.map_ref(name)? {
            aya::maps::Map::LruHashMap(d)
            | aya::maps::Map::HashMap(d)
            | aya::maps::Map::Array(d) => d,
            _ => bail!("map {name} is not a hash or array map"),
        };
        let data = MapData::from_fd(data.fd().as_fd().try_clone_to_owned()?)?;
        Ok(aya::maps::Map::from_map_data(data)?)
    }

    pub fn reasons(&self) -> Result<Vec<(Reason, u64)>> {
        let a: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map_ref(names::REASONS)?)?;
        Reason::ALL
            .iter()
            .map(|r| Ok((*r, a.get(&(*r as u32), 0)?.iter().sum())))
            .collect()
    }

    pub fn backend_stats(&self, index: u32) -> Result<BackendStats> {
        let a: PerCpuArray<&MapData, BackendStats> =
            PerCpuArray::try_from(self.map_ref(names::BACKEND_STATS)?)?;
        Ok(a.get(&index, 0)?
            .iter()
            .fold(BackendStats::default(), |mut t, s| {
                t.packets += s.packets;
                t.bytes += s.bytes;
                t.new_flows += s.new_flows;
                t.rsts += s.rsts;
                t.synacks += s.synacks;
                t
            }))
    }

    pub fn service_stats(&self, id: u32) -> Result<ServiceStats> {
        let a: PerCpuArray<&MapData, ServiceStats> =
            PerCpuArray::try_from(self.map_ref(names::SERVICE_STATS)?)?;
        Ok(a.get(&id, 0)?
            .iter()
            .fold(ServiceStats::default(), |mut t, s| {
                t.packets += s.packets;
                t.bytes += s.bytes;
                t.new_flows += s.new_flows;
                t.no_backend += s.no_backend;
                t
            }))
    }

    /// Non-SYN TCP packets without a pin, and those sent to their slot's
    /// previous owner, for a service (all CPUs).
    pub fn service_misses(&self, id: u32) -> Result<switch_common::MissStats> {
        let a: PerCpuArray<&MapData, switch_common::MissStats> =
            PerCpuArray::try_from(self.map_ref(names::SERVICE_MISSES)?)?;
        Ok(a.get(&id, 0)?
            .iter()
            .fold(switch_common::MissStats::default(), |mut t, s| {
                t.nonsyn_miss += s.nonsyn_miss;
                t.nonsyn_miss_prev += s.nonsyn_miss_prev;
                t
            }))
    }

    /// The ring buffer of shadow copies, for the daemon's reader (taken out
    /// of the object: one reader).
    pub fn take_shadow_ring(&mut self) -> Result<aya::maps::RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(names::SHADOW_RING)
            .ok_or_else(|| anyhow!("map SHADOW_RING missing from object"))?;
        Ok(aya::maps::RingBuf::try_from(map)?)
    }

    /// Shadow copies the data plane dropped because the ring was full.
    pub fn shadow_lost(&self) -> Result<u64> {
        let a: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map_ref(names::SHADOW_LOST)?)?;
        Ok(a.get(&0, 0)?.iter().sum())
    }

    /// Raw fd of the program, for `BPF_PROG_TEST_RUN` callers.
    pub fn program_fd(&mut self) -> Result<std::os::fd::OwnedFd> {
        Ok(self.program()?.fd()?.as_fd().try_clone_to_owned()?)
    }
}

/// The programmer's map writes (see `programmer::Maps`).
impl Maps for Dataplane {
    fn set_config(&mut self, c: &Config) -> Result<()> {
        let mut a: Array<&mut MapData, Config> = Array::try_from(self.map(names::CONFIG)?)?;
        a.set(0, c, 0)?;
        Ok(())
    }
    fn write_table(&mut self, slot: u32, table: &Table) -> Result<()> {
        let mut a: Array<&mut MapData, Table> = Array::try_from(self.map(names::TABLES)?)?;
        a.set(slot, table, 0)
            .with_context(|| format!("writing selection table {slot}"))?;
        Ok(())
    }
    fn set_shadow(&mut self, id: u32, sample: u32) -> Result<()> {
        let mut a: Array<&mut MapData, switch_common::ShadowConfig> =
            Array::try_from(self.map(names::SHADOWS)?)?;
        a.set(id, switch_common::ShadowConfig { sample, _pad: 0 }, 0)
            .context("writing the shadow sample")?;
        Ok(())
    }
    fn set_vip_filter(&mut self, f: &switch_common::AddrFilter) -> Result<()> {
        let mut a: Array<&mut MapData, switch_common::AddrFilter> =
            Array::try_from(self.map(names::VIP_FILTER)?)?;
        a.set(0, f, 0).context("writing the VIP filter")?;
        Ok(())
    }
    fn set_reply_filter(&mut self, f: &switch_common::AddrFilter) -> Result<()> {
        let mut a: Array<&mut MapData, switch_common::AddrFilter> =
            Array::try_from(self.map(names::REPLY_FILTER)?)?;
        a.set(0, f, 0).context("writing the reply filter")?;
        Ok(())
    }
    fn set_nexthop(&mut self, index: u32, hop: &NextHop) -> Result<()> {
        let mut a: Array<&mut MapData, NextHop> = Array::try_from(self.map(names::NEXTHOPS)?)?;
        a.set(index, hop, 0)
            .with_context(|| format!("writing the next hop of backend {index}"))?;
        Ok(())
    }
    fn set_service(&mut self, key: &ServiceKey, s: &Service) -> Result<()> {
        // By id first (established flows read it), then the VIP's entry.
        let mut a: Array<&mut MapData, Service> = Array::try_from(self.map(names::SERVICE_BY_ID)?)?;
        a.set(s.id, s, 0).context("writing service by id")?;
        let mut m: HashMap<&mut MapData, ServiceKey, Service> =
            HashMap::try_from(self.map(names::SERVICES)?)?;
        m.insert(key, s, 0).context("writing service")?;
        Ok(())
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        let mut m: HashMap<&mut MapData, ServiceKey, Service> =
            HashMap::try_from(self.map(names::SERVICES)?)?;
        m.remove(key).context("removing service")?;
        Ok(())
    }
    fn set_backend(&mut self, index: u32, b: &Backend) -> Result<()> {
        let mut a: Array<&mut MapData, Backend> = Array::try_from(self.map(names::BACKENDS)?)?;
        a.set(index, b, 0)
            .with_context(|| format!("writing backend {index}"))?;
        Ok(())
    }
    fn set_real(&mut self, key: &RealKey, r: &Real) -> Result<()> {
        let mut m: HashMap<&mut MapData, RealKey, Real> =
            HashMap::try_from(self.map(names::REALS)?)?;
        m.insert(key, r, 0).context("writing reply mapping")?;
        Ok(())
    }
    fn remove_real(&mut self, key: &RealKey) -> Result<()> {
        let mut m: HashMap<&mut MapData, RealKey, Real> =
            HashMap::try_from(self.map(names::REALS)?)?;
        match m.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
    fn set_cohort(
        &mut self,
        service: u32,
        addr: [u8; 16],
        prefix: u32,
        present: bool,
    ) -> Result<()> {
        let mut t: LpmTrie<&mut MapData, CohortKey, u32> =
            LpmTrie::try_from(self.map(names::COHORTS)?)?;
        let key = Key::new(
            32 + prefix,
            CohortKey {
                service: service.to_be_bytes(),
                addr,
            },
        );
        if present {
            t.insert(&key, 1, 0).context("writing cohort")?;
        } else {
            let _ = t.remove(&key);
        }
        Ok(())
    }
}

/// The data plane's time for flow timeouts: pins' idle and closing timers
/// advance only while something ticks it (the daemon, every 100 ms). A
/// stopped clock keeps pins longer, never shorter, and a new daemon goes on
/// from where the last one left it: time while no daemon ran does not
/// count, or every flow that stayed busy through a restart would look idle
/// for that long (its packets refreshed it with the stopped time).
pub struct Clock {
    map: aya::maps::Map,
    /// CLOCK_MONOTONIC minus the data plane's time when the handle was
    /// made: the time no daemon ticked.
    behind: u64,
}

impl Clock {
    pub const EVERY: std::time::Duration = std::time::Duration::from_millis(100);

    /// Moves the data plane's time on to now (CLOCK_MONOTONIC less the
    /// time no daemon ticked).
    pub fn tick(&mut self) -> Result<()> {
        self.set(self.now())
    }

    /// The data plane's time as this handle keeps it.
    pub fn now(&self) -> u64 {
        monotonic_ns().saturating_sub(self.behind)
    }

    /// Sets the data plane's time (ns); tests move it to age pins.
    pub fn set(&mut self, ns: u64) -> Result<()> {
        let mut a: Array<&mut MapData, u64> = Array::try_from(&mut self.map)?;
        a.set(0, ns, 0).context("writing the clock")?;
        Ok(())
    }

    /// The data plane's time (ns).
    pub fn read(&self) -> Result<u64> {
        let a: Array<&MapData, u64> = Array::try_from(&self.map)?;
        Ok(a.get(&0, 0)?)
    }

    /// Ticks forever, on a thread of its own (never behind the daemon's
    /// locks: a slow command must not stop time for the data plane).
    pub fn run(mut self) {
        let mut failing = false;
        loop {
            match self.tick() {
                // Once per streak of failures, not ten times a second.
                Err(e) if !failing => {
                    tracing::warn!("{e:#}; flow timeouts stand still until it works again");
                    failing = true;
                }
                Err(_) => {}
                Ok(()) => failing = false,
            }
            std::thread::sleep(Self::EVERY);
        }
    }
}

/// The data plane keeps the kernel's route answer for replies
/// (`REPLY_HOPS`) while the epoch stands: whoever watches the network moves
/// it on when something changed (a neighbour, a route, a link, a rule) and
/// every second, or turns the cache off.
pub struct ReplyHops {
    map: aya::maps::Map,
    /// The last epoch written other than `REPLY_HOPS_OFF`.
    epoch: u32,
    off: bool,
}

impl ReplyHops {
    /// Every cached answer is asked again (unless the cache is off).
    pub fn advance(&mut self) -> Result<()> {
        if self.off {
            return Ok(());
        }
        self.next_epoch()
    }

    /// Off: every reply asks the kernel (routing rules that select by
    /// port, which the cache's key leaves out). On again: a new epoch, so
    /// nothing cached before counts.
    pub fn set_off(&mut self, off: bool) -> Result<()> {
        if off == self.off {
            return Ok(());
        }
        if off {
            self.write(switch_common::REPLY_HOPS_OFF)?;
            self.off = true;
            Ok(())
        } else {
            self.off = false;
            self.next_epoch()
        }
    }

    pub fn is_off(&self) -> bool {
        self.off
    }

    fn next_epoch(&mut self) -> Result<()> {
        let next = match self.epoch.wrapping_add(1) {
            switch_common::REPLY_HOPS_OFF => 0,
            n => n,
        };
        self.write(next)?;
        self.epoch = next;
        Ok(())
    }

    fn write(&mut self, epoch: u32) -> Result<()> {
        let mut a: Array<&mut MapData, u32> = Array::try_from(&mut self.map)?;
        a.set(0, epoch, 0).context("writing REPLY_HOPS_EPOCH")
    }
}

/// Counts live flows per backend by walking the flow table (a syscall per
/// entry: run it off the request path).
pub struct FlowScanner {
    flows: aya::maps::Map,
    backends: aya::maps::Map,
    config: aya::maps::Map,
    clock: Clock,
}

impl FlowScanner {
    /// Live flows per backend index: pinned to the backend's current
    /// occupant, not closing, and not idle past their timeout. (Entries the
    /// LRU has not evicted yet are not flows any more.)
    pub fn count_by_backend(&self) -> Result<std::collections::HashMap<u32, u64>> {
        let m: HashMap<&MapData, switch_common::FlowKey, switch_common::Flow> =
            HashMap::try_from(&self.flows)?;
        let config = Array::<&MapData, Config>::try_from(&self.config)?.get(&0, 0)?;
        let backends: Array<&MapData, Backend> = Array::try_from(&self.backends)?;
        // The pins' own clock, not the host's.
        let now = self.clock.read()?;
        let mut generations = std::collections::HashMap::new();
        let mut out = std::collections::HashMap::new();
        for (k, f) in m.iter().flatten() {
            if f.flags & switch_common::FLOW_CLOSING != 0 {
                continue;
            }
            let idle = if k.proto == switch_common::PROTO_TCP {
                config.tcp_idle_ns
            } else {
                config.udp_idle_ns
            };
            if now.saturating_sub(f.last_seen_ns) > idle {
                continue;
            }
            let generation = *generations.entry(f.backend).or_insert_with(|| {
                backends
                    .get(&f.backend, 0)
                    .map(|b| b.generation)
                    .unwrap_or(0)
            });
            if generation == f.generation {
                *out.entry(f.backend).or_insert(0) += 1;
            }
        }
        Ok(out)
    }
}

/// Writes the next hops of every placed backend from `resolved` (by backend
/// address): valid where resolved on a device we redirect to, cleared
/// elsewhere. `written` remembers what is in the map, so only changes are
/// written. Returns how many entries changed.
pub fn sync_nexthops(
    dp: &mut Dataplane,
    programmer: &crate::programmer::Programmer,
    resolved: &std::collections::BTreeMap<std::net::IpAddr, NextHop>,
    written: &mut std::collections::HashMap<u32, NextHop>,
) -> Result<usize> {
    use crate::programmer::Maps as _;
    let mut changed = 0;
    for p in programmer.services.values() {
        for (addr, &index) in p.backends.iter().chain(&p.lingering) {
            let want = resolved
                .get(&addr.ip())
                .filter(|h| dp.devices.contains(&h.ifindex))
                .copied()
                .unwrap_or_default();
            if written.get(&index) != Some(&want) {
                dp.set_nexthop(index, &want)?;
                written.insert(index, want);
                changed += 1;
            }
        }
    }
    Ok(changed)
}

/// Removes every pinned link and map under `pin_dir`; forwarding stops.
/// Returns what was removed.
pub fn detach(pin_dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).with_context(|| format!("reading {}", pin_dir.display())),
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    // Links first: unpinning the last reference detaches the program.
    paths.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
    });
    for p in paths {
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("link_") {
            // Detach the link itself, not only its pin: a running daemon may
            // hold another reference to it.
            force_detach(&p).with_context(|| format!("detaching {}", p.display()))?;
        }
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        removed.push(name);
    }
    let _ = std::fs::remove_dir(pin_dir);
    Ok(removed)
}

/// BPF_OBJ_GET the pinned link at `path`, then BPF_LINK_DETACH it.
fn force_detach(path: &Path) -> Result<()> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u64; 4];
    attr[0] = c.as_ptr() as u64;
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        bail!("BPF_OBJ_GET: {}", std::io::Error::last_os_error());
    }
    let mut attr = [0u64; 4];
    attr[0] = fd as u64;
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    let err = std::io::Error::last_os_error();
    unsafe { libc::close(fd as i32) };
    if rc != 0 {
        bail!("BPF_LINK_DETACH: {err}");
    }
    Ok(())
}

/// The clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn ifindex(ifname: &str) -> Result<u32> {
    let c = std::ffi::CString::new(ifname).map_err(|_| anyhow!("bad interface name {ifname:?}"))?;
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!("no interface named {ifname}");
    }
    Ok(i)
}

/// A clear sentence instead of an EPERM from deep inside the loader.
fn ensure_bpffs(dir: &Path) -> Result<()> {
    let mut p = dir;
    while !p.exists() {
        p = p.parent().unwrap_or(Path::new("/"));
    }
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())?;
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        bail!("cannot stat {}", p.display());
    }
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    if st.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a bpf filesystem: mount it with `mount -t bpf bpf /sys/fs/bpf` (or run `cargo xtask setup`)",
            dir.display()
        );
    }
    Ok(())
}

/// Turns a load error into a message with the verifier's log.
pub fn verifier_error(e: aya::programs::ProgramError) -> anyhow::Error {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => anyhow!(
            "the kernel rejected the XDP program ({io_error}); are you root on Linux >= 5.18?\n{verifier_log}"
        ),
        e => anyhow!("loading the XDP program: {e}"),
    }
}

#[cfg(test)]
mod tests {
    /// The daemon's object carries the switch alone: the benchmark's
    /// reference programs and generator live in their own object.
    #[test]
    fn the_production_object_has_no_benchmark_programs() {
        let has = |needle: &[u8]| super::OBJECT.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"switch"));
        for name in [
            &b"packet_gen"[..],
            b"bench_floor",
            b"bench_minimal",
            b"sink_count",
            b"GEN_CONFIG",
        ] {
            assert!(!has(name), "{}", String::from_utf8_lossy(name));
        }
    }
}
