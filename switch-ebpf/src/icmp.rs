//! ICMP errors about VIP flows. A router that cannot pass a backend's
//! answer (fragmentation needed, packet too big, unreachable, time
//! exceeded) reports it to the answer's source — the VIP, in nat and dsr
//! mode — so the report reaches this host and not the backend that sent
//! the packet, which would retransmit a too-large segment forever (a
//! path-MTU black hole). Here it goes to the backend that owns the flow,
//! found by the quoted header's pin (or the service's table), rewritten as
//! the mode needs: nat and fullnat turn the quoted packet back into what
//! the backend sent and address the report to it; dsr forwards it as it
//! is (the backend holds the VIP).
//!
//! An error quoting a flow we do not know, a quote cut short or malformed,
//! or one about a connection not made through a VIP passes untouched, and
//! each case is counted.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use switch_common::{
    Backend, CONFIG_TABLE_REPLIES, FAMILY_V4, Flow, FlowKey, Mode, NO_BACKEND, PROTO_TCP,
    PROTO_UDP, Reason, ServiceKey, checksum,
};

use crate::{
    choose,
    maps::{BACKENDS, CONFIG, FLOWS, HALF_OPEN, SERVICE_BY_ID, SERVICES},
    parse::{self, Addr, Packet, addr_at, word_at},
    rewrite::{read_half, write_half, write_word},
    verdict::pack,
};

pub use switch_common::{PROTO_ICMP, PROTO_ICMPV6};

/// ICMP header, then the quoted IP header and the first 8 bytes of its
/// transport header (where both ports are).
const ICMP_LEN: usize = 8;
const QUOTED_L4: usize = 8;

