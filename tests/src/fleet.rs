//! A fleet lab: three switch hosts, each with its own client, sharing one
//! backend segment with etcd and the backends.
//!
//! ```text
//!  cli1 198.18.21.2 ── up0 sw1 down0 198.18.30.1 ─┐
//!  cli2 198.18.22.2 ── up0 sw2 down0 198.18.30.2 ─┼─ br0 (fab) ── be   198.18.30.11-14
//!  cli3 198.18.23.2 ── up0 sw3 down0 198.18.30.3 ─┘             └─ etcd 198.18.30.9:2379
//! ```
//! Each client reaches the VIP (198.18.40.10) through its own switch host;
//! the backends answer each client net through that net's host (nat).

use std::{
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{Netns, daemon::Daemon, sh};

pub const VIP: &str = "198.18.40.10";
pub const ETCD: &str = "http://198.18.30.9:2379";
pub const SEED: &str = "5eed5eed";

pub struct FleetLab {
    pub fab: Netns,
    pub etcd_ns: Netns,
    pub be: Netns,
    pub sws: Vec<Netns>,
    pub clis: Vec<Netns>,
    etcd: Option<Child>,
    pub dir: PathBuf,
}

/// Backend `i` (1..=4).
pub fn backend(i: u8) -> String {
    format!("198.18.30.{}:80", 10 + i)
}

/// A `[[service]]` `name` on `vip` ("addr:port") with pool blue (backends
/// 1, 2) at weight 100 and green (3, 4) at 0; `extra` TOML lines (mode,
/// health) go in the service's table.
pub fn blue_green(name: &str, vip: &str, extra: &str, backend: fn(u8) -> String) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nprotocol = \"tcp\"\n{extra}\n\
         [[service.pools]]\nname = \"blue\"\nweight = 100\nbackends = [\"{}\", \"{}\"]\n\
         [[service.pools]]\nname = \"green\"\nweight = 0\nbackends = [\"{}\", \"{}\"]\n",
        backend(1),
        backend(2),
        backend(3),
        backend(4)
    )
}

/// A veth from `ns` (`dev`) to the fabric's bridge (`fabdev`).
fn port(fab: &Netns, ns: &Netns, dev: &str, fabdev: &str) -> Result<()> {
    sh(&format!(
        "ip link add {dev} netns {n} type veth peer name {fabdev} netns {f}",
        n = ns.name,
        f = fab.name
    ))?;
    // GRO on the fab side: frames an XDP program redirects into the veth
    // are delivered to the bridge.
    fab.exec(&format!(
        "ip link set {fabdev} master br0 && ip link set {fabdev} up && ethtool -K {fabdev} gro on tx off >/dev/null"
    ))?;
    Ok(())
}

