//! `switch daemon`: loads or adopts the data plane, serves the API, and
//! persists desired state. Stopping it leaves the program attached and every
//! map pinned: forwarding goes on, and the next start adopts it all.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result, anyhow};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    api::{self, BackendStatus, Command, PoolStatus, Request, Response, ServiceStatus},
    config::{AdminState, ConfigFile, DaemonConfig, ForwardMode},
    controller::Controller,
    dataplane::{Capacity, Dataplane},
    programmer::Programmer,
};

struct Shared {
    dp: Dataplane,
    ctl: Controller,
    state_file: PathBuf,
}

pub fn run(config_path: &Path, api_override: Option<PathBuf>) -> Result<()> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("cannot read config {}", config_path.display()))?;
    let mut file =
        ConfigFile::parse(&text).with_context(|| format!("config {}", config_path.display()))?;
    if let Some(a) = api_override {
        file.daemon.api = a;
    }
    let d = file.daemon.clone();
    std::fs::create_dir_all(&d.state_dir)
        .with_context(|| format!("cannot create state dir {}", d.state_dir.display()))?;
    let state_file = d.state_dir.join("state.json");

    let capacity = Capacity {
        services: d.max_services,
        backends: d.max_backends,
        flows: d.max_flows,
        // One live table per service, plus spares for changes in flight
        // and for cohort tables.
        tables: d.max_services + 64,
    };
    let mut dp = Dataplane::load(Some(&d.pin_dir), capacity)?;
    let restored = match std::fs::read(&state_file) {
        Ok(bytes) => {
            Some(serde_json::from_slice::<Controller>(&bytes).context("state file is corrupt")?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).context("reading state file"),
    };
    let seed = seed(&d, restored.as_ref())?;
    let mut ctl = match restored {
        Some(mut c) => {
            log::info!(
                "adopting state from {}: {} services",
                state_file.display(),
                c.services.len()
            );
            c.programmer.seed = seed;
            c
        }
        None => Controller::new(Programmer::new(seed, capacity)),
    };
    ctl.programmer.init(&mut dp, &d)?;
    if ctl.services.is_empty() && !file.services.is_empty() {
        ctl.handle(
            &mut dp,
            &Command::Apply {
                services: file.services.clone(),
            },
        )?;
    } else {
        ctl.reapply(&mut dp)?;
    }
    for ifname in &d.interfaces {
        let mode = dp.attach(ifname)?;
        log::info!("attached to {ifname} ({mode:?})");
    }
    let shared = Arc::new(Mutex::new(Shared {
        dp,
        ctl,
        state_file,
    }));
    persist(&*shared.lock().map_err(|_| anyhow!("lock"))?)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(shared, d))
}

fn seed(d: &DaemonConfig, restored: Option<&Controller>) -> Result<u32> {
    if let Some(hex) = &d.seed {
        return u32::from_str_radix(hex.trim_start_matches("0x"), 16)
            .map_err(|_| anyhow!("daemon.seed: {hex:?} is not a hex number of at most 8 digits"));
    }
    if let Some(c) = restored {
        return Ok(c.programmer.seed);
    }
    Ok(rand::random())
}

fn persist(s: &Shared) -> Result<()> {
    let tmp = s.state_file.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&s.ctl)?)?;
    std::fs::rename(&tmp, &s.state_file)?;
    Ok(())
}

async fn serve(shared: Arc<Mutex<Shared>>, d: DaemonConfig) -> Result<()> {
    if let Some(dir) = d.api.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&d.api);
    let listener = UnixListener::bind(&d.api)
        .with_context(|| format!("binding API socket {}", d.api.display()))?;
    std::fs::set_permissions(&d.api, std::fs::Permissions::from_mode(0o660))?;
    log::info!("API on {}", d.api.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let (stream, _) = conn?;
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = client(stream, shared).await {
                        log::warn!("API client: {e:#}");
                    }
                });
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = std::fs::remove_file(&d.api);
    log::info!("stopping; the data plane keeps forwarding");
    Ok(())
}

