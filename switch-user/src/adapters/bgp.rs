//! Announcing VIPs over BGP through BIRD 2 (an existing engine; we write its
//! configuration and ask it to reload, nothing more).
//!
//! BIRD runs as its own daemon (it forks away from us), so a crash of the
//! switch daemon leaves its sessions and announcements in place while the
//! XDP program goes on forwarding; the next start adopts it. What is
//! announced is one host route per VIP in a static protocol per family; the
//! daemon rewrites the configuration and runs `birdc configure`.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

pub use crate::model::bgp::Session;
use crate::model::config::BgpConfig;

pub struct Bird {
    cfg: BgpConfig,
    dir: PathBuf,
    announced: Option<BTreeSet<IpAddr>>,
    /// Times BIRD was found dead and started again.
    pub restarts: u64,
    /// Per neighbor, the channels last written into BIRD's configuration
    /// (worked out when it is written: it asks the kernel for addresses).
    channels: Vec<Vec<(bool, Option<IpAddr>)>>,
}

/// How long `birdc` or BIRD's start may take.
const BIRD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The BIRD control socket under a state directory (also for `detach`).
pub fn socket(state_dir: &Path) -> PathBuf {
    state_dir.join("bgp").join("bird.ctl")
}

fn birdc(sock: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("birdc");
    cmd.arg("-s").arg(sock).args(args);
    // BIRD answers its socket in milliseconds; a BIRD that hangs must not
    // hold up status or the announcements.
    let out = crate::process::run_command(cmd, None, BIRD_TIMEOUT)
        .context("cannot run birdc (install bird2: cargo xtask setup does)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || text.contains("Unable to connect") {
        bail!(
            "birdc {}: {}{}",
            args.join(" "),
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(text)
}

impl Bird {
    /// Writes BIRD's configuration (announcing nothing yet) and starts BIRD,
    /// or reloads the one a previous run of the daemon left running.
    pub fn start(cfg: &BgpConfig, state_dir: &Path) -> Result<Bird> {
        let dir = state_dir.join("bgp");
        std::fs::create_dir_all(&dir)?;
        let mut b = Bird {
            cfg: cfg.clone(),
            dir,
            announced: None,
            restarts: 0,
            channels: Vec::new(),
        };
        b.channels = b.work_out_channels();
        // Until the daemon decides, announce what the last run did (a
        // restart must not withdraw by itself).
        let kept = std::fs::read_to_string(b.dir.join("announced"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        b.write_config(&kept)?;
        if birdc(&b.sock(), &["configure"]).is_err() {
            b.launch()?;
        }
        Ok(b)
    }

    /// Starts BIRD on the configuration written in `bird.conf`.
    fn launch(&self) -> Result<()> {
        let conf = self.dir.join("bird.conf");
        let mut cmd = Command::new("bird");
        cmd.arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(self.sock())
            .arg("-P")
            .arg(self.dir.join("bird.pid"));
        // BIRD forks into the background once its configuration is read.
        let status = crate::process::run_command(cmd, None, BIRD_TIMEOUT)
            .context("cannot start bird (install bird2: cargo xtask setup does)")?
            .status;
        if !status.success() {
            bail!(
                "bird refused its configuration {} ({status})",
                conf.display()
            );
        }
        Ok(())
    }

    /// Whether the BIRD this host started is still running (by its pid
    /// file; a BIRD that answers nothing but lives is left alone).
    fn alive(&self) -> bool {
        let Some(pid) = std::fs::read_to_string(self.dir.join("bird.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            return false;
        };
        // A process named bird that has not exited (a zombie has: BIRD
        // daemonizes, and its reaper may be slow).
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            return false;
        };
        let comm = &stat[open + 1..close];
        let state = stat[close + 1..].split_whitespace().next().unwrap_or("");
        comm == "bird" && !matches!(state, "Z" | "X" | "x")
    }

    /// BIRD supervised: found dead, it is started again announcing exactly
    /// `vips` (what this host should announce now). True when it was.
    pub fn supervise(&mut self, vips: &BTreeSet<IpAddr>) -> Result<bool> {
        if self.alive() {
            return Ok(false);
        }
        self.channels = self.work_out_channels();
        self.write_config(vips)?;
        self.launch()?;
        self.restarts += 1;
        self.announced = Some(vips.clone());
        Ok(true)
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// BIRD's whole configuration, announcing `vips`. A reload changes only
    /// the static protocols' routes; the BGP sessions stay up. The file
    /// holds the sessions' passwords: only its owner reads it.
    fn write_config(&self, vips: &BTreeSet<IpAddr>) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join("bird.conf");
        let text = self.config(vips)?;
        std::fs::write(&path, "")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        std::fs::write(&path, text)?;
        Ok(())
    }

    fn config(&self, vips: &BTreeSet<IpAddr>) -> Result<String> {
        let c = &self.cfg;
        let routes = |v4: bool| -> String {
            vips.iter()
                .filter(|a| a.is_ipv4() == v4)
                .map(|a| format!(" route {a}/{} blackhole;", if v4 { 32 } else { 128 }))
                .collect()
        };
        let mut s = format!(
            "# Written by the switch daemon; changes are overwritten.\nrouter id {};\nprotocol device {{}}\n\
             protocol static vips4 {{ ipv4;{} }}\n\
             protocol static vips6 {{ ipv6;{} }}\n",
            c.router_id,
            routes(true),
            routes(false)
        );
        // BFD: one protocol for the sessions that ask for it, timed by the
        // first of them that says how.
        if let Some(n) = c.neighbors.iter().find(|n| n.bfd) {
            let first = c
                .neighbors
                .iter()
                .find(|n| n.bfd && (n.bfd_interval.is_some() || n.bfd_multiplier.is_some()))
                .unwrap_or(n);
            let ms = first
                .bfd_interval
                .map(|d| d.as_millis().max(10))
                .unwrap_or(100);
            s.push_str(&format!(
                "protocol bfd {{ interface \"*\" {{ min rx interval {ms} ms; min tx interval {ms} ms; multiplier {}; }}; }}\n",
                first.bfd_multiplier.unwrap_or(3)
            ));
        }
        for (i, n) in c.neighbors.iter().enumerate() {
            let mut extra = String::new();
            if let Some(p) = &n.password_file {
                let pw = std::fs::read_to_string(p).with_context(|| {
                    format!("bgp: password_file {} of {}", p.display(), n.address)
                })?;
                let pw = pw.trim_end_matches(['\n', '\r']);
                if pw.is_empty() || pw.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
                    bail!(
                        "bgp: the password in {} is empty or holds a quote, backslash or control character",
                        p.display()
                    );
                }
                extra.push_str(&format!("  password \"{pw}\";\n"));
            }
            if n.bfd {
                extra.push_str("  bfd on;\n");
            }
            let channels: String = self.channels[i]
                .iter()
                .map(|(v4, next_hop)| {
                    let (fam, proto) = if *v4 {
                        ("ipv4", "vips4")
                    } else {
                        ("ipv6", "vips6")
                    };
                    let next_hop = match next_hop {
                        Some(h) => format!("next hop address {h};"),
                        None => "next hop self;".into(),
                    };
                    format!(
                        "  {fam} {{ import none; export where proto = \"{proto}\"; {next_hop} }};\n"
                    )
                })
                .collect();
            s.push_str(&format!(
                "protocol bgp n{i} {{\n  local as {};\n  neighbor {} as {};\n  hold time {};\n  connect retry time 1;\n  error wait time 1, 5;\n{extra}{channels}}}\n",
                c.asn,
                n.address,
                n.asn,
                c.hold.as_secs().max(3),
            ));
        }
        Ok(s)
    }

    /// The channels of neighbor `i`: (IPv4?, explicit next hop). Its own
    /// family (next hop: `next_hop` when of that family, else BIRD's own
    /// address on the session); and the other family — multiprotocol BGP —
    /// when no neighbor of that family is configured and a next hop of it
    /// is known (configured, or this host's global address on the
    /// interface towards the neighbor).
    fn channels_of(&self, i: usize) -> Vec<(bool, Option<IpAddr>)> {
        let c = &self.cfg;
        let n = &c.neighbors[i];
        let v4 = n.address.is_ipv4();
        let own = c.next_hop.filter(|h| h.is_ipv4() == v4);
        let mut out = vec![(v4, own)];
        let other_configured = c.neighbors.iter().any(|m| m.address.is_ipv4() != v4);
        if !other_configured {
            let configured = if v4 {
                c.next_hop6.map(IpAddr::V6)
            } else {
                c.next_hop.filter(|h| h.is_ipv4())
            };
            if let Some(h) = configured.or_else(|| local_address(n.address, !v4)) {
                out.push((!v4, Some(h)));
            }
        }
        out
    }

    /// Announces exactly `vips` (host routes); withdraws the rest.
    pub fn announce(&mut self, vips: &BTreeSet<IpAddr>) -> Result<()> {
        if self.announced.as_ref() == Some(vips) {
            return Ok(());
        }
        self.channels = self.work_out_channels();
        self.write_config(vips)?;
        birdc(&self.sock(), &["configure"])?;
        std::fs::write(
            self.dir.join("announced"),
            vips.iter().map(|v| format!("{v}\n")).collect::<String>(),
        )?;
        tracing::info!(
            "bgp: announcing {}",
            if vips.is_empty() {
                "nothing".to_string()
            } else {
                vips.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        self.announced = Some(vips.clone());
        Ok(())
    }

    /// Each neighbor's session state and the VIPs exported to it, as BIRD
    /// reports them; `None` when BIRD does not answer.
    pub fn observe(&self) -> Option<Vec<Session>> {
        let text = birdc(&self.sock(), &["show", "protocols"]).ok()?;
        let mut out = Vec::new();
        for (i, n) in self.cfg.neighbors.iter().enumerate() {
            let name = format!("n{i}");
            let state = text
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name.as_str()))
                // name, proto, table, state, since, info ("Established", ...)
                .and_then(|l| l.split_whitespace().nth(5))
                .unwrap_or("unknown")
                .to_string();
            let (exported, accepted) = if state == "Established" {
                (
                    exported(&birdc(&self.sock(), &["show", "route", "export", &name]).ok()?),
                    channels_up(&birdc(&self.sock(), &["show", "protocols", "all", &name]).ok()?),
                )
            } else {
                (Vec::new(), Vec::new())
            };
            out.push(Session {
                neighbor: n.address,
                state,
                exported,
                families: self.families(i),
                accepted,
            });
        }
        Some(out)
    }

    /// The configured neighbors, each "unknown": what status says when BIRD
    /// does not answer.
    pub fn unknown_sessions(&self) -> Vec<Session> {
        self.cfg
            .neighbors
            .iter()
            .enumerate()
            .map(|(i, n)| Session {
                neighbor: n.address,
                state: "unknown".into(),
                exported: Vec::new(),
                families: self.families(i),
                accepted: Vec::new(),
            })
            .collect()
    }

    fn work_out_channels(&self) -> Vec<Vec<(bool, Option<IpAddr>)>> {
        (0..self.cfg.neighbors.len())
            .map(|i| self.channels_of(i))
            .collect()
    }

    fn families(&self, i: usize) -> Vec<String> {
        self.channels[i]
            .iter()
            .map(|(v4, _)| if *v4 { "ipv4" } else { "ipv6" }.to_string())
            .collect()
    }

    pub fn asn(&self) -> u32 {
        self.cfg.asn
    }
}

/// This host's global address of the IPv4 (`v4`) or IPv6 family on the
/// interface the kernel routes `towards` through, if it has one.
fn local_address(towards: IpAddr, v4: bool) -> Option<IpAddr> {
    let run = |args: &[&str]| -> Option<serde_json::Value> {
        let out = crate::process::run("ip", args, None, crate::process::DEFAULT_TIMEOUT).ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let route = run(&["-j", "route", "get", &towards.to_string()])?;
    let dev = route.get(0)?.get("dev")?.as_str()?.to_string();
    let fam = if v4 { "-4" } else { "-6" };
    let addrs = run(&["-j", fam, "addr", "show", "dev", &dev, "scope", "global"])?;
    addrs
        .get(0)?
        .get("addr_info")?
        .as_array()?
        .iter()
        .filter_map(|a| a.get("local")?.as_str()?.parse().ok())
        .next()
}

/// The channels `birdc show protocols all` reports up: a `Channel ipv6`
/// line, then its `State: UP`.
fn channels_up(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<&str> = None;
    for l in text.lines() {
        let t = l.trim();
        if let Some(c) = t.strip_prefix("Channel ") {
            current = Some(c.trim());
        } else if let (Some(c), Some(state)) = (current, t.strip_prefix("State:")) {
            if state.trim() == "UP" {
                out.push(c.to_string());
            }
            current = None;
        }
    }
    out
}

/// The host routes (VIPs) in `birdc show route export` output: each route
/// line starts with its prefix (`198.18.10.10/32  unicast [vips4 ...]`).
fn exported(text: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| p.split_once('/'))
        .filter_map(|(a, len)| {
            let a: IpAddr = a.parse().ok()?;
            let host = if a.is_ipv4() { "32" } else { "128" };
            (len == host).then_some(a)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Stops the BIRD of a state directory, if one runs: every session closes
/// and every announcement is withdrawn (`switch detach`).
pub fn stop(state_dir: &Path) -> Result<bool> {
    let sock = socket(state_dir);
    if !sock.exists() {
        return Ok(false);
    }
    Ok(birdc(&sock, &["down"]).is_ok())
}
