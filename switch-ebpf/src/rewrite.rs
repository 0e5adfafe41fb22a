//! Rewrite: swap an address and port in place and patch the IPv4 header and
//! TCP/UDP checksums incrementally (RFC 1624); XDP has no csum_replace helpers.

use aya_ebpf::programs::XdpContext;
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};
use switch_common::{FAMILY_V4, PROTO_TCP, checksum};

use crate::parse::{self, Packet, fits};

/// Client -> VIP becomes client -> backend. False if the headers were not
/// all inside the frame (nothing was written then).
#[inline(always)]
pub fn destination(ctx: &XdpContext, pkt: &Packet, addr: &[u8; 16], port: u16) -> bool {
    rewrite(ctx, pkt, addr, port, false) != 0
}

/// The same, inlined: for the established path, which makes no calls.
#[inline(always)]
pub fn destination_inline(ctx: &XdpContext, pkt: &Packet, addr: &[u8; 16], port: u16) -> bool {
    rewrite_body(ctx, pkt, addr, port, false) != 0
}

/// Backend -> client becomes VIP -> client (or, fullnat, client -> switch).
#[inline(always)]
pub fn source(ctx: &XdpContext, pkt: &Packet, addr: &[u8; 16], port: u16) -> bool {
    rewrite(ctx, pkt, addr, port, true) != 0
}

// Not inlined: it is used on four paths, and each inlined copy would keep
// its own address copies on the 512-byte BPF stack. Being a subprogram, it
// re-checks header bounds: the verifier does not carry over which headers
// the caller parsed (family and protocol are re-read from the stack here).
// It returns 1 when it rewrote, 0 when a header was not inside the frame.
// (A void subprogram may leave a pointer to its own frame in R0, which the
// verifier refuses: "cannot return stack pointer to the caller".)
#[inline(never)]
fn rewrite(ctx: &XdpContext, pkt: &Packet, addr: &[u8; 16], port: u16, src: bool) -> u32 {
    rewrite_body(ctx, pkt, addr, port, src)
}

/// Word by word, checksums updated in native byte order
/// (`checksum::ne_*`): no byte loads, no byte swaps.
#[inline(always)]
fn rewrite_body(ctx: &XdpContext, pkt: &Packet, addr: &[u8; 16], port: u16, src: bool) -> u32 {
    let new = parse::aligned(addr);
    let port_old = if src { pkt.sport } else { pkt.dport };
    let ports = checksum::ne_diff16(port_old, port);
    if pkt.family == FAMILY_V4 {
        if !fits(ctx, pkt.l3, Ipv4Hdr::LEN) || !l4_fits(ctx, pkt) {
            return 0;
        }
        // Source at byte 12, destination at 16; the checksum at 10.
        let field = pkt.l3 + if src { 12 } else { 16 };
        let old = parse::word_at(field);
        write_word(field, new[0]);
        let diff = checksum::ne_diff(&[old], &[new[0]]);
        let check = pkt.l3 + 10;
        write_half(check, checksum::ne_apply(read_half(check), diff, false));
        l4(ctx, pkt, diff + ports, port, src);
    } else {
        if !fits(ctx, pkt.l3, Ipv6Hdr::LEN) || !l4_fits(ctx, pkt) {
            return 0;
        }
        // Source at byte 8, destination at 24.
        let field = pkt.l3 + if src { 8 } else { 24 };
        let old = [
            parse::word_at(field),
            parse::word_at(field + 4),
            parse::word_at(field + 8),
            parse::word_at(field + 12),
        ];
        write_word(field, new[0]);
        write_word(field + 4, new[1]);
        write_word(field + 8, new[2]);
        write_word(field + 12, new[3]);
        l4(ctx, pkt, checksum::ne_diff(&old, &new) + ports, port, src);
    }
    1
}

/// A 32-bit store into the frame (see `parse::word_at` on alignment).
#[inline(always)]
pub fn write_word(ptr: usize, v: u32) {
    // SAFETY: the caller checked the bounds.
    unsafe { core::ptr::write_volatile(ptr as *mut u32, v) }
}

#[inline(always)]
pub fn read_half(ptr: usize) -> u16 {
    // SAFETY: the caller checked the bounds; 2-byte aligned header fields.
    unsafe { core::ptr::read_volatile(ptr as *const u16) }
}

#[inline(always)]
pub fn write_half(ptr: usize, v: u16) {
    // SAFETY: as for read_half.
    unsafe { core::ptr::write_volatile(ptr as *mut u16, v) }
}

#[inline(always)]
fn l4_fits(ctx: &XdpContext, pkt: &Packet) -> bool {
    let size = if pkt.proto == PROTO_TCP {
        TcpHdr::LEN
    } else {
        UdpHdr::LEN
    };
    fits(ctx, pkt.l4, size)
}

/// Patch the port and the L4 checksum (whose pseudo-header covers the
/// address) with `diff`, the changes' sum.
#[inline(always)]
fn l4(ctx: &XdpContext, pkt: &Packet, diff: u64, port: u16, src: bool) {
    // Ports at bytes 0 and 2 of either header; the checksum at 16 (TCP)
    // or 6 (UDP).
    let port_at = pkt.l4 + if src { 0 } else { 2 };
    if pkt.proto == PROTO_TCP {
        if !fits(ctx, pkt.l4, TcpHdr::LEN) {
            return;
        }
        let check = pkt.l4 + 16;
        write_half(check, checksum::ne_apply(read_half(check), diff, false));
        write_half(port_at, port);
    } else {
        if !fits(ctx, pkt.l4, UdpHdr::LEN) {
            return;
        }
        let check = pkt.l4 + 6;
        write_half(check, checksum::ne_apply(read_half(check), diff, true));
        write_half(port_at, port);
    }
}

/// Decrement the TTL / hop limit of a packet we route (the kernel would).
#[inline(always)]
pub fn decrement_ttl(ctx: &XdpContext, pkt: &Packet) {
    unsafe {
        if pkt.family == FAMILY_V4 {
            if !fits(ctx, pkt.l3, Ipv4Hdr::LEN) {
                return;
            }
            let ip = pkt.l3 as *mut Ipv4Hdr;
            // TTL shares a 16-bit checksum word with the protocol byte.
            let old = [(*ip).ttl, (*ip).proto];
            let new = [old[0].wrapping_sub(1), old[1]];
            (*ip).ttl = new[0];
            (*ip).check =
                checksum::replace(u16::from_be_bytes((*ip).check), &old, &new).to_be_bytes();
        } else {
            if !fits(ctx, pkt.l3, Ipv6Hdr::LEN) {
                return;
            }
            let ip = pkt.l3 as *mut Ipv6Hdr;
            (*ip).hop_limit = (*ip).hop_limit.wrapping_sub(1);
        }
    }
}
