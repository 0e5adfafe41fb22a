//! Fleet mode: several switch hosts agree through etcd.
//!
//! - **Desired state**: one etcd key per service (`services/NAME`) holding a
//!   [`ServiceRecord`](crate::engine::controller::replica::ServiceRecord); its revision is the
//!   service's generation. Every host watches the keys and adopts them
//!   (`Controller::adopt`), and caches them in `state.json`, so it restarts
//!   and forwards without etcd. A command on any host runs on a copy of the
//!   controller and becomes one etcd transaction, conditioned on the
//!   revisions it was validated against.
//! - **One leader** (`leader`, a key on the host's lease): only it ticks
//!   strategies, releases lingering backends, ends shadows and publishes the
//!   fleet's health verdict. Each of its writes is fenced on its leader key.
//! - **Signals**: every host publishes a [`HostReport`] about once a second
//!   under its lease (`hosts/NAME`); the leader folds the counters into a
//!   [`Ledger`] (kept in etcd, so a new leader goes on from it) and judges
//!   health by majority ([`verdicts`]).
//!
//! This module is the pure part (keys, reports, sums, verdicts), tested
//! without etcd; `store` speaks to etcd; `agent` runs it in the daemon.

pub mod agent;
pub mod host;
pub mod state;
pub mod store;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use serde::{Deserialize, Serialize};

use crate::{
    engine::controller::Controller,
    engine::strategy::{BackendSignals, PoolSignals, Signals},
};

/// Where everything lives under the fleet's prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn services(&self) -> String {
        format!("{}/services/", self.prefix)
    }
    pub fn service(&self, name: &str) -> String {
        format!("{}/services/{name}", self.prefix)
    }
    pub fn hosts(&self) -> String {
        format!("{}/hosts/", self.prefix)
    }
    pub fn host(&self, name: &str) -> String {
        format!("{}/hosts/{name}", self.prefix)
    }
    pub fn leader(&self) -> String {
        format!("{}/leader", self.prefix)
    }
    pub fn health(&self) -> String {
        format!("{}/health", self.prefix)
    }
    pub fn ledger(&self) -> String {
        format!("{}/ledger", self.prefix)
    }
    pub fn seed(&self) -> String {
        format!("{}/seed", self.prefix)
    }
    /// Set once, when the first host wrote its config's services.
    pub fn seeded(&self) -> String {
        format!("{}/seeded", self.prefix)
    }
    pub fn history(&self, service: &str) -> String {
        format!("{}/history/{service}/", self.prefix)
    }
    /// Keys sort by time, then host: a prefix read is the history in order.
    pub fn event(&self, service: &str, at_ms: u64, host: &str, n: usize) -> String {
        format!("{}{at_ms:016}-{host}-{n}", self.history(service))
    }
    /// What a key under the prefix is.
    pub fn classify<'a>(&self, key: &'a str) -> Option<(&'static str, &'a str)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        for kind in ["services/", "hosts/", "history/"] {
            if let Some(name) = rest.strip_prefix(kind) {
                return Some((&kind[..kind.len() - 1], name));
            }
        }
        match rest {
            "leader" => Some(("leader", "")),
            "health" => Some(("health", "")),
            "ledger" => Some(("ledger", "")),
            _ => None,
        }
    }
}

/// The seed's fingerprint: enough to tell two seeds apart, not to recover
/// one (FNV-1a over a tag and the seed, folded many times).
pub fn fingerprint(seed: u32) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for round in 0..4096u32 {
        for b in b"switch-seed-v1"
            .iter()
            .chain(&seed.to_le_bytes())
            .chain(&round.to_le_bytes())
        {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Per service, per pool: [new flows, RSTs, SYN-ACKs], cumulative.
pub type PoolCounters = BTreeMap<String, BTreeMap<String, [u64; 3]>>;

/// What one host says about itself, about once a second, under its lease.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    /// Which machine and data plane this is (machine id and pin
    /// directory): a second host configured with a name a live host holds
    /// is told apart from that host restarting.
    #[serde(default)]
    pub identity: String,
    /// Changes when the host's counters start again from zero (its maps
    /// were made anew), so a restart never looks like a negative rate.
    pub epoch: String,
    pub at_ms: u64,
    /// The etcd revision whose desired state this host has applied.
    pub applied: i64,
    /// Per service, the record revision (generation) it forwards with.
    #[serde(default)]
    pub revisions: BTreeMap<String, i64>,
    /// The revision of the fleet's health verdict it builds tables with.
    #[serde(default)]
    pub health_revision: i64,
    #[serde(default)]
    pub pools: PoolCounters,
    /// Live flows per service and backend, counted at `flows_counted_ms`.
    #[serde(default)]
    pub flows: BTreeMap<String, BTreeMap<SocketAddr, u64>>,
    #[serde(default)]
    pub flows_counted_ms: u64,
    /// This host's own probes (backends with health checks).
    #[serde(default)]
    pub health: BTreeMap<SocketAddr, bool>,
}

/// The fleet's counters, made monotonic across hosts that restart or die:
/// the last figures of every (host, epoch), plus those of epochs that ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    pub hosts: BTreeMap<String, LedgerEntry>,
    #[serde(default)]
    pub retired: PoolCounters,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub epoch: String,
    pub pools: PoolCounters,
}

