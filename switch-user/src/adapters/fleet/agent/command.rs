//! A command on any host: validated on a copy, written to etcd conditioned on the revisions it saw, answered once applied here; and a clean stop's resignation.

use super::*;

/// A state-changing command in fleet mode, from `actor`: the events it
/// records in etcd carry them, and so does its refusal.
pub(crate) async fn command(shared: &SharedRef, cmd: Command, actor: Actor) -> Response {
    match run_command(shared, cmd.clone(), &actor).await {
        Ok(r) => r,
        Err(e) => {
            if !matches!(cmd, Command::History { .. }) {
                let mut refused = Event::refused(now_ms(), &cmd, &actor, &format!("{e:#}"));
                if !with(shared, |s| s.ctl.services.contains_key(&refused.service)).unwrap_or(false)
                {
                    refused.service = "-".into();
                }
                audit(shared, vec![refused]).await;
            }
            Response::failed(&e)
        }
    }
}

/// Writes events (refusals: nothing else changes) into the fleet's
/// history, when etcd can be reached; they are the audit trail, not state.
pub(crate) async fn audit(shared: &SharedRef, events: Vec<Event>) {
    let Ok(Some(store)) = with(shared, |s| {
        s.fleet.reachable.then(|| s.fleet.store.clone()).flatten()
    }) else {
        return;
    };
    let change = Change {
        events,
        ..Default::default()
    };
    if let Err(e) = store.commit(&change).await {
        tracing::warn!("fleet history: {e:#}");
    }
}

pub(super) async fn run_command(
    shared: &SharedRef,
    cmd: Command,
    actor: &Actor,
) -> Result<Response> {
    if let Command::History { service } = &cmd {
        let (store, known) = with(shared, |s| {
            (s.fleet.store.clone(), s.ctl.service(service).map(|_| ()))
        })?;
        // `-`: refusals that named no service (or an unknown one).
        if service != "-" {
            known?;
        }
        let store =
            store.ok_or_else(|| anyhow!("etcd has not been reached yet: no fleet history"))?;
        return Ok(Response {
            history: Some(store.history(service).await?),
            ..Response::ok()
        });
    }
    let actor = actor.clone();
    let (store, change) = blocking(shared, move |s| -> Result<(Store, Change)> {
        let f = &*s.fleet;
        if let Some(why) = &f.refused {
            anyhow::bail!("{why}");
        }
        let store = match (&f.store, f.reachable) {
            (Some(st), true) => st.clone(),
            _ => {
                return Err(crate::model::error::Refusal::unavailable(
                    "etcd is unreachable: state changes are refused until it is back; forwarding goes on with the last applied state",
                )
                .into());
            }
        };
        let mut trial = s.ctl.clone();
        // A refusal is recorded by `command` (the trial is thrown away).
        trial.handle_as(&mut NoMaps, &cmd, now_ms(), &actor)?;
        let f = &*s.fleet;
        let services = s.ctl.changed_records(&trial);
        for (name, r) in &services {
            if r.as_ref().map(|r| r.spec.mode) == Some(crate::model::config::ForwardMode::Fullnat) {
                anyhow::bail!("service {name:?}: {}", crate::model::config::FULLNAT_IN_FLEET);
            }
        }
        let base = services
            .keys()
            .map(|n| (n.clone(), f.revisions.get(n).copied().unwrap_or(0)))
            .collect();
        Ok((
            store,
            Change {
                services,
                base,
                events: new_events(&s.ctl.history, &trial.history),
                ..Default::default()
            },
        ))
    })
    .await??;
    if change.is_empty() {
        return Ok(Response::ok());
    }
    let rev = store.commit(&change).await?;
    // Answer once this host forwards with it (the others follow within
    // their watch's latency).
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        if with(shared, |s| s.fleet.applied >= rev)? {
            return Ok(Response::ok());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(Response::err(format!(
        "written to etcd (revision {rev}) but not yet applied on this host; see `switch status`"
    )))
}

/// Steps down on a clean stop, so another host leads at once.
pub(crate) async fn resign(shared: &SharedRef) {
    let Ok((store, token)) = with(shared, |s| (s.fleet.store.clone(), s.fleet.leading)) else {
        return;
    };
    if let (Some(store), Some(t)) = (store, token) {
        let _ = tokio::time::timeout(Duration::from_secs(1), store.resign(t)).await;
    }
}
