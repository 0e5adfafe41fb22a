//! Choose: the flow table first (an established flow keeps its backend), then
//! the service's selection table for a new flow.

use core::{mem::MaybeUninit, ptr::addr_of_mut};

use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use switch_common::{
    Backend, BackendState, CohortKey, Config, FLOW_CLOSING, FLOW_SHADOW, Flow, FlowKey, Mode,
    NO_BACKEND, NO_PREV_TABLE, PROTO_TCP, Real, Reason, SERVICE_CLIENT_AFFINITY, Service,
    ServiceKey,
    hash::{client_hash, connection_hash, slot_of},
};

use crate::{
    maps::{BACKENDS, CLOCK, COHORTS, FLOWS, HALF_OPEN, SERVICES, SHADOWS, TABLES},
    parse,
    parse::{Addr, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, bytes},
    snat, stats,
};

/// Refresh `last_seen_ns` at most this often, so established flows do not
/// write to the shared flow table on every packet.
const REFRESH_NS: u64 = 1_000_000_000;

/// The backend for a packet. repr(C): `addr` must be 4-aligned, `rewrite`
/// reads it in words.
#[repr(C)]
pub struct Chosen {
    pub index: u32,
    pub addr: [u8; 16],
    pub port: u16,
    /// fullnat: the flow's source port on the switch address.
    pub snat_port: u16,
    /// Non-zero when the flow is sampled for a shadow.
    pub shadow: u32,
}

/// The daemon's clock (see `maps::CLOCK`): timeouts are seconds long, a
/// tick of 100 ms is precise enough.
#[inline(always)]
fn now_ns() -> u64 {
    CLOCK.get(0).copied().unwrap_or(0)
}

/// `established` found no usable pin.
pub const NO_SERVICE: u32 = u32::MAX;

