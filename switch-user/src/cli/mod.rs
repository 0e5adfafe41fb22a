//! `switch`'s command line: one file per group of commands, the
//! arguments in `args`, the tables in `print`. Every command becomes one
//! `model::api::Command` sent to the daemon (`client::call`); its answer is
//! printed, or its refusal as one line and a non-zero exit.

mod admin;
mod args;
mod backend;
mod deploy;
mod print;
mod steer;
mod view;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::{Result, anyhow, bail};
use clap::{Parser, Subcommand};
use std::time::Duration;

use crate::{
    adapters::dataplane,
    daemon,
    engine::strategy::{Gates, NoData, PromGate},
    model::api::{BackendAction, Command, Response, ServiceStatus},
    model::config::ConfigFile,
};

use args::*;
use print::*;

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Daemon { .. }) {
        init_log();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr through `tracing`; `RUST_LOG` chooses what (default info).
fn init_log() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn simple(api: &std::path::Path, cmd: Command, service: &str, done: &str) -> Result<()> {
    send(api, cmd)?;
    println!("{service}: {done}");
    Ok(())
}

fn send(api: &std::path::Path, cmd: Command) -> Result<Response> {
    let r = crate::client::call(api, cmd)?;
    if !r.ok {
        bail!("{}", r.error.unwrap_or_else(|| "refused".into()));
    }
    Ok(r)
}

fn run(cli: Cli) -> Result<()> {
    let api = cli.api;
    match cli.cmd {
        c @ (Cmd::Weights { .. }
        | Cmd::Flip { .. }
        | Cmd::Canary { .. }
        | Cmd::Rolling { .. }
        | Cmd::Shadow { .. }) => deploy::run(api, c),
        c @ (Cmd::Pause { .. }
        | Cmd::Resume { .. }
        | Cmd::Promote { .. }
        | Cmd::Abort { .. }
        | Cmd::Rollback { .. }) => steer::run(api, c),
        c @ (Cmd::Status { .. } | Cmd::Watch { .. } | Cmd::History { .. }) => view::run(api, c),
        c @ Cmd::Backend { .. } => backend::run(api, c),
        c @ (Cmd::Daemon { .. }
        | Cmd::Apply { .. }
        | Cmd::Fleet { .. }
        | Cmd::Detach { .. }
        | Cmd::Completions { .. }
        | Cmd::Man) => admin::run(api, c),
    }
}
