//! `sendmmsg` on an AF_PACKET socket: 64 frames a syscall, each its own
//! buffer patched in place. Works wherever raw sockets do.

use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{Result, bail};

use super::{Flows, Sender, packet_ring::packet_socket};

const BATCH: usize = 64;

pub struct Sendmmsg {
    fd: OwnedFd,
    flows: Flows,
    bufs: Vec<Vec<u8>>,
}

impl Sendmmsg {
    pub fn open(ifindex: u32, flows: &Flows) -> Result<Sendmmsg> {
        let fd = packet_socket(ifindex, false)?;
        Ok(Sendmmsg {
            fd,
            flows: flows.clone(),
            bufs: vec![flows.frame.clone(); BATCH],
        })
    }
}

impl Sender for Sendmmsg {
    fn send(&mut self, first: u64, count: u32) -> Result<()> {
        let mut n = first;
        let end = first + count as u64;
        while n < end {
            let k = ((end - n) as usize).min(BATCH);
            for (i, b) in self.bufs[..k].iter_mut().enumerate() {
                self.flows.patch(b, n + i as u64);
            }
            let mut iovs: Vec<libc::iovec> = self.bufs[..k]
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iovs
                .iter_mut()
                .map(|iov| {
                    // SAFETY: an all-zero msghdr is a valid empty message.
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_iov = iov;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            let mut done = 0usize;
            while done < k {
                // SAFETY: msgs point into iovs and bufs, alive for the call.
                let r = unsafe {
                    libc::sendmmsg(
                        self.fd.as_raw_fd(),
                        msgs[done..].as_mut_ptr(),
                        (k - done) as u32,
                        0,
                    )
                };
                if r < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::ENOBUFS) {
                        std::thread::yield_now();
                        continue;
                    }
                    bail!("sendmmsg: {e}");
                }
                done += r as usize;
            }
            n += k as u64;
        }
        Ok(())
    }
}
