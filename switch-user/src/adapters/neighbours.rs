//! Keeps every backend's next hop resolved, so the data plane forwards from
//! the first packet of a service in every mode and keeps forwarding when
//! neighbour entries age (XDP traffic never confirms them).
//!
//! For each backend the kernel's route gives the next hop (the backend
//! itself or a gateway) and its device; that next hop gets a kernel-managed
//! neighbour entry (`NTF_EXT_MANAGED`: the kernel resolves it and keeps it
//! resolved without any traffic). A periodic reconcile puts back entries
//! that were flushed or failed. iproute2 does the netlink talking.
//!
//! The same round yields each backend's resolved next hop (egress device,
//! both MACs, MTU): the daemon caches it in the `NEXTHOPS` map so the data
//! plane forwards without a route lookup.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::Deserialize;
use switch_common::{NEXTHOP_VALID, NextHop};

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
    /// Next hops that did not resolve when last added.
    slow: BTreeSet<Hop>,
    /// The neighbour table as last read.
    table: BTreeMap<(IpAddr, String), Entry>,
    /// Devices (index, MTU, MAC), read with the routes.
    links: BTreeMap<String, Link>,
}

#[derive(Deserialize)]
struct RouteJson {
    #[serde(default)]
    dst: Option<IpAddr>,
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
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

fn ip(args: &[&str]) -> Option<Vec<u8>> {
    let out = crate::process::run("ip", args, None, IP_TIMEOUT)
        .map_err(|e| tracing::warn!("{e:#}"))
        .ok()?;
    out.status.success().then_some(out.stdout)
}

/// How long one `ip` run may take (a batch of thousands of lookups takes
/// well under a second).
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `script` through one `ip -batch`: each line one command; lines
/// that fail are skipped (`-force`). Input and output flow at once, so a
/// script of any length cannot fill both pipes.
fn ip_batch(script: &str) -> Option<Vec<u8>> {
    if script.is_empty() {
        return Some(Vec::new());
    }
    crate::process::run(
        "ip",
        &["-j", "-force", "-batch", "-"],
        Some(script.as_bytes()),
        IP_TIMEOUT,
    )
    .map_err(|e| tracing::warn!("{e:#}"))
    .ok()
    .map(|o| {
        let err = String::from_utf8_lossy(&o.stderr);
        if let Some(first) = err.lines().next() {
            tracing::debug!(
                "ip -batch: {first} ({} lines of errors)",
                err.lines().count()
            );
        }
        o.stdout
    })
}

/// The next hop towards each of `addrs` (local and unroutable ones are left
/// out), from one `ip -batch` run: a thousand backends cost one process.
fn routes(addrs: impl IntoIterator<Item = IpAddr>) -> BTreeMap<IpAddr, Hop> {
    let script: String = addrs
        .into_iter()
        .map(|a| format!("route get {a}\n"))
        .collect();
    let Some(out) = ip_batch(&script) else {
        return BTreeMap::new();
    };
    // One JSON array per command that succeeded, each naming its `dst`.
    serde_json::Deserializer::from_slice(&out)
        .into_iter::<Vec<RouteJson>>()
        .filter_map(|r| r.ok()?.into_iter().next())
        .filter_map(|r| {
            let dst = r.dst?;
            if r.kind.as_deref() == Some("local") {
                return None;
            }
            let dev = r.dev.filter(|d| d != "lo")?;
            Some((
                dst,
                Hop {
                    via: r.gateway.unwrap_or(dst),
                    dev,
                },
            ))
        })
        .collect()
}

/// What the kernel's neighbour table says of one entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Entry {
    /// Has a link-layer address: the data plane can use it.
    Usable([u8; 6]),
    /// Being resolved (INCOMPLETE, or managed and waiting).
    Pending,
    Failed,
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[derive(Default)]
struct Link {
    ifindex: u32,
    mtu: u32,
    mac: [u8; 6],
}

#[derive(Deserialize)]
struct LinkJson {
    ifindex: u32,
    ifname: String,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    address: Option<String>,
}

fn links() -> BTreeMap<String, Link> {
    ip(&["-j", "link", "show"])
        .and_then(|o| serde_json::from_slice::<Vec<LinkJson>>(&o).ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|l| {
            let mac = l.address.as_deref().and_then(parse_mac)?;
            Some((
                l.ifname,
                Link {
                    ifindex: l.ifindex,
                    mtu: l.mtu,
                    mac,
                },
            ))
        })
        .collect()
}

fn table() -> BTreeMap<(IpAddr, String), Entry> {
    ip(&["-j", "neigh", "show"])
        .and_then(|o| serde_json::from_slice::<Vec<NeighJson>>(&o).ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| {
            let mac = n.lladdr.as_deref().and_then(parse_mac);
            let e = if n.state.iter().any(|s| s == "FAILED") {
                Entry::Failed
            } else if let Some(mac) = mac.filter(|_| !n.state.iter().any(|s| s == "INCOMPLETE")) {
                Entry::Usable(mac)
            } else {
                Entry::Pending
            };
            n.dev.map(|d| ((n.dst, d), e))
        })
        .collect()
}

impl Neighbours {
    /// One round: routes of new backends (of all of them when due), then
    /// every next hop without a usable entry gets a managed one. Returns
    /// once new entries have resolved (at most ~100 ms), so a service can
    /// forward from its first packet.
    pub fn reconcile(&mut self, backends: BTreeSet<IpAddr>) {
        let due = self.routes_at.is_none_or(|t| t.elapsed() >= ROUTES_EVERY);
        if due {
            self.hops = routes(backends.iter().copied());
            self.links = links();
            self.routes_at = Some(Instant::now());
        } else if backends != self.backends {
            self.links = links();
            self.hops.retain(|b, _| backends.contains(b));
            let new: Vec<IpAddr> = backends
                .iter()
                .filter(|b| !self.hops.contains_key(b))
                .copied()
                .collect();
            self.hops.extend(routes(new));
        }
        self.backends = backends;
        if self.hops.is_empty() {
            return;
        }
        let wanted: BTreeSet<Hop> = self.hops.values().cloned().collect();
        let now = table();
        self.table = now.clone();
        let state = |t: &BTreeMap<(IpAddr, String), Entry>, h: &Hop| {
            t.get(&(h.via, h.dev.clone())).copied()
        };
        // Absent (never added, flushed, garbage-collected) or failed: (re)add.
        let missing: Vec<Hop> = wanted
            .iter()
            .filter(|h| matches!(state(&now, h), None | Some(Entry::Failed)))
            .cloned()
            .collect();
        // One `ip` for all of them: thousands of backends on the segment
        // must not cost thousands of processes.
        let script: String = missing
            .iter()
            .map(|h| format!("neigh replace {} dev {} managed\n", h.via, h.dev))
            .collect();
        if ip_batch(&script).is_some() {
            self.added += missing.len() as u64;
            tracing::debug!(n = missing.len(), "managed neighbour entries added");
        }
        // Wait briefly for new entries to resolve, but not again for a next
        // hop that did not answer last time (a backend that is not there
        // must not slow every command down).
        let waiting: Vec<&Hop> = missing.iter().filter(|h| !self.slow.contains(*h)).collect();
        let mut t = now;
        for _ in 0..10 {
            if waiting.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            t = table();
            if waiting
                .iter()
                .all(|h| matches!(state(&t, h), Some(Entry::Usable(_))))
            {
                break;
            }
        }
        for h in &wanted {
            if matches!(state(&t, h), Some(Entry::Usable(_))) {
                self.slow.remove(h);
            } else if missing.contains(h) {
                self.slow.insert(h.clone());
            }
        }
        self.table = t;
    }

