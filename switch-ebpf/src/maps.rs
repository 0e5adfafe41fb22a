//! The program's maps. Sizes here are defaults; the loader sets the real
//! capacities (`EbpfLoader::set_max_entries`).

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use switch_common::*;

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// The time (CLOCK_MONOTONIC, ns) for flow timeouts, written by the daemon
/// every 100 ms: one load per packet instead of a clock helper call (a
/// helper call and its return cost more than the rest of a pin check).
/// Without a daemon it stands still, so pins age only while one runs.
#[map]
pub static CLOCK: Array<u64> = Array::with_max_entries(1, 0);

#[map]
pub static SERVICES: HashMap<ServiceKey, Service> =
    HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// Selection tables, allocated by userspace from a free list; a service
/// points at its live one. One element is a whole table, so userspace writes
/// a new table with one syscall into a slot no packet is reading.
/// The same services by id, for established flows (which carry the id):
/// an array lookup instead of a hash lookup per packet.
#[map]
pub static SERVICE_BY_ID: Array<Service> = Array::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// Which destination addresses may be VIPs (a bitmap by
/// `hash::filter_bit`): everything else skips the flow and service lookups.
#[map]
pub static VIP_FILTER: Array<AddrFilter> = Array::with_max_entries(1, 0);

#[map]
pub static TABLES: Array<Table> = Array::with_max_entries(DEFAULT_MAX_SERVICES + 64, 0);

#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Per backend index: the cached next hop (see `NextHop`).
#[map]
pub static NEXTHOPS: Array<NextHop> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Which source addresses may be backends (a bitmap by
/// `hash::filter_bit`): everything else skips the reply lookups.
#[map]
pub static REPLY_FILTER: Array<AddrFilter> = Array::with_max_entries(1, 0);

#[map]
pub static REALS: HashMap<RealKey, Real> = HashMap::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Shared (not per-CPU) hash: on veth and with RSS changes one flow can
/// show up on several CPUs, and it must find its pin on every one.
///
/// One common LRU list, not one per CPU (BPF_F_NO_COMMON_LRU): per-CPU lists
/// are each a fraction of the table, and under a SYN flood a CPU's list
/// force-evicts entries that are still in use; the flood test lost an
/// established connection that way. A new flow pays for the shared list's
/// lock instead.
#[map]
pub static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// TCP connections that have sent only a SYN: pinned here, not in `FLOWS`,
/// until their first packet after it moves the pin over. A SYN flood
/// churns this table alone, so however large it is it cannot evict an
/// established connection's pin. A legitimate SYN's pin evicted by a flood
/// only means its next packet goes by the table (its slot's owner, or
/// previous owner), as a connection without a pin always does.
#[map]
pub static HALF_OPEN: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(DEFAULT_MAX_HALF_OPEN, 0);

/// fullnat replies: (backend, switch address and port) -> client and VIP.
/// An LRU like FLOWS, so stale entries make room by themselves.
#[map]
pub static SNAT: LruHashMap<SnatKey, SnatValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// BPF_F_NO_PREALLOC is mandatory for LPM tries.
#[map]
pub static COHORTS: LpmTrie<CohortKey, u32> = LpmTrie::with_max_entries(DEFAULT_MAX_COHORTS, 1);

/// Devices we may redirect to, keyed by ifindex.
#[map]
pub static DEVICES: DevMapHash = DevMapHash::with_max_entries(64, 0);

/// The kernel's route answers for replies (nat, fullnat), so a reply asks
/// the kernel once per (client, backend, link) rather than per packet: a
/// direct-mapped cache (see `ReplyHop`). An array, not an LRU hash: an
/// answer is kept with a few stores, where an LRU insert (hundreds of
/// nanoseconds) would make a cache with more clients than slots slower
/// than none. Not pinned: every daemon's program starts with an empty one.
#[map]
pub static REPLY_HOPS: Array<ReplyHop> = Array::with_max_entries(REPLY_HOP_SLOTS, 0);

/// Which `REPLY_HOPS` entries hold: the daemon moves it on at every
/// neighbour, route, link or rule event and every second (`REPLY_HOPS_OFF`:
/// no caching at all).
#[map]
pub static REPLY_HOPS_EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// A reply's key and the answer to keep, built here rather than on the
/// 512-byte stack (see `forward::cached_reply`).
#[map]
pub static REPLY_SCRATCH: PerCpuArray<ReplyHop> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space for `bpf_fib_lookup`'s parameters (one per CPU), so they
/// are not on the stack.
#[map]
pub static FIB_SCRATCH: PerCpuArray<aya_ebpf::bindings::bpf_fib_lookup> =
    PerCpuArray::with_max_entries(1, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<ServiceStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map]
pub static SERVICE_MISSES: PerCpuArray<MissStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// Shadows by service id (how many flows in 65,536 are sampled).
#[map]
pub static SHADOWS: Array<ShadowConfig> = Array::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// Copies of sampled flows' packets for the daemon's replay. Bounded: when
/// it is full a copy is dropped and counted (`SHADOW_LOST`), the packet is
/// forwarded as ever.
#[map]
pub static SHADOW_RING: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

#[map]
pub static SHADOW_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