/// An ICMP or ICMPv6 packet `parse` found (`pkt.l4` is its header).
#[inline(never)]
pub fn handle(ctx: &XdpContext, pkt: &Packet) -> u64 {
    let v4 = pkt.family == FAMILY_V4;
    if !parse::fits(ctx, pkt.l4, ICMP_LEN) {
        return pack(xdp_action::XDP_PASS, Reason::IcmpPassed);
    }
    let kind = unsafe { *(pkt.l4 as *const u8) };
    if kind == if v4 { 8 } else { 128 } {
        return echo(ctx, pkt);
    }
    let inner = pkt.l4 + ICMP_LEN;
    let inner_len = if v4 { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN };
    // The verifier needs the whole quote checked in one comparison.
    if !parse::fits(ctx, pkt.l4, ICMP_LEN + inner_len + QUOTED_L4) {
        return pack(xdp_action::XDP_PASS, Reason::IcmpPassed);
    }
    let error = if v4 {
        // Destination unreachable (incl. fragmentation needed), time exceeded.
        kind == 3 || kind == 11
    } else {
        // Destination unreachable, packet too big, time exceeded.
        kind == 1 || kind == 2 || kind == 3
    };
    if !error {
        return pack(xdp_action::XDP_PASS, Reason::IcmpPassed);
    }
    // The quoted packet: what we sent, VIP -> client.
    let (proto, quoted_src, quoted_dst, l4) = if v4 {
        let (vihl, proto) = unsafe { (*(inner as *const u8), *((inner + 9) as *const u8)) };
        if vihl != 0x45 {
            return pack(xdp_action::XDP_PASS, Reason::IcmpMalformed);
        }
        (
            proto,
            [word_at(inner + 12), 0, 0, 0],
            [word_at(inner + 16), 0, 0, 0],
            inner + Ipv4Hdr::LEN,
        )
    } else {
        let (ver, proto) = unsafe { (*(inner as *const u8) >> 4, *((inner + 6) as *const u8)) };
        if ver != 6 {
            return pack(xdp_action::XDP_PASS, Reason::IcmpMalformed);
        }
        (
            proto,
            addr_at(inner + 8),
            addr_at(inner + 24),
            inner + Ipv6Hdr::LEN,
        )
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return pack(xdp_action::XDP_PASS, Reason::IcmpUnknownFlow);
    }
    let (quoted_sport, quoted_dport) = unsafe {
        (
            u16::from_ne_bytes(*(l4 as *const [u8; 2])),
            u16::from_ne_bytes(*((l4 + 2) as *const [u8; 2])),
        )
    };
    // Our reply came from the VIP: the outer destination must be it.
    if quoted_src != pkt.dst {
        return pack(xdp_action::XDP_PASS, Reason::IcmpUnknownFlow);
    }
    // The flow as the client opened it: client -> VIP.
    let key = FlowKey {
        src: parse::bytes(&quoted_dst),
        dst: parse::bytes(&quoted_src),
        sport: quoted_dport,
        dport: quoted_sport,
        proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    let Some((backend_index, service_id, snat_port)) = owner(&key) else {
        return pack(xdp_action::XDP_PASS, Reason::IcmpUnknownFlow);
    };
    let Some(service) = SERVICE_BY_ID.get(service_id) else {
        return pack(xdp_action::XDP_PASS, Reason::IcmpUnknownFlow);
    };
    let Some(b) = BACKENDS.get(backend_index) else {
        return pack(xdp_action::XDP_PASS, Reason::IcmpUnknownFlow);
    };
    if parse::ttl_expires(pkt) {
        return pack(xdp_action::XDP_PASS, Reason::TtlExpired);
    }
    let mode = Mode::from_u8(service.mode);
    let routed = !matches!(mode, Some(Mode::Dsr));
    if routed {
        let snat = matches!(mode, Some(Mode::Fullnat)).then_some((&service.snat_addr, snat_port));
        if !translate(ctx, pkt, b, snat) {
            return pack(xdp_action::XDP_PASS, Reason::IcmpMalformed);
        }
    }
    // Forward like the flow's packets: by the backend's next hop (the
    // route lookup reads the destination from the rewritten header).
    let (v, why) = crate::forward::to_backend(ctx, pkt, backend_index, &b.addr, routed);
    pack(
        v,
        if why == Reason::Forwarded {
            Reason::IcmpToBackend
        } else {
            why
        },
    )
}

/// An echo request to a VIP is answered here (operators ping VIPs; no
/// backend is involved): addresses and MACs swapped, type turned into a
/// reply, TTL / hop limit set afresh, sent back out the same interface.
/// The programmer marks each VIP with an entry for ICMP (port 0) in
/// `SERVICES`; an echo to any other address passes.
#[inline(never)]
fn echo(ctx: &XdpContext, pkt: &Packet) -> u64 {
    let v4 = pkt.family == FAMILY_V4;
    let key = ServiceKey {
        addr: parse::bytes(&pkt.dst),
        port: 0,
        proto: pkt.proto,
        family: pkt.family,
    };
    // SAFETY: hash map values stay valid for the program's run (RCU).
    if unsafe { SERVICES.get(&key) }.is_none() {
        return pack(xdp_action::XDP_PASS, Reason::IcmpPassed);
    }
    let eth = pkt.eth as usize;
    let ip_len = if v4 { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN };
    if !parse::fits(ctx, eth, 14)
        || !parse::fits(ctx, pkt.l3, ip_len)
        || !parse::fits(ctx, pkt.l4, ICMP_LEN)
    {
        return pack(xdp_action::XDP_PASS, Reason::IcmpMalformed);
    }
    // Back to where it came from.
    let (d0, d1, s0, s1) = (
        word_at(eth),
        read_half(eth + 4),
        read_half(eth + 6),
        word_at(eth + 8),
    );
    write_half(eth, s0);
    write_word(eth + 2, s1);
    write_word(eth + 6, d0);
    write_half(eth + 10, d1);
    // Type: request -> reply (the code byte stays).
    let old_type = read_half(pkt.l4);
    let new_type = u16::from_ne_bytes([if v4 { 0 } else { 129 }, (old_type.to_ne_bytes())[1]]);
    write_half(pkt.l4, new_type);
    let check = pkt.l4 + 2;
    // Swapping the addresses leaves every sum as it was (ICMPv6's
    // pseudo-header included).
    write_half(
        check,
        checksum::ne_apply(
            read_half(check),
            checksum::ne_diff16(old_type, new_type),
            false,
        ),
    );
    if v4 {
        let (src, dst) = (word_at(pkt.l3 + 12), word_at(pkt.l3 + 16));
        write_word(pkt.l3 + 12, dst);
        write_word(pkt.l3 + 16, src);
        // TTL shares a 16-bit word with the protocol byte (byte 8).
        let old = read_half(pkt.l3 + 8);
        let new = u16::from_ne_bytes([64, (old.to_ne_bytes())[1]]);
        write_half(pkt.l3 + 8, new);
        let c = pkt.l3 + 10;
        write_half(
            c,
            checksum::ne_apply(read_half(c), checksum::ne_diff16(old, new), false),
        );
    } else {
        let (src, dst) = (addr_at(pkt.l3 + 8), addr_at(pkt.l3 + 24));
        write_addr(pkt.l3 + 8, &dst);
        write_addr(pkt.l3 + 24, &src);
        unsafe { *((pkt.l3 + 7) as *mut u8) = 64 };
    }
    // Out the way it came, as a redirect to the same device: a veth peer
    // receives redirected frames (GRO on), XDP_TX ones only with an XDP
    // program of its own.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let v = crate::maps::DEVICES
        .redirect(ifindex, 0)
        .unwrap_or(xdp_action::XDP_TX);
    pack(v, Reason::IcmpEchoReply)
}

/// The backend that owns a flow: its pin here, or, in a fleet (where
/// another host may hold the pin), the service's table.
#[inline(always)]
fn owner(key: &FlowKey) -> Option<(u32, u32, u16)> {
    let config = CONFIG.get(0)?;
    // SAFETY: hash map values stay valid for the program's run (RCU).
    let pinned: Option<&Flow> = unsafe { FLOWS.get(key).or_else(|| HALF_OPEN.get(key)) };
    if let Some(f) = pinned {
        let b = BACKENDS.get(f.backend)?;
        if b.generation == f.generation {
            return Some((f.backend, f.service, f.snat_port));
        }
    }
    if config.flags & CONFIG_TABLE_REPLIES == 0 {
        return None;
    }
    let skey = ServiceKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
        family: key.family,
    };
    // SAFETY: as above.
    let service = unsafe { SERVICES.get(&skey) }?;
    // fullnat ports live only in a pin: without one the backend cannot
    // be told which of its connections it is.
    if service.mode == Mode::Fullnat as u8 {
        return None;
    }
    let index = choose::table_owner(config, service, key);
    if index == NO_BACKEND as u32 {
        return None;
    }
    Some((index, service.id, 0))
}

