//! Parse: Ethernet -> IPv4/IPv6 -> TCP/UDP, with a bounds check the verifier
//! can see before every read. Anything we do not forward gets a `Reason` and
//! is passed to the kernel untouched.

use core::{mem::MaybeUninit, ptr::addr_of_mut};

use aya_ebpf::programs::XdpContext;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};
use switch_common::{FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Reason};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// An address as four words in wire byte order (an IPv4 address is the
/// first word, the rest zero): loads, hashes and key copies in words.
pub type Addr = [u32; 4];

/// The bytes of an address, for map keys (which hold `[u8; 16]`).
#[inline(always)]
pub fn bytes(a: &Addr) -> [u8; 16] {
    // SAFETY: same size, every bit pattern valid.
    unsafe { core::mem::transmute::<Addr, [u8; 16]>(*a) }
}

/// A parsed packet: header pointers for the rewrite and the flow's 5-tuple
/// (addresses and ports as on the wire).
pub struct Packet {
    pub eth: *mut EthHdr,
    /// Points at the `Ipv4Hdr` or `Ipv6Hdr`, by `family`.
    pub l3: usize,
    /// Points at the `TcpHdr` or `UdpHdr`, by `proto`.
    pub l4: usize,
    pub family: u8,
    pub proto: u8,
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// TCP sequence number (network order), to tell a new connection's SYN
    /// from a retransmitted one.
    pub tcp_seq: u32,
    /// Frame length as the IP header declares it, for the byte counters.
    pub len: usize,
    /// IP total length (IPv4) or payload length + 40 (IPv6), for the route lookup.
    pub ip_len: u16,
}

/// `ctx->data` and `ctx->data_end`, read with volatile loads. In a BPF
/// subprogram LLVM would otherwise pass the two fields as 32-bit arguments
/// and widen them with shifts, and the verifier forbids arithmetic on
/// `data_end` ("pointer arithmetic on pkt_end prohibited").
#[inline(always)]
pub fn data(ctx: &XdpContext) -> usize {
    unsafe { core::ptr::read_volatile(&(*ctx.ctx).data) as usize }
}

#[inline(always)]
pub fn data_end(ctx: &XdpContext) -> usize {
    unsafe { core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize }
}

/// Pointer to a `T` at `offset`, or `None` if it would run past the frame.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = data(ctx);
    let end = data_end(ctx);
    // The verifier needs this exact shape: data + off + size <= data_end.
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Parses the frame into `out`. Not inlined, and writing into the caller's
/// memory rather than returning a `Packet`: the caller's frame is part of
/// every call chain below it, and the BPF stack is 512 bytes for a whole
/// chain. Field by field, into uninitialised memory: whole-struct copies
/// and zeroing become calls to compiler_builtins' byte-at-a-time
/// memcpy/memset on BPF, hundreds of instructions per packet.
#[inline(never)]
pub fn parse(ctx: &XdpContext, out: &mut MaybeUninit<Packet>) -> Result<(), Reason> {
    let p = parse_frame(ctx)?;
    let o = out.as_mut_ptr();
    unsafe {
        addr_of_mut!((*o).eth).write(p.eth);
        addr_of_mut!((*o).l3).write(p.l3);
        addr_of_mut!((*o).l4).write(p.l4);
        addr_of_mut!((*o).family).write(p.family);
        addr_of_mut!((*o).proto).write(p.proto);
        addr_of_mut!((*o).src).write(p.src);
        addr_of_mut!((*o).dst).write(p.dst);
        addr_of_mut!((*o).sport).write(p.sport);
        addr_of_mut!((*o).dport).write(p.dport);
        addr_of_mut!((*o).tcp_flags).write(p.tcp_flags);
        addr_of_mut!((*o).tcp_seq).write(p.tcp_seq);
        addr_of_mut!((*o).len).write(p.len);
        addr_of_mut!((*o).ip_len).write(p.ip_len);
    }
    Ok(())
}

/// An IPv4 address in the 16-byte form maps use (the rest zero), built
/// from words: zeroing a byte array and copying into it becomes a memset
/// call on BPF.
#[inline(always)]
pub fn v4_addr(b: [u8; 4]) -> [u8; 16] {
    bytes(&[u32::from_ne_bytes(b), 0, 0, 0])
}

