//! The `switch` XDP program: parse -> look up -> choose -> rewrite -> forward.
//!
//! Each step is its own module; `try_switch` below reads as the path of a
//! packet. Everything that is not for a VIP (or a reply from a backend) leaves
//! as `XDP_PASS`, untouched.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod choose;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod rewrite;
#[cfg(target_arch = "bpf")]
mod shadow;
#[cfg(target_arch = "bpf")]
mod snat;
#[cfg(target_arch = "bpf")]
mod stats;
#[cfg(target_arch = "bpf")]
mod verdict;

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
    use switch_common::{
        CONFIG_FULLNAT, CONFIG_NAT, CONFIG_READY, Config, Mode, RealKey, Reason, Service,
        ServiceKey,
    };

    use crate::{
        choose, forward, icmp, maps, parse,
        parse::Packet,
        rewrite, shadow, snat, stats,
        verdict::{pack, unpack},
    };

    #[xdp]
    pub fn switch(ctx: XdpContext) -> u32 {
        let (verdict, reason) = try_switch(&ctx);
        stats::reason(reason);
        verdict
    }

    /// Returns the verdict and why; never fails half-way: a packet is only
    /// rewritten once its backend and route are known.
    fn try_switch(ctx: &XdpContext) -> (u32, Reason) {
        let Some(config) = maps::CONFIG.get(0) else {
            return (xdp_action::XDP_PASS, Reason::NotReady);
        };
        if config.flags & CONFIG_READY == 0 {
            return (xdp_action::XDP_PASS, Reason::NotReady);
        }
        let mut pkt = core::mem::MaybeUninit::<Packet>::uninit();
        if let Err(reason) = parse::parse(ctx, &mut pkt) {
            return (xdp_action::XDP_PASS, reason);
        }
        // SAFETY: parse wrote every field.
        let pkt = unsafe { pkt.assume_init_ref() };
        if pkt.proto == icmp::PROTO_ICMP || pkt.proto == icmp::PROTO_ICMPV6 {
            return unpack(icmp::handle(ctx, pkt));
        }

        if maybe_vip(&pkt.dst) {
            // Established flows first, their whole path in one subprogram.
            let v = established(ctx, config, pkt);
            if v != NOT_ESTABLISHED {
                return unpack(v);
            }
            let service_key = ServiceKey {
                addr: parse::bytes(&pkt.dst),
                port: pkt.dport,
                proto: pkt.proto,
                family: pkt.family,
            };
            // SAFETY: values of hash maps stay valid for the program's run (RCU).
            if let Some(service) = unsafe { maps::SERVICES.get(&service_key) } {
                return unpack(to_vip(ctx, config, service, pkt));
            }
        }
        if !maybe_backend(&pkt.src) {
            return (xdp_action::XDP_PASS, Reason::NotVip);
        }
        unpack(from_backend(ctx, config, pkt))
    }

    /// One bit test instead of a hash lookup for most traffic that is not
    /// for a VIP.
    #[inline(always)]
    fn maybe_vip(dst: &parse::Addr) -> bool {
        let bit = switch_common::hash::filter_bit_w(dst);
        match maps::VIP_FILTER.get(0) {
            // `& 1023` keeps the index provably inside the array.
            Some(f) => f.words[(bit >> 6) as usize & 1023] & (1 << (bit & 63)) != 0,
            None => true,
        }
    }

    /// One bit test instead of two hash lookups for traffic that does not
    /// come from a backend (most of what is not for a VIP).
    #[inline(always)]
    fn maybe_backend(src: &parse::Addr) -> bool {
        let bit = switch_common::hash::filter_bit_w(src);
        match maps::REPLY_FILTER.get(0) {
            // `& 1023` keeps the index provably inside the array.
            Some(f) => f.words[(bit >> 6) as usize & 1023] & (1 << (bit & 63)) != 0,
            None => true,
        }
    }

    /// `established` found no usable pin: the packet takes the new-flow path.
    const NOT_ESTABLISHED: u64 = u64::MAX;

    /// Client -> VIP on a pinned flow, the hot path: pin, service, counters,
    /// rewrite, cached next hop and redirect, all inlined here. Every call
    /// and return costs several nanoseconds (each `ret` goes through the
    /// kernel's return thunk where Spectre/SRSO mitigations are on), so this
    /// path makes none but the map helpers it needs.
    #[inline(never)]
    fn established(ctx: &XdpContext, config: &Config, pkt: &Packet) -> u64 {
        let mut chosen = core::mem::MaybeUninit::uninit();
        let id = choose::established(config, pkt, &mut chosen);
        if id == choose::NO_SERVICE {
            return NOT_ESTABLISHED;
        }
        let Some(service) = maps::SERVICE_BY_ID.get(id) else {
            return NOT_ESTABLISHED;
        };
        // SAFETY: `established` wrote every field when it found one.
        let backend = unsafe { chosen.assume_init_ref() };
        stats::service_packet(service.id, pkt.len);
        if parse::ttl_expires(pkt) {
            return pack(xdp_action::XDP_PASS, Reason::TtlExpired);
        }
        let routed = match Mode::from_u8(service.mode) {
            Some(Mode::Nat) if backend.shadow == 0 => true,
            Some(Mode::Dsr) if backend.shadow == 0 => false,
            // fullnat and shadowed flows: the general path.
            _ => return deliver(ctx, service, pkt, backend),
        };
        stats::backend_packet(backend.index, pkt.len, 0);
        if routed && !rewrite::destination_inline(ctx, pkt, &backend.addr, backend.port) {
            return pack(xdp_action::XDP_PASS, Reason::Malformed);
        }
        match forward::cached(ctx, pkt, backend.index, routed) {
            Some((v, why)) => pack(v, why),
            None => forward_slow(ctx, service.mode, pkt, backend),
        }
    }

    /// Backend -> client: a fullnat or nat reply rewritten back to the VIP.
    // Not inlined: its lookup keys get a frame of their own; try_switch's
    // frame is on the stack for every call below it (512 bytes in all).
    #[inline(never)]
    fn from_backend(ctx: &XdpContext, config: &Config, pkt: &Packet) -> u64 {
        if config.flags & CONFIG_FULLNAT != 0
            && let Some(r) = snat::reply(pkt)
        {
            if parse::ttl_expires(pkt) {
                return pack(xdp_action::XDP_PASS, Reason::TtlExpired);
            }
            stats::backend_packet(r.backend, pkt.len, pkt.tcp_flags);
            if !rewrite::source(ctx, pkt, &r.vip, r.vip_port)
                || !rewrite::destination(ctx, pkt, &r.client, r.client_port)
            {
                return pack(xdp_action::XDP_PASS, Reason::Malformed);
            }
            let (v, why) = forward::reply(
                ctx,
                pkt,
                &parse::aligned(&r.client),
                &parse::aligned(&r.vip),
                None,
            );
            return pack(v, why);
        }
        if config.flags & CONFIG_NAT != 0 {
            let real_key = RealKey {
                addr: parse::bytes(&pkt.src),
                port: pkt.sport,
                proto: pkt.proto,
                family: pkt.family,
            };
            if let Some(real) = unsafe { maps::REALS.get(&real_key) } {
                // Only a connection that came through the VIP gets its
                // replies rewritten: a client talking to the backend's own
                // address (routed through this host) must see them as sent.
                let mut flags = choose::our_reply(ctx, pkt, real);
                if flags == choose::NOT_OURS
                    && config.flags & switch_common::CONFIG_TABLE_REPLIES != 0
                    && choose::table_reply(config, pkt, real)
                {
                    // Another host of the fleet forwarded it (ECMP).
                    flags = 0;
                }
                if flags == choose::NOT_OURS {
                    return pack(xdp_action::XDP_PASS, Reason::ReplyNotOurs);
                }
                if flags & switch_common::FLOW_SHADOW != 0 {
                    shadow::reply(ctx, pkt, &real.vip, real.vip_port);
                }
                if parse::ttl_expires(pkt) {
                    return pack(xdp_action::XDP_PASS, Reason::TtlExpired);
                }
                let vip = forward::Source {
                    addr: real.vip,
                    port: real.vip_port,
                };
                let backend = real.backend;
                let (v, why) = forward::reply(ctx, pkt, &pkt.dst, &pkt.src, Some(&vip));
                if why != Reason::NotVip {
                    stats::backend_packet(backend, pkt.len, pkt.tcp_flags);
                }
                return pack(v, why);
            }
        }
        pack(xdp_action::XDP_PASS, Reason::NotVip)
    }

    /// Client -> VIP, a new flow: choose the backend from the table, then
    /// deliver.
    // Not inlined, like from_backend: the 512-byte stack holds the frames of
    // a whole call chain, and try_switch's frame is in every one of them.
    #[inline(never)]
    fn to_vip(ctx: &XdpContext, config: &Config, service: &Service, pkt: &Packet) -> u64 {
        stats::service_packet(service.id, pkt.len);
        if parse::ttl_expires(pkt) {
            return pack(xdp_action::XDP_PASS, Reason::TtlExpired);
        }
        let mut chosen = core::mem::MaybeUninit::uninit();
        if let Err(reason) = choose::new_flow(config, service, pkt, &mut chosen) {
            stats::service_no_backend(service.id);
            return pack(xdp_action::XDP_DROP, reason);
        }
        // SAFETY: choose::new_flow wrote every field.
        deliver(ctx, service, pkt, unsafe { chosen.assume_init_ref() })
    }

    /// Rewrite by the service's mode and forward to the chosen backend.
    // Not inlined: both the established and the new-flow path end here, and
    // its frame must not add to try_switch's.
    #[inline(never)]
    fn deliver(ctx: &XdpContext, service: &Service, pkt: &Packet, backend: &choose::Chosen) -> u64 {
        stats::backend_packet(backend.index, pkt.len, 0);
        if backend.shadow != 0 {
            // A copy for the daemon's replay, of the packet as the client
            // sent it.
            shadow::segment(ctx, pkt, service.id);
        }
        match Mode::from_u8(service.mode) {
            Some(Mode::Dsr) => {}
            Some(Mode::Fullnat) => {
                if !rewrite::source(ctx, pkt, &service.snat_addr, backend.snat_port)
                    || !rewrite::destination(ctx, pkt, &backend.addr, backend.port)
                {
                    return pack(xdp_action::XDP_PASS, Reason::Malformed);
                }
            }
            _ => {
                if !rewrite::destination(ctx, pkt, &backend.addr, backend.port) {
                    return pack(xdp_action::XDP_PASS, Reason::Malformed);
                }
            }
        }
        forward_slow(ctx, service.mode, pkt, backend)
    }

    /// Forward an already rewritten packet to its backend by the cached next
    /// hop or the kernel's route lookup.
    // Not inlined: the established path calls it only when its next hop is
    // not cached, and deliver's frame must not grow by its locals.
    #[inline(never)]
    fn forward_slow(ctx: &XdpContext, mode: u8, pkt: &Packet, backend: &choose::Chosen) -> u64 {
        let routed = mode != Mode::Dsr as u8;
        let (verdict, reason) = forward::to_backend(ctx, pkt, backend.index, &backend.addr, routed);
        // No neighbour yet. nat: the kernel resolves it and forwards the
        // packet. dsr and fullnat: the kernel cannot (the destination is
        // still the VIP, or the source is our own address and looks
        // martian), so count the drop; the daemon keeps backend neighbours
        // resolved (kernel-managed entries), the client's retransmit gets through.
        if reason == Reason::FibNoNeigh && mode != Mode::Nat as u8 {
            return pack(xdp_action::XDP_DROP, Reason::NoNeigh);
        }
        pack(verdict, reason)
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // The verifier rejects any path that could reach here.
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
