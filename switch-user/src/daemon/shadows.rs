//! Shadow replays: the ring reader and the targets kept in step with the controller.

use super::*;

/// Hands the controller's running shadows to the engine (targets, limits),
/// and the engine's figures to the controller (for `--after-shadow`).
pub(crate) fn sync_shadows(s: &mut Shared) {
    let mut targets = HashMap::new();
    for (name, spec) in &s.ctl.shadows {
        if s.shadow_started.get(name) != Some(&spec.started_ms) {
            s.shadow.reset(name);
            s.shadow_started.insert(name.clone(), spec.started_ms);
        }
        if !spec.running() {
            continue;
        }
        let (Some(svc), Some(placed)) = (
            s.ctl.services.get(name),
            s.ctl.programmer.services.get(name),
        ) else {
            continue;
        };
        let backends = svc
            .pool(&spec.to)
            .map(|p| p.backends.iter().map(|b| b.addr()).collect())
            .unwrap_or_default();
        targets.insert(
            placed.id,
            crate::adapters::shadow::Target {
                service: name.clone(),
                backends,
                max_sessions: spec.max_sessions,
                max_buffer: spec.max_buffer,
            },
        );
    }
    s.shadow.set_targets(targets);
    let lost = s.dp.shadow_lost().unwrap_or(0);
    let names: Vec<String> = s.ctl.shadows.keys().cloned().collect();
    for name in names {
        if let Some(r) = s.shadow.report(&name, lost) {
            s.ctl.shadow_reports.insert(name, r);
        }
    }
}

/// Reads the data plane's shadow copies as they come and feeds the engine.
pub(super) async fn shadow_reader(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    engine: Arc<crate::adapters::shadow::Engine>,
) {
    // SAFETY: the ring buffer owns its map fd, which stays open (and the
    // same) for as long as the AsyncFd holds it.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
    };
    let Ok(mut fd) = registered else {
        tracing::warn!("cannot poll the shadow ring buffer: shadows will not replay");
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            engine.record(&item);
        }
        guard.clear_ready();
    }
}
