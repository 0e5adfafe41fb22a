//! Validate and plan: each command becomes a [`Plan`] (new desired state, strategy, undo), touching nothing.

use super::*;

impl Controller {
    pub(super) fn weights(
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
    pub(super) fn flip(
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
    pub(super) fn canary(
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

    pub(super) fn plan_rolling(&self, cmd: &Command) -> Result<Plan> {
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn plan_backend(
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
            && !(1..=crate::model::config::MAX_WEIGHT).contains(&w)
        {
            bail!(
                "weight: {w} must be from 1 to {}",
                crate::model::config::MAX_WEIGHT
            );
        }
        plan.spec = Some(s);
        Ok(plan)
    }

    pub(super) fn refuse_if_running(&self, service: &str) -> Result<()> {
        self.service(service)?;
        if let Some(s) = self.running(service) {
            return Err(Refusal::conflict(format!(
                "service {service:?} already has a running strategy ({}); pause, promote or abort it first",
                s.kind().name()
            ))
            .into());
        }
        Ok(())
    }

    /// A plan that applies a strategy's `changes` to a copy of the service.
    pub(super) fn plan_changes(
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
}
