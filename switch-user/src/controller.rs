//! The daemon's brain, free of I/O: desired state, health, strategies, and
//! the commands that change them. A command is validated whole, applied
//! through the programmer, and recorded in the history; a refused command
//! changes nothing. Time comes in as a parameter, so all of it is tested
//! with a fake clock and fake maps.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::{
    api::{BackendAction, Command, Event},
    config::{AdminState, BackendConfig, CohortConfig, ConfigFile, ServiceConfig},
    health::Health,
    programmer::{Maps, Programmer},
    strategy::{BlueGreen, Canary, Change, Phase, Rolling, Signals, Strategy},
};

const HISTORY_LIMIT: usize = 10_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Controller {
    pub services: BTreeMap<String, ServiceConfig>,
    pub programmer: Programmer,
    pub history: Vec<Event>,
    /// The running or last strategy of each service.
    #[serde(default)]
    pub strategies: BTreeMap<String, Strategy>,
    /// Health of every backend of a service with health checks.
    #[serde(default)]
    pub health: BTreeMap<SocketAddr, Health>,
    /// Pool weights before the last flip or canary, for `rollback`.
    #[serde(default)]
    pub undo: BTreeMap<String, BTreeMap<String, u32>>,
}

impl Controller {
    pub fn new(programmer: Programmer) -> Self {
        Controller {
            services: BTreeMap::new(),
            programmer,
            history: Vec::new(),
            strategies: BTreeMap::new(),
            health: BTreeMap::new(),
            undo: BTreeMap::new(),
        }
    }

    fn record(&mut self, now: u64, service: &str, what: String, ok: bool) {
        self.history.push(Event {
            at_ms: now,
            service: service.into(),
            what,
            ok,
        });
        if self.history.len() > HISTORY_LIMIT {
            self.history.drain(..self.history.len() - HISTORY_LIMIT);
        }
    }

    pub fn service(&self, name: &str) -> Result<&ServiceConfig> {
        self.services
            .get(name)
            .ok_or_else(|| anyhow!("service: no service named {name:?}"))
    }

    /// Backends that must get no new flows and lose their pins.
    pub fn unhealthy(&self) -> BTreeSet<SocketAddr> {
        self.health
            .iter()
            .filter(|(_, h)| !h.healthy)
            .map(|(a, _)| *a)
            .collect()
    }

    fn running(&self, service: &str) -> Option<&Strategy> {
        self.strategies
            .get(service)
            .filter(|s| s.phase().is_active())
    }

    /// Re-writes every service into the maps (after a restart).
    pub fn reapply(&mut self, maps: &mut dyn Maps) -> Result<()> {
        let unhealthy = self.unhealthy();
        for s in self.services.clone().values() {
            self.programmer.apply(maps, s, &unhealthy)?;
        }
        Ok(())
    }

    fn weights_of(s: &ServiceConfig) -> BTreeMap<String, u32> {
        s.pools.iter().map(|p| (p.name.clone(), p.weight)).collect()
    }

    /// The pool with the most weight: where a canary or flip comes from.
    fn main_pool(s: &ServiceConfig, not: &str) -> Result<String> {
        s.pools
            .iter()
            .filter(|p| p.name != not)
            .max_by_key(|p| p.weight)
            .filter(|p| p.weight > 0)
            .map(|p| p.name.clone())
            .ok_or_else(|| {
                anyhow!(
                    "service {:?} has no other pool with weight to move from",
                    s.name
                )
            })
    }

