//! The network watch: neighbours, routes, links and rules, and the next-hop caches that follow them.

use super::*;

/// How often backend neighbours are checked (and put back when missing).
// A safety net: `ip monitor` events start a round at once.
pub(super) const NEIGHBOURS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The backend next hops kept resolved (see `neighbours`): by the loop
/// below, at start, and right after every command, before it answers.
pub(super) static NEIGHBOURS: std::sync::LazyLock<Mutex<crate::adapters::neighbours::Neighbours>> =
    std::sync::LazyLock::new(Mutex::default);

/// The next hops' addresses after the last round: what the `ip monitor`
/// watch asks about every neighbour event, without waiting for a round
/// (which holds `NEIGHBOURS` while iproute2 runs).
static VIAS: std::sync::LazyLock<Mutex<BTreeSet<std::net::IpAddr>>> =
    std::sync::LazyLock::new(Mutex::default);

pub(super) fn backend_ips(ctl: &Controller) -> BTreeSet<std::net::IpAddr> {
    ctl.programmer
        .services
        .values()
        .flat_map(|p| p.backends.keys().chain(p.lingering.keys()))
        .map(|a| a.ip())
        .collect()
}

pub(super) fn resolve_neighbours(
    backends: BTreeSet<std::net::IpAddr>,
) -> std::collections::BTreeMap<std::net::IpAddr, switch_common::NextHop> {
    match NEIGHBOURS.lock() {
        Ok(mut n) => {
            n.reconcile(backends);
            if let Ok(mut v) = VIAS.lock() {
                *v = n.hops().values().map(|h| h.via).collect();
            }
            n.resolved()
        }
        Err(_) => Default::default(),
    }
}

/// One neighbour round and the next-hop cache brought up to date.
pub(super) fn refresh_neighbours(shared: &Mutex<Shared>) {
    refresh_neighbours_with(shared, false)
}

pub(super) fn refresh_neighbours_with(shared: &Mutex<Shared>, routes_changed: bool) {
    if routes_changed && let Ok(mut n) = NEIGHBOURS.lock() {
        n.invalidate_routes();
    }
    let Ok(backends) = shared.lock().map(|s| backend_ips(&s.ctl)) else {
        return;
    };
    // Resolving runs iproute2 and may wait a little: not under the lock.
    let resolved = resolve_neighbours(backends);
    if let Ok(mut g) = shared.lock() {
        let s = &mut *g;
        match crate::adapters::dataplane::sync_nexthops(
            &mut s.dp,
            &s.ctl.programmer,
            &resolved,
            &mut s.nexthops,
        ) {
            Ok(0) => {}
            Ok(n) => tracing::debug!("{n} next hop(s) updated"),
            Err(e) => tracing::warn!("next hops: {e:#}"),
        }
    }
}

/// A line of `ip -o monitor` about a neighbour entry (not a route or link).
pub(super) fn is_neighbour_event(line: &str) -> bool {
    const STATES: [&str; 9] = [
        "REACHABLE",
        "STALE",
        "DELAY",
        "PROBE",
        "FAILED",
        "INCOMPLETE",
        "PERMANENT",
        "NOARP",
        "NONE",
    ];
    line.contains(" lladdr ")
        || line
            .split_whitespace()
            .last()
            .is_some_and(|w| STATES.contains(&w))
}

