//! Incremental Internet checksum updates (RFC 1624, eqn. 3:
//! `HC' = ~(~HC + ~m + m')`). XDP has no `bpf_l3_csum_replace`, so the
//! program rewrites checksums with these; host tests check them against a
//! from-scratch computation.

/// One's-complement sum folded to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds `!old + new` for each 16-bit word of two equally long byte arrays.
#[inline(always)]
fn add_diff<const N: usize>(mut sum: u32, old: &[u8; N], new: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        let o = u16::from_be_bytes([old[i], old[i + 1]]);
        let n = u16::from_be_bytes([new[i], new[i + 1]]);
        sum += (!o) as u32 + n as u32;
        i += 2;
    }
    sum
}

/// New checksum (as read big-endian from the header) after the bytes `old`
/// were replaced by `new`. `N` is even.
#[inline(always)]
pub fn replace<const N: usize>(check: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    !fold(add_diff((!check) as u32, old, new))
}

/// The same for a UDP checksum over IPv4, where 0 means "no checksum": it
/// stays 0, and a computed 0 is sent as 0xffff (RFC 768). (The data plane
/// uses `ne_*`; this byte-wise form is what they are tested against.)
#[inline(always)]
pub fn replace_udp<const N: usize>(check: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// Incremental updates in native byte order over 32-bit words, for the data
/// plane (word loads, no byte swaps): the one's-complement sum does not
/// depend on byte order (RFC 1071, 2(B)) as long as the checksum field is
/// read and written in the same native order. `ne_diff` sums `!old + new`
/// over the replaced words; `ne_apply` applies such sums to a checksum
/// field read with `u16::from_ne_bytes`.
#[inline(always)]
pub fn ne_diff<const N: usize>(old: &[u32; N], new: &[u32; N]) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < N {
        sum += (!old[i]) as u64 + new[i] as u64;
        i += 1;
    }
    sum
}

/// `ne_diff` of one 16-bit field (a port).
#[inline(always)]
pub fn ne_diff16(old: u16, new: u16) -> u64 {
    (!old) as u64 + new as u64
}

/// The checksum after the changes summed in `diff` (RFC 1624, eqn. 3). A
/// UDP checksum of 0 means "none" and stays 0; a computed 0 is sent as
/// 0xffff (RFC 768).
#[inline(always)]
pub fn ne_apply(check: u16, diff: u64, udp: bool) -> u16 {
    if udp && check == 0 {
        return 0;
    }
    let mut sum = (!check) as u64 + diff;
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    let c = !fold(sum as u32);
    if udp && c == 0 { 0xffff } else { c }
}

/// Full checksum of `data` (host tests and fixture building).
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [b] = chunks.remainder() {
        sum += (*b as u32) << 8;
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_matches_full_recompute() {
        // A 20-byte IPv4 header with a correct checksum.
        let mut hdr = [
            0x45u8, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 2, 198, 18, 0, 10,
        ];
        let c = checksum(&hdr, 0);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        let old = [hdr[16], hdr[17], hdr[18], hdr[19]];
        let new = [198u8, 19, 1, 11];
        let updated = replace(c, &old, &new);
        hdr[16..20].copy_from_slice(&new);
        hdr[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(updated, checksum(&hdr, 0));
    }

    #[test]
    fn native_word_updates_match_the_big_endian_ones() {
        let mut x = 0x2545_f491_u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let bytes = |v: u64, w: u64| -> [u8; 16] {
                let mut b = [0; 16];
                b[..8].copy_from_slice(&v.to_le_bytes());
                b[8..].copy_from_slice(&w.to_le_bytes());
                b
            };
            let (old, new) = (bytes(next(), next()), bytes(next(), next()));
            let (po, pn) = ((next() as u16).to_be_bytes(), (next() as u16).to_be_bytes());
            let check = next() as u16;
            for udp in [false, true] {
                let want = if udp {
                    replace_udp(replace_udp(check, &old, &new), &po, &pn)
                } else {
                    replace(replace(check, &old, &new), &po, &pn)
                };
                let diff = ne_diff(&crate::hash::words(&old), &crate::hash::words(&new))
                    + ne_diff16(u16::from_ne_bytes(po), u16::from_ne_bytes(pn));
                let got = ne_apply(u16::from_ne_bytes(check.to_be_bytes()), diff, udp);
                // 0x0000 and 0xffff are the same one's-complement number.
                let got = u16::from_be_bytes(got.to_ne_bytes());
                assert!(
                    got == want || (got | want == 0xffff && got & want == 0 && !udp),
                    "{got:#x} != {want:#x}"
                );
            }
        }
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        assert_eq!(replace_udp(0, &[1, 2], &[3, 4]), 0);
    }
}
