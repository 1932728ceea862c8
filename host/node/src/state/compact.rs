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
//! this in its state-machine worker, the only writer, so applies wait for the copy; stale
//! reads go on, reads that wait for the applied index wait too). A write
//! that reaches the env anyway is caught by LMDB's transaction id and the copy is dropped:
//! swapping it in would lose that write.

use std::path::Path;
use std::time::Duration;

use super::map::{KEPT_FILE, Replaced};
use super::{Dbs, StateError, StateStore};

/// How long the swap waits for the read transactions live after the copy (queries end in
/// milliseconds; a backup's or a snapshot build's copy of a large env takes seconds) before
/// it drops the copy. The node's applies wait this long at most, on top of the copy.
pub const SWAP_PATIENCE: Duration = Duration::from_secs(10);

/// Free disk space a compaction leaves beside its copy, for the raft log's appends.
pub const DISK_HEADROOM: u64 = 256 << 20;

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
        // The copy holds the live pages; the raft log shares the disk and must keep room to
        // append (a failed append stops the node).
        let live = before.saturating_sub(self.reclaimable_bytes()?);
        let needed = live.saturating_add(DISK_HEADROOM);
        if let Some(free) = crate::disk::free_bytes(&dir)
            && free < needed
        {
            return Err(StateError::Compaction(format!(
                "the copy needs about {live} bytes and {DISK_HEADROOM} more are kept free for \
                 the raft log, but the disk has {free} free; nothing changed: make room, or \
                 compact the stopped node into the space its raft env gives back"
            )));
        }
        let copied_at = self.env.with_env(|env| env.info().last_txn_id);
        let swapped = self.copy_to(&copy).and_then(|()| {
            Ok(self.env.replace_file(
                &copy,
                patience,
                |env| env.info().last_txn_id == copied_at,
                |env| {
                    let mut wtxn = env.write_txn()?;
                    let dbs = Dbs::create(|name| env.create_database(&mut wtxn, Some(name)))?;
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
                 build copying the env, or a steady flood of queries), so the copy was \
                 dropped; nothing changed: try again once it has finished",
                patience.as_secs_f64()
            ),
            Ok(Replaced::OpenElsewhere) => "another process has the state env open (a `wraft \
                 init info` or `verify`?): LMDB's lock file would not follow the new file, so \
                 the old one was put back; nothing changed: try again once it has exited"
                .to_string(),
            Ok(Replaced::NotRenamed(e)) => {
                format!("the copy could not replace the env's file ({e}); nothing changed")
            }
            Err(e) => {
                drop_copy(&dir);
                return Err(e);
            }
        };
        drop_copy(&dir);
        Err(StateError::Compaction(refused))
    }
}

fn len(file: &Path) -> Result<u64, StateError> {
    Ok(file.metadata().map_err(heed::Error::Io)?.len())
}

/// Removes what a failed or interrupted compaction left in the env directory `dir`: its copy
/// and the old file's second name (the env's file is whole in both cases).
pub(super) fn remove_leftovers(dir: &Path) -> Result<(), StateError> {
    for name in [COPY_FILE, KEPT_FILE] {
        crate::disk::remove_if_present(&dir.join(name)).map_err(heed::Error::Io)?;
    }
    Ok(())
}

