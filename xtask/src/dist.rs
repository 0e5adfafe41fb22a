//! `cargo xtask dist`: the release binary and everything the packaging
//! installs beside it, generated from the sources (man page and shell
//! completions from the clap definitions), in `target/dist/`.
//! `packaging/install.sh` installs that tree.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

pub fn run() -> Result<()> {
    crate::cargo(&["build", "--release", "-p", "switch-user"], &[])?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .context("the workspace root")?;
    let bin = root.join("target/release/switch");
    let dist = root.join("target/dist");
    let _ = std::fs::remove_dir_all(&dist);
    for d in [
        "bin",
        "man/man1",
        "completions",
        "systemd",
        "prometheus",
        "grafana",
    ] {
        std::fs::create_dir_all(dist.join(d))?;
    }
    std::fs::copy(&bin, dist.join("bin/switch")).context("copying the binary")?;
    write(&dist.join("man/man1/switch.1"), &output(&bin, &["man"])?)?;
    for (shell, file) in [
        ("bash", "switch.bash"),
        ("zsh", "_switch"),
        ("fish", "switch.fish"),
    ] {
        write(
            &dist.join("completions").join(file),
            &output(&bin, &["completions", shell])?,
        )?;
    }
    for (from, to) in [
        ("packaging/switch.service", "systemd/switch.service"),
        (
            "packaging/switch-alerts.yml",
            "prometheus/switch-alerts.yml",
        ),
        ("packaging/grafana-dashboard.json", "grafana/switch.json"),
        ("packaging/install.sh", "install.sh"),
    ] {
        std::fs::copy(root.join(from), dist.join(to)).with_context(|| format!("copying {from}"))?;
    }
    eprintln!(
        "dist: {} (install with: sudo {}/install.sh)",
        dist.display(),
        dist.display()
    );
    Ok(())
}

fn output(bin: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(bin).args(args).output()?;
    if !out.status.success() {
        bail!("switch {} failed", args.join(" "));
    }
    Ok(out.stdout)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
