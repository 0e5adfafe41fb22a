//! Failing loudly: a daemon that lost a part of itself must end, with a
//! clear message and a non-zero status, so the service manager restarts
//! it. Nothing is detached on the way out: the data plane keeps forwarding
//! and the next start adopts it.

use std::{
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

/// The status a panic ends the daemon with (EX_SOFTWARE).
pub(super) const PANIC_STATUS: i32 = 70;

/// Any panic, in any task or thread, ends the process. A panic while the
/// state lock is held poisons it, and every task would then skip its work
/// quietly with the process still up.
pub(super) fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let thread = std::thread::current();
        let msg = format!(
            "switch daemon: a panic in thread {:?}; exiting with status {PANIC_STATUS} so the service manager restarts it (the data plane keeps forwarding and the next start adopts it)",
            thread.name().unwrap_or("unnamed")
        );
        tracing::error!("{msg}");
        eprintln!("{msg}");
        std::process::exit(PANIC_STATUS);
    }));
}

/// Tasks the daemon cannot go on without; one that ends ends the daemon.
pub(super) struct Essential(tokio::task::JoinSet<&'static str>);

impl Essential {
    pub(super) fn new() -> Essential {
        Essential(tokio::task::JoinSet::new())
    }

    pub(super) fn spawn(
        &mut self,
        name: &'static str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.0.spawn(async move {
            task.await;
            name
        });
    }

    /// Waits until one of them ends, and says which as an error.
    pub(super) async fn ended(&mut self) -> anyhow::Error {
        match self.0.join_next().await {
            Some(Ok(name)) => anyhow::anyhow!(
                "the daemon's {name} task ended; exiting so the service manager restarts it"
            ),
            Some(Err(e)) => anyhow::anyhow!(
                "a daemon task failed ({e}); exiting so the service manager restarts it"
            ),
            None => std::future::pending().await,
        }
    }
}

/// A poisoned state lock is the end of this daemon.
pub(super) fn check_lock<T>(m: &Mutex<T>) -> Result<()> {
    if m.is_poisoned() {
        bail!(
            "the daemon's state lock is poisoned (a panic while it was held); exiting so the service manager restarts it"
        );
    }
    Ok(())
}

static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Test-only: `SWITCH_TEST_PANIC=<where>:<ms>` makes the daemon panic at
/// `where` once `ms` have passed since start, to test that it ends and
/// that its successor adopts everything.
pub(super) fn injected_panic_due(place: &str) -> bool {
    let Some(v) = std::env::var_os("SWITCH_TEST_PANIC") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((at, ms)) = v.split_once(':') else {
        return false;
    };
    at == place
        && ms
            .parse::<u64>()
            .is_ok_and(|ms| STARTED.elapsed() >= Duration::from_millis(ms))
}

pub(super) fn mark_start() {
    LazyLock::force(&STARTED);
}