impl FleetLab {
    pub fn new(hosts: usize) -> Result<FleetLab> {
        let fab = Netns::new("fab")?;
        let etcd_ns = Netns::new("etcd")?;
        let be = Netns::new("fbe")?;
        let dir = std::env::temp_dir().join(format!("switch-fleet-{}", fab.name));
        std::fs::create_dir_all(&dir)?;
        fab.exec("ip link add br0 type bridge && ip link set br0 up")?;
        let port = |ns: &Netns, dev: &str, fabdev: &str| port(&fab, ns, dev, fabdev);
        port(&etcd_ns, "e0", "f-etcd")?;
        etcd_ns.exec("ip link set e0 up && ip addr add 198.18.30.9/24 dev e0")?;
        port(&be, "b0", "f-be")?;
        be.exec(
            "ip link set b0 up && ethtool -K b0 tx off gro on >/dev/null && \
             for i in 11 12 13 14; do ip addr add 198.18.30.$i/24 dev b0; done && \
             sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.b0.rp_filter=0",
        )?;
        let mut sws = Vec::new();
        let mut clis = Vec::new();
        for i in 1..=hosts {
            let sw = Netns::new(&format!("fsw{i}"))?;
            let cli = Netns::new(&format!("fcli{i}"))?;
            port(&sw, "down0", &format!("f-sw{i}"))?;
            sh(&format!(
                "ip link add c0 netns {c} type veth peer name up0 netns {s}",
                c = cli.name,
                s = sw.name
            ))?;
            sw.exec(&format!(
                "ip link set up0 up && ip link set down0 up && \
                 ip addr add 198.18.2{i}.1/24 dev up0 && ip addr add 198.18.30.{i}/24 dev down0 && \
                 sysctl -qw net.ipv4.conf.all.forwarding=1 && \
                 ethtool -K up0 tx off gro on >/dev/null && ethtool -K down0 tx off gro on >/dev/null"
            ))?;
            cli.exec(&format!(
                "ip link set c0 up && ip addr add 198.18.2{i}.2/24 dev c0 && \
                 ip route add default via 198.18.2{i}.1 && ethtool -K c0 tx off gro on >/dev/null"
            ))?;
            be.exec(&format!("ip route add 198.18.2{i}.0/24 via 198.18.30.{i}"))?;
            sws.push(sw);
            clis.push(cli);
        }
        let mut lab = FleetLab {
            fab,
            etcd_ns,
            be,
            sws,
            clis,
            etcd: None,
            dir,
        };
        lab.start_etcd()?;
        Ok(lab)
    }

    fn etcd_data(&self) -> PathBuf {
        PathBuf::from(format!("/dev/shm/{}-etcd", self.fab.name))
    }

    /// etcd (one member, data on tmpfs), waiting until it answers.
    pub fn start_etcd(&mut self) -> Result<()> {
        self.start_etcd_with(ETCD, &[], "")
    }

