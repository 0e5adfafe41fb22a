//! The daemon's brain, free of I/O: desired state, health, strategies, and
//! the commands that change them. Time comes in as a parameter, so all of
//! it is tested with a fake clock and fake maps.
//!
//! Every command has the same shape: **validate** (refuse with a one-line
//! reason), **plan** (compute the new desired state, strategy, undo and
//! health as a [`Plan`], touching nothing), **write** (the programmer writes
//! the maps, on a copy of its allocation state), and only when the write
//! succeeded **commit** (state and history). A refused or failed command
//! leaves the controller as it was.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
};

use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::{
    api::{BackendAction, Command, Event},
    config::{AdminState, BackendConfig, CohortConfig, ConfigFile, HealthConfig, ServiceConfig},
    health::Health,
    programmer::{Maps, Programmer},
    shadow::ShadowSpec,
    strategy::{BlueGreen, Canary, Change, Gates, Phase, Rolling, Signals, Strategy},
};

const HISTORY_LIMIT: usize = 10_000;

type Weights = BTreeMap<String, u32>;

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
    pub undo: BTreeMap<String, Weights>,
    /// Removed backends that still carry established flows, per service.
    #[serde(default)]
    pub lingering: BTreeMap<String, BTreeMap<SocketAddr, Lingering>>,
    /// Each service's shadow (running or the last one).
    #[serde(default)]
    pub shadows: BTreeMap<String, ShadowSpec>,
    /// What each shadow found so far (the daemon updates it before a
    /// command; a canary's `--after-shadow` reads it).
    #[serde(skip)]
    pub shadow_reports: BTreeMap<String, crate::shadow::Report>,
    /// Fleet mode: the fleet's health verdict overrules local probes.
    #[serde(skip)]
    pub fleet_health: Option<crate::replica::FleetHealth>,
    /// Fleet mode: each service's spec before its last change, as the
    /// fleet recorded it (see `ServiceRecord::previous`).
    #[serde(default)]
    pub previous: BTreeMap<String, ServiceConfig>,
}

/// A backend removed from its pool while healthy: it gets no new flows, but
/// its established flows stay pinned to it until they end, it goes down,
/// or the operator's hard limit (if any) passes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lingering {
    pub pool: String,
    pub since_ms: u64,
    #[serde(default)]
    pub until_ms: Option<u64>,
}

/// Everything one command changes, computed before anything is written.
struct Plan {
    service: String,
    /// The service's new desired state; None: the maps are not touched.
    spec: Option<ServiceConfig>,
    /// The service's strategy afterwards (None: unchanged).
    strategy: Option<Strategy>,
    /// Some(Some(w)): remember `w` for rollback; Some(None): forget it.
    undo: Option<Option<Weights>>,
    /// Health entries to set (Some) or drop (None).
    health: Vec<(SocketAddr, Option<Health>)>,
    /// Backends leaving the pool: linger until this time (None: no limit),
    /// or cut at once (`cut`).
    removed: BTreeMap<SocketAddr, (String, Option<u64>)>,
    cut: BTreeSet<SocketAddr>,
    what: String,
}

impl Plan {
    fn new(service: &str, what: impl Into<String>) -> Plan {
        Plan {
            service: service.into(),
            spec: None,
            strategy: None,
            undo: None,
            health: vec![],
            removed: BTreeMap::new(),
            cut: BTreeSet::new(),
            what: what.into(),
        }
    }
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
            lingering: BTreeMap::new(),
            shadows: BTreeMap::new(),
            previous: BTreeMap::new(),
            shadow_reports: BTreeMap::new(),
            fleet_health: None,
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
        let local = unhealthy_of(&self.health);
        match &self.fleet_health {
            Some(f) => f.unhealthy(&local),
            None => local,
        }
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

