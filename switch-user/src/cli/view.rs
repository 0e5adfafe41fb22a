//! Commands that show: `status`, `watch`, `history`.

use super::*;

pub(super) fn run(api: PathBuf, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Status { service, json } => {
            let r = send(&api, Command::Status { service })?;
            let st = r.status.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
                if let Some(reasons) = r.reasons {
                    let line: Vec<String> =
                        reasons.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!("packets by verdict: {}", line.join(" "));
                }
            }
            Ok(())
        }
        Cmd::Watch {
            service,
            every,
            count,
        } => {
            let mut n = 0;
            loop {
                let r = send(
                    &api,
                    Command::Status {
                        service: Some(service.clone()),
                    },
                )?;
                let st = r.status.unwrap_or_default();
                // Clear the screen only on a terminal, so the view can be logged.
                if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    print!("\x1b[2J\x1b[H");
                }
                println!(
                    "{}",
                    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                );
                print_status(&st);
                n += 1;
                if count != 0 && n >= count {
                    return Ok(());
                }
                std::thread::sleep(every);
            }
        }
        Cmd::History { service, json } => {
            let r = send(&api, Command::History { service })?;
            let h = r.history.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&h)?);
            } else {
                for e in h {
                    let t = humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms),
                    );
                    let outcome = match (e.outcome, e.ok) {
                        (crate::model::api::Outcome::Refused, _) => "REFUSED",
                        (_, true) => "ok     ",
                        (_, false) => "FAILED ",
                    };
                    // What the daemon did by itself (steps, health) is its own.
                    let actor = e
                        .actor
                        .as_ref()
                        .map_or_else(|| "switch (daemon)".to_string(), |a| a.to_string());
                    println!("{t}  {outcome}  {actor:<32}  {}", e.what);
                }
            }
            Ok(())
        }
        // `cli::run` sends only this group's commands here.
        _ => unreachable!("not a view command"),
    }
}