fn add(into: &mut PoolCounters, from: &PoolCounters) {
    for (svc, pools) in from {
        for (pool, c) in pools {
            let e = into
                .entry(svc.clone())
                .or_default()
                .entry(pool.clone())
                .or_default();
            for i in 0..3 {
                e[i] += c[i];
            }
        }
    }
}

impl Ledger {
    /// Takes a host's report; true when the sums changed.
    pub fn update(&mut self, r: &HostReport) -> bool {
        match self.hosts.get_mut(&r.host) {
            Some(e) if e.epoch == r.epoch => {
                let mut changed = false;
                for (svc, pools) in &r.pools {
                    for (pool, c) in pools {
                        let mine = e
                            .pools
                            .entry(svc.clone())
                            .or_default()
                            .entry(pool.clone())
                            .or_default();
                        for i in 0..3 {
                            // Counters only grow within an epoch.
                            if c[i] > mine[i] {
                                mine[i] = c[i];
                                changed = true;
                            }
                        }
                    }
                }
                changed
            }
            Some(e) => {
                // A new epoch: the old one's figures stay in the sums.
                let old = std::mem::take(&mut e.pools);
                add(&mut self.retired, &old);
                e.epoch = r.epoch.clone();
                e.pools = r.pools.clone();
                true
            }
            None => {
                self.hosts.insert(
                    r.host.clone(),
                    LedgerEntry {
                        epoch: r.epoch.clone(),
                        pools: r.pools.clone(),
                    },
                );
                true
            }
        }
    }

    pub fn totals(&self) -> PoolCounters {
        let mut t = self.retired.clone();
        for e in self.hosts.values() {
            add(&mut t, &e.pools);
        }
        t
    }
}

/// The fleet's verdict on one backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub healthy: bool,
    /// When the verdict last changed (ms).
    pub since_ms: u64,
    /// Live hosts that say it is down, out of `hosts`.
    pub down: u32,
    pub hosts: u32,
}

/// Down when a majority of live hosts say so; a backend one host alone
/// cannot reach stays in.
pub fn verdicts(
    prev: &BTreeMap<SocketAddr, Verdict>,
    live: &[&HostReport],
    now: u64,
) -> BTreeMap<SocketAddr, Verdict> {
    let hosts = live.len() as u32;
    let mut down: BTreeMap<SocketAddr, u32> = BTreeMap::new();
    for r in live {
        for (addr, ok) in &r.health {
            *down.entry(*addr).or_default() += u32::from(!ok);
        }
    }
    down.into_iter()
        .map(|(addr, n)| {
            let healthy = n * 2 <= hosts;
            let since_ms = match prev.get(&addr) {
                Some(p) if p.healthy == healthy => p.since_ms,
                _ => now,
            };
            (
                addr,
                Verdict {
                    healthy,
                    since_ms,
                    down: n,
                    hosts,
                },
            )
        })
        .collect()
}

/// What the leader's strategies see: the fleet's counters, health verdict
/// and live flows, and how old the oldest report is.
pub fn signals(
    ctl: &Controller,
    totals: &PoolCounters,
    live: &[&HostReport],
    verdict: &BTreeMap<SocketAddr, Verdict>,
) -> BTreeMap<String, Signals> {
    let oldest = live
        .iter()
        .min_by_key(|r| r.at_ms)
        .map(|r| (r.at_ms, r.host.clone()));
    let counted = live.iter().map(|r| r.flows_counted_ms).min().unwrap_or(0);
    let mut all = BTreeMap::new();
    for (name, spec) in &ctl.services {
        let mut pools = Signals::new();
        for p in &spec.pools {
            let c = totals
                .get(name)
                .and_then(|t| t.get(&p.name))
                .copied()
                .unwrap_or_default();
            let mut ps = PoolSignals {
                new_flows: c[0],
                rsts: c[1],
                synacks: c[2],
                as_of: oldest.clone(),
                ..Default::default()
            };
            for b in &p.backends {
                let a = b.addr();
                let v = verdict.get(&a);
                ps.backends.insert(
                    a,
                    BackendSignals {
                        healthy: v.is_none_or(|v| v.healthy),
                        healthy_since_ms: match v {
                            Some(v) if v.healthy => Some(v.since_ms),
                            Some(_) => None,
                            None => Some(0),
                        },
                        active_flows: live_flows(live, name, a),
                        flows_counted_ms: counted,
                    },
                );
            }
            pools.insert(p.name.clone(), ps);
        }
        all.insert(name.clone(), pools);
    }
    all
}

