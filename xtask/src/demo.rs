//! `cargo xtask demo`: builds everything and runs the namespace demo
//! (`bench/src/bin/switch-demo.rs`).

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Arguments for the demo (see `--help`): --phase-secs, --clients, --chart.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    crate::cargo(
        &[
            "build",
            "--release",
            "-q",
            "-p",
            "switch-user",
            "-p",
            "switch-bench",
            "--bins",
        ],
        &[],
    )?;
    let status = std::process::Command::new("target/release/switch-demo")
        .args(&args.args)
        .status()?;
    if !status.success() {
        anyhow::bail!("demo failed");
    }
    Ok(())
}
