//! `cargo xtask demo`: builds everything and runs the namespace demo
//! (`tests/src/bin/switch-demo.rs`).

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    crate::cargo(
        &[
            "build",
            "--release",
            "-q",
            "-p",
            "switch-user",
            "-p",
            "switch-tests",
            "--bins",
        ],
        &[],
    )?;
    let status = std::process::Command::new("target/release/switch-demo").status()?;
    if !status.success() {
        anyhow::bail!("demo failed");
    }
    Ok(())
}
