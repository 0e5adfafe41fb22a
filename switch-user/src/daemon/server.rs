//! The API server: the Unix socket, one request a line, each answered after its changes are in the maps and committed.

use super::*;

/// The metrics page for one scrape.
pub(super) fn metrics_page(shared: &Mutex<Shared>) -> String {
    let Ok(s) = shared.lock() else {
        return String::new();
    };
    let services = status(&s, None).unwrap_or_default();
    let reasons =
        s.dp.reasons()
            .map(|r| {
                r.into_iter()
                    .map(|(r, n)| (r.name().to_string(), n))
                    .collect()
            })
            .unwrap_or_default();
    let mut last = BTreeMap::new();
    for e in s.ctl.history.iter().filter(|e| e.ok) {
        last.insert(e.service.clone(), e.at_ms);
    }
    metrics::render(&services, &reasons, &last)
}

pub(super) async fn serve(
    shared: Arc<Mutex<Shared>>,
    d: DaemonConfig,
    access: Access,
    seed_services: Vec<crate::model::config::ServiceConfig>,
) -> Result<()> {
    // Before the API socket appears: whoever sees it may send SIGTERM at
    // once, and it must mean a clean stop, not the default death.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    if let Some(addr) = d.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding metrics address {addr}"))?;
        tracing::info!("metrics on http://{addr}/metrics");
        let s = shared.clone();
        tokio::spawn(metrics::serve(listener, move || metrics_page(&s)));
    }
    let mut essential = start_tasks(&shared, seed_services)?;
    // Threads of our own start only once privileges are dropped (below):
    // capabilities are per thread, and a thread keeps those it was born with.
    let (clock, shadow_ring) = {
        let mut g = shared.lock().map_err(|_| anyhow!("lock"))?;
        sync_shadows(&mut g);
        let engine = g.shadow.clone();
        let ring = match g.dp.take_shadow_ring() {
            Ok(ring) => Some((ring, engine)),
            Err(e) => {
                tracing::warn!("shadow ring buffer: {e:#}");
                None
            }
        };
        (g.dp.clock()?, ring)
    };
    if let Some(dir) = d.api.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&d.api);
    let listener = UnixListener::bind(&d.api)
        .with_context(|| format!("binding API socket {}", d.api.display()))?;
    access.secure_socket(&d.api)?;
    let access = Arc::new(access);
    // Everything that needs privileges is done: maps and links are open,
    // sockets bound.
    let bgp = shared.lock().map_err(|_| anyhow!("lock"))?.bgp.is_some();
    let extra: &[caps::Capability] = if bgp { &privileges::KEPT_FOR_BGP } else { &[] };
    match privileges::drop_all_but(extra) {
        Ok(()) => tracing::info!(
            "keeping only {}",
            privileges::KEPT
                .iter()
                .chain(extra)
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => tracing::warn!("could not drop capabilities: {e:#}"),
    }
    start_threads(clock, shadow_ring)?;
    tracing::info!("API on {}", d.api.display());
    // systemd Type=notify: ready once the API serves.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let registry = Arc::new(Registry::new(MAX_CONNECTIONS));
    let mut watch = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            e = essential.ended() => return Err(e),
            _ = watch.tick() => check_lock(&shared)?,
            conn = listener.accept() => {
                let stream = match conn {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, most likely: the daemon goes
                        // on, and so do the connections it has.
                        tracing::warn!("API accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(conn) = registry.admit() else {
                    tokio::spawn(refuse_busy(stream));
                    continue;
                };
                let caller = access.caller(&stream, "socket");
                let shared = shared.clone();
                let registry = registry.clone();
                let access = access.clone();
                tokio::spawn(async move {
                    if let Err(e) = client(stream, shared, &access, caller, &conn, &registry).await {
                        tracing::warn!("API client: {e:#}");
                    }
                    registry.leave(&conn);
                });
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = DETACHED.notified() => {
                tracing::info!("detached: the program and every pin are gone; exiting");
                break;
            }
        }
    }
    let _ = std::fs::remove_file(&d.api);
    let host: crate::adapters::fleet::agent::SharedRef = shared.clone();
    crate::adapters::fleet::agent::resign(&host).await;
    tracing::info!("stopping; the data plane keeps forwarding");
    Ok(())
}

