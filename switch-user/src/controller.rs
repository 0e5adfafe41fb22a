//! The daemon's brain, free of I/O: desired state, validation, and the
//! commands that change it. Each command is validated whole, then applied
//! through the programmer, then recorded in the history; a rejected command
//! changes nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::{
    api::{BackendAction, Command, Event},
    config::{AdminState, BackendConfig, ConfigFile, ServiceConfig},
    programmer::{Maps, Programmer},
};

const HISTORY_LIMIT: usize = 10_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Controller {
    pub services: BTreeMap<String, ServiceConfig>,
    pub programmer: Programmer,
    pub history: Vec<Event>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Controller {
    pub fn new(programmer: Programmer) -> Self {
        Controller {
            services: BTreeMap::new(),
            programmer,
            history: Vec::new(),
        }
    }

    fn record(&mut self, service: &str, what: String, ok: bool) {
        self.history.push(Event {
            at_ms: now_ms(),
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

    /// Re-writes every service into the maps (after a restart).
    pub fn reapply(&mut self, maps: &mut dyn Maps) -> Result<()> {
        for s in self.services.clone().values() {
            self.programmer.apply(maps, s, &BTreeSet::new())?;
        }
        Ok(())
    }

    /// Runs a mutating command. Returns Ok(()) or the reason it was refused.
    pub fn handle(&mut self, maps: &mut dyn Maps, cmd: &Command) -> Result<()> {
        match cmd {
            Command::Status { .. } | Command::History { .. } => Ok(()),
            Command::Apply { services } => self.apply_all(maps, services),
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
                self.change(maps, s, what)
            }
            Command::Flip { service, to } => {
                let mut s = self.service(service)?.clone();
                let target = s
                    .pool(to)
                    .ok_or_else(|| anyhow!("to: service {service:?} has no pool {to:?}"))?;
                if !target
                    .backends
                    .iter()
                    .any(|b| b.state() == AdminState::Active)
                {
                    bail!(
                        "to: pool {to:?} has no active backend; flipping to it would drop every new connection"
                    );
                }
                for p in &mut s.pools {
                    p.weight = if &p.name == to { 100 } else { 0 };
                }
                self.change(maps, s, format!("flip to {to}"))
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
                self.change(
                    maps,
                    s,
                    format!("backend {action:?} {addr} in {pool}").to_lowercase(),
                )
            }
        }
    }

    fn change(&mut self, maps: &mut dyn Maps, s: ServiceConfig, what: String) -> Result<()> {
        let name = s.name.clone();
        match self.programmer.apply(maps, &s, &BTreeSet::new()) {
            Ok(()) => {
                self.services.insert(name.clone(), s);
                self.record(&name, what, true);
                Ok(())
            }
            Err(e) => {
                self.record(&name, format!("{what}: {e}"), false);
                Err(e)
            }
        }
    }

    fn apply_all(&mut self, maps: &mut dyn Maps, services: &[ServiceConfig]) -> Result<()> {
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
            self.record(&name, "removed".into(), true);
        }
        for s in services {
            if self.services.get(&s.name) == Some(s) {
                continue;
            }
            self.change(maps, s.clone(), "applied".into())?;
        }
        Ok(())
    }
}
