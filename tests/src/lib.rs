//! Helpers for the integration tests: network namespaces that clean up after
//! themselves, packet fixtures, and an independent parser (etherparse) that
//! checks every checksum from scratch.

use std::{
    net::IpAddr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

pub mod daemon;
pub mod fixture;
pub mod fleet;
pub mod generator;
pub mod http;
pub mod lab;
pub mod path_lab;
pub mod rate;
pub mod reference;
pub mod scale;
pub mod service;
pub mod traffic;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a shell command, failing with its output if it fails.
pub fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .with_context(|| format!("spawn {cmd}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace deleted (with every interface in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Netns> {
        let name = format!(
            "sw{}-{}-{}",
            tag,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        sh(&format!("ip netns add {name}"))?;
        let ns = Netns { name };
        // No duplicate address detection: link-local addresses would stay
        // tentative for a second or two, and neighbour discovery (which
        // sends from them) with them.
        ns.exec("ip link set lo up && sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0")?;
        Ok(ns)
    }

    /// Runs `cmd` inside the namespace.
    pub fn exec(&self, cmd: &str) -> Result<String> {
        sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', "'\\''")
        ))
    }

    /// Runs `f` on a thread that has entered the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::Builder::new()
            .stack_size(16 << 20)
            .spawn(move || -> Result<T> {
                enter(&path)?;
                Ok(f())
            })?
            .join()
            .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    }

    pub fn ifindex(&self, dev: &str) -> Result<u32> {
        Ok(self
            .exec(&format!("cat /sys/class/net/{dev}/ifindex"))?
            .trim()
            .parse()?)
    }

    pub fn mac(&self, dev: &str) -> Result<[u8; 6]> {
        parse_mac(
            self.exec(&format!("cat /sys/class/net/{dev}/address"))?
                .trim(),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill anything still running inside, then delete the namespace.
        let _ = sh(&format!("ip netns pids {} | xargs -r kill -9", self.name));
        let _ = sh(&format!("ip netns del {}", self.name));
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &str) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("open {path}"))?;
    use std::os::fd::AsRawFd;
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()?;
    v.try_into().map_err(|_| anyhow::anyhow!("bad mac {s}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp { flags: u8 },
    Udp,
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;

/// An Ethernet frame with correct checksums.
#[allow(clippy::too_many_arguments)]
pub fn frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    l4: L4,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(smac, dmac);
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut out = Vec::new();
    match l4 {
        L4::Tcp { flags } => {
            let mut t = b.tcp(sport, dport, 1000, 64240);
            if flags & SYN != 0 {
                t = t.syn();
            }
            if flags & ACK != 0 {
                // Acknowledges the other side's SYN (sequence 1000, as
                // every frame here has): a SYN-ACK answers the SYN.
                t = t.ack(1001);
            }
            if flags & FIN != 0 {
                t = t.fin();
            }
            if flags & 0x04 != 0 {
                t = t.rst();
            }
            t.write(&mut out, payload).unwrap();
        }
        L4::Udp => b.udp(sport, dport).write(&mut out, payload).unwrap(),
    }
    out
}

/// What the independent parser read from a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    pub payload: Vec<u8>,
}

/// Checksum over pseudo-header + L4 segment, for a given protocol.
type PseudoSum = Box<dyn Fn(&[u8], u8) -> u16>;

/// Parses a frame and verifies the IPv4 header checksum and the TCP/UDP
/// checksum from scratch; any mismatch is an error.
pub fn check(frame: &[u8]) -> Result<Seen> {
    let p = SlicedPacket::from_ethernet(frame).map_err(|e| anyhow::anyhow!("parse: {e}"))?;
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = p.link else {
        bail!("no ethernet")
    };
    let (src, dst, ttl, pseudo): (IpAddr, IpAddr, u8, PseudoSum) = match p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            if h.calc_header_checksum() != h.header_checksum {
                bail!(
                    "bad IPv4 header checksum {:#x}, want {:#x}",
                    h.header_checksum,
                    h.calc_header_checksum()
                );
            }
            let (s, d) = (h.source, h.destination);
            (
                IpAddr::from(s),
                IpAddr::from(d),
                h.time_to_live,
                Box::new(move |l4: &[u8], proto: u8| pseudo_v4(s, d, proto, l4)),
            )
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header().to_header();
            let (s, d) = (h.source, h.destination);
            (
                IpAddr::from(s),
                IpAddr::from(d),
                h.hop_limit,
                Box::new(move |l4: &[u8], proto: u8| pseudo_v6(s, d, proto, l4)),
            )
        }
        _ => bail!("no IP"),
    };
    let (sport, dport, payload) = match p.transport {
        Some(TransportSlice::Tcp(t)) => {
            if pseudo(t.slice(), 6) != 0 {
                bail!("bad TCP checksum");
            }
            (t.source_port(), t.destination_port(), t.payload().to_vec())
        }
        Some(TransportSlice::Udp(u)) => {
            if u.checksum() != 0 && pseudo(u.slice(), 17) != 0 {
                bail!("bad UDP checksum");
            }
            (u.source_port(), u.destination_port(), u.payload().to_vec())
        }
        _ => bail!("no TCP/UDP"),
    };
    Ok(Seen {
        smac: eth.source(),
        dmac: eth.destination(),
        src,
        dst,
        sport,
        dport,
        ttl,
        payload,
    })
}

/// One's-complement sum over pseudo-header + segment; 0 when the checksum
/// field inside the segment is right.
fn fold_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for p in parts {
        for c in p.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                (c[0] as u16) << 8
            };
            sum += w as u64;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_v4(s: [u8; 4], d: [u8; 4], proto: u8, l4: &[u8]) -> u16 {
    let len = (l4.len() as u16).to_be_bytes();
    fold_sum(&[&s, &d, &[0, proto], &len, l4])
}

fn pseudo_v6(s: [u8; 16], d: [u8; 16], proto: u8, l4: &[u8]) -> u16 {
    let len = (l4.len() as u32).to_be_bytes();
    fold_sum(&[&s, &d, &len, &[0, 0, 0, proto], l4])
}
