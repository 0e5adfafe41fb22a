//! An AF_PACKET socket with a memory-mapped TX ring (TPACKET_V2) and
//! `PACKET_QDISC_BYPASS`: frames are written into shared slots and one
//! `send` hands the kernel every slot marked ready. Each slot holds the
//! template from the start; a frame only patches its varied fields.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Result, bail};

use super::{Flows, Sender};

// <linux/if_packet.h>
const PACKET_VERSION: libc::c_int = 10;
const PACKET_TX_RING: libc::c_int = 13;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const TPACKET_V2: libc::c_int = 1;
const TP_STATUS_AVAILABLE: u32 = 0;
const TP_STATUS_SEND_REQUEST: u32 = 1;
const TP_STATUS_WRONG_FORMAT: u32 = 4;
/// TPACKET_ALIGN(sizeof(struct tpacket2_hdr)): where a TX frame's data
/// starts in its slot (without PACKET_TX_HAS_OFF).
const DATA_OFF: usize = 32;

#[repr(C)]
struct TpacketReq {
    block_size: u32,
    block_nr: u32,
    frame_size: u32,
    frame_nr: u32,
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, v: &T) -> Result<()> {
    // SAFETY: `v` is a live value of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("setsockopt({opt}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A send-only AF_PACKET socket bound to `ifindex` (protocol 0: it
/// receives nothing), with the qdisc bypassed when `bypass`.
pub(super) fn packet_socket(ifindex: u32, bypass: bool) -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if bypass {
        setsockopt(&fd, PACKET_QDISC_BYPASS, &1i32)?;
    }
    // SAFETY: a zeroed sockaddr_ll with family and ifindex set.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("bind AF_PACKET: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

pub struct PacketRing {
    fd: OwnedFd,
    ring: *mut u8,
    ring_len: usize,
    slot_size: usize,
    slots: usize,
    head: usize,
    flows: Flows,
}

impl PacketRing {
    pub fn open(ifindex: u32, flows: &Flows) -> Result<PacketRing> {
        let fd = packet_socket(ifindex, true)?;
        setsockopt(&fd, PACKET_VERSION, &TPACKET_V2)?;
        let slot_size = (flows.frame.len() + DATA_OFF).next_power_of_two().max(2048);
        let block_size = slot_size.max(1 << 16);
        let block_nr = 64;
        let slots = block_size / slot_size * block_nr;
        let req = TpacketReq {
            block_size: block_size as u32,
            block_nr: block_nr as u32,
            frame_size: slot_size as u32,
            frame_nr: slots as u32,
        };
        setsockopt(&fd, PACKET_TX_RING, &req)?;
        let ring_len = block_size * block_nr;
        // SAFETY: mapping the ring the kernel just made for this socket.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            bail!("mmap of the TX ring: {}", std::io::Error::last_os_error());
        }
        let mut r = PacketRing {
            fd,
            ring: ring.cast(),
            ring_len,
            slot_size,
            slots,
            head: 0,
            flows: flows.clone(),
        };
        for i in 0..slots {
            let len = r.flows.frame.len();
            r.data(i)[..len].copy_from_slice(&flows.frame);
        }
        Ok(r)
    }

    fn status(&self, i: usize) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: slot i's header starts with the u32 tp_status, aligned,
        // shared with the kernel: read and written atomically.
        unsafe { &*(self.ring.add(i * self.slot_size) as *const std::sync::atomic::AtomicU32) }
    }

    fn data(&mut self, i: usize) -> &mut [u8] {
        // SAFETY: slot i's data area lies inside the mapping, and the kernel
        // does not touch a slot we own (status AVAILABLE).
        unsafe {
            std::slice::from_raw_parts_mut(
                self.ring.add(i * self.slot_size + DATA_OFF),
                self.slot_size - DATA_OFF,
            )
        }
    }

    fn set_len(&mut self, i: usize, len: u32) {
        // SAFETY: tp_len is the second u32 of the slot's header.
        unsafe { (self.ring.add(i * self.slot_size + 4) as *mut u32).write_volatile(len) };
    }

    /// Hands every ready slot to the kernel; `wait`: until they are sent.
    fn flush(&self, wait: bool) -> Result<()> {
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        loop {
            // SAFETY: send(2) with no buffer: the ring is the buffer.
            let r = unsafe { libc::send(self.fd.as_raw_fd(), std::ptr::null(), 0, flags) };
            if r >= 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EINTR) => {
                    std::thread::yield_now()
                }
                _ => bail!("send on the TX ring: {e}"),
            }
        }
    }

    /// Waits for slot `i` to be ours again.
    fn take(&self, i: usize) -> Result<()> {
        use std::sync::atomic::Ordering::Acquire;
        for round in 0.. {
            match self.status(i).load(Acquire) {
                TP_STATUS_AVAILABLE => return Ok(()),
                s if s & TP_STATUS_WRONG_FORMAT != 0 => {
                    bail!("the kernel refused a frame of the TX ring (wrong format)")
                }
                // SEND_REQUEST, SENDING: the kernel still has it.
                _ => {
                    if round > 1_000_000 {
                        bail!("the TX ring's frames are not being sent");
                    }
                    self.flush(round > 4)?;
                }
            }
        }
        unreachable!()
    }
}

impl Sender for PacketRing {
    fn send(&mut self, first: u64, count: u32) -> Result<()> {
        use std::sync::atomic::Ordering::Release;
        let len = self.flows.frame.len();
        let batch = (self.slots / 4) as u64;
        for n in first..first + count as u64 {
            let i = self.head;
            self.take(i)?;
            let cfg = self.flows.cfg;
            super::patch(&cfg, &mut self.data(i)[..len], n);
            self.set_len(i, len as u32);
            self.status(i).store(TP_STATUS_SEND_REQUEST, Release);
            self.head = (i + 1) % self.slots;
            if (n + 1 - first).is_multiple_of(batch) {
                self.flush(false)?;
            }
        }
        self.flush(false)
    }
}

impl Drop for PacketRing {
    fn drop(&mut self) {
        let _ = self.flush(true);
        // SAFETY: the mapping made in open, unmapped once.
        unsafe { libc::munmap(self.ring.cast(), self.ring_len) };
    }
}

// SAFETY: the ring is owned by this value alone; the raw pointer only
// keeps it from being Send automatically.
unsafe impl std::marker::Send for PacketRing {}
