//! Forward: `bpf_fib_lookup` gives the egress device and both MACs; the
//! packet leaves through the `DEVICES` devmap. A missing neighbour hands the
//! (already rewritten) packet to the kernel so ARP/ND resolves it.

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use switch_common::{
    FAMILY_V4, NEXTHOP_VALID, NextHop, REPLY_HOP_SLOTS, REPLY_HOP_WORDS, REPLY_HOPS_OFF, Reason,
    ReplyHop, ReplyHopKey,
    hash::{reply_hop_check, reply_hop_slot},
};

use network_types::eth::EthHdr;

use crate::{
    maps::{DEVICES, FIB_SCRATCH, NEXTHOPS, REPLY_HOPS, REPLY_HOPS_EPOCH, REPLY_SCRATCH},
    parse,
    parse::{Addr, Packet},
    rewrite,
    verdict::{pack, unpack},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const FIB_SUCCESS: i64 = 0;
/// The destination is local to this host.
const FIB_NOT_FWDED: i64 = 4;
const FIB_NO_NEIGH: i64 = 7;
const FIB_FRAG_NEEDED: i64 = 8;

/// Client -> backend (every mode): the backend's cached next hop when the
/// daemon has one, else the kernel's route lookup. `routed`: nat and
/// fullnat (the TTL goes down); dsr only changes the Ethernet header.
#[inline(always)]
pub fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    index: u32,
    backend: &[u8; 16],
    routed_mode: bool,
) -> (u32, Reason) {
    if let Some(hop) = usable_hop(pkt, index) {
        return via(ctx, pkt, hop, routed_mode);
    }
    // Slow path: not known yet, stale, or a packet above the cached MTU
    // (the kernel's answer covers fragmentation-needed).
    if routed_mode {
        routed(ctx, pkt, Reason::Forwarded)
    } else {
        dsr(ctx, pkt, backend)
    }
}

/// The backend's cached next hop when it can take this packet (the fast
/// path, inlined into the established path); `None`: ask `to_backend`.
#[inline(always)]
pub fn cached(
    ctx: &XdpContext,
    pkt: &Packet,
    index: u32,
    routed_mode: bool,
) -> Option<(u32, Reason)> {
    let hop = usable_hop(pkt, index)?;
    Some(through(ctx, pkt, hop, routed_mode))
}

/// The backend's cached next hop, if it is valid and the packet fits its MTU.
#[inline(always)]
fn usable_hop(pkt: &Packet, index: u32) -> Option<&'static NextHop> {
    NEXTHOPS
        .get(index)
        .filter(|hop| hop.flags & NEXTHOP_VALID != 0 && pkt.ip_len <= hop.mtu)
}

/// Sends through a cached next hop: two MACs, the TTL, one redirect.
// Not inlined: to_vip's frame would grow by this path's locals, and
// try_switch -> to_vip -> send (the slow path) must stay within 512 bytes.
#[inline(never)]
fn via(ctx: &XdpContext, pkt: &Packet, hop: &NextHop, routed_mode: bool) -> (u32, Reason) {
    through(ctx, pkt, hop, routed_mode)
}

#[inline(always)]
fn through(ctx: &XdpContext, pkt: &Packet, hop: &NextHop, routed_mode: bool) -> (u32, Reason) {
    if !parse::fits(ctx, pkt.eth as usize, EthHdr::LEN) {
        return (xdp_action::XDP_PASS, Reason::Malformed);
    }
    set_macs(pkt.eth as usize, &hop.dmac, &hop.smac);
    if routed_mode {
        rewrite::decrement_ttl(ctx, pkt);
    }
    // The daemon caches only next hops on devices in DEVICES.
    match DEVICES.redirect(hop.ifindex, 0) {
        Ok(v) => (v, Reason::Forwarded),
        Err(_) => (xdp_action::XDP_DROP, Reason::FibFailed),
    }
}

/// Writes both MACs as three 32-bit words: a `[u8; 6]` assignment becomes
/// a byte-at-a-time memmove call on BPF.
#[inline(always)]
fn set_macs(eth: usize, dmac: &[u8; 6], smac: &[u8; 6]) {
    set_mac_words(
        eth,
        u32::from_ne_bytes([dmac[0], dmac[1], dmac[2], dmac[3]]),
        u32::from_ne_bytes([dmac[4], dmac[5], smac[0], smac[1]]),
        u32::from_ne_bytes([smac[2], smac[3], smac[4], smac[5]]),
    );
}

