//! Online compaction of the state env (`wraft compact` against a running node).
//!
//! LMDB files never shrink: freed pages are only reused. A stopped node's envs are rewritten
//! by `ops::compact`; a running node's state env is rewritten here, in two steps:
//!
//! 1. a compacting copy from one read transaction, next to `data.mdb` (reads go on from the
//!    live env meanwhile);
//! 2. the swap ([`super::map::GrowingEnv::replace_file`]): once no transaction is live, the
//!    env is closed, the copy renamed over its file and the env opened again. New reads do
//!    not queue behind the swap while it waits; if transactions stay live for
//!    [`SWAP_PATIENCE`] (a backup's or a snapshot build's copy), the copy is dropped.
//!
//! Nothing may write the env between the two: the caller keeps its writers out (the node runs
//! this in its state-machine worker, the only writer, so applies wait for the copy). A write
//! that reaches the env anyway is caught by LMDB's transaction id and the copy is dropped:
//! swapping it in would lose that write.

use std::path::Path;
use std::time::Duration;

use super::map::Replaced;
use super::{Dbs, StateError, StateStore};

/// How long the swap waits for the read transactions live after the copy (queries end in
/// milliseconds; a backup's or a snapshot build's copy of a large env takes seconds) before
/// it drops the copy. The node's applies wait this long at most, on top of the copy.
pub const SWAP_PATIENCE: Duration = Duration::from_secs(10);

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
        self.compact_within(SWAP_PATIENCE)
    }

    /// [`StateStore::compact`], waiting at most `patience` for the read transactions live
    /// when the copy is done (see [`SWAP_PATIENCE`]).
    pub fn compact_within(&self, patience: Duration) -> Result<Compaction, StateError> {
        let dir = self.path().to_path_buf();
        let file = dir.join("data.mdb");
        let copy = dir.join(COPY_FILE);
        let before = len(&file)?;
        let copied_at = self.env.with_env(|env| env.info().last_txn_id);
        let swapped = self.copy_to(&copy).and_then(|()| {
            Ok(self.env.replace_file(
                &copy,
                patience,
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
        let refused = match swapped {
            Ok(Replaced::Done) => {
                return Ok(Compaction {
                    before,
                    after: len(&file)?,
                });
            }
            Ok(Replaced::WrittenSince) => {
                "the state env was written during the copy (nothing kept the applies out), \
                 so the copy was dropped; nothing changed"
                    .to_string()
            }
            Ok(Replaced::ReadersStayed) => format!(
                "read transactions stayed open for {} s after the copy (a backup or a snapshot \
                 build copying the env?), so the copy was dropped; nothing changed: try again \
                 once it has finished",
                patience.as_secs_f64()
            ),
            Err(e) => {
                remove_copy(&dir)?;
                return Err(e);
            }
        };
        remove_copy(&dir)?;
        Err(StateError::Compaction(refused))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc;

    use super::*;
    use crate::runtime::FsmRuntime;

    fn store(dir: &Path) -> StateStore {
        StateStore::open(dir, Arc::new(FsmRuntime::new().expect("runtime"))).expect("open")
    }

    #[test]
    fn a_swap_gives_up_on_a_long_reader_and_never_makes_new_readers_wait() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(dir.path());
        let file = store.path().join("data.mdb");
        let before = std::fs::read(&file).expect("env file");

        // A reader that outlives the patience: nothing is replaced, the copy is gone. (A swap
        // that waited for it would not answer: after 20 s the reader ends and the test fails.)
        let long = store.env.read_txn().expect("read");
        let (answer, answered) = mpsc::channel();
        let refused = std::thread::scope(|s| {
            let swap = s.spawn(|| {
                let r = store.compact_within(Duration::from_millis(50));
                answer.send(()).expect("send");
                r
            });
            let waited = answered.recv_timeout(Duration::from_secs(20));
            drop(long);
            assert!(waited.is_ok(), "the swap waited past its patience");
            swap.join().expect("compaction thread")
        });
        match refused {
            Err(StateError::Compaction(why)) => {
                assert!(why.contains("read transactions stayed open"), "{why}");
            }
            other => panic!("replaced under a live reader: {other:?}"),
        }
        assert_eq!(std::fs::read(&file).expect("env file"), before);
        assert!(!store.path().join(COPY_FILE).exists());

        // While a swap waits for a reader, a new reader gets in at once (a swap that
        // queued new readers behind it would wait for this one, which waits for the signal
        // that the new reader got in: the test would time out).
        let long = store.env.read_txn().expect("read");
        let (got_in, signal) = mpsc::channel();
        let done = std::thread::scope(|s| {
            let swap = s.spawn(|| store.compact_within(Duration::from_secs(60)));
            std::thread::sleep(Duration::from_millis(200));
            s.spawn(|| {
                let _new = store.env.read_txn().expect("read");
                got_in.send(()).expect("send");
            });
            let waited = signal.recv_timeout(Duration::from_secs(20));
            drop(long);
            assert!(waited.is_ok(), "a new reader waited behind the swap");
            swap.join().expect("compaction thread")
        });
        let done = done.expect("compacted once the reader ended");
        assert_eq!(
            done.after,
            std::fs::metadata(&file).expect("env file").len()
        );
        assert_eq!(store.applied().expect("applied"), None);
    }
}