/// A backend's live flows summed over the live hosts.
pub fn live_flows(live: &[&HostReport], service: &str, addr: SocketAddr) -> u64 {
    live.iter()
        .filter_map(|r| r.flows.get(service).and_then(|f| f.get(&addr)))
        .sum()
}

/// The fleet's live flows of every lingering backend, by the local index
/// (what `Controller::settle_lingering` reads).
pub fn lingering_counts(ctl: &Controller, live: &[&HostReport]) -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    for (service, placed) in &ctl.programmer.services {
        for (addr, index) in &placed.lingering {
            out.insert(*index, live_flows(live, service, *addr));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(host: &str, epoch: &str, new: u64, rsts: u64) -> HostReport {
        HostReport {
            host: host.into(),
            epoch: epoch.into(),
            pools: [(
                "web".to_string(),
                [("green".to_string(), [new, rsts, new])].into(),
            )]
            .into(),
            ..Default::default()
        }
    }

    fn green(l: &Ledger) -> [u64; 3] {
        l.totals()["web"]["green"]
    }

    #[test]
    fn ledger_sums_hosts_and_never_goes_back() {
        let mut l = Ledger::default();
        assert!(l.update(&report("a", "1", 10, 1)));
        assert!(l.update(&report("b", "1", 5, 0)));
        assert_eq!(green(&l), [15, 1, 15]);
        // A stale (smaller) report within an epoch changes nothing.
        assert!(!l.update(&report("a", "1", 8, 1)));
        assert_eq!(green(&l), [15, 1, 15]);
        // Host a restarts with fresh maps: its old figures stay counted.
        assert!(l.update(&report("a", "2", 3, 0)));
        assert_eq!(green(&l), [18, 1, 18]);
        // Round trip through etcd's JSON.
        let back: Ledger = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn majority_of_live_hosts_decides_health() {
        let a: SocketAddr = "198.18.1.11:80".parse().unwrap();
        let mk = |h: &str, ok: bool| HostReport {
            host: h.into(),
            health: [(a, ok)].into(),
            ..Default::default()
        };
        let (x, y, z) = (mk("x", false), mk("y", true), mk("z", true));
        // One host of three cannot reach it: it stays in.
        let v = verdicts(&BTreeMap::new(), &[&x, &y, &z], 100);
        assert!(v[&a].healthy);
        assert_eq!((v[&a].down, v[&a].hosts), (1, 3));
        let y2 = mk("y", false);
        let v2 = verdicts(&v, &[&x, &y2, &z], 200);
        assert!(!v2[&a].healthy);
        assert_eq!(v2[&a].since_ms, 200);
        // Unchanged verdicts keep their time.
        let v3 = verdicts(&v2, &[&x, &y2, &z], 300);
        assert_eq!(v3[&a].since_ms, 200);
        // Half is not a majority.
        let v4 = verdicts(&v3, &[&x, &z], 400);
        assert!(v4[&a].healthy);
    }

    #[test]
    fn fingerprints_tell_seeds_apart_and_hide_them() {
        assert_eq!(fingerprint(7), fingerprint(7));
        assert_ne!(fingerprint(7), fingerprint(8));
        assert!(!fingerprint(0x1234_abcd).contains("1234abcd"));
    }

    #[test]
    fn keys_classify() {
        let k = Keys {
            prefix: "/switch".into(),
        };
        assert_eq!(k.classify(&k.service("web")), Some(("services", "web")));
        assert_eq!(k.classify(&k.host("sw-a")), Some(("hosts", "sw-a")));
        assert_eq!(k.classify(&k.leader()), Some(("leader", "")));
        assert_eq!(k.classify("/other/leader"), None);
        assert!(k.event("web", 5, "a", 0) > k.event("web", 4, "z", 9));
    }
}
