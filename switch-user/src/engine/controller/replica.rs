//! The controller as a replica of a fleet's desired state.
//!
//! In fleet mode a command or a strategy step does not write the maps: it
//! runs on a copy of the controller against [`NoMaps`] (so it is validated
//! and planned exactly as on a single host), the services it changed are
//! taken from the copy as [`ServiceRecord`]s and written to etcd, and every
//! host — the one that ran the command too — *adopts* the records it sees
//! through its watch. So there is one path to the maps on every host:
//! `adopt` → `Programmer::apply`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::{
    engine::controller::{Controller, Lingering},
    engine::maps::Maps,
    engine::strategy::Strategy,
    model::config::ServiceConfig,
    model::shadow::ShadowSpec,
};

/// Everything the fleet agrees on about one service: one etcd key, whose
/// revision is the service's generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub spec: ServiceConfig,
    /// The running or last strategy, with its progress (step, when the
    /// step began, baselines, paused): a new leader goes on from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<BTreeMap<String, u32>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lingering: BTreeMap<SocketAddr, Lingering>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSpec>,
    /// The spec before the last change. A host that did not see that change
    /// (it was down, or is new) builds this first, so its previous table —
    /// where a moved connection's slot history points — is the same as on
    /// every other host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<ServiceConfig>,
}

/// A record read from etcd, checked as a command's result is: its name,
/// its spec and the previous one (addresses, ports, weights, pools, modes,
/// names, sizes), fullnat refused in a fleet, and its strategy's durations.
/// Anyone who can write to etcd could otherwise send a VIP anywhere.
pub fn check_record(name: &str, r: &ServiceRecord) -> Result<()> {
    if r.spec.name != name {
        anyhow::bail!("the record under {name:?} is for service {:?}", r.spec.name);
    }
    for (what, spec) in [("spec", Some(&r.spec)), ("previous", r.previous.as_ref())] {
        let Some(spec) = spec else { continue };
        spec.validate()
            .map_err(|e| anyhow::anyhow!("{what}: {e:#}"))?;
        if spec.mode == crate::model::config::ForwardMode::Fullnat {
            anyhow::bail!("{what}: {}", crate::model::config::FULLNAT_IN_FLEET);
        }
        if spec.vip != r.spec.vip || spec.protocol != r.spec.protocol {
            anyhow::bail!("{what}: a service's VIP cannot change");
        }
    }
    if let Some(sh) = &r.shadow {
        if r.spec.pool(&sh.to).is_none() {
            anyhow::bail!("shadow: no pool named {:?}", sh.to);
        }
        if sh.sample > 65_536
            || sh.max_sessions > crate::model::limits::MAX_SHADOW_SESSIONS
            || sh.max_buffer > crate::model::limits::MAX_SHADOW_BUFFER
        {
            anyhow::bail!("shadow: sample, sessions or buffer past its ceiling");
        }
    }
    Ok(())
}

/// The fleet's word on backend health, as this host last heard it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetHealth {
    /// Backends the fleet says are down (a majority of live hosts).
    pub down: BTreeSet<SocketAddr>,
    /// Backends the fleet has judged at all; others follow local probes.
    pub judged: BTreeSet<SocketAddr>,
    /// Whether etcd answers. Cut off, a host may take a backend out on its
    /// own probes, never put one back.
    pub reachable: bool,
}

impl FleetHealth {
    /// What the tables leave out: the fleet's verdict, plus local verdicts
    /// for backends it has not judged, plus every local "down" while etcd
    /// is out of reach.
    pub fn unhealthy(&self, local: &BTreeSet<SocketAddr>) -> BTreeSet<SocketAddr> {
        let mut out = self.down.clone();
        for a in local {
            if !self.reachable || !self.judged.contains(a) {
                out.insert(*a);
            }
        }
        out
    }
}

/// Maps that take every write and keep nothing: a command's trial run.
pub struct NoMaps;

impl Maps for NoMaps {
    fn set_config(&mut self, _: &switch_common::Config) -> Result<()> {
        Ok(())
    }
    fn write_table(&mut self, _: u32, _: &switch_common::Table) -> Result<()> {
        Ok(())
    }
    fn set_service(
        &mut self,
        _: &switch_common::ServiceKey,
        _: &switch_common::Service,
    ) -> Result<()> {
        Ok(())
    }
    fn remove_service(&mut self, _: &switch_common::ServiceKey) -> Result<()> {
        Ok(())
    }
    fn set_backend(&mut self, _: u32, _: &switch_common::Backend) -> Result<()> {
        Ok(())
    }
    fn set_nexthop(&mut self, _: u32, _: &switch_common::NextHop) -> Result<()> {
        Ok(())
    }
    fn set_reply_filter(&mut self, _: &switch_common::AddrFilter) -> Result<()> {
        Ok(())
    }
    fn set_vip_filter(&mut self, _: &switch_common::AddrFilter) -> Result<()> {
        Ok(())
    }
    fn set_shadow(&mut self, _: u32, _: u32) -> Result<()> {
        Ok(())
    }
    fn set_real(&mut self, _: &switch_common::RealKey, _: &switch_common::Real) -> Result<()> {
        Ok(())
    }
    fn remove_real(&mut self, _: &switch_common::RealKey) -> Result<()> {
        Ok(())
    }
    fn set_cohort(&mut self, _: u32, _: [u8; 16], _: u32, _: bool) -> Result<()> {
        Ok(())
    }
}

