//! Health probes: scheduling, and their verdicts applied to the maps.

use super::*;

/// Probes every backend of every service with health checks, each at its
/// service's interval, and feeds the results to the controller.
pub(super) async fn health_loop(shared: Arc<Mutex<Shared>>) {
    let mut due: HashMap<(String, SocketAddr), u64> = HashMap::new();
    let in_flight: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
    // Services whose backends changed state since the last rebuild.
    let dirty: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut every = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        every.tick().await;
        // Table rebuilds block: keep them off the runtime's thread.
        let (s2, d2) = (shared.clone(), dirty.clone());
        let _ = tokio::task::spawn_blocking(move || apply_health(&s2, &d2)).await;
        let targets: Vec<(String, SocketAddr, HealthConfig)> = match shared.lock() {
            Ok(s) => s.ctl.probe_targets(),
            Err(_) => return,
        };
        let now = now_ms();
        for (service, addr, cfg) in targets {
            let interval = cfg.interval.as_millis().max(1) as u64;
            // Spread first probes over the interval, so a thousand backends
            // are not all probed in the same instant.
            let next = due
                .entry((service.clone(), addr))
                .or_insert_with(|| now + spread(&addr, interval));
            if *next > now || !in_flight.lock().is_ok_and(|mut f| f.insert(addr)) {
                continue;
            }
            *next += interval;
            if *next <= now {
                *next = now + interval;
            }
            let (shared, in_flight, dirty) = (shared.clone(), in_flight.clone(), dirty.clone());
            tokio::spawn(async move {
                let result = health::probe(addr, &cfg).await;
                if let Ok(mut g) = shared.lock()
                    && g.ctl.record_health(&service, addr, result, now_ms())
                    && let Ok(mut d) = dirty.lock()
                {
                    d.insert(service);
                }
                if let Ok(mut f) = in_flight.lock() {
                    f.remove(&addr);
                }
            });
        }
    }
}

/// A stable offset in `0..interval` for a backend's first probe.
pub(super) fn spread(addr: &SocketAddr, interval: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    addr.hash(&mut h);
    h.finish() % interval
}

/// One table rebuild per changed service, for all the health changes since
/// the last round (at most every 50 ms).
pub(super) fn apply_health(shared: &Mutex<Shared>, dirty: &Mutex<BTreeSet<String>>) {
    let names: Vec<String> = match dirty.lock() {
        Ok(mut d) => std::mem::take(&mut *d).into_iter().collect(),
        Err(_) => return,
    };
    if names.is_empty() {
        return;
    }
    let Ok(mut g) = shared.lock() else { return };
    let s = &mut *g;
    for name in names {
        if let Err(e) = s.ctl.apply_health(&mut s.dp, &name, now_ms()) {
            tracing::warn!("health changes of {name}: {e:#}");
        }
    }
    let _ = persist(s);
}
