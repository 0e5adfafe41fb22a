//! Every host follows etcd: a snapshot, then the watch; each service record seen is adopted into the maps and cached.

use super::*;

pub(super) async fn sync_loop(shared: SharedRef, seed_services: Vec<ServiceConfig>) {
    loop {
        if let Err(e) = sync_once(&shared, &seed_services).await {
            let _ = with(&shared, |s| {
                // The cause when it is TLS, the password or permissions.
                let text = format!("{e:#}");
                let why = super::super::store::cause(&s.fleet.cfg, &text)
                    .map(|c| format!("{c}; forwarding goes on with the last applied state"))
                    .unwrap_or(text);
                if s.fleet.etcd_error.as_deref() != Some(why.as_str()) {
                    tracing::warn!("fleet: {why}");
                }
                s.fleet.etcd_error = Some(why);
                set_reachable(s, false)
            });
        }
        if with(&shared, |s| s.fleet.refused.is_some()).unwrap_or(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One connection's life: the seed check, the configured services
/// seeded into an empty fleet, a snapshot, then the watch until it ends.
/// One piece: each step needs the store and revision of the one before.
pub(super) async fn sync_once(shared: &SharedRef, seed_services: &[ServiceConfig]) -> Result<()> {
    let (cfg, fp) = with(shared, |s| {
        let f = &*s.fleet;
        (f.cfg.clone(), f.fingerprint.clone())
    })?;
    let store = Store::connect(&cfg).await?;
    let identity = with(shared, |s| s.fleet.identity.clone())?;
    let checked = match store.check_seed(&fp).await {
        Ok(()) => store.check_host(&cfg.host, &identity).await,
        Err(e) => Err(e),
    };
    if let Err(e) = checked {
        if e.to_string().contains("refuses to join") {
            tracing::error!("fleet: {e}");
            with(shared, |s| s.fleet.refused = Some(e.to_string()))?;
        }
        return Err(e);
    }
    if !seed_services.is_empty() {
        let services = seed_services.to_vec();
        let records = blocking(
            shared,
            move |s| -> Result<BTreeMap<String, ServiceRecord>> {
                let mut trial = s.ctl.clone();
                trial.handle(
                    &mut NoMaps,
                    &Command::Apply {
                        services: services.clone(),
                    },
                    now_ms(),
                )?;
                Ok(services
                    .iter()
                    .filter_map(|svc| trial.record_of(&svc.name).map(|r| (svc.name.clone(), r)))
                    .collect())
            },
        )
        .await??;
        if store.seed_services(&records).await? {
            tracing::info!(
                "fleet: wrote the config's {} service(s) to etcd (first host)",
                records.len()
            );
        }
    }
    let snap = store.snapshot().await?;
    let from = snap.revision + 1;
    let st = store.clone();
    blocking(shared, move |s| adopt_snapshot(s, snap, st)).await?;
    let mut client = store.client();
    let mut stream = client
        .watch(
            store.keys.prefix.clone() + "/",
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        )
        .await
        .map_err(|e| anyhow!("watch: {e}"))?;
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                // The heartbeat noticed etcd is gone: start over when back.
                if !with(shared, |s| s.fleet.reachable)? {
                    return Err(anyhow!("etcd lost"));
                }
                continue;
            }
        };
        let resp = msg
            .map_err(|e| anyhow!("watch: {e}"))?
            .ok_or_else(|| anyhow!("watch ended"))?;
        if resp.canceled() {
            return Err(anyhow!("watch canceled: {}", resp.cancel_reason()));
        }
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let events: Vec<(bool, String, Vec<u8>, i64)> = resp
            .events()
            .iter()
            .filter_map(|e| {
                let kv = e.kv()?;
                let put = e.event_type() == EventType::Put;
                // Only a host key on a lease is a live host (and a voter).
                if put && kv.lease() == 0 && store.keys.classify(kv.key_str().ok()?)?.0 == "hosts" {
                    return None;
                }
                Some((
                    e.event_type() == EventType::Put,
                    kv.key_str().ok()?.to_string(),
                    kv.value().to_vec(),
                    kv.mod_revision(),
                ))
            })
            .collect();
        blocking(shared, move |s| apply_events(s, events, rev)).await?;
    }
}

