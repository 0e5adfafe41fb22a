//! fullnat source ports. A new flow gets a port on the service's switch
//! address towards its backend; the reverse entry in `SNAT` lets the reply
//! find the client again.

use aya_ebpf::bindings::BPF_NOEXIST;
use switch_common::{Service, SnatKey, SnatValue, hash::connection_hash};

use crate::{
    choose::Chosen,
    maps::SNAT,
    parse::{Packet, bytes},
};

/// Source ports come from 1024..32768: below Linux's ephemeral range
/// (32768..61000), so they never collide with the switch host's own
/// connections (health checks, the daemon's clients).
const FIRST_PORT: u32 = 1024;
const PORTS: u32 = 32_768 - FIRST_PORT;
/// Probes before giving up; bounded so the verifier can see the loop ends.
const TRIES: u32 = 8;

// Not inlined, for the same stack reason as forward::send.
#[inline(never)]
pub fn allocate(seed: u32, service: &Service, b: &Chosen, pkt: &Packet) -> Option<u16> {
    let mut key = SnatKey {
        backend: b.addr,
        snat: service.snat_addr,
        backend_port: b.port,
        snat_port: 0,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    let value = SnatValue {
        client: bytes(&pkt.src),
        vip: bytes(&pkt.dst),
        client_port: pkt.sport,
        vip_port: pkt.dport,
        backend: b.index,
    };
    let h = connection_hash(seed ^ 0x6a09_e667, &pkt.src, pkt.sport, pkt.proto);
    for i in 0..TRIES {
        let port = FIRST_PORT + h.wrapping_add(i.wrapping_mul(40_503)) % PORTS;
        key.snat_port = (port as u16).to_be();
        // NOEXIST: a port held by another flow (even a stale one the LRU
        // has not evicted yet) is never taken over.
        if SNAT.insert(&key, &value, BPF_NOEXIST as u64).is_ok() {
            return Some(key.snat_port);
        }
    }
    None
}

/// The client side of a fullnat reply, if this packet is one.
#[inline(always)]
pub fn reply(pkt: &Packet) -> Option<&SnatValue> {
    let key = SnatKey {
        backend: bytes(&pkt.src),
        snat: bytes(&pkt.dst),
        backend_port: pkt.sport,
        snat_port: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    // SAFETY: hash map values stay valid for the program's run (RCU).
    unsafe { SNAT.get(&key) }
}