impl Controller {
    /// The service as the fleet stores it (None: no such service).
    pub fn record_of(&self, name: &str) -> Option<ServiceRecord> {
        let spec = self.services.get(name)?.clone();
        Some(ServiceRecord {
            spec,
            strategy: self.strategies.get(name).cloned(),
            undo: self.undo.get(name).cloned(),
            lingering: self.lingering.get(name).cloned().unwrap_or_default(),
            shadow: self.shadows.get(name).cloned(),
            previous: self.previous.get(name).cloned(),
        })
    }

    /// The records that differ between `self` and `next` (None: removed).
    pub fn changed_records(&self, next: &Controller) -> BTreeMap<String, Option<ServiceRecord>> {
        let names: BTreeSet<&String> = self.services.keys().chain(next.services.keys()).collect();
        names
            .into_iter()
            .filter_map(|n| {
                let (a, mut b) = (self.record_of(n), next.record_of(n));
                // A new spec: the one it replaces becomes the previous.
                if let (Some(a), Some(b)) = (&a, &mut b)
                    && a.spec != b.spec
                {
                    b.previous = Some(a.spec.clone());
                }
                (a != b).then(|| (n.clone(), b))
            })
            .collect()
    }

    /// Makes the service what the fleet says: the maps first (the same
    /// `Programmer::apply` as every command), then the state. Lingering
    /// backends the record no longer holds are released. True when
    /// anything changed. One piece: the order of its writes is the point.
    pub fn adopt(
        &mut self,
        maps: &mut dyn Maps,
        name: &str,
        record: Option<&ServiceRecord>,
    ) -> Result<bool> {
        if self.record_of(name).as_ref() == record {
            return Ok(false);
        }
        let mut programmer = self.programmer.clone();
        let Some(r) = record else {
            programmer.remove(maps, name)?;
            self.programmer = programmer;
            self.services.remove(name);
            self.strategies.remove(name);
            self.undo.remove(name);
            self.lingering.remove(name);
            self.shadows.remove(name);
            self.previous.remove(name);
            return Ok(true);
        };
        let unhealthy = self.unhealthy();
        // Missed the last change (down, or new): build from the previous
        // spec first, so the previous table is the fleet's.
        if let Some(prev) = &r.previous
            && self.services.get(name) != Some(prev)
            && self.services.get(name) != Some(&r.spec)
        {
            programmer.apply(maps, prev, &unhealthy)?;
        }
        programmer.apply(maps, &r.spec, &unhealthy)?;
        let stale: Vec<SocketAddr> = programmer
            .services
            .get(name)
            .map(|p| {
                p.lingering
                    .keys()
                    .filter(|a| !r.lingering.contains_key(a))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        for addr in stale {
            programmer.release(maps, name, addr)?;
        }
        self.programmer = programmer;
        self.services.insert(name.to_string(), r.spec.clone());
        match &r.strategy {
            Some(st) => {
                let mut st = st.clone();
                // What only the leader's daemon knows (the latest Prometheus
                // answer) is not in the record: keep it.
                if let (Strategy::Canary(new), Some(Strategy::Canary(old))) =
                    (&mut st, self.strategies.get(name))
                {
                    new.reading = old.reading.clone();
                    new.waiting = old.waiting.clone();
                }
                self.strategies.insert(name.to_string(), st);
            }
            None => {
                self.strategies.remove(name);
            }
        }
        match &r.undo {
            Some(u) => self.undo.insert(name.to_string(), u.clone()),
            None => self.undo.remove(name),
        };
        if r.lingering.is_empty() {
            self.lingering.remove(name);
        } else {
            self.lingering.insert(name.to_string(), r.lingering.clone());
        }
        match &r.shadow {
            Some(s) => self.shadows.insert(name.to_string(), s.clone()),
            None => self.shadows.remove(name),
        };
        match &r.previous {
            Some(p) => self.previous.insert(name.to_string(), p.clone()),
            None => self.previous.remove(name),
        };
        Ok(true)
    }

    /// Takes the fleet's health verdict; services whose effective set of
    /// unhealthy backends changed get new tables.
    pub fn set_fleet_health(&mut self, maps: &mut dyn Maps, fleet: FleetHealth) -> Result<()> {
        let before = self.unhealthy();
        let old = self.fleet_health.replace(fleet);
        let after = self.unhealthy();
        if before == after {
            return Ok(());
        }
        let changed: BTreeSet<SocketAddr> = before.symmetric_difference(&after).copied().collect();
        let names: Vec<String> = self
            .services
            .iter()
            .filter(|(_, s)| {
                s.pools
                    .iter()
                    .any(|p| p.backends.iter().any(|b| changed.contains(&b.addr())))
            })
            .map(|(n, _)| n.clone())
            .collect();
        let mut programmer = self.programmer.clone();
        for name in names {
            if let Err(e) = programmer.apply(maps, &self.services[&name], &after) {
                self.fleet_health = old;
                return Err(e);
            }
        }
        self.programmer = programmer;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        format!("198.18.1.{i}:80").parse().unwrap()
    }

    #[test]
    fn local_probes_only_take_out_while_etcd_is_unreachable() {
        let local: BTreeSet<SocketAddr> = [addr(1), addr(3)].into();
        let mut f = FleetHealth {
            down: [addr(2)].into(),
            judged: [addr(1), addr(2)].into(),
            reachable: true,
        };
        // The fleet overrules this host on 1 (judged up), not on 3 (unjudged).
        assert_eq!(f.unhealthy(&local), [addr(2), addr(3)].into());
        f.reachable = false;
        assert_eq!(f.unhealthy(&local), [addr(1), addr(2), addr(3)].into());
        // Never back in on local probes: 2 stays out although locally fine.
        assert!(f.unhealthy(&BTreeSet::new()).contains(&addr(2)));
    }
}
