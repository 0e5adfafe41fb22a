//! `switch daemon`: loads or adopts the data plane, serves the API, and
//! persists desired state. Stopping it leaves the program attached and every
//! map pinned: forwarding goes on, and the next start adopts it all.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result, anyhow};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    api::{self, BackendStatus, Command, PoolStatus, Request, Response, ServiceStatus},
    config::{AdminState, ConfigFile, DaemonConfig, HealthConfig},
    controller::Controller,
    dataplane::{Capacity, Dataplane},
    health, metrics, privileges,
    programmer::Programmer,
    prometheus,
    strategy::{BackendSignals, Phase, PoolSignals, PromGate, Reading, Signals, Strategy},
};

pub(crate) struct Shared {
    pub(crate) dp: Dataplane,
    pub(crate) ctl: Controller,
    state_file: PathBuf,
    /// When each canary's Prometheus gate was last asked (ms).
    prom_asked: HashMap<String, u64>,
    /// Per backend index: (packets/s, new flows/s) over the last second.
    rates: HashMap<u32, (f64, f64)>,
    /// Live flows per backend index, counted by the sampler once a second.
    pub(crate) flow_counts: HashMap<u32, u64>,
    /// When the count began (ms): a drain trusts only later counts.
    pub(crate) flow_counts_ms: u64,
    /// The sample the rates were computed from.
    last_sample: Option<(std::time::Instant, Counters)>,
    /// Next hops as written to NEXTHOPS, by backend index.
    nexthops: HashMap<u32, switch_common::NextHop>,
    /// The shadows' replays, fed from the data plane's ring buffer.
    shadow: Arc<crate::shadow::Engine>,
    /// When each service's shadow (as the engine serves it) started.
    shadow_started: HashMap<String, u64>,
    /// Fleet mode: what this host knows of the fleet (None: single host).
    pub(crate) fleet: Option<crate::fleet::agent::FleetState>,
    /// With `[bgp]`: the BIRD that announces our VIPs (its own lock: asking
    /// BIRD runs `birdc`, which must not hold up the state).
    bgp: Option<Arc<Mutex<crate::bgp::Bird>>>,
    /// Sessions and announcements as last seen (for status).
    bgp_status: crate::bgp::BgpStatus,
    /// `switch fleet leave`: announce nothing (kept across restarts).
    left: bool,
    state_dir: PathBuf,
}

/// Where `switch fleet leave` is remembered.
fn left_file(state_dir: &Path) -> PathBuf {
    state_dir.join("left")
}