/// Every NEIGHBOURS_EVERY, and at once when the kernel reports a neighbour,
/// route or link change (`ip monitor`), so a backend's new MAC is followed
/// within milliseconds.
///
/// The same watch keeps the replies' route cache honest: every event
/// (any neighbour, route, link or rule) and every round move its epoch on,
/// and routing rules that select by port turn it off. One piece: the
/// `ip monitor` child, its lines and the round timer in one select loop.
pub(super) async fn neighbour_loop(shared: Arc<Mutex<Shared>>) {
    let changed = Arc::new(tokio::sync::Notify::new());
    let notify = changed.clone();
    let dirty = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let routes_dirty = dirty.clone();
    let reply_hops = match shared.lock().map(|s| s.dp.reply_hops()) {
        Ok(Ok(h)) => Some(Arc::new(Mutex::new(h))),
        Ok(Err(e)) => {
            tracing::warn!("replies' route cache: {e:#}");
            None
        }
        Err(_) => None,
    };
    let on_event = reply_hops.clone();
    tokio::spawn(async move {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["-o", "monitor", "neigh", "route", "link", "rule"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        // It dies with the daemon, even with a kill -9.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let Ok(mut child) = cmd.spawn() else {
            tracing::warn!(
                "cannot run `ip monitor`: next hops follow changes every {NEIGHBOURS_EVERY:?}"
            );
            return;
        };
        let Some(out) = child.stdout.take() else {
            return;
        };
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(h) = &on_event {
                advance_reply_hops(h);
            }
            // Route and link events mean the routes are looked up again;
            // a neighbour event matters only for one of our next hops (a
            // busy host sees many about other addresses).
            if is_neighbour_event(&line) {
                let ip = line
                    .split_whitespace()
                    .find_map(|w| w.parse::<std::net::IpAddr>().ok());
                let ours = ip.is_some_and(|ip| VIAS.lock().is_ok_and(|v| v.contains(&ip)));
                if !ours {
                    continue;
                }
            } else {
                routes_dirty.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            notify.notify_one();
        }
    });
    let mut every = tokio::time::interval(NEIGHBOURS_EVERY);
    loop {
        let event = tokio::select! {
            _ = every.tick() => false,
            _ = changed.notified() => {
                // Let a burst of events settle into one round (and at
                // most ten rounds a second, whatever the kernel says).
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                true
            }
        };
        let routes = event && dirty.swap(false, std::sync::atomic::Ordering::Relaxed);
        let s = shared.clone();
        let hops = reply_hops.clone();
        let _ = tokio::task::spawn_blocking(move || {
            refresh_neighbours_with(&s, routes);
            if let Some(h) = hops {
                check_reply_hops(&h);
            }
        })
        .await;
    }
}

pub(super) fn advance_reply_hops(hops: &Mutex<crate::adapters::dataplane::ReplyHops>) {
    if let Ok(mut h) = hops.lock()
        && let Err(e) = h.advance()
    {
        tracing::warn!("replies' route cache: {e:#}");
    }
}

/// A round of the network watch for the replies' route cache: off
/// while a routing rule selects by port (its key has no ports), and moved
/// on in any case, so no answer is older than a round.
pub(super) fn check_reply_hops(hops: &Mutex<crate::adapters::dataplane::ReplyHops>) {
    let by_port = crate::adapters::neighbours::rules_select_by_port();
    if let Ok(mut h) = hops.lock()
        && let Some(by_port) = by_port
        && by_port != h.is_off()
    {
        if by_port {
            tracing::info!(
                "a routing rule selects by port: replies ask the kernel for every packet"
            );
        }
        if let Err(e) = h.set_off(by_port) {
            tracing::warn!("replies' route cache: {e:#}");
        }
    }
    advance_reply_hops(hops);
}

/// One round for a data plane without a daemon (benchmarks, tests): resolve
/// every placed backend in this network namespace and cache its next hop.
pub fn cache_nexthops(
    dp: &mut crate::adapters::dataplane::Dataplane,
    programmer: &crate::engine::programmer::Programmer,
) -> anyhow::Result<usize> {
    let backends: BTreeSet<std::net::IpAddr> = programmer
        .services
        .values()
        .flat_map(|p| p.backends.keys().chain(p.lingering.keys()))
        .map(|a| a.ip())
        .collect();
    let mut n = crate::adapters::neighbours::Neighbours::default();
    n.reconcile(backends);
    crate::adapters::dataplane::sync_nexthops(
        dp,
        programmer,
        &n.resolved(),
        &mut Default::default(),
    )
}