    fn weights_of(s: &ServiceConfig) -> Weights {
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
            Command::Status { .. } | Command::History { .. } | Command::Membership { .. } => Ok(()),
            Command::Apply { services } => self.apply_all(maps, services, now),
            Command::Weights { service, weights } => self.weights(maps, service, weights, now),
            Command::Flip {
                service,
                to,
                preview,
                auto_promote_ms,
                drain_ms,
            } => self.flip(
                maps,
                service,
                to,
                *preview,
                *auto_promote_ms,
                *drain_ms,
                now,
            ),
            Command::Canary {
                service,
                to,
                steps,
                interval_ms,
                gates,
            } => self.canary(maps, service, to, steps, *interval_ms, gates, now),
            Command::Rolling { .. } => {
                let plan = self.plan_rolling(cmd)?;
                self.execute(maps, plan, now)
            }
            Command::Shadow {
                service,
                to,
                sample_percent,
                for_ms,
                max_sessions,
                max_buffer,
                stop,
            } => {
                if *stop {
                    self.stop_shadow(maps, service, "stopped", now)
                } else {
                    let spec = ShadowSpec {
                        to: to.clone().unwrap_or_default(),
                        sample_percent: *sample_percent,
                        sample: 0,
                        started_ms: now,
                        until_ms: for_ms.map(|f| now + f),
                        max_sessions: *max_sessions,
                        max_buffer: *max_buffer,
                        ended: None,
                    };
                    self.start_shadow(maps, service, spec, now)
                }
            }
            Command::Pause { service } => self.pause(maps, service, true, now),
            Command::Resume { service } => self.pause(maps, service, false, now),
            Command::Promote { service } => self.promote(maps, service, now),
            Command::Abort { service } => self.abort(maps, service, now),
            Command::Rollback { service } => self.rollback(maps, service, now),
            Command::Backend {
                service,
                pool,
                addr,
                action,
                weight,
                now: cut,
                linger_limit_ms,
            } => {
                let plan = self.plan_backend(
                    service,
                    pool,
                    *addr,
                    *action,
                    *weight,
                    *cut,
                    *linger_limit_ms,
                    now,
                )?;
                self.execute(maps, plan, now)
            }
        }
    }

    fn weights(
        &mut self,
        maps: &mut dyn Maps,
        service: &str,
        weights: &Weights,
        now: u64,
    ) -> Result<()> {
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
            bail!("weights: all pools would have weight 0; every new connection would be dropped");
        }
        let what = format!(
            "weights {}",
            s.pools
                .iter()
                .map(|p| format!("{}={}", p.name, p.weight))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut plan = Plan::new(service, what);
        plan.spec = Some(s);
        // Manual weights stop a running strategy.
        if let Some(st) = self.running(service) {
            let mut st = st.clone();
            st.set_phase(Phase::Aborted);
            plan.strategy = Some(st);
            plan.what += "; running strategy stopped by manual weights";
        }
        self.execute(maps, plan, now)
    }

    #[allow(clippy::too_many_arguments)]
    fn flip(
        &mut self,
        maps: &mut dyn Maps,
        service: &str,
        to: &str,
        preview: Option<ipnet::IpNet>,
        auto_promote_ms: Option<u64>,
        drain_ms: Option<u64>,
        now: u64,
    ) -> Result<()> {
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
        let (bg, changes) = BlueGreen::start(to, &from, preview, auto_promote_ms, drain_ms, now);
        let what = match preview {
            Some(p) => format!("preview of {to} for {p}"),
            None => format!("flip to {to}"),
        };
        let mut plan = self.plan_changes(service, &changes, what, now)?;
        plan.undo = Some(Some(Self::weights_of(&s)));
        plan.strategy = Some(Strategy::BlueGreen(bg));
        self.execute(maps, plan, now)
    }

    #[allow(clippy::too_many_arguments)]
    fn canary(
        &mut self,
        maps: &mut dyn Maps,
        service: &str,
        to: &str,
        steps: &[u32],
        interval_ms: u64,
        gates: &Gates,
        now: u64,
    ) -> Result<()> {
        self.refuse_if_running(service)?;
        let s = self.service(service)?.clone();
        if s.pool(to).is_none() {
            bail!("to: service {service:?} has no pool {to:?}");
        }
        if steps.is_empty()
            || steps.iter().any(|w| *w > 100)
            || steps.windows(2).any(|w| w[0] >= w[1])
        {
            bail!("steps: {steps:?} must be rising percentages from 0 to 100, e.g. 1,5,25,50,100");
        }
        if interval_ms == 0 {
            bail!("interval: must be above zero");
        }
        if let Some(g) = &gates.prometheus {
            if !(g.url.starts_with("http://") || g.url.starts_with("https://")) {
                bail!(
                    "prometheus: {:?} must be an http:// or https:// address",
                    g.url
                );
            }
            if g.query.trim().is_empty() || !g.max.is_finite() {
                bail!("prometheus: a query and a finite --max are needed");
            }
        }
        if let Some(need) = gates.after_shadow_ms {
            self.shadow_is_clean(service, to, need, gates.max_shadow_error_excess, now)?;
        }
        let from = Self::main_pool(&s, to)?;
        let (c, changes) = Canary::start(
            to,
            &from,
            steps.to_vec(),
            interval_ms,
            gates.clone(),
            now,
            &Signals::new(),
        );
        let what = format!("canary {from} -> {to} started: {}%", steps[0]);
        let mut plan = self.plan_changes(service, &changes, what, now)?;
        plan.undo = Some(Some(Self::weights_of(&s)));
        plan.strategy = Some(Strategy::Canary(c));
        self.execute(maps, plan, now)
    }

    fn plan_rolling(&self, cmd: &Command) -> Result<Plan> {
        let Command::Rolling {
            service,
            pool,
            replace,
            max_unavailable,
            drain_timeout_ms,
            min_healthy_ms,
            progress_deadline_ms,
            linger_limit_ms,
        } = cmd
        else {
            bail!("not a rolling command");
        };
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
        let mut r = Rolling::start(
            pool,
            replace.clone(),
            *max_unavailable,
            *drain_timeout_ms,
            *min_healthy_ms,
            *progress_deadline_ms,
        );
        r.linger_limit_ms = *linger_limit_ms;
        let mut plan = Plan::new(
            service,
            format!(
                "rolling replacement of {} backend(s) in {pool} started",
                replace.len()
            ),
        );
        plan.strategy = Some(Strategy::Rolling(r));
        Ok(plan)
    }

    fn pause(&mut self, maps: &mut dyn Maps, service: &str, pause: bool, now: u64) -> Result<()> {
        self.service(service)?;
        let Some(Strategy::Canary(c)) = self.running(service) else {
            bail!(
                "service {service:?} has no running canary to {}",
                if pause { "pause" } else { "resume" }
            );
        };
        let mut c = c.clone();
        if pause {
            c.pause(now);
        } else {
            c.resume(now);
        }
        let mut plan = Plan::new(service, if pause { "paused" } else { "resumed" });
        plan.strategy = Some(Strategy::Canary(c));
        self.execute(maps, plan, now)
    }

    fn promote(&mut self, maps: &mut dyn Maps, service: &str, now: u64) -> Result<()> {
        self.service(service)?;
        let mut st = match self.running(service) {
            Some(st @ (Strategy::Canary(_) | Strategy::BlueGreen(_))) => st.clone(),
            _ => bail!("service {service:?} has no running canary or preview to promote"),
        };
        let changes = match &mut st {
            Strategy::Canary(c) => c.promote(),
            Strategy::BlueGreen(b) => b.promote(now),
            Strategy::Rolling(_) => vec![],
        };
        let mut plan = self.plan_changes(service, &changes, "promoted".into(), now)?;
        plan.strategy = Some(st);
        self.execute(maps, plan, now)
    }

    fn abort(&mut self, maps: &mut dyn Maps, service: &str, now: u64) -> Result<()> {
        self.service(service)?;
        let Some(st) = self.running(service) else {
            bail!("service {service:?} has no running strategy to abort");
        };
        let mut st = st.clone();
        let changes = match &mut st {
            Strategy::Canary(c) => c.abort(None),
            Strategy::BlueGreen(b) => b.abort(None),
            Strategy::Rolling(r) => {
                r.phase = Phase::Aborted;
                vec![]
            }
        };
        let mut plan = self.plan_changes(service, &changes, "aborted".into(), now)?;
        plan.strategy = Some(st);
        self.execute(maps, plan, now)
    }

    fn rollback(&mut self, maps: &mut dyn Maps, service: &str, now: u64) -> Result<()> {
        self.service(service)?;
        let Some(weights) = self.undo.get(service).cloned() else {
            bail!("service {service:?} has no flip or canary to roll back");
        };
        let mut strategy = self.strategies.get(service).cloned();
        if let Some(st) = &mut strategy {
            if matches!(st, Strategy::Rolling(_)) {
                bail!("rollback: a rolling replacement cannot be undone; abort it instead");
            }
            st.set_phase(Phase::Aborted);
        }
        let mut changes = vec![Change::Weights(weights)];
        if let Some(Strategy::BlueGreen(BlueGreen {
            preview: Some(cidr),
            ..
        })) = &strategy
        {
            changes.push(Change::Cohort {
                cidr: *cidr,
                pool: None,
            });
        }
        let mut plan = self.plan_changes(service, &changes, "rolled back".into(), now)?;
        plan.strategy = strategy;
        plan.undo = Some(None);
        self.execute(maps, plan, now)
    }

    #[allow(clippy::too_many_arguments)]
    fn plan_backend(
        &self,
        service: &str,
        pool: &str,
        addr: SocketAddr,
        action: BackendAction,
        weight: Option<u32>,
        cut: bool,
        linger_limit_ms: Option<u64>,
        now: u64,
    ) -> Result<Plan> {
        let mut s = self.service(service)?.clone();
        let has_health = s.health.is_some();
        let all: BTreeSet<SocketAddr> = s
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().map(|b| b.addr()))
            .collect();
        let p = s
            .pools
            .iter_mut()
            .find(|p| p.name == pool)
            .ok_or_else(|| anyhow!("pool: service {service:?} has no pool {pool:?}"))?;
        let pos = p.backends.iter().position(|b| b.addr() == addr);
        let mut plan = Plan::new(
            service,
            format!("backend {action:?} {addr} in {pool}").to_lowercase(),
        );
        match (action, pos) {
            (BackendAction::Add, Some(_)) => bail!("addr: {addr} is already in pool {pool:?}"),
            (BackendAction::Add, None) if all.contains(&addr) => {
                bail!("addr: {addr} is already a backend of service {service:?}")
            }
            (BackendAction::Add, None) => {
                p.backends.push(BackendConfig::Full {
                    addr,
                    weight: weight.unwrap_or(1),
                    state: AdminState::Active,
                });
                // With checks, not healthy until it passes `rise` of them.
                if has_health && !self.health.contains_key(&addr) {
                    plan.health.push((addr, Some(Health::new(false, now))));
                }
            }
            (_, None) => bail!("addr: {addr} is not in pool {pool:?}"),
            (BackendAction::Remove, Some(i)) => {
                p.backends.remove(i);
                plan.removed
                    .insert(addr, (pool.to_string(), linger_limit_ms.map(|l| now + l)));
                if cut {
                    plan.cut.insert(addr);
                    plan.what += " (established flows cut)";
                }
            }
            (BackendAction::Drain | BackendAction::Undrain, Some(i)) => {
                let b = &p.backends[i];
                p.backends[i] = BackendConfig::Full {
                    addr,
                    weight: weight.unwrap_or(b.weight()),
                    state: if action == BackendAction::Drain {
                        AdminState::Draining
                    } else {
                        AdminState::Active
                    },
                };
            }
        }
        if let Some(w) = weight
            && !(1..=crate::config::MAX_WEIGHT).contains(&w)
        {
            bail!(
                "weight: {w} must be from 1 to {}",
                crate::config::MAX_WEIGHT
            );
        }
        plan.spec = Some(s);
        Ok(plan)
    }

    fn start_shadow(
        &mut self,
        maps: &mut dyn Maps,
        service: &str,
        mut spec: ShadowSpec,
        now: u64,
    ) -> Result<()> {
        let s = self.service(service)?;
        let pool = s
            .pool(&spec.to)
            .ok_or_else(|| anyhow!("to: service {service:?} has no pool {:?}", spec.to))?;
        if pool.backends.is_empty() {
            bail!("to: pool {:?} has no backend to replay to", spec.to);
        }
        if s.mode == crate::config::ForwardMode::Dsr {
            bail!(
                "shadow: service {service:?} is in dsr mode; its replies bypass the switch, so there is no live answer to compare with (use nat or fullnat)"
            );
        }
        if !(spec.sample_percent > 0.0 && spec.sample_percent <= 100.0) {
            bail!(
                "sample: {}% must be above 0 and at most 100",
                spec.sample_percent
            );
        }
        if spec.max_sessions == 0 || spec.max_buffer == 0 {
            bail!("max-sessions and max-buffer must be above zero");
        }
        if self.shadows.get(service).is_some_and(|s| s.running()) {
            bail!(
                "service {service:?} already has a running shadow; stop it first (switch shadow {service} --stop)"
            );
        }
        spec.sample = ((spec.sample_percent / 100.0 * 65_536.0).round() as u32).clamp(1, 65_536);
        let id = self
            .programmer
            .services
            .get(service)
            .map(|p| p.id)
            .ok_or_else(|| anyhow!("service {service:?} is not placed"))?;
        // Write, then commit.
        maps.set_shadow(id, spec.sample)?;
        let what = format!(
            "shadow to {} started: {}% of new connections{}",
            spec.to,
            spec.sample_percent,
            spec.until_ms
                .map(|u| format!(" for {}s", (u - now) / 1000))
                .unwrap_or_default()
        );
        self.shadows.insert(service.to_string(), spec);
        self.shadow_reports.remove(service);
        self.record(now, service, what, true);
        Ok(())
    }

    fn stop_shadow(
        &mut self,
        maps: &mut dyn Maps,
        service: &str,
        why: &str,
        now: u64,
    ) -> Result<()> {
        self.service(service)?;
        if !self.shadows.get(service).is_some_and(|s| s.running()) {
            bail!("service {service:?} has no running shadow");
        }
        if let Some(id) = self.programmer.services.get(service).map(|p| p.id) {
            maps.set_shadow(id, 0)?;
        }
        if let Some(s) = self.shadows.get_mut(service) {
            s.ended = Some(why.to_string());
        }
        self.record(now, service, format!("shadow {why}"), true);
        Ok(())
    }

    /// `--after-shadow`: a shadow to `to` has run `need` ms and its errors
    /// exceed the live pool's by at most `excess`.
    fn shadow_is_clean(
        &self,
        service: &str,
        to: &str,
        need: u64,
        excess: f64,
        now: u64,
    ) -> Result<()> {
        let Some(spec) = self.shadows.get(service).filter(|s| s.to == to) else {
            bail!(
                "after-shadow: no shadow of {service:?} to {to:?} has run; start one with `switch shadow {service} --to {to}`"
            );
        };
        let ran = spec
            .until_ms
            .filter(|_| !spec.running())
            .unwrap_or(now)
            .min(now)
            .saturating_sub(spec.started_ms);
        if ran < need {
            bail!(
                "after-shadow: the shadow of {service:?} to {to:?} has run {}s of the {}s required",
                ran / 1000,
                need / 1000
            );
        }
        let Some(r) = self.shadow_reports.get(service) else {
            bail!("after-shadow: the shadow of {service:?} has no figures yet");
        };
        if r.attempts == 0 {
            bail!("after-shadow: the shadow of {service:?} has replayed no connection yet");
        }
        if r.shadow_error_rate > r.live_error_rate + excess {
            bail!(
                "after-shadow: the shadow's error rate {:.1}% exceeds the live pool's {:.1}% by more than {:.1}%",
                r.shadow_error_rate * 100.0,
                r.live_error_rate * 100.0,
                excess * 100.0
            );
        }
        Ok(())
    }

    /// Ends shadows whose `--for` has passed.
    pub fn expire_shadows(&mut self, maps: &mut dyn Maps, now: u64) -> Result<()> {
        let due: Vec<String> = self
            .shadows
            .iter()
            .filter(|(_, s)| s.running() && s.until_ms.is_some_and(|u| now >= u))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.stop_shadow(maps, &name, "ended (its time is up)", now)?;
        }
        Ok(())
    }

    fn refuse_if_running(&self, service: &str) -> Result<()> {
        self.service(service)?;
        if let Some(s) = self.running(service) {
            bail!(
                "service {service:?} already has a running strategy ({}); pause, promote or abort it first",
                s.kind().name()
            );
        }
        Ok(())
    }

    /// A plan that applies a strategy's `changes` to a copy of the service.
    fn plan_changes(
        &self,
        service: &str,
        changes: &[Change],
        what: String,
        now: u64,
    ) -> Result<Plan> {
        let mut s = self.service(service)?.clone();
        let mut plan = Plan::new(service, what);
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
                    plan.health
                        .push((*addr, Some(Health::new(s.health.is_none(), now))));
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
                Change::RemoveBackend {
                    pool,
                    addr,
                    linger_limit_ms,
                } => {
                    if let Some(p) = s.pools.iter_mut().find(|p| &p.name == pool) {
                        p.backends.retain(|b| b.addr() != *addr);
                    }
                    plan.removed
                        .insert(*addr, (pool.clone(), linger_limit_ms.map(|l| now + l)));
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
        plan.spec = Some(s);
        Ok(plan)
    }

    /// Writes a plan's maps, then commits it. The programmer works on a copy
    /// of its allocation state, so a failed write leaves it (and every
    /// other part of the controller) as it was.
    fn execute(&mut self, maps: &mut dyn Maps, plan: Plan, now: u64) -> Result<()> {
        let mut health = self.health.clone();
        for (addr, h) in &plan.health {
            match h {
                Some(h) => {
                    health.insert(*addr, h.clone());
                }
                None => {
                    health.remove(addr);
                }
            }
        }
        // A removed backend that is down (or cut on purpose) leaves with its
        // flows; a healthy one lingers.
        let cut: BTreeSet<SocketAddr> = plan
            .removed
            .keys()
            .filter(|a| plan.cut.contains(a) || health.get(a).is_some_and(|h| !h.healthy))
            .copied()
            .collect();
        let mut programmer = self.programmer.clone();
        if let Some(spec) = &plan.spec {
            // 1. Write. Nothing is committed before this succeeds.
            let local = unhealthy_of(&health);
            let unhealthy = match &self.fleet_health {
                Some(f) => f.unhealthy(&local),
                None => local,
            };
            programmer.apply(maps, spec, &unhealthy)?;
            for addr in &cut {
                programmer.release(maps, &plan.service, *addr)?;
            }
        }
        // 2. Commit.
        self.programmer = programmer;
        if let Some(spec) = plan.spec {
            self.services.insert(plan.service.clone(), spec);
        }
        let lingering = self.lingering.entry(plan.service.clone()).or_default();
        for (addr, (pool, until_ms)) in &plan.removed {
            if cut.contains(addr) {
                health.remove(addr);
            } else {
                lingering.insert(
                    *addr,
                    Lingering {
                        pool: pool.clone(),
                        since_ms: now,
                        until_ms: *until_ms,
                    },
                );
            }
        }
        // A backend that came back stops lingering (it kept its index).
        if let Some(spec) = self.services.get(&plan.service) {
            lingering.retain(|a, _| {
                !spec
                    .pools
                    .iter()
                    .any(|p| p.backends.iter().any(|b| b.addr() == *a))
            });
        }
        self.health = health;
        if let Some(st) = plan.strategy {
            self.strategies.insert(plan.service.clone(), st);
        }
        match plan.undo {
            Some(Some(w)) => {
                self.undo.insert(plan.service.clone(), w);
            }
            Some(None) => {
                self.undo.remove(&plan.service);
            }
            None => {}
        }
        self.record(now, &plan.service, plan.what, true);
        Ok(())
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
        // Write on a copy; commit only when every service went in.
        let mut next = self.clone();
        let gone: Vec<String> = next
            .services
            .keys()
            .filter(|n| !services.iter().any(|s| &s.name == *n))
            .cloned()
            .collect();
        for name in gone {
            next.programmer.remove(maps, &name)?;
            next.services.remove(&name);
            next.strategies.remove(&name);
            next.lingering.remove(&name);
            next.undo.remove(&name);
            next.record(now, &name, "removed".into(), true);
        }
        for s in services {
            if next.services.get(&s.name) == Some(s) {
                continue;
            }
            let mut plan = Plan::new(&s.name, "applied");
            if s.health.is_some() {
                for b in s.pools.iter().flat_map(|p| &p.backends) {
                    if !next.health.contains_key(&b.addr()) {
                        plan.health.push((b.addr(), Some(Health::new(true, now))));
                    }
                }
            }
            if let Some(old) = next.services.get(&s.name) {
                for p in &old.pools {
                    for b in &p.backends {
                        if s.pools
                            .iter()
                            .all(|q| q.backends.iter().all(|c| c.addr() != b.addr()))
                        {
                            plan.removed.insert(b.addr(), (p.name.clone(), None));
                        }
                    }
                }
            }
            plan.spec = Some(s.clone());
            next.execute(maps, plan, now)?;
        }
        *self = next;
        Ok(())
    }

    /// The backends to probe: every backend of a service with health checks,
    /// lingering ones too (a lingering backend that goes down lets go of its
    /// flows).
    pub fn probe_targets(&self) -> Vec<(String, SocketAddr, HealthConfig)> {
        let mut out = Vec::new();
        for svc in self.services.values() {
            let Some(h) = &svc.health else { continue };
            for b in svc.pools.iter().flat_map(|p| &p.backends) {
                out.push((svc.name.clone(), b.addr(), h.clone()));
            }
            for addr in self
                .lingering
                .get(&svc.name)
                .into_iter()
                .flat_map(|l| l.keys())
            {
                out.push((svc.name.clone(), *addr, h.clone()));
            }
        }
        out
    }

    /// Lets go of lingering backends whose flows have ended (counted after
    /// they began lingering), that went down, or whose hard limit passed.
    /// `flows` is live flows per backend index, counted at `counted_ms`.
    pub fn settle_lingering(
        &mut self,
        maps: &mut dyn Maps,
        flows: &HashMap<u32, u64>,
        counted_ms: u64,
        now: u64,
    ) -> Result<()> {
        let mut done = Vec::new();
        let unhealthy = self.unhealthy();
        for (service, backends) in &self.lingering {
            let Some(placed) = self.programmer.services.get(service) else {
                continue;
            };
            for (addr, l) in backends {
                let Some(index) = placed.lingering.get(addr) else {
                    done.push((service.clone(), *addr, "released"));
                    continue;
                };
                let why = if unhealthy.contains(addr) {
                    Some("down: its remaining flows are cut")
                } else if l.until_ms.is_some_and(|u| now >= u) {
                    Some("linger limit reached: its remaining flows are cut")
                } else if counted_ms > l.since_ms && flows.get(index).copied().unwrap_or(0) == 0 {
                    Some("no flows left")
                } else {
                    None
                };
                if let Some(why) = why {
                    done.push((service.clone(), *addr, why));
                }
            }
        }
        for (service, addr, why) in done {
            let mut programmer = self.programmer.clone();
            programmer.release(maps, &service, addr)?;
            self.programmer = programmer;
            if let Some(l) = self.lingering.get_mut(&service) {
                l.remove(&addr);
            }
            self.health.remove(&addr);
            self.record(
                now,
                &service,
                format!("lingering backend {addr} released: {why}"),
                true,
            );
        }
        self.lingering.retain(|_, l| !l.is_empty());
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
    pub fn apply_health(&mut self, maps: &mut dyn Maps, service: &str, _now: u64) -> Result<()> {
        let s = self.service(service)?.clone();
        let unhealthy = self.unhealthy();
        let mut programmer = self.programmer.clone();
        programmer.apply(maps, &s, &unhealthy)?;
        self.programmer = programmer;
        Ok(())
    }

    /// Advances every running strategy. `signals` per service. A step whose
    /// map write fails is not taken: the strategy stays where it was and is
    /// tried again on the next tick.
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
        let mut failed = None;
        for name in names {
            let empty = Signals::new();
            let sig = signals.get(&name).unwrap_or(&empty);
            let Some(current) = self.strategies.get(&name) else {
                continue;
            };
            let mut next = current.clone();
            let before = next.phase().clone();
            let changes = next.tick(now, sig);
            let after = next.phase().clone();
            let desc = next.describe(now);
            if !changes.is_empty() {
                let what = format!("{desc}; {}", describe(&changes));
                let mut plan = self.plan_changes(&name, &changes, what, now)?;
                plan.strategy = Some(next);
                if let Err(e) = self.execute(maps, plan, now) {
                    failed = Some(e.context(format!("{name}: strategy step not taken")));
                }
                continue;
            }
            if before != after {
                self.record(
                    now,
                    &name,
                    desc,
                    !matches!(after, Phase::RolledBack(_) | Phase::Holding(_)),
                );
            }
            // Progress without a map change (step timers, baselines).
            self.strategies.insert(name, next);
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether live-flow counts matter now (a drain, or lingering backends).
    pub fn wants_flow_counts(&self) -> bool {
        !self.lingering.is_empty()
            || self
                .strategies
                .values()
                .any(|s| matches!(s, Strategy::Rolling(r) if r.phase.is_active()))
    }
}

fn unhealthy_of(health: &BTreeMap<SocketAddr, Health>) -> BTreeSet<SocketAddr> {
    health
        .iter()
        .filter(|(_, h)| !h.healthy)
        .map(|(a, _)| *a)
        .collect()
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
            Change::RemoveBackend { pool, addr, .. } => format!("removed {addr} from {pool}"),
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
        /// Backend index -> state written last.
        backends: BTreeMap<u32, u8>,
        /// Every write fails while set.
        broken: bool,
    }

    impl FakeMaps {
        fn check(&self) -> Result<()> {
            if self.broken {
                bail!("map write failed (test)");
            }
            Ok(())
        }
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
            self.check()
        }
        fn write_table(&mut self, _: u32, _: &Table) -> Result<()> {
            self.check()?;
            self.writes += 1;
            Ok(())
        }
        fn set_service(&mut self, key: &ServiceKey, s: &Service) -> Result<()> {
            self.check()?;
            self.services.insert(k(key), *s);
            Ok(())
        }
        fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
            self.check()?;
            self.services.remove(&k(key));
            Ok(())
        }
        fn set_backend(&mut self, i: u32, b: &Backend) -> Result<()> {
            self.check()?;
            self.backends.insert(i, b.state);
            Ok(())
        }
        fn set_real(&mut self, _: &RealKey, _: &Real) -> Result<()> {
            self.check()
        }
        fn set_vip_filter(&mut self, _: &switch_common::AddrFilter) -> Result<()> {
            self.check()
        }
        fn set_reply_filter(&mut self, _: &switch_common::AddrFilter) -> Result<()> {
            self.check()
        }
        fn set_nexthop(&mut self, _: u32, _: &switch_common::NextHop) -> Result<()> {
            self.check()
        }
        fn set_shadow(&mut self, _: u32, _: u32) -> Result<()> {
            self.check()
        }
        fn remove_real(&mut self, _: &RealKey) -> Result<()> {
            self.check()
        }
        fn set_cohort(&mut self, _: u32, _: [u8; 16], _: u32, _: bool) -> Result<()> {
            self.check()
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
                linger_limit_ms: None,
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
                linger_limit_ms: None,
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

    fn snapshot(c: &Controller) -> String {
        serde_json::to_string(c).unwrap()
    }

    fn backend_cmd(action: BackendAction, addr: &str, now: bool) -> Command {
        Command::Backend {
            service: "web".into(),
            pool: "blue".into(),
            addr: addr.parse().unwrap(),
            action,
            weight: None,
            now,
            linger_limit_ms: None,
        }
    }

    /// With a data plane whose writes fail, every command fails and leaves
    /// the whole controller (state, strategies, health, undo, history)
    /// exactly as it was; the same command then succeeds once the maps work.
    #[test]
    fn a_failed_write_commits_nothing_for_every_command() {
        let svc = |s: &str| s.to_string();
        let flip = Command::Flip {
            service: svc("web"),
            to: svc("green"),
            preview: None,
            auto_promote_ms: None,
            drain_ms: None,
        };
        let preview = Command::Flip {
            service: svc("web"),
            to: svc("green"),
            preview: Some("198.18.50.0/24".parse().unwrap()),
            auto_promote_ms: None,
            drain_ms: None,
        };
        let weights = Command::Weights {
            service: svc("web"),
            weights: [(svc("green"), 30)].into(),
        };
        let apply = Command::Apply {
            services: {
                let mut f = ConfigFile::parse(CONFIG).unwrap().services;
                f[0].pools[0].weight = 60;
                f
            },
        };
        // (set-up commands that must succeed first, the command under test)
        let cases: Vec<(Vec<Command>, Command)> = vec![
            (vec![], weights.clone()),
            (vec![], flip.clone()),
            (vec![], canary(vec![10, 100])),
            (vec![], apply),
            (
                vec![canary(vec![10, 100])],
                Command::Promote {
                    service: svc("web"),
                },
            ),
            (
                vec![preview.clone()],
                Command::Promote {
                    service: svc("web"),
                },
            ),
            (
                vec![canary(vec![10, 100])],
                Command::Abort {
                    service: svc("web"),
                },
            ),
            (
                vec![preview],
                Command::Abort {
                    service: svc("web"),
                },
            ),
            (
                vec![flip.clone()],
                Command::Rollback {
                    service: svc("web"),
                },
            ),
            (
                vec![canary(vec![10, 100])],
                Command::Rollback {
                    service: svc("web"),
                },
            ),
            (
                vec![],
                backend_cmd(BackendAction::Add, "198.18.1.13:8080", false),
            ),
            (
                vec![],
                backend_cmd(BackendAction::Remove, "198.18.1.12:8080", false),
            ),
            (
                vec![],
                backend_cmd(BackendAction::Remove, "198.18.1.12:8080", true),
            ),
            (
                vec![],
                backend_cmd(BackendAction::Drain, "198.18.1.12:8080", false),
            ),
            (
                vec![backend_cmd(BackendAction::Drain, "198.18.1.12:8080", false)],
                backend_cmd(BackendAction::Undrain, "198.18.1.12:8080", false),
            ),
        ];
        for (setup_cmds, cmd) in cases {
            let (mut c, mut m) = setup();
            for s in &setup_cmds {
                c.handle(&mut m, s, 1).unwrap();
            }
            let before = snapshot(&c);
            let services_before = m.services.clone();
            m.broken = true;
            let e = c.handle(&mut m, &cmd, 2);
            assert!(e.is_err(), "{cmd:?} should fail with broken maps");
            assert_eq!(snapshot(&c), before, "{cmd:?} committed something");
            assert_eq!(
                m.services, services_before,
                "{cmd:?} reached the commit point"
            );
            m.broken = false;
            c.handle(&mut m, &cmd, 3)
                .unwrap_or_else(|e| panic!("{cmd:?} after repair: {e}"));
            assert_ne!(snapshot(&c), before, "{cmd:?} did nothing");
        }
    }

    #[test]
    fn a_strategy_step_whose_write_fails_is_not_taken() {
        let (mut c, mut m) = setup();
        c.handle(&mut m, &canary(vec![10, 50, 100]), 0).unwrap();
        let before = snapshot(&c);
        m.broken = true;
        assert!(c.tick(&mut m, &BTreeMap::new(), 1000).is_err());
        assert_eq!(snapshot(&c), before);
        m.broken = false;
        c.tick(&mut m, &BTreeMap::new(), 1100).unwrap();
        assert_eq!(weights(&c), (50, 50));
    }

    #[test]
    fn a_removed_healthy_backend_lingers_until_its_flows_end() {
        let (mut c, mut m) = setup();
        let gone: SocketAddr = "198.18.1.12:8080".parse().unwrap();
        c.handle(
            &mut m,
            &backend_cmd(BackendAction::Remove, "198.18.1.12:8080", false),
            10,
        )
        .unwrap();
        let index = c.programmer.services["web"].lingering[&gone];
        // Pins kept: the data plane sees it as draining, not unused.
        assert_eq!(
            m.backends[&index],
            switch_common::BackendState::Draining as u8
        );
        assert!(c.lingering["web"].contains_key(&gone));
        // A count taken before it began lingering proves nothing.
        c.settle_lingering(&mut m, &HashMap::new(), 5, 20).unwrap();
        assert!(c.lingering.contains_key("web"));
        // Live flows: it stays.
        c.settle_lingering(&mut m, &[(index, 3)].into(), 15, 20)
            .unwrap();
        assert!(c.lingering.contains_key("web"));
        // No flows left: released, the slot is unused again.
        c.settle_lingering(&mut m, &HashMap::new(), 30, 40).unwrap();
        assert!(!c.lingering.contains_key("web"));
        assert_eq!(
            m.backends[&index],
            switch_common::BackendState::Unused as u8
        );
        assert!(
            c.history
                .iter()
                .any(|e| e.what.contains("released: no flows left"))
        );
    }

    #[test]
    fn a_lingering_backend_is_cut_when_down_or_past_its_limit_and_kept_when_readded() {
        let (mut c, mut m) = setup();
        let a: SocketAddr = "198.18.1.12:8080".parse().unwrap();
        c.handle(
            &mut m,
            &backend_cmd(BackendAction::Remove, "198.18.1.12:8080", false),
            10,
        )
        .unwrap();
        let index = c.programmer.services["web"].lingering[&a];
        // Down while lingering: its flows go.
        for t in [20, 30] {
            c.record_health("web", a, Err("refused".into()), t);
        }
        c.settle_lingering(&mut m, &[(index, 3)].into(), 35, 40)
            .unwrap();
        assert!(!c.lingering.contains_key("web"));

        // Limit: cut after it even with flows.
        let (mut c, mut m) = setup();
        c.handle(
            &mut m,
            &Command::Backend {
                service: "web".into(),
                pool: "blue".into(),
                addr: a,
                action: BackendAction::Remove,
                weight: None,
                now: false,
                linger_limit_ms: Some(100),
            },
            10,
        )
        .unwrap();
        let index = c.programmer.services["web"].lingering[&a];
        c.settle_lingering(&mut m, &[(index, 3)].into(), 50, 60)
            .unwrap();
        assert!(c.lingering.contains_key("web"));
        c.settle_lingering(&mut m, &[(index, 3)].into(), 105, 110)
            .unwrap();
        assert!(!c.lingering.contains_key("web"));

        // Added back while lingering: same index, pins intact.
        let (mut c, mut m) = setup();
        c.handle(
            &mut m,
            &backend_cmd(BackendAction::Remove, "198.18.1.12:8080", false),
            10,
        )
        .unwrap();
        let index = c.programmer.services["web"].lingering[&a];
        c.handle(
            &mut m,
            &backend_cmd(BackendAction::Add, "198.18.1.12:8080", false),
            20,
        )
        .unwrap();
        assert_eq!(c.programmer.services["web"].backends[&a], index);
        assert!(c.lingering.get("web").is_none_or(|l| l.is_empty()));

        // --now: cut at once.
        let (mut c, mut m) = setup();
        c.handle(
            &mut m,
            &backend_cmd(BackendAction::Remove, "198.18.1.12:8080", true),
            10,
        )
        .unwrap();
        assert!(c.lingering.get("web").is_none_or(|l| l.is_empty()));
        assert!(c.programmer.services["web"].lingering.is_empty());
    }
}