/// nat and fullnat: the report goes to the backend, about the packet the
/// backend sent (backend -> client; fullnat: backend -> our source
/// address and port). Outer destination, quoted source (and quoted
/// destination for fullnat), and every checksum that covers them.
#[inline(always)]
fn translate(ctx: &XdpContext, pkt: &Packet, b: &Backend, snat: Option<(&[u8; 16], u16)>) -> bool {
    let v4 = pkt.family == FAMILY_V4;
    let inner = pkt.l4 + ICMP_LEN;
    let inner_len = if v4 { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN };
    if !parse::fits(ctx, pkt.l4, ICMP_LEN + inner_len + QUOTED_L4) {
        return false;
    }
    let backend = parse::aligned(&b.addr);
    let l4 = inner + inner_len;
    let icmp_check = pkt.l4 + 2;
    let mut icmp_diff = 0u64;
    if v4 {
        // Outer destination (byte 16) and the outer header's checksum.
        let old = word_at(pkt.l3 + 16);
        write_word(pkt.l3 + 16, backend[0]);
        let d = checksum::ne_diff(&[old], &[backend[0]]);
        write_half(
            pkt.l3 + 10,
            checksum::ne_apply(read_half(pkt.l3 + 10), d, false),
        );
        // Quoted source (and destination) and the quoted header's checksum.
        let old_check = read_half(inner + 10);
        let old_src = word_at(inner + 12);
        write_word(inner + 12, backend[0]);
        let mut d = checksum::ne_diff(&[old_src], &[backend[0]]);
        if let Some((addr, _)) = snat {
            let new = parse::aligned(addr);
            let old_dst = word_at(inner + 16);
            write_word(inner + 16, new[0]);
            d += checksum::ne_diff(&[old_dst], &[new[0]]);
        }
        let new_check = checksum::ne_apply(old_check, d, false);
        write_half(inner + 10, new_check);
        // ICMPv4's checksum covers the quote (no pseudo-header).
        icmp_diff += d + checksum::ne_diff16(old_check, new_check);
    } else {
        // ICMPv6's checksum covers the outer addresses (pseudo-header).
        let old = addr_at(pkt.l3 + 24);
        write_addr(pkt.l3 + 24, &backend);
        icmp_diff += checksum::ne_diff(&old, &backend);
        let old_src = addr_at(inner + 8);
        write_addr(inner + 8, &backend);
        icmp_diff += checksum::ne_diff(&old_src, &backend);
        if let Some((addr, _)) = snat {
            let new = parse::aligned(addr);
            let old_dst = addr_at(inner + 24);
            write_addr(inner + 24, &new);
            icmp_diff += checksum::ne_diff(&old_dst, &new);
        }
    }
    // Quoted ports: the backend's, and (fullnat) our source port.
    let old_sport = read_half(l4);
    write_half(l4, b.port);
    icmp_diff += checksum::ne_diff16(old_sport, b.port);
    if let Some((_, port)) = snat {
        let old_dport = read_half(l4 + 2);
        write_half(l4 + 2, port);
        icmp_diff += checksum::ne_diff16(old_dport, port);
    }
    write_half(
        icmp_check,
        checksum::ne_apply(read_half(icmp_check), icmp_diff, false),
    );
    true
}

#[inline(always)]
fn write_addr(ptr: usize, a: &Addr) {
    write_word(ptr, a[0]);
    write_word(ptr + 4, a[1]);
    write_word(ptr + 8, a[2]);
    write_word(ptr + 12, a[3]);
}
