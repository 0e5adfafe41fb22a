//! Shadow: copies of a sampled flow's packets for the daemon, which replays
//! the client's byte stream to the shadow pool and compares the answers
//! with the live ones. Only sampled flows pay for it; a full ring drops the
//! copy (counted), never the packet.

use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_ns, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};
use switch_common::{
    FAMILY_V4, PROTO_TCP, SHADOW_DATA, SHADOW_HEAD, SHADOW_REPLY, SHADOW_SEGMENT, ShadowHeader,
    ShadowReply, ShadowSegment,
};

use crate::{
    maps::{SHADOW_LOST, SHADOW_RING},
    parse::{self, Packet, TCP_FIN, TCP_RST, TCP_SYN},
};

/// Offset (from the frame's start) and length of the packet's payload.
#[inline(always)]
fn payload(ctx: &XdpContext, pkt: &Packet) -> Option<(u32, u32)> {
    let l3 = if pkt.family == FAMILY_V4 {
        Ipv4Hdr::LEN
    } else {
        Ipv6Hdr::LEN
    } as u32;
    let l4 = if pkt.proto == PROTO_TCP {
        if !parse::fits(ctx, pkt.l4, TcpHdr::LEN) {
            return None;
        }
        // Byte 12 holds the data offset in 32-bit words.
        (unsafe { *((pkt.l4 + 12) as *const u8) } >> 4) as u32 * 4
    } else {
        UdpHdr::LEN as u32
    };
    let off = (pkt.l4 - parse::data(ctx)) as u32 + l4;
    let len = (pkt.ip_len as u32).checked_sub(l3 + l4)?;
    Some((off, len))
}

/// Writes a record's header field by field straight into ring memory: a
/// header built on the stack and copied would add 64 bytes to a frame that
/// is part of the 512-byte call chain.
#[inline(always)]
unsafe fn write_header(
    h: *mut ShadowHeader,
    pkt: &Packet,
    kind: u8,
    service: u32,
    len: u32,
    reply_to: Option<(&[u8; 16], u16)>,
) {
    use core::ptr::addr_of_mut;
    unsafe {
        addr_of_mut!((*h).ts_ns).write(bpf_ktime_get_ns());
        match reply_to {
            // Keyed like the client's packets: client, VIP.
            Some((vip, vip_port)) => {
                addr_of_mut!((*h).client).write(parse::bytes(&pkt.dst));
                addr_of_mut!((*h).client_port).write(pkt.dport);
                addr_of_mut!((*h).vip).write(*vip);
                addr_of_mut!((*h).vip_port).write(vip_port);
            }
            None => {
                addr_of_mut!((*h).client).write(parse::bytes(&pkt.src));
                addr_of_mut!((*h).client_port).write(pkt.sport);
                addr_of_mut!((*h).vip).write(parse::bytes(&pkt.dst));
                addr_of_mut!((*h).vip_port).write(pkt.dport);
            }
        }
        addr_of_mut!((*h).seq).write(u32::from_be(pkt.tcp_seq));
        addr_of_mut!((*h).service).write(service);
        addr_of_mut!((*h).len).write(len as u16);
        addr_of_mut!((*h).copied).write(0);
        addr_of_mut!((*h).kind).write(kind);
        addr_of_mut!((*h).family).write(pkt.family);
        addr_of_mut!((*h).proto).write(pkt.proto);
        addr_of_mut!((*h).tcp_flags).write(pkt.tcp_flags);
    }
}

#[inline(always)]
fn lost() {
    if let Some(c) = SHADOW_LOST.get_ptr_mut(0) {
        unsafe { *c += 1 };
    }
}

/// A client -> VIP packet of a sampled flow (before it is rewritten): its
/// sequence number, flags and payload.
// Not inlined: its locals must not add to the caller's frame.
#[inline(never)]
pub fn segment(ctx: &XdpContext, pkt: &Packet, service: u32) -> u32 {
    let Some((off, len)) = payload(ctx, pkt) else {
        return 0;
    };
    // A bare ACK tells the replay nothing: only payload, SYN, FIN and RST
    // are copied.
    if len == 0 && pkt.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 {
        return 0;
    }
    let Some(mut entry) = SHADOW_RING.reserve::<ShadowSegment>(0) else {
        lost();
        return 0;
    };
    let rec = entry.as_mut_ptr();
    unsafe {
        write_header(
            core::ptr::addr_of_mut!((*rec).h),
            pkt,
            SHADOW_SEGMENT,
            service,
            len,
            None,
        );
        if len > 0 {
            // The verifier wants the copy's length provably in
            // 1..=SHADOW_DATA: mask, then add one.
            let n = ((len.min(SHADOW_DATA as u32) - 1) & (SHADOW_DATA as u32 - 1)) + 1;
            let data = core::ptr::addr_of_mut!((*rec).data) as *mut core::ffi::c_void;
            if bpf_xdp_load_bytes(ctx.ctx, off, data, n) == 0 {
                (*rec).h.copied = n as u16;
            }
        }
    }
    entry.submit(0);
    1
}

/// A live backend -> client packet of a sampled flow, seen as it is: when
/// the answer began, how big it is, and its first bytes. `pkt` is the
/// reply; `vip`/`vip_port` what the client connected to.
// Not inlined, like `segment`.
#[inline(never)]
pub fn reply(ctx: &XdpContext, pkt: &Packet, vip: &[u8; 16], vip_port: u16) -> u32 {
    let Some((off, len)) = payload(ctx, pkt) else {
        return 0;
    };
    if len == 0 {
        return 0;
    }
    let Some(mut entry) = SHADOW_RING.reserve::<ShadowReply>(0) else {
        lost();
        return 0;
    };
    let rec = entry.as_mut_ptr();
    unsafe {
        write_header(
            core::ptr::addr_of_mut!((*rec).h),
            pkt,
            SHADOW_REPLY,
            0,
            len,
            Some((vip, vip_port)),
        );
        // A constant length (the verifier is then content): the head when
        // the payload has that much, else nothing.
        if len >= SHADOW_HEAD as u32 {
            let data = core::ptr::addr_of_mut!((*rec).data) as *mut core::ffi::c_void;
            if bpf_xdp_load_bytes(ctx.ctx, off, data, SHADOW_HEAD as u32) == 0 {
                (*rec).h.copied = SHADOW_HEAD as u16;
            }
        }
    }
    entry.submit(0);
    1
}