pub(super) fn adopt_snapshot(s: &mut Parts<'_>, snap: Snapshot, store: Store) {
    let host = {
        let f = &mut *s.fleet;
        f.store = Some(store);
        f.hosts = snap.hosts;
        f.verdict = snap.health;
        f.health_revision = snap.health_revision;
        f.leader = snap.leader.as_ref().map(|(h, _)| h.clone());
        f.leader_token = snap.leader.as_ref().map(|(_, t)| *t);
        if f.leading.is_some() && snap.leader.as_ref().map(|l| l.1) != f.leading {
            f.leading = None;
        }
        if f.leading.is_none() {
            f.ledger = snap.ledger.unwrap_or_default();
        }
        f.cfg.host.clone()
    };
    set_reachable(s, true);
    s.fleet.etcd_error = None;
    let fh = s.fleet.fleet_health();
    if let Err(e) = s.ctl.set_fleet_health(&mut *s.dp, fh) {
        tracing::warn!("fleet: health: {e:#}");
    }
    // A service whose record cannot be read is not gone: it keeps its last
    // good state.
    let gone: Vec<String> = s
        .ctl
        .services
        .keys()
        .filter(|n| !snap.services.contains_key(*n) && !snap.rejected.contains_key(*n))
        .cloned()
        .collect();
    for name in gone {
        adopt_one(s, &name, None, 0);
    }
    s.fleet
        .rejected
        .retain(|n, _| snap.rejected.contains_key(n));
    for (name, (why, rev)) in snap.rejected {
        s.fleet.reject(&name, why, rev);
    }
    for (name, (rec, rev)) in snap.services {
        adopt_one(s, &name, Some(rec), rev);
    }
    s.fleet.applied = snap.revision;
    s.committed = true;
    tracing::info!(host, revision = snap.revision, "fleet: in sync");
}

pub(super) fn adopt_one(s: &mut Parts<'_>, name: &str, rec: Option<ServiceRecord>, rev: i64) {
    // Validated as a command is: a bad `etcdctl put` changes nothing here.
    if let Some(r) = &rec
        && let Err(e) = crate::engine::controller::replica::check_record(name, r)
    {
        let key = s
            .fleet
            .store
            .as_ref()
            .map(|st| st.keys.service(name))
            .unwrap_or_else(|| name.to_string());
        s.fleet
            .reject(name, format!("{key} (revision {rev}): {e:#}"), rev);
        return;
    }
    match s.ctl.adopt(&mut *s.dp, name, rec.as_ref()) {
        Ok(_) => {
            let f = &mut *s.fleet;
            f.rejected.remove(name);
            match rec {
                Some(_) => f.revisions.insert(name.to_string(), rev),
                None => f.revisions.remove(name),
            };
        }
        // The maps are as they were; the next snapshot tries again.
        Err(e) => tracing::error!("fleet: cannot apply {name} (revision {rev}): {e:#}"),
    }
}

/// The watch's events since the last revision: service records adopted,
/// the health verdict and the ledger taken in. One piece: one match over
/// the kinds of key, with one commit at the end.
pub(super) fn apply_events(s: &mut Parts<'_>, events: Vec<(bool, String, Vec<u8>, i64)>, rev: i64) {
    let Some(keys) = s.fleet.store.as_ref().map(|st| st.keys.clone()) else {
        return;
    };
    let mut services_changed = false;
    for (put, key, value, mod_rev) in events {
        let Some((kind, name)) = keys.classify(&key) else {
            continue;
        };
        match kind {
            "services" => {
                let rec = if put {
                    match serde_json::from_slice::<ServiceRecord>(&value) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            s.fleet
                                .reject(name, format!("{key}: unreadable: {e}"), mod_rev);
                            continue;
                        }
                    }
                } else {
                    None
                };
                adopt_one(s, name, rec, mod_rev);
                services_changed = true;
            }
            "hosts" => {
                let f = &mut *s.fleet;
                if put {
                    if let Ok(r) = serde_json::from_slice(&value) {
                        f.hosts.insert(name.to_string(), r);
                    }
                } else {
                    f.hosts.remove(name);
                }
            }
            "leader" => {
                let f = &mut *s.fleet;
                f.leader = put.then(|| String::from_utf8_lossy(&value).into_owned());
                // The key is only ever created, never updated.
                f.leader_token = put.then_some(mod_rev);
                if !put && f.leading.take().is_some() {
                    tracing::warn!("fleet: our leader key is gone; no longer leading");
                }
                if !put {
                    f.wake.notify_one();
                }
            }
            "health" => {
                let verdict = if put {
                    serde_json::from_slice(&value).unwrap_or_default()
                } else {
                    BTreeMap::new()
                };
                let f = &mut *s.fleet;
                f.verdict = verdict;
                f.health_revision = if put { mod_rev } else { 0 };
                let fh = f.fleet_health();
                if let Err(e) = s.ctl.set_fleet_health(&mut *s.dp, fh) {
                    tracing::warn!("fleet: health: {e:#}");
                }
            }
            "ledger" => {
                let f = &mut *s.fleet;
                if put && f.leading.is_none() {
                    f.ledger = serde_json::from_slice(&value).unwrap_or_default();
                }
            }
            _ => {}
        }
    }
    s.fleet.applied = s.fleet.applied.max(rev);
    if services_changed {
        s.committed = true;
    }
}
