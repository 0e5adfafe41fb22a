//! `cargo xtask setup`: idempotent install of every prerequisite. Each step
//! checks first and only installs what is missing, so a second run takes
//! seconds. What cannot be installed stops with one sentence that says what
//! is missing and how to fix it.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context, Result, bail};

/// Debian packages: LLVM 22 for bpf-linker (nightly's LLVM major), and the
/// real clients and servers the tests and demo use.
const APT: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "libxml2-dev",
    "iproute2",
    "ethtool",
    "nginx-light",
    "libnginx-mod-stream",
    "curl",
    "wrk",
    "nftables",
    "haproxy",
    "fonts-dejavu-core",
    "tcpdump",
    // ping: VIPs answer echo requests.
    "iputils-ping",
    // openssl: the tests' certificate authorities (etcd over mutual TLS).
    "openssl",
    // A real Prometheus (and promtool) for the canary-gate and alert-rule tests.
    "prometheus",
    // Fleet mode: a real etcd for the tests (and etcdctl), and protoc with
    // the well-known types for the etcd client's generated gRPC code.
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
    // BGP: BIRD 2 announces a fleet's VIPs, and plays the router in tests.
    "bird2",
];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> Result<()> {
    let t = Instant::now();
    preflight()?;
    apt()?;
    nightly()?;
    bpf_linker()?;
    bpffs()?;
    eprintln!("setup: ready ({:.1}s)", t.elapsed().as_secs_f64());
    Ok(())
}

fn preflight() -> Result<()> {
    if unsafe { libc_geteuid() } != 0 {
        bail!(
            "switch needs root (BPF, XDP and network namespaces): run this as root, e.g. `sudo -E cargo xtask ...`"
        );
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if (major, minor) < (5, 18) {
        bail!(
            "kernel {} is too old: switch needs Linux 5.18 or newer (XDP devmap hash, bpf_link, BPF_PROG_TEST_RUN for XDP)",
            release.trim()
        );
    }
    if !have("apt-get") {
        bail!(
            "apt-get not found: setup installs Debian packages; on another distribution install {} by hand",
            APT.join(" ")
        );
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub fn have(tool: &str) -> bool {
    which(tool).is_some()
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.push(cargo_bin());
    dirs.into_iter().map(|d| d.join(tool)).find(|p| p.is_file())
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
        .join("bin")
}

/// PATH with cargo's bin directory, so bpf-linker is found by the build.
pub fn tool_env() -> Vec<(String, String)> {
    let path = std::env::var("PATH").unwrap_or_default();
    let bin = cargo_bin();
    let mut v = vec![];
    if !path.split(':').any(|d| bin == std::path::Path::new(d)) {
        v.push(("PATH".into(), format!("{}:{path}", bin.display())));
    }
    v
}

fn sh(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = APT.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    sh(
        Command::new("apt-get").args(["update", "-q"]),
        "apt-get update (is the Debian mirror reachable?)",
    )?;
    sh(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )?;
    // The demo and tests start their own nginx instances; the packaged
    // service must not hold port 80 on the host.
    // Same for Prometheus and etcd: the tests start their own.
    for unit in [
        "nginx",
        "prometheus",
        "prometheus-node-exporter",
        "etcd",
        "bird",
    ] {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", unit])
            .output();
    }
    Ok(())
}

fn nightly() -> Result<()> {
    if !have("rustup") {
        bail!(
            "rustup not found: the eBPF crate needs a nightly toolchain with rust-src; install rustup from your distribution or rustup.rs"
        );
    }
    let list = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()?;
    if !String::from_utf8_lossy(&list.stdout)
        .lines()
        .any(|l| l.starts_with("nightly"))
    {
        eprintln!("setup: installing the nightly toolchain");
        sh(
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
            "rustup toolchain install nightly",
        )?;
    }
    let comps = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()?;
    if !String::from_utf8_lossy(&comps.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        eprintln!("setup: adding rust-src to nightly");
        sh(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
            "rustup component add rust-src",
        )?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    if let Some(p) = which("bpf-linker") {
        let out = Command::new(&p).arg("--version").output();
        if out.is_ok_and(|o| o.status.success()) {
            return Ok(());
        }
    }
    eprintln!("setup: building bpf-linker against LLVM 22 (about 2 minutes)");
    let path = format!(
        "{LLVM_PREFIX}/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    sh(
        Command::new("cargo")
            .args([
                "+stable",
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("PATH", path),
        "cargo install bpf-linker",
    )
}

fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    eprintln!("setup: mounting bpffs on /sys/fs/bpf");
    std::fs::create_dir_all("/sys/fs/bpf").ok();
    sh(
        Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]),
        "mount -t bpf bpf /sys/fs/bpf",
    )
}
