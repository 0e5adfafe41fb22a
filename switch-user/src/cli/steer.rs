//! Commands that steer the running strategy: `pause`, `resume`, `promote`, `abort`, `rollback`.

use super::*;

pub(super) fn run(api: PathBuf, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Pause { service } => simple(
            &api,
            Command::Pause {
                service: service.clone(),
            },
            &service,
            "paused",
        ),
        Cmd::Resume { service } => simple(
            &api,
            Command::Resume {
                service: service.clone(),
            },
            &service,
            "resumed",
        ),
        Cmd::Promote { service } => simple(
            &api,
            Command::Promote {
                service: service.clone(),
            },
            &service,
            "promoted",
        ),
        Cmd::Abort { service } => simple(
            &api,
            Command::Abort {
                service: service.clone(),
            },
            &service,
            "aborted",
        ),
        Cmd::Rollback { service } => simple(
            &api,
            Command::Rollback {
                service: service.clone(),
            },
            &service,
            "rolled back",
        ),
        // `cli::run` sends only this group's commands here.
        _ => unreachable!("not a steer command"),
    }
}
