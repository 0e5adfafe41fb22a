//! A three-namespace lab with real traffic: a client, the switch host and a
//! backend host, joined by veth pairs.
//!
//! ```text
//!  cli: cli0 198.18.0.2     sw: sw0 198.18.0.1 | sw1 198.18.1.1     be: be0 198.18.1.11-14
//!       2001:2::2               2001:2::1      |     2001:2:1::1          2001:2:1::b-e
//! ```
//! The VIPs (198.18.10.10, 2001:2:ff::10) are routed to the switch host.

use anyhow::Result;

use crate::Netns;

pub const VIP4: &str = "198.18.10.10";
pub const VIP6: &str = "2001:2:ff::10";

pub struct Lab {
    pub cli: Netns,
    pub sw: Netns,
    pub be: Netns,
}

impl Lab {
    pub fn new() -> Result<Lab> {
        let cli = Netns::new("cli")?;
        let sw = Netns::new("sw")?;
        let be = Netns::new("be")?;
        crate::sh(&format!(
            "ip link add cli0 netns {c} type veth peer name sw0 netns {s} && \
             ip link add be0 netns {b} type veth peer name sw1 netns {s}",
            c = cli.name,
            s = sw.name,
            b = be.name
        ))?;
        // tx checksum offload off so checksums on the wire are real; GRO on
        // so frames redirected into a veth are delivered to the peer.
        cli.exec(
            "ip link set cli0 up && ip addr add 198.18.0.2/24 dev cli0 && ip addr add 2001:2::2/64 dev cli0 nodad && \
             ip route add default via 198.18.0.1 && ip -6 route add default via 2001:2::1 && \
             ethtool -K cli0 tx off gro on >/dev/null",
        )?;
        sw.exec(
            "ip link set sw0 up && ip link set sw1 up && \
             ip addr add 198.18.0.1/24 dev sw0 && ip addr add 2001:2::1/64 dev sw0 nodad && \
             ip addr add 198.18.1.1/24 dev sw1 && ip addr add 2001:2:1::1/64 dev sw1 nodad && \
             sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1 && \
             ethtool -K sw0 tx off gro on >/dev/null && ethtool -K sw1 tx off gro on >/dev/null",
        )?;
        be.exec(
            "ip link set be0 up && ethtool -K be0 tx off gro on >/dev/null && \
             for i in 11 12 13 14; do ip addr add 198.18.1.$i/24 dev be0; done && \
             for i in b c d e; do ip addr add 2001:2:1::$i/64 dev be0 nodad; done && \
             ip route add default via 198.18.1.1 && ip -6 route add default via 2001:2:1::1 && \
             ip addr add 198.18.10.10/32 dev lo && ip addr add 2001:2:ff::10/128 dev lo nodad && \
             sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.be0.rp_filter=0",
        )?;
        Ok(Lab { cli, sw, be })
    }

    /// A packet-generator host on a third link of the switch host:
    /// gen g0 <-> sw sw2, sources 198.19.0.0/16 routed back through it.
    pub fn add_generator(&self) -> Result<Netns> {
        let generator = Netns::new("gen")?;
        crate::sh(&format!(
            "ip link add g0 netns {g} type veth peer name sw2 netns {s}",
            g = generator.name,
            s = self.sw.name
        ))?;
        generator.exec("ip link set g0 up && ethtool -K g0 gro on >/dev/null")?;
        self.sw.exec(
            "ip link set sw2 up && ip addr add 198.19.255.1/16 dev sw2 && \
             sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.sw2.rp_filter=0 && \
             ethtool -K sw2 tx off gro on >/dev/null",
        )?;
        Ok(generator)
    }

    /// Backend `i` (1..=4) of the lab.
    pub fn backend(v6: bool, i: u8, port: u16) -> std::net::SocketAddr {
        let ip: std::net::IpAddr = if v6 {
            format!("2001:2:1::{:x}", 10 + i).parse().unwrap()
        } else {
            format!("198.18.1.{}", 10 + i).parse().unwrap()
        };
        std::net::SocketAddr::new(ip, port)
    }

    pub fn vip(v6: bool, port: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::new(
            if v6 {
                VIP6.parse().unwrap()
            } else {
                VIP4.parse().unwrap()
            },
            port,
        )
    }
}