/// The VIPs this host should announce now, or why none.
fn wanted_vips(s: &Shared) -> (BTreeSet<std::net::IpAddr>, Option<String>) {
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
fn sync_bgp(shared: &Mutex<Shared>) {
    let Some((bird, vips, why)) = shared.lock().ok().and_then(|s| {
        let (vips, why) = wanted_vips(&s);
        s.bgp.clone().map(|b| (b, vips, why))
    }) else {
        return;
    };
    let Ok(mut bird) = bird.lock() else { return };
    if let Err(e) = bird.announce(&vips) {
        tracing::warn!("bgp: {e:#}");
    }
    let status = crate::bgp::BgpStatus {
        asn: bird.asn(),
        sessions: bird.sessions(),
        announced: bird.announced(),
        withdrawn: why,
    };
    drop(bird);
    if let Ok(mut s) = shared.lock() {
        s.bgp_status = status;
    }
}

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
            crate::shadow::Target {
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
async fn shadow_reader(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    engine: Arc<crate::shadow::Engine>,
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

/// Per backend index: (packets, new flows) as the counters stood.
type Counters = HashMap<u32, (u64, u64)>;

/// Samples every backend's counters once a second and keeps the rates.
fn sample_rates(shared: &Mutex<Shared>) {
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

pub fn run(config_path: &Path, api_override: Option<PathBuf>) -> Result<()> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("cannot read config {}", config_path.display()))?;
    let mut file =
        ConfigFile::parse(&text).with_context(|| format!("config {}", config_path.display()))?;
    if let Some(a) = api_override {
        file.daemon.api = a;
    }
    let d = file.daemon.clone();
    std::fs::create_dir_all(&d.state_dir)
        .with_context(|| format!("cannot create state dir {}", d.state_dir.display()))?;
    let state_file = d.state_dir.join("state.json");

    let capacity = Capacity {
        services: d.max_services,
        backends: d.max_backends,
        flows: d.max_flows,
        // One live table per service, plus spares for changes in flight
        // and for cohort tables.
        tables: d.max_services + 64 + crate::programmer::HISTORY_TABLES,
    };
    let mut dp = Dataplane::load(Some(&d.pin_dir), capacity)?;
    let restored = match std::fs::read(&state_file) {
        Ok(bytes) => Some(
            read_state(&bytes).with_context(|| format!("state file {}", state_file.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).context("reading state file"),
    };
    // Start-up's own runtime, dropped before serving: threads its blocking
    // pool starts now would keep every capability (they are per thread).
    let boot = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let seed = match (&file.fleet, &d.seed, &restored) {
        // A fleet without a configured seed agrees on one through etcd.
        (Some(f), None, None) => boot.block_on(fleet_seed(f))?,
        _ => seed(&d, restored.as_ref())?,
    };
    let mut ctl = match restored {
        Some(mut c) => {
            tracing::info!(
                "adopting state from {}: {} services",
                state_file.display(),
                c.services.len()
            );
            c.programmer.seed = seed;
            c
        }
        None => Controller::new(Programmer::new(seed, capacity)),
    };
    // Behind ECMP a connection's replies may come back through a host that
    // never saw it: nat replies are then recognised by the table.
    ctl.programmer.table_replies = file.fleet.is_some() && file.bgp.is_some();
    ctl.programmer.filters_open = true;
    ctl.programmer.init(&mut dp, &d)?;
    // Test-only: the slot history off, to show what it protects (a
    // connection that changes host after a table change).
    ctl.programmer.slot_history = std::env::var_os("SWITCH_TEST_NO_SLOT_HISTORY").is_none();
    if !ctl.programmer.slot_history {
        tracing::warn!("SWITCH_TEST_NO_SLOT_HISTORY: previous owners are not kept");
    }
    let fleet = match &file.fleet {
        Some(f) => {
            let fp = crate::fleet::fingerprint(seed);
            // A host with another seed must not forward with its own table:
            // refuse at once when etcd answers (later, if it does not now).
            boot.block_on(async {
                if let Ok(Ok(store)) = tokio::time::timeout(
                    std::time::Duration::from_secs(3),
                    crate::fleet::store::Store::connect(f),
                )
                .await
                {
                    store.check_seed(&fp).await.or_else(|e| {
                        if e.to_string().contains("refuses to join") {
                            Err(e)
                        } else {
                            Ok(())
                        }
                    })?;
                }
                Ok::<(), anyhow::Error>(())
            })?;
            ctl.fleet_health = Some(Default::default());
            Some(crate::fleet::agent::FleetState::new(
                f.clone(),
                fp,
                epoch(&d.pin_dir),
            ))
        }
        None => None,
    };
    if fleet.is_some() {
        // etcd is the source of truth; the cache forwards until it answers.
        ctl.reapply(&mut dp)?;
    } else if ctl.services.is_empty() && !file.services.is_empty() {
        ctl.handle(
            &mut dp,
            &Command::Apply {
                services: file.services.clone(),
            },
            now_ms(),
        )?;
    } else {
        ctl.reapply(&mut dp)?;
    }
    for ifname in &d.interfaces {
        let mode = dp.attach(ifname)?;
        tracing::info!("attached to {ifname} ({mode:?})");
    }
    // Our program reads the filters now: this build's hash.
    ctl.programmer.close_filters(&mut dp)?;
    // Next hops before the first packet: resolved and cached.
    let mut nexthops = HashMap::new();
    let resolved = resolve_neighbours(backend_ips(&ctl));
    crate::dataplane::sync_nexthops(&mut dp, &ctl.programmer, &resolved, &mut nexthops)?;
    let shared = Arc::new(Mutex::new(Shared {
        dp,
        ctl,
        state_file,
        prom_asked: HashMap::new(),
        rates: HashMap::new(),
        flow_counts: HashMap::new(),
        flow_counts_ms: 0,
        last_sample: None,
        nexthops,
        shadow: Arc::new(crate::shadow::Engine::default()),
        shadow_started: HashMap::new(),
        fleet,
        bgp: match &file.bgp {
            // After the XDP program is attached: nothing is announced that
            // this host cannot forward.
            Some(b) => Some(Arc::new(Mutex::new(crate::bgp::Bird::start(
                b,
                &d.state_dir,
            )?))),
            None => None,
        },
        bgp_status: Default::default(),
        left: left_file(&d.state_dir).exists(),
        state_dir: d.state_dir.clone(),
    }));
    persist(&*shared.lock().map_err(|_| anyhow!("lock"))?)?;
    let seed_services = if file.fleet.is_some() {
        file.services.clone()
    } else {
        vec![]
    };
    drop(boot);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(shared, d, seed_services))
}

/// Changes when the data plane's counters start from zero: the boot and
/// the pinned statistics map's inode (new when the maps are made anew).
fn epoch(pin_dir: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let ino = switch_common::names::PINNED
        .iter()
        .find_map(|n| std::fs::metadata(pin_dir.join(n)).ok())
        .map(|m| m.ino())
        .unwrap_or(0);
    format!("{}-{ino}", boot.trim())
}

/// A fleet host with no `daemon.seed` and no cached state: the seed all
/// hosts derive from etcd (waiting a little for etcd to answer).
async fn fleet_seed(f: &crate::config::FleetConfig) -> Result<u32> {
    let t = std::time::Instant::now();
    loop {
        match crate::fleet::store::Store::connect(f).await {
            Ok(store) => match store.derived_seed().await {
                Ok(s) => {
                    tracing::warn!(
                        "fleet: no daemon.seed; using the seed derived from the etcd cluster (set daemon.seed, the same on every host, to keep it secret)"
                    );
                    return Ok(s);
                }
                Err(e) if t.elapsed() > std::time::Duration::from_secs(15) => return Err(e),
                Err(_) => {}
            },
            Err(e) if t.elapsed() > std::time::Duration::from_secs(15) => {
                return Err(e.context(
                    "fleet mode with no daemon.seed needs etcd at the first start to agree on one",
                ));
            }
            Err(_) => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

fn seed(d: &DaemonConfig, restored: Option<&Controller>) -> Result<u32> {
    if let Some(hex) = &d.seed {
        return u32::from_str_radix(hex.trim_start_matches("0x"), 16)
            .map_err(|_| anyhow!("daemon.seed: {hex:?} is not a hex number of at most 8 digits"));
    }
    if let Some(c) = restored {
        return Ok(c.programmer.seed);
    }
    Ok(rand::random())
}

/// The schema of `state.json`. 1: the controller alone (no `schema` key);
/// 2: with `schema`, lingering backends. A newer daemon reads older files.
pub const STATE_SCHEMA: u32 = 2;

/// Reads a state file of this schema or an older one.
pub fn read_state(bytes: &[u8]) -> Result<Controller> {
    let mut v: serde_json::Value =
        serde_json::from_slice(bytes).context("not a switch state file (bad JSON)")?;
    // Schema 1 had no `schema` key.
    let schema = match v.as_object_mut().and_then(|o| o.remove("schema")) {
        None => 1,
        Some(s) => s
            .as_u64()
            .ok_or_else(|| anyhow!("`schema` is not a number"))?,
    };
    if schema > STATE_SCHEMA as u64 {
        anyhow::bail!(
            "written by a newer switch (schema {schema}; this daemon reads up to {STATE_SCHEMA}): upgrade the daemon or move the file away"
        );
    }
    serde_json::from_value(v).context("state file is corrupt")
}

/// Writes the state atomically and durably: a temporary file, fsync, rename
/// over the old one, fsync of the directory (so the rename survives a crash).
pub fn write_state(path: &Path, ctl: &Controller) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut v = serde_json::to_value(ctl)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("schema".into(), STATE_SCHEMA.into());
    }
    let bytes = serde_json::to_vec_pretty(&v)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub(crate) fn persist(s: &Shared) -> Result<()> {
    write_state(&s.state_file, &s.ctl)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How often strategies are advanced and their gates checked.
const TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// Advances strategies with fresh signals from the data plane.
fn tick(shared: &Mutex<Shared>) -> Result<()> {
    let fleet = shared
        .lock()
        .map_err(|_| anyhow!("state lock poisoned"))?
        .fleet
        .as_ref()
        .map(|f| f.leading.is_some());
    // In a fleet only the leader asks Prometheus, and it moves strategies
    // in its own round (fleet::agent), on fleet-wide figures.
    if fleet != Some(false) {
        ask_prometheus(shared)?;
    }
    if fleet.is_some() {
        return Ok(());
    }
    let mut guard = shared.lock().map_err(|_| anyhow!("state lock poisoned"))?;
    let s = &mut *guard;
    if s.ctl.shadows.values().any(|sh| sh.running()) {
        let before = s.ctl.history.len();
        s.ctl.expire_shadows(&mut s.dp, now_ms())?;
        s.shadow.sweep();
        sync_shadows(s);
        if s.ctl.history.len() != before {
            persist(s)?;
        }
    }
    if !s.ctl.lingering.is_empty() {
        let before = s.ctl.history.len();
        let (counts, at) = (s.flow_counts.clone(), s.flow_counts_ms);
        s.ctl.settle_lingering(&mut s.dp, &counts, at, now_ms())?;
        if s.ctl.history.len() != before {
            persist(s)?;
        }
    }
    if !s.ctl.strategies.values().any(|st| st.phase().is_active()) {
        return Ok(());
    }
    let flows = if s.ctl.wants_flow_counts() {
        s.flow_counts.clone()
    } else {
        Default::default()
    };
    let mut all = BTreeMap::new();
    for (name, spec) in &s.ctl.services {
        let Some(placed) = s.ctl.programmer.services.get(name) else {
            continue;
        };
        let mut pools = Signals::new();
        for p in &spec.pools {
            let mut ps = PoolSignals::default();
            for b in &p.backends {
                let index = placed.backends[&b.addr()];
                let st = s.dp.backend_stats(index)?;
                ps.new_flows += st.new_flows;
                ps.rsts += st.rsts;
                ps.synacks += st.synacks;
                let h = s.ctl.health.get(&b.addr());
                ps.backends.insert(
                    b.addr(),
                    BackendSignals {
                        healthy: h.is_none_or(|h| h.healthy),
                        healthy_since_ms: match h {
                            Some(h) if h.healthy => Some(h.since_ms),
                            Some(_) => None,
                            None => Some(0),
                        },
                        active_flows: flows.get(&index).copied().unwrap_or(0),
                        flows_counted_ms: s.flow_counts_ms,
                    },
                );
            }
            pools.insert(p.name.clone(), ps);
        }
        all.insert(name.clone(), pools);
    }
    let before = s.ctl.history.len();
    s.ctl.tick(&mut s.dp, &all, now_ms())?;
    if s.ctl.history.len() != before || s.ctl.strategies.values().any(|st| st.phase().is_active()) {
        persist(s)?;
    }
    Ok(())
}

/// How often a canary's Prometheus query is asked.
const PROMETHEUS_EVERY_MS: u64 = 1000;

/// Asks the Prometheus gates of running canaries, outside the state lock
/// (a slow Prometheus must not stall the API), and hands the answers over.
fn ask_prometheus(shared: &Mutex<Shared>) -> Result<()> {
    let now = now_ms();
    let due: Vec<(String, PromGate)> = {
        let s = shared.lock().map_err(|_| anyhow!("state lock poisoned"))?;
        s.ctl
            .strategies
            .iter()
            .filter_map(|(name, st)| match st {
                Strategy::Canary(c) if c.phase == Phase::Running => {
                    c.gates.prometheus.clone().map(|g| (name.clone(), g))
                }
                _ => None,
            })
            .filter(|(name, _)| {
                s.prom_asked
                    .get(name)
                    .is_none_or(|t| now.saturating_sub(*t) >= PROMETHEUS_EVERY_MS)
            })
            .collect()
    };
    if due.is_empty() {
        return Ok(());
    }
    let answers: Vec<(String, Reading)> = due
        .into_iter()
        .map(|(name, g)| {
            let r = prometheus::query(
                &g.url,
                &g.query,
                g.token.as_deref(),
                std::time::Duration::from_secs(1),
            );
            (name, r)
        })
        .collect();
    let mut s = shared.lock().map_err(|_| anyhow!("state lock poisoned"))?;
    for (name, r) in answers {
        s.prom_asked.insert(name.clone(), now);
        if let Some(Strategy::Canary(c)) = s.ctl.strategies.get_mut(&name) {
            c.reading = Some(r);
        }
    }
    Ok(())
}

/// Probes every backend of every service with health checks, each at its
/// service's interval, and feeds the results to the controller.
async fn health_loop(shared: Arc<Mutex<Shared>>) {
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

/// How often backend neighbours are checked (and put back when missing).
// A safety net: `ip monitor` events start a round at once.
const NEIGHBOURS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The backend next hops kept resolved (see `neighbours`): by the loop
/// below, at start, and right after every command, before it answers.
static NEIGHBOURS: std::sync::LazyLock<Mutex<crate::neighbours::Neighbours>> =
    std::sync::LazyLock::new(Mutex::default);

fn backend_ips(ctl: &Controller) -> BTreeSet<std::net::IpAddr> {
    ctl.programmer
        .services
        .values()
        .flat_map(|p| p.backends.keys().chain(p.lingering.keys()))
        .map(|a| a.ip())
        .collect()
}

fn resolve_neighbours(
    backends: BTreeSet<std::net::IpAddr>,
) -> std::collections::BTreeMap<std::net::IpAddr, switch_common::NextHop> {
    match NEIGHBOURS.lock() {
        Ok(mut n) => {
            n.reconcile(backends);
            n.resolved()
        }
        Err(_) => Default::default(),
    }
}

/// One neighbour round and the next-hop cache brought up to date.
fn refresh_neighbours(shared: &Mutex<Shared>) {
    refresh_neighbours_with(shared, false)
}

fn refresh_neighbours_with(shared: &Mutex<Shared>, routes_changed: bool) {
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
        match crate::dataplane::sync_nexthops(
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
fn is_neighbour_event(line: &str) -> bool {
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
/// and routing rules that select by port turn it off.
async fn neighbour_loop(shared: Arc<Mutex<Shared>>) {
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
                let ours = ip.is_some_and(|ip| {
                    NEIGHBOURS
                        .lock()
                        .is_ok_and(|n| n.hops().values().any(|h| h.via == ip))
                });
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

fn advance_reply_hops(hops: &Mutex<crate::dataplane::ReplyHops>) {
    if let Ok(mut h) = hops.lock()
        && let Err(e) = h.advance()
    {
        tracing::warn!("replies' route cache: {e:#}");
    }
}

/// A round of the network watch for the replies' route cache: off
/// while a routing rule selects by port (its key has no ports), and moved
/// on in any case, so no answer is older than a round.
fn check_reply_hops(hops: &Mutex<crate::dataplane::ReplyHops>) {
    let by_port = crate::neighbours::rules_select_by_port();
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

/// A stable offset in `0..interval` for a backend's first probe.
fn spread(addr: &SocketAddr, interval: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    addr.hash(&mut h);
    h.finish() % interval
}

/// One table rebuild per changed service, for all the health changes since
/// the last round (at most every 50 ms).
fn apply_health(shared: &Mutex<Shared>, dirty: &Mutex<BTreeSet<String>>) {
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

/// The metrics page for one scrape.
fn metrics_page(shared: &Mutex<Shared>) -> String {
    let Ok(s) = shared.lock() else {
        return String::new();
    };
    let services = status(&s, None).unwrap_or_default();
    let reasons =
        s.dp.reasons()
            .map(|r| {
                r.into_iter()
                    .map(|(r, n)| (r.name().to_string(), n))
                    .collect()
            })
            .unwrap_or_default();
    let mut last = BTreeMap::new();
    for e in s.ctl.history.iter().filter(|e| e.ok) {
        last.insert(e.service.clone(), e.at_ms);
    }
    metrics::render(&services, &reasons, &last)
}

/// Gives the API socket to `group` (mode 0660), so its members may steer.
fn socket_group(path: &Path, group: &str) -> Result<()> {
    let name = std::ffi::CString::new(group)?;
    let gr = unsafe { libc::getgrnam(name.as_ptr()) };
    if gr.is_null() {
        anyhow::bail!("daemon.api_group: no group named {group:?}");
    }
    let gid = unsafe { (*gr).gr_gid };
    std::os::unix::fs::chown(path, Some(0), Some(gid))?;
    Ok(())
}

async fn serve(
    shared: Arc<Mutex<Shared>>,
    d: DaemonConfig,
    seed_services: Vec<crate::config::ServiceConfig>,
) -> Result<()> {
    // Before the API socket appears: whoever sees it may send SIGTERM at
    // once, and it must mean a clean stop, not the default death.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    if let Some(addr) = d.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding metrics address {addr}"))?;
        tracing::info!("metrics on http://{addr}/metrics");
        let s = shared.clone();
        tokio::spawn(metrics::serve(listener, move || metrics_page(&s)));
    }
    tokio::spawn(health_loop(shared.clone()));
    tokio::spawn(neighbour_loop(shared.clone()));
    if shared.lock().map_err(|_| anyhow!("lock"))?.fleet.is_some() {
        crate::fleet::agent::start(shared.clone(), seed_services);
    }
    if shared.lock().map_err(|_| anyhow!("lock"))?.bgp.is_some() {
        let s = shared.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                every.tick().await;
                let s = s.clone();
                let _ = tokio::task::spawn_blocking(move || sync_bgp(&s)).await;
            }
        });
    }
    // Threads of our own start only once privileges are dropped (below):
    // capabilities are per thread, and a thread keeps those it was born with.
    let shadow_ring = {
        let mut g = shared.lock().map_err(|_| anyhow!("lock"))?;
        sync_shadows(&mut g);
        let engine = g.shadow.clone();
        match g.dp.take_shadow_ring() {
            Ok(ring) => Some((ring, engine)),
            Err(e) => {
                tracing::warn!("shadow ring buffer: {e:#}");
                None
            }
        }
    };
    let clock = shared.lock().map_err(|_| anyhow!("lock"))?.dp.clock()?;
    let sampler = shared.clone();
    let scanner = Arc::new(
        shared
            .lock()
            .map_err(|_| anyhow!("lock"))?
            .dp
            .flow_scanner()?,
    );
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            every.tick().await;
            let (s, sc) = (sampler.clone(), scanner.clone());
            let _ = tokio::task::spawn_blocking(move || {
                // Walking a big flow table takes a while: not under the lock.
                let began = now_ms();
                let counts = sc.count_by_backend();
                if let (Ok(c), Ok(mut g)) = (counts, s.lock()) {
                    g.flow_counts = c;
                    g.flow_counts_ms = began;
                }
                sample_rates(&s);
            })
            .await;
        }
    });
    let ticker = shared.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(TICK);
        loop {
            every.tick().await;
            let s = ticker.clone();
            match tokio::task::spawn_blocking(move || tick(&s)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("strategy tick: {e:#}"),
                Err(e) => tracing::warn!("strategy tick: {e}"),
            }
        }
    });
    if let Some(dir) = d.api.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&d.api);
    let listener = UnixListener::bind(&d.api)
        .with_context(|| format!("binding API socket {}", d.api.display()))?;
    std::fs::set_permissions(&d.api, std::fs::Permissions::from_mode(0o660))?;
    if let Some(g) = &d.api_group {
        socket_group(&d.api, g)?;
    }
    // Everything that needs privileges is done: maps and links are open,
    // sockets bound.
    match privileges::drop_all_but_kept() {
        Ok(()) => tracing::info!(
            "keeping only {}",
            privileges::KEPT
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => tracing::warn!("could not drop capabilities: {e:#}"),
    }
    std::thread::Builder::new()
        .name("clock".into())
        .spawn(move || clock.run())?;
    if let Some((ring, engine)) = shadow_ring {
        // Replays run on a thread of their own at the lowest priority: on a
        // busy switch host they get what is left over, and the live path
        // (softirqs, the API, health checks) never waits for them.
        std::thread::Builder::new()
            .name("shadow".into())
            .spawn(move || {
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(shadow_reader(ring, engine)),
                    Err(e) => tracing::warn!("shadow runtime: {e}"),
                }
            })?;
    }
    tracing::info!("API on {}", d.api.display());
    // systemd Type=notify: ready once the API serves.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let (stream, _) = conn?;
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = client(stream, shared).await {
                        tracing::warn!("API client: {e:#}");
                    }
                });
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = std::fs::remove_file(&d.api);
    crate::fleet::agent::resign(&shared).await;
    tracing::info!("stopping; the data plane keeps forwarding");
    Ok(())
}

async fn client(stream: UnixStream, shared: Arc<Mutex<Shared>>) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::err(format!("bad request: {e}")),
            Ok(req) if req.v != api::VERSION => Response::err(format!(
                "API version {} not supported (this daemon speaks {})",
                req.v,
                api::VERSION
            )),
            Ok(req)
                if !matches!(req.cmd, Command::Status { .. } | Command::Membership { .. })
                    && shared.lock().is_ok_and(|s| s.fleet.is_some()) =>
            {
                let span = tracing::info_span!(
                    "request",
                    cmd = req.cmd.name(),
                    service = req.cmd.service().unwrap_or("-")
                );
                let resp = tracing::Instrument::instrument(
                    crate::fleet::agent::command(&shared, req.cmd.clone()),
                    span,
                )
                .await;
                if !matches!(req.cmd, Command::History { .. }) {
                    match &resp.error {
                        None => tracing::info!(cmd = req.cmd.name(), "done"),
                        Some(e) => tracing::info!(cmd = req.cmd.name(), error = %e, "refused"),
                    }
                    if resp.ok {
                        let s = shared.clone();
                        let _ = tokio::task::spawn_blocking(move || refresh_neighbours(&s)).await;
                    }
                }
                resp
            }
            Ok(req) => {
                let shared = shared.clone();
                tokio::task::spawn_blocking(move || {
                    let span = tracing::info_span!(
                        "request",
                        cmd = req.cmd.name(),
                        service = req.cmd.service().unwrap_or("-")
                    );
                    let _enter = span.enter();
                    let resp = handle(&shared, &req.cmd);
                    if !matches!(req.cmd, Command::Status { .. } | Command::History { .. }) {
                        match &resp.error {
                            None => tracing::info!("done"),
                            Some(e) => tracing::info!(error = %e, "refused"),
                        }
                    }
                    // New backends forward from their first packet.
                    if resp.ok
                        && !matches!(req.cmd, Command::Status { .. } | Command::History { .. })
                    {
                        refresh_neighbours(&shared);
                    }
                    resp
                })
                .await?
            }
        };
        let mut out = serde_json::to_vec(&resp)?;
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

