//! The ceilings of every input — durations, counts, sizes — and the
//! shapes names and paths must have. A value past its ceiling is refused
//! with the field and the ceiling named, before anything changes (the README
//! lists them).

use std::time::Duration;

use anyhow::{Result, bail};

/// Any duration a command or the config gives (strategy intervals,
/// deadlines, linger limits, shadow lengths, auto-promote): 30 days.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Steps of one canary.
pub const MAX_STEPS: usize = 100;
/// Replacements of one rolling update.
pub const MAX_REPLACEMENTS: usize = 10_000;
/// Concurrent replays of one shadow.
pub const MAX_SHADOW_SESSIONS: usize = 100_000;
/// Bytes one replay may buffer.
pub const MAX_SHADOW_BUFFER: usize = 64 << 20;
/// A health check's interval; its timeout; rise and fall.
pub const MAX_HEALTH_INTERVAL: Duration = Duration::from_secs(3600);
pub const MAX_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_RISE_FALL: u32 = 100;
/// Idle and grace times of the flow table.
pub const MAX_FLOW_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Service, pool and host names.
pub const MAX_NAME: usize = 128;
/// Paths (health checks, files) and other free text (tokens, URLs).
pub const MAX_TEXT: usize = 4096;

/// A name: 1..=128 of letters, digits, '-', '_', '.'.
pub fn name(field: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || s.len() > MAX_NAME
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("{field}: {s:?} must be 1 to {MAX_NAME} letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// Free text with no control characters (CR, LF, NUL...): what goes into
/// a header, a file name or a log line.
pub fn printable(field: &str, s: &str) -> Result<()> {
    if s.len() > MAX_TEXT {
        bail!("{field}: longer than {MAX_TEXT} bytes");
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        bail!("{field}: {s:?} holds the control character {c:?}");
    }
    Ok(())
}

/// An HTTP request path: '/' then visible ASCII, no spaces.
pub fn http_path(field: &str, s: &str) -> Result<()> {
    if !s.starts_with('/') || s.len() > MAX_TEXT || !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        bail!(
            "{field}: {s:?} must start with '/' and hold only visible ASCII (no spaces or line breaks)"
        );
    }
    Ok(())
}

/// A duration in ms given to a command.
pub fn duration_ms(field: &str, ms: u64) -> Result<()> {
    if ms > MAX_DURATION.as_millis() as u64 {
        bail!(
            "{field}: {} is above the ceiling of {}",
            humantime::format_duration(Duration::from_millis(ms)),
            humantime::format_duration(MAX_DURATION)
        );
    }
    Ok(())
}

pub fn duration(field: &str, d: Duration, max: Duration) -> Result<()> {
    if d > max {
        bail!(
            "{field}: {} is above the ceiling of {}",
            humantime::format_duration(d),
            humantime::format_duration(max)
        );
    }
    Ok(())
}

pub fn count(field: &str, n: usize, max: usize) -> Result<()> {
    if n > max {
        bail!("{field}: {n} is above the ceiling of {max}");
    }
    Ok(())
}
