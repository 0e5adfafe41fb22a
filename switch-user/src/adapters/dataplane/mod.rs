//! The kernel-facing part of the daemon, kept thin: load (or adopt) the XDP
//! object with its pinned maps, attach it, and read/write map entries. All
//! decisions are made elsewhere (`programmer`, `strategy`).

mod handles;
mod nexthops;
mod pins;
mod writes;

pub use handles::{Clock, FlowScanner, ReplyHops};
pub use nexthops::sync_nexthops;
pub use pins::detach;
use pins::ensure_bpffs;

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
};

pub use crate::engine::maps::Capacity;
use crate::engine::maps::Maps;
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
            .map_max_entries(names::SERVICES, capacity.services * 2)
            .map_max_entries(names::SERVICE_STATS, capacity.services)
            .map_max_entries(names::SERVICE_BY_ID, capacity.services)
            .map_max_entries(names::SERVICE_MISSES, capacity.services)
            .map_max_entries(names::SHADOWS, capacity.services)
            .map_max_entries(names::TABLES, capacity.tables)
            .map_max_entries(names::BACKENDS, capacity.backends)
            .map_max_entries(names::NEXTHOPS, capacity.backends)
            .map_max_entries(names::REALS, capacity.backends)
            .map_max_entries(names::BACKEND_STATS, capacity.backends)
            .map_max_entries(names::FLOWS, capacity.flows)
            .map_max_entries(names::HALF_OPEN, capacity.half_open);
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
    /// Empties the flow tables (established and half open); how many pins
    /// there were.
    pub fn clear_flows(&mut self) -> Result<usize> {
        let mut n = 0;
        for name in [names::FLOWS, names::HALF_OPEN] {
            let mut m: HashMap<&mut MapData, switch_common::FlowKey, switch_common::Flow> =
                HashMap::try_from(self.map(name)?)?;
            let keys: Vec<switch_common::FlowKey> = m.keys().filter_map(|k| k.ok()).collect();
            for k in &keys {
                let _ = m.remove(k);
            }
            n += keys.len();
        }
        Ok(n)
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

    /// The services' entries (not the VIPs' ICMP marks, port 0).
    pub fn services(&self) -> Result<Vec<(ServiceKey, Service)>> {
        let m: HashMap<&MapData, ServiceKey, Service> =
            HashMap::try_from(self.map_ref(names::SERVICES)?)?;
        let all: Vec<(ServiceKey, Service)> = m.iter().collect::<Result<_, _>>()?;
        Ok(all.into_iter().filter(|(k, _)| k.port != 0).collect())
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
