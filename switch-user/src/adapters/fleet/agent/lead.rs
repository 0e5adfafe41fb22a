//! The heartbeat (lease, report, campaign) and, while leading, the leader's round and housekeeping.

use super::*;
use crate::adapters::fleet::Ledger;

pub(super) async fn heartbeat_loop(shared: SharedRef) {
    let mut lease: Option<i64> = None;
    let mut last_keepalive: Option<Instant> = None;
    let mut last_report: Option<Instant> = None;
    let mut every = tokio::time::interval(ROUND);
    let Ok(wake) = with(&shared, |s| s.fleet.wake.clone()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = wake.notified() => {}
        }
        let Ok((store, ttl, refused)) = with(&shared, |s| {
            let f = &*s.fleet;
            (f.store.clone(), f.cfg.lease, f.refused.is_some())
        }) else {
            return;
        };
        if refused {
            return;
        }
        let Some(store) = store else { continue };
        match heartbeat(
            &shared,
            &store,
            ttl,
            &mut lease,
            &mut last_keepalive,
            &mut last_report,
        )
        .await
        {
            Ok(()) => {}
            Err(e) => {
                tracing::debug!("fleet: heartbeat: {e:#}");
                let _ = with(&shared, |s| set_reachable(s, false));
            }
        }
        // Leadership lasts no longer than the lease we could renew.
        if last_keepalive.is_none_or(|t| t.elapsed() > ttl) {
            let _ = with(&shared, |s| {
                if s.fleet.leading.take().is_some() {
                    tracing::warn!("fleet: lease not renewed in time; no longer leading");
                }
            });
        }
    }
}

/// One heartbeat: the lease kept, this host's report, the leader key
/// watched and, when free, campaigned for; leading, the round. One piece:
/// every step is fenced on the lease of the step before.
pub(super) async fn heartbeat(
    shared: &SharedRef,
    store: &Store,
    ttl: Duration,
    lease: &mut Option<i64>,
    last_keepalive: &mut Option<Instant>,
    last_report: &mut Option<Instant>,
) -> Result<()> {
    let id = match *lease {
        Some(id) => id,
        None => {
            let id = store.grant(ttl).await?;
            *lease = Some(id);
            *last_keepalive = Some(Instant::now());
            *last_report = None;
            id
        }
    };
    let mut answered = false;
    if last_keepalive.is_none_or(|t| t.elapsed() >= ttl / 3) {
        if !store.keep_alive(id).await? {
            // Expired (this host was frozen or cut off): a new lease, a new
            // report; leadership is gone with the old one.
            *lease = None;
            with(shared, |s| s.fleet.leading = None)?;
            return Ok(());
        }
        *last_keepalive = Some(Instant::now());
        answered = true;
    }
    if last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
        let r = blocking(shared, |s| report(s)).await?;
        if let Some(r) = r {
            store.publish(&r, id).await?;
            *last_report = Some(Instant::now());
            answered = true;
        }
    }
    if answered {
        with(shared, |s| set_reachable(s, true))?;
    }
    let (leader, leading, token, me) = with(shared, |s| {
        let f = &*s.fleet;
        (
            f.leader.clone(),
            f.leading,
            f.leader_token,
            f.cfg.host.clone(),
        )
    })?;
    let leading = match (leader, leading) {
        (_, Some(t)) => Some(t),
        // Our key outlived a spell without etcd (its lease is the one we
        // just renewed): lead again, fenced on the same key.
        (Some(l), None) if l == me && token.is_some() => {
            tracing::info!("fleet: this host leads the fleet again");
            with(shared, |s| s.fleet.leading = token)?;
            token
        }
        (None, None) => {
            let won = store.campaign(id).await?;
            if let Some(t) = won {
                tracing::info!("fleet: this host leads the fleet");
                with(shared, |s| {
                    let f = &mut *s.fleet;
                    f.leading = Some(t);
                    f.leader = Some(f.cfg.host.clone());
                })?;
            }
            won
        }
        (Some(_), None) => None,
    };
    if let Some(token) = leading {
        lead(shared, store, token).await?;
        housekeeping(shared, store, token).await?;
    }
    Ok(())
}