    /// Runs a command at time `now` (ms). Ok, or why it was refused.
    pub fn handle(&mut self, maps: &mut dyn Maps, cmd: &Command, now: u64) -> Result<()> {
        match cmd {
            Command::Status { .. } | Command::History { .. } => Ok(()),
            Command::Apply { services } => self.apply_all(maps, services, now),
            Command::Weights { service, weights } => {
                let mut s = self.service(service)?.clone();
                for pool in weights.keys() {
                    if s.pool(pool).is_none() {
                        bail!("weights: service {service:?} has no pool {pool:?}");
                    }
                }
                for p in &mut s.pools {
                    if let Some(w) = weights.get(&p.name) {
                        p.weight = *w;
                    }
                }
                if s.pools.iter().all(|p| p.weight == 0) {
                    bail!(
                        "weights: all pools would have weight 0; every new connection would be dropped"
                    );
                }
                let what = format!(
                    "weights {}",
                    s.pools
                        .iter()
                        .map(|p| format!("{}={}", p.name, p.weight))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                self.change(maps, s, what, now)?;
                self.stop_strategy(service, "stopped by manual weights", now);
                Ok(())
            }
            Command::Flip {
                service,
                to,
                preview,
                auto_promote_ms,
                drain_ms,
            } => {
                self.refuse_if_running(service)?;
                let s = self.service(service)?.clone();
                let target = s
                    .pool(to)
                    .ok_or_else(|| anyhow!("to: service {service:?} has no pool {to:?}"))?;
                let unhealthy = self.unhealthy();
                if !target
                    .backends
                    .iter()
                    .any(|b| b.state() == AdminState::Active && !unhealthy.contains(&b.addr()))
                {
                    bail!(
                        "to: pool {to:?} has no active, healthy backend; flipping to it would drop every new connection"
                    );
                }
                if let Some(p) = preview
                    && p.addr().is_ipv4() != s.vip.is_ipv4()
                {
                    bail!("preview: {p} is not of the VIP's address family");
                }
                let from = Self::main_pool(&s, to).unwrap_or_default();
                let undo = Self::weights_of(&s);
                let (bg, changes) =
                    BlueGreen::start(to, &from, *preview, *auto_promote_ms, *drain_ms, now);
                let what = match preview {
                    Some(p) => format!("preview of {to} for {p}"),
                    None => format!("flip to {to}"),
                };
                self.run_changes(maps, service, &changes, what, now)?;
                self.undo.insert(service.clone(), undo);
                self.strategies
                    .insert(service.clone(), Strategy::BlueGreen(bg));
                Ok(())
            }
            Command::Canary {
                service,
                to,
                steps,
                interval_ms,
                gates,
            } => {
                self.refuse_if_running(service)?;
                let s = self.service(service)?.clone();
                if s.pool(to).is_none() {
                    bail!("to: service {service:?} has no pool {to:?}");
                }
                if steps.is_empty()
                    || steps.iter().any(|w| *w > 100)
                    || steps.windows(2).any(|w| w[0] >= w[1])
                {
                    bail!(
                        "steps: {steps:?} must be rising percentages from 0 to 100, e.g. 1,5,25,50,100"
                    );
                }
                if *interval_ms == 0 {
                    bail!("interval: must be above zero");
                }
                if let Some(g) = &gates.prometheus {
                    if !g.url.starts_with("http://") {
                        bail!("prometheus: {:?} must be an http:// address", g.url);
                    }
                    if g.query.trim().is_empty() || !g.max.is_finite() {
                        bail!("prometheus: a query and a finite --max are needed");
                    }
                }
                let from = Self::main_pool(&s, to)?;
                let undo = Self::weights_of(&s);
                let signals = Signals::new();
                let (c, changes) = Canary::start(
                    to,
                    &from,
                    steps.clone(),
                    *interval_ms,
                    gates.clone(),
                    now,
                    &signals,
                );
                self.run_changes(
                    maps,
                    service,
                    &changes,
                    format!("canary {from} -> {to} started: {}%", steps[0]),
                    now,
                )?;
                self.undo.insert(service.clone(), undo);
                self.strategies.insert(service.clone(), Strategy::Canary(c));
                Ok(())
            }
            Command::Rolling {
                service,
                pool,
                replace,
                max_unavailable,
                drain_timeout_ms,
                min_healthy_ms,
                progress_deadline_ms,
            } => {
                self.refuse_if_running(service)?;
                let s = self.service(service)?;
                let p = s
                    .pool(pool)
                    .ok_or_else(|| anyhow!("pool: service {service:?} has no pool {pool:?}"))?;
                if replace.is_empty() {
                    bail!("replace: name at least one OLD=NEW pair");
                }
                let all: BTreeSet<SocketAddr> = s
                    .pools
                    .iter()
                    .flat_map(|p| p.backends.iter().map(|b| b.addr()))
                    .collect();
                let mut seen = BTreeSet::new();
                for (old, new) in replace {
                    if !p.backends.iter().any(|b| b.addr() == *old) {
                        bail!("replace: {old} is not in pool {pool:?}");
                    }
                    if all.contains(new) || !seen.insert(*new) {
                        bail!("replace: {new} is already a backend of service {service:?}");
                    }
                    if new.is_ipv4() != s.vip.is_ipv4() {
                        bail!("replace: {new} is not of the VIP's address family");
                    }
                }
                let r = Rolling::start(
                    pool,
                    replace.clone(),
                    *max_unavailable,
                    *drain_timeout_ms,
                    *min_healthy_ms,
                    *progress_deadline_ms,
                );
                self.record(
                    now,
                    service,
                    format!(
                        "rolling replacement of {} backend(s) in {pool} started",
                        replace.len()
                    ),
                    true,
                );
                self.strategies
                    .insert(service.clone(), Strategy::Rolling(r));
                Ok(())
            }
            Command::Pause { service } | Command::Resume { service } => {
                self.service(service)?;
                let pause = matches!(cmd, Command::Pause { .. });
                let Some(Strategy::Canary(c)) = self
                    .strategies
                    .get_mut(service)
                    .filter(|s| s.phase().is_active())
                else {
                    bail!(
                        "service {service:?} has no running canary to {}",
                        if pause { "pause" } else { "resume" }
                    );
                };
                if pause {
                    c.pause(now);
                } else {
                    c.resume(now);
                }
                self.record(
                    now,
                    service,
                    if pause {
                        "paused".into()
                    } else {
                        "resumed".into()
                    },
                    true,
                );
                Ok(())
            }
            Command::Promote { service } => {
                self.service(service)?;
                let changes = match self
                    .strategies
                    .get_mut(service)
                    .filter(|s| s.phase().is_active())
                {
                    Some(Strategy::Canary(c)) => c.promote(),
                    Some(Strategy::BlueGreen(b)) => b.promote(now),
                    _ => bail!("service {service:?} has no running canary or preview to promote"),
                };
                self.run_changes(maps, service, &changes, "promoted".into(), now)
            }
            Command::Abort { service } => {
                self.service(service)?;
                let changes = match self
                    .strategies
                    .get_mut(service)
                    .filter(|s| s.phase().is_active())
                {
                    Some(Strategy::Canary(c)) => c.abort(None),
                    Some(Strategy::BlueGreen(b)) => b.abort(None),
                    Some(Strategy::Rolling(r)) => {
                        r.phase = Phase::Aborted;
                        vec![]
                    }
                    None => bail!("service {service:?} has no running strategy to abort"),
                };
                self.run_changes(maps, service, &changes, "aborted".into(), now)
            }
            Command::Rollback { service } => {
                self.service(service)?;
                let Some(weights) = self.undo.get(service).cloned() else {
                    bail!("service {service:?} has no flip or canary to roll back");
                };
                if let Some(s) = self.strategies.get_mut(service) {
                    match s {
                        Strategy::Canary(c) => c.phase = Phase::Aborted,
                        Strategy::BlueGreen(b) => b.phase = Phase::Aborted,
                        Strategy::Rolling(_) => bail!(
                            "rollback: a rolling replacement cannot be undone; abort it instead"
                        ),
                    }
                }
                let mut changes = vec![Change::Weights(weights)];
                if let Some(Strategy::BlueGreen(BlueGreen {
                    preview: Some(cidr),
                    ..
                })) = self.strategies.get(service)
                {
                    changes.push(Change::Cohort {
                        cidr: *cidr,
                        pool: None,
                    });
                }
                self.run_changes(maps, service, &changes, "rolled back".into(), now)?;
                self.undo.remove(service);
                Ok(())
            }
            Command::Backend {
                service,
                pool,
                addr,
                action,
                weight,
            } => {
                let mut s = self.service(service)?.clone();
                let p = s
                    .pools
                    .iter_mut()
                    .find(|p| &p.name == pool)
                    .ok_or_else(|| anyhow!("pool: service {service:?} has no pool {pool:?}"))?;
                let pos = p.backends.iter().position(|b| b.addr() == *addr);
                match (action, pos) {
                    (BackendAction::Add, Some(_)) => {
                        bail!("addr: {addr} is already in pool {pool:?}")
                    }
                    (BackendAction::Add, None) => p.backends.push(BackendConfig::Full {
                        addr: *addr,
                        weight: weight.unwrap_or(1),
                        state: AdminState::Active,
                    }),
                    (_, None) => bail!("addr: {addr} is not in pool {pool:?}"),
                    (BackendAction::Remove, Some(i)) => {
                        p.backends.remove(i);
                    }
                    (BackendAction::Drain | BackendAction::Undrain, Some(i)) => {
                        let b = &p.backends[i];
                        p.backends[i] = BackendConfig::Full {
                            addr: *addr,
                            weight: weight.unwrap_or(b.weight()),
                            state: if *action == BackendAction::Drain {
                                AdminState::Draining
                            } else {
                                AdminState::Active
                            },
                        };
                    }
                }
                if *action == BackendAction::Add && s.health.is_some() {
                    self.health
                        .entry(*addr)
                        .or_insert_with(|| Health::new(false, now));
                }
                self.change(
                    maps,
                    s,
                    format!("backend {action:?} {addr} in {pool}").to_lowercase(),
                    now,
                )
            }
        }
    }

    fn refuse_if_running(&self, service: &str) -> Result<()> {
        self.service(service)?;
        if let Some(s) = self.running(service) {
            bail!(
                "service {service:?} already has a running strategy ({}); pause, promote or abort it first",
                s.describe(0).split(':').next().unwrap_or("")
            );
        }
        Ok(())
    }

    fn stop_strategy(&mut self, service: &str, why: &str, now: u64) {
        if let Some(s) = self
            .strategies
            .get_mut(service)
            .filter(|s| s.phase().is_active())
        {
            match s {
                Strategy::Canary(c) => c.phase = Phase::Aborted,
                Strategy::BlueGreen(b) => b.phase = Phase::Aborted,
                Strategy::Rolling(r) => r.phase = Phase::Aborted,
            }
            self.record(now, service, format!("strategy {why}"), true);
        }
    }

    /// Applies `changes` to a copy of the service, then writes it in one go.
    fn run_changes(
        &mut self,
        maps: &mut dyn Maps,
        service: &str,
        changes: &[Change],
        what: String,
        now: u64,
    ) -> Result<()> {
        let mut s = self.service(service)?.clone();
        for c in changes {
            match c {
                Change::Weights(w) => {
                    for p in &mut s.pools {
                        if let Some(x) = w.get(&p.name) {
                            p.weight = *x;
                        }
                    }
                }
                Change::AddBackend { pool, addr } => {
                    if let Some(p) = s.pools.iter_mut().find(|p| &p.name == pool) {
                        p.backends.push(BackendConfig::Full {
                            addr: *addr,
                            weight: 1,
                            state: AdminState::Active,
                        });
                    }
                    // Not healthy until it passes `rise` checks (with checks).
                    self.health
                        .insert(*addr, Health::new(s.health.is_none(), now));
                }
                Change::DrainBackend { pool, addr } => {
                    if let Some(b) = s
                        .pools
                        .iter_mut()
                        .filter(|p| &p.name == pool)
                        .flat_map(|p| p.backends.iter_mut())
                        .find(|b| b.addr() == *addr)
                    {
                        *b = BackendConfig::Full {
                            addr: *addr,
                            weight: b.weight(),
                            state: AdminState::Draining,
                        };
                    }
                }
                Change::RemoveBackend { pool, addr } => {
                    if let Some(p) = s.pools.iter_mut().find(|p| &p.name == pool) {
                        p.backends.retain(|b| b.addr() != *addr);
                    }
                    self.health.remove(addr);
                }
                Change::Cohort { cidr, pool } => {
                    s.cohorts.retain(|c| c.cidr != *cidr);
                    if let Some(pool) = pool {
                        s.cohorts.push(CohortConfig {
                            cidr: *cidr,
                            pool: pool.clone(),
                        });
                    }
                }
            }
        }
        self.change(maps, s, what, now)
    }

    fn change(
        &mut self,
        maps: &mut dyn Maps,
        s: ServiceConfig,
        what: String,
        now: u64,
    ) -> Result<()> {
        let name = s.name.clone();
        match self.programmer.apply(maps, &s, &self.unhealthy()) {
            Ok(()) => {
                self.services.insert(name.clone(), s);
                self.record(now, &name, what, true);
                Ok(())
            }
            Err(e) => {
                self.record(now, &name, format!("{what}: {e}"), false);
                Err(e)
            }
        }
    }

    fn apply_all(
        &mut self,
        maps: &mut dyn Maps,
        services: &[ServiceConfig],
        now: u64,
    ) -> Result<()> {
        let file = ConfigFile {
            services: services.to_vec(),
            ..Default::default()
        };
        file.validate()?;
        // Check everything before the first write.
        let mut trial = self.programmer.clone();
        for name in self.services.keys() {
            if !services.iter().any(|s| &s.name == name) {
                trial.services.remove(name);
            }
        }
        for s in services {
            trial.check(s)?;
        }
        let gone: Vec<String> = self
            .services
            .keys()
            .filter(|n| !services.iter().any(|s| &s.name == *n))
            .cloned()
            .collect();
        for name in gone {
            self.programmer.remove(maps, &name)?;
            self.services.remove(&name);
            self.strategies.remove(&name);
            self.record(now, &name, "removed".into(), true);
        }
        for s in services {
            if self.services.get(&s.name) == Some(s) {
                continue;
            }
            if s.health.is_some() {
                for b in s.pools.iter().flat_map(|p| &p.backends) {
                    self.health
                        .entry(b.addr())
                        .or_insert_with(|| Health::new(true, now));
                }
            }
            self.change(maps, s.clone(), "applied".into(), now)?;
        }
        Ok(())
    }

    /// A health probe result, applied at once (tests; the daemon batches
    /// with `record_health` + `apply_health`).
    pub fn health_result(
        &mut self,
        maps: &mut dyn Maps,
        service: &str,
        addr: SocketAddr,
        result: Result<(), String>,
        now: u64,
    ) -> Result<()> {
        if self.record_health(service, addr, result, now) {
            self.apply_health(maps, service, now)?;
        }
        Ok(())
    }

    /// Counts one probe result; true when the backend's state flipped (the
    /// service then needs `apply_health`). The flip goes into the history.
    pub fn record_health(
        &mut self,
        service: &str,
        addr: SocketAddr,
        result: Result<(), String>,
        now: u64,
    ) -> bool {
        let Some(cfg) = self.services.get(service).and_then(|s| s.health.clone()) else {
            return false;
        };
        let h = self
            .health
            .entry(addr)
            .or_insert_with(|| Health::new(true, now));
        let err = result.clone().err();
        if !h.record(result, cfg.rise, cfg.fall, now) {
            return false;
        }
        let what = if h.healthy {
            format!("backend {addr} healthy")
        } else {
            format!("backend {addr} unhealthy: {}", err.unwrap_or_default())
        };
        self.record(now, service, what, true);
        true
    }

    /// Rewrites a service after health changes: unhealthy backends leave its
    /// table, recovered ones come back. One rebuild for any number of
    /// changes, which matters with many backends.
    pub fn apply_health(&mut self, maps: &mut dyn Maps, service: &str, now: u64) -> Result<()> {
        let s = self.service(service)?.clone();
        let unhealthy = self.unhealthy();
        if let Err(e) = self.programmer.apply(maps, &s, &unhealthy) {
            self.record(now, service, format!("applying health changes: {e}"), false);
            return Err(e);
        }
        Ok(())
    }

    /// Advances every running strategy. `signals` per service.
    pub fn tick(
        &mut self,
        maps: &mut dyn Maps,
        signals: &BTreeMap<String, Signals>,
        now: u64,
    ) -> Result<()> {
        let names: Vec<String> = self
            .strategies
            .iter()
            .filter(|(_, s)| s.phase().is_active())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let empty = Signals::new();
            let sig = signals.get(&name).unwrap_or(&empty);
            let Some(strat) = self.strategies.get_mut(&name) else {
                continue;
            };
            let before = strat.phase().clone();
            let changes = strat.tick(now, sig);
            let after = strat.phase().clone();
            let desc = strat.describe(now);
            if !changes.is_empty() {
                let what = format!("{desc}; {}", describe(&changes));
                self.run_changes(maps, &name, &changes, what, now)?;
            }
            if before != after && changes.is_empty() {
                self.record(
                    now,
                    &name,
                    desc,
                    !matches!(after, Phase::RolledBack(_) | Phase::Holding(_)),
                );
            }
        }
        Ok(())
    }

