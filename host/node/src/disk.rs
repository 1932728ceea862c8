//! The disk: the small file operations several layers share (a directory's entries made
//! durable, a file removed if present), and explaining failed writes. LMDB reports a full
//! disk, a file-size limit and a failing device alike (a short write surfaces as EIO), so a
//! write error is reported with where it happened and how much room that filesystem has left.

use std::io;
use std::path::Path;

/// Free bytes (for unprivileged users) on the filesystem holding `path`, if it can be asked.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Whether LMDB's lock file agrees with the env's data file: a new read transaction reads
/// the newest transaction the file holds. It does not after the file was replaced (a
/// compaction, a restore) while another process kept the env open, as `wraft init info`
/// may: LMDB resets the lock file's transaction id only when it opens an env alone, and a
/// write through the stale id lands on the wrong meta page and loses the env. Checked
/// before anything is written.
///
/// A write transaction is begun and aborted first (it writes nothing): a writer that died
/// between its meta page and the lock file's id leaves the id one behind, and beginning a
/// write is where LMDB repairs that (an abandoned writer's mutex), so it is not taken for
/// a replaced file.
pub(crate) fn lock_file_in_step(env: &heed::Env<heed::WithoutTls>) -> heed::Result<bool> {
    env.write_txn()?.abort();
    let newest = env.info().last_txn_id;
    Ok(env.read_txn()?.id() == newest)
}

/// Bytes a compacting copy of an LMDB env would give back: its file minus the pages its
/// databases use (the main one and `dbs`, every named database of the env) and the two meta
/// pages. It counts pages from the databases' statistics and opens no database, so it may
/// run beside any other transaction of the process (heed's `non_free_pages_size` opens each
/// named database, which LMDB allows in one transaction of a process at a time).
pub fn reclaimable(
    env: &heed::Env<heed::WithoutTls>,
    rtxn: &heed::RoTxn,
    dbs: &[&heed::Database<heed::types::Bytes, heed::types::Bytes>],
) -> heed::Result<u64> {
    let main = env.stat();
    let page = u64::from(main.page_size);
    let mut pages = (main.leaf_pages + main.branch_pages + main.overflow_pages) as u64;
    for db in dbs {
        let s = db.stat(rtxn)?;
        pages += (s.leaf_pages + s.branch_pages + s.overflow_pages) as u64;
    }
    Ok(env.real_disk_size()?.saturating_sub((pages + 2) * page))
}

/// The latest [`reclaimable`] bytes of an env whose owner measures it now and then (the raft
/// log's writer thread), for the metrics: a number, not a handle that would keep the env open.
#[derive(Debug, Clone, Default)]
pub struct Reclaimable(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Reclaimable {
    /// The bytes last measured (0 before the first measurement).
    pub fn bytes(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set(&self, bytes: u64) {
        self.0.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `what` (e.g. "appending to the raft log") in `dir` failed with `error`: the message says
/// what the operator should check.
pub fn write_failed(what: &str, dir: &Path, error: impl std::fmt::Display) -> io::Error {
    let free = free_bytes(dir).map_or("unknown".to_string(), |b| format!("{} MiB", b >> 20));
    io::Error::other(format!(
        "{what} in {} failed: {error}. A full disk, a file-size limit (ulimit -f) or a failing \
         device looks like this; {free} free on that filesystem. The failed write was not \
         acknowledged: make room, then restart the node",
        dir.display()
    ))
}

/// Makes `dir`'s entries (new, renamed or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Removes `path`; a file that is not there is not an error.
pub(crate) fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_of_an_existing_directory_is_known_and_a_missing_one_is_not() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(free_bytes(dir.path()).is_some_and(|b| b > 0));
        assert_eq!(free_bytes(&dir.path().join("missing")), None);
        let e = write_failed(
            "appending to the raft log",
            dir.path(),
            "Input/output error",
        );
        assert!(e.to_string().contains("appending to the raft log in"));
        assert!(e.to_string().contains("free on that filesystem"));
    }

    /// The pages freed by deleting half of two databases are counted as reclaimable, the same
    /// number heed's `non_free_pages_size` (which opens every database) gives, and a
    /// compacting copy gives them back.
    #[test]
    fn reclaimable_bytes_are_the_free_pages_a_compacting_copy_gives_back() {
        use heed::types::Bytes;
        let dir = tempfile::tempdir().expect("tmp");
        // SAFETY: a fresh directory of this test's, opened once.
        let env = unsafe {
            heed::EnvOpenOptions::new()
                .read_txn_without_tls()
                .map_size(64 << 20)
                .max_dbs(2)
                .open(dir.path())
        }
        .expect("env");
        let mut wtxn = env.write_txn().expect("txn");
        let a: heed::Database<Bytes, Bytes> = env.create_database(&mut wtxn, Some("a")).expect("a");
        let b: heed::Database<Bytes, Bytes> = env.create_database(&mut wtxn, Some("b")).expect("b");
        for i in 0u32..4_000 {
            a.put(&mut wtxn, &i.to_be_bytes(), &[7; 500]).expect("put");
            b.put(&mut wtxn, &i.to_be_bytes(), &[9; 100]).expect("put");
        }
        wtxn.commit().expect("commit");
        let measure = |env: &heed::Env<heed::WithoutTls>| {
            let rtxn = env.read_txn().expect("txn");
            reclaimable(env, &rtxn, &[&a, &b]).expect("measured")
        };
        let full = measure(&env);
        let mut wtxn = env.write_txn().expect("txn");
        for i in 0u32..2_000 {
            a.delete(&mut wtxn, &i.to_be_bytes()).expect("delete");
        }
        wtxn.commit().expect("commit");
        let freed = measure(&env);
        assert!(freed > full + (500 << 10), "{full} -> {freed}");
        let heed_count = env.real_disk_size().expect("size")
            - env.non_free_pages_size().expect("pages")
            - 2 * u64::from(env.stat().page_size);
        assert_eq!(freed, heed_count);
        let copy = dir.path().join("copy.mdb");
        env.copy_to_path(&copy, heed::CompactionOption::Enabled)
            .expect("compacting copy");
        let given_back = env.real_disk_size().expect("size") - copy.metadata().expect("copy").len();
        assert!(
            given_back.abs_diff(freed) <= 4 * u64::from(env.stat().page_size),
            "measured {freed}, the copy gave back {given_back}"
        );
    }
}
