//! `switch backend add|remove|drain|undrain`.

use super::*;

pub(super) fn run(api: PathBuf, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Backend {
            action,
            service,
            pool,
            addr,
            weight,
            now,
            linger_limit,
        } => {
            let action = match action {
                Action::Add => BackendAction::Add,
                Action::Remove => BackendAction::Remove,
                Action::Drain => BackendAction::Drain,
                Action::Undrain => BackendAction::Undrain,
            };
            send(
                &api,
                Command::Backend {
                    service,
                    pool,
                    addr,
                    action,
                    weight,
                    now,
                    linger_limit_ms: linger_limit.map(|d| d.as_millis() as u64),
                },
            )?;
            println!("done");
            Ok(())
        }
        // `cli::run` sends only this group's commands here.
        _ => unreachable!("not a backend command"),
    }
}
