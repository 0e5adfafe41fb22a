//! After start-up the daemon keeps only the capabilities it may still need:
//! CAP_BPF and CAP_PERFMON (BPF objects) and CAP_NET_ADMIN (XDP links,
//! neighbour entries). Map reads and writes go through file descriptors it
//! already holds and need none. Everything else is dropped, from the
//! bounding set too.

use anyhow::{Context, Result};
use caps::{CapSet, Capability, CapsHashSet};

pub const KEPT: [Capability; 3] = [
    Capability::CAP_BPF,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_PERFMON,
];

/// The mask of kept capabilities (as in /proc/PID/status CapEff).
pub fn kept_mask() -> u64 {
    KEPT.iter().fold(0, |m, c| m | c.bitmask())
}

/// With `[bgp]`, also kept: a BIRD the daemon starts again after it died
/// must bind BGP's port 179 (and under `NoNewPrivileges` a child gets no
/// capability its parent lacks).
pub const KEPT_FOR_BGP: [Capability; 1] = [Capability::CAP_NET_BIND_SERVICE];

pub fn drop_all_but_kept() -> Result<()> {
    drop_all_but(&[])
}

/// The same, keeping `extra` too.
pub fn drop_all_but(extra: &[Capability]) -> Result<()> {
    let keep: CapsHashSet = KEPT.into_iter().chain(extra.iter().copied()).collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the
    // effective set is about to lose.
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .with_context(|| format!("dropping {cap} from the bounding set"))?;
        }
    }
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).context("clearing inheritable")?;
    caps::set(None, CapSet::Effective, &keep).context("setting effective")?;
    caps::set(None, CapSet::Permitted, &keep).context("setting permitted")?;
    Ok(())
}
