//! The fleet inside the daemon: three loops and the command path.
//!
//! - `sync_loop`: snapshot, then watch; every service record seen is adopted
//!   into the maps (`Controller::adopt`) and cached in `state.json`.
//! - `heartbeat_loop`: the lease, this host's report once a second, the
//!   campaign for leadership, and — while leading — the leader's round:
//!   strategies, lingering backends, shadows, health verdict, ledger, all
//!   computed on a copy of the controller and written in one fenced
//!   transaction.
//! - `command`: a CLI command on any host, validated on a copy and written
//!   to etcd conditioned on the revisions it saw; it answers once this host
//!   has applied it.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};
use etcd_client::{EventType, WatchOptions};

use super::{
    HostReport, Ledger, Verdict,
    store::{Change, Refused, Snapshot, Store},
};
use crate::{
    api::{Command, Event, Response},
    config::{FleetConfig, ServiceConfig},
    daemon::{Shared, now_ms, persist, sync_shadows},
    replica::{FleetHealth, NoMaps, ServiceRecord},
};

/// How often a host publishes its report.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// The leader's round (strategy ticks) and the heartbeat's pace.
const ROUND: Duration = Duration::from_millis(250);
/// The leader's housekeeping: history kept per service, etcd revisions kept.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);
const HISTORY_KEEP: usize = 10_000;
const REVISIONS_KEEP: i64 = 10_000;

/// What this host knows of the fleet.
pub struct FleetState {
    pub cfg: FleetConfig,
    pub fingerprint: String,
    pub epoch: String,
    pub store: Option<Store>,
    /// Each service's record revision as adopted here.
    pub revisions: BTreeMap<String, i64>,
    /// The etcd revision applied here.
    pub applied: i64,
    pub reachable: bool,
    /// Set when this host may not join (another seed).
    pub refused: Option<String>,
    pub leader: Option<String>,
    /// The leader key's create revision (its holder's fencing token).
    pub leader_token: Option<i64>,
    /// Our leader key's create revision while we lead (the fencing token).
    pub leading: Option<i64>,
    /// Live hosts' latest reports (their keys die with their leases).
    pub hosts: BTreeMap<String, HostReport>,
    pub verdict: BTreeMap<SocketAddr, Verdict>,
    /// The revision of the verdict applied here: with the services'
    /// revisions, what this host's tables are built from.
    pub health_revision: i64,
    pub ledger: Ledger,
    /// When this host, leading, last pruned the history and compacted etcd.
    pub housekeeping: Option<Instant>,
    /// Wakes the heartbeat at once when the leader key goes (a campaign
    /// should not wait for the next round).
    pub wake: Arc<tokio::sync::Notify>,
}

