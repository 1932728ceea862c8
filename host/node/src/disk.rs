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

/// Bytes a compacting copy of an LMDB env would give back: its file minus the pages in use
/// and the two meta pages.
pub fn reclaimable(env: &heed::Env<heed::WithoutTls>) -> heed::Result<u64> {
    let used = env.non_free_pages_size()?;
    let meta_pages = 2 * u64::from(env.stat().page_size);
    Ok(env.real_disk_size()?.saturating_sub(used + meta_pages))
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
}
