//! The forwarding-rate lab: a generator namespace sending by the first path
//! the kernel accepts (see `generator`), the switch host, and a sink
//! namespace counting what arrives.
//!
//! ```text
//!  gen: g0 198.18.0.2  ->  sw: s0 198.18.0.1 | s1 198.18.1.1  ->  sink: k0 198.18.1.11-14
//! ```

use std::{collections::BTreeSet, sync::mpsc, thread::JoinHandle, time::Duration};

use anyhow::{Context, Result};
use switch_user::{
    config::{BackendConfig, DaemonConfig, ForwardMode, PoolConfig, Protocol, ServiceConfig},
    dataplane::{Capacity, Dataplane},
    programmer::Programmer,
};

pub use crate::generator::{Choice, Load, SendPath, Sent};
use crate::{Netns, reference::Reference, sh};

/// What forwards between s0 and s1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarder {
    /// Nothing: the sink counts on s0 itself. What the generator offers on
    /// its own, the limit of every other row.
    Alone,
    /// A program that only redirects s0 -> s1: the machine's ceiling.
    Redirect,
    /// `switch`, nat mode, 4 backends.
    Switch,
    /// The kernel with nftables DNAT to 4 backends by weighted numgen.
    Nftables,
}

impl Forwarder {
    pub fn name(self) -> &'static str {
        match self {
            Forwarder::Alone => "generator alone (into a sink, no forwarder)",
            Forwarder::Redirect => "plain XDP redirect (ceiling)",
            Forwarder::Switch => "switch (nat, 4 backends)",
            Forwarder::Nftables => "nftables DNAT, numgen weights",
        }
    }
}

pub struct RateLab {
    pub generator: Netns,
    pub sw: Netns,
    pub sink: Netns,
}

const VIP4: &str = "198.18.10.10";
const VIP6: &str = "2001:2:ff::10";

impl RateLab {
    pub fn new() -> Result<RateLab> {
        let (generator, sw, sink) = (Netns::new("gen")?, Netns::new("rsw")?, Netns::new("sink")?);
        sh(&format!(
            "ip link add g0 netns {g} type veth peer name s0 netns {s} && ip link add k0 netns {k} type veth peer name s1 netns {s}",
            g = generator.name,
            s = sw.name,
            k = sink.name
        ))?;
        generator.exec("ip link set g0 up && ip addr add 198.18.0.2/24 dev g0 && ip addr add 2001:2::2/64 dev g0")?;
        sink.exec(
            "ip link set k0 up && for i in 11 12 13 14; do ip addr add 198.18.1.$i/24 dev k0; done && \
             for i in b c d e; do ip addr add 2001:2:1::$i/64 dev k0; done",
        )?;
        let k0_mac = sink
            .exec("cat /sys/class/net/k0/address")?
            .trim()
            .to_string();
        sw.exec(&format!(
            "ip link set s0 up && ip link set s1 up && ip addr add 198.18.0.1/24 dev s0 && ip addr add 2001:2::1/64 dev s0 && \
             ip addr add 198.18.1.1/24 dev s1 && ip addr add 2001:2:1::1/64 dev s1 && \
             sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.s0.rp_filter=0 && \
             ip route add 198.19.0.0/16 dev s0 && ip -6 route add 2001:2:19::/48 dev s0 && \
             ip route add {VIP4}/32 dev s1 && ip -6 route add {VIP6}/128 dev s1 && \
             ethtool -K s0 gro on >/dev/null && ethtool -K s1 gro on >/dev/null && \
             for i in 11 12 13 14; do ip neigh add 198.18.1.$i lladdr {k0_mac} dev s1 nud permanent; done && \
             for i in b c d e; do ip neigh add 2001:2:1::$i lladdr {k0_mac} dev s1 nud permanent; done && \
             ip neigh add {VIP4} lladdr {k0_mac} dev s1 nud permanent && ip neigh add {VIP6} lladdr {k0_mac} dev s1 nud permanent"
        ))?;
        Ok(RateLab {
            generator,
            sw,
            sink,
        })
    }
}

/// A thread in a namespace that holds its data plane until told to stop.
pub struct Holder {
    stop: mpsc::Sender<()>,
    handle: JoinHandle<Result<u64>>,
}

impl Holder {
    /// Stops it; what it counted.
    pub fn finish(self) -> Result<u64> {
        let _ = self.stop.send(());
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("holder panicked"))?
    }
}

