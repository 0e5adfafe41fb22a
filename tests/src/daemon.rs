//! Running the real `switch` binary (daemon and CLI) in the lab.

use std::{
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::lab::Lab;

/// The `switch` binary next to the test executables (target/<profile>/switch).
pub fn switch_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let p = dir.join("switch");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "the switch binary is not built: run `cargo build -p switch-user` (cargo xtask test does)"
    )
}

/// A daemon in the lab's switch namespace with its own pins, state and API
/// socket; everything is removed on drop, the pins last.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub pins: PathBuf,
    pub api: PathBuf,
    pub config: PathBuf,
    /// Extra environment for the daemon process (set before `spawn`).
    pub env: Vec<(String, String)>,
    /// A descriptor limit (soft and hard) for the daemon (`ulimit -n`).
    pub nofile: Option<u64>,
    sw: String,
    bin: PathBuf,
}

impl Daemon {
    /// Writes `services` (TOML `[[service]]` tables) into a config and starts
    /// the daemon.
    pub fn start(lab: &Lab, tag: &str, services: &str) -> Result<Daemon> {
        Self::start_with(lab, tag, "", services)
    }

    /// The same, with extra `[daemon]` settings (TOML lines).
    pub fn start_with(lab: &Lab, tag: &str, daemon: &str, services: &str) -> Result<Daemon> {
        Self::start_on(lab, tag, &["sw0", "sw1"], daemon, services)
    }

    /// The same, attached to `interfaces` of the switch host.
    pub fn start_on(
        lab: &Lab,
        tag: &str,
        interfaces: &[&str],
        daemon: &str,
        services: &str,
    ) -> Result<Daemon> {
        Self::start_in(&lab.sw, tag, interfaces, daemon, services)
    }

    /// A daemon in namespace `ns`; `rest` follows the `[daemon]` table
    /// (`[[service]]` tables, then e.g. `[fleet]`).
    pub fn start_in(
        ns: &crate::Netns,
        tag: &str,
        interfaces: &[&str],
        daemon: &str,
        rest: &str,
    ) -> Result<Daemon> {
        let mut d = Self::prepare(ns, tag, interfaces, daemon, rest)?;
        d.spawn()?;
        Ok(d)
    }

    /// The same, without starting it.
    pub fn prepare(
        ns: &crate::Netns,
        tag: &str,
        interfaces: &[&str],
        daemon: &str,
        services: &str,
    ) -> Result<Daemon> {
        let id = format!("{tag}-{}-{}", std::process::id(), ns.name);
        let dir = std::env::temp_dir().join(format!("switch-{id}"));
        std::fs::create_dir_all(&dir)?;
        let pins = PathBuf::from(format!("/sys/fs/bpf/switch-{id}"));
        let api = dir.join("switch.sock");
        let config = dir.join("switch.toml");
        std::fs::write(
            &config,
            format!(
                "[daemon]\ninterfaces = [{}]\napi = \"{}\"\npin_dir = \"{}\"\nstate_dir = \"{}\"\n{daemon}\n\n{services}",
                interfaces
                    .iter()
                    .map(|i| format!("\"{i}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                api.display(),
                pins.display(),
                dir.join("state").display()
            ),
        )?;
        Ok(Daemon {
            child: None,
            dir,
            pins,
            api,
            config,
            env: vec![],
            nofile: None,
            sw: ns.name.clone(),
            bin: switch_bin()?,
        })
    }

    /// Starts (or restarts) the process and waits for its API.
    pub fn spawn(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(&self.api);
        // nsenter, not `ip netns exec`, which remounts /sys and so hides the
        // host's bpffs with the pins.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.sw))
            .arg(&self.bin)
            .args(["daemon", "--config"])
            .arg(&self.config)
            .envs(self.env.iter().cloned());
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt;
            unsafe {
                cmd.pre_exec(move || {
                    let l = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().context("starting switch daemon")?;
        self.child = Some(child);
        let t = Instant::now();
        while !self.api.exists() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("daemon exited: {status}");
            }
            if t.elapsed() > Duration::from_secs(20) {
                bail!("daemon API did not appear");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Every thread of the daemon with its effective and permitted
    /// capabilities (CapEff, CapPrm of /proc/PID/task/TID/status):
    /// capabilities are per thread.
    pub fn thread_caps(&self) -> Result<Vec<(String, u64, u64)>> {
        let pid = self.child.as_ref().context("daemon not running")?.id();
        let mut out = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let status = std::fs::read_to_string(task?.path().join("status"))?;
            let field = |name: &str| -> Result<u64> {
                let line = status
                    .lines()
                    .find(|l| l.starts_with(name))
                    .with_context(|| format!("no {name}"))?;
                Ok(u64::from_str_radix(
                    line.split_whitespace().nth(1).unwrap_or(""),
                    16,
                )?)
            };
            let name = status
                .lines()
                .find_map(|l| l.strip_prefix("Name:"))
                .unwrap_or("")
                .trim()
                .to_string();
            out.push((name, field("CapEff:")?, field("CapPrm:")?));
        }
        Ok(out)
    }

    /// Resident memory of the daemon, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.child.as_ref().context("daemon not running")?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS")?;
        Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
    }

    /// SIGTERM, and wait for the daemon to exit.
    pub fn terminate(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let status = c.wait()?;
            if !status.success() {
                bail!("daemon exited with {status} on SIGTERM");
            }
        }
        Ok(())
    }

    /// SIGKILL: no cleanup of any kind runs in the daemon.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the CLI against this daemon: (success, stdout + stderr).
    pub fn cli(&self, args: &[&str]) -> Result<(bool, String)> {
        let out = Command::new(&self.bin)
            .arg("--api")
            .arg(&self.api)
            .args(args)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// Starts the CLI without waiting (stdout and stderr piped).
    pub fn cli_spawn(&self, args: &[&str]) -> Result<Child> {
        Ok(Command::new(&self.bin)
            .arg("--api")
            .arg(&self.api)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?)
    }

    /// `status --json` of one service, parsed.
    pub fn status(&self, service: &str) -> Result<serde_json::Value> {
        let s = self.ok(&["status", service, "--json"])?;
        Ok(serde_json::from_str::<serde_json::Value>(&s)?[0].clone())
    }

    /// Polls `status` until `f` holds or `secs` pass.
    pub fn wait_for(
        &self,
        service: &str,
        secs: u64,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let t = Instant::now();
        loop {
            let st = self.status(service)?;
            if f(&st) {
                return Ok(st);
            }
            if t.elapsed() > Duration::from_secs(secs) {
                bail!("condition not met in {secs}s; status: {st}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn ok(&self, args: &[&str]) -> Result<String> {
        match self.cli(args)? {
            (true, s) => Ok(s),
            (false, s) => bail!("switch {}: {s}", args.join(" ")),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        let _ = switch_user::dataplane::detach(&self.pins);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
