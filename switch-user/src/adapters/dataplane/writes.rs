//! The map writes of the `Maps` seam, on the kernel's maps.

use super::*;

/// The programmer's map writes (see `programmer::Maps`).
impl Maps for Dataplane {
    fn set_config(&mut self, c: &Config) -> Result<()> {
        let mut a: Array<&mut MapData, Config> = Array::try_from(self.map(names::CONFIG)?)?;
        a.set(0, c, 0)?;
        Ok(())
    }
    fn write_table(&mut self, slot: u32, table: &Table) -> Result<()> {
        let mut a: Array<&mut MapData, Table> = Array::try_from(self.map(names::TABLES)?)?;
        a.set(slot, table, 0)
            .with_context(|| format!("writing selection table {slot}"))?;
        Ok(())
    }
    fn set_shadow(&mut self, id: u32, sample: u32) -> Result<()> {
        let mut a: Array<&mut MapData, switch_common::ShadowConfig> =
            Array::try_from(self.map(names::SHADOWS)?)?;
        a.set(id, switch_common::ShadowConfig { sample, _pad: 0 }, 0)
            .context("writing the shadow sample")?;
        Ok(())
    }
    fn set_vip_filter(&mut self, f: &switch_common::AddrFilter) -> Result<()> {
        let mut a: Array<&mut MapData, switch_common::AddrFilter> =
            Array::try_from(self.map(names::VIP_FILTER)?)?;
        a.set(0, f, 0).context("writing the VIP filter")?;
        Ok(())
    }
    fn set_reply_filter(&mut self, f: &switch_common::AddrFilter) -> Result<()> {
        let mut a: Array<&mut MapData, switch_common::AddrFilter> =
            Array::try_from(self.map(names::REPLY_FILTER)?)?;
        a.set(0, f, 0).context("writing the reply filter")?;
        Ok(())
    }
    fn set_nexthop(&mut self, index: u32, hop: &NextHop) -> Result<()> {
        let mut a: Array<&mut MapData, NextHop> = Array::try_from(self.map(names::NEXTHOPS)?)?;
        a.set(index, hop, 0)
            .with_context(|| format!("writing the next hop of backend {index}"))?;
        Ok(())
    }
    fn set_service(&mut self, key: &ServiceKey, s: &Service) -> Result<()> {
        // By id first (established flows read it), then the VIP's entry.
        let mut a: Array<&mut MapData, Service> = Array::try_from(self.map(names::SERVICE_BY_ID)?)?;
        a.set(s.id, s, 0).context("writing service by id")?;
        let mut m: HashMap<&mut MapData, ServiceKey, Service> =
            HashMap::try_from(self.map(names::SERVICES)?)?;
        m.insert(key, s, 0).context("writing service")?;
        Ok(())
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        let mut m: HashMap<&mut MapData, ServiceKey, Service> =
            HashMap::try_from(self.map(names::SERVICES)?)?;
        m.remove(key).context("removing service")?;
        Ok(())
    }
    fn set_backend(&mut self, index: u32, b: &Backend) -> Result<()> {
        let mut a: Array<&mut MapData, Backend> = Array::try_from(self.map(names::BACKENDS)?)?;
        a.set(index, b, 0)
            .with_context(|| format!("writing backend {index}"))?;
        Ok(())
    }
    fn set_real(&mut self, key: &RealKey, r: &Real) -> Result<()> {
        let mut m: HashMap<&mut MapData, RealKey, Real> =
            HashMap::try_from(self.map(names::REALS)?)?;
        m.insert(key, r, 0).context("writing reply mapping")?;
        Ok(())
    }
    fn remove_real(&mut self, key: &RealKey) -> Result<()> {
        let mut m: HashMap<&mut MapData, RealKey, Real> =
            HashMap::try_from(self.map(names::REALS)?)?;
        match m.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
    fn set_cohort(
        &mut self,
        service: u32,
        addr: [u8; 16],
        prefix: u32,
        present: bool,
    ) -> Result<()> {
        let mut t: LpmTrie<&mut MapData, CohortKey, u32> =
            LpmTrie::try_from(self.map(names::COHORTS)?)?;
        let key = Key::new(
            32 + prefix,
            CohortKey {
                service: service.to_be_bytes(),
                addr,
            },
        );
        if present {
            t.insert(&key, 1, 0).context("writing cohort")?;
        } else {
            let _ = t.remove(&key);
        }
        Ok(())
    }
}
