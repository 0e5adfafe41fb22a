//! Developer entry points: `cargo xtask setup | test | demo | bench`.

mod demo;
mod dist;
mod layers;
mod setup;

use std::process::Command;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Developer tasks for switch")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything the build, tests and demo need (idempotent).
    Setup,
    /// Setup, then every test layer: unit, data-plane (BPF_PROG_TEST_RUN)
    /// and namespace integration tests.
    Test {
        /// Extra arguments for the test runner (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// The self-contained demo in network namespaces.
    Demo(demo::Args),
    /// The release binary with its man page, shell completions, systemd
    /// unit, alert rules and dashboard in target/dist/.
    Dist,
    /// The module graph of switch-user: fails on an import cycle or a layer
    /// importing one above it.
    Layers,
    /// The benchmark harness.
    Bench {
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::run(),
        Cmd::Test { args } => {
            setup::run()?;
            test(&args)
        }
        Cmd::Demo(args) => {
            setup::run()?;
            demo::run(args)
        }
        Cmd::Dist => dist::run(),
        Cmd::Layers => layers::run(),
        Cmd::Bench { args } => {
            setup::run()?;
            // The harness lives in bench/, on the tests crate's labs.
            // The control-plane part runs the real daemon binary.
            cargo(&["build", "--release", "-q", "-p", "switch-user"], &[])?;
            let args = if args.is_empty() {
                vec!["--write".into(), "docs/BENCHMARKS.md".into()]
            } else {
                args
            };
            cargo(
                &[
                    "run",
                    "--release",
                    "-q",
                    "-p",
                    "switch-bench",
                    "--bin",
                    "switch-bench",
                    "--",
                ],
                &args,
            )
        }
    }
}

fn test(args: &[String]) -> Result<()> {
    // The layers, clippy and fmt first: a lint failure is a test failure.
    layers::run()?;
    cargo(&["fmt", "--all", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "-q",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    if setup::have("cargo-nextest") {
        // One process per test, one summary at the end.
        cargo(&["nextest", "run", "--workspace", "--no-fail-fast"], args)
    } else {
        cargo(&["test", "--workspace", "--no-fail-fast"], args)
    }
}

pub fn cargo(base: &[&str], extra: &[String]) -> Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(base)
        .args(extra)
        .envs(setup::tool_env())
        .status()?;
    if !status.success() {
        bail!("cargo {} failed", base.join(" "));
    }
    Ok(())
}
