//! The flow hash. The XDP program and the userspace table builder must agree
//! on it bit for bit, so it lives here and uses only u32 arithmetic the
//! verifier accepts (no loops over variable lengths, no division).

use crate::maps::TABLE_SIZE;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// One murmur3 round: mixes word `k` into state `h`.
#[inline(always)]
pub fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// murmur3's finaliser: spreads every input bit over the output.
#[inline(always)]
pub fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn mix_addr(h: u32, a: &[u8; 16]) -> u32 {
    let h = mix(h, u32::from_ne_bytes([a[0], a[1], a[2], a[3]]));
    let h = mix(h, u32::from_ne_bytes([a[4], a[5], a[6], a[7]]));
    let h = mix(h, u32::from_ne_bytes([a[8], a[9], a[10], a[11]]));
    mix(h, u32::from_ne_bytes([a[12], a[13], a[14], a[15]]))
}

/// Hash of a connection (per-connection balancing). Ports are the raw
/// network-order `u16`s as read from the packet.
#[inline(always)]
pub fn connection_hash(seed: u32, src: &[u8; 16], sport: u16, proto: u8) -> u32 {
    // The destination (the VIP) is the same for every flow of a service, so
    // only the client side varies.
    let h = mix_addr(seed, src);
    finish(mix(h, ((sport as u32) << 8) | proto as u32))
}

/// Hash of a client address only (per-client affinity).
#[inline(always)]
pub fn client_hash(seed: u32, src: &[u8; 16]) -> u32 {
    finish(mix_addr(seed ^ 0x5bd1_e995, src))
}

/// Maps a 32-bit hash onto a table slot without division ("fastrange"): the
/// verifier can see the result is below `TABLE_SIZE` from the shift alone.
#[inline(always)]
pub fn slot_of(hash: u32) -> usize {
    ((hash as u64 * TABLE_SIZE as u64) >> 32) as usize
}

/// Identity of a backend for hashing: its address and port, never its index
/// in a map, so two hosts with the same configuration build the same table.
/// Bits in the reply filter (`REPLY_FILTER`): one 8 KiB bitmap.
pub const REPLY_FILTER_BITS: u32 = 1 << 16;
pub const REPLY_FILTER_WORDS: usize = (REPLY_FILTER_BITS / 64) as usize;

/// The reply-filter bit of a source address: a packet whose source's bit is
/// clear comes from no backend, so it skips the reply lookups.
#[inline(always)]
pub fn source_bit(addr: &[u8; 16]) -> u32 {
    finish(mix_addr(0x5bd1_e995, addr)) & (REPLY_FILTER_BITS - 1)
}

pub fn backend_ident(seed: u32, addr: &[u8; 16], port: u16) -> u32 {
    finish(mix(mix_addr(seed ^ 0x2545_f491, addr), port as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_always_in_range() {
        for h in [0u32, 1, u32::MAX, u32::MAX - 1, 0x8000_0000] {
            assert!(slot_of(h) < TABLE_SIZE);
        }
        assert_eq!(slot_of(u32::MAX), TABLE_SIZE - 1);
    }

    #[test]
    fn seed_changes_the_hash() {
        let a = [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_ne!(connection_hash(1, &a, 80, 6), connection_hash(2, &a, 80, 6));
        assert_ne!(connection_hash(1, &a, 80, 6), connection_hash(1, &a, 81, 6));
        assert_ne!(client_hash(1, &a), client_hash(2, &a));
    }
}
