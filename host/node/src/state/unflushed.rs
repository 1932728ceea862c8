//! A state env whose commits are not flushed: what a power loss leaves of it is not trusted.
//!
//! A node's state env sits behind its raft log, which holds every entry after the newest
//! snapshot and is flushed before an entry is acknowledged. So the env commits with
//! `MDB_NOSYNC` (no device flush on the commit path; the kernel writes the pages back when
//! it likes), and a restart re-applies whatever the env lost from the log. A process crash
//! loses nothing of the env: its pages are in the page cache. A power loss can lose any
//! subset of them, in any order, so the env's newest meta page may point at pages that
//! never reached the disk, and LMDB has no checksums to notice.
//!
//! So while the env is open it carries a mark, the file `unflushed` in its directory,
//! naming the boot it was opened in (Linux: `/proc/sys/kernel/random/boot_id`). Closing the
//! env flushes it and removes the mark. An env found with a mark from another boot (the
//! machine went down with it open), or from an unknown one (no boot id on this platform), is
//! discarded: the node starts with an empty state, openraft installs the newest snapshot
//! (`restore_from_snapshot`) and re-applies the log after it. That costs a snapshot
//! install after a power loss, and nothing on any other restart.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::disk::{remove_if_present, sync_dir};

/// The mark's file name inside the env's directory. The fault suite's power loss rewrites it
/// as a reboot would change the boot id (`wraft_faults::process`).
pub const MARK: &str = "unflushed";

/// LMDB's files in the env's directory.
const ENV_FILES: [&str; 2] = ["data.mdb", "lock.mdb"];

/// The mark of an open env; [`Mark::clear`] once the env is flushed and closed.
#[derive(Debug)]
pub(super) struct Mark {
    path: PathBuf,
}

/// What opening found of the last run's env.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// Closed cleanly, or never opened.
    Clean,
    /// Left open by a process of this boot (a crash): the page cache kept every commit.
    ThisBoot,
    /// Left open across a reboot: discarded.
    Discarded { boot: String },
}

/// This boot's id, if the platform has one.
fn boot_id() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// The boot named by `dir`'s mark, if the env is marked open.
fn marked_boot(dir: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(dir.join(MARK)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
        Ok(boot) => Ok(Some(boot.trim().to_string())),
    }
}

/// The boot that left `dir`'s env open, if not this one (read-only: the offline tools check
/// before they read an env).
pub(super) fn left_by_another_boot(dir: &Path) -> io::Result<Option<String>> {
    let this_boot = boot_id();
    Ok(marked_boot(dir)?.filter(|boot| this_boot.as_ref() != Some(boot)))
}

/// Forgets the mark of the env in `dir`, whose file was just replaced by a complete,
/// synced copy (a restore, a compaction): nothing the old env left unflushed matters, and the
/// copy must not be discarded at the next start as a torn env would be.
pub fn replaced(dir: &Path) -> io::Result<()> {
    remove_if_present(&dir.join(MARK))?;
    sync_dir(dir)
}

impl Mark {
    /// Checks `dir` (the env's directory, before the env is opened) for the last run's mark,
    /// discards the env if that mark is from another boot, then marks it open in this boot
    /// (durably, before any commit can go unflushed).
    pub(super) fn set(dir: &Path) -> io::Result<(Self, Found)> {
        let this_boot = boot_id();
        let found = match marked_boot(dir)? {
            None => Found::Clean,
            Some(boot) if this_boot.as_ref() == Some(&boot) => Found::ThisBoot,
            Some(boot) => {
                for name in ENV_FILES {
                    remove_if_present(&dir.join(name))?;
                }
                Found::Discarded { boot }
            }
        };
        let tmp = dir.join(format!("{MARK}.tmp"));
        {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(this_boot.as_deref().unwrap_or("unknown").as_bytes())?;
            file.sync_all()?;
        }
        let path = dir.join(MARK);
        fs::rename(&tmp, &path)?;
        sync_dir(dir)?;
        Ok((Self { path }, found))
    }

    /// Removes the mark: the env it marked is flushed and no longer written.
    pub(super) fn clear(&self) -> io::Result<()> {
        fs::remove_file(&self.path)?;
        let dir = self
            .path
            .parent()
            .expect("the mark is a file inside the env's directory");
        sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_from_this_boot_keeps_the_env_and_one_from_another_discards_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env_file = dir.path().join("data.mdb");
        fs::write(&env_file, b"pages").expect("write");
        let (mark, found) = Mark::set(dir.path()).expect("first open");
        assert_eq!(found, Found::Clean);
        drop(mark); // a crash: the mark stays
        let (mark, found) = Mark::set(dir.path()).expect("after a crash");
        if boot_id().is_some() {
            assert_eq!(found, Found::ThisBoot);
            assert!(env_file.exists(), "a crash of the process loses nothing");
        }
        mark.clear().expect("clean close");
        let (_mark, found) = Mark::set(dir.path()).expect("after a clean close");
        assert_eq!(found, Found::Clean);
        fs::write(dir.path().join(MARK), "another-boot").expect("reboot");
        let (_mark, found) = Mark::set(dir.path()).expect("after a power loss");
        assert_eq!(
            found,
            Found::Discarded {
                boot: "another-boot".into()
            }
        );
        assert!(!env_file.exists(), "a power loss's env is discarded");
    }
}
