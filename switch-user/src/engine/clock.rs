//! The daemon's time: the one place clocks are read. The engine itself
//! takes time as a parameter (tests drive it with a fake clock); its callers
//! read it here.
//!
//! A single host runs on **engine time**: the kernel's boot-time clock
//! (monotonic, counts suspend) plus an offset. A step of the wall clock
//! (NTP, an operator) moves no deadline — no canary step fires early, no
//! linger limit stalls. The offset is persisted with the state (the
//! `Anchor`), so a restart on the same boot continues the same time line;
//! after a reboot the time line continues from where it was saved, plus
//! the downtime as the wall clock tells it. It starts equal to the wall
//! clock, so history timestamps read as dates.
//!
//! A fleet runs on the wall clock: its hosts hand deadlines and reports to
//! each other, and only an NTP-synchronised clock is shared between them.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// What the clocks say at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readings {
    /// CLOCK_BOOTTIME, ms.
    pub boot_ms: u64,
    /// The wall clock, ms since the Unix epoch.
    pub wall_ms: u64,
}

/// The time line as saved with the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// `/proc/sys/kernel/random/boot_id` when saved.
    pub boot_id: String,
    /// Engine time = boot time + this.
    pub offset_ms: i64,
    /// Engine time and wall time when saved (to carry on after a reboot).
    pub engine_ms: u64,
    pub wall_ms: u64,
}

/// Engine time from a boot-time clock and an offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clock {
    boot_id: String,
    offset_ms: i64,
}

impl Clock {
    /// Continues the saved time line: the same offset on the same boot; on
    /// another boot, the saved engine time plus the downtime the wall clock
    /// gives (never negative); with nothing saved, the wall clock now.
    pub fn start(saved: Option<&Anchor>, boot_id: &str, r: Readings) -> Clock {
        let offset_ms = match saved {
            Some(a) if a.boot_id == boot_id => a.offset_ms,
            Some(a) => {
                let down = r.wall_ms.saturating_sub(a.wall_ms);
                a.engine_ms.saturating_add(down) as i64 - r.boot_ms as i64
            }
            None => r.wall_ms as i64 - r.boot_ms as i64,
        };
        Clock {
            boot_id: boot_id.to_string(),
            offset_ms,
        }
    }

    pub fn now(&self, r: Readings) -> u64 {
        (r.boot_ms as i64).saturating_add(self.offset_ms).max(0) as u64
    }

    pub fn anchor(&self, r: Readings) -> Anchor {
        Anchor {
            boot_id: self.boot_id.clone(),
            offset_ms: self.offset_ms,
            engine_ms: self.now(r),
            wall_ms: r.wall_ms,
        }
    }
}

/// The clocks now.
pub fn readings() -> Readings {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Readings {
        boot_ms: ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000,
        wall_ms: wall_ms(),
    }
}

pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

static ENGINE: OnceLock<Clock> = OnceLock::new();

/// From now on `now_ms` is engine time (single host; once per process).
pub fn use_engine_time(c: Clock) {
    let _ = ENGINE.set(c);
}

/// The time line to save with the state (None: the wall clock's).
pub fn anchor() -> Option<Anchor> {
    ENGINE.get().map(|c| c.anchor(readings()))
}

/// Milliseconds on the daemon's time line: engine time on a single host,
/// the wall clock in a fleet (and before the daemon chose).
pub fn now_ms() -> u64 {
    match ENGINE.get() {
        Some(c) => c.now(readings()),
        None => wall_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    #[test]
    fn a_wall_clock_step_moves_no_engine_time_and_a_restart_continues_it() {
        let r0 = Readings {
            boot_ms: 10_000,
            wall_ms: 1_700_000_000_000,
        };
        let c = Clock::start(None, "boot-a", r0);
        assert_eq!(c.now(r0), r0.wall_ms);
        // 30 s later the wall clock is stepped an hour forward (or back):
        // engine time moved 30 s.
        for step in [HOUR as i64, -(HOUR as i64)] {
            let r = Readings {
                boot_ms: 40_000,
                wall_ms: (r0.wall_ms as i64 + 30_000 + step) as u64,
            };
            assert_eq!(c.now(r), r0.wall_ms + 30_000);
            // A restart on the same boot continues the same line.
            let again = Clock::start(Some(&c.anchor(r)), "boot-a", r);
            assert_eq!(again.now(r), r0.wall_ms + 30_000);
        }
    }

    #[test]
    fn after_a_reboot_time_goes_on_from_the_saved_point_plus_the_downtime() {
        let r0 = Readings {
            boot_ms: 50_000,
            wall_ms: 1_700_000_000_000,
        };
        let c = Clock::start(None, "boot-a", r0);
        let saved = c.anchor(r0);
        // Down for 2 minutes; the new boot's clock starts near zero.
        let r1 = Readings {
            boot_ms: 5_000,
            wall_ms: r0.wall_ms + 120_000,
        };
        let c1 = Clock::start(Some(&saved), "boot-b", r1);
        assert_eq!(c1.now(r1), saved.engine_ms + 120_000);
        // A wall clock set back before the save never turns time back.
        let r2 = Readings {
            boot_ms: 5_000,
            wall_ms: r0.wall_ms - HOUR,
        };
        assert_eq!(
            Clock::start(Some(&saved), "boot-b", r2).now(r2),
            saved.engine_ms
        );
    }
}
