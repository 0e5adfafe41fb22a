//! `switch daemon`: loads or adopts the data plane, serves the API, and
//! persists desired state. Stopping it leaves the program attached and every
//! map pinned: forwarding goes on, and the next start adopts it all.

mod access;
mod announce;
mod connections;
mod fleet_host;
mod lock;
pub mod metrics;
mod network;
mod persist;
mod probing;
mod rates;
mod server;
mod shadows;
mod status;
mod tick;
mod watchdog;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result, anyhow};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    adapters::dataplane::{Capacity, Dataplane},
    adapters::health,
    adapters::privileges,
    adapters::prometheus,
    engine::controller::{Controller, replica::NoMaps},
    engine::programmer::Programmer,
    engine::strategy::{BackendSignals, Phase, PoolSignals, PromGate, Reading, Signals, Strategy},
    model::api::{self, BackendStatus, Command, PoolStatus, Request, Response, ServiceStatus},
    model::config::{AdminState, ConfigFile, DaemonConfig, HealthConfig},
};

use self::{
    access::{Access, Caller},
    announce::*,
    connections::*,
    network::*,
    persist::*,
    probing::*,
    rates::*,
    server::*,
    shadows::*,
    status::*,
    tick::*,
    watchdog::{Essential, check_lock},
};
pub use network::cache_nexthops;
pub use persist::{STATE_SCHEMA, now_ms, read_state, write_state};

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
    shadow: Arc<crate::adapters::shadow::Engine>,
    /// When each service's shadow (as the engine serves it) started.
    shadow_started: HashMap<String, u64>,
    /// Fleet mode: what this host knows of the fleet (None: single host).
    pub(crate) fleet: Option<crate::adapters::fleet::agent::FleetState>,
    /// With `[bgp]`: the BIRD that announces our VIPs (its own lock: asking
    /// BIRD runs `birdc`, which must not hold up the state).
    bgp: Option<Arc<Mutex<crate::adapters::bgp::Bird>>>,
    /// Sessions and announcements as last seen (for status).
    bgp_status: crate::model::bgp::BgpStatus,
    /// `switch fleet leave`: announce nothing (kept across restarts).
    left: bool,
    state_dir: PathBuf,
    pin_dir: PathBuf,
}

pub fn run(config_path: &Path, api_override: Option<PathBuf>) -> Result<()> {
    watchdog::exit_on_panic();
    watchdog::mark_start();
    let file = read_config(config_path, api_override)?;
    raise_fd_limit();
    let d = file.daemon.clone();
    // Groups resolved before anything is touched: a wrong name is a bad
    // config, not a daemon that serves nobody.
    let host = match &file.fleet {
        Some(f) => f.host.clone(),
        None => access::host_name(),
    };
    let access = Access::new(&d, host.clone())?;
    std::fs::create_dir_all(&d.state_dir)
        .with_context(|| format!("cannot create state dir {}", d.state_dir.display()))?;
    // Held until the process ends: before anything is read or written.
    let _state_lock = lock::hold(&d.state_dir, "state_dir")?;
    std::fs::create_dir_all(&d.pin_dir)
        .with_context(|| format!("cannot create pin dir {}", d.pin_dir.display()))?;
    let _pin_lock = lock::hold(&d.pin_dir, "pin_dir")?;
    let state_file = d.state_dir.join("state.json");
    if file.fleet.is_none() {
        // A single host's timers run on engine time (see engine::clock),
        // continuing the time line saved with the state.
        let saved = std::fs::read(&state_file)
            .ok()
            .and_then(|b| read_anchor(&b));
        let c = crate::engine::clock::Clock::start(
            saved.as_ref(),
            &crate::engine::clock::boot_id(),
            crate::engine::clock::readings(),
        );
        crate::engine::clock::use_engine_time(c);
    }
    let capacity = Capacity {
        services: d.max_services,
        backends: d.max_backends,
        flows: d.max_flows,
        half_open: (d.max_flows / 4).max(1024),
        // One live table per service, plus spares for changes in flight
        // and for cohort tables.
        tables: d.max_services + 64 + crate::engine::maps::HISTORY_TABLES,
    };
    let mut dp = Dataplane::load(Some(&d.pin_dir), capacity)?;
    // Start-up's own runtime, dropped before serving: threads its blocking
    // pool starts now would keep every capability (they are per thread).
    let boot = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut ctl = restore_controller(&boot, &file, &state_file, capacity)?;
    ctl.programmer.init(&mut dp, &d)?;
    let fleet = match &file.fleet {
        Some(f) => {
            ctl.fleet_health = Some(Default::default());
            Some(join_fleet(&boot, f, ctl.programmer.seed, &d.pin_dir)?)
        }
        None => None,
    };
    let started_by = api::Actor {
        uid: unsafe { libc::getuid() },
        user: access::user_name(unsafe { libc::getuid() }),
        host,
        via: "config (daemon start)".into(),
    };
    let nexthops = start_forwarding(&mut dp, &mut ctl, &file, fleet.is_some(), &started_by)?;
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
        shadow: Arc::new(crate::adapters::shadow::Engine::default()),
        shadow_started: HashMap::new(),
        fleet,
        bgp: match &file.bgp {
            // After the XDP program is attached: nothing is announced that
            // this host cannot forward.
            Some(b) => Some(Arc::new(Mutex::new(crate::adapters::bgp::Bird::start(
                b,
                &d.state_dir,
            )?))),
            None => None,
        },
        bgp_status: Default::default(),
        left: left_file(&d.state_dir).exists(),
        state_dir: d.state_dir.clone(),
        pin_dir: d.pin_dir.clone(),
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
    rt.block_on(serve(shared, d, access, seed_services))
}