/// Removes a refused compaction's copy; a failure to is logged (the answer is the refusal,
/// and the next compaction or start removes the file).
fn drop_copy(dir: &Path) {
    if let Err(e) = crate::disk::remove_if_present(&dir.join(COPY_FILE)) {
        tracing::warn!("the compaction's copy in {} stays: {e}", dir.display());
    }
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

    /// Where [`holder`] finds the env to hold open.
    const HOLD: &str = "WRAFT_TEST_HOLD_STATE_ENV";
    /// What [`holder`] says once it holds the env open.
    const OPENED: &str = "holder: the state env is open";

    /// Not a test: the other process of the test below. With [`HOLD`] set, it opens that
    /// state env read-only (as `wraft init info` does beside a running node), says [`OPENED`],
    /// and keeps it open until its stdin closes.
    #[test]
    #[ignore = "a helper process of another test"]
    fn holder() {
        let Some(dir) = std::env::var_os(HOLD) else {
            return;
        };
        let (_env, _) = super::super::offline::open_env(Path::new(&dir), false).expect("open");
        // On a line of its own: libtest may have written the test's name without one.
        println!("\n{OPENED}");
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest).expect("stdin");
    }

    /// Another process holding the state env in `dir` open, until [`Holder::release`].
    struct Holder {
        child: std::process::Child,
        lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    }

    impl Holder {
        fn start(env_dir: &Path) -> Self {
            use std::io::BufRead;
            use std::process::{Command, Stdio};
            let mut child = Command::new(std::env::current_exe().expect("test binary"))
                .args(["--ignored", "--exact", "state::compact::tests::holder"])
                .args(["--nocapture", "--test-threads", "1"])
                .env(HOLD, env_dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("the other process");
            let out = child.stdout.take().expect("stdout");
            let mut lines = std::io::BufReader::new(out).lines();
            let opened = lines
                .by_ref()
                .map_while(Result::ok)
                .any(|l| l.contains(OPENED));
            assert!(opened, "the other process did not open the env");
            Self { child, lines }
        }

        fn release(mut self) {
            drop(self.child.stdin.take());
            self.lines.for_each(drop); // read to its end, so its last words find a reader
            assert!(self.child.wait().expect("wait").success());
        }
    }

    fn applied_at_7(store: &StateStore) -> crate::state::AppliedPosition {
        // The env's second commit, so LMDB's lock file holds an even transaction id, which
        // picks a compacted copy's empty meta page.
        let at = crate::state::AppliedPosition { index: 7, term: 2 };
        store
            .apply(
                &[crate::state::Committed {
                    position: at,
                    entry: None,
                }],
                None,
            )
            .expect("apply");
        at
    }

    #[test]
    fn a_file_replaced_under_another_process_is_refused_at_open_not_read_empty() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(dir.path());
        let at = applied_at_7(&store);
        let env_dir = store.path().to_path_buf();
        let copy = dir.path().join("copy.mdb");
        store.copy_to(&copy).expect("copy");
        drop(store);
        // As an offline compaction or a restore would, while `wraft init info` reads.
        let other = Holder::start(&env_dir);
        std::fs::rename(&copy, env_dir.join("data.mdb")).expect("replace");
        let runtime = Arc::new(FsmRuntime::new().expect("runtime"));
        match StateStore::open(dir.path(), runtime.clone()) {
            Err(StateError::LockFileStale(p)) => assert_eq!(p, env_dir),
            other => panic!(
                "opened out of step with its lock file: {:?}",
                other.map(|_| ())
            ),
        }
        other.release();
        let store = StateStore::open(dir.path(), runtime).expect("open once it exited");
        assert_eq!(store.applied().expect("applied"), Some(at));
    }

    #[test]
    fn a_swap_under_another_process_that_has_the_env_open_puts_the_old_file_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(dir.path());
        let at = applied_at_7(&store);
        let other = Holder::start(store.path());

        match store.compact() {
            Err(StateError::Compaction(why)) => {
                assert!(
                    why.contains("another process has the state env open"),
                    "{why}"
                );
            }
            other => panic!("replaced under another process: {other:?}"),
        }
        assert_eq!(store.applied().expect("applied"), Some(at), "nothing lost");
        for leftover in [COPY_FILE, KEPT_FILE] {
            assert!(!store.path().join(leftover).exists(), "{leftover} stays");
        }

        other.release();
        let done = store
            .compact()
            .expect("compacted once the other process exited");
        assert!(done.after > 0);
        assert_eq!(store.applied().expect("applied"), Some(at));
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