/// The daemon's tasks on its runtime: health probes, the network watch,
/// the fleet agent, BGP announcements, flow counts and rates, the strategy
/// tick.
fn start_tasks(
    shared: &Arc<Mutex<Shared>>,
    seed_services: Vec<crate::model::config::ServiceConfig>,
) -> Result<Essential> {
    let mut essential = Essential::new();
    essential.spawn("health", health_loop(shared.clone()));
    essential.spawn("network watch", neighbour_loop(shared.clone()));
    if shared.lock().map_err(|_| anyhow!("lock"))?.fleet.is_some() {
        crate::adapters::fleet::agent::start(shared.clone(), seed_services);
    }
    if shared.lock().map_err(|_| anyhow!("lock"))?.bgp.is_some() {
        let s = shared.clone();
        essential.spawn("BGP", async move {
            let mut every = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                every.tick().await;
                let s = s.clone();
                let _ = tokio::task::spawn_blocking(move || sync_bgp(&s)).await;
            }
        });
    }
    let sampler = shared.clone();
    let scanner = Arc::new(
        shared
            .lock()
            .map_err(|_| anyhow!("lock"))?
            .dp
            .flow_scanner()?,
    );
    essential.spawn("flow count", async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            every.tick().await;
            let (s, sc) = (sampler.clone(), scanner.clone());
            let _ = tokio::task::spawn_blocking(move || {
                // Walking a big flow table takes a while: not under the lock.
                let began = now_ms();
                let counts = sc.count_by_backend();
                if let (Ok(c), Ok(mut g)) = (counts, s.lock()) {
                    g.flow_counts = c;
                    g.flow_counts_ms = began;
                }
                sample_rates(&s);
            })
            .await;
        }
    });
    let ticker = shared.clone();
    essential.spawn("strategy tick", async move {
        let mut every = tokio::time::interval(TICK);
        loop {
            every.tick().await;
            let s = ticker.clone();
            match tokio::task::spawn_blocking(move || tick(&s)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("strategy tick: {e:#}"),
                Err(e) => tracing::warn!("strategy tick: {e}"),
            }
        }
    });
    Ok(essential)
}

/// The threads of our own, started after the privilege drop: the data
/// plane's clock, and the shadow replays.
fn start_threads(
    clock: crate::adapters::dataplane::Clock,
    shadow_ring: Option<(
        aya::maps::RingBuf<aya::maps::MapData>,
        Arc<crate::adapters::shadow::Engine>,
    )>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("clock".into())
        .spawn(move || clock.run())?;
    if let Some((ring, engine)) = shadow_ring {
        // Replays run on a thread of their own at the lowest priority: on a
        // busy switch host they get what is left over, and the live path
        // (softirqs, the API, health checks) never waits for them.
        std::thread::Builder::new()
            .name("shadow".into())
            .spawn(move || {
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(shadow_reader(ring, engine)),
                    Err(e) => tracing::warn!("shadow runtime: {e}"),
                }
            })?;
    }
    Ok(())
}

/// Every connection is busy with a request: one line, then closed.
async fn refuse_busy(mut stream: UnixStream) {
    let resp = Response::err(format!(
        "the daemon has {MAX_CONNECTIONS} API connections, all busy: try again"
    ));
    if let Ok(mut out) = serde_json::to_vec(&resp) {
        out.push(b'\n');
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(1), stream.write_all(&out)).await;
    }
}

/// Told once `detach` has removed the data plane: the daemon ends.
static DETACHED: tokio::sync::Notify = tokio::sync::Notify::const_new();