async fn client(stream: UnixStream, shared: Arc<Mutex<Shared>>) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::err(format!("bad request: {e}")),
            Ok(req) if req.v != api::VERSION => Response::err(format!(
                "API version {} not supported (this daemon speaks {})",
                req.v,
                api::VERSION
            )),
            Ok(req) => {
                let shared = shared.clone();
                tokio::task::spawn_blocking(move || handle(&shared, &req.cmd)).await?
            }
        };
        let mut out = serde_json::to_vec(&resp)?;
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

fn handle(shared: &Mutex<Shared>, cmd: &Command) -> Response {
    let Ok(mut guard) = shared.lock() else {
        return Response::err("daemon state lock poisoned");
    };
    let s = &mut *guard;
    match cmd {
        Command::Status { service } => match status(s, service.as_deref()) {
            Ok(st) => Response {
                status: Some(st),
                ..Response::ok()
            },
            Err(e) => Response::err(e),
        },
        Command::History { service } => match s.ctl.service(service) {
            Ok(_) => Response {
                history: Some(
                    s.ctl
                        .history
                        .iter()
                        .filter(|e| &e.service == service)
                        .cloned()
                        .collect(),
                ),
                ..Response::ok()
            },
            Err(e) => Response::err(e),
        },
        _ => match s.ctl.handle(&mut s.dp, cmd) {
            Ok(()) => match persist(s) {
                Ok(()) => Response::ok(),
                Err(e) => Response::err(format!("applied, but persisting state failed: {e}")),
            },
            Err(e) => {
                let _ = persist(s);
                Response::err(e)
            }
        },
    }
}

fn status(s: &Shared, only: Option<&str>) -> Result<Vec<ServiceStatus>> {
    if let Some(name) = only {
        s.ctl.service(name)?;
    }
    let flows = s.dp.flow_count_by_backend()?;
    let mut out = Vec::new();
    for (name, spec) in &s.ctl.services {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let placed = s
            .ctl
            .programmer
            .services
            .get(name)
            .ok_or_else(|| anyhow!("{name} not placed"))?;
        let st = s.dp.service_stats(placed.id)?;
        let weights: Vec<u64> = spec
            .pools
            .iter()
            .map(|p| {
                if p.backends.iter().any(|b| b.state() == AdminState::Active) {
                    p.weight as u64
                } else {
                    0
                }
            })
            .collect();
        let total: u64 = weights.iter().sum();
        let mut pools = Vec::new();
        for (p, w) in spec.pools.iter().zip(&weights) {
            let mut backends = Vec::new();
            for b in &p.backends {
                let index = placed.backends[&b.addr()];
                let bs = s.dp.backend_stats(index)?;
                backends.push(BackendStatus {
                    addr: b.addr(),
                    weight: b.weight(),
                    state: format!("{:?}", b.state()).to_lowercase(),
                    packets: bs.packets,
                    new_flows: bs.new_flows,
                    rsts: bs.rsts,
                    active_flows: flows.get(&index).copied().unwrap_or(0),
                });
            }
            pools.push(PoolStatus {
                name: p.name.clone(),
                weight: p.weight,
                share: if total == 0 {
                    0.0
                } else {
                    100.0 * *w as f64 / total as f64
                },
                backends,
            });
        }
        out.push(ServiceStatus {
            name: name.clone(),
            vip: spec.vip,
            protocol: format!("{:?}", spec.protocol).to_lowercase(),
            mode: match spec.mode {
                ForwardMode::Nat => "nat".into(),
                ForwardMode::Dsr => "dsr".into(),
                ForwardMode::Fullnat => "fullnat".into(),
            },
            packets: st.packets,
            new_flows: st.new_flows,
            no_backend: st.no_backend,
            pools,
        });
    }
    Ok(out)
}

/// Sends one request to the daemon and returns its response.
pub fn call(api: &Path, cmd: Command) -> Result<Response> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(api).map_err(|e| {
        anyhow!("cannot reach the switch daemon at {} ({e}); is `switch daemon` running? (--api or SWITCH_API)", api.display())
    })?;
    let mut line = serde_json::to_vec(&Request {
        v: api::VERSION,
        cmd,
    })?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = std::io::BufReader::new(stream);
    let mut buf = String::new();
    reader.read_line(&mut buf)?;
    serde_json::from_str(&buf).map_err(|e| anyhow!("bad response from daemon: {e}"))
}
