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
    if let Some(o) = v.as_object_mut() {
        o.remove("clock");
    }
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
    stage_state(path, ctl)?.commit(ctl)
}

/// A new state written and synced under a temporary name. A command makes
/// its state durable this way before it touches the maps, and puts it in
/// place afterwards: a rename needs no new space, so a full or read-only
/// disk refuses the command before anything changed.
pub(crate) struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    /// The controller as staged (to tell whether the real run differs).
    ctl: serde_json::Value,
}

/// The state file's text: the controller, its schema, and the daemon's
/// time line (`clock`, on a single host).
fn state_bytes(ctl: &serde_json::Value) -> Result<Vec<u8>> {
    let mut v = ctl.clone();
    if let Some(o) = v.as_object_mut() {
        o.insert("schema".into(), STATE_SCHEMA.into());
        if let Some(a) = crate::engine::clock::anchor() {
            o.insert("clock".into(), serde_json::to_value(a)?);
        }
    }
    Ok(serde_json::to_vec_pretty(&v)?)
}

/// The time line saved in a state file, if any.
pub(crate) fn read_anchor(bytes: &[u8]) -> Option<crate::engine::clock::Anchor> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    serde_json::from_value(v.get("clock")?.clone()).ok()
}

pub(crate) fn stage_state(path: &Path, ctl: &Controller) -> Result<Staged> {
    let tmp = path.with_extension("json.tmp");
    let value = serde_json::to_value(ctl)?;
    let bytes = state_bytes(&value)?;
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
    }
    Ok(Staged {
        tmp,
        path: path.to_path_buf(),
        ctl: value,
    })
}

impl Staged {
    /// Puts the state in place; `actual` is what the command really left
    /// (written again only if it differs from what was staged).
    pub(crate) fn commit(self, actual: &Controller) -> Result<()> {
        if serde_json::to_value(actual)? != self.ctl {
            return stage_state(&self.path, actual)?.commit(actual);
        }
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("cannot rename {}", self.tmp.display()))?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    pub(crate) fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

pub(crate) fn persist(s: &Shared) -> Result<()> {
    write_state(&s.state_file, &s.ctl)
}

pub use crate::engine::clock::now_ms;
