//! Lost unsynced writes: a node process runs under `libwraft_unsynced.so` (see
//! `preload/unsynced.rs`), which journals the bytes each write to its data directory is
//! about to overwrite until the file is synced. After the process is killed,
//! [`lose_unsynced_writes`] undoes those journals: every file is left as it was at its last
//! fsync/fdatasync, as after a power loss (not a process crash, which keeps the page cache).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The preload library, built by this crate's build script.
pub const PRELOAD: &str = concat!(env!("OUT_DIR"), "/libwraft_unsynced.so");

/// The environment that puts a process's writes under `root` into journals under
/// `journal` (which must exist, outside `root`).
pub fn env(root: &Path, journal: &Path) -> Vec<(String, PathBuf)> {
    vec![
        ("LD_PRELOAD".into(), PRELOAD.into()),
        ("WRAFT_UNSYNCED_ROOT".into(), root.to_path_buf()),
        ("WRAFT_UNSYNCED_JOURNAL".into(), journal.to_path_buf()),
    ]
}

/// What a power loss undid.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Lost {
    /// Files that had unsynced writes, relative to the root.
    pub files: Vec<PathBuf>,
    /// Writes undone.
    pub writes: usize,
    /// Bytes those writes had written.
    pub bytes: u64,
}

/// One journaled write: where, how much, and what it overwrote.
#[derive(Debug, PartialEq)]
struct Record {
    at: u64,
    len: u64,
    size_before: u64,
    old: Vec<u8>,
}

fn parse(mut bytes: &[u8]) -> Vec<Record> {
    let mut records = Vec::new();
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    // A record cut short (the process died while appending it) was never followed by its
    // write: it is dropped.
    while bytes.len() >= 28 {
        let old_len = u32::from_le_bytes(bytes[24..28].try_into().unwrap_or([0; 4])) as usize;
        if bytes.len() < 28 + old_len {
            break;
        }
        records.push(Record {
            at: u64_at(bytes, 0),
            len: u64_at(bytes, 8),
            size_before: u64_at(bytes, 16),
            old: bytes[28..28 + old_len].to_vec(),
        });
        bytes = &bytes[28 + old_len..];
    }
    records
}

/// Every regular file under `root`, by (device, inode).
fn files_by_inode(root: &Path, out: &mut HashMap<String, PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            files_by_inode(&entry.path(), out)?;
        } else if meta.is_file() {
            out.insert(format!("{}-{}", meta.dev(), meta.ino()), entry.path());
        }
    }
    Ok(())
}

/// Undoes every unsynced write journaled under `journal` to the files under `root`
/// (whose process must be dead), newest first, and truncates each file to its size at its
/// last sync; the journals are removed. Files deleted since are skipped.
pub fn lose_unsynced_writes(root: &Path, journal: &Path) -> std::io::Result<Lost> {
    let mut files = HashMap::new();
    files_by_inode(root, &mut files)?;
    let mut lost = Lost::default();
    for entry in std::fs::read_dir(journal)? {
        let entry = entry?;
        let records = parse(&std::fs::read(entry.path())?);
        let name = entry.file_name().to_string_lossy().into_owned();
        if let (Some(path), Some(first)) = (files.get(&name), records.first()) {
            let file = OpenOptions::new().write(true).open(path)?;
            for r in records.iter().rev() {
                file.write_all_at(&r.old, r.at)?;
                lost.bytes += r.len;
            }
            file.set_len(first.size_before)?;
            file.sync_all()?;
            lost.files
                .push(path.strip_prefix(root).unwrap_or(path).to_path_buf());
            lost.writes += records.len();
        }
        std::fs::remove_file(entry.path())?;
    }
    Ok(lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_record_is_dropped() {
        let mut bytes = Vec::new();
        for (at, old) in [(0u64, &b"ab"[..]), (5, &b"xyz"[..])] {
            bytes.extend_from_slice(&at.to_le_bytes());
            bytes.extend_from_slice(&4u64.to_le_bytes());
            bytes.extend_from_slice(&9u64.to_le_bytes());
            bytes.extend_from_slice(&(old.len() as u32).to_le_bytes());
            bytes.extend_from_slice(old);
        }
        let full = parse(&bytes);
        assert_eq!(full.len(), 2);
        assert_eq!(full[1].old, b"xyz");
        assert_eq!(full[1].at, 5);
        assert_eq!(parse(&bytes[..bytes.len() - 1]).len(), 1);
    }
}