/// An address field of a map value or `Chosen` as words, in four loads.
/// Every such field sits at a 4-aligned offset of a 4-aligned struct
/// (`Backend::addr`, `Real::vip`, `Service::snat_addr`, `SnatValue`'s
/// `client` and `vip`, ...).
#[inline(always)]
pub fn aligned(a: &[u8; 16]) -> Addr {
    // SAFETY: see above; every bit pattern is a valid `Addr`.
    unsafe { core::ptr::read(a as *const [u8; 16] as *const Addr) }
}

/// A 32-bit word of the frame at `ptr`, in one load. The header fields we
/// read this way sit at 2-byte offsets after the 14-byte Ethernet header:
/// the verifier allows unaligned packet loads (no strict alignment on
/// x86-64 and arm64), as C data planes rely on, where LLVM would otherwise
/// split an unaligned read into four byte loads.
#[inline(always)]
pub fn word_at(ptr: usize) -> u32 {
    // SAFETY: the caller checked the bounds; see above for the alignment.
    unsafe { core::ptr::read_volatile(ptr as *const u32) }
}

/// Four words of the frame at `ptr` (an IPv6 address).
#[inline(always)]
pub fn addr_at(ptr: usize) -> Addr {
    [
        word_at(ptr),
        word_at(ptr + 4),
        word_at(ptr + 8),
        word_at(ptr + 12),
    ]
}

#[inline(always)]
fn parse_frame(ctx: &XdpContext) -> Result<Packet, Reason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Reason::Truncated)?;
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    match ether_type {
        ETH_P_IP => parse_v4(ctx, eth),
        ETH_P_IPV6 => parse_v6(ctx, eth),
        ETH_P_8021Q | ETH_P_8021AD => Err(Reason::Vlan),
        _ => Err(Reason::NotIp),
    }
}

/// Largest frame one XDP buffer holds without xdp.frags (4 KiB page less
/// head- and tailroom, rounded down).
const MAX_FRAME: usize = 3520;

