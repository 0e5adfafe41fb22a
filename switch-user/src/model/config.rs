//! The declarative configuration (`switch.toml`, `switch apply -f`), and its
//! validation. A config is checked whole before anything is applied; every
//! error names the field that is wrong.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

use super::limits;
use anyhow::{Result, bail};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    /// Fleet mode: present turns it on (desired state in etcd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetConfig>,
    /// Announce the VIPs over BGP (through BIRD 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpConfig>,
}

/// `[bgp]`: this host announces its VIPs to the router(s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    pub asn: u32,
    pub router_id: std::net::Ipv4Addr,
    pub neighbors: Vec<BgpNeighbor>,
    /// The next hop to announce for VIPs of its family; default: the
    /// address facing the neighbor.
    #[serde(default)]
    pub next_hop: Option<std::net::IpAddr>,
    /// The next hop for IPv6 VIPs announced over IPv4 sessions (when no
    /// IPv6 neighbor is configured); default: this host's global IPv6
    /// address on the interface towards the neighbor.
    #[serde(default)]
    pub next_hop6: Option<std::net::Ipv6Addr>,
    #[serde(default = "default_hold", with = "humantime_serde")]
    pub hold: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpNeighbor {
    pub address: std::net::IpAddr,
    pub asn: u32,
    /// A file holding the session's password (TCP MD5, RFC 2385; BIRD's
    /// `password`). Read when BIRD's configuration is written; never
    /// logged, shown or stored elsewhere.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Bidirectional forwarding detection on the session (BIRD's BFD): a
    /// dead path is noticed in `bfd_interval` × `bfd_multiplier`, not
    /// after the hold time.
    #[serde(default)]
    pub bfd: bool,
    #[serde(default, with = "humantime_serde")]
    pub bfd_interval: Option<Duration>,
    #[serde(default)]
    pub bfd_multiplier: Option<u32>,
}

fn default_hold() -> Duration {
    Duration::from_secs(3)
}

impl BgpConfig {
    pub fn validate(&self) -> Result<()> {
        if self.asn == 0 {
            bail!("bgp.asn: 0 is not an AS number");
        }
        if self.neighbors.is_empty() {
            bail!(
                "bgp.neighbors: give at least one, e.g. [{{ address = \"198.18.0.254\", asn = 65000 }}]"
            );
        }
        for n in &self.neighbors {
            if n.asn == 0 {
                bail!("bgp.neighbors: {} has AS 0", n.address);
            }
            if let Some(p) = &n.password_file {
                limits::printable(
                    &format!("bgp.neighbors ({}).password_file", n.address),
                    &p.to_string_lossy(),
                )?;
            }
            if let Some(i) = n.bfd_interval
                && (i < Duration::from_millis(10) || i > Duration::from_secs(10))
            {
                bail!(
                    "bgp.neighbors ({}).bfd_interval: {} is not between 10ms and 10s",
                    n.address,
                    humantime::format_duration(i)
                );
            }
            if n.bfd_multiplier.is_some_and(|m| m == 0 || m > 255) {
                bail!(
                    "bgp.neighbors ({}).bfd_multiplier: not in 1..=255",
                    n.address
                );
            }
        }
        if self.hold < Duration::from_secs(3) || self.hold > Duration::from_secs(65_535) {
            bail!(
                "bgp.hold: {} is not between 3s and 65535s (BGP's limits)",
                humantime::format_duration(self.hold)
            );
        }
        Ok(())
    }
}

/// `[fleet]`: this host is one of several that agree through etcd.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// This host's name, unique in the fleet.
    pub host: String,
    /// etcd endpoints, e.g. `["http://198.18.9.2:2379"]`.
    pub etcd: Vec<String>,
    /// Every key lives under it.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The leader's lease and this host's liveness: a dead host is noticed
    /// (and a dead leader replaced) this long after its last word.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// nat replies of connections another host forwarded (the fleet's
    /// return path is not its forward path: ECMP, static routes, a VRRP
    /// gateway) are recognised by the service's table and rewritten. On by
    /// default; off only where every reply returns through the host that
    /// forwarded the request and clients reach backends' own addresses
    /// through the switch hosts (whose replies the table could claim).
    #[serde(default = "yes")]
    pub replies_by_table: bool,
    /// TLS towards etcd (`https://` endpoints): the CA that signs etcd's
    /// certificate (the system's roots when absent) and this host's client
    /// certificate and key (mutual TLS).
    #[serde(default)]
    pub tls: Option<FleetTls>,
    /// etcd authentication: a user, and a file holding its password.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetTls {
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

