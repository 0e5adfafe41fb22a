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
/// stays 0, and a computed 0 is sent as 0xffff (RFC 768).
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
    fn udp_zero_checksum_stays_zero() {
        assert_eq!(replace_udp(0, &[1, 2], &[3, 4]), 0);
    }
}
