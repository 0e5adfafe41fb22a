//! What this host knows of the fleet: its place in it, the leader, the
//! other hosts' reports, the health verdict and the ledger.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Instant};

use super::{HostReport, Ledger, Verdict, store::Store};
use crate::{engine::controller::replica::FleetHealth, model::config::FleetConfig};

/// What this host knows of the fleet.
pub struct FleetState {
    pub cfg: FleetConfig,
    pub fingerprint: String,
    pub epoch: String,
    /// See `HostReport::identity`.
    pub identity: String,
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
    /// When this host, leading, last pruned the history.
    pub housekeeping: Option<Instant>,
    /// Wakes the heartbeat at once when the leader key goes (a campaign
    /// should not wait for the next round).
    pub wake: Arc<tokio::sync::Notify>,
    /// Service records read from etcd and not applied (unreadable, or
    /// failing the validation every command gets), by service: the key and
    /// why. The host keeps the last good state of those services.
    pub rejected: BTreeMap<String, String>,
    /// Records rejected since the start.
    pub rejected_total: u64,
    /// Why etcd does not talk to this host now (TLS, password,
    /// permissions, unreachable), if it does not.
    pub etcd_error: Option<String>,
}

impl FleetState {
    pub fn new(cfg: FleetConfig, fingerprint: String, epoch: String) -> Self {
        FleetState {
            cfg,
            fingerprint,
            epoch,
            identity: String::new(),
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
            rejected: BTreeMap::new(),
            rejected_total: 0,
            etcd_error: None,
        }
    }

    /// A record of `name` (at `rev`) that is not applied, and why (logged
    /// once per reason). Its revision becomes the base of the next command
    /// on that service, so a good one can replace it.
    pub(super) fn reject(&mut self, name: &str, why: String, rev: i64) {
        self.rejected_total += 1;
        if rev > 0 {
            self.revisions.insert(name.to_string(), rev);
        }
        if self.rejected.get(name) != Some(&why) {
            tracing::error!("fleet: not applying {why}; keeping the last good state of {name}");
        }
        self.rejected.insert(name.to_string(), why);
    }

    pub(super) fn fleet_health(&self) -> FleetHealth {
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