    /// Which services need flow counts (a rolling update is draining).
    pub fn wants_flow_counts(&self) -> bool {
        self.strategies
            .values()
            .any(|s| matches!(s, Strategy::Rolling(r) if r.phase.is_active()))
    }
}

/// The changes of one strategy step, for the history.
fn describe(changes: &[Change]) -> String {
    changes
        .iter()
        .map(|c| match c {
            Change::Weights(w) => format!(
                "weights {}",
                w.iter()
                    .map(|(p, x)| format!("{p}={x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Change::AddBackend { pool, addr } => format!("added {addr} to {pool}"),
            Change::DrainBackend { pool, addr } => format!("draining {addr} in {pool}"),
            Change::RemoveBackend { pool, addr } => format!("removed {addr} from {pool}"),
            Change::Cohort {
                cidr,
                pool: Some(p),
            } => format!("{cidr} pinned to {p}"),
            Change::Cohort { cidr, pool: None } => format!("{cidr} unpinned"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{dataplane::Capacity, strategy::PoolSignals};
    use switch_common::{Backend, Config, Real, RealKey, Service, ServiceKey, Table};

    /// Records writes instead of making them; can be told to fail.
    #[derive(Default)]
    struct FakeMaps {
        services: BTreeMap<[u8; 20], Service>,
        writes: usize,
    }

    fn k(key: &ServiceKey) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..16].copy_from_slice(&key.addr);
        out[16..18].copy_from_slice(&key.port.to_ne_bytes());
        out[18] = key.proto;
        out[19] = key.family;
        out
    }

    impl Maps for FakeMaps {
        fn set_config(&mut self, _: &Config) -> Result<()> {
            Ok(())
        }
        fn write_table(&mut self, _: u32, _: &Table) -> Result<()> {
            self.writes += 1;
            Ok(())
        }
        fn set_service(&mut self, key: &ServiceKey, s: &Service) -> Result<()> {
            self.services.insert(k(key), *s);
            Ok(())
        }
        fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
            self.services.remove(&k(key));
            Ok(())
        }
        fn set_backend(&mut self, _: u32, _: &Backend) -> Result<()> {
            Ok(())
        }
        fn set_real(&mut self, _: &RealKey, _: &Real) -> Result<()> {
            Ok(())
        }
        fn remove_real(&mut self, _: &RealKey) -> Result<()> {
            Ok(())
        }
        fn set_cohort(&mut self, _: u32, _: [u8; 16], _: u32, _: bool) -> Result<()> {
            Ok(())
        }
    }

    const CONFIG: &str = r#"
[[service]]
name = "web"
vip = "198.18.0.10:80"
protocol = "tcp"
health = { kind = "tcp", interval = "1s", rise = 2, fall = 2 }
pools = [
  { name = "blue",  weight = 100, backends = ["198.18.1.11:8080", "198.18.1.12:8080"] },
  { name = "green", weight = 0,   backends = ["198.18.2.11:8080", "198.18.2.12:8080"] },
]
"#;

    fn setup() -> (Controller, FakeMaps) {
        let mut maps = FakeMaps::default();
        let mut c = Controller::new(Programmer::new(1, Capacity::small()));
        let file = ConfigFile::parse(CONFIG).unwrap();
        c.handle(
            &mut maps,
            &Command::Apply {
                services: file.services,
            },
            0,
        )
        .unwrap();
        (c, maps)
    }

    fn weights(c: &Controller) -> (u32, u32) {
        let s = &c.services["web"];
        (
            s.pool("blue").unwrap().weight,
            s.pool("green").unwrap().weight,
        )
    }

    fn canary(steps: Vec<u32>) -> Command {
        Command::Canary {
            service: "web".into(),
            to: "green".into(),
            steps,
            interval_ms: 1000,
            // No traffic in these tests: steps must not wait for connections.
            gates: crate::strategy::Gates {
                min_flows: 0,
                ..Default::default()
            },
        }
    }

    #[test]
    fn canary_runs_to_completion_on_ticks() {
        let (mut c, mut m) = setup();
        c.handle(&mut m, &canary(vec![10, 50, 100]), 0).unwrap();
        assert_eq!(weights(&c), (90, 10));
        let none = BTreeMap::new();
        c.tick(&mut m, &none, 1000).unwrap();
        assert_eq!(weights(&c), (50, 50));
        c.tick(&mut m, &none, 2000).unwrap();
        assert_eq!(weights(&c), (0, 100));
        c.tick(&mut m, &none, 3000).unwrap();
        assert_eq!(c.strategies["web"].phase(), &Phase::Succeeded);
        assert!(c.history.iter().any(|e| e.what.contains("succeeded")));
    }

    #[test]
    fn a_failing_health_check_rolls_a_canary_back() {
        let (mut c, mut m) = setup();
        c.handle(&mut m, &canary(vec![10, 50, 100]), 0).unwrap();
        let green: SocketAddr = "198.18.2.11:8080".parse().unwrap();
        for t in [100, 200] {
            c.health_result(&mut m, "web", green, Err("refused".into()), t)
                .unwrap();
        }
        assert!(c.unhealthy().contains(&green));
        let mut pools = Signals::new();
        let mut g = PoolSignals::default();
        g.backends.insert(
            green,
            crate::strategy::BackendSignals {
                healthy: false,
                ..Default::default()
            },
        );
        pools.insert("green".into(), g);
        c.tick(&mut m, &[("web".to_string(), pools)].into(), 300)
            .unwrap();
        assert_eq!(weights(&c), (100, 0));
        assert!(matches!(c.strategies["web"].phase(), Phase::RolledBack(_)));
    }

    #[test]
    fn refused_commands_change_nothing() {
        let (mut c, mut m) = setup();
        c.handle(&mut m, &canary(vec![10, 100]), 0).unwrap();
        let before = (c.services.clone(), m.services.clone(), m.writes);
        let bad = [
            canary(vec![5, 100]),
            Command::Flip {
                service: "web".into(),
                to: "green".into(),
                preview: None,
                auto_promote_ms: None,
                drain_ms: None,
            },
            Command::Canary {
                service: "web".into(),
                to: "nope".into(),
                steps: vec![1],
                interval_ms: 1,
                gates: Default::default(),
            },
            Command::Weights {
                service: "web".into(),
                weights: [("nope".to_string(), 1)].into(),
            },
            Command::Rolling {
                service: "web".into(),
                pool: "blue".into(),
                replace: vec![(
                    "198.18.9.9:1".parse().unwrap(),
                    "198.18.9.8:1".parse().unwrap(),
                )],
                max_unavailable: 1,
                drain_timeout_ms: 1,
                min_healthy_ms: 1,
                progress_deadline_ms: 1,
            },
            Command::Resume {
                service: "nope".into(),
            },
        ];
        for cmd in &bad {
            assert!(
                c.handle(&mut m, cmd, 10).is_err(),
                "{cmd:?} should be refused"
            );
        }
        assert_eq!((c.services.clone(), m.services.clone(), m.writes), before);
    }

    #[test]
    fn an_apply_with_overlapping_vips_is_refused_whole() {
        let (mut c, mut m) = setup();
        let before = (c.services.clone(), m.writes);
        let mut two = ConfigFile::parse(CONFIG).unwrap().services;
        let mut other = two[0].clone();
        other.name = "api".into();
        two.push(other);
        let e = c
            .handle(&mut m, &Command::Apply { services: two }, 5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already the VIP"), "{e}");
        assert_eq!(
            (c.services.clone(), m.writes),
            before,
            "nothing applied half-way"
        );
    }

    #[test]
    fn a_flip_to_an_all_down_pool_is_refused() {
        let (mut c, mut m) = setup();
        for addr in ["198.18.2.11:8080", "198.18.2.12:8080"] {
            for t in [1, 2] {
                c.health_result(
                    &mut m,
                    "web",
                    addr.parse().unwrap(),
                    Err("refused".into()),
                    t,
                )
                .unwrap();
            }
        }
        let before = (c.services.clone(), m.writes);
        let flip = Command::Flip {
            service: "web".into(),
            to: "green".into(),
            preview: None,
            auto_promote_ms: None,
            drain_ms: None,
        };
        let e = c.handle(&mut m, &flip, 10).unwrap_err().to_string();
        assert!(e.contains("no active, healthy backend"), "{e}");
        assert_eq!((c.services.clone(), m.writes), before);
    }

    #[test]
    fn manual_weights_stop_a_canary_and_rollback_restores() {
        let (mut c, mut m) = setup();
        c.handle(&mut m, &canary(vec![10, 100]), 0).unwrap();
        c.handle(
            &mut m,
            &Command::Weights {
                service: "web".into(),
                weights: [("green".to_string(), 30), ("blue".to_string(), 70)].into(),
            },
            5,
        )
        .unwrap();
        assert_eq!(c.strategies["web"].phase(), &Phase::Aborted);
        c.handle(
            &mut m,
            &Command::Flip {
                service: "web".into(),
                to: "green".into(),
                preview: None,
                auto_promote_ms: None,
                drain_ms: None,
            },
            10,
        )
        .unwrap();
        assert_eq!(weights(&c), (0, 100));
        c.handle(
            &mut m,
            &Command::Rollback {
                service: "web".into(),
            },
            20,
        )
        .unwrap();
        assert_eq!(weights(&c), (70, 30));
    }

    #[test]
    fn crash_and_resume_from_persisted_state() {
        let (mut c, mut m) = setup();
        c.handle(&mut m, &canary(vec![10, 50, 100]), 0).unwrap();
        c.tick(&mut m, &BTreeMap::new(), 1000).unwrap();
        let saved = serde_json::to_vec(&c).unwrap();
        drop(c);
        // A new daemon with fresh maps: the same step, and it goes on.
        let mut c: Controller = serde_json::from_slice(&saved).unwrap();
        let mut m = FakeMaps::default();
        c.reapply(&mut m).unwrap();
        assert_eq!(weights(&c), (50, 50));
        c.tick(&mut m, &BTreeMap::new(), 2000).unwrap();
        assert_eq!(weights(&c), (0, 100));
    }

    #[test]
    fn rolling_replaces_with_health() {
        let (mut c, mut m) = setup();
        let (old, new): (SocketAddr, SocketAddr) = (
            "198.18.1.11:8080".parse().unwrap(),
            "198.18.1.21:8080".parse().unwrap(),
        );
        c.handle(
            &mut m,
            &Command::Rolling {
                service: "web".into(),
                pool: "blue".into(),
                replace: vec![(old, new)],
                max_unavailable: 1,
                drain_timeout_ms: 1000,
                min_healthy_ms: 500,
                progress_deadline_ms: 5000,
            },
            0,
        )
        .unwrap();
        let none = BTreeMap::new();
        c.tick(&mut m, &none, 0).unwrap();
        assert_eq!(
            c.services["web"].pools[0].backends[0].state(),
            AdminState::Draining
        );
        c.tick(&mut m, &none, 10).unwrap(); // no flows left
        let addrs: Vec<SocketAddr> = c.services["web"].pools[0]
            .backends
            .iter()
            .map(|b| b.addr())
            .collect();
        assert!(addrs.contains(&new) && !addrs.contains(&old));
        assert!(
            c.unhealthy().contains(&new),
            "new backend not healthy before its checks pass"
        );
        for t in [100, 200] {
            c.health_result(&mut m, "web", new, Ok(()), t).unwrap();
        }
        let mut g = PoolSignals::default();
        g.backends.insert(
            new,
            crate::strategy::BackendSignals {
                healthy: true,
                healthy_since_ms: Some(200),
                active_flows: 0,
                flows_counted_ms: u64::MAX,
            },
        );
        let sig: BTreeMap<String, Signals> =
            [("web".to_string(), [("blue".to_string(), g)].into())].into();
        c.tick(&mut m, &sig, 800).unwrap();
        assert_eq!(c.strategies["web"].phase(), &Phase::Succeeded);
    }
}