/// The twelve MAC bytes (destination, then source) as three native words.
#[inline(always)]
fn set_mac_words(eth: usize, w0: u32, w1: u32, w2: u32) {
    unsafe {
        core::ptr::write_unaligned(eth as *mut u32, w0);
        core::ptr::write_unaligned((eth + 4) as *mut u32, w1);
        core::ptr::write_unaligned((eth + 8) as *mut u32, w2);
    }
}

/// Route a packet whose L3 header now holds its final destination (nat
/// mode).
#[inline(always)]
fn routed(ctx: &XdpContext, pkt: &Packet, ok: Reason) -> (u32, Reason) {
    if !parse::l3_fits(ctx, pkt) {
        return (xdp_action::XDP_PASS, Reason::Malformed);
    }
    let dst = destination(pkt);
    named(send(ctx, pkt, &dst, ROUTED, None), ok)
}

/// A reply to a client. nat (`vip` given): the source becomes the VIP, but
/// only once the route is known and it is not for this host — traffic from
/// a backend to the switch itself (health checks, the operator's curl) must
/// reach the local stack untouched; the kernel is asked before that
/// rewrite, so the key's source is the backend. fullnat (`vip` none): the
/// packet already goes from the VIP to the client. Either way the kernel's
/// kept answer is used when there is one.
#[inline(always)]
pub fn reply(
    ctx: &XdpContext,
    pkt: &Packet,
    client: &Addr,
    from: &Addr,
    vip: Option<&Source>,
) -> (u32, Reason) {
    if !parse::l3_fits(ctx, pkt) {
        return (xdp_action::XDP_PASS, Reason::Malformed);
    }
    let v = cached_reply(ctx, pkt, client, from, vip);
    if v != NOT_CACHED {
        return named(v, Reason::ReplyForwarded);
    }
    let dst = destination(pkt);
    named(
        send(ctx, pkt, &dst, ROUTED | REPLY, vip),
        Reason::ReplyForwarded,
    )
}

/// `cached_reply` has no answer: ask the kernel.
const NOT_CACHED: u64 = u64::MAX;

/// A reply (backend -> client) by the kernel's last answer for its key
/// (`dst`, `src` as the kernel is asked), when it still holds and the
/// packet is no larger than one the kernel forwarded; nat replies get their
/// source rewritten to `vip` here. Else `NOT_CACHED`, with the key left in
/// `REPLY_SCRATCH` for `remember_reply_hop`. The key lives in that per-CPU
/// scratch map: on the stack it would take the deepest call chain past 512
/// bytes.
// Not inlined: its own frame, and verified once rather than inside every
// caller of `send`.
#[inline(never)]
fn cached_reply(
    ctx: &XdpContext,
    pkt: &Packet,
    dst: &Addr,
    src: &Addr,
    vip: Option<&Source>,
) -> u64 {
    let Some(r) = REPLY_SCRATCH.get_ptr_mut(0) else {
        return NOT_CACHED;
    };
    // SAFETY: this CPU's own scratch value, used by this program only.
    let r = unsafe { &mut *r };
    // OFF until the key is this packet's: nothing is remembered under a
    // key left from another packet.
    r.epoch = REPLY_HOPS_OFF;
    let epoch = REPLY_HOPS_EPOCH.get(0).copied().unwrap_or(REPLY_HOPS_OFF);
    if epoch == REPLY_HOPS_OFF || !parse::l3_fits(ctx, pkt) {
        return NOT_CACHED;
    }
    set_reply_hop_key(ctx, pkt, dst, src, &mut r.key);
    r.epoch = epoch;
    let key = key_words(&r.key);
    let Some(slot) = REPLY_HOPS.get_ptr(reply_hop_slot(&key, REPLY_HOP_SLOTS)) else {
        return NOT_CACHED;
    };
    // One copy of the slot, a word at a time (another CPU may be writing
    // it), then only the copy is used: whole (its check holds), for this
    // key, of this epoch.
    let slot = slot as *const u64;
    let w: [u64; REPLY_HOP_WORDS] =
        core::array::from_fn(|i| unsafe { core::ptr::read_volatile(slot.add(i)) });
    if w[0] != key[0]
        || w[1] != key[1]
        || w[2] != key[2]
        || w[3] != key[3]
        || w[4] != key[4]
        || (w[7] >> 32) as u32 != epoch
        || pkt.ip_len > w[7] as u16
        || reply_hop_check(&w) != w[REPLY_HOP_WORDS - 1]
    {
        return NOT_CACHED;
    }
    if !parse::fits(ctx, pkt.eth as usize, EthHdr::LEN) {
        return pack(xdp_action::XDP_PASS, Reason::Malformed);
    }
    if let Some(vip) = vip
        && !rewrite::source(ctx, pkt, &vip.addr, vip.port)
    {
        return pack(xdp_action::XDP_PASS, Reason::Malformed);
    }
    // Words 5 and 6: both MACs, then the egress device (see `ReplyHop`).
    set_mac_words(
        pkt.eth as usize,
        w[5] as u32,
        (w[5] >> 32) as u32,
        w[6] as u32,
    );
    rewrite::decrement_ttl(ctx, pkt);
    match DEVICES.redirect((w[6] >> 32) as u32, 0) {
        Ok(v) => pack(v, Reason::Forwarded),
        Err(_) => pack(xdp_action::XDP_DROP, Reason::FibFailed),
    }
}

