//! Keeps every backend's next hop resolved, so the data plane forwards from
//! the first packet of a service in every mode and keeps forwarding when
//! neighbour entries age (XDP traffic never confirms them).
//!
//! For each backend the kernel's route gives the next hop (the backend
//! itself or a gateway) and its device; that next hop gets a kernel-managed
//! neighbour entry (`NTF_EXT_MANAGED`: the kernel resolves it and keeps it
//! resolved without any traffic). A periodic reconcile puts back entries
//! that were flushed or failed. iproute2 does the netlink talking.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use serde::Deserialize;

/// Routes are looked up again this often (and whenever the backends change).
const ROUTES_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hop {
    pub via: IpAddr,
    pub dev: String,
}

#[derive(Default)]
pub struct Neighbours {
    backends: BTreeSet<IpAddr>,
    hops: BTreeMap<IpAddr, Hop>,
    routes_at: Option<Instant>,
    /// Entries (re)added since the start, for the log and tests.
    pub added: u64,
}

#[derive(Deserialize)]
struct RouteJson {
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    dev: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct NeighJson {
    dst: IpAddr,
    #[serde(default)]
    dev: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

fn ip(args: &[&str]) -> Option<Vec<u8>> {
    let out = Command::new("ip").args(args).output().ok()?;
    out.status.success().then_some(out.stdout)
}

/// The next hop towards `addr`, or None when it is local or unroutable.
fn route(addr: IpAddr) -> Option<Hop> {
    let a = addr.to_string();
    let out = ip(&["-j", "route", "get", &a])?;
    let routes: Vec<RouteJson> = serde_json::from_slice(&out).ok()?;
    let r = routes.into_iter().next()?;
    if r.kind.as_deref().is_some_and(|k| k == "local") {
        return None;
    }
    let dev = r.dev?;
    if dev == "lo" {
        return None;
    }
    Some(Hop {
        via: r.gateway.unwrap_or(addr),
        dev,
    })
}

impl Neighbours {
    /// One round: routes when due, then every next hop that has no usable
    /// entry gets a managed one.
    pub fn reconcile(&mut self, backends: BTreeSet<IpAddr>) {
        let due = self
            .routes_at
            .is_none_or(|t| t.elapsed() >= ROUTES_EVERY);
        if due || backends != self.backends {
            self.hops = backends
                .iter()
                .filter_map(|b| route(*b).map(|h| (*b, h)))
                .collect();
            self.backends = backends;
            self.routes_at = Some(Instant::now());
        }
        if self.hops.is_empty() {
            return;
        }
        let present: BTreeSet<(IpAddr, String)> = ip(&["-j", "neigh", "show"])
            .and_then(|o| serde_json::from_slice::<Vec<NeighJson>>(&o).ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|n| !n.state.iter().any(|s| s == "FAILED"))
            .filter_map(|n| n.dev.map(|d| (n.dst, d)))
            .collect();
        let wanted: BTreeSet<&Hop> = self.hops.values().collect();
        for hop in wanted {
            if present.contains(&(hop.via, hop.dev.clone())) {
                continue;
            }
            let via = hop.via.to_string();
            if ip(&["neigh", "replace", &via, "dev", &hop.dev, "managed"]).is_some() {
                self.added += 1;
                tracing::debug!(via = %hop.via, dev = %hop.dev, "managed neighbour entry added");
            } else {
                tracing::warn!(via = %hop.via, dev = %hop.dev, "cannot add a managed neighbour entry");
            }
        }
    }

    /// The next hops being kept, for status.
    pub fn hops(&self) -> &BTreeMap<IpAddr, Hop> {
        &self.hops
    }
}
