//! Rewrite: swap an address and port in place and patch the IPv4 header and
//! TCP/UDP checksums incrementally (RFC 1624); XDP has no csum_replace helpers.

use aya_ebpf::programs::XdpContext;
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};
use switch_common::{FAMILY_V4, PROTO_TCP, checksum};

use crate::parse::{Packet, fits};

/// Client -> VIP becomes client -> backend. False if the headers were not
/// all inside the frame (nothing was written then).
#[inline(always)]
pub fn destination(ctx: &XdpContext, pkt: &Packet, addr: &[u8; 16], port: u16) -> bool {
    rewrite(ctx, pkt, addr, port, false) != 0
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
    let port_old = if src { pkt.sport } else { pkt.dport }.to_ne_bytes();
    let port_new = port.to_ne_bytes();
    if pkt.family == FAMILY_V4 {
        if !fits(ctx, pkt.l3, Ipv4Hdr::LEN) || !l4_fits(ctx, pkt) {
            return 0;
        }
        let ip = pkt.l3 as *mut Ipv4Hdr;
        let new = [addr[0], addr[1], addr[2], addr[3]];
        let old = unsafe {
            let field = if src {
                &mut (*ip).src_addr
            } else {
                &mut (*ip).dst_addr
            };
            let old = *field;
            *field = new;
            (*ip).check =
                checksum::replace(u16::from_be_bytes((*ip).check), &old, &new).to_be_bytes();
            old
        };
        l4(ctx, pkt, &old, &new, &port_old, &port_new, src);
    } else {
        if !fits(ctx, pkt.l3, Ipv6Hdr::LEN) || !l4_fits(ctx, pkt) {
            return 0;
        }
        let ip = pkt.l3 as *mut Ipv6Hdr;
        let old = unsafe {
            let field = if src {
                &mut (*ip).src_addr
            } else {
                &mut (*ip).dst_addr
            };
            let old = *field;
            *field = *addr;
            old
        };
        l4(ctx, pkt, &old, addr, &port_old, &port_new, src);
    }
    1
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

/// Patch the port and the L4 checksum, whose pseudo-header covers the address.
#[inline(always)]
fn l4<const N: usize>(
    ctx: &XdpContext,
    pkt: &Packet,
    addr_old: &[u8; N],
    addr_new: &[u8; N],
    port_old: &[u8; 2],
    port_new: &[u8; 2],
    src: bool,
) {
    unsafe {
        if pkt.proto == PROTO_TCP {
            if !fits(ctx, pkt.l4, TcpHdr::LEN) {
                return;
            }
            let tcp = pkt.l4 as *mut TcpHdr;
            let c = u16::from_be_bytes((*tcp).check);
            let c = checksum::replace(c, addr_old, addr_new);
            let c = checksum::replace(c, port_old, port_new);
            (*tcp).check = c.to_be_bytes();
            if src {
                (*tcp).source = *port_new;
            } else {
                (*tcp).dest = *port_new;
            }
        } else {
            if !fits(ctx, pkt.l4, UdpHdr::LEN) {
                return;
            }
            let udp = pkt.l4 as *mut UdpHdr;
            let c = u16::from_be_bytes((*udp).check);
            let c = checksum::replace_udp(c, addr_old, addr_new);
            let c = checksum::replace_udp(c, port_old, port_new);
            (*udp).check = c.to_be_bytes();
            if src {
                (*udp).src = *port_new;
            } else {
                (*udp).dst = *port_new;
            }
        }
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