/// Keeps the kernel's answer for a reply that `cached_reply` left its key
/// for (unless caching is off): the slot is written a word at a time,
/// its check last.
#[inline(always)]
fn remember_reply_hop(pkt: &Packet, p: &FibParams) {
    let Some(r) = REPLY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in cached_reply.
    let r = unsafe { &mut *r };
    if r.epoch == REPLY_HOPS_OFF {
        return;
    }
    r.dmac = p.dmac;
    r.smac = p.smac;
    r.ifindex = p.ifindex;
    r.fits = pkt.ip_len;
    r._pad = 0;
    // SAFETY: ReplyHop is REPLY_HOP_WORDS 8-aligned words (a test in
    // switch-common checks the layout).
    let w = unsafe { &*(r as *const ReplyHop as *const [u64; REPLY_HOP_WORDS]) };
    let check = reply_hop_check(w);
    let key = key_words(&r.key);
    let Some(slot) = REPLY_HOPS.get_ptr_mut(reply_hop_slot(&key, REPLY_HOP_SLOTS)) else {
        return;
    };
    let slot = slot as *mut u64;
    for (i, word) in w.iter().enumerate().take(REPLY_HOP_WORDS - 1) {
        unsafe { core::ptr::write_volatile(slot.add(i), *word) };
    }
    unsafe { core::ptr::write_volatile(slot.add(REPLY_HOP_WORDS - 1), check) };
}

/// A key's five words (it is 8-aligned: `ReplyHopKey`).
#[inline(always)]
fn key_words(key: &ReplyHopKey) -> [u64; 5] {
    // SAFETY: 40 bytes, 8-aligned, every bit pattern a valid u64.
    unsafe { core::ptr::read(key as *const ReplyHopKey as *const [u64; 5]) }
}

/// A source address and port to write once the route is known (4-aligned:
/// `rewrite` reads the address in words).
#[repr(C, align(4))]
pub struct Source {
    pub addr: [u8; 16],
    pub port: u16,
}

#[inline(always)]
fn destination(pkt: &Packet) -> [u8; 16] {
    unsafe {
        if pkt.family == FAMILY_V4 {
            let ip = pkt.l3 as *const network_types::ip::Ipv4Hdr;
            parse::v4_addr((*ip).dst_addr)
        } else {
            (*(pkt.l3 as *const network_types::ip::Ipv6Hdr)).dst_addr
        }
    }
}

/// Direct server return: the IP packet is untouched, only the Ethernet
/// header is addressed to the backend, which holds the VIP itself.
#[inline(always)]
pub fn dsr(ctx: &XdpContext, pkt: &Packet, backend: &[u8; 16]) -> (u32, Reason) {
    named(send(ctx, pkt, backend, 0, None), Reason::Forwarded)
}

/// `send` reports success as `Forwarded`; the caller names what was sent.
#[inline(always)]
fn named(v: u64, ok: Reason) -> (u32, Reason) {
    match unpack(v) {
        (verdict, Reason::Forwarded) => (verdict, ok),
        other => other,
    }
}

/// `send`: the TTL goes down (nat, fullnat and replies; not dsr).
const ROUTED: u32 = 1;
/// `send`: a reply whose key `cached_reply` left: keep the kernel's answer.
const REPLY: u32 = 2;

