//! Backends' next hops into the data plane's cache.

use super::*;

/// Writes the next hops of every placed backend from `resolved` (by backend
/// address): valid where resolved on a device we redirect to, cleared
/// elsewhere. `written` remembers what is in the map, so only changes are
/// written. Returns how many entries changed.
pub fn sync_nexthops(
    dp: &mut Dataplane,
    programmer: &crate::engine::programmer::Programmer,
    resolved: &std::collections::BTreeMap<std::net::IpAddr, NextHop>,
    written: &mut std::collections::HashMap<u32, NextHop>,
) -> Result<usize> {
    use crate::engine::maps::Maps as _;
    let mut changed = 0;
    for p in programmer.services.values() {
        for (addr, &index) in p.backends.iter().chain(&p.lingering) {
            let want = resolved
                .get(&addr.ip())
                .filter(|h| dp.devices.contains(&h.ifindex))
                .copied()
                .unwrap_or_default();
            if written.get(&index) != Some(&want) {
                dp.set_nexthop(index, &want)?;
                written.insert(index, want);
                changed += 1;
            }
        }
    }
    Ok(changed)
}
