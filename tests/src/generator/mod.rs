//! The packet generator behind the forwarding-rate figures and
//! `switch-bench generate`: TCP SYNs or UDP datagrams from many flows, sent
//! out of one interface as fast as the machine allows, by the first send
//! path the kernel accepts:
//!
//! 1. XDP live frames (`BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`,
//!    the xdp-trafficgen technique): the fastest, but a hardened kernel may
//!    refuse it (EPERM even to root);
//! 2. an XDP loop: a few frames circulating in a veth pair of XDP programs,
//!    each turn broadcasting the next flow out (needs only XDP attach);
//! 3. `sendmmsg` batches on an AF_PACKET socket: plain syscalls;
//! 4. an AF_PACKET socket with a memory-mapped TX ring and
//!    `PACKET_QDISC_BYPASS`: one syscall per batch, frames written in place.
//!
//! Skb-based paths (3, 4) pay for an skb per frame and, into a veth whose
//! peer runs XDP, a copy into a page: they run at a fraction of the others.
//!
//! The order is by measurement (docs/BENCHMARKS.md, "generator alone").
//! Every path sends the same frames: flow `n` varies the source port and the
//! low 16 bits of the source address of one template, checksums patched.

mod live_frames;
mod packet_ring;
mod sendmmsg;
mod xdp_loop;

use std::{
    fmt,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use switch_common::{FAMILY_V4, FAMILY_V6, GenConfig};

use crate::{L4, frame};

/// How frames leave the generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendPath {
    LiveFrames,
    XdpLoop,
    Sendmmsg,
    PacketRing,
}

impl SendPath {
    /// Fastest first: the order `auto` tries them in.
    pub const ALL: [SendPath; 4] = [
        SendPath::LiveFrames,
        SendPath::XdpLoop,
        SendPath::Sendmmsg,
        SendPath::PacketRing,
    ];

    /// The name on the command line (`--send-path`).
    pub fn id(self) -> &'static str {
        match self {
            SendPath::LiveFrames => "live-frames",
            SendPath::XdpLoop => "xdp-loop",
            SendPath::PacketRing => "packet-ring",
            SendPath::Sendmmsg => "sendmmsg",
        }
    }

    pub fn parse(s: &str) -> Result<SendPath, String> {
        SendPath::ALL
            .into_iter()
            .find(|p| p.id() == s)
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a send path: auto, live-frames, xdp-loop, sendmmsg or packet-ring"
                )
            })
    }
}

impl fmt::Display for SendPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendPath::LiveFrames => "XDP live frames",
            SendPath::XdpLoop => "XDP loop (devmap broadcast)",
            SendPath::PacketRing => "AF_PACKET TX ring (qdisc bypass)",
            SendPath::Sendmmsg => "AF_PACKET sendmmsg",
        })
    }
}

/// Which path to use: the first that works, or exactly one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Choice {
    #[default]
    Auto,
    Only(SendPath),
}

impl Choice {
    pub fn parse(s: &str) -> Result<Choice, String> {
        if s == "auto" {
            Ok(Choice::Auto)
        } else {
            SendPath::parse(s).map(Choice::Only)
        }
    }

    fn candidates(self) -> Vec<SendPath> {
        match self {
            Choice::Auto => SendPath::ALL.to_vec(),
            Choice::Only(p) => vec![p],
        }
    }
}

/// What to send.
#[derive(Clone, Debug)]
pub struct Load {
    pub flows: u32,
    /// Frame size in bytes (at least the headers).
    pub size: usize,
    pub udp: bool,
    pub packets: u32,
    /// Frames per second to offer; 0: as fast as the generator goes.
    pub pps: u64,
    /// Where to send.
    pub to: std::net::SocketAddr,
    /// First source address; flows vary its low 16 bits.
    pub from: IpAddr,
    /// Run this long instead of stopping after `packets` (0: by count).
    pub secs: u64,
    /// How frames leave.
    pub path: Choice,
}

impl Load {
    /// TCP SYNs (or UDP) to the rate lab's VIP, port 80, from 198.19.0.0/16
    /// (2001:2:19::/112), by the first path that works.
    pub fn new(flows: u32, size: usize, v6: bool, udp: bool, packets: u32, pps: u64) -> Load {
        let (to, from) = if v6 {
            ("[2001:2:ff::10]:80", "2001:2:19::")
        } else {
            ("198.18.10.10:80", "198.19.0.0")
        };
        Load {
            flows,
            size,
            udp,
            packets,
            pps,
            to: to.parse().expect("a socket address"),
            from: from.parse().expect("an address"),
            secs: 0,
            path: Choice::Auto,
        }
    }

    pub fn v6(&self) -> bool {
        self.to.is_ipv6()
    }
}

/// The template frame and where flows vary it: the same description the
/// live-frames program reads from its map.
#[derive(Clone)]
pub struct Flows {
    pub frame: Vec<u8>,
    pub cfg: GenConfig,
}

