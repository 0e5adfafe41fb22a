//! Real HTTP through each forwarder: nginx backends, wrk as the client.
//! Used by `switch-bench` (part 3 of the report).

use std::{collections::BTreeSet, path::Path, sync::mpsc, time::Duration};

use anyhow::{Context, Result, bail};
use switch_user::{
    config::{BackendConfig, DaemonConfig, ForwardMode, PoolConfig, Protocol, ServiceConfig},
    dataplane::{Capacity, Dataplane},
    programmer::Programmer,
};

use crate::lab::Lab;

pub const BACKENDS: [&str; 4] = [
    "198.18.1.11:8080",
    "198.18.1.12:8080",
    "198.18.1.13:8080",
    "198.18.1.14:8080",
];

/// nginx on every backend address, answering a short body.
pub fn start_backends(lab: &Lab, dir: &Path) -> Result<()> {
    start_backends_with(lab, dir, "")
}

/// One nginx (named `name`) on `addrs`, started through `prefix` (e.g.
/// `nice -n 19`).
pub fn start_nginx_on(
    lab: &Lab,
    dir: &Path,
    name: &str,
    addrs: &[&str],
    prefix: &str,
) -> Result<()> {
    start_nginx_in(&lab.be, dir, name, addrs, prefix)
}

/// The same in any namespace.
pub fn start_nginx_in(
    ns: &crate::Netns,
    dir: &Path,
    name: &str,
    addrs: &[&str],
    prefix: &str,
) -> Result<()> {
    let mut servers = String::new();
    for a in addrs {
        servers.push_str(&format!(
            "  server {{ listen {a}; location / {{ return 200 \"hello from {a}\\n\"; }} }}\n"
        ));
    }
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        nginx_conf(
            dir,
            name,
            &format!("http {{\n  access_log off;\n  default_type text/plain;\n{servers}}}\n"),
        ),
    )?;
    ns.exec(&format!("{prefix} nginx -c {}", conf.display()))
        .with_context(|| format!("starting nginx {name}"))?;
    Ok(())
}

/// The same with extra `http {}` directives (e.g. keep-alive settings).
pub fn start_backends_with(lab: &Lab, dir: &Path, extra: &str) -> Result<()> {
    let mut servers = String::new();
    for a in BACKENDS {
        servers.push_str(&format!(
            "  server {{ listen {a}; location / {{ return 200 \"hello from {a}\\n\"; }} }}\n"
        ));
    }
    let conf = dir.join("backends.conf");
    std::fs::write(
        &conf,
        nginx_conf(
            dir,
            "backends",
            &format!(
                "http {{\n  access_log off;\n  default_type text/plain;\n{extra}\n{servers}}}\n"
            ),
        ),
    )?;
    lab.be
        .exec(&format!("nginx -c {}", conf.display()))
        .context("starting nginx backends")?;
    Ok(())
}

fn nginx_conf(dir: &Path, name: &str, body: &str) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log;\n{}events {{ worker_connections 4096; }}\n{body}",
        if body.starts_with("stream") { "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n" } else { "" }
    )
        .replace("http {", &format!("http {{\n  client_body_temp_path {d}/body-{name};\n  proxy_temp_path {d}/proxy-{name};\n  fastcgi_temp_path {d}/fcgi-{name};\n  uwsgi_temp_path {d}/uwsgi-{name};\n  scgi_temp_path {d}/scgi-{name};"))
}

