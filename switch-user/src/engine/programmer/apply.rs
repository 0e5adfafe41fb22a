//! `Programmer::apply`: one service's desired state into the maps, in an
//! order that keeps every packet consistent.

use super::*;

impl Programmer {
    /// Applies one service: new backends, new table(s), then the single
    /// service write. `unhealthy` backends get no new flows and lose pins.
    pub fn apply(
        &mut self,
        maps: &mut dyn Maps,
        spec: &ServiceConfig,
        unhealthy: &BTreeSet<SocketAddr>,
    ) -> Result<()> {
        self.check(spec)?;
        let key = service_key(spec);
        let old = self.services.get(&spec.name).cloned();
        if let Some(o) = &old
            && service_key(&o.spec) != key
        {
            bail!("vip: a service's VIP cannot change; remove and add it instead");
        }
        let id = match &old {
            Some(o) => o.id,
            None => (0..self.max_services)
                .find(|i| !self.services.values().any(|p| p.id == *i))
                .ok_or_else(|| anyhow!("service capacity exhausted"))?,
        };
        let backends = self.place_backends(maps, spec, old.as_ref())?;
        // 1. Backends (new ones are not in any live table yet).
        self.write_backends(maps, spec, id, &backends, unhealthy)?;
        // 2. Tables into free slots (previous tables give way when full).
        let (table_slot, cohort_table) = self.write_tables(maps, spec, id, &backends, unhealthy)?;
        // Backends leaving the pool linger: no new flows (they are in no
        // new table), established flows stay pinned, until released.
        let lingering = self.linger_leavers(maps, id, old.as_ref(), &backends, unhealthy)?;
        // The reply lookups this service needs are switched on before it
        // goes live (extra flags only cost a lookup).
        self.write_config_with(maps, Some(spec))?;

        // 3. The one write that makes it live. The table it replaces stays
        // readable as the previous one.
        let prev_table = old
            .as_ref()
            .map(|o| o.table)
            .filter(|t| self.slot_history && *t < NO_PREV_TABLE as u32);
        let service = service_entry(id, table_slot, cohort_table, prev_table, spec);
        commit_point(maps, &key, &service)?;
        // The VIP answers ping (idempotent; also on adopted state).
        maps.set_service(&echo_key(spec), &service)?;

        // 4. Clean up what the old state had and the new one does not. The
        // new state is live: a failure here is logged, not returned, so the
        // caller commits what the data plane now does.
        self.history.retain(|n| n != &spec.name);
        if prev_table.is_some() {
            self.history.push_back(spec.name.clone());
        }
        if let Some(o) = old {
            self.clean_up_after(maps, spec, id, o, prev_table);
        }
        self.services.insert(
            spec.name.clone(),
            Placed {
                id,
                table: table_slot,
                cohort_table,
                spec: spec.clone(),
                backends,
                lingering,
                prev_table,
            },
        );
        while self.history.len() > HISTORY_TABLES as usize {
            if let Err(e) = self.forget_oldest_history(maps) {
                tracing::warn!("dropping a previous table: {e:#}");
                break;
            }
        }
        if let Err(e) = self.write_config(maps) {
            tracing::warn!("rewriting the global config: {e:#}");
        }
        Ok(())
    }

    /// An index for every backend of the new spec: kept from the old state
    /// (a lingering backend that comes back keeps its index, and so its
    /// established flows), or a free one with its cached next hop cleared.
    fn place_backends(
        &mut self,
        maps: &mut dyn Maps,
        spec: &ServiceConfig,
        old: Option<&Placed>,
    ) -> Result<BTreeMap<SocketAddr, u32>> {
        let mut used = self.used_backends();
        // Every index below `free_from` is taken: the search goes on from
        // there (10,000 new backends must not cost 10,000 scans from 0).
        let mut free_from = 0;
        let mut backends = BTreeMap::new();
        for b in spec.pools.iter().flat_map(|p| &p.backends) {
            let a = b.addr();
            let index = match old.and_then(|o| o.backends.get(&a).or(o.lingering.get(&a))) {
                Some(&i) => i,
                None => {
                    let i = (free_from..self.max_backends)
                        .find(|i| !used.contains(i))
                        .ok_or_else(|| anyhow!("backend capacity exhausted"))?;
                    used.insert(i);
                    free_from = i + 1;
                    let g = self.generations.entry(i).or_insert(0);
                    *g = g.wrapping_add(1);
                    // Whatever the last occupant's next hop was, it is not
                    // this backend's: the slow path until the daemon knows.
                    maps.set_nexthop(i, &NextHop::default())?;
                    i
                }
            };
            backends.insert(a, index);
        }
        Ok(backends)
    }

