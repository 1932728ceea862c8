//! `wraft compact`: LMDB files never shrink (freed pages are only reused), so a stopped
//! node's envs are rewritten as compacting copies and swapped in by rename.

use std::path::Path;

use super::backup::swap_in;
use super::{DataDirLock, OpsError, at};
use crate::raft::LogStore;
use crate::state::StateStore;

/// One env's size before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    /// `raft` or `state`.
    pub env: &'static str,
    /// Bytes before.
    pub before: u64,
    /// Bytes after.
    pub after: u64,
}

/// Compacts `<data_dir>/raft` and `<data_dir>/state` (the node must be stopped). Each copy
/// is synced before it replaces the original, so a crash leaves either file intact.
pub fn compact(data_dir: &Path) -> Result<Vec<Compacted>, OpsError> {
    let _lock = DataDirLock::acquire(data_dir).map_err(OpsError::Locked)?;
    let mut done = Vec::new();
    for env in ["raft", "state"] {
        let dir = data_dir.join(env);
        let file = dir.join("data.mdb");
        if !file.exists() {
            continue;
        }
        let before = file.metadata().map_err(at(&file))?.len();
        let copy = dir.join(crate::state::COPY_FILE);
        if env == "raft" {
            let log = LogStore::open_read_only(data_dir).map_err(OpsError::Raft)?;
            log.copy_to(&copy).map_err(at(&copy))?;
        } else {
            let store = StateStore::open_read_only(&dir, false)?;
            store.copy_to(&copy)?;
        }
        // The env handles are closed here, before the swap.
        swap_in(&copy, &file)?;
        if env == "state" {
            crate::state::unflushed::replaced(&dir).map_err(at(&dir))?;
        }
        let after = file.metadata().map_err(at(&file))?.len();
        done.push(Compacted { env, before, after });
    }
    if done.is_empty() {
        return Err(OpsError::Invalid(format!(
            "{} is not a wraft data directory (no raft/ or state/)",
            data_dir.display()
        )));
    }
    Ok(done)
}
