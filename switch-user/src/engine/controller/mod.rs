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

mod execute;
mod health;
mod plan;
pub mod replica;
mod shadows;
mod steer;
#[cfg(test)]
mod tests;
mod tick;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
};

use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::model::error::{Refusal, WriteFailed, is_write_failure, refusal_of};
use crate::{
    engine::health::Health,
    engine::strategy::{BlueGreen, Canary, Change, Gates, Phase, Rolling, Signals, Strategy},
    engine::{maps::Maps, programmer::Programmer},
    model::api::{Actor, BackendAction, Command, Event, Outcome},
    model::config::{
        AdminState, BackendConfig, CohortConfig, ConfigFile, HealthConfig, ServiceConfig,
    },
    model::shadow::ShadowSpec,
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
    pub shadow_reports: BTreeMap<String, crate::model::shadow::Report>,
    /// Fleet mode: the fleet's health verdict overrules local probes.
    #[serde(skip)]
    pub fleet_health: Option<crate::engine::controller::replica::FleetHealth>,
    /// Fleet mode: each service's spec before its last change, as the
    /// fleet recorded it (see `ServiceRecord::previous`).
    #[serde(default)]
    pub previous: BTreeMap<String, ServiceConfig>,
    /// Who the command being handled came from (`handle_as`): the events it
    /// records carry it. None: the daemon acting by itself.
    #[serde(skip)]
    acting: Option<Actor>,
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
            acting: None,
        }
    }

    fn record(&mut self, now: u64, service: &str, what: String, ok: bool) {
        self.push_event(Event {
            at_ms: now,
            service: service.into(),
            what,
            ok,
            actor: self.acting.clone(),
            outcome: Outcome::Applied,
        });
    }

    /// A refused command, for the audit trail (see `Event::refused`).
    /// One that names a service that does not exist goes under `-` with
    /// those that name none.
    pub fn record_refused(&mut self, now: u64, cmd: &Command, actor: &Actor, why: &str) {
        let mut e = Event::refused(now, cmd, actor, why);
        if !self.services.contains_key(&e.service) {
            e.service = "-".into();
        }
        self.push_event(e);
    }

    /// A change made outside the controller (`fleet leave`), for the audit
    /// trail.
    pub fn record_as(&mut self, now: u64, service: &str, what: String, actor: &Actor) {
        self.acting = Some(actor.clone());
        self.record(now, service, what, true);
        self.acting = None;
    }

    fn push_event(&mut self, e: Event) {
        self.history.push(e);
        if self.history.len() > HISTORY_LIMIT {
            self.history.drain(..self.history.len() - HISTORY_LIMIT);
        }
    }

    pub fn service(&self, name: &str) -> Result<&ServiceConfig> {
        self.services
            .get(name)
            .ok_or_else(|| Refusal::not_found(format!("service: no service named {name:?}")).into())
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
    /// Carries out one command. An error is a [`Refusal`] (nothing
    /// changed: the request as given cannot be done) or a failed map write
    /// ([`WriteFailed`]: nothing committed either).
    /// `handle` for a caller: what it changes is recorded as theirs, and a
    /// refusal is recorded too (the only trace a refused command leaves).
    pub fn handle_as(
        &mut self,
        maps: &mut dyn Maps,
        cmd: &Command,
        now: u64,
        actor: &Actor,
    ) -> Result<()> {
        self.acting = Some(actor.clone());
        let r = self.handle(maps, cmd, now);
        self.acting = None;
        if let Err(e) = &r {
            self.record_refused(now, cmd, actor, &format!("{e:#}"));
        }
        r
    }

    pub fn handle(&mut self, maps: &mut dyn Maps, cmd: &Command, now: u64) -> Result<()> {
        self.dispatch(maps, cmd, now).map_err(|e| {
            if refusal_of(&e).is_some() || is_write_failure(&e) {
                e
            } else {
                Refusal::invalid(format!("{e:#}")).into()
            }
        })
    }

    /// One arm per command; long only because commands have many fields.
    fn dispatch(&mut self, maps: &mut dyn Maps, cmd: &Command, now: u64) -> Result<()> {
        cmd.check_inputs()?;
        match cmd {
            Command::Status { .. }
            | Command::History { .. }
            | Command::Membership { .. }
            | Command::Detach => Ok(()),
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
