//! Second handles on maps for threads of their own: the data plane's clock, the replies' route cache epoch, the flow scanner.

use super::*;

/// The data plane's time for flow timeouts: pins' idle and closing timers
/// advance only while something ticks it (the daemon, every 100 ms). A
/// stopped clock keeps pins longer, never shorter, and a new daemon goes on
/// from where the last one left it: time while no daemon ran does not
/// count, or every flow that stayed busy through a restart would look idle
/// for that long (its packets refreshed it with the stopped time).
pub struct Clock {
    pub(super) map: aya::maps::Map,
    /// CLOCK_MONOTONIC minus the data plane's time when the handle was
    /// made: the time no daemon ticked.
    pub(super) behind: u64,
}

impl Clock {
    pub const EVERY: std::time::Duration = std::time::Duration::from_millis(100);

    /// Moves the data plane's time on to now (CLOCK_MONOTONIC less the
    /// time no daemon ticked).
    pub fn tick(&mut self) -> Result<()> {
        self.set(self.now())
    }

    /// The data plane's time as this handle keeps it.
    pub fn now(&self) -> u64 {
        monotonic_ns().saturating_sub(self.behind)
    }

    /// Sets the data plane's time (ns); tests move it to age pins.
    pub fn set(&mut self, ns: u64) -> Result<()> {
        let mut a: Array<&mut MapData, u64> = Array::try_from(&mut self.map)?;
        a.set(0, ns, 0).context("writing the clock")?;
        Ok(())
    }

    /// The data plane's time (ns).
    pub fn read(&self) -> Result<u64> {
        let a: Array<&MapData, u64> = Array::try_from(&self.map)?;
        Ok(a.get(&0, 0)?)
    }

    /// Ticks forever, on a thread of its own (never behind the daemon's
    /// locks: a slow command must not stop time for the data plane).
    pub fn run(mut self) {
        let mut failing = false;
        loop {
            match self.tick() {
                // Once per streak of failures, not ten times a second.
                Err(e) if !failing => {
                    tracing::warn!("{e:#}; flow timeouts stand still until it works again");
                    failing = true;
                }
                Err(_) => {}
                Ok(()) => failing = false,
            }
            std::thread::sleep(Self::EVERY);
        }
    }
}

/// The data plane keeps the kernel's route answer for replies
/// (`REPLY_HOPS`) while the epoch stands: whoever watches the network moves
/// it on when something changed (a neighbour, a route, a link, a rule) and
/// every second, or turns the cache off.
pub struct ReplyHops {
    pub(super) map: aya::maps::Map,
    /// The last epoch written other than `REPLY_HOPS_OFF`.
    pub(super) epoch: u32,
    pub(super) off: bool,
}

impl ReplyHops {
    /// Every cached answer is asked again (unless the cache is off).
    pub fn advance(&mut self) -> Result<()> {
        if self.off {
            return Ok(());
        }
        self.next_epoch()
    }

    /// Off: every reply asks the kernel (routing rules that select by
    /// port, which the cache's key leaves out). On again: a new epoch, so
    /// nothing cached before counts.
    pub fn set_off(&mut self, off: bool) -> Result<()> {
        if off == self.off {
            return Ok(());
        }
        if off {
            self.write(switch_common::REPLY_HOPS_OFF)?;
            self.off = true;
            Ok(())
        } else {
            self.off = false;
            self.next_epoch()
        }
    }

    pub fn is_off(&self) -> bool {
        self.off
    }

    fn next_epoch(&mut self) -> Result<()> {
        let next = match self.epoch.wrapping_add(1) {
            switch_common::REPLY_HOPS_OFF => 0,
            n => n,
        };
        self.write(next)?;
        self.epoch = next;
        Ok(())
    }

    fn write(&mut self, epoch: u32) -> Result<()> {
        let mut a: Array<&mut MapData, u32> = Array::try_from(&mut self.map)?;
        a.set(0, epoch, 0).context("writing REPLY_HOPS_EPOCH")
    }
}

/// Counts live flows per backend by walking the flow table (a syscall per
/// entry: run it off the request path).
pub struct FlowScanner {
    pub(super) flows: aya::maps::Map,
    pub(super) backends: aya::maps::Map,
    pub(super) config: aya::maps::Map,
    pub(super) clock: Clock,
}

impl FlowScanner {
    /// Live flows per backend index: pinned to the backend's current
    /// occupant, not closing, and not idle past their timeout. (Entries the
    /// LRU has not evicted yet are not flows any more.)
    pub fn count_by_backend(&self) -> Result<std::collections::HashMap<u32, u64>> {
        let m: HashMap<&MapData, switch_common::FlowKey, switch_common::Flow> =
            HashMap::try_from(&self.flows)?;
        let config = Array::<&MapData, Config>::try_from(&self.config)?.get(&0, 0)?;
        let backends: Array<&MapData, Backend> = Array::try_from(&self.backends)?;
        // The pins' own clock, not the host's.
        let now = self.clock.read()?;
        let mut generations = std::collections::HashMap::new();
        let mut out = std::collections::HashMap::new();
        for (k, f) in m.iter().flatten() {
            if f.flags & switch_common::FLOW_CLOSING != 0 {
                continue;
            }
            let idle = if k.proto == switch_common::PROTO_TCP {
                config.tcp_idle_ns
            } else {
                config.udp_idle_ns
            };
            if now.saturating_sub(f.last_seen_ns) > idle {
                continue;
            }
            let generation = *generations.entry(f.backend).or_insert_with(|| {
                backends
                    .get(&f.backend, 0)
                    .map(|b| b.generation)
                    .unwrap_or(0)
            });
            if generation == f.generation {
                *out.entry(f.backend).or_insert(0) += 1;
            }
        }
        Ok(out)
    }
}