// Not inlined: its 64-byte route-lookup struct gets a stack frame of its
// own instead of adding to try_switch's (the BPF stack is 512 bytes).
#[inline(never)]
fn send(ctx: &XdpContext, pkt: &Packet, next: &[u8; 16], how: u32, src: Option<&Source>) -> u64 {
    if !parse::l3_fits(ctx, pkt) || !parse::fits(ctx, pkt.eth as usize, EthHdr::LEN) {
        return pack(xdp_action::XDP_PASS, Reason::Malformed);
    }
    // The 64-byte lookup struct lives in a per-CPU scratch map, not on the
    // 512-byte stack. Every field is written: stale values from the last
    // packet must not leak into this lookup.
    let Some(p) = FIB_SCRATCH.get_ptr_mut(0) else {
        return pack(xdp_action::XDP_PASS, Reason::FibFailed);
    };
    let p = unsafe { &mut *p };
    p.l4_protocol = pkt.proto;
    p.sport = pkt.sport;
    p.dport = pkt.dport;
    p.__bindgen_anon_1.tot_len = pkt.ip_len;
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_2.flowinfo = 0;
    p.__bindgen_anon_5.tbid = 0;
    unsafe {
        if pkt.family == FAMILY_V4 {
            let ip = pkt.l3 as *const network_types::ip::Ipv4Hdr;
            p.family = AF_INET;
            p.__bindgen_anon_2.tos = (*ip).tos;
            p.__bindgen_anon_3.ipv6_src = [u32::from_ne_bytes((*ip).src_addr), 0, 0, 0];
            p.__bindgen_anon_4.ipv6_dst = [
                u32::from_ne_bytes([next[0], next[1], next[2], next[3]]),
                0,
                0,
                0,
            ];
        } else {
            let ip = pkt.l3 as *const network_types::ip::Ipv6Hdr;
            p.family = AF_INET6;
            p.__bindgen_anon_3.ipv6_src =
                core::mem::transmute::<[u8; 16], [u32; 4]>((*ip).src_addr);
            p.__bindgen_anon_4.ipv6_dst = core::mem::transmute::<[u8; 16], [u32; 4]>(*next);
        }
    }
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            p as *mut FibParams,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == FIB_NOT_FWDED && src.is_some() {
        // For this host, not a reply to a client: leave it alone.
        return pack(xdp_action::XDP_PASS, Reason::NotVip);
    }
    if let Some(s) = src
        && !rewrite::source(ctx, pkt, &s.addr, s.port)
    {
        return pack(xdp_action::XDP_PASS, Reason::Malformed);
    }
    match rc {
        FIB_SUCCESS => {}
        FIB_NO_NEIGH => return pack(xdp_action::XDP_PASS, Reason::FibNoNeigh),
        FIB_NOT_FWDED => return pack(xdp_action::XDP_PASS, Reason::NotRedirectable),
        FIB_FRAG_NEEDED => return pack(xdp_action::XDP_PASS, Reason::FragNeeded),
        _ => return pack(xdp_action::XDP_DROP, Reason::FibFailed),
    }
    if DEVICES.get(p.ifindex).is_none() {
        // The kernel can still route it, just more slowly.
        return pack(xdp_action::XDP_PASS, Reason::NotRedirectable);
    }
    if how & REPLY != 0 {
        remember_reply_hop(pkt, p);
    }
    set_macs(pkt.eth as usize, &p.dmac, &p.smac);
    if how & ROUTED != 0 {
        rewrite::decrement_ttl(ctx, pkt);
    }
    match DEVICES.redirect(p.ifindex, 0) {
        Ok(v) => pack(v, Reason::Forwarded),
        Err(_) => pack(xdp_action::XDP_DROP, Reason::FibFailed),
    }
}

/// What the route lookup of a reply depends on (see `ReplyHopKey`).
#[inline(always)]
fn set_reply_hop_key(
    ctx: &XdpContext,
    pkt: &Packet,
    dst: &Addr,
    src: &Addr,
    key: &mut ReplyHopKey,
) {
    key.tos = if pkt.family == FAMILY_V4 {
        // SAFETY: the caller checked the L3 header's bounds.
        unsafe { (*(pkt.l3 as *const network_types::ip::Ipv4Hdr)).tos }
    } else {
        0
    };
    key.dst = parse::bytes(dst);
    key.src = parse::bytes(src);
    key.ifindex = ctx.ingress_ifindex() as u32;
    key.family = pkt.family;
    key.proto = pkt.proto;
    key._pad = 0;
}