impl Flows {
    pub fn new(load: &Load, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Flows {
        // The low 16 bits of the source address are the generator's.
        let src = match load.from {
            IpAddr::V4(a) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(a) & !0xffff)),
            IpAddr::V6(a) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & !0xffff)),
        };
        let v6 = load.to.is_ipv6();
        let l3 = if v6 { 40 } else { 20 };
        let l4len = if load.udp { 8 } else { 20 };
        let payload = load.size.saturating_sub(14 + l3 + l4len);
        let l4 = if load.udp {
            L4::Udp
        } else {
            L4::Tcp { flags: crate::SYN }
        };
        // Source port 0 and the low address bits 0: every flow patches them.
        let f = frame(
            src_mac,
            dst_mac,
            src,
            0,
            load.to.ip(),
            load.to.port(),
            l4,
            &vec![0x5a; payload],
        );
        let l4_off = 14 + l3;
        let csum_off = l4_off + if load.udp { 6 } else { 16 };
        let src_low_off = if v6 { 14 + 8 + 14 } else { 14 + 12 + 2 };
        let l4c = u16::from_be_bytes([f[csum_off], f[csum_off + 1]]);
        let ipc = if v6 {
            0
        } else {
            u16::from_be_bytes([f[24], f[25]])
        };
        let cfg = GenConfig {
            flows: load.flows.max(1),
            sport_off: l4_off as u16,
            src_low_off: src_low_off as u16,
            l4_csum_off: csum_off as u16,
            ip_csum_off: 24,
            l4_csum_inv: !l4c,
            ip_csum_inv: !ipc,
            family: if v6 { FAMILY_V6 } else { FAMILY_V4 },
            _pad: 0,
            // Whole 8-byte words of headers; the payload is never rewritten.
            hdr_len: ((l4_off + l4len) / 8 * 8) as u16,
        };
        Flows { frame: f, cfg }
    }

    /// Turns `buf` (a copy of the template) into frame number `n`, exactly
    /// as the live-frames program does.
    pub fn patch(&self, buf: &mut [u8], n: u64) {
        patch(&self.cfg, buf, n)
    }
}

/// Frame `n` of the flows `c` describes, written over a copy of the template.
fn patch(c: &GenConfig, buf: &mut [u8], n: u64) {
    {
        let flow = (n % c.flows as u64) as u32;
        let sport = (1024 + flow % 60_000) as u16;
        let src_low = (flow / 60_000) as u16;
        let put = |buf: &mut [u8], at: u16, v: u16| {
            buf[at as usize..at as usize + 2].copy_from_slice(&v.to_be_bytes())
        };
        put(buf, c.sport_off, sport);
        put(buf, c.src_low_off, src_low);
        // Both fields are zero in the template: HC' = ~(~HC + m') (RFC 1624).
        put(
            buf,
            c.l4_csum_off,
            !fold(c.l4_csum_inv as u32 + sport as u32 + src_low as u32),
        );
        if c.family == FAMILY_V4 {
            put(
                buf,
                c.ip_csum_off,
                !fold(c.ip_csum_inv as u32 + src_low as u32),
            );
        }
    }
}

fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// One way of putting frames on the wire.
trait Sender {
    /// Sends frames `first .. first + count` of the flows.
    fn send(&mut self, first: u64, count: u32) -> Result<()>;
}

/// A generator bound to one interface, on the path the kernel accepted.
pub struct Generator {
    pub path: SendPath,
    sender: Box<dyn Sender>,
    next: u64,
}

/// What a run sent.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub path: SendPath,
    pub packets: u64,
    pub took: Duration,
}

impl Sent {
    pub fn pps(&self) -> f64 {
        self.packets as f64 / self.took.as_secs_f64().max(1e-9)
    }
}

/// Paths treated as refused, for testing the fallback on a machine that
/// allows them all: `SWITCH_GEN_REFUSE=live-frames,packet-ring`.
fn refused_by_env(p: SendPath) -> bool {
    std::env::var("SWITCH_GEN_REFUSE")
        .map(|v| v.split(',').any(|s| s.trim() == p.id()))
        .unwrap_or(false)
}

impl Generator {
    /// Opens the first path of `choice` that sends a probe frame (frame 0
    /// of the flows, counted as sent). A refused path is reported in one
    /// sentence naming it and what comes next.
    pub fn open(ifname: &str, dst_mac: [u8; 6], load: &Load) -> Result<Generator> {
        let ifindex = switch_user::dataplane::ifindex(ifname)?;
        let flows = Flows::new(load, mac_of(ifname)?, dst_mac);
        let candidates = load.path.candidates();
        let mut why = Vec::new();
        for (i, &path) in candidates.iter().enumerate() {
            let opened = if refused_by_env(path) {
                Err(anyhow::anyhow!("refused by SWITCH_GEN_REFUSE"))
            } else {
                open_path(path, ifindex, &flows).and_then(|mut s| {
                    s.send(0, 1)?;
                    Ok(s)
                })
            };
            match opened {
                Ok(sender) => {
                    return Ok(Generator {
                        path,
                        sender,
                        next: 1,
                    });
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    match candidates.get(i + 1) {
                        Some(next) => {
                            eprintln!("generator: {path} refused ({e}); falling back to {next}")
                        }
                        None => eprintln!("generator: {path} refused ({e})"),
                    }
                    why.push(format!("{path}: {e}"));
                }
            }
        }
        bail!("no send path works on {ifname}: {}", why.join("; "))
    }