fn default_prefix() -> String {
    "/switch".into()
}

fn default_lease() -> Duration {
    Duration::from_secs(5)
}

impl FleetConfig {
    pub fn validate(&self) -> Result<()> {
        if self.host.is_empty()
            || !self
                .host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!(
                "fleet.host: {:?} must be non-empty letters, digits, '-', '_' or '.'",
                self.host
            );
        }
        if self.etcd.is_empty() {
            bail!("fleet.etcd: give at least one etcd endpoint, e.g. \"http://198.18.9.2:2379\"");
        }
        if self.tls.is_some()
            && let Some(e) = self.etcd.iter().find(|e| e.starts_with("http://"))
        {
            bail!("fleet.tls is set but fleet.etcd {e:?} is plain http: use https:// endpoints");
        }
        if let Some(t) = &self.tls
            && t.cert.is_some() != t.key.is_some()
        {
            bail!("fleet.tls: give cert and key together (a client certificate needs its key)");
        }
        if self.user.is_some() != self.password_file.is_some() {
            bail!("fleet.user and fleet.password_file go together");
        }
        for e in &self.etcd {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() < 10 {
                bail!("fleet.etcd: {e:?} is not an endpoint like \"http://198.18.9.2:2379\"");
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.len() < 2 || self.prefix.ends_with('/') {
            bail!(
                "fleet.prefix: {:?} must start with '/' and not end with one, e.g. \"/switch\"",
                self.prefix
            );
        }
        if self.lease < Duration::from_secs(2) || self.lease > Duration::from_secs(600) {
            bail!(
                "fleet.lease: {} is not between 2s and 10m",
                humantime::format_duration(self.lease)
            );
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Interfaces the XDP program is attached to.
    pub interfaces: Vec<String>,
    pub api: PathBuf,
    /// Prometheus metrics (read-only HTTP), e.g. "127.0.0.1:9560"; off when absent.
    pub metrics: Option<std::net::SocketAddr>,
    /// Group whose members may read (status, watch, history). A name or a
    /// numeric gid; none when absent.
    pub api_read_group: Option<String>,
    /// Group whose members may also steer traffic (every command that
    /// changes weights, pools, strategies, shadows, `apply`).
    pub api_group: Option<String>,
    /// Group whose members may also detach and leave/join the fleet. Root
    /// may do everything whatever the groups.
    pub api_admin_group: Option<String>,
    /// Where maps and links are pinned (on bpffs).
    pub pin_dir: PathBuf,
    /// Where desired state and strategy progress are persisted.
    pub state_dir: PathBuf,
    /// The deployment's secret hash seed (hex). Give every switch host of a
    /// deployment the same one; if absent, a random seed is made on first
    /// start and persisted in the state directory.
    pub seed: Option<String>,
    #[serde(with = "humantime_serde")]
    pub tcp_close_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub tcp_idle: Duration,
    #[serde(with = "humantime_serde")]
    pub udp_idle: Duration,
    /// Map capacities, fixed when the maps are first created.
    pub max_services: u32,
    pub max_backends: u32,
    pub max_flows: u32,
}

impl DaemonConfig {
    /// Names, paths and timeouts: shapes and ceilings.
    fn validate_inputs(&self) -> Result<()> {
        for (i, name) in self.interfaces.iter().enumerate() {
            // IFNAMSIZ less its NUL; no '/', ':' or blanks (the kernel's rule).
            if name.is_empty()
                || name.len() > 15
                || name
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace() || c == '/' || c == ':')
            {
                bail!("daemon.interfaces[{i}]: {name:?} is not an interface name");
            }
        }
        for (key, path) in [
            ("api", &self.api),
            ("pin_dir", &self.pin_dir),
            ("state_dir", &self.state_dir),
        ] {
            let Some(text) = path.to_str() else {
                bail!("daemon.{key}: {} is not UTF-8", path.display());
            };
            limits::printable(&format!("daemon.{key}"), text)?;
        }
        for (key, group) in [
            ("api_read_group", &self.api_read_group),
            ("api_group", &self.api_group),
            ("api_admin_group", &self.api_admin_group),
        ] {
            if let Some(g) = group {
                if g.is_empty() {
                    bail!("daemon.{key}: empty");
                }
                limits::printable(&format!("daemon.{key}"), g)?;
            }
        }
        for (key, d) in [
            ("tcp_close_grace", self.tcp_close_grace),
            ("tcp_idle", self.tcp_idle),
            ("udp_idle", self.udp_idle),
        ] {
            limits::duration(&format!("daemon.{key}"), d, limits::MAX_FLOW_TIMEOUT)?;
        }
        Ok(())
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            interfaces: Vec::new(),
            api: PathBuf::from("/run/switch/switch.sock"),
            metrics: None,
            api_read_group: None,
            api_group: None,
            api_admin_group: None,
            pin_dir: PathBuf::from("/sys/fs/bpf/switch"),
            state_dir: PathBuf::from("/var/lib/switch"),
            seed: None,
            tcp_close_grace: Duration::from_secs(10),
            tcp_idle: Duration::from_secs(3600),
            udp_idle: Duration::from_secs(30),
            max_services: switch_common::DEFAULT_MAX_SERVICES,
            max_backends: switch_common::DEFAULT_MAX_BACKENDS,
            max_flows: switch_common::DEFAULT_MAX_FLOWS,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    #[default]
    Nat,
    Dsr,
    Fullnat,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    /// Each connection is balanced on its own.
    #[default]
    Connection,
    /// One client address always reaches the same backend.
    Client,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    #[serde(default)]
    pub mode: ForwardMode,
    #[serde(default)]
    pub affinity: Affinity,
    /// fullnat: the switch address backends see as the source (one of this
    /// host's addresses, routable from the backends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<std::net::IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthConfig>,
    pub pools: Vec<PoolConfig>,
    /// Source CIDRs pinned to one pool (dark launch, preview).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cohorts: Vec<CohortConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub weight: u32,
    pub backends: Vec<BackendConfig>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    #[default]
    Active,
    /// No new flows; established flows continue.
    Draining,
}

/// `"198.18.1.11:8080"` or `{ addr = "198.18.1.11:8080", weight = 2 }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BackendConfig {
    Addr(SocketAddr),
    Full {
        addr: SocketAddr,
        #[serde(default = "one")]
        weight: u32,
        #[serde(default)]
        state: AdminState,
    },
}

fn one() -> u32 {
    1
}

impl BackendConfig {
    pub fn addr(&self) -> SocketAddr {
        match self {
            BackendConfig::Addr(a) | BackendConfig::Full { addr: a, .. } => *a,
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            BackendConfig::Addr(_) => 1,
            BackendConfig::Full { weight, .. } => *weight,
        }
    }
    pub fn state(&self) -> AdminState {
        match self {
            BackendConfig::Addr(_) => AdminState::Active,
            BackendConfig::Full { state, .. } => *state,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CohortConfig {
    pub cidr: IpNet,
    pub pool: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    Tcp,
    Http,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    pub kind: HealthKind,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_rise")]
    pub rise: u32,
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// HTTP status codes that pass, "200-399" or "204".
    #[serde(default = "default_expect")]
    pub expect: String,
}

impl HealthConfig {
    /// The passing status range, or why `expect` is not one.
    pub fn expected(&self) -> Result<std::ops::RangeInclusive<u16>> {
        let parse = |x: &str| {
            x.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..600).contains(c))
        };
        let (lo, hi) = match self.expect.split_once('-') {
            Some((a, b)) => (parse(a), parse(b)),
            None => (parse(&self.expect), parse(&self.expect)),
        };
        match (lo, hi) {
            (Some(lo), Some(hi)) if lo <= hi => Ok(lo..=hi),
            _ => bail!(
                "health.expect: {:?} is not a status code or range like 200-399",
                self.expect
            ),
        }
    }
}

fn default_expect() -> String {
    "200-399".into()
}

fn default_path() -> String {
    "/".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

/// Upper bound of a pool or backend weight: far above any real use, low
/// enough that sums never overflow.
pub const MAX_WEIGHT: u32 = 1_000_000;

impl ConfigFile {
    pub fn parse(text: &str) -> Result<ConfigFile> {
        let c: ConfigFile =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let d = &self.daemon;
        if d.max_services == 0 || d.max_services > 65_536 {
            bail!(
                "daemon.max_services: {} is not in 1..=65536",
                d.max_services
            );
        }
        if d.max_backends == 0 || d.max_backends > 65_535 {
            bail!(
                "daemon.max_backends: {} is not in 1..=65535 (table entries are 16 bits)",
                d.max_backends
            );
        }
        if d.max_flows < 1024 {
            bail!("daemon.max_flows: {} is below 1024", d.max_flows);
        }
        d.validate_inputs()?;
        if let Some(b) = &self.bgp {
            b.validate()?;
        }
        if let Some(f) = &self.fleet {
            f.validate()?;
            if let Some(s) = self
                .services
                .iter()
                .find(|s| s.mode == ForwardMode::Fullnat)
            {
                bail!("service {:?}: {FULLNAT_IN_FLEET}", s.name);
            }
        }
        let mut names = BTreeSet::new();
        let mut vips = BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            s.validate()
                .map_err(|e| anyhow::anyhow!("service[{i}] ({}): {e}", s.name))?;
            if !names.insert(&s.name) {
                bail!("service[{i}].name: {:?} is used by two services", s.name);
            }
            if !vips.insert((s.vip, s.protocol as u8)) {
                bail!(
                    "service[{i}].vip: {} {:?} is already the VIP of another service",
                    s.vip,
                    s.protocol
                );
            }
        }
        Ok(())
    }
}

/// Why a fleet refuses fullnat.
pub const FULLNAT_IN_FLEET: &str = "mode fullnat is not supported in fleet mode: its source address and ports belong to one host, so a connection that moves to another host (ECMP) would be reset; use nat or dsr";

impl ServiceConfig {
    pub fn validate(&self) -> Result<()> {
        limits::name("name", &self.name)?;
        if self.vip.port() == 0 {
            bail!("vip: port 0 is not a service port");
        }
        if self.pools.is_empty() {
            bail!("pools: a service needs at least one pool");
        }
        match (self.mode, self.source) {
            (ForwardMode::Fullnat, None) => {
                bail!("source: fullnat needs the switch address backends see as the source")
            }
            (ForwardMode::Fullnat, Some(a)) if a.is_ipv4() != self.vip.is_ipv4() => {
                bail!("source: {a} is not of the VIP's address family")
            }
            (ForwardMode::Nat | ForwardMode::Dsr, Some(_)) => {
                bail!("source: only fullnat services rewrite the source")
            }
            _ => {}
        }
        let pools = self.validate_pools()?;
        self.validate_cohorts(&pools)?;
        if let Some(h) = &self.health {
            if h.interval.is_zero() || h.timeout.is_zero() || h.rise == 0 || h.fall == 0 {
                bail!("health: interval, timeout, rise and fall must be above zero");
            }
            limits::duration("health.interval", h.interval, limits::MAX_HEALTH_INTERVAL)?;
            limits::duration("health.timeout", h.timeout, limits::MAX_HEALTH_TIMEOUT)?;
            if h.rise.max(h.fall) > limits::MAX_RISE_FALL {
                bail!(
                    "health: rise and fall are at most {}",
                    limits::MAX_RISE_FALL
                );
            }
            limits::http_path("health.path", &h.path)?;
            h.expected()?;
        }
        Ok(())
    }

    /// Pools and their backends; the pools' names.
    fn validate_pools(&self) -> Result<BTreeSet<&str>> {
        let mut pools = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (p, pool) in self.pools.iter().enumerate() {
            limits::name(&format!("pools[{p}].name"), &pool.name)?;
            if !pools.insert(pool.name.as_str()) {
                bail!("pools[{p}].name: {:?} is used twice", pool.name);
            }
            if pool.weight > MAX_WEIGHT {
                bail!(
                    "pools[{p}].weight: {} is above the maximum {MAX_WEIGHT}",
                    pool.weight
                );
            }
            for (b, backend) in pool.backends.iter().enumerate() {
                let a = backend.addr();
                if a.is_ipv4() != self.vip.is_ipv4() {
                    bail!("pools[{p}].backends[{b}]: {a} is not of the VIP's address family");
                }
                if a.port() == 0 {
                    bail!("pools[{p}].backends[{b}]: port 0");
                }
                if a.ip().is_unspecified() || a.ip().is_multicast() || a.ip().is_loopback() {
                    bail!("pools[{p}].backends[{b}]: {a} is not a backend's address");
                }
                if self.mode == ForwardMode::Dsr && a.port() != self.vip.port() {
                    bail!(
                        "pools[{p}].backends[{b}]: in dsr mode the backend port must equal the VIP port {} (the packet is not rewritten)",
                        self.vip.port()
                    );
                }
                if backend.weight() > MAX_WEIGHT {
                    bail!(
                        "pools[{p}].backends[{b}].weight: {} is above the maximum {MAX_WEIGHT}",
                        backend.weight()
                    );
                }
                if !addrs.insert(a) {
                    bail!("pools[{p}].backends[{b}]: {a} appears twice in this service");
                }
            }
        }
        Ok(pools)
    }

    fn validate_cohorts(&self, pools: &BTreeSet<&str>) -> Result<()> {
        for (c, cohort) in self.cohorts.iter().enumerate() {
            if !pools.contains(cohort.pool.as_str()) {
                bail!("cohorts[{c}].pool: no pool named {:?}", cohort.pool);
            }
            if cohort.cidr.addr().is_ipv4() != self.vip.is_ipv4() {
                bail!(
                    "cohorts[{c}].cidr: {} is not of the VIP's address family",
                    cohort.cidr
                );
            }
        }
        if self
            .cohorts
            .iter()
            .map(|c| &c.pool)
            .collect::<BTreeSet<_>>()
            .len()
            > 1
        {
            bail!("cohorts: all cohorts of a service must name the same pool");
        }
        Ok(())
    }

    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[daemon]
interfaces = ["eth0"]
api = "/run/switch/switch.sock"

[[service]]
name = "web"
vip = "198.18.0.10:80"
protocol = "tcp"
mode = "nat"
health = { kind = "http", path = "/healthz", interval = "1s", timeout = "500ms", rise = 2, fall = 3 }
pools = [
  { name = "blue",  weight = 100, backends = ["198.18.1.11:8080", "198.18.1.12:8080"] },
  { name = "green", weight = 0,   backends = ["198.18.2.11:8080", { addr = "198.18.2.12:8080", weight = 2 }] },
]
"#;

    #[test]
    fn parses_the_documented_example() {
        let c = ConfigFile::parse(EXAMPLE).unwrap();
        assert_eq!(c.services[0].pools[1].backends[1].weight(), 2);
        assert_eq!(
            c.services[0].health.as_ref().unwrap().timeout,
            Duration::from_millis(500)
        );
    }

    fn err(text: &str) -> String {
        ConfigFile::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(&EXAMPLE.replace("weight = 0", "weight = -1")).contains("weight"));
        assert!(
            err(&EXAMPLE.replace("198.18.2.11:8080", "198.18.1.11:8080")).contains("appears twice")
        );
        assert!(
            err(&EXAMPLE.replace("\"198.18.2.11:8080\"", "\"[2001:2::1]:80\"")).contains("family")
        );
        assert!(err(&EXAMPLE.replace("interval = \"1s\"", "interval = \"soon\"")).contains("soon"));
        assert!(
            err(&EXAMPLE.replace("fall = 3", "fall = 3, expect = \"2xx\""))
                .contains("health.expect")
        );
        assert!(
            err(&EXAMPLE.replace("protocol = \"tcp\"", "protocol = \"sctp\"")).contains("sctp")
        );
        let two = format!(
            "{EXAMPLE}\n[[service]]\nname = \"web2\"\nvip = \"198.18.0.10:80\"\nprotocol = \"tcp\"\npools = [{{ name = \"a\", weight = 1, backends = [] }}]\n"
        );
        assert!(err(&two).contains("already the VIP"));
        // Shapes and ceilings.
        assert!(err(&EXAMPLE.replace("/healthz", "/healthz\\r\\nHost: x")).contains("health.path"));
        assert!(err(&EXAMPLE.replace("\"blue\"", "\"bl\\nue\"")).contains("pools[0].name"));
        assert!(
            err(&EXAMPLE.replace("interval = \"1s\"", "interval = \"2h\""))
                .contains("health.interval: 2h is above the ceiling of 1h")
        );
        assert!(
            err(&EXAMPLE.replace("[daemon]", "[daemon]\ntcp_idle = \"30days\""))
                .contains("daemon.tcp_idle")
        );
        assert!(
            err(&EXAMPLE.replace("[daemon]", "[daemon]\napi_group = \"sw\\nitch\""))
                .contains("control character")
        );
    }
}
