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

/// An address as the four native-order words the data plane keeps it in
/// (word loads instead of byte loads on BPF).
#[inline(always)]
pub fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

#[inline(always)]
fn mix_addr(h: u32, a: &[u32; 4]) -> u32 {
    mix(mix(mix(mix(h, a[0]), a[1]), a[2]), a[3])
}

/// Hash of a connection (per-connection balancing): the client address in
/// words (`words`), the port the raw network-order `u16` read from the
/// packet.
#[inline(always)]
pub fn connection_hash(seed: u32, src: &[u32; 4], sport: u16, proto: u8) -> u32 {
    // The destination (the VIP) is the same for every flow of a service, so
    // only the client side varies.
    let h = mix_addr(seed, src);
    finish(mix(h, ((sport as u32) << 8) | proto as u32))
}

/// Hash of a client address only (per-client affinity), in words.
#[inline(always)]
pub fn client_hash(seed: u32, src: &[u32; 4]) -> u32 {
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

/// An address's bit in an address filter (`REPLY_FILTER`, `VIP_FILTER`): a
/// packet whose address has a clear bit is not in the set and skips the
/// exact lookups. It runs on nearly every packet, so it is one multiply
/// (Fibonacci hashing of the folded address), not a full hash: a filter
/// needs spread, not secrecy.
#[inline(always)]
pub fn filter_bit(addr: &[u8; 16]) -> u32 {
    filter_bit_w(&words(addr))
}

#[inline(always)]
pub fn filter_bit_w(w: &[u32; 4]) -> u32 {
    let x = w[0] ^ w[1].rotate_left(8) ^ w[2].rotate_left(16) ^ w[3].rotate_left(24);
    x.wrapping_mul(0x9e37_79b1) >> (32 - REPLY_FILTER_BITS.trailing_zeros())
}

pub fn backend_ident(seed: u32, addr: &[u8; 16], port: u16) -> u32 {
    finish(mix(mix_addr(seed ^ 0x2545_f491, &words(addr)), port as u32))
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
    fn filter_bits_are_in_range_and_spread() {
        // 256 neighbouring addresses of one family never share a bit.
        for v6 in [false, true] {
            let mut seen = [false; REPLY_FILTER_BITS as usize];
            for i in 0..=255u8 {
                let mut a = [0u8; 16];
                if v6 {
                    a[..6].copy_from_slice(&[0x20, 0x01, 0, 2, 0, 1]);
                    a[15] = i;
                } else {
                    a[..4].copy_from_slice(&[198, 18, 1, i]);
                }
                let b = filter_bit(&a);
                assert!(b < REPLY_FILTER_BITS);
                assert!(!seen[b as usize], "{a:?} shares a bit");
                seen[b as usize] = true;
            }
        }
    }

    #[test]
    fn seed_changes_the_hash() {
        let a = words(&[198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_ne!(connection_hash(1, &a, 80, 6), connection_hash(2, &a, 80, 6));
        assert_ne!(connection_hash(1, &a, 80, 6), connection_hash(1, &a, 81, 6));
        assert_ne!(client_hash(1, &a), client_hash(2, &a));
    }
}
