//! `state.json` and the daemon's clock: what survives a restart.

use super::*;

/// Where `switch fleet leave` is remembered.
pub(super) fn left_file(state_dir: &Path) -> PathBuf {
    state_dir.join("left")
}

/// The schema of `state.json`. 1: the controller alone (no `schema` key);
/// 2: with `schema`, lingering backends. A newer daemon reads older files.
pub const STATE_SCHEMA: u32 = 2;

/// Reads a state file of this schema or an older one.
pub fn read_state(bytes: &[u8]) -> Result<Controller> {
    let mut v: serde_json::Value =
        serde_json::from_slice(bytes).context("not a switch state file (bad JSON)")?;
    // Schema 1 had no `schema` key.
    let schema = match v.as_object_mut().and_then(|o| o.remove("schema")) {
        None => 1,
        Some(s) => s
            .as_u64()
            .ok_or_else(|| anyhow!("`schema` is not a number"))?,
    };
    if schema > STATE_SCHEMA as u64 {
        anyhow::bail!(
            "written by a newer switch (schema {schema}; this daemon reads up to {STATE_SCHEMA}): upgrade the daemon or move the file away"
        );
    }
    serde_json::from_value(v).context("state file is corrupt")
}

/// Writes the state atomically and durably: a temporary file, fsync, rename
/// over the old one, fsync of the directory (so the rename survives a crash).
pub fn write_state(path: &Path, ctl: &Controller) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut v = serde_json::to_value(ctl)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("schema".into(), STATE_SCHEMA.into());
    }
    let bytes = serde_json::to_vec_pretty(&v)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub(crate) fn persist(s: &Shared) -> Result<()> {
    write_state(&s.state_file, &s.ctl)
}

pub use crate::engine::clock::now_ms;
