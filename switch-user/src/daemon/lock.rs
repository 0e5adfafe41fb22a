//! One daemon per state directory and per pin directory: a second one
//! started on the same state would delete the live API socket and write
//! the same maps.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
};

use anyhow::{Context, Result, bail};

/// Holds an exclusive lock on `dir` (the directory itself: the pin
/// directory is on bpffs, where no lock file can be made) for as long as
/// the returned file is open; refuses, naming the holder, when another
/// process has it.
pub(super) fn hold(dir: &Path, what: &str) -> Result<File> {
    let f = File::open(dir).with_context(|| format!("cannot open {what} {}", dir.display()))?;
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(f);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(err).with_context(|| format!("cannot lock {what} {}", dir.display()));
    }
    let holder = f
        .metadata()
        .ok()
        .and_then(|m| holder(m.ino()))
        .map(|pid| format!(" (pid {pid})"))
        .unwrap_or_default();
    bail!(
        "{what} {} is in use by another switch daemon{holder}: stop it first, or give this one its own {what}",
        dir.display()
    )
}

/// The process holding a `flock` on inode `ino`, from /proc/locks
/// (`1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF`).
fn holder(ino: u64) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        let (kind, pid, id) = (w.get(1)?, w.get(4)?, w.get(5)?);
        let lock_ino: u64 = id.rsplit(':').next()?.parse().ok()?;
        (*kind == "FLOCK" && lock_ino == ino)
            .then(|| pid.parse().ok())
            .flatten()
    })
}