    /// Every backend whose next hop is resolved: device, MACs, MTU.
    pub fn resolved(&self) -> BTreeMap<IpAddr, NextHop> {
        let links = &self.links;
        self.hops
            .iter()
            .filter_map(|(backend, hop)| {
                let Some(Entry::Usable(dmac)) = self.table.get(&(hop.via, hop.dev.clone())) else {
                    return None;
                };
                let link = links.get(&hop.dev)?;
                Some((
                    *backend,
                    NextHop {
                        ifindex: link.ifindex,
                        mtu: link.mtu.min(u16::MAX as u32) as u16,
                        flags: NEXTHOP_VALID,
                        dmac: *dmac,
                        smac: link.mac,
                    },
                ))
            })
            .collect()
    }

    /// Looks every backend's route up again on the next round (the kernel
    /// said a route or link changed).
    pub fn invalidate_routes(&mut self) {
        self.routes_at = None;
    }

    /// The next hops being kept, for status.
    pub fn hops(&self) -> &BTreeMap<IpAddr, Hop> {
        &self.hops
    }
}

/// Whether a routing rule (IPv4 or IPv6) selects by source or destination
/// port; `None` when iproute2 cannot say.
pub fn rules_select_by_port() -> Option<bool> {
    let mut any = false;
    for family in ["-4", "-6"] {
        any |= by_port(&ip(&["-j", family, "rule", "show"])?)?;
    }
    Some(any)
}

/// `ip -j rule show` output: does a rule name a port (`sport`, `dport`,
/// or a range `sport_start`...)?
fn by_port(json: &[u8]) -> Option<bool> {
    let rules: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(json).ok()?;
    Some(rules.iter().any(|r| {
        r.keys()
            .any(|k| k.starts_with("sport") || k.starts_with("dport"))
    }))
}

#[cfg(test)]
mod tests {
    use super::by_port;

    #[test]
    fn port_rules_are_recognised_in_iproute2_json() {
        let plain = br#"[{"priority":0,"src":"all","table":"local"},{"priority":32766,"src":"all","table":"main"}]"#;
        assert_eq!(by_port(plain), Some(false));
        let proto = br#"[{"priority":100,"src":"all","ipproto":"tcp","table":"102"}]"#;
        assert_eq!(by_port(proto), Some(false));
        let dport = br#"[{"priority":32765,"src":"all","dport":80,"table":"100"}]"#;
        assert_eq!(by_port(dport), Some(true));
        let range = br#"[{"priority":32764,"src":"all","sport_start":1000,"sport_end":2000,"table":"101"}]"#;
        assert_eq!(by_port(range), Some(true));
        assert_eq!(by_port(b"not json"), None);
    }
}
