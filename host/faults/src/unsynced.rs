//! Lost unsynced writes: a node process runs under `libwraft_unsynced.so` (see
//! `preload/unsynced.rs`), which journals the bytes each write to its data directory is
//! about to overwrite until the file is synced. After the process is killed,
//! [`lose_unsynced_writes`] undoes those journals: every file is left as it was at its last
//! fsync/fdatasync, as after a power loss (not a process crash, which keeps the page cache),
//! or, with [`Survival::Torn`], with a random subset of its unsynced overwrites kept.

use std::collections::{BTreeMap, HashMap};
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

/// Which unsynced writes a power loss keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Survival {
    /// None: every file is left as at its last sync (the harshest case, and the usual one
    /// with a volatile disk cache).
    Nothing,
    /// A torn subset: each unsynced overwrite inside a file's synced length survives or not
    /// by a coin flip drawn from this seed, independently of the others (a disk may persist
    /// unsynced writes in any order). A file keeps the length of its last sync, so what was
    /// written past it (appends, growth) never survives.
    Torn(u64),
}

/// Where a node's state env records the boot it was opened in while it commits without
/// flushing (`wraft_host::state::unflushed::MARK`, inside `<data>/state`).
const STATE_BOOT_MARK: &str = "state/unflushed";

/// The reboot that follows a power loss: the machine's boot id changes. This machine's
/// cannot, so the boot id a node recorded in its data directory is made another boot's,
/// which is what the node sees when it starts after a real power loss.
pub fn reboot(root: &Path) -> std::io::Result<()> {
    let mark = root.join(STATE_BOOT_MARK);
    match std::fs::read_to_string(&mark) {
        Ok(boot) => std::fs::write(&mark, format!("before-power-loss-{}", boot.trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
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
    /// Unsynced writes that survived ([`Survival::Torn`]).
    pub kept: usize,
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

/// Byte ranges `[start, end)` that surviving writes own, merged.
#[derive(Default)]
struct Owned(BTreeMap<u64, u64>);

impl Owned {
    fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        let overlapping: Vec<(u64, u64)> = self
            .0
            .range(..=end)
            .filter(|&(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.0.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.0.insert(start, end);
    }

    /// The parts of `[start, end)` no surviving write owns.
    fn free(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        let mut at = start;
        let first = self.0.range(..=start).next_back().map(|(&s, &e)| (s, e));
        for (s, e) in first
            .into_iter()
            .chain(self.0.range(start + 1..end).map(|(&s, &e)| (s, e)))
        {
            if e <= at {
                continue;
            }
            if s > at {
                out.push((at, s.min(end)));
            }
            at = at.max(e);
            if at >= end {
                break;
            }
        }
        if at < end {
            out.push((at, end));
        }
        out
    }
}

/// How to undo one file's journal (`records`, oldest first): the `(offset, bytes)` to write
/// back, in order, and how many writes `survives` kept. Walking newest first, an undone
/// write puts back what it overwrote, except where a newer surviving write owns the bytes;
/// so every byte ends as the newest surviving write left it, or as at the last sync. The
/// caller then cuts the file to its synced length (`records[0].size_before`).
fn undo_plan(
    records: &[Record],
    mut survives: impl FnMut(&Record) -> bool,
) -> (Vec<(u64, Vec<u8>)>, usize) {
    let mut owned = Owned::default();
    let mut plan = Vec::new();
    let mut kept = 0;
    for r in records.iter().rev() {
        if survives(r) {
            owned.insert(r.at, r.at + r.len);
            kept += 1;
            continue;
        }
        let end = r.at + r.old.len() as u64;
        for (s, e) in owned.free(r.at, end) {
            plan.push((s, r.old[(s - r.at) as usize..(e - r.at) as usize].to_vec()));
        }
    }
    (plan, kept)
}

/// Whether a journaled write may survive a torn power loss: an overwrite inside the file's
/// synced length. A record that ends exactly at the end of the file as it was then, over
/// bytes that were all there, never survives: that is how a shrinking `ftruncate` is
/// journaled (the cut bytes), and keeping a truncation is not what keeping a write means.
/// Genuine writes of that shape are undone with it, which a disk may also do.
fn may_survive(r: &Record, synced_len: u64) -> bool {
    let truncation_shaped = r.at + r.len == r.size_before && r.old.len() as u64 == r.len;
    r.len > 0 && r.at + r.len <= synced_len && !truncation_shaped
}

/// FNV-1a of a path's bytes.
fn path_hash(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// Undoes the unsynced writes journaled under `journal` to the files under `root` (whose
/// process must be dead) but those `survival` keeps, and cuts each file to its size at its
/// last sync; the journals are removed. Files deleted since are skipped.
pub fn lose_unsynced_writes(
    root: &Path,
    journal: &Path,
    survival: Survival,
) -> std::io::Result<Lost> {
    let mut files = HashMap::new();
    files_by_inode(root, &mut files)?;
    let mut lost = Lost::default();
    for entry in std::fs::read_dir(journal)? {
        let entry = entry?;
        let records = parse(&std::fs::read(entry.path())?);
        let name = entry.file_name().to_string_lossy().into_owned();
        if let (Some(path), Some(first)) = (files.get(&name), records.first()) {
            let synced_len = first.size_before;
            let relative = path.strip_prefix(root).unwrap_or(path);
            // One coin per record from the seed and the file's path (not its inode, which
            // differs between runs): a seed tears the same writes in every replay.
            let mut coin = match survival {
                Survival::Nothing => None,
                Survival::Torn(seed) => Some(crate::Rng::new(seed ^ path_hash(relative))),
            };
            let mut kept_bytes = 0;
            let (plan, kept) = undo_plan(&records, |r| {
                let heads = coin.as_mut().is_some_and(|c| c.chance(0.5));
                let survives = heads && may_survive(r, synced_len);
                if survives {
                    kept_bytes += r.len;
                }
                survives
            });
            let file = OpenOptions::new().write(true).open(path)?;
            for (at, bytes) in &plan {
                file.write_all_at(bytes, *at)?;
            }
            file.set_len(synced_len)?;
            file.sync_all()?;
            lost.files.push(relative.to_path_buf());
            lost.writes += records.len() - kept;
            lost.kept += kept;
            lost.bytes += records.iter().map(|r| r.len).sum::<u64>() - kept_bytes;
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

    /// Random writes and shrinking truncations over a synced file, journaled as the preload
    /// library journals them, then a random subset kept: the undo must leave the synced
    /// bytes with exactly the kept writes applied, in their order, at the synced length.
    #[test]
    fn a_torn_undo_leaves_exactly_the_surviving_writes() {
        let mut rng = crate::Rng::new(11);
        for case in 0..2000 {
            let synced: Vec<u8> = (0..rng.below(64)).map(|_| rng.below(256) as u8).collect();
            let mut current = synced.clone();
            let mut records = Vec::new();
            // The data of each record that is a write (None: a truncation).
            let mut writes = Vec::new();
            for _ in 0..rng.below(12) {
                let size = current.len() as u64;
                if rng.chance(0.2) {
                    // ftruncate to a shorter length: the cut bytes are journaled.
                    let to = rng.below(size + 1);
                    records.push(Record {
                        at: to,
                        len: size - to,
                        size_before: size,
                        old: current[to as usize..].to_vec(),
                    });
                    current.truncate(to as usize);
                    writes.push(None);
                    continue;
                }
                let at = rng.below(size + 8);
                let data: Vec<u8> = (0..1 + rng.below(24))
                    .map(|_| rng.below(256) as u8)
                    .collect();
                let old_len = size.saturating_sub(at).min(data.len() as u64) as usize;
                records.push(Record {
                    at,
                    len: data.len() as u64,
                    size_before: size,
                    old: current
                        .get(at as usize..at as usize + old_len)
                        .unwrap_or_default()
                        .to_vec(),
                });
                let end = at as usize + data.len();
                if current.len() < end {
                    current.resize(end, 0);
                }
                current[at as usize..end].copy_from_slice(&data);
                writes.push(Some((at, data)));
            }
            let keep: Vec<bool> = records
                .iter()
                .map(|r| may_survive(r, synced.len() as u64) && rng.chance(0.5))
                .collect();
            let mut newest_first = keep.iter().rev();
            let (plan, kept) = undo_plan(&records, |_| *newest_first.next().unwrap_or(&false));
            for (at, bytes) in plan {
                let end = at as usize + bytes.len();
                if current.len() < end {
                    current.resize(end, 0);
                }
                current[at as usize..end].copy_from_slice(&bytes);
            }
            current.resize(synced.len(), 0);
            let mut expected = synced.clone();
            for (write, k) in writes.iter().zip(&keep) {
                match write {
                    Some((at, data)) if *k => {
                        expected[*at as usize..*at as usize + data.len()].copy_from_slice(data);
                    }
                    None => assert!(!k, "case {case}: a truncation survived"),
                    _ => {}
                }
            }
            assert_eq!(current, expected, "case {case}");
            assert_eq!(kept, keep.iter().filter(|k| **k).count());
        }
    }

    #[test]
    fn owned_ranges_merge_and_leave_the_gaps_free() {
        let mut o = Owned::default();
        o.insert(10, 20);
        o.insert(30, 40);
        assert_eq!(o.free(0, 50), vec![(0, 10), (20, 30), (40, 50)]);
        assert_eq!(o.free(12, 18), vec![]);
        assert_eq!(o.free(15, 35), vec![(20, 30)]);
        o.insert(18, 32);
        assert_eq!(o.free(0, 50), vec![(0, 10), (40, 50)]);
        assert_eq!(o.0.len(), 1, "one range: {:?}", o.0);
    }
}