    /// A backend's entry as the data plane reads it.
    fn backend_entry(
        &self,
        a: SocketAddr,
        state: AdminState,
        index: u32,
        service: u32,
        unhealthy: &BTreeSet<SocketAddr>,
    ) -> Backend {
        Backend {
            addr: addr_bytes(a.ip()),
            port: a.port().to_be(),
            family: family(a.ip()),
            state: if unhealthy.contains(&a) {
                BackendState::Down
            } else if state == AdminState::Draining {
                BackendState::Draining
            } else {
                BackendState::Active
            } as u8,
            generation: self.generations.get(&index).copied().unwrap_or(0),
            service,
        }
    }

    fn write_backends(
        &self,
        maps: &mut dyn Maps,
        spec: &ServiceConfig,
        id: u32,
        backends: &BTreeMap<SocketAddr, u32>,
        unhealthy: &BTreeSet<SocketAddr>,
    ) -> Result<()> {
        let key = service_key(spec);
        for b in spec.pools.iter().flat_map(|p| &p.backends) {
            let index = backends[&b.addr()];
            maps.set_backend(
                index,
                &self.backend_entry(b.addr(), b.state(), index, id, unhealthy),
            )?;
            if spec.mode == ForwardMode::Nat {
                maps.set_real(
                    &real_key(spec, b.addr()),
                    &Real {
                        vip: key.addr,
                        vip_port: key.port,
                        _pad: [0; 2],
                        backend: index,
                    },
                )?;
            }
        }
        Ok(())
    }

    /// The service's table and, with cohorts, the cohorts' table, each into
    /// a free slot; the cohorts' addresses. Returns the slots.
    fn write_tables(
        &mut self,
        maps: &mut dyn Maps,
        spec: &ServiceConfig,
        id: u32,
        backends: &BTreeMap<SocketAddr, u32>,
        unhealthy: &BTreeSet<SocketAddr>,
    ) -> Result<(u32, Option<u32>)> {
        let needed = 1 + usize::from(!spec.cohorts.is_empty());
        while self.free_tables.len() + self.retired.len() < needed {
            if !self.forget_oldest_history(maps)? {
                break;
            }
        }
        let pools = self.pool_specs(spec, backends, unhealthy, None);
        let table_slot = self.take_table()?;
        maps.write_table(table_slot, &to_table(&table::build(self.seed, &pools)))?;
        let cohort_table = match spec.cohorts.first().map(|c| c.pool.clone()) {
            Some(pool) => {
                let slot = self.take_table()?;
                let pools = self.pool_specs(spec, backends, unhealthy, Some(&pool));
                maps.write_table(slot, &to_table(&table::build(self.seed, &pools)))?;
                Some(slot)
            }
            None => None,
        };
        for c in &spec.cohorts {
            maps.set_cohort(
                id,
                addr_bytes(c.cidr.addr()),
                c.cidr.prefix_len() as u32,
                true,
            )?;
        }
        Ok((table_slot, cohort_table))
    }

    /// Backends of the old state that the new one lacks: draining, kept
    /// by index until released.
    fn linger_leavers(
        &self,
        maps: &mut dyn Maps,
        id: u32,
        old: Option<&Placed>,
        backends: &BTreeMap<SocketAddr, u32>,
        unhealthy: &BTreeSet<SocketAddr>,
    ) -> Result<BTreeMap<SocketAddr, u32>> {
        let mut lingering = BTreeMap::new();
        if let Some(o) = old {
            for (a, index) in o.backends.iter().chain(&o.lingering) {
                if backends.contains_key(a) {
                    continue;
                }
                let e = self.backend_entry(*a, AdminState::Draining, *index, id, unhealthy);
                maps.set_backend(*index, &e)?;
                lingering.insert(*a, *index);
            }
        }
        Ok(lingering)
    }

    /// After the new state is live: the old tables retired, the old
    /// cohorts' addresses removed (a failure is logged).
    fn clean_up_after(
        &mut self,
        maps: &mut dyn Maps,
        spec: &ServiceConfig,
        id: u32,
        o: Placed,
        prev_table: Option<u32>,
    ) {
        if prev_table.is_none() {
            self.retire_table(o.table);
        }
        if let Some(t) = o.prev_table {
            self.retire_table(t);
        }
        if let Some(t) = o.cohort_table {
            self.retire_table(t);
        }
        for c in &o.spec.cohorts {
            if !spec.cohorts.contains(c)
                && let Err(e) = maps.set_cohort(
                    id,
                    addr_bytes(c.cidr.addr()),
                    c.cidr.prefix_len() as u32,
                    false,
                )
            {
                tracing::warn!(service = %spec.name, "removing cohort {}: {e:#}", c.cidr);
            }
        }
    }
}
