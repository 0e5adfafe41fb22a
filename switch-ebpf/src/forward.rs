//! Forward: `bpf_fib_lookup` gives the egress device and both MACs; the
//! packet leaves through the `DEVICES` devmap. A missing neighbour hands the
//! (already rewritten) packet to the kernel so ARP/ND resolves it.

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use switch_common::{FAMILY_V4, Reason};

use network_types::eth::EthHdr;

use crate::{
    maps::{DEVICES, FIB_SCRATCH},
    parse,
    parse::Packet,
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

/// Route a packet whose L3 header now holds its final destination (nat mode
/// and replies).
#[inline(always)]
pub fn routed(ctx: &XdpContext, pkt: &Packet, ok: Reason) -> (u32, Reason) {
    if !parse::l3_fits(ctx, pkt) {
        return (xdp_action::XDP_PASS, Reason::Malformed);
    }
    let dst = destination(pkt);
    named(send(ctx, pkt, &dst, true, None), ok)
}

/// A nat reply: the source becomes the VIP, but only once the route is
/// known and it is not for this host. Traffic from a backend to the switch
/// itself (health checks, the operator's curl) must reach the local stack
/// untouched.
#[inline(always)]
pub fn nat_reply(ctx: &XdpContext, pkt: &Packet, vip: &Source) -> (u32, Reason) {
    if !parse::l3_fits(ctx, pkt) {
        return (xdp_action::XDP_PASS, Reason::Malformed);
    }
    let dst = destination(pkt);
    named(
        send(ctx, pkt, &dst, true, Some(vip)),
        Reason::ReplyForwarded,
    )
}

/// A source address and port to write once the route is known.
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
    named(send(ctx, pkt, backend, false, None), Reason::Forwarded)
}

/// `send` reports success as `Forwarded`; the caller names what was sent.
#[inline(always)]
fn named(v: u64, ok: Reason) -> (u32, Reason) {
    match unpack(v) {
        (verdict, Reason::Forwarded) => (verdict, ok),
        other => other,
    }
}

// Not inlined: its 64-byte route-lookup struct gets a stack frame of its
// own instead of adding to try_switch's (the BPF stack is 512 bytes).
#[inline(never)]
fn send(ctx: &XdpContext, pkt: &Packet, next: &[u8; 16], route: bool, src: Option<&Source>) -> u64 {
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
    unsafe {
        (*pkt.eth).dst_addr = p.dmac;
        (*pkt.eth).src_addr = p.smac;
    }
    if route {
        rewrite::decrement_ttl(ctx, pkt);
    }
    match DEVICES.redirect(p.ifindex, 0) {
        Ok(v) => pack(v, Reason::Forwarded),
        Err(_) => pack(xdp_action::XDP_DROP, Reason::FibFailed),
    }
}