/// Once a minute while leading: a bounded history. (The fleet never
/// compacts etcd: compaction is cluster-wide, and a shared cluster's other
/// users have their own needs; etcd's `--auto-compaction-*` settings do
/// it, see the README.)
pub(super) async fn housekeeping(shared: &SharedRef, store: &Store, token: i64) -> Result<()> {
    let due = with(shared, |s| {
        s.fleet.leading == Some(token)
            && s.fleet
                .housekeeping
                .is_none_or(|t| t.elapsed() >= HOUSEKEEPING_EVERY)
    })?;
    if !due {
        return Ok(());
    }
    let names = with(shared, |s| {
        s.ctl.services.keys().cloned().collect::<Vec<_>>()
    })?;
    for name in names {
        let n = store.prune_history(&name, HISTORY_KEEP, token).await?;
        if n > 0 {
            tracing::info!("fleet: pruned {n} old history events of {name}");
        }
    }
    with(shared, |s| s.fleet.housekeeping = Some(Instant::now()))?;
    Ok(())
}

/// The leader's round: everything that moves on its own, on a copy of the
/// controller, written in one transaction fenced on our leader key.
pub(super) async fn lead(shared: &SharedRef, store: &Store, token: i64) -> Result<()> {
    let prepared = blocking(shared, move |s| leader_round(s, token)).await?;
    let (change, ledger) = prepared;
    tracing::trace!(
        services = change.services.len(),
        health = change.health.is_some(),
        ledger = change.ledger.is_some(),
        "fleet: leader round"
    );
    if change.is_empty() {
        return Ok(());
    }
    match store.commit(&change).await {
        Ok(_) => {
            if change.ledger.is_some() {
                with(shared, |s| s.fleet.ledger = ledger)?;
            }
            Ok(())
        }
        Err(e) => match e.downcast_ref::<Refused>() {
            Some(Refused::NotLeader) => {
                tracing::warn!("fleet: another host leads now; this one steps down");
                with(shared, |s| s.fleet.leading = None)?;
                Ok(())
            }
            // A command came first: the next round sees it.
            Some(Refused::Conflict(name)) => {
                tracing::debug!("fleet: leader round met a concurrent change of {name}");
                Ok(())
            }
            None => Err(e),
        },
    }
}

/// The leader's round on a copy of the controller: ledger, health verdict,
/// strategy tick, lingering backends, shadows; the change to write, fenced
/// on `token`, and the ledger it carries.
fn leader_round(s: &mut Parts<'_>, token: i64) -> (Change, Ledger) {
    let f = &*s.fleet;
    let now = now_ms();
    let live: Vec<&HostReport> = f.hosts.values().collect();
    let mut ledger = f.ledger.clone();
    let mut ledger_changed = false;
    for r in &live {
        ledger_changed |= ledger.update(r);
    }
    let verdict = super::super::verdicts(&f.verdict, &live, now);
    let health_changed = verdict != f.verdict;
    let mut trial = s.ctl.clone();
    trial.fleet_health = Some(FleetHealth {
        down: verdict
            .iter()
            .filter(|(_, v)| !v.healthy)
            .map(|(a, _)| *a)
            .collect(),
        judged: verdict.keys().copied().collect(),
        reachable: true,
    });
    let signals = super::super::signals(&trial, &ledger.totals(), &live, &verdict);
    if let Err(e) = trial.tick(&mut NoMaps, &signals, now) {
        tracing::warn!("fleet: strategy tick: {e:#}");
    }
    if !trial.lingering.is_empty() {
        let counts = super::super::lingering_counts(&trial, &live);
        let counted = live.iter().map(|r| r.flows_counted_ms).min().unwrap_or(0);
        let _ = trial.settle_lingering(&mut NoMaps, &counts, counted, now);
    }
    let _ = trial.expire_shadows(&mut NoMaps, now);
    let services = s.ctl.changed_records(&trial);
    let base = services
        .keys()
        .map(|n| (n.clone(), f.revisions.get(n).copied().unwrap_or(0)))
        .collect();
    let change = Change {
        services,
        base,
        events: new_events(&s.ctl.history, &trial.history),
        health: health_changed.then_some(verdict),
        ledger: ledger_changed.then(|| ledger.clone()),
        fence: Some(token),
    };
    // A canary's waiting reason is the leader's own view: keep it.
    for (name, st) in &trial.strategies {
        if let (
            crate::engine::strategy::Strategy::Canary(new),
            Some(crate::engine::strategy::Strategy::Canary(old)),
        ) = (st, s.ctl.strategies.get_mut(name))
        {
            old.waiting = new.waiting.clone();
        }
    }
    (change, ledger)
}

pub(super) fn new_events(before: &[Event], after: &[Event]) -> Vec<Event> {
    after[before.len().min(after.len())..].to_vec()
}