/// HAProxy in TCP mode on `vip` (local to the switch host), weighted.
pub fn start_haproxy(lab: &Lab, dir: &Path, vip: &str) -> Result<()> {
    let ip = vip.split(':').next().unwrap_or("");
    lab.sw.exec(&format!("ip addr add {ip}/32 dev lo"))?;
    let mut cfg = format!(
        "global\n  maxconn 4000\n  pidfile {}/haproxy.pid\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\nlisten web\n  bind {vip}\n  balance roundrobin\n",
        dir.display()
    );
    for (i, a) in BACKENDS.iter().enumerate() {
        cfg.push_str(&format!("  server b{i} {a} weight 1\n"));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    lab.sw
        .exec(&format!("haproxy -D -f {}", path.display()))
        .context("starting haproxy")?;
    Ok(())
}

/// nginx `stream` (L4 proxy) on `vip`, weighted.
pub fn start_nginx_stream(lab: &Lab, dir: &Path, vip: &str) -> Result<()> {
    let ip = vip.split(':').next().unwrap_or("");
    lab.sw.exec(&format!("ip addr add {ip}/32 dev lo"))?;
    let servers: String = BACKENDS
        .iter()
        .map(|a| format!("    server {a} weight=1;\n"))
        .collect();
    let body = format!(
        "stream {{\n  upstream up {{\n{servers}  }}\n  server {{ listen {vip}; proxy_pass up; }}\n}}\n"
    );
    let conf = dir.join("stream.conf");
    std::fs::write(&conf, nginx_conf(dir, "stream", &body))?;
    lab.sw
        .exec(&format!("nginx -c {}", conf.display()))
        .context("starting nginx stream (libnginx-mod-stream)")?;
    Ok(())
}

/// The switch (nat) for `vip` in the switch namespace, until the returned
/// sender is dropped or sent to.
pub fn start_switch(lab: &Lab, vip: &str) -> Result<mpsc::Sender<()>> {
    let path = format!("/run/netns/{}", lab.sw.name);
    let spec = ServiceConfig {
        name: "web".into(),
        vip: vip.parse()?,
        protocol: Protocol::Tcp,
        mode: ForwardMode::Nat,
        affinity: Default::default(),
        source: None,
        health: None,
        pools: vec![PoolConfig {
            name: "p".into(),
            weight: 1,
            backends: BACKENDS
                .iter()
                .map(|a| BackendConfig::Addr(a.parse().unwrap()))
                .collect(),
        }],
        cohorts: vec![],
    };
    let (stop, rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    std::thread::spawn(move || {
        let r = (|| -> Result<Dataplane> {
            crate::enter(&path)?;
            let mut dp = Dataplane::load(None, Capacity::small())?;
            let mut p = Programmer::new(0x5eed, Capacity::small());
            p.init(&mut dp, &DaemonConfig::default())?;
            p.apply(&mut dp, &spec, &BTreeSet::new())?;
            dp.attach("sw0")?;
            dp.attach("sw1")?;
            switch_user::daemon::cache_nexthops(&mut dp, &p)?;
            Ok(dp)
        })();
        match r {
            Ok(dp) => {
                let _ = ready_tx.send(Ok(()));
                let _ = rx.recv();
                drop(dp);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
            }
        }
    });
    ready_rx.recv()?.map_err(|e| anyhow::anyhow!(e))?;
    Ok(stop)
}

#[derive(Clone, Debug, Default)]
pub struct WrkResult {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

fn ms(s: &str) -> f64 {
    let s = s.trim();
    let (num, mul) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * mul
}

/// wrk from the client namespace against `url`.
pub fn wrk(lab: &Lab, url: &str, secs: u64, conns: u32) -> Result<WrkResult> {
    wrk_with(lab, url, secs, conns, "")
}

/// The same with extra wrk arguments (e.g. `-H 'Connection: close'`).
pub fn wrk_with(lab: &Lab, url: &str, secs: u64, conns: u32, extra: &str) -> Result<WrkResult> {
    wrk_in(&lab.cli, url, secs, conns, extra)
}

/// wrk from any namespace.
pub fn wrk_in(
    ns: &crate::Netns,
    url: &str,
    secs: u64,
    conns: u32,
    extra: &str,
) -> Result<WrkResult> {
    let out = ns.exec(&format!(
        "wrk -t2 -c{conns} -d{secs}s --latency {extra} {url}"
    ))?;
    let mut r = WrkResult::default();
    for line in out.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("50%") {
            r.p50_ms = ms(v);
        } else if let Some(v) = l.strip_prefix("99%") {
            r.p99_ms = ms(v);
        } else if l.starts_with("Non-2xx") || l.starts_with("Socket errors") {
            r.errors += l
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if r.rps == 0.0 {
        bail!("wrk gave no result against {url}:\n{out}");
    }
    Ok(r)
}

/// `GET /` on a new connection (`Connection: close`): the body of a 200
/// answer, or what went wrong ("connect failed", "reset", "HTTP error"...).
pub fn get_body(
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> std::result::Result<String, &'static str> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|_| "connect failed")?;
    let _ = s.set_read_timeout(Some(timeout));
    s.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .map_err(|_| "write failed")?;
    let mut answer = String::new();
    match s.read_to_string(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Err("reset"),
        Err(_) => return Err("read failed"),
    }
    if answer.split_whitespace().nth(1) != Some("200") {
        return Err("HTTP error");
    }
    Ok(answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

pub fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}
