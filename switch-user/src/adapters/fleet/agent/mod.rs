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

mod command;
mod follow;
mod lead;
mod report;

pub(crate) use command::{audit, command, resign};
use follow::*;
use lead::*;
pub use report::status;
use report::*;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};
use etcd_client::{EventType, WatchOptions};

pub use super::host::{Host, HostMaps, Parts};
pub use super::state::FleetState;
use super::{
    HostReport,
    store::{Change, Refused, Snapshot, Store},
};
use crate::{
    engine::clock::now_ms,
    engine::controller::replica::{FleetHealth, NoMaps, ServiceRecord},
    model::api::{Actor, Command, Event, Response},
    model::config::ServiceConfig,
};

/// How often a host publishes its report.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// The leader's round (strategy ticks) and the heartbeat's pace.
const ROUND: Duration = Duration::from_millis(250);
/// The leader's housekeeping: how often, and the history events kept per
/// service (about 300 bytes each: `switch history` reads them in one answer).
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);
const HISTORY_KEEP: usize = 2_000;

/// The daemon the agent runs in, seen through the seam it owns.
pub type SharedRef = Arc<Mutex<dyn Host>>;

/// Runs `f` on the daemon's parts under its lock; when `f` committed a
/// change of the controller, the daemon follows it (shadows, state file)
/// once `f` lets go.
fn with<T>(shared: &SharedRef, f: impl FnOnce(&mut Parts<'_>) -> T) -> Result<T> {
    let mut g = shared.lock().map_err(|_| anyhow!("state lock poisoned"))?;
    let (out, committed) = {
        let mut parts = g
            .parts()
            .ok_or_else(|| anyhow!("this host is not in fleet mode"))?;
        let out = f(&mut parts);
        (out, parts.committed)
    };
    if committed {
        g.committed();
    }
    Ok(out)
}

async fn blocking<T: Send + 'static>(
    shared: &SharedRef,
    f: impl FnOnce(&mut Parts<'_>) -> T + Send + 'static,
) -> Result<T> {
    let s = shared.clone();
    tokio::task::spawn_blocking(move || with(&s, f)).await?
}

/// Marks etcd reachable or not; cut off, local probes may take backends out.
fn set_reachable(s: &mut Parts<'_>, reachable: bool) {
    let f = &mut *s.fleet;
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
    if let Err(e) = s.ctl.set_fleet_health(&mut *s.dp, fh) {
        tracing::warn!("fleet: health: {e:#}");
    }
}

pub(crate) fn start(shared: SharedRef, seed_services: Vec<ServiceConfig>) {
    tokio::spawn(sync_loop(shared.clone(), seed_services));
    tokio::spawn(heartbeat_loop(shared));
}