fn hold(
    ns: &Netns,
    setup: impl FnOnce() -> Result<Box<dyn FnOnce() -> Result<u64>>> + Send + 'static,
) -> Result<Holder> {
    let path = format!("/run/netns/{}", ns.name);
    let (stop, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = std::thread::spawn(move || -> Result<u64> {
        crate::enter(&path)?;
        let done = match setup() {
            Ok(d) => {
                let _ = ready_tx.send(Ok(()));
                d
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return Err(e);
            }
        };
        let _ = rx.recv();
        done()
    });
    ready_rx
        .recv()
        .context("holder thread died")?
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(Holder { stop, handle })
}

fn service(v6: bool, udp: bool) -> ServiceConfig {
    let b = |i: u8| -> std::net::SocketAddr {
        if v6 {
            format!("[2001:2:1::{:x}]:8080", i).parse().unwrap()
        } else {
            format!("198.18.1.{i}:8080").parse().unwrap()
        }
    };
    ServiceConfig {
        name: "web".into(),
        vip: format!(
            "{}:80",
            if v6 {
                format!("[{VIP6}]")
            } else {
                VIP4.to_string()
            }
        )
        .parse()
        .unwrap(),
        protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
        mode: ForwardMode::Nat,
        affinity: Default::default(),
        source: None,
        health: None,
        pools: vec![PoolConfig {
            name: "p".into(),
            weight: 1,
            backends: (11..=14).map(|i| BackendConfig::Addr(b(i))).collect(),
        }],
        cohorts: vec![],
    }
}

#[derive(Clone, Debug)]
pub struct RateResult {
    pub forwarder: Forwarder,
    /// How the generator sent.
    pub path: SendPath,
    pub offered_pps: f64,
    pub delivered_pps: f64,
}

impl RateResult {
    pub fn loss(&self) -> f64 {
        if self.offered_pps == 0.0 {
            0.0
        } else {
            (1.0 - self.delivered_pps / self.offered_pps).max(0.0)
        }
    }
}

/// Starts `forwarder` in the switch namespace; the returned holder keeps it
/// running.
fn start_forwarder(lab: &RateLab, f: Forwarder, load: &Load) -> Result<Holder> {
    let (v6, udp) = (load.v6(), load.udp);
    let flows = load.flows;
    match f {
        Forwarder::Alone => hold(&lab.sw, || {
            let done: Box<dyn FnOnce() -> Result<u64>> = Box::new(|| Ok(0));
            Ok(done)
        }),
        Forwarder::Nftables => {
            let (fam, vip, proto) = if v6 {
                ("ip6", VIP6, if udp { "udp" } else { "tcp" })
            } else {
                ("ip", VIP4, if udp { "udp" } else { "tcp" })
            };
            let targets = if v6 {
                "0-24 : 2001:2:1::b, 25-49 : 2001:2:1::c, 50-74 : 2001:2:1::d, 75-99 : 2001:2:1::e"
            } else {
                "0-24 : 198.18.1.11, 25-49 : 198.18.1.12, 50-74 : 198.18.1.13, 75-99 : 198.18.1.14"
            };
            lab.sw.exec(&format!(
                "nft add table {fam} bench && nft add chain {fam} bench pre '{{ type nat hook prerouting priority -100; }}' && \
                 nft add rule {fam} bench pre {fam} daddr {vip} {proto} dport 80 dnat to numgen random mod 100 map {{ {targets} }}"
            ))?;
            let sw = lab.sw.name.clone();
            hold(&lab.sw, move || {
                Ok(Box::new(move || {
                    let _ = sh(&format!(
                        "ip netns exec {sw} nft delete table {} bench",
                        if v6 { "ip6" } else { "ip" }
                    ));
                    Ok(0)
                }))
            })
        }
        Forwarder::Redirect => hold(&lab.sw, move || {
            let mut r = Reference::load()?;
            r.set_redirect_target("s1")?;
            r.attach("bench_redirect", "s0")?;
            Ok(Box::new(move || {
                drop(r);
                Ok(0)
            }))
        }),
        Forwarder::Switch => hold(&lab.sw, move || {
            let cap = Capacity {
                flows: (flows * 2).max(65_536),
                half_open: (flows * 2).max(65_536),
                ..Capacity::small()
            };
            let mut dp = Dataplane::load(None, cap)?;
            let mut p = Programmer::new(0x5eed, cap);
            p.init(&mut dp, &DaemonConfig::default())?;
            p.apply(&mut dp, &service(v6, udp), &BTreeSet::new())?;
            dp.attach("s0")?;
            dp.attach("s1")?;
            switch_user::daemon::cache_nexthops(&mut dp, &p)?;
            Ok(Box::new(move || {
                let forwarded = dp
                    .reasons()?
                    .iter()
                    .filter(|(r, _)| *r == switch_common::Reason::Forwarded)
                    .map(|(_, n)| *n)
                    .sum();
                drop(dp);
                Ok(forwarded)
            }))
        }),
    }
}

/// Sends `load` out of `ifname` in namespace `ns`, addressed to `dst_mac`
/// (the switch's interface).
pub fn generate(ns: &Netns, ifname: &str, dst_mac: [u8; 6], load: &Load) -> Result<Sent> {
    let load = load.clone();
    let ifname = ifname.to_string();
    ns.run(move || crate::generator::run(&ifname, dst_mac, &load))?
}

/// Counts (and drops) every frame arriving on `dev` in `ns` until finished.
pub fn sink(ns: &Netns, dev: &str) -> Result<Holder> {
    let dev = dev.to_string();
    hold(ns, move || {
        let mut r = Reference::load()?;
        r.attach("sink", &dev)?;
        let done: Box<dyn FnOnce() -> Result<u64>> = Box::new(move || r.sink_count());
        Ok(done)
    })
}

/// One measurement: offer `load` through `forwarder`, count what arrives.
pub fn measure(lab: &RateLab, forwarder: Forwarder, load: &Load) -> Result<RateResult> {
    let s0_mac = crate::parse_mac(lab.sw.exec("cat /sys/class/net/s0/address")?.trim())?;
    // Alone: the sink takes the switch's place on s0.
    let (sink_ns, sink_dev) = match forwarder {
        Forwarder::Alone => (&lab.sw, "s0"),
        _ => (&lab.sink, "k0"),
    };
    let sink = sink(sink_ns, sink_dev)?;
    let fwd = start_forwarder(lab, forwarder, load)?;
    let sent = generate(&lab.generator, "g0", s0_mac, load);
    std::thread::sleep(Duration::from_millis(100));
    fwd.finish()?;
    let delivered = sink.finish()?;
    let sent = sent?;
    let secs = sent.took.as_secs_f64();
    Ok(RateResult {
        forwarder,
        path: sent.path,
        offered_pps: sent.packets as f64 / secs,
        delivered_pps: delivered as f64 / secs,
    })
}