pub(super) async fn client(
    stream: UnixStream,
    shared: Arc<Mutex<Shared>>,
    access: &Access,
    caller: Caller,
    conn: &Conn,
    registry: &Registry,
) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        conn.set_idle(true, registry);
        let line = tokio::select! {
            line = read_line(&mut r, MAX_LINE) => line?,
            _ = tokio::time::sleep(IDLE_TIMEOUT) => return Ok(()),
            _ = conn.close.notified() => return Ok(()),
        };
        conn.set_idle(false, registry);
        let line = match line {
            Line::Text(l) => l,
            Line::End => return Ok(()),
            Line::TooLong | Line::NotUtf8 => {
                let resp = Response::err(match line {
                    Line::TooLong => {
                        format!("bad request: a request line is at most {MAX_LINE} bytes")
                    }
                    _ => "bad request: not UTF-8".to_string(),
                });
                let mut out = serde_json::to_vec(&resp)?;
                out.push(b'\n');
                w.write_all(&out).await?;
                // The rest of the line cannot be told from the next one.
                return Ok(());
            }
        };
        let parsed = serde_json::from_str::<Request>(&line);
        let is_detach = matches!(&parsed, Ok(r) if matches!(r.cmd, Command::Detach));
        let refusal = parsed
            .as_ref()
            .ok()
            .and_then(|r| access.refusal(&caller, &r.cmd));
        let resp = match parsed {
            Err(e) => Response::err(format!("bad request: {e}")),
            Ok(req) if req.v != api::VERSION => Response::err(format!(
                "API version {} not supported (this daemon speaks {})",
                req.v,
                api::VERSION
            )),
            Ok(req) if refusal.is_some() => {
                let why = refusal.unwrap_or_default();
                let actor = actor_of(&caller, &req);
                tracing::info!(cmd = req.cmd.name(), user = %actor.user, "refused: {why}");
                let fleet = shared.lock().is_ok_and(|s| s.fleet.is_some());
                if fleet {
                    let host: crate::adapters::fleet::agent::SharedRef = shared.clone();
                    let mut e = api::Event::refused(now_ms(), &req.cmd, &actor, &why);
                    if !shared
                        .lock()
                        .is_ok_and(|s| s.ctl.services.contains_key(&e.service))
                    {
                        e.service = "-".into();
                    }
                    crate::adapters::fleet::agent::audit(&host, vec![e]).await;
                } else if let Ok(mut s) = shared.lock() {
                    s.ctl.record_refused(now_ms(), &req.cmd, &actor, &why);
                    let _ = persist(&s);
                }
                Response::failed(&crate::model::error::Refusal::forbidden(why).into())
            }
            Ok(req)
                if !matches!(
                    req.cmd,
                    Command::Status { .. } | Command::Membership { .. } | Command::Detach
                ) && shared.lock().is_ok_and(|s| s.fleet.is_some()) =>
            {
                let actor = actor_of(&caller, &req);
                let span = tracing::info_span!(
                    "request",
                    cmd = req.cmd.name(),
                    service = req.cmd.service().unwrap_or("-")
                );
                // The shadows' latest figures into the controller first: a
                // canary's `--after-shadow` is judged on them.
                if let Ok(mut s) = shared.lock() {
                    sync_shadows(&mut s);
                }
                let host: crate::adapters::fleet::agent::SharedRef = shared.clone();
                let resp = tracing::Instrument::instrument(
                    crate::adapters::fleet::agent::command(&host, req.cmd.clone(), actor),
                    span,
                )
                .await;
                if !matches!(req.cmd, Command::History { .. }) {
                    match &resp.error {
                        None => tracing::info!(cmd = req.cmd.name(), "done"),
                        Some(e) => tracing::info!(cmd = req.cmd.name(), error = %e, "refused"),
                    }
                    if resp.ok {
                        let s = shared.clone();
                        let _ = tokio::task::spawn_blocking(move || refresh_neighbours(&s)).await;
                    }
                }
                resp
            }
            Ok(req) => {
                let shared = shared.clone();
                let actor = actor_of(&caller, &req);
                tokio::task::spawn_blocking(move || {
                    let span = tracing::info_span!(
                        "request",
                        cmd = req.cmd.name(),
                        service = req.cmd.service().unwrap_or("-")
                    );
                    let _enter = span.enter();
                    let resp = handle(&shared, &req.cmd, &actor);
                    if !matches!(req.cmd, Command::Status { .. } | Command::History { .. }) {
                        match &resp.error {
                            None => tracing::info!("done"),
                            Some(e) => tracing::info!(error = %e, "refused"),
                        }
                    }
                    // New backends forward from their first packet.
                    if resp.ok
                        && !matches!(req.cmd, Command::Status { .. } | Command::History { .. })
                    {
                        refresh_neighbours(&shared);
                    }
                    resp
                })
                .await?
            }
        };
        let mut out = serde_json::to_vec(&resp)?;
        out.push(b'\n');
        let detached = resp.ok && is_detach;
        // A caller that never reads its answers cannot hold a place.
        let written = tokio::time::timeout(IDLE_TIMEOUT, w.write_all(&out)).await;
        if detached {
            DETACHED.notify_one();
        }
        written
            .map_err(|_| anyhow!("the caller did not read its answer within {IDLE_TIMEOUT:?}"))??;
    }
}

/// The caller as the audit trail records it, with how its request came.
fn actor_of(caller: &Caller, req: &Request) -> api::Actor {
    let mut a = caller.actor.clone();
    if req.via.as_deref() == Some("config reload") {
        a.via = "socket (config reload)".into();
    }
    a
}

