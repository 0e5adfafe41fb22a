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
    let reason = if code < switch_common::REASON_COUNT {
        // SAFETY: `Reason` is repr(u32) with the values 0..REASON_COUNT.
        unsafe { core::mem::transmute::<u32, Reason>(code) }
    } else {
        Reason::Malformed
    };
    (v as u32, reason)
}