fn handle(shared: &Mutex<Shared>, cmd: &Command) -> Response {
    let Ok(mut guard) = shared.lock() else {
        return Response::err("daemon state lock poisoned");
    };
    let s = &mut *guard;
    match cmd {
        Command::Status { service } => match status(s, service.as_deref()) {
            Ok(st) => Response {
                status: Some(st),
                reasons: s.dp.reasons().ok().map(|r| {
                    r.into_iter()
                        .filter(|(_, n)| *n > 0)
                        .map(|(r, n)| (r.name().to_string(), n))
                        .collect()
                }),
                ..Response::ok()
            },
            Err(e) => Response::err(e),
        },
        Command::Membership { join } => {
            if s.bgp.is_none() {
                return Response::err(
                    "this host has no [bgp] section: it announces nothing to join or leave",
                );
            }
            let file = left_file(&s.state_dir);
            let r = if *join {
                std::fs::remove_file(&file).or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
            } else {
                std::fs::write(&file, "left\n")
            };
            if let Err(e) = r {
                return Response::err(format!("cannot record it in {}: {e}", file.display()));
            }
            s.left = !*join;
            drop(guard);
            sync_bgp(shared);
            Response::ok()
        }
        Command::History { service } => match s.ctl.service(service) {
            Ok(_) => Response {
                history: Some(
                    s.ctl
                        .history
                        .iter()
                        .filter(|e| &e.service == service)
                        .cloned()
                        .collect(),
                ),
                ..Response::ok()
            },
            Err(e) => Response::err(e),
        },
        _ => {
            // Fresh shadow figures for `--after-shadow`; new shadows to the
            // engine afterwards.
            sync_shadows(s);
            let r = s.ctl.handle(&mut s.dp, cmd, now_ms());
            sync_shadows(s);
            match r {
                Ok(()) => match persist(s) {
                    Ok(()) => Response::ok(),
                    Err(e) => Response::err(format!("applied, but persisting state failed: {e}")),
                },
                // A refused or failed command changed nothing: nothing to persist.
                Err(e) => Response::err(format!("{e:#}")),
            }
        }
    }
}

