//! (verdict, reason) packed into one u64: a BPF subprogram returning a pair
//! would need a hidden pointer argument, and BPF calls take five at most.

use switch_common::Reason;

#[inline(always)]
pub fn pack(verdict: u32, reason: Reason) -> u64 {
    ((reason as u64) << 32) | verdict as u64
}

#[inline(always)]
pub fn unpack(v: u64) -> (u32, Reason) {
    let code = (v >> 32) as u32;
    let mut reason = Reason::Malformed;
    for r in Reason::ALL {
        if r as u32 == code {
            reason = r;
        }
    }
    (v as u32, reason)
}