/// True if the frame holds all `len` bytes the IP header declares. (The
/// frame length itself is `data_end - data`, and the verifier forbids
/// arithmetic on `data_end`: compare pointers instead.)
#[inline(always)]
fn holds(ctx: &XdpContext, len: usize) -> bool {
    len <= MAX_FRAME && ptr_at::<u8>(ctx, len - 1).is_some()
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, eth: *mut EthHdr) -> Result<Packet, Reason> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(Reason::Truncated)?;
    let (vihl, proto, frags, tot_len) = unsafe {
        (
            (*ip).vihl,
            (*ip).proto,
            u16::from_be_bytes((*ip).frags),
            u16::from_be_bytes((*ip).tot_len),
        )
    };
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return Err(Reason::Malformed);
    }
    if vihl & 0x0f > 5 {
        return Err(Reason::Ipv4Options);
    }
    if (tot_len as usize) < Ipv4Hdr::LEN {
        return Err(Reason::Malformed);
    }
    let len = EthHdr::LEN + tot_len as usize;
    if !holds(ctx, len) {
        return Err(Reason::Truncated);
    }
    // More-fragments flag or a non-zero offset.
    if frags & 0x3fff != 0 {
        return Err(Reason::Fragment);
    }
    // Source and destination are at bytes 12 and 16 of the header.
    let src = [word_at(ip as usize + 12), 0, 0, 0];
    let dst = [word_at(ip as usize + 16), 0, 0, 0];
    parse_l4(
        ctx,
        eth,
        ip as usize,
        EthHdr::LEN + Ipv4Hdr::LEN,
        FAMILY_V4,
        proto,
        src,
        dst,
        len,
        tot_len,
    )
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, eth: *mut EthHdr) -> Result<Packet, Reason> {
    let ip: *mut Ipv6Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(Reason::Truncated)?;
    let (vcf0, next, payload_len) = unsafe {
        (
            (*ip).vcf[0],
            (*ip).next_hdr,
            u16::from_be_bytes((*ip).payload_len),
        )
    };
    if vcf0 >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let len = EthHdr::LEN + Ipv6Hdr::LEN + payload_len as usize;
    if !holds(ctx, len) {
        return Err(Reason::Truncated);
    }
    match next {
        // Hop-by-hop, routing, fragment, destination options, AH, ESP,
        // mobility, HIP, shim6: the ports are not where we would read them.
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 => return Err(Reason::Ipv6ExtHeader),
        _ => {}
    }
    // Source and destination are at bytes 8 and 24 of the header.
    let (src, dst) = (addr_at(ip as usize + 8), addr_at(ip as usize + 24));
    parse_l4(
        ctx,
        eth,
        ip as usize,
        EthHdr::LEN + Ipv6Hdr::LEN,
        FAMILY_V6,
        next,
        src,
        dst,
        len,
        payload_len.saturating_add(Ipv6Hdr::LEN as u16),
    )
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn parse_l4(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    l3: usize,
    l4_off: usize,
    family: u8,
    proto: u8,
    src: Addr,
    dst: Addr,
    len: usize,
    ip_len: u16,
) -> Result<Packet, Reason> {
    let (l4, sport, dport, tcp_flags, tcp_seq) = match proto {
        PROTO_TCP => {
            let tcp: *mut TcpHdr = ptr_at(ctx, l4_off).ok_or(Reason::Truncated)?;
            // Byte 12 holds the data offset, byte 13 the flags.
            let (doff, flags) = unsafe {
                let raw = tcp as *const u8;
                (*raw.add(12) >> 4, *raw.add(13))
            };
            if doff < 5 {
                return Err(Reason::Malformed);
            }
            let (s, d, seq) = unsafe { ((*tcp).source, (*tcp).dest, (*tcp).seq) };
            (
                tcp as usize,
                u16::from_ne_bytes(s),
                u16::from_ne_bytes(d),
                flags,
                u32::from_ne_bytes(seq),
            )
        }
        PROTO_UDP => {
            let udp: *mut UdpHdr = ptr_at(ctx, l4_off).ok_or(Reason::Truncated)?;
            let (s, d) = unsafe { ((*udp).src, (*udp).dst) };
            (
                udp as usize,
                u16::from_ne_bytes(s),
                u16::from_ne_bytes(d),
                0,
                0,
            )
        }
        // ICMP: `icmp::handle` reads the rest (errors about VIP flows).
        PROTO_ICMP | PROTO_ICMPV6 => {
            let icmp: *mut [u8; 8] = ptr_at(ctx, l4_off).ok_or(Reason::Truncated)?;
            (icmp as usize, 0, 0, 0, 0)
        }
        _ => return Err(Reason::NotVip),
    };
    Ok(Packet {
        eth,
        l3,
        l4,
        family,
        proto,
        src,
        dst,
        sport,
        dport,
        tcp_flags,
        tcp_seq,
        len,
        ip_len,
    })
}

/// True if `size` bytes at `ptr` lie inside the frame. Subprograms re-check
/// headers with it: the verifier does not carry over which headers the
/// caller parsed (family and protocol are re-read from the stack there).
#[inline(always)]
pub fn fits(ctx: &XdpContext, ptr: usize, size: usize) -> bool {
    ptr + size <= data_end(ctx)
}

/// True if the IP header of `pkt`'s family lies inside the frame.
#[inline(always)]
pub fn l3_fits(ctx: &XdpContext, pkt: &Packet) -> bool {
    let size = if pkt.family == FAMILY_V4 {
        Ipv4Hdr::LEN
    } else {
        Ipv6Hdr::LEN
    };
    fits(ctx, pkt.l3, size)
}

/// True when forwarding would take the TTL / hop limit to zero.
#[inline(always)]
pub fn ttl_expires(pkt: &Packet) -> bool {
    let ttl = if pkt.family == FAMILY_V4 {
        unsafe { (*(pkt.l3 as *const Ipv4Hdr)).ttl }
    } else {
        unsafe { (*(pkt.l3 as *const Ipv6Hdr)).hop_limit }
    };
    ttl <= 1
}
