//! Programs for the forwarding-rate benchmark, in the same object:
//! - `packet_gen`: a packet generator for `BPF_PROG_TEST_RUN` in live-frames mode
//!   (the xdp-trafficgen technique). Each run turns the template frame into
//!   the next flow (source port and low source-address bits) and sends it
//!   with XDP_TX. Live frames recycle pages without re-initialising them, so
//!   every varied field and its checksums are written on every run.
//! - `gen_loop` and `gen_bounce`: the same generator for kernels that refuse
//!   live frames, with nothing but attached XDP programs. A few frames
//!   injected into a veth pair circulate in it (`gen_bounce` sends each
//!   back with XDP_TX); on every turn `gen_loop` patches the frame into the
//!   next flow and broadcasts it through a devmap to both the outgoing
//!   interface and the loop again. One copy per turn, no skb, no syscall;
//!   once the allowed count is reached the frames are dropped.
//! - `sink`: counts and drops what arrives (the receiving side).
//! - `bench_redirect`: redirects everything to one device, nothing else: the
//!   forwarding ceiling of the machine.

use aya_ebpf::{
    bindings::{BPF_F_BROADCAST, xdp_action},
    macros::{map, xdp},
    maps::{Array, DevMap, PerCpuArray},
    programs::XdpContext,
};
use switch_common::{FAMILY_V4, GenConfig};

use crate::{maps::DEVICES, parse};

#[map]
pub static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

/// The template's headers, rewritten into every frame: a forwarder that
/// rewrote the last frame in place (the switch, the kernel's NAT) left its
/// changes in the recycled page.
#[map]
pub static GEN_TEMPLATE: Array<[u64; 10]> = Array::with_max_entries(1, 0);

/// `packet_gen`'s flow counter: one word for every CPU. A live-frames run
/// may move to another CPU between batches, and per-CPU counters would then
/// start that CPU's frames again at its own count, repeating flows already
/// sent. One run is one syscall, so the program never runs on two CPUs at
/// once for one generator (each loads its own object): a plain increment
/// counts exactly.
#[map]
pub static GEN_COUNT: Array<u64> = Array::with_max_entries(1, 0);

#[map]
pub static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Ifindex `bench_redirect` sends to.
#[map]
pub static REDIRECT_TARGET: Array<u32> = Array::with_max_entries(1, 0);

/// `gen_loop`'s control words, written by userspace: frames emitted so
/// far, how many may be emitted by now (raised over time to keep a rate),
/// and a stop flag that ends the loop (every circulating frame is dropped).
#[map]
pub static GEN_LOOP: Array<u64> = Array::with_max_entries(3, 0);
pub const LOOP_EMITTED: u32 = 0;
pub const LOOP_ALLOWED: u32 = 1;
pub const LOOP_STOP: u32 = 2;

/// Where `gen_loop` broadcasts each turn: the outgoing interface and the
/// loop's own interface (back round the loop).
#[map]
pub static GEN_OUT: DevMap = DevMap::with_max_entries(2, 0);

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

#[xdp]
pub fn packet_gen(ctx: XdpContext) -> u32 {
    match try_gen(&ctx) {
        Some(v) => v,
        None => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn try_gen(ctx: &XdpContext) -> Option<u32> {
    let count = GEN_COUNT.get_ptr_mut(0)?;
    let n = unsafe {
        let n = core::ptr::read_volatile(count) + 1;
        core::ptr::write_volatile(count, n);
        n
    };
    fill(ctx, n)?;
    Some(xdp_action::XDP_TX)
}

#[xdp]
pub fn gen_loop(ctx: XdpContext) -> u32 {
    match try_loop(&ctx) {
        Some(v) => v,
        None => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn try_loop(ctx: &XdpContext) -> Option<u32> {
    if *GEN_LOOP.get(LOOP_STOP)? != 0 {
        return Some(xdp_action::XDP_DROP);
    }
    let allowed = *GEN_LOOP.get(LOOP_ALLOWED)?;
    let emitted = GEN_LOOP.get_ptr_mut(LOOP_EMITTED)?;
    // A veth with one receive queue runs this program on one CPU at a time
    // (one NAPI instance), so a plain increment counts exactly.
    let n = unsafe { core::ptr::read_volatile(emitted) };
    if n >= allowed {
        // Done for now: the loop empties (userspace injects again for the
        // next slice), so a paused generator costs no CPU.
        return Some(xdp_action::XDP_DROP);
    }
    unsafe { core::ptr::write_volatile(emitted, n + 1) };
    fill(ctx, n + 1)?;
    Some(
        GEN_OUT
            .redirect(0, BPF_F_BROADCAST as u64)
            .unwrap_or(xdp_action::XDP_DROP),
    )
}

/// The loop's other end: every frame straight back.
#[xdp]
pub fn gen_bounce(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Turns the frame into number `n` of the flows `GEN_CONFIG` describes.
#[inline(always)]
fn fill(ctx: &XdpContext, n: u64) -> Option<()> {
    let cfg = GEN_CONFIG.get(0)?;
    let flow = (n % cfg.flows.max(1) as u64) as u32;
    // Flow number -> (source port, low 16 bits of the source address).
    let sport = (1024 + flow % 60_000) as u16;
    let src_low = (flow / 60_000) as u16;
    let start = parse::data(ctx);
    let end = parse::data_end(ctx);
    let template = GEN_TEMPLATE.get(0)?;
    let mut i = 0;
    while i < 10 {
        let at = start + i * 8;
        if i * 8 >= cfg.hdr_len as usize || at + 8 > end {
            break;
        }
        unsafe { core::ptr::write_unaligned(at as *mut u64, template[i]) };
        i += 1;
    }
    let sport_at = start + cfg.sport_off as usize;
    let src_at = start + cfg.src_low_off as usize;
    let l4_csum_at = start + cfg.l4_csum_off as usize;
    // Offsets come from userspace: bound each before use.
    if cfg.sport_off > 200
        || cfg.src_low_off > 200
        || cfg.l4_csum_off > 200
        || cfg.ip_csum_off > 200
    {
        return None;
    }
    if sport_at + 2 > end || src_at + 2 > end || l4_csum_at + 2 > end {
        return None;
    }
    unsafe {
        *(sport_at as *mut [u8; 2]) = sport.to_be_bytes();
        *(src_at as *mut [u8; 2]) = src_low.to_be_bytes();
        // The template has both fields zero: HC' = ~(~HC + m') (RFC 1624).
        let l4 = !fold(cfg.l4_csum_inv as u32 + sport as u32 + src_low as u32);
        *(l4_csum_at as *mut [u8; 2]) = l4.to_be_bytes();
        if cfg.family == FAMILY_V4 {
            let ip_csum_at = start + cfg.ip_csum_off as usize;
            if ip_csum_at + 2 > end {
                return None;
            }
            let ip = !fold(cfg.ip_csum_inv as u32 + src_low as u32);
            *(ip_csum_at as *mut [u8; 2]) = ip.to_be_bytes();
        }
    }
    Some(())
}

#[xdp]
pub fn sink(_ctx: XdpContext) -> u32 {
    if let Some(c) = SINK_COUNT.get_ptr_mut(0) {
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub fn bench_redirect(_ctx: XdpContext) -> u32 {
    let Some(t) = REDIRECT_TARGET.get(0) else {
        return xdp_action::XDP_PASS;
    };
    DEVICES.redirect(*t, 0).unwrap_or(xdp_action::XDP_DROP)
}
