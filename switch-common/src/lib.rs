//! Types shared by the XDP program and userspace, and the pure logic both
//! sides (or host tests) need: the flow hash, the selection table builder and
//! incremental checksum arithmetic.
//!
//! Every map key and value here is `#[repr(C)]` with explicit padding so the
//! kernel and userspace agree on the bytes.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod checksum;
pub mod hash;
pub mod maps;
#[cfg(feature = "std")]
pub mod table;

pub use maps::*;
