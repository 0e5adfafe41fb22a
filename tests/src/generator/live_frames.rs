//! XDP live frames: the `packet_gen` program, run by `BPF_PROG_TEST_RUN`
//! in live-frames mode, patches each recycled page into the next flow and
//! sends it with XDP_TX. No skb per frame: the fastest path, and the one a
//! hardened kernel may refuse.

use anyhow::Result;

use super::{Flows, Sender};
use crate::{fixture::live_frames, reference::Reference};

pub struct LiveFrames {
    r: Reference,
    ifindex: u32,
    frame: Vec<u8>,
}

impl LiveFrames {
    pub fn open(ifindex: u32, flows: &Flows) -> Result<LiveFrames> {
        let mut r = Reference::load()?;
        r.set_gen_config(&flows.cfg)?;
        r.set_gen_template(&flows.frame[..flows.cfg.hdr_len as usize])?;
        r.program("packet_gen")?;
        Ok(LiveFrames {
            r,
            ifindex,
            frame: flows.frame.clone(),
        })
    }
}

impl Sender for LiveFrames {
    // The program keeps its own flow counter (per CPU), so `first` is not
    // passed down: the flows cycle all the same.
    fn send(&mut self, _first: u64, count: u32) -> Result<()> {
        let prog = self.r.program("packet_gen")?;
        live_frames(prog, self.ifindex, &self.frame, count, 64)?;
        Ok(())
    }
}