#[inline(always)]
fn flow_key(pkt: &Packet) -> FlowKey {
    FlowKey {
        src: bytes(&pkt.src),
        dst: bytes(&pkt.dst),
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn write_out(out: &mut MaybeUninit<Chosen>, chosen: Chosen) {
    // Field by field into the caller's memory (see parse::parse for why).
    let o = out.as_mut_ptr();
    unsafe {
        addr_of_mut!((*o).index).write(chosen.index);
        addr_of_mut!((*o).addr).write(chosen.addr);
        addr_of_mut!((*o).port).write(chosen.port);
        addr_of_mut!((*o).snat_port).write(chosen.snat_port);
        addr_of_mut!((*o).shadow).write(chosen.shadow);
    }
}

/// Whether a new flow is sampled for the service's shadow: deterministic
/// per flow, and only from its start (a TCP SYN, any UDP datagram), so a
/// sampled connection is replayed whole.
// Not inlined (nor the two below): new_flow's frame is in the chain
// switch -> to_vip -> new_flow -> snat::allocate, 512 bytes in all.
#[inline(never)]
fn sampled(config: &Config, service: &Service, pkt: &Packet, syn: bool) -> bool {
    let Some(cfg) = SHADOWS.get(service.id) else {
        return false;
    };
    if cfg.sample == 0 || (pkt.proto == PROTO_TCP && !syn) {
        return false;
    }
    let h = connection_hash(config.seed ^ 0x5ad0_0f11, &pkt.src, pkt.sport, pkt.proto);
    h & 0xffff < cfg.sample
}

/// An established flow: its pinned backend and its service's id, or
/// `NO_SERVICE` when the packet has no usable pin (a new flow, an expired
/// pin, a backend gone or down, a SYN with a new sequence number). One hash
/// lookup for the common case; the service comes from an array by id.
/// Inlined into the established path (one subprogram for the whole path).
#[inline(always)]
pub fn established(config: &Config, pkt: &Packet, out: &mut MaybeUninit<Chosen>) -> u32 {
    let key = flow_key(pkt);
    if pkt.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return syn(config, pkt, &key, out);
    }
    let Some(flow) = FLOWS.get_ptr_mut(&key) else {
        return half_open(config, pkt, &key, out);
    };
    let now = now_ns();
    let closing = pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let flow = unsafe { &mut *flow };
    match pinned(config, pkt, flow, now, closing, false) {
        Some(chosen) => {
            write_out(out, chosen);
            flow.service
        }
        None => NO_SERVICE,
    }
}

/// A SYN: its pin, if any, is in `HALF_OPEN` (a retransmission keeps it);
/// a pin in `FLOWS` belongs to a finished connection on the same 5-tuple
/// (a new sequence number) and goes, so it cannot shadow the new one.
// Not inlined: kept out of the established path's code.
#[inline(never)]
fn syn(config: &Config, pkt: &Packet, key: &FlowKey, out: &mut MaybeUninit<Chosen>) -> u32 {
    let now = now_ns();
    let closing = pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    if let Some(flow) = HALF_OPEN.get_ptr_mut(key) {
        let flow = unsafe { &mut *flow };
        if let Some(chosen) = pinned(config, pkt, flow, now, closing, true) {
            write_out(out, chosen);
            return flow.service;
        }
        return NO_SERVICE;
    }
    if let Some(flow) = FLOWS.get_ptr_mut(key) {
        let flow = unsafe { &mut *flow };
        if let Some(chosen) = pinned(config, pkt, flow, now, closing, true) {
            // A retransmitted SYN of a connection pinned before HALF_OPEN
            // existed (a daemon upgrade): it stays where it was.
            write_out(out, chosen);
            return flow.service;
        }
        let _ = FLOWS.remove(key);
    }
    NO_SERVICE
}

/// A connection with no pin in `FLOWS` may have one in `HALF_OPEN` (its SYN
/// was seen): its first packet after the SYN moves the pin to `FLOWS`.
// Not inlined: the miss path only, kept out of the established path's code.
#[inline(never)]
fn half_open(config: &Config, pkt: &Packet, key: &FlowKey, out: &mut MaybeUninit<Chosen>) -> u32 {
    if pkt.proto != PROTO_TCP {
        return NO_SERVICE;
    }
    let Some(flow) = HALF_OPEN.get_ptr_mut(key) else {
        return NO_SERVICE;
    };
    let flow = unsafe { &mut *flow };
    let closing = pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let Some(chosen) = pinned(config, pkt, flow, now_ns(), closing, false) else {
        return NO_SERVICE;
    };
    // The handshake went on: an established pin from now on (a copy; the
    // half-open entry goes).
    let service = flow.service;
    let _ = FLOWS.insert(key, &*flow, 0);
    let _ = HALF_OPEN.remove(key);
    write_out(out, chosen);
    service
}

/// A new flow (or one whose pin could not be used): the service's current
/// table decides, and the flow is pinned.
// Not inlined, for the same stack reason as `established`.
#[inline(never)]
pub fn new_flow(
    config: &Config,
    service: &Service,
    pkt: &Packet,
    out: &mut MaybeUninit<Chosen>,
) -> Result<(), Reason> {
    let chosen = choose(config, service, pkt)?;
    write_out(out, chosen);
    Ok(())
}

#[inline(always)]
fn choose(config: &Config, service: &Service, pkt: &Packet) -> Result<Chosen, Reason> {
    let key = flow_key(pkt);
    let now = now_ns();
    let closing = pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let syn = pkt.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;

    // The current table decides. An established TCP flow with no entry
    // (evicted, another switch host) lands where consistent hashing puts
    // it, which is its old backend as long as its slot has not changed;
    // if it changed in the last change, the previous owner takes it back
    // while it still serves.
    let (slot, main, current) = table_lookup(config, service, &pkt.src, pkt.sport, pkt.proto);
    let mut index = current;
    if pkt.proto == PROTO_TCP && !syn {
        let prev = if main {
            previous_owner(service, slot, current)
        } else {
            NO_BACKEND as u32
        };
        stats::service_miss(service.id, prev != NO_BACKEND as u32);
        if prev != NO_BACKEND as u32 {
            index = prev;
        }
    }
    if index == NO_BACKEND as u32 {
        return Err(Reason::NoBackend);
    }
    let b = BACKENDS.get(index).ok_or(Reason::NoBackend)?;
    let mut chosen = Chosen {
        index,
        addr: b.addr,
        port: b.port,
        snat_port: 0,
        shadow: if sampled(config, service, pkt, syn) {
            FLOW_SHADOW
        } else {
            0
        },
    };
    if service.mode == Mode::Fullnat as u8 {
        chosen.snat_port =
            snat::allocate(config.seed, service, &chosen, pkt).ok_or(Reason::NoSnatPort)?;
    }
    let flow = Flow {
        backend: index,
        generation: b.generation,
        service: service.id,
        flags: if closing { FLOW_CLOSING } else { 0 } | chosen.shadow,
        last_seen_ns: now,
        snat_port: chosen.snat_port,
        _pad: [0; 2],
        syn_seq: if syn { pkt.tcp_seq } else { 0 },
    };
    // A full LRU evicts its oldest entry; a failed insert still forwards.
    // A SYN's pin waits in HALF_OPEN until the connection goes on.
    let _ = if syn {
        HALF_OPEN.insert(&key, &flow, 0)
    } else {
        FLOWS.insert(&key, &flow, 0)
    };
    stats::service_new_flow(service.id);
    stats::backend_new_flow(index);
    Ok(chosen)
}

/// The pinned backend of an existing flow, unless the pin has expired or the
/// backend was removed or went down.
#[inline(always)]
fn pinned(
    config: &Config,
    pkt: &Packet,
    flow: &mut Flow,
    now: u64,
    closing: bool,
    syn: bool,
) -> Option<Chosen> {
    // A SYN with a new sequence number is a new connection reusing the
    // 5-tuple (the old one ended with an RST we did not see, or its port came
    // out of TIME_WAIT): it goes where the table says now. A retransmitted
    // SYN carries the same number and stays.
    if syn && (flow.flags & FLOW_CLOSING != 0 || flow.syn_seq != pkt.tcp_seq) {
        return None;
    }
    let idle = now.saturating_sub(flow.last_seen_ns);
    let limit = if flow.flags & FLOW_CLOSING != 0 {
        config.tcp_close_grace_ns
    } else if pkt.proto == PROTO_TCP {
        config.tcp_idle_ns
    } else {
        config.udp_idle_ns
    };
    if idle > limit {
        return None;
    }
    let b: &Backend = BACKENDS.get(flow.backend)?;
    if b.generation != flow.generation {
        return None;
    }
    match BackendState::from_u8(b.state) {
        BackendState::Active | BackendState::Draining => {}
        BackendState::Down | BackendState::Unused => return None,
    }
    if closing && flow.flags & FLOW_CLOSING == 0 {
        flow.flags |= FLOW_CLOSING;
        flow.last_seen_ns = now;
    } else if idle > REFRESH_NS {
        flow.last_seen_ns = now;
    }
    Some(Chosen {
        index: flow.backend,
        addr: b.addr,
        port: b.port,
        snat_port: flow.snat_port,
        shadow: flow.flags & FLOW_SHADOW,
    })
}

/// A nat reply (backend -> client) belongs to a flow this host pinned
/// through the VIP to exactly that backend: its flags (`FLOW_*`), or
/// `NOT_OURS`.
///
/// A SYN-ACK that does not answer the pinned connection's SYN answers a new
/// connection on the same addresses and ports: one to the backend's own
/// address, from a client port a VIP connection used before (the backend
/// sees both as the same 4-tuple, so the old one has ended there). Not
/// ours, and the stale pin goes, so the rest of that connection's replies
/// pass untouched as well.
#[inline(always)]
pub fn our_reply(ctx: &XdpContext, pkt: &Packet, real: &Real) -> u32 {
    let key = FlowKey {
        src: bytes(&pkt.dst),
        dst: real.vip,
        sport: pkt.dport,
        dport: real.vip_port,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    // SAFETY: hash map values stay valid for the program's run (RCU).
    // A SYN-ACK answers a connection whose pin is still half open.
    let (flow, half) = match unsafe { FLOWS.get(&key) } {
        Some(f) => (f, false),
        None => match unsafe { HALF_OPEN.get(&key) } {
            Some(f) => (f, true),
            None => return NOT_OURS,
        },
    };
    if flow.backend != real.backend {
        return NOT_OURS;
    }
    if pkt.proto == PROTO_TCP
        && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
        && flow.syn_seq != 0
        && !answers_syn(ctx, pkt, flow.syn_seq)
    {
        let _ = if half {
            HALF_OPEN.remove(&key)
        } else {
            FLOWS.remove(&key)
        };
        return NOT_OURS;
    }
    flow.flags
}

/// Whether a SYN-ACK acknowledges the SYN with sequence `syn_seq` (network
/// order): its acknowledgement is that sequence + 1, or a little more when
/// the SYN carried data (TCP Fast Open).
#[inline(always)]
fn answers_syn(ctx: &XdpContext, pkt: &Packet, syn_seq: u32) -> bool {
    // The acknowledgement number is the TCP header's third word; the
    // verifier does not carry parse's bounds check into this subprogram.
    if !parse::fits(ctx, pkt.l4, 12) {
        return true;
    }
    let ack = u32::from_be(parse::word_at(pkt.l4 + 8));
    ack.wrapping_sub(u32::from_be(syn_seq).wrapping_add(1)) < 65_536
}

pub const NOT_OURS: u32 = u32::MAX;

/// A fleet behind ECMP (`CONFIG_TABLE_REPLIES`): a nat reply this host has
/// no pin for is a VIP connection's when the table gives the client's
/// connection to the replying backend (every host of the fleet computes
/// the same), or gave it before the last change.
#[inline(never)]
pub fn table_reply(config: &Config, pkt: &Packet, real: &Real) -> bool {
    let key = ServiceKey {
        addr: real.vip,
        port: real.vip_port,
        proto: pkt.proto,
        family: pkt.family,
    };
    // SAFETY: hash map values stay valid for the program's run (RCU).
    let Some(service) = (unsafe { SERVICES.get(&key) }) else {
        return false;
    };
    // The reply goes to the client: its address and port are the
    // connection's source.
    let (slot, main, current) = table_lookup(config, service, &pkt.dst, pkt.dport, pkt.proto);
    current == real.backend || (main && previous_owner(service, slot, current) == real.backend)
}

/// The slot of this packet, whether it is in the main table (not the
/// cohort's), and its current owner (`NO_BACKEND` when none).
#[inline(always)]
fn table_lookup(
    config: &Config,
    service: &Service,
    src: &Addr,
    sport: u16,
    proto: u8,
) -> (usize, bool, u32) {
    let cohort = service.cohort_table != u32::MAX && in_cohort(service.id, src);
    let table_index = if cohort {
        service.cohort_table
    } else {
        service.table
    };
    let hash = if service.flags & SERVICE_CLIENT_AFFINITY != 0 {
        client_hash(config.seed, src)
    } else {
        connection_hash(config.seed, src, sport, proto)
    };
    // slot_of's multiply-and-shift keeps the index provably < TABLE_SIZE.
    let slot = slot_of(hash);
    let owner = match TABLES.get(table_index).and_then(|t| t.slots.get(slot)) {
        Some(&entry) => entry as u32,
        None => NO_BACKEND as u32,
    };
    (slot, !cohort, owner)
}

/// The backend the table gives the flow `key` (client -> VIP) with no
/// pin, as `choose` would for a TCP packet that is not a SYN: the slot's
/// previous owner while it still serves, else its owner (`NO_BACKEND`:
/// none). Few arguments: BPF calls take five registers, no stack.
#[inline(never)]
pub fn table_owner(config: &Config, service: &Service, key: &FlowKey) -> u32 {
    let src = parse::aligned(&key.src);
    let (slot, main, current) = table_lookup(config, service, &src, key.sport, key.proto);
    if key.proto == PROTO_TCP && main {
        let prev = previous_owner(service, slot, current);
        if prev != NO_BACKEND as u32 {
            return prev;
        }
    }
    current
}

/// The slot's owner in the table before the last change, if it differs
/// from `current` and still serves this service (active or draining).
#[inline(never)]
fn previous_owner(service: &Service, slot: usize, current: u32) -> u32 {
    if service.prev_table == NO_PREV_TABLE {
        return NO_BACKEND as u32;
    }
    let Some(&prev) = TABLES
        .get(service.prev_table as u32)
        .and_then(|t| t.slots.get(slot))
    else {
        return NO_BACKEND as u32;
    };
    let prev = prev as u32;
    if prev == NO_BACKEND as u32 || prev == current {
        return NO_BACKEND as u32;
    }
    match BACKENDS.get(prev) {
        Some(b)
            if b.service == service.id
                && matches!(
                    BackendState::from_u8(b.state),
                    BackendState::Active | BackendState::Draining
                ) =>
        {
            prev
        }
        _ => NO_BACKEND as u32,
    }
}

#[inline(never)]
fn in_cohort(service: u32, src: &Addr) -> bool {
    let key = Key::new(
        128 + 32,
        CohortKey {
            service: service.to_be_bytes(),
            addr: bytes(src),
        },
    );
    COHORTS.get(&key).is_some()
}