    /// Sends the next `count` frames.
    pub fn send(&mut self, count: u32) -> Result<()> {
        self.sender.send(self.next, count)?;
        self.next += count as u64;
        Ok(())
    }

    /// Frames sent so far, the probe included.
    pub fn sent(&self) -> u64 {
        self.next
    }
}

/// The MAC address of `ifname` in this thread's network namespace (sysfs
/// would show the namespace it was mounted in).
fn mac_of(ifname: &str) -> Result<[u8; 6]> {
    if ifname.len() >= libc::IFNAMSIZ {
        bail!("{ifname:?} is too long for an interface name");
    }
    // SAFETY: a datagram socket for the ioctl, closed on drop.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: an ifreq with the name set, filled by SIOCGIFHWADDR.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCGIFHWADDR,
            &mut req,
        )
    };
    if r != 0 {
        bail!(
            "the MAC address of {ifname}: {}",
            std::io::Error::last_os_error()
        );
    }
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    Ok(std::array::from_fn(|i| sa[i] as u8))
}

fn open_path(path: SendPath, ifindex: u32, flows: &Flows) -> Result<Box<dyn Sender>> {
    Ok(match path {
        SendPath::LiveFrames => Box::new(live_frames::LiveFrames::open(ifindex, flows)?),
        SendPath::XdpLoop => Box::new(xdp_loop::XdpLoop::open(ifindex, flows)?),
        SendPath::PacketRing => Box::new(packet_ring::PacketRing::open(ifindex, flows)?),
        SendPath::Sendmmsg => Box::new(sendmmsg::Sendmmsg::open(ifindex, flows)?),
    })
}

/// Sends `load` out of `ifname` in the caller's network namespace, keeping
/// its rate or duration; prints one line with the path and the rate.
pub fn run(ifname: &str, dst_mac: [u8; 6], load: &Load) -> Result<Sent> {
    let t = Instant::now();
    let mut g = Generator::open(ifname, dst_mac, load)?;
    // Offer in slices so a rate limit or a duration can be kept.
    let slice: u64 = match (load.pps, load.secs) {
        // Unpaced: a million frames a live-frames syscall; the XDP loop
        // drains between slices, which keeps a flood from holding one
        // core's softirq for seconds (an established stream in the flood
        // test starved with one endless loop).
        (0, 0) if g.path == SendPath::LiveFrames => 1 << 20,
        (0, 0) => 100_000,
        (0, _) => 100_000,
        (pps, _) => (pps / 100).clamp(1000, 1_000_000),
    };
    loop {
        let left = if load.secs > 0 {
            u64::MAX
        } else {
            (load.packets as u64).saturating_sub(g.sent())
        };
        if left == 0 || (load.secs > 0 && t.elapsed().as_secs_f64() >= load.secs as f64) {
            break;
        }
        g.send(slice.min(left) as u32)?;
        if load.pps > 0 {
            let due = Duration::from_secs_f64(g.sent() as f64 / load.pps as f64);
            if let Some(wait) = due.checked_sub(t.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let sent = Sent {
        path: g.path,
        packets: g.sent(),
        took: t.elapsed(),
    };
    eprintln!(
        "sent {} frames in {:.2} s ({:.3} Mpps) by {}",
        sent.packets,
        sent.took.as_secs_f64(),
        sent.pps() / 1e6,
        sent.path
    );
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(v6: bool, udp: bool) -> Load {
        Load::new(200_000, 64, v6, udp, 1, 0)
    }

    #[test]
    fn every_patched_frame_is_valid_and_its_own_flow() {
        for (v6, udp) in [(false, false), (false, true), (true, false), (true, true)] {
            let f = Flows::new(&load(v6, udp), [2; 6], [4; 6]);
            let mut seen = std::collections::BTreeSet::new();
            for n in [0u64, 1, 59_999, 60_000, 60_001, 123_456, 199_999, 200_000] {
                let mut buf = f.frame.clone();
                f.patch(&mut buf, n);
                let s = crate::check(&buf).expect("checksums");
                seen.insert((s.src, s.sport));
            }
            // 200_000 wraps to flow 0.
            assert_eq!(seen.len(), 7, "v6 {v6} udp {udp}");
        }
    }
}