    /// etcd listening on `url` with `extra` flags (TLS); `etcdctl_flags`
    /// reach it (certificates) for the health check.
    pub fn start_etcd_with(
        &mut self,
        url: &str,
        extra: &[String],
        etcdctl_flags: &str,
    ) -> Result<()> {
        let data = self.etcd_data();
        let log = std::fs::File::create(self.dir.join("etcd.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.etcd_ns.name, "etcd"])
            .args(["--name", "e1", "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", url, "--advertise-client-urls", url])
            .args(extra)
            .args([
                "--listen-peer-urls",
                "http://198.18.30.9:2380",
                "--initial-advertise-peer-urls",
                "http://198.18.30.9:2380",
                "--initial-cluster",
                "e1=http://198.18.30.9:2380",
            ])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (cargo xtask setup installs etcd-server)")?;
        self.etcd = Some(child);
        let t = Instant::now();
        while self
            .etcd_ns
            .exec(&format!(
                "ETCDCTL_API=3 etcdctl --endpoints={url} {etcdctl_flags} --dial-timeout=1s endpoint health"
            ))
            .is_err()
        {
            if t.elapsed() > Duration::from_secs(20) {
                bail!("etcd did not come up");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops etcd (SIGKILL: like a crash or a partition); the data stays.
    pub fn stop_etcd(&mut self) {
        if let Some(mut c) = self.etcd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// etcdctl (API v3) against the lab's etcd.
    pub fn etcdctl(&self, args: &str) -> Result<String> {
        self.etcd_ns.exec(&format!(
            "ETCDCTL_API=3 etcdctl --endpoints={ETCD} --dial-timeout=1s --command-timeout=2s {args}"
        ))
    }

    /// The daemon of host `i` (1-based) with `services`, `extra` TOML in
    /// `[fleet]` and `seed` ("": none configured).
    pub fn daemon(&self, i: usize, services: &str, extra: &str, seed: &str) -> Result<Daemon> {
        self.daemon_with(i, services, extra, seed, "")
    }

    /// The same with extra `[daemon]` lines.
    pub fn daemon_with(
        &self,
        i: usize,
        services: &str,
        extra: &str,
        seed: &str,
        daemon: &str,
    ) -> Result<Daemon> {
        let d = Daemon::prepare(
            &self.sws[i - 1],
            &format!("fleet{i}"),
            &["up0", "down0"],
            &format!(
                "{}metrics = \"127.0.0.1:9560\"\n{daemon}",
                if seed.is_empty() {
                    String::new()
                } else {
                    format!("seed = \"{seed}\"\n")
                }
            ),
            &format!(
                "{services}\n[fleet]\nhost = \"sw-{i}\"\netcd = [\"{ETCD}\"]\nprefix = \"/switch\"\n{extra}\n"
            ),
        )?;
        let mut d = d;
        d.spawn()?;
        Ok(d)
    }

    /// Host `i`'s metrics page.
    pub fn metrics(&self, i: usize) -> Result<String> {
        self.sws[i - 1].exec("curl -s --max-time 2 http://127.0.0.1:9560/metrics")
    }

    /// nginx on backends `which` (1..=4).
    pub fn start_backends(&self, which: &[u8]) -> Result<()> {
        let addrs: Vec<String> = which.iter().map(|i| backend(*i)).collect();
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        crate::http::start_nginx_in(&self.be, &self.dir, "fleet", &refs, "")
    }
}

impl FleetLab {
    /// One nginx per backend (so one can be stopped alone).
    pub fn start_backend_each(&self, which: &[u8]) -> Result<()> {
        for i in which {
            let a = backend(*i);
            crate::http::start_nginx_in(&self.be, &self.dir, &format!("fleet-b{i}"), &[&a], "")?;
        }
        Ok(())
    }

    /// Stops backend `i`'s own nginx (see `start_backend_each`).
    pub fn stop_backend(&self, i: u8) -> Result<()> {
        let pid = std::fs::read_to_string(self.dir.join(format!("fleet-b{i}.pid")))?;
        // TERM: nginx's fast shutdown takes its workers along (a KILL of
        // the master would leave them serving).
        sh(&format!(
            "kill -TERM {p}; for k in $(seq 50); do kill -0 {p} 2>/dev/null || exit 0; sleep 0.1; done; exit 1",
            p = pid.trim()
        ))?;
        Ok(())
    }
}

impl Drop for FleetLab {
    fn drop(&mut self) {
        self.stop_etcd();
        // etcd's data (tmpfs: memory) goes with it. Processes in the lab's
        // namespaces (nginx, BIRD) die with the namespaces.
        let _ = std::fs::remove_dir_all(self.etcd_data());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The weight of `pool` in a host's `status --json` of `web`.
pub fn weight_of(d: &Daemon, pool: &str) -> Result<u64> {
    let st = d.status("web")?;
    Ok(st["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == pool))
        .and_then(|p| p["weight"].as_u64())
        .unwrap_or(u64::MAX))
}

/// Command → every host applied: `tries` weight changes from host after
/// host, each timed until all hosts' status shows it (polled in parallel).
pub fn measure_convergence(ds: &[Daemon], tries: usize) -> Result<Vec<Duration>> {
    let mut out = Vec::new();
    for k in 0..tries {
        let w = 1 + (k as u64 % 49);
        let t = Instant::now();
        ds[k % ds.len()].ok(&["weights", "web", &format!("green={w}"), "blue=100"])?;
        let mut worst = Duration::ZERO;
        std::thread::scope(|s| -> Result<()> {
            let hs: Vec<_> = ds
                .iter()
                .map(|d| {
                    s.spawn(move || -> Result<Duration> {
                        loop {
                            if weight_of(d, "green")? == w {
                                return Ok(t.elapsed());
                            }
                            if t.elapsed() > Duration::from_secs(10) {
                                bail!("a host did not apply green={w}");
                            }
                        }
                    })
                })
                .collect();
            for h in hs {
                worst = worst.max(h.join().map_err(|_| anyhow::anyhow!("poller panicked"))??);
            }
            Ok(())
        })?;
        out.push(worst);
    }
    Ok(out)
}

/// The leader's name as host `d` sees it.
pub fn leader(d: &Daemon) -> Result<Option<String>> {
    Ok(d.status("web")?["fleet"]["leader"]
        .as_str()
        .map(String::from))
}

/// kill -9 of the leader → another host leads: `tries` times, the killed
/// daemon started again after each.
pub fn measure_failover(ds: &mut [Daemon], tries: usize) -> Result<Vec<Duration>> {
    let mut out = Vec::new();
    for _ in 0..tries {
        let old = loop {
            if let Some(l) = leader(&ds[0])? {
                break l;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let li: usize = old.trim_start_matches("sw-").parse::<usize>()? - 1;
        let watcher = (li + 1) % ds.len();
        let t = Instant::now();
        ds[li].kill9();
        let took = loop {
            if let Some(l) = leader(&ds[watcher])?
                && l != old
            {
                break t.elapsed();
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("no new leader after killing {old}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        out.push(took);
        ds[li].spawn()?;
        // Back in the fleet before the next try.
        let t = Instant::now();
        while leader(&ds[li]).ok().flatten().is_none() {
            if t.elapsed() > Duration::from_secs(20) {
                bail!("{old} did not rejoin");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(out)
}

/// A fleet behind a BGP router: the client reaches the VIPs through an
/// unmodified BIRD 2 that learns them from every switch host and installs
/// kernel ECMP routes (L4 hashing). One segment holds the router, the
/// switch hosts, the backends (dsr: they hold the VIPs and answer the
/// client through the router) and etcd.
///
/// ```text
///  cli 198.18.20.2 ── rt 198.18.20.1 | 198.18.30.254 ─ br0 ─ sw1..3 198.18.30.1-3
///      2001:2:20::2     2001:2:20::1 | 2001:2:30::fe         2001:2:30::1-3
///                                          └─ be 198.18.30.11-14, 2001:2:30::b-e; etcd .9
/// ```
pub struct BgpLab {
    pub lab: FleetLab,
    pub rt: Netns,
    pub cli: Netns,
    /// Backends 1..=4, each in its own namespace.
    pub bes: Vec<Netns>,
}

pub const VIP6: &str = "2001:2:40::10";

/// Backend `i` (1..=4) over IPv6.
pub fn backend6(i: u8) -> String {
    format!("[2001:2:30::{:x}]:80", 10 + i)
}

impl BgpLab {
    pub fn new(hosts: usize) -> Result<BgpLab> {
        Self::with_router(hosts, false)
    }

    /// `multiprotocol`: the router's IPv4 sessions carry IPv6 routes too and
    /// its IPv6 sessions IPv4 routes (MP-BGP), as many routers are set up.
    pub fn with_router(hosts: usize, multiprotocol: bool) -> Result<BgpLab> {
        Self::with_router_opts(hosts, multiprotocol, "", "")
    }

    /// The same with `session` lines in each of the router's BGP sessions
    /// (a password, `bfd on`) and `global` lines (a `protocol bfd`).
    pub fn with_router_opts(
        hosts: usize,
        multiprotocol: bool,
        session: &str,
        global: &str,
    ) -> Result<BgpLab> {
        let fab = Netns::new("bfab")?;
        let etcd_ns = Netns::new("betcd")?;
        let be = Netns::new("bbe")?;
        let rt = Netns::new("brt")?;
        let cli = Netns::new("bcli")?;
        let dir = std::env::temp_dir().join(format!("switch-bgp-{}", fab.name));
        std::fs::create_dir_all(&dir)?;
        fab.exec("ip link add br0 type bridge && ip link set br0 up")?;
        let port = |ns: &Netns, dev: &str, fabdev: &str| -> Result<()> {
            port(&fab, ns, dev, fabdev)?;
            ns.exec(&format!(
                "ip link set {dev} up && ethtool -K {dev} tx off gro on >/dev/null"
            ))?;
            Ok(())
        };
        port(&etcd_ns, "e0", "f-etcd")?;
        etcd_ns.exec("ip addr add 198.18.30.9/24 dev e0")?;
        // One namespace (one TCP stack) per backend: in dsr only the MAC
        // changes, so backends sharing a stack would hide a wrong choice.
        let mut bes = Vec::new();
        for i in 1..=4u8 {
            let b = Netns::new(&format!("bbe{i}"))?;
            port(&b, "b0", &format!("f-be{i}"))?;
            b.exec(&format!(
                "ip addr add 198.18.30.{}/24 dev b0 && ip addr add 2001:2:30::{:x}/64 dev b0 nodad && \
                 ip addr add 198.18.40.10/32 dev lo && ip addr add 2001:2:40::10/128 dev lo nodad && \
                 ip route add 198.18.20.0/24 via 198.18.30.254 && ip -6 route add 2001:2:20::/64 via 2001:2:30::fe && \
                 sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.b0.rp_filter=0 \
                   net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2",
                10 + i,
                10 + i
            ))?;
            bes.push(b);
        }
        port(&rt, "r0", "f-rt")?;
        sh(&format!(
            "ip link add c0 netns {c} type veth peer name rc netns {r}",
            c = cli.name,
            r = rt.name
        ))?;
        rt.exec(
            "ip addr add 198.18.30.254/24 dev r0 && ip addr add 2001:2:30::fe/64 dev r0 nodad && \
             ip link set rc up && ip addr add 198.18.20.1/24 dev rc && ip addr add 2001:2:20::1/64 dev rc nodad && \
             ethtool -K rc tx off gro on >/dev/null && \
             sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1 \
               net.ipv4.fib_multipath_hash_policy=1 net.ipv6.fib_multipath_hash_policy=1",
        )?;
        cli.exec(
            "ip link set c0 up && ip addr add 198.18.20.2/24 dev c0 && ip addr add 2001:2:20::2/64 dev c0 nodad && \
             ip route add default via 198.18.20.1 && ip -6 route add default via 2001:2:20::1 && \
             ethtool -K c0 tx off gro on >/dev/null",
        )?;
        let mut sws = Vec::new();
        for i in 1..=hosts {
            let sw = Netns::new(&format!("bsw{i}"))?;
            port(&sw, "eth0", &format!("f-sw{i}"))?;
            sw.exec(&format!(
                "ip addr add 198.18.30.{i}/24 dev eth0 && ip addr add 2001:2:30::{i}/64 dev eth0 nodad && \
                 ip route add default via 198.18.30.254 && ip -6 route add default via 2001:2:30::fe && \
                 sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1"
            ))?;
            sws.push(sw);
        }
        // The router: an unmodified BIRD 2, one eBGP session per host and
        // family, ECMP into the kernel.
        let mut conf = String::from(
            "router id 198.18.30.254;\nprotocol device {}\n\
             protocol kernel { ipv4 { export all; }; merge paths on; }\n\
             protocol kernel { ipv6 { export all; }; merge paths on; }\n",
        );
        conf.push_str(global);
        conf.push('\n');
        let (extra4, extra6) = if multiprotocol {
            (
                " ipv6 { import all; export none; };",
                " ipv4 { import all; export none; };",
            )
        } else {
            ("", "")
        };
        for i in 1..=hosts {
            conf.push_str(&format!(
                "protocol bgp h{i} {{ local as 65000; neighbor 198.18.30.{i} as 65001; hold time 3; connect retry time 1; error wait time 1, 5; {session} ipv4 {{ import all; export none; }};{extra4} }}\n\
                 protocol bgp h{i}v6 {{ local as 65000; neighbor 2001:2:30::{i} as 65001; hold time 3; connect retry time 1; error wait time 1, 5; {session} ipv6 {{ import all; export none; }};{extra6} }}\n"
            ));
        }
        std::fs::write(dir.join("router.conf"), conf)?;
        rt.exec(&format!(
            "bird -c {d}/router.conf -s {d}/router.ctl -P {d}/router.pid",
            d = dir.display()
        ))?;
        let mut lab = FleetLab {
            fab,
            etcd_ns,
            be,
            sws,
            clis: vec![],
            etcd: None,
            dir,
        };
        lab.start_etcd()?;
        Ok(BgpLab { lab, rt, cli, bes })
    }

    /// The daemon of host `i` with `[bgp]` toward the router, dsr services.
    pub fn daemon(&self, i: usize, services: &str, env: &[(&str, &str)]) -> Result<Daemon> {
        self.daemon_with_neighbors(
            i,
            services,
            env,
            "{ address = \"198.18.30.254\", asn = 65000 }, { address = \"2001:2:30::fe\", asn = 65000 }",
        )
    }

    /// The same with the given `[bgp] neighbors` entries.
    pub fn daemon_with_neighbors(
        &self,
        i: usize,
        services: &str,
        env: &[(&str, &str)],
        neighbors: &str,
    ) -> Result<Daemon> {
        let mut d = Daemon::prepare(
            &self.lab.sws[i - 1],
            &format!("bgp{i}"),
            &["eth0"],
            &format!("seed = \"{SEED}\"\nmetrics = \"127.0.0.1:9560\""),
            &format!(
                "{services}\n[fleet]\nhost = \"sw-{i}\"\netcd = [\"{ETCD}\"]\nlease = \"2s\"\n\n\
                 [bgp]\nasn = 65001\nrouter_id = \"198.18.30.{i}\"\n\
                 neighbors = [{neighbors}]\n"
            ),
        )?;
        d.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        d.spawn()?;
        Ok(d)
    }

    /// The router's next hops for `prefix` (one per announcing host).
    pub fn next_hops(&self, prefix: &str) -> Result<usize> {
        let cmd = if prefix.contains(':') {
            "ip -6 route show"
        } else {
            "ip route show"
        };
        let out = self.rt.exec(&format!("{cmd} {prefix}"))?;
        let vias = out.matches(" via ").count();
        Ok(vias)
    }

    /// Waits until the router has `n` next hops for `prefix`.
    pub fn wait_next_hops(&self, prefix: &str, n: usize, secs: u64) -> Result<()> {
        let t = Instant::now();
        loop {
            if self.next_hops(prefix)? == n {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(secs) {
                bail!(
                    "the router has {} next hops for {prefix}, not {n}:\n{}",
                    self.next_hops(prefix)?,
                    self.rt.exec("ip route; ip -6 route").unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// nginx in every backend namespace on the VIPs (dsr), answering its
    /// name on `/`, with a large file (`/big`, 2 MiB, sent at 160 KB/s: about 13 s) for long downloads.
    pub fn start_backends(&self) -> Result<()> {
        let d = &self.lab.dir;
        let root = d.join("www");
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("big"), vec![b'x'; 2 << 20])?;
        for (i, b) in self.bes.iter().enumerate() {
            let name = format!("be{}", i + 1);
            let conf = d.join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "worker_processes 1;\npid {p}/{name}.pid;\nerror_log {p}/{name}-error.log;\nevents {{ worker_connections 4096; }}\n\
                     http {{\n  access_log off;\n  default_type text/plain;\n  client_body_temp_path {p}/body-{name};\n  proxy_temp_path {p}/proxy-{name};\n  fastcgi_temp_path {p}/fcgi-{name};\n  uwsgi_temp_path {p}/uwsgi-{name};\n  scgi_temp_path {p}/scgi-{name};\n  keepalive_requests 100000;\n\
                     server {{ listen 80; listen [::]:80; root {r}; location = / {{ return 200 \"hello from {name}\\n\"; }} location = /big {{ limit_rate 160k; }} }}\n}}\n",
                    p = d.display(),
                    r = root.display()
                ),
            )?;
            b.exec(&format!("nginx -c {}", conf.display()))?;
        }
        Ok(())
    }
}

impl Drop for BgpLab {
    fn drop(&mut self) {
        let d = self.lab.dir.display().to_string();
        let _ = sh(&format!(
            "kill $(cat {d}/router.pid) 2>/dev/null; for i in 1 2 3 4; do kill $(cat {d}/be$i.pid) 2>/dev/null; done; true"
        ));
    }
}
