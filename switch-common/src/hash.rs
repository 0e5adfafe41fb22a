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

/// The `REPLY_HOPS` slot of a key (its five words), below `slots` (a
/// power of two).
#[inline(always)]
pub fn reply_hop_slot(key: &[u64; 5], slots: u32) -> u32 {
    let mut h: u64 = 0x243f_6a88_85a3_08d3;
    for w in key {
        h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    (h >> 32) as u32 & (slots - 1)
}

/// The check word of a `REPLY_HOPS` slot (its last word): a hash of the
/// eight before it (key and answer). A copy taken while another CPU wrote
/// the slot mixes two entries and all but never passes.
#[inline(always)]
pub fn reply_hop_check(slot: &[u64; crate::REPLY_HOP_WORDS]) -> u64 {
    let mut h: u64 = 0x1319_8a2e_0370_7344;
    for w in &slot[..crate::REPLY_HOP_WORDS - 1] {
        h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
    }
    h
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

    /// A reader's copy of a slot that another CPU was overwriting holds the
    /// first words of one entry and the rest of another (or its words in any
    /// mix): the check must refuse every such copy.
    #[test]
    fn a_torn_reply_hop_slot_fails_its_check() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let entry = |next: &mut dyn FnMut() -> u64, same_key: bool, base: &[u64; 9]| {
            let mut e = [0u64; 9];
            for w in e.iter_mut().take(8) {
                *w = next();
            }
            if same_key {
                e[..5].copy_from_slice(&base[..5]);
            }
            e[8] = reply_hop_check(&e);
            e
        };
        for _ in 0..2_000 {
            let a = entry(&mut next, false, &[0; 9]);
            // Another answer for the same key (the epoch moved), or another key.
            let same = next() & 1 == 0;
            let b = entry(&mut next, same, &a);
            assert_eq!(reply_hop_check(&a), a[8]);
            for mask in 1..(1u32 << 9) - 1 {
                let torn: [u64; 9] =
                    core::array::from_fn(|i| if mask >> i & 1 == 1 { b[i] } else { a[i] });
                if torn == a || torn == b {
                    continue;
                }
                assert_ne!(reply_hop_check(&torn), torn[8], "a torn copy passed");
            }
        }
    }

    #[test]
    fn reply_hop_slots_are_in_range_and_spread() {
        let mut seen = std::collections::BTreeSet::new();
        for client in 0..4096u64 {
            let slot = reply_hop_slot(&[client << 32 | 0x0a00_0002, 0, 0x0b01_12c6, 0, 4], 1 << 17);
            assert!(slot < 1 << 17);
            seen.insert(slot);
        }
        assert!(
            seen.len() > 4000,
            "{} distinct slots of 4096 keys",
            seen.len()
        );
    }

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
