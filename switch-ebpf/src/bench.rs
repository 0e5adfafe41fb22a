//! Reference programs for the benchmark harness, in the same object so they
//! are measured under the same conditions as `switch`:
//! - `bench_floor`: returns XDP_PASS; the cost of BPF_PROG_TEST_RUN itself.
//! - `bench_minimal`: parse Ethernet + IPv4/IPv6 header, one hash lookup,
//!   XDP_TX; the least any L4 balancer must do.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use switch_common::ServiceKey;

use crate::{maps::SERVICES, parse};

#[xdp]
pub fn bench_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_minimal(ctx: XdpContext) -> u32 {
    let mut pkt = core::mem::MaybeUninit::<parse::Packet>::uninit();
    if parse::parse(&ctx, &mut pkt).is_err() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: parse wrote every field.
    let pkt = unsafe { pkt.assume_init_ref() };
    let key = ServiceKey {
        addr: crate::parse::bytes(&pkt.dst),
        port: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
    };
    match unsafe { SERVICES.get(&key) } {
        Some(_) => xdp_action::XDP_TX,
        None => xdp_action::XDP_PASS,
    }
}
