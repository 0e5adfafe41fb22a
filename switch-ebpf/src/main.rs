//! The `switch` XDP program: parse -> look up -> choose -> rewrite -> forward.
//!
//! Each step is its own module; `try_switch` below reads as the path of a
//! packet. Everything that is not for a VIP (or a reply from a backend) leaves
//! as `XDP_PASS`, untouched.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod bench;
#[cfg(target_arch = "bpf")]
mod choose;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod rewrite;
#[cfg(target_arch = "bpf")]
mod stats;

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
    use switch_common::{Mode, RealKey, Reason, ServiceKey};

    use crate::{choose, forward, maps, parse, rewrite, stats};

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
        if config.ready == 0 {
            return (xdp_action::XDP_PASS, Reason::NotReady);
        }
        let pkt = match parse::parse(ctx) {
            Ok(p) => p,
            Err(reason) => return (xdp_action::XDP_PASS, reason),
        };

        let service_key = ServiceKey {
            addr: pkt.dst,
            port: pkt.dport,
            proto: pkt.proto,
            family: pkt.family,
        };
        // SAFETY: values of hash maps stay valid for the program's run (RCU).
        if let Some(service) = unsafe { maps::SERVICES.get(&service_key) } {
            let service = *service;
            stats::service_packet(service.id, pkt.len);
            if parse::ttl_expires(&pkt) {
                return (xdp_action::XDP_PASS, Reason::TtlExpired);
            }
            let Some(backend) = choose::backend(config, &service, &pkt) else {
                stats::service_no_backend(service.id);
                return (xdp_action::XDP_DROP, Reason::NoBackend);
            };
            stats::backend_packet(backend.index, pkt.len, false);
            return match Mode::from_u8(service.mode) {
                Some(Mode::Dsr) => forward::dsr(ctx, &pkt, &backend.addr),
                _ => {
                    rewrite::destination(&pkt, &backend.addr, backend.port);
                    forward::routed(ctx, &pkt, Reason::Forwarded)
                }
            };
        }

        let real_key = RealKey {
            addr: pkt.src,
            port: pkt.sport,
            proto: pkt.proto,
            family: pkt.family,
        };
        if let Some(real) = unsafe { maps::REALS.get(&real_key) } {
            let real = *real;
            if parse::ttl_expires(&pkt) {
                return (xdp_action::XDP_PASS, Reason::TtlExpired);
            }
            stats::backend_packet(real.backend, pkt.len, pkt.tcp_flags & parse::TCP_RST != 0);
            rewrite::source(&pkt, &real.vip, real.vip_port);
            return forward::routed(ctx, &pkt, Reason::ReplyForwarded);
        }
        (xdp_action::XDP_PASS, Reason::NotVip)
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
