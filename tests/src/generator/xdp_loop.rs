//! Frames circulating in a veth pair of XDP programs: for kernels that
//! refuse live frames but attach XDP (which `switch` needs anyway).
//!
//! ```text
//!   inject (a few frames, AF_PACKET) -> l0 [gen_bounce: XDP_TX] <-> l1 [gen_loop]
//!                                                                      |  each turn: next flow,
//!                                                                      v  broadcast to out + l1
//!                                                                     out (towards the forwarder)
//! ```
//!
//! `gen_loop` emits while `emitted < allowed` and drops the frames after;
//! `send` raises `allowed`, injects a few frames and waits for the count, so
//! counts and rates are kept by the same loop as the other paths, and a
//! paused generator costs nothing. The pair is removed on drop.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{Flows, Sender, sendmmsg::Sendmmsg};
use crate::reference::Reference;

/// `switch-ebpf/src/generator.rs`'s `LOOP_*` words.
const EMITTED: u32 = 0;
const ALLOWED: u32 = 1;
const STOP: u32 = 2;
/// Frames put in circulation: enough to fill NAPI batches, fewer than a
/// veth ring's 256 slots.
const CIRCULATING: u32 = 128;

pub struct XdpLoop {
    r: Reference,
    l0: String,
    inject: Sendmmsg,
    allowed: u64,
}

/// `ip ARGS` in this thread's network namespace (a child forked from this
/// thread lives in it).
fn ip(args: &str) -> Result<()> {
    crate::sh(&format!("ip {args}")).map(|_| ())
}

impl XdpLoop {
    pub fn open(out: u32, flows: &Flows) -> Result<XdpLoop> {
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::SeqCst) % 100
        );
        let (l0, l1) = (format!("sgl{tag}a"), format!("sgl{tag}b"));
        let mtu = (flows.frame.len() - 14).max(1500);
        ip(&format!(
            "link add {l0} mtu {mtu} type veth peer name {l1} mtu {mtu} && ip link set {l0} up && ip link set {l1} up"
        ))?;
        // From here on the pair is removed on drop, even if the rest fails.
        let opened = (|| -> Result<(Reference, Sendmmsg)> {
            let mut r = Reference::load()?;
            r.set_gen_config(&flows.cfg)?;
            r.set_gen_template(&flows.frame[..flows.cfg.hdr_len as usize])?;
            r.set_loop_targets(out, switch_user::dataplane::ifindex(&l1)?)?;
            r.attach("gen_bounce", &l0)?;
            r.attach("gen_loop", &l1)?;
            let inject = Sendmmsg::open(switch_user::dataplane::ifindex(&l0)?, flows)?;
            Ok((r, inject))
        })();
        match opened {
            Ok((r, inject)) => Ok(XdpLoop {
                r,
                l0,
                inject,
                allowed: 0,
            }),
            Err(e) => {
                let _ = ip(&format!("link del {l0}"));
                Err(e)
            }
        }
    }
}

impl Sender for XdpLoop {
    // The loop numbers its own frames (`emitted`), from the probe on, so
    // `first` is not needed.
    fn send(&mut self, _first: u64, count: u32) -> Result<()> {
        self.allowed += count as u64;
        self.r.set_loop_word(ALLOWED, self.allowed)?;
        let mut last = (self.r.loop_word(EMITTED)?, Instant::now());
        let mut refills = 0;
        let mut inject = true;
        loop {
            if inject {
                let left = self.allowed.saturating_sub(last.0);
                self.inject.send(0, left.min(CIRCULATING as u64) as u32)?;
                inject = false;
            }
            let emitted = self.r.loop_word(EMITTED)?;
            if emitted >= self.allowed {
                return Ok(());
            }
            if emitted != last.0 {
                last = (emitted, Instant::now());
            } else if last.1.elapsed() > Duration::from_millis(200) {
                // Frames lost from the loop (a full ring): put more in.
                if refills == 5 {
                    bail!(
                        "the XDP loop stopped emitting ({emitted} of {} frames)",
                        self.allowed
                    );
                }
                refills += 1;
                inject = true;
                last.1 = Instant::now();
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

impl Drop for XdpLoop {
    fn drop(&mut self) {
        let _ = self.r.set_loop_word(STOP, 1);
        std::thread::sleep(Duration::from_millis(2));
        let _ = ip(&format!("link del {}", self.l0));
    }
}