fn status(s: &Shared, only: Option<&str>) -> Result<Vec<ServiceStatus>> {
    if let Some(name) = only {
        s.ctl.service(name)?;
    }
    let flows = &s.flow_counts;
    let mut out = Vec::new();
    for (name, spec) in &s.ctl.services {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let placed = s
            .ctl
            .programmer
            .services
            .get(name)
            .ok_or_else(|| anyhow!("{name} not placed"))?;
        let st = s.dp.service_stats(placed.id)?;
        let misses = s.dp.service_misses(placed.id)?;
        let weights: Vec<u64> = spec
            .pools
            .iter()
            .map(|p| {
                if p.backends.iter().any(|b| b.state() == AdminState::Active) {
                    p.weight as u64
                } else {
                    0
                }
            })
            .collect();
        let total: u64 = weights.iter().sum();
        let unhealthy = s.ctl.unhealthy();
        let backend = |addr: SocketAddr, pool: &str, weight: u32, state, index: u32| {
            let bs = s.dp.backend_stats(index)?;
            let health = s.ctl.health.get(&addr);
            Ok::<_, anyhow::Error>(BackendStatus {
                // As the table treats it (in a fleet: the fleet's verdict).
                healthy: !unhealthy.contains(&addr),
                health_error: health.and_then(|h| h.last_error.clone()),
                addr,
                pool: pool.to_string(),
                weight,
                state,
                packets: bs.packets,
                new_flows: bs.new_flows,
                rsts: bs.rsts,
                active_flows: flows.get(&index).copied().unwrap_or(0),
                packets_per_s: s.rates.get(&index).map(|r| r.0).unwrap_or(0.0),
                new_flows_per_s: s.rates.get(&index).map(|r| r.1).unwrap_or(0.0),
            })
        };
        let mut pools = Vec::new();
        for (p, w) in spec.pools.iter().zip(&weights) {
            let mut backends = Vec::new();
            for b in &p.backends {
                let state = match b.state() {
                    AdminState::Active => api::BackendState::Active,
                    AdminState::Draining => api::BackendState::Draining,
                };
                backends.push(backend(
                    b.addr(),
                    &p.name,
                    b.weight(),
                    state,
                    placed.backends[&b.addr()],
                )?);
            }
            pools.push(PoolStatus {
                name: p.name.clone(),
                weight: p.weight,
                share: if total == 0 {
                    0.0
                } else {
                    100.0 * *w as f64 / total as f64
                },
                backends,
            });
        }
        let mut lingering = Vec::new();
        for (addr, l) in s.ctl.lingering.get(name).into_iter().flatten() {
            if let Some(&index) = placed.lingering.get(addr) {
                lingering.push(backend(
                    *addr,
                    &l.pool,
                    0,
                    api::BackendState::Lingering,
                    index,
                )?);
            }
        }
        let strategy = s.ctl.strategies.get(name);
        out.push(ServiceStatus {
            strategy: strategy.map(|st| st.describe(now_ms())),
            strategy_kind: strategy.map(|st| st.kind()),
            phase: strategy.map(|st| st.phase().kind()),
            progress: strategy.map(|st| st.progress()),
            name: name.clone(),
            vip: spec.vip,
            protocol: spec.protocol,
            mode: spec.mode,
            packets: st.packets,
            new_flows: st.new_flows,
            no_backend: st.no_backend,
            nonsyn_miss: misses.nonsyn_miss,
            nonsyn_miss_prev: misses.nonsyn_miss_prev,
            pools,
            lingering,
            shadow: s
                .ctl
                .shadows
                .get(name)
                .map(|spec| crate::shadow::ShadowStatus {
                    spec: spec.clone(),
                    report: s.ctl.shadow_reports.get(name).cloned().unwrap_or_default(),
                }),
            fleet: s
                .fleet
                .as_ref()
                .map(|f| crate::fleet::agent::status(f, name, spec)),
            bgp: s.bgp.as_ref().map(|_| s.bgp_status.clone()),
            announced: s
                .bgp
                .as_ref()
                .map(|_| s.bgp_status.announced.contains(&spec.vip.ip())),
        });
    }
    Ok(out)
}

/// How long the CLI waits for the daemon's answer.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends one request to the daemon and returns its response.
pub fn call(api: &Path, cmd: Command) -> Result<Response> {
    call_with_timeout(api, cmd, CALL_TIMEOUT)
}

/// The same, waiting at most `timeout` for the answer.
pub fn call_with_timeout(
    api: &Path,
    cmd: Command,
    timeout: std::time::Duration,
) -> Result<Response> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(api).map_err(|e| {
        anyhow!("cannot reach the switch daemon at {} ({e}); is `switch daemon` running? (--api or SWITCH_API)", api.display())
    })?;
    let mut line = serde_json::to_vec(&Request {
        v: api::VERSION,
        cmd,
    })?;
    line.push(b'\n');
    // A daemon that hangs must not hang the operator's shell.
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&line)?;
    let mut reader = std::io::BufReader::new(stream);
    let mut buf = String::new();
    reader.read_line(&mut buf).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            anyhow!(
                "the switch daemon at {} did not answer within {}s",
                api.display(),
                CALL_TIMEOUT.as_secs()
            )
        } else {
            anyhow!("reading the daemon's answer: {e}")
        }
    })?;
    serde_json::from_str(&buf).map_err(|e| anyhow!("bad response from daemon: {e}"))
}