/// Descriptors up to the hard limit (the unit sets it): health probes,
/// shadow replays and API callers all hold sockets.
fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn read_config(config_path: &Path, api_override: Option<PathBuf>) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("cannot read config {}", config_path.display()))?;
    let mut file =
        ConfigFile::parse(&text).with_context(|| format!("config {}", config_path.display()))?;
    if let Some(a) = api_override {
        file.daemon.api = a;
    }
    Ok(file)
}

/// The controller from `state.json` (a restart adopts it), or a new one;
/// with this start's seed and data-plane settings.
fn restore_controller(
    boot: &tokio::runtime::Runtime,
    file: &ConfigFile,
    state_file: &Path,
    capacity: Capacity,
) -> Result<Controller> {
    let d = &file.daemon;
    let restored = match std::fs::read(state_file) {
        Ok(bytes) => Some(
            read_state(&bytes).with_context(|| format!("state file {}", state_file.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).context("reading state file"),
    };
    let seed = match (&file.fleet, &d.seed, &restored) {
        // A fleet without a configured seed agrees on one through etcd.
        (Some(f), None, None) => boot.block_on(fleet_seed(f))?,
        _ => seed(d, restored.as_ref())?,
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
    // In a fleet a connection's replies may come back through a host that
    // never saw it (ECMP, static routes, a VRRP gateway: whatever announces
    // the VIP): nat replies are then recognised by the table.
    ctl.programmer.table_replies = file.fleet.as_ref().is_some_and(|f| f.replies_by_table);
    ctl.programmer.filters_open = true;
    // Test-only: the slot history off, to show what it protects (a
    // connection that changes host after a table change).
    ctl.programmer.slot_history = std::env::var_os("SWITCH_TEST_NO_SLOT_HISTORY").is_none();
    if !ctl.programmer.slot_history {
        tracing::warn!("SWITCH_TEST_NO_SLOT_HISTORY: previous owners are not kept");
    }
    Ok(ctl)
}

/// This host's fleet state. A host with another seed must not forward with
/// its own table: refused at once when etcd answers (later, if it does not
/// now).
fn join_fleet(
    boot: &tokio::runtime::Runtime,
    f: &crate::model::config::FleetConfig,
    seed: u32,
    pin_dir: &Path,
) -> Result<crate::adapters::fleet::agent::FleetState> {
    let fp = crate::adapters::fleet::fingerprint(seed);
    // This machine and data plane: a restart keeps it, another host with
    // the same `host` name does not.
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let identity = format!("{}:{}", machine.trim(), pin_dir.display());
    boot.block_on(async {
        if let Ok(Ok(store)) = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            crate::adapters::fleet::store::Store::connect(f),
        )
        .await
        {
            let checked = match store.check_seed(&fp).await {
                Ok(()) => store.check_host(&f.host, &identity).await,
                Err(e) => Err(e),
            };
            checked.or_else(|e| {
                if e.to_string().contains("refuses to join") {
                    Err(e)
                } else {
                    Ok(())
                }
            })?;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    let mut state = crate::adapters::fleet::agent::FleetState::new(f.clone(), fp, epoch(pin_dir));
    state.identity = identity;
    Ok(state)
}

/// The maps written (the config's services on a first start, the state's
/// otherwise), the program attached, the filters closed, and every
/// backend's next hop cached before the first packet.
fn start_forwarding(
    dp: &mut Dataplane,
    ctl: &mut Controller,
    file: &ConfigFile,
    fleet: bool,
    started_by: &api::Actor,
) -> Result<HashMap<u32, switch_common::NextHop>> {
    if fleet {
        // etcd is the source of truth; the cache forwards until it answers.
        ctl.reapply(dp)?;
    } else if ctl.services.is_empty() && !file.services.is_empty() {
        ctl.handle_as(
            dp,
            &Command::Apply {
                services: file.services.clone(),
            },
            now_ms(),
            started_by,
        )?;
    } else {
        ctl.reapply(dp)?;
    }
    for ifname in &file.daemon.interfaces {
        let mode = dp.attach(ifname)?;
        tracing::info!("attached to {ifname} ({mode:?})");
    }
    // Our program reads the filters now: this build's hash.
    ctl.programmer.close_filters(dp)?;
    let mut nexthops = HashMap::new();
    let resolved = resolve_neighbours(backend_ips(ctl));
    crate::adapters::dataplane::sync_nexthops(dp, &ctl.programmer, &resolved, &mut nexthops)?;
    Ok(nexthops)
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
async fn fleet_seed(f: &crate::model::config::FleetConfig) -> Result<u32> {
    let t = std::time::Instant::now();
    loop {
        match crate::adapters::fleet::store::Store::connect(f).await {
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