pub(super) fn handle(shared: &Mutex<Shared>, cmd: &Command, actor: &api::Actor) -> Response {
    let Ok(mut guard) = shared.lock() else {
        return Response::err("daemon state lock poisoned");
    };
    let s = &mut *guard;
    match cmd {
        Command::Status { service } => match status(s, service.as_deref()) {
            Ok(st) => Response {
                status: Some(st),
                reasons: s.dp.reasons().ok().map(|r| {
                    r.into_iter()
                        .filter(|(_, n)| *n > 0)
                        .map(|(r, n)| (r.name().to_string(), n))
                        .collect()
                }),
                ..Response::ok()
            },
            Err(e) => Response::failed(&e),
        },
        Command::Membership { join } => {
            if s.bgp.is_none() {
                return Response::err(
                    "this host has no [bgp] section: it announces nothing to join or leave",
                );
            }
            let file = left_file(&s.state_dir);
            let r = if *join {
                std::fs::remove_file(&file).or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
            } else {
                std::fs::write(&file, "left\n")
            };
            if let Err(e) = r {
                return Response::err(format!("cannot record it in {}: {e}", file.display()));
            }
            s.left = !*join;
            s.ctl
                .record_as(now_ms(), "-", cmd.name().to_string(), actor);
            let _ = persist(s);
            drop(guard);
            sync_bgp(shared);
            Response::ok()
        }
        Command::Detach => {
            drop(guard);
            detach(shared)
        }
        // A service's events, or those of refused commands that named none
        // (`-`) or a service that does not exist.
        Command::History { service } => match s.ctl.service(service).map(|_| ()).or_else(|e| {
            if s.ctl.history.iter().any(|ev| &ev.service == service) {
                Ok(())
            } else {
                Err(e)
            }
        }) {
            Ok(()) => Response {
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
            Err(e) => Response::failed(&e),
        },
        _ => {
            // Fresh shadow figures for `--after-shadow`; new shadows to the
            // engine afterwards.
            sync_shadows(s);
            let now = now_ms();
            let staged = match stage_command(s, cmd, now, actor) {
                Ok(staged) => staged,
                Err(resp) => return resp,
            };
            let r = s.ctl.handle_as(&mut s.dp, cmd, now, actor);
            sync_shadows(s);
            match r {
                Ok(()) => match staged.commit(&s.ctl) {
                    Ok(()) => Response::ok(),
                    Err(e) => Response::err(format!("applied, but persisting state failed: {e:#}")),
                },
                // A refused or failed command changed nothing but the
                // audit trail.
                Err(e) => {
                    staged.discard();
                    let _ = persist(s);
                    Response::failed(&e)
                }
            }
        }
    }
}

/// `switch detach` through the daemon: BGP stopped (VIPs withdrawn), the
/// program detached and every pin removed; then the daemon ends.
fn detach(shared: &Mutex<Shared>) -> Response {
    let Ok(s) = shared.lock() else {
        return Response::err("daemon state lock poisoned");
    };
    match crate::adapters::bgp::stop(&s.state_dir) {
        Ok(true) => tracing::info!("stopped the BGP speaker: VIPs withdrawn"),
        Ok(false) => {}
        Err(e) => tracing::warn!("stopping BGP: {e:#}"),
    }
    match crate::adapters::dataplane::detach(&s.pin_dir) {
        Ok(removed) => {
            tracing::info!(
                "removed from {}: {}",
                s.pin_dir.display(),
                removed.join(", ")
            );
            // The daemon ends once the caller has its answer (`client`).
            Response::ok()
        }
        Err(e) => Response::err(format!("detach: {e:#}")),
    }
}

/// A command's new state, worked out on a copy and made durable before
/// anything is written to the maps; or its refusal, answered and recorded.
fn stage_command(
    s: &mut Shared,
    cmd: &Command,
    now: u64,
    actor: &api::Actor,
) -> std::result::Result<Staged, Response> {
    let mut trial = s.ctl.clone();
    if let Err(e) = trial.handle_as(&mut NoMaps, cmd, now, actor) {
        s.ctl.record_refused(now, cmd, actor, &format!("{e:#}"));
        let _ = persist(s);
        return Err(Response::failed(&e));
    }
    stage_state(&s.state_file, &trial).map_err(|e| {
        let why = format!(
            "the new state cannot be made durable in {} ({}): refused, nothing changed",
            s.state_dir.display(),
            e.root_cause()
        );
        s.ctl.record_refused(now, cmd, actor, &why);
        Response::failed(&crate::model::error::Refusal::unavailable(why).into())
    })
}
