//! A lab with a router between the clients and the switch host, whose link
//! towards the clients has a smaller MTU than the client's own interface
//! (as behind PPPoE, a VPN or a tunnel):
//!
//! ```text
//!  cli: cli0 (1500) ── rt0 (1300) rt: rt1 ── sw0 sw: sw1 ── be0 be
//!  198.18.0.2           198.18.0.1  198.18.5.1  198.18.5.2  198.18.1.1   198.18.1.11
//!  2001:2::2            2001:2::1   2001:2:5::1 2001:2:5::2 2001:2:1::1  2001:2:1::b
//! ```
//! VIPs 198.18.10.0/24 and 2001:2:ff::/64 are routed by the router to the
//! switch host; backends answer clients through the switch host (its
//! kernel routes them on to the router).

use anyhow::Result;

use crate::Netns;

pub struct PathLab {
    pub cli: Netns,
    pub rt: Netns,
    pub sw: Netns,
    pub be: Netns,
}

impl PathLab {
    /// `mtu`: of the router's link towards the client.
    pub fn new(mtu: u32) -> Result<PathLab> {
        let cli = Netns::new("pcli")?;
        let rt = Netns::new("prt")?;
        let sw = Netns::new("psw")?;
        let be = Netns::new("pbe")?;
        crate::sh(&format!(
            "ip link add cli0 netns {c} type veth peer name rt0 netns {r} && \
             ip link add rt1 netns {r} type veth peer name sw0 netns {s} && \
             ip link add sw1 netns {s} type veth peer name be0 netns {b}",
            c = cli.name,
            r = rt.name,
            s = sw.name,
            b = be.name
        ))?;
        cli.exec(
            "ip link set cli0 up && ip addr add 198.18.0.2/24 dev cli0 && ip addr add 2001:2::2/64 dev cli0 nodad && \
             ip route add default via 198.18.0.1 && ip -6 route add default via 2001:2::1 && \
             ethtool -K cli0 tx off gro on >/dev/null",
        )?;
        rt.exec(&format!(
            "ip link set rt0 mtu {mtu} up && ip link set rt1 up && \
             ip addr add 198.18.0.1/24 dev rt0 && ip addr add 2001:2::1/64 dev rt0 nodad && \
             ip addr add 198.18.5.1/24 dev rt1 && ip addr add 2001:2:5::1/64 dev rt1 nodad && \
             ip route add 198.18.10.0/24 via 198.18.5.2 && ip -6 route add 2001:2:ff::/64 via 2001:2:5::2 && \
             ip route add 198.18.1.0/24 via 198.18.5.2 && ip -6 route add 2001:2:1::/64 via 2001:2:5::2 && \
             sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1 \
               net.ipv4.icmp_ratelimit=0 net.ipv6.icmp.ratelimit=0 && \
             ethtool -K rt0 tx off gro on >/dev/null && ethtool -K rt1 tx off gro on >/dev/null"
        ))?;
        sw.exec(
            "ip link set sw0 up && ip link set sw1 up && \
             ip addr add 198.18.5.2/24 dev sw0 && ip addr add 2001:2:5::2/64 dev sw0 nodad && \
             ip addr add 198.18.1.1/24 dev sw1 && ip addr add 2001:2:1::1/64 dev sw1 nodad && \
             ip route add default via 198.18.5.1 && ip -6 route add default via 2001:2:5::1 && \
             sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1 && \
             ethtool -K sw0 tx off gro on >/dev/null && ethtool -K sw1 tx off gro on >/dev/null",
        )?;
        be.exec(
            "ip link set be0 up && ethtool -K be0 tx off gro on >/dev/null && \
             ip addr add 198.18.1.11/24 dev be0 && ip addr add 2001:2:1::b/64 dev be0 nodad && \
             ip route add default via 198.18.1.1 && ip -6 route add default via 2001:2:1::1 && \
             for v in 10 11 12; do ip addr add 198.18.10.$v/32 dev lo; ip addr add 2001:2:ff::$v/128 dev lo nodad; done && \
             sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.be0.rp_filter=0",
        )?;
        Ok(PathLab { cli, rt, sw, be })
    }

    /// Forget every path MTU the backend host has learnt.
    pub fn flush_backend_pmtu(&self) -> Result<()> {
        self.be
            .exec("ip route flush cache && ip -6 route flush cache")?;
        Ok(())
    }
}

/// Bulk HTTP/1.0 servers in `ns` on `[::]:port` for each port (both
/// families): every request is answered with `size` bytes, then closed.
pub fn bulk_servers(ns: &Netns, ports: &[u16], size: usize) -> Result<()> {
    let ports = ports.to_vec();
    ns.run(move || -> Result<()> {
        for port in ports {
            let l = std::net::TcpListener::bind(("::", port))?;
            std::thread::spawn(move || {
                for c in l.incoming() {
                    let Ok(mut c) = c else { continue };
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut req = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            match c.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => req.extend_from_slice(&buf[..n]),
                            }
                        }
                        let head = format!(
                            "HTTP/1.0 200 OK\r\nContent-Length: {size}\r\nContent-Type: application/octet-stream\r\n\r\n"
                        );
                        let _ = c.write_all(head.as_bytes());
                        let _ = c.write_all(&vec![b'x'; size]);
                    });
                }
            });
        }
        Ok(())
    })?
}
