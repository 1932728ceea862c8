//! Online compaction of the state env (`wraft compact` against a running node).
//!
//! LMDB files never shrink: freed pages are only reused. A stopped node's envs are rewritten
//! by `ops::compact`; a running node's state env is rewritten here, in two steps:
//!
//! 1. a compacting copy from one read transaction, next to `data.mdb` (reads go on from the
//!    live env meanwhile);
//! 2. the swap ([`super::map::GrowingEnv::replace_file`]): once no transaction is live, the
//!    env is closed, the copy renamed over its file and the env opened again.
//!
//! Nothing may write the env between the two: the caller keeps its writers out (the node runs
//! this in its state-machine worker, the only writer, so applies wait for the copy). A write
//! that reaches the env anyway is caught by LMDB's transaction id and the copy is dropped:
//! swapping it in would lose that write.

use std::path::Path;

use super::{Dbs, StateError, StateStore};

/// The copy's file name, next to `data.mdb`; a crash leaves it behind, and the next
/// compaction or start removes it.
pub const COPY_FILE: &str = "data.mdb.compacting";

/// What one online compaction of the state env did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// The env's file before, in bytes.
    pub before: u64,
    /// After, in bytes.
    pub after: u64,
}

impl StateStore {
    /// Rewrites the state env as a compacting copy and swaps it in while the node runs
    /// (see the module docs): the caller keeps the env's writers out until it returns.
    pub fn compact(&self) -> Result<Compaction, StateError> {
        let dir = self.path().to_path_buf();
        let file = dir.join("data.mdb");
        let copy = dir.join(COPY_FILE);
        let before = len(&file)?;
        let copied_at = self.env.with_env(|env| env.info().last_txn_id);
        let swapped = self.copy_to(&copy).and_then(|()| {
            Ok(self.env.replace_file(
                &copy,
                |env| env.info().last_txn_id == copied_at,
                |env| {
                    let mut wtxn = env.write_txn()?;
                    let dbs = Dbs {
                        meta: env.create_database(&mut wtxn, Some("meta"))?,
                        fsms: env.create_database(&mut wtxn, Some("fsms"))?,
                        modules: env.create_database(&mut wtxn, Some("modules"))?,
                        data: env.create_database(&mut wtxn, Some("data"))?,
                    };
                    wtxn.commit()?;
                    *self.tables.write().unwrap_or_else(|p| p.into_inner()) = dbs;
                    Ok(())
                },
            )?)
        });
        match swapped {
            Ok(true) => Ok(Compaction {
                before,
                after: len(&file)?,
            }),
            Ok(false) => {
                remove_copy(&dir)?;
                Err(StateError::Compaction(
                    "the state env was written during the copy (nothing kept the applies out), \
                     so the copy was dropped; nothing changed"
                        .into(),
                ))
            }
            Err(e) => {
                remove_copy(&dir)?;
                Err(e)
            }
        }
    }
}

fn len(file: &Path) -> Result<u64, StateError> {
    Ok(file.metadata().map_err(heed::Error::Io)?.len())
}

/// Removes a compaction's copy from the env directory `dir`, if one is there (a failed or
/// interrupted compaction's).
pub(super) fn remove_copy(dir: &Path) -> Result<(), StateError> {
    crate::disk::remove_if_present(&dir.join(COPY_FILE)).map_err(|e| heed::Error::Io(e).into())
}