impl FleetState {
    pub fn new(cfg: FleetConfig, fingerprint: String, epoch: String) -> Self {
        FleetState {
            cfg,
            fingerprint,
            epoch,
            store: None,
            revisions: BTreeMap::new(),
            applied: 0,
            reachable: false,
            refused: None,
            leader: None,
            leader_token: None,
            leading: None,
            hosts: BTreeMap::new(),
            verdict: BTreeMap::new(),
            health_revision: 0,
            ledger: Ledger::default(),
            housekeeping: None,
            wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn fleet_health(&self) -> FleetHealth {
        FleetHealth {
            down: self
                .verdict
                .iter()
                .filter(|(_, v)| !v.healthy)
                .map(|(a, _)| *a)
                .collect(),
            judged: self.verdict.keys().copied().collect(),
            reachable: self.reachable,
        }
    }
}

type SharedRef = Arc<Mutex<Shared>>;

fn with<T>(shared: &SharedRef, f: impl FnOnce(&mut Shared) -> T) -> Result<T> {
    let mut g = shared.lock().map_err(|_| anyhow!("state lock poisoned"))?;
    Ok(f(&mut g))
}

async fn blocking<T: Send + 'static>(
    shared: &SharedRef,
    f: impl FnOnce(&mut Shared) -> T + Send + 'static,
) -> Result<T> {
    let s = shared.clone();
    tokio::task::spawn_blocking(move || with(&s, f)).await?
}

/// Marks etcd reachable or not; cut off, local probes may take backends out.
fn set_reachable(s: &mut Shared, reachable: bool) {
    let Some(f) = s.fleet.as_mut() else { return };
    if f.reachable == reachable {
        return;
    }
    f.reachable = reachable;
    if !reachable {
        tracing::warn!("fleet: etcd unreachable; forwarding on the last applied state");
        f.leading = None;
    } else {
        tracing::info!("fleet: etcd reachable");
    }
    let fh = f.fleet_health();
    if let Err(e) = s.ctl.set_fleet_health(&mut s.dp, fh) {
        tracing::warn!("fleet: health: {e:#}");
    }
}

pub(crate) fn start(shared: SharedRef, seed_services: Vec<ServiceConfig>) {
    tokio::spawn(sync_loop(shared.clone(), seed_services));
    tokio::spawn(heartbeat_loop(shared));
}

async fn sync_loop(shared: SharedRef, seed_services: Vec<ServiceConfig>) {
    loop {
        if let Err(e) = sync_once(&shared, &seed_services).await {
            tracing::debug!("fleet: sync: {e:#}");
            let _ = with(&shared, |s| set_reachable(s, false));
        }
        if with(&shared, |s| {
            s.fleet.as_ref().is_some_and(|f| f.refused.is_some())
        })
        .unwrap_or(true)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn sync_once(shared: &SharedRef, seed_services: &[ServiceConfig]) -> Result<()> {
    let (cfg, fp) = with(shared, |s| {
        let f = s.fleet.as_ref().expect("fleet mode");
        (f.cfg.clone(), f.fingerprint.clone())
    })?;
    let store = Store::connect(&cfg).await?;
    if let Err(e) = store.check_seed(&fp).await {
        if e.to_string().contains("refuses to join") {
            tracing::error!("fleet: {e}");
            with(shared, |s| {
                if let Some(f) = s.fleet.as_mut() {
                    f.refused = Some(e.to_string());
                }
            })?;
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
                if !with(shared, |s| s.fleet.as_ref().is_some_and(|f| f.reachable))? {
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

fn adopt_snapshot(s: &mut Shared, snap: Snapshot, store: Store) {
    let host = {
        let f = s.fleet.as_mut().expect("fleet mode");
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
    let fh = s
        .fleet
        .as_ref()
        .map(|f| f.fleet_health())
        .unwrap_or_default();
    if let Err(e) = s.ctl.set_fleet_health(&mut s.dp, fh) {
        tracing::warn!("fleet: health: {e:#}");
    }
    let gone: Vec<String> = s
        .ctl
        .services
        .keys()
        .filter(|n| !snap.services.contains_key(*n))
        .cloned()
        .collect();
    for name in gone {
        adopt_one(s, &name, None, 0);
    }
    for (name, (rec, rev)) in snap.services {
        adopt_one(s, &name, Some(rec), rev);
    }
    if let Some(f) = s.fleet.as_mut() {
        f.applied = snap.revision;
    }
    sync_shadows(s);
    let _ = persist(s);
    tracing::info!(host, revision = snap.revision, "fleet: in sync");
}

fn adopt_one(s: &mut Shared, name: &str, rec: Option<ServiceRecord>, rev: i64) {
    match s.ctl.adopt(&mut s.dp, name, rec.as_ref()) {
        Ok(_) => {
            if let Some(f) = s.fleet.as_mut() {
                match rec {
                    Some(_) => f.revisions.insert(name.to_string(), rev),
                    None => f.revisions.remove(name),
                };
            }
        }
        // The maps are as they were; the next snapshot tries again.
        Err(e) => tracing::error!("fleet: cannot apply {name} (revision {rev}): {e:#}"),
    }
}

fn apply_events(s: &mut Shared, events: Vec<(bool, String, Vec<u8>, i64)>, rev: i64) {
    let Some(keys) = s
        .fleet
        .as_ref()
        .and_then(|f| f.store.as_ref())
        .map(|st| st.keys.clone())
    else {
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
                            tracing::warn!("fleet: ignoring unreadable record {key}: {e}");
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
                let f = s.fleet.as_mut().expect("fleet mode");
                if put {
                    if let Ok(r) = serde_json::from_slice(&value) {
                        f.hosts.insert(name.to_string(), r);
                    }
                } else {
                    f.hosts.remove(name);
                }
            }
            "leader" => {
                let f = s.fleet.as_mut().expect("fleet mode");
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
                let f = s.fleet.as_mut().expect("fleet mode");
                f.verdict = verdict;
                f.health_revision = if put { mod_rev } else { 0 };
                let fh = f.fleet_health();
                if let Err(e) = s.ctl.set_fleet_health(&mut s.dp, fh) {
                    tracing::warn!("fleet: health: {e:#}");
                }
            }
            "ledger" => {
                let f = s.fleet.as_mut().expect("fleet mode");
                if put && f.leading.is_none() {
                    f.ledger = serde_json::from_slice(&value).unwrap_or_default();
                }
            }
            _ => {}
        }
    }
    if let Some(f) = s.fleet.as_mut() {
        f.applied = f.applied.max(rev);
    }
    if services_changed {
        sync_shadows(s);
        if let Err(e) = persist(s) {
            tracing::warn!("fleet: caching state: {e:#}");
        }
    }
}

/// This host's figures, as the leader sums them.
fn report(s: &Shared) -> Option<HostReport> {
    let f = s.fleet.as_ref()?;
    let mut r = HostReport {
        host: f.cfg.host.clone(),
        epoch: f.epoch.clone(),
        at_ms: now_ms(),
        applied: f.applied,
        revisions: f.revisions.clone(),
        health_revision: f.health_revision,
        flows_counted_ms: s.flow_counts_ms,
        ..Default::default()
    };
    for (name, spec) in &s.ctl.services {
        let Some(placed) = s.ctl.programmer.services.get(name) else {
            continue;
        };
        let mut pools = BTreeMap::new();
        for p in &spec.pools {
            let mut c = [0u64; 3];
            for b in &p.backends {
                if let Some(st) = placed
                    .backends
                    .get(&b.addr())
                    .and_then(|i| s.dp.backend_stats(*i).ok())
                {
                    c[0] += st.new_flows;
                    c[1] += st.rsts;
                    c[2] += st.synacks;
                }
            }
            pools.insert(p.name.clone(), c);
        }
        r.pools.insert(name.clone(), pools);
        let flows = placed
            .backends
            .iter()
            .chain(&placed.lingering)
            .map(|(a, i)| (*a, s.flow_counts.get(i).copied().unwrap_or(0)))
            .collect();
        r.flows.insert(name.clone(), flows);
        if spec.health.is_some() {
            for b in spec.pools.iter().flat_map(|p| &p.backends) {
                let ok = s.ctl.health.get(&b.addr()).is_none_or(|h| h.healthy);
                r.health.insert(b.addr(), ok);
            }
        }
    }
    Some(r)
}

async fn heartbeat_loop(shared: SharedRef) {
    let mut lease: Option<i64> = None;
    let mut last_keepalive: Option<Instant> = None;
    let mut last_report: Option<Instant> = None;
    let mut every = tokio::time::interval(ROUND);
    let Ok(wake) = with(&shared, |s| s.fleet.as_ref().map(|f| f.wake.clone())) else {
        return;
    };
    let Some(wake) = wake else { return };
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = wake.notified() => {}
        }
        let Ok((store, ttl, refused)) = with(&shared, |s| {
            let f = s.fleet.as_ref().expect("fleet mode");
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
                if let Some(f) = s.fleet.as_mut()
                    && f.leading.take().is_some()
                {
                    tracing::warn!("fleet: lease not renewed in time; no longer leading");
                }
            });
        }
    }
}

async fn heartbeat(
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
            with(shared, |s| {
                if let Some(f) = s.fleet.as_mut() {
                    f.leading = None;
                }
            })?;
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
        let f = s.fleet.as_ref().expect("fleet mode");
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
            with(shared, |s| {
                if let Some(f) = s.fleet.as_mut() {
                    f.leading = token;
                }
            })?;
            token
        }
        (None, None) => {
            let won = store.campaign(id).await?;
            if let Some(t) = won {
                tracing::info!("fleet: this host leads the fleet");
                with(shared, |s| {
                    if let Some(f) = s.fleet.as_mut() {
                        f.leading = Some(t);
                        f.leader = Some(f.cfg.host.clone());
                    }
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

/// Once a minute while leading: bounded history, compacted etcd.
async fn housekeeping(shared: &SharedRef, store: &Store, token: i64) -> Result<()> {
    let due = with(shared, |s| {
        s.fleet.as_ref().is_some_and(|f| {
            f.leading == Some(token)
                && f.housekeeping
                    .is_none_or(|t| t.elapsed() >= HOUSEKEEPING_EVERY)
        })
    })?;
    if !due {
        return Ok(());
    }
    let (names, applied) = with(shared, |s| {
        (
            s.ctl.services.keys().cloned().collect::<Vec<_>>(),
            s.fleet.as_ref().map(|f| f.applied).unwrap_or(0),
        )
    })?;
    for name in names {
        let n = store.prune_history(&name, HISTORY_KEEP, token).await?;
        if n > 0 {
            tracing::info!("fleet: pruned {n} old history events of {name}");
        }
    }
    if applied > REVISIONS_KEEP {
        // A watcher behind the compacted revision starts over from a
        // snapshot (the sync loop does so on a cancelled watch).
        if let Err(e) = store.compact(applied - REVISIONS_KEEP).await {
            tracing::debug!("fleet: compaction: {e:#}");
        }
    }
    with(shared, |s| {
        if let Some(f) = s.fleet.as_mut() {
            f.housekeeping = Some(Instant::now());
        }
    })?;
    Ok(())
}

/// The leader's round: everything that moves on its own, on a copy of the
/// controller, written in one transaction fenced on our leader key.
async fn lead(shared: &SharedRef, store: &Store, token: i64) -> Result<()> {
    let prepared = blocking(shared, move |s| {
        let f = s.fleet.as_ref().expect("fleet mode");
        let now = now_ms();
        let live: Vec<&HostReport> = f.hosts.values().collect();
        let mut ledger = f.ledger.clone();
        let mut ledger_changed = false;
        for r in &live {
            ledger_changed |= ledger.update(r);
        }
        let verdict = super::verdicts(&f.verdict, &live, now);
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
        let signals = super::signals(&trial, &ledger.totals(), &live, &verdict);
        if let Err(e) = trial.tick(&mut NoMaps, &signals, now) {
            tracing::warn!("fleet: strategy tick: {e:#}");
        }
        if !trial.lingering.is_empty() {
            let counts = super::lingering_counts(&trial, &live);
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
                crate::strategy::Strategy::Canary(new),
                Some(crate::strategy::Strategy::Canary(old)),
            ) = (st, s.ctl.strategies.get_mut(name))
            {
                old.waiting = new.waiting.clone();
            }
        }
        (change, ledger)
    })
    .await?;
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
                with(shared, |s| {
                    if let Some(f) = s.fleet.as_mut() {
                        f.ledger = ledger;
                    }
                })?;
            }
            Ok(())
        }
        Err(e) => match e.downcast_ref::<Refused>() {
            Some(Refused::NotLeader) => {
                tracing::warn!("fleet: another host leads now; this one steps down");
                with(shared, |s| {
                    if let Some(f) = s.fleet.as_mut() {
                        f.leading = None;
                    }
                })?;
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

fn new_events(before: &[Event], after: &[Event]) -> Vec<Event> {
    after[before.len().min(after.len())..].to_vec()
}

/// A state-changing command in fleet mode.
pub(crate) async fn command(shared: &SharedRef, cmd: Command) -> Response {
    match run_command(shared, cmd).await {
        Ok(r) => r,
        Err(e) => Response::err(format!("{e:#}")),
    }
}

async fn run_command(shared: &SharedRef, cmd: Command) -> Result<Response> {
    if let Command::History { service } = &cmd {
        let (store, known) = with(shared, |s| {
            (
                s.fleet.as_ref().and_then(|f| f.store.clone()),
                s.ctl.service(service).map(|_| ()),
            )
        })?;
        known?;
        let store =
            store.ok_or_else(|| anyhow!("etcd has not been reached yet: no fleet history"))?;
        return Ok(Response {
            history: Some(store.history(service).await?),
            ..Response::ok()
        });
    }
    let (store, change) = blocking(shared, move |s| -> Result<(Store, Change)> {
        let f = s.fleet.as_ref().expect("fleet mode");
        if let Some(why) = &f.refused {
            anyhow::bail!("{why}");
        }
        let store = match (&f.store, f.reachable) {
            (Some(st), true) => st.clone(),
            _ => anyhow::bail!(
                "etcd is unreachable: state changes are refused until it is back; forwarding goes on with the last applied state"
            ),
        };
        sync_shadows(s);
        let mut trial = s.ctl.clone();
        trial.handle(&mut NoMaps, &cmd, now_ms())?;
        let f = s.fleet.as_ref().expect("fleet mode");
        let services = s.ctl.changed_records(&trial);
        for (name, r) in &services {
            if r.as_ref().map(|r| r.spec.mode) == Some(crate::config::ForwardMode::Fullnat) {
                anyhow::bail!("service {name:?}: {}", crate::config::FULLNAT_IN_FLEET);
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
        if with(shared, |s| {
            s.fleet.as_ref().is_some_and(|f| f.applied >= rev)
        })? {
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
    let Ok((store, token)) = with(shared, |s| {
        let f = s.fleet.as_ref();
        (f.and_then(|f| f.store.clone()), f.and_then(|f| f.leading))
    }) else {
        return;
    };
    if let (Some(store), Some(t)) = (store, token) {
        let _ = tokio::time::timeout(Duration::from_secs(1), store.resign(t)).await;
    }
}

/// The fleet part of `switch status` for one service.
pub fn status(f: &FleetState, name: &str, spec: &ServiceConfig) -> crate::api::FleetStatus {
    use crate::api::{FleetBackendStatus, FleetHostStatus, FleetPoolStatus};
    let now = now_ms();
    let live: Vec<&HostReport> = f.hosts.values().collect();
    let mut names: std::collections::BTreeSet<&String> = f.hosts.keys().collect();
    names.extend(f.ledger.hosts.keys());
    let hosts = names
        .into_iter()
        .map(|h| {
            let r = f.hosts.get(h);
            FleetHostStatus {
                name: h.clone(),
                alive: r.is_some(),
                leader: f.leader.as_ref() == Some(h),
                applied_revision: r.map(|r| r.applied).unwrap_or(0),
                revision: r.and_then(|r| r.revisions.get(name).copied()),
                health_revision: r.map(|r| r.health_revision).unwrap_or(0),
                new_flows: r
                    .and_then(|r| r.pools.get(name))
                    .map(|p| p.values().map(|c| c[0]).sum())
                    .unwrap_or(0),
                last_report_ms_ago: r.map(|r| now.saturating_sub(r.at_ms)),
            }
        })
        .collect();
    // The ledger (kept by the leader) covers hosts that died or restarted;
    // the live reports may be a little newer.
    let mut totals = f.ledger.clone();
    for r in &live {
        totals.update(r);
    }
    let totals = totals.totals();
    let pools = spec
        .pools
        .iter()
        .map(|p| {
            let c = totals
                .get(name)
                .and_then(|t| t.get(&p.name))
                .copied()
                .unwrap_or_default();
            FleetPoolStatus {
                name: p.name.clone(),
                new_flows: c[0],
                rsts: c[1],
                synacks: c[2],
            }
        })
        .collect();
    let backends = spec
        .pools
        .iter()
        .flat_map(|p| p.backends.iter().map(move |b| (p, b.addr())))
        .map(|(p, a)| {
            let v = f.verdict.get(&a);
            FleetBackendStatus {
                addr: a,
                pool: p.name.clone(),
                active_flows: super::live_flows(&live, name, a),
                healthy: v.is_none_or(|v| v.healthy),
                down_votes: v.map(|v| v.down).unwrap_or(0),
                hosts: v.map(|v| v.hosts).unwrap_or(live.len() as u32),
            }
        })
        .collect();
    crate::api::FleetStatus {
        host: f.cfg.host.clone(),
        leader: f.leader.clone(),
        etcd_reachable: f.reachable,
        revision: f.revisions.get(name).copied().unwrap_or(0),
        health_revision: f.health_revision,
        applied_revision: f.applied,
        refused: f.refused.clone(),
        hosts,
        pools,
        backends,
    }
}
