//! Commands that start a deployment: `weights`, `flip`, `canary`, `rolling`, `shadow`.

use super::*;

pub(super) fn run(api: PathBuf, cmd: Cmd) -> Result<()> {
    match cmd {
        c @ Cmd::Weights { .. } => weights(api, c),
        c @ Cmd::Flip { .. } => flip(api, c),
        c @ Cmd::Canary { .. } => canary(api, c),
        c @ Cmd::Rolling { .. } => rolling(api, c),
        c @ Cmd::Shadow { .. } => shadow(api, c),
        // `cli::run` sends only this group's commands here.
        _ => unreachable!("not a deploy command"),
    }
}

fn weights(api: PathBuf, cmd: Cmd) -> Result<()> {
    let Cmd::Weights { service, weights } = cmd else {
        unreachable!("not weights")
    };
    let weights: BTreeMap<String, u32> = weights.into_iter().collect();
    send(
        &api,
        Command::Weights {
            service: service.clone(),
            weights,
        },
    )?;
    println!("{service}: weights set");
    Ok(())
}
fn flip(api: PathBuf, cmd: Cmd) -> Result<()> {
    let Cmd::Flip {
        service,
        to,
        preview,
        auto_promote,
        drain,
    } = cmd
    else {
        unreachable!("not flip")
    };
    send(
        &api,
        Command::Flip {
            service: service.clone(),
            to: to.clone(),
            preview,
            auto_promote_ms: auto_promote.map(|d| d.as_millis() as u64),
            drain_ms: drain.map(|d| d.as_millis() as u64),
        },
    )?;
    match preview {
        Some(p) => {
            println!("{service}: {p} now sees {to}; `switch promote {service}` sends everyone")
        }
        None => println!(
            "{service}: new connections now go to {to}; established ones stay where they are"
        ),
    }
    Ok(())
}
fn canary(api: PathBuf, cmd: Cmd) -> Result<()> {
    let Cmd::Canary {
        service,
        to,
        steps,
        interval,
        max_unhealthy,
        max_rst_excess,
        max_unanswered_excess,
        min_flows,
        prometheus,
        query,
        max,
        on_no_data,
        prometheus_token,
        after_shadow,
        max_shadow_error_excess,
    } = cmd
    else {
        unreachable!("not canary")
    };
    for (name, v) in [
        ("--max-rst-excess", max_rst_excess),
        ("--max-unanswered-excess", max_unanswered_excess),
    ] {
        if !(0.0..=1.0).contains(&v) {
            bail!("{name}: {v} is not between 0 and 1");
        }
    }
    send(
        &api,
        Command::Canary {
            service: service.clone(),
            to: to.clone(),
            steps: steps.clone(),
            interval_ms: interval.as_millis() as u64,
            gates: Gates {
                max_unhealthy,
                max_rst_excess,
                max_unanswered_excess,
                min_flows,
                prometheus: prometheus.map(|url| PromGate {
                    url,
                    query: query.unwrap_or_default(),
                    max: max.unwrap_or(f64::INFINITY),
                    on_no_data: match on_no_data {
                        NoDataArg::Hold => NoData::Hold,
                        NoDataArg::Pass => NoData::Pass,
                        NoDataArg::Fail => NoData::Fail,
                    },
                    token: prometheus_token,
                }),
                after_shadow_ms: after_shadow.map(|d| d.as_millis() as u64),
                max_shadow_error_excess,
            },
        },
    )?;
    println!("{service}: canary to {to} started at {}%", steps[0]);
    Ok(())
}
fn rolling(api: PathBuf, cmd: Cmd) -> Result<()> {
    let Cmd::Rolling {
        service,
        pool,
        replace,
        max_unavailable,
        drain_timeout,
        min_healthy,
        progress_deadline,
        linger_limit,
    } = cmd
    else {
        unreachable!("not rolling")
    };
    let n = replace.len();
    send(
        &api,
        Command::Rolling {
            service: service.clone(),
            pool,
            replace,
            max_unavailable,
            drain_timeout_ms: drain_timeout.as_millis() as u64,
            min_healthy_ms: min_healthy.as_millis() as u64,
            progress_deadline_ms: progress_deadline.as_millis() as u64,
            linger_limit_ms: linger_limit.map(|d| d.as_millis() as u64),
        },
    )?;
    println!("{service}: rolling replacement of {n} backend(s) started");
    Ok(())
}
fn shadow(api: PathBuf, cmd: Cmd) -> Result<()> {
    let Cmd::Shadow {
        service,
        to,
        sample,
        duration,
        max_sessions,
        max_buffer,
        stop,
    } = cmd
    else {
        unreachable!("not shadow")
    };
    send(
        &api,
        Command::Shadow {
            service: service.clone(),
            to: to.clone(),
            sample_percent: sample,
            for_ms: duration.map(|d| d.as_millis() as u64),
            max_sessions,
            max_buffer,
            stop,
        },
    )?;
    if stop {
        println!("{service}: shadow stopped");
    } else {
        println!(
            "{service}: {sample}% of new connections now also replayed to {}; clients only ever see the live pool",
            to.unwrap_or_default()
        );
    }
    Ok(())
}
