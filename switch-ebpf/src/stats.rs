//! Per-CPU counters: no atomics, userspace sums the CPUs.

use switch_common::Reason;

use crate::{
    maps::{BACKEND_STATS, REASONS, SERVICE_MISSES, SERVICE_STATS},
    parse::{TCP_ACK, TCP_RST, TCP_SYN},
};

#[inline(always)]
pub fn reason(r: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(r as u32) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn service_packet(id: u32, len: usize) {
    if let Some(s) = SERVICE_STATS.get_ptr_mut(id) {
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len as u64;
        }
    }
}

#[inline(always)]
pub fn service_new_flow(id: u32) {
    if let Some(s) = SERVICE_STATS.get_ptr_mut(id) {
        unsafe { (*s).new_flows += 1 };
    }
}

#[inline(always)]
pub fn service_no_backend(id: u32) {
    if let Some(s) = SERVICE_STATS.get_ptr_mut(id) {
        unsafe { (*s).no_backend += 1 };
    }
}

#[inline(always)]
/// `reply_flags`: the TCP flags of a packet from the backend (0 for a
/// packet to it), for its RST and SYN-ACK counts.
pub fn backend_packet(index: u32, len: usize, reply_flags: u8) {
    if let Some(s) = BACKEND_STATS.get_ptr_mut(index) {
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len as u64;
            if reply_flags & TCP_RST != 0 {
                (*s).rsts += 1;
            }
            if reply_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
                (*s).synacks += 1;
            }
        }
    }
}

#[inline(always)]
pub fn backend_new_flow(index: u32) {
    if let Some(s) = BACKEND_STATS.get_ptr_mut(index) {
        unsafe { (*s).new_flows += 1 };
    }
}

/// A TCP packet that was not a SYN found no pin; `prev`: it went to its
/// slot's previous owner.
#[inline(always)]
pub fn service_miss(id: u32, prev: bool) {
    if let Some(s) = SERVICE_MISSES.get_ptr_mut(id) {
        unsafe {
            if prev {
                (*s).nonsyn_miss_prev += 1;
            } else {
                (*s).nonsyn_miss += 1;
            }
        }
    }
}
