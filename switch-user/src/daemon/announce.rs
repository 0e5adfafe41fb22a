//! Which VIPs BIRD announces, kept in step with state and health.

use super::*;

/// The VIPs this host should announce now, or why none.
pub(super) fn wanted_vips(s: &Shared) -> (BTreeSet<std::net::IpAddr>, Option<String>) {
    if s.left {
        return (
            BTreeSet::new(),
            Some("this host left (switch fleet leave); `switch fleet join` announces again".into()),
        );
    }
    if let Some(f) = &s.fleet {
        if let Some(why) = &f.refused {
            return (BTreeSet::new(), Some(why.clone()));
        }
        if f.applied == 0 && f.revisions.is_empty() && s.ctl.services.is_empty() {
            return (
                BTreeSet::new(),
                Some("no desired state from etcd yet".into()),
            );
        }
    }
    let unhealthy = s.ctl.unhealthy();
    let mut vips = BTreeSet::new();
    let mut idle = vec![];
    for spec in s.ctl.services.values() {
        let serves = spec.pools.iter().filter(|p| p.weight > 0).any(|p| {
            p.backends
                .iter()
                .any(|b| b.state() == AdminState::Active && !unhealthy.contains(&b.addr()))
        });
        if serves {
            vips.insert(spec.vip.ip());
        } else {
            idle.push(spec.name.clone());
        }
    }
    // A VIP shared by services (ports) stays while any of them serves.
    let why = (!idle.is_empty()).then(|| format!("no healthy backend: {}", idle.join(", ")));
    (vips, why)
}

/// Keeps BIRD's announcements what `wanted_vips` says.
pub(super) fn sync_bgp(shared: &Mutex<Shared>) {
    let Some((bird, vips, why)) = shared.lock().ok().and_then(|s| {
        let (vips, why) = wanted_vips(&s);
        s.bgp.clone().map(|b| (b, vips, why))
    }) else {
        return;
    };
    let Ok(mut bird) = bird.lock() else { return };
    match bird.supervise(&vips) {
        Ok(true) => tracing::warn!(
            "bgp: BIRD had died; started again ({} restarts so far)",
            bird.restarts
        ),
        Ok(false) => {}
        Err(e) => tracing::warn!("bgp: BIRD is dead and cannot be started again: {e:#}"),
    }
    if let Err(e) = bird.announce(&vips) {
        tracing::warn!("bgp: {e:#}");
    }
    // What BIRD really tells its neighbors, not what was asked of it.
    let observed = bird.observe();
    let bird_answering = observed.is_some();
    let sessions = observed.unwrap_or_else(|| bird.unknown_sessions());
    let mut announced: Vec<std::net::IpAddr> = sessions
        .iter()
        .filter(|s| s.state == "Established")
        .flat_map(|s| s.exported.iter().copied())
        .collect();
    announced.sort();
    announced.dedup();
    let not_announced = vips
        .iter()
        .filter_map(|v| {
            crate::model::bgp::why_not_announced(*v, bird_answering, &sessions).map(|w| (*v, w))
        })
        .collect();
    let status = crate::model::bgp::BgpStatus {
        asn: bird.asn(),
        restarts: bird.restarts,
        sessions,
        announced,
        bird_answering,
        not_announced,
        withdrawn: if bird_answering {
            why
        } else {
            Some("unknown: BIRD not answering".into())
        },
    };
    drop(bird);
    if let Ok(mut s) = shared.lock() {
        s.bgp_status = status;
    }
}
