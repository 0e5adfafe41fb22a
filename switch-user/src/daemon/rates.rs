//! Per-backend packet and connection rates, sampled from the data plane's counters.

use super::*;

/// Per backend index: (packets, new flows) as the counters stood.
pub(super) type Counters = HashMap<u32, (u64, u64)>;

/// Samples every backend's counters once a second and keeps the rates.
pub(super) fn sample_rates(shared: &Mutex<Shared>) {
    let Ok(mut g) = shared.lock() else { return };
    let s = &mut *g;
    let now = std::time::Instant::now();
    let mut sample = HashMap::new();
    for placed in s.ctl.programmer.services.values() {
        for &index in placed.backends.values() {
            if let Ok(st) = s.dp.backend_stats(index) {
                sample.insert(index, (st.packets, st.new_flows));
            }
        }
    }
    if let Some((then, prev)) = &s.last_sample {
        let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
        s.rates = sample
            .iter()
            .map(|(i, (p, n))| {
                let (pp, pn) = prev.get(i).copied().unwrap_or((*p, *n));
                (
                    *i,
                    (
                        p.saturating_sub(pp) as f64 / secs,
                        n.saturating_sub(pn) as f64 / secs,
                    ),
                )
            })
            .collect();
    }
    s.last_sample = Some((now, sample));
}
