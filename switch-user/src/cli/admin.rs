//! The daemon and the host: `daemon`, `apply`, `fleet`, `detach`, `completions`, `man`.

use super::*;

pub(super) fn run(api: PathBuf, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Daemon { config } => {
            daemon::run(&config, std::env::var_os("SWITCH_API").map(PathBuf::from))
        }
        Cmd::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow!("cannot read {}: {e}", file.display()))?;
            let c = ConfigFile::parse(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            // The unit's ExecReload runs this: the audit trail says so.
            let r = crate::client::call_via(
                &api,
                Command::Apply {
                    services: c.services,
                },
                "config reload",
            )?;
            if !r.ok {
                bail!("{}", r.error.unwrap_or_else(|| "refused".into()));
            }
            println!("applied {}", file.display());
            Ok(())
        }
        Cmd::Fleet { action } => {
            let join = matches!(action, FleetAction::Join);
            send(&api, Command::Membership { join })?;
            println!(
                "{}",
                if join {
                    "joined: this host announces its VIPs again"
                } else {
                    "left: VIPs withdrawn; established flows keep being forwarded here"
                }
            );
            Ok(())
        }
        Cmd::Detach { pin_dir, state_dir } => {
            // A running daemon detaches its own data plane (admin level) and
            // ends; without one, the pins are removed here (root).
            if std::os::unix::net::UnixStream::connect(&api).is_ok() {
                send(&api, Command::Detach)?;
                println!(
                    "detached: the daemon withdrew its VIPs, removed its program and pins, and stopped"
                );
                return Ok(());
            }
            if crate::adapters::bgp::stop(&state_dir)? {
                println!("stopped the BGP speaker: VIPs withdrawn");
            }
            let removed = dataplane::detach(&pin_dir)?;
            if removed.is_empty() {
                println!("nothing pinned under {}", pin_dir.display());
            } else {
                println!("removed from {}: {}", pin_dir.display(), removed.join(", "));
            }
            Ok(())
        }
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "switch", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            Ok(())
        }
        // `cli::run` sends only this group's commands here.
        _ => unreachable!("not a admin command"),
    }
}
