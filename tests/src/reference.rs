//! The benchmark's reference programs and packet generator (the
//! `switch-bench` object, apart from the production one): loading,
//! attaching, and the maps the harness fills.

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMap, DevMapHash, HashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use switch_common::{GenConfig, Service, ServiceKey};
use switch_user::dataplane::{BENCH_OBJECT, ifindex, verifier_error};

pub struct Reference {
    ebpf: Ebpf,
}

impl Reference {
    pub fn load() -> Result<Reference> {
        let ebpf = EbpfLoader::new()
            .load(BENCH_OBJECT)
            .context("loading the benchmark object")?;
        Ok(Reference { ebpf })
    }

    /// One of `bench_floor`, `bench_minimal`, `packet_gen`, `sink`,
    /// `bench_redirect`, loaded.
    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the benchmark object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load().map_err(verifier_error)?;
        }
        Ok(prog)
    }

    /// Attaches `name` to `ifname` in driver mode.
    pub fn attach(&mut self, name: &str, ifname: &str) -> Result<()> {
        self.program(name)?
            .attach(ifname, XdpMode::Driver)
            .with_context(|| format!("attaching {name} to {ifname}"))?;
        Ok(())
    }

    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the benchmark object"))
    }

    /// The service `bench_minimal` looks up, as the switch has it.
    pub fn set_service(&mut self, key: &ServiceKey, s: &Service) -> Result<()> {
        let mut m: HashMap<&mut MapData, ServiceKey, Service> =
            HashMap::try_from(self.map("SERVICES")?)?;
        m.insert(key, s, 0)?;
        Ok(())
    }

    pub fn add_device(&mut self, ifname: &str) -> Result<()> {
        let i = ifindex(ifname)?;
        let mut d: DevMapHash<&mut MapData> = DevMapHash::try_from(self.map("DEVICES")?)?;
        d.insert(i, i, None, 0)?;
        Ok(())
    }

    pub fn set_gen_config(&mut self, c: &GenConfig) -> Result<()> {
        let mut a: Array<&mut MapData, GenConfig> = Array::try_from(self.map("GEN_CONFIG")?)?;
        a.set(0, c, 0)?;
        Ok(())
    }

    pub fn set_gen_template(&mut self, headers: &[u8]) -> Result<()> {
        let mut words = [0u64; 10];
        for (i, chunk) in headers.chunks(8).take(10).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            words[i] = u64::from_ne_bytes(b);
        }
        let mut a: Array<&mut MapData, [u64; 10]> = Array::try_from(self.map("GEN_TEMPLATE")?)?;
        a.set(0, words, 0)?;
        Ok(())
    }

    pub fn set_redirect_target(&mut self, ifname: &str) -> Result<()> {
        let i = ifindex(ifname)?;
        self.add_device(ifname)?;
        let mut a: Array<&mut MapData, u32> = Array::try_from(self.map("REDIRECT_TARGET")?)?;
        a.set(0, i, 0)?;
        Ok(())
    }

    /// One of `gen_loop`'s control words (`LOOP_*`).
    pub fn set_loop_word(&mut self, i: u32, v: u64) -> Result<()> {
        let mut a: Array<&mut MapData, u64> = Array::try_from(self.map("GEN_LOOP")?)?;
        a.set(i, v, 0)?;
        Ok(())
    }

    pub fn loop_word(&mut self, i: u32) -> Result<u64> {
        let a: Array<&MapData, u64> = Array::try_from(&*self.map("GEN_LOOP")?)?;
        Ok(a.get(&i, 0)?)
    }

    /// `gen_loop`'s broadcast targets: the outgoing interface and the loop.
    pub fn set_loop_targets(&mut self, out: u32, back: u32) -> Result<()> {
        let mut d: DevMap<&mut MapData> = DevMap::try_from(self.map("GEN_OUT")?)?;
        d.set(0, out, None, 0)?;
        d.set(1, back, None, 0)?;
        Ok(())
    }

    /// Frames counted by the `sink` program, all CPUs.
    pub fn sink_count(&mut self) -> Result<u64> {
        let a: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(&*self.map("SINK_COUNT")?)?;
        Ok(a.get(&0, 0)?.iter().sum())
    }
}
