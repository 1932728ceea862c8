//! Snapshot files under `<data>/snapshots/` and the snapshot policy.
//!
//! A snapshot is a file `<name>.snap`: an LMDB copy of the state env followed by a 48-byte
//! trailer, `sha256(copy) | copy length (u64 LE) | "WRAFTSN1"`, so the file verifies itself
//! wherever it travels; beside it, `<name>.meta` holds the postcard `SnapshotMeta`. The name
//! is `<term>-<index>-<first 16 hex digits of the sha256>`. Files are written as `*.tmp`
//! and renamed into place; a crash leaves at most a stray `.tmp`, which the next build or
//! install removes.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{AppliedState, Snapshot, SnapshotMeta, io_err};
use crate::disk::{remove_if_present, sync_dir};
use crate::state::StateStore;

/// When to snapshot and how much log to keep: op-conductor's three knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Snapshot at least this often while entries are being applied.
    pub interval: Duration,
    /// Snapshot once this many entries were applied since the last snapshot.
    pub threshold: u64,
    /// Entries kept in the log behind a snapshot, so a briefly lagging follower catches up
    /// from the log instead of needing the whole snapshot.
    pub trailing_logs: u64,
}

impl Default for SnapshotPolicy {
    /// Tuned for small FSMs (a latest-block payload, a file manifest): their snapshots are
    /// small and cheap, so take them often and keep a modest tail of log.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            threshold: 4096,
            trailing_logs: 2048,
        }
    }
}

impl SnapshotPolicy {
    /// Sets the openraft knobs that implement `threshold` and `trailing_logs`. `interval` is
    /// driven by the node, which triggers a snapshot when it elapses with new entries applied.
    pub fn configure(&self, config: &mut openraft::Config) {
        config.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(self.threshold);
        config.max_in_snapshot_log_to_keep = self.trailing_logs;
    }

    /// Drives `interval`: every `interval`, if entries were applied since the last snapshot,
    /// asks `raft` for one. Ends when the raft node shuts down.
    pub fn spawn_interval(&self, raft: super::Raft) -> tokio::task::JoinHandle<()> {
        let interval = self.interval;
        tokio::spawn(async move {
            let mut tick = ticker(interval);
            loop {
                tick.tick().await;
                let (applied, snapshot) = {
                    use openraft::type_config::async_runtime::WatchReceiver;
                    let m = raft.metrics().borrow_watched().clone();
                    (m.last_applied, m.snapshot)
                };
                if applied.is_some()
                    && applied != snapshot
                    && raft.trigger().snapshot().await.is_err()
                {
                    break;
                }
            }
        })
    }
}

/// A ticker for periodic node work: its first tick is one `interval` from now, and after a
/// stall it waits a full interval again rather than firing a burst.
pub(crate) fn ticker(interval: std::time::Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

const MAGIC: &[u8; 8] = b"WRAFTSN1";
const TRAILER_LEN: u64 = 48;

/// The sha256 of the first `len` bytes of `file`.
pub(crate) fn sha256_prefix(file: &mut File, len: u64) -> io::Result<[u8; 32]> {
    file.seek(SeekFrom::Start(0))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut reader = (&mut *file).take(len);
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// Appends the trailer to an LMDB copy; returns the copy's sha256.
fn seal(path: &Path) -> io::Result<[u8; 32]> {
    let mut file = fs::OpenOptions::new().read(true).append(true).open(path)?;
    let len = file.metadata()?.len();
    let sha = sha256_prefix(&mut file, len)?;
    let mut trailer = Vec::with_capacity(TRAILER_LEN as usize);
    trailer.extend_from_slice(&sha);
    trailer.extend_from_slice(&len.to_le_bytes());
    trailer.extend_from_slice(MAGIC);
    io::Write::write_all(&mut file, &trailer)?;
    file.sync_all()?;
    Ok(sha)
}

/// Checks a snapshot file's trailer against its content; returns the copy's length.
pub fn verify_snapshot_file(file: &mut File) -> io::Result<u64> {
    let bad =
        |what: String| io::Error::new(io::ErrorKind::InvalidData, format!("snapshot file: {what}"));
    let total = file.metadata()?.len();
    if total < TRAILER_LEN {
        return Err(bad(format!(
            "{total} bytes is too short for a wraft snapshot"
        )));
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    file.seek(SeekFrom::Start(total - TRAILER_LEN))?;
    file.read_exact(&mut trailer)?;
    if &trailer[40..48] != MAGIC {
        return Err(bad("no wraft snapshot trailer".into()));
    }
    let len = u64::from_le_bytes(trailer[32..40].try_into().map_err(io_err)?);
    if len != total - TRAILER_LEN {
        return Err(bad(format!(
            "trailer says {len} bytes of state, file has {}",
            total - TRAILER_LEN
        )));
    }
    let actual = sha256_prefix(file, len)?;
    if actual[..] != trailer[..32] {
        return Err(bad(format!(
            "content sha256 {} does not match the recorded {}",
            hex::encode(actual),
            hex::encode(&trailer[..32])
        )));
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(len)
}

fn snapshot_name(meta: &SnapshotMeta, sha: &[u8; 32]) -> String {
    let (term, index) = meta
        .last_log_id
        .as_ref()
        .map_or((0, 0), |l| (l.leader_id.term, l.index));
    format!("{term}-{index}-{}", hex::encode(&sha[..8]))
}

/// `<dir>/<what>-<nanos>.<ext>`: a name no other build, install or backup is using.
pub(crate) fn unique_path(dir: &Path, what: &str, ext: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    dir.join(format!("{what}-{nanos}.{ext}"))
}

/// The snapshot directory of one node. Builds and installs may be asked for at the same
/// time (openraft builds in a task of its own while a leader's snapshot arrives): they take
/// turns, so one never publishes, or clears away, the other's files mid-way.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotDir {
    dir: PathBuf,
    turn: std::sync::Arc<std::sync::Mutex<()>>,
}

impl SnapshotDir {
    /// The directory (`<data dir>/snapshots`).
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Opens (creating) `<data_dir>/snapshots` and clears the temporary files a previous
    /// run left (a build, an install or a received snapshot cut short): nothing else uses
    /// the directory yet.
    pub(crate) fn open(data_dir: &Path) -> io::Result<Self> {
        let dir = data_dir.join("snapshots");
        fs::create_dir_all(&dir)?;
        let snapshots = Self {
            dir,
            turn: Default::default(),
        };
        snapshots.remove_tmp()?;
        Ok(snapshots)
    }

    fn take_turn(&self) -> std::sync::MutexGuard<'_, ()> {
        self.turn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.snap")),
            self.dir.join(format!("{name}.meta")),
        )
    }

    /// Builds a snapshot of `store` now.
    pub(crate) fn build(&self, store: &StateStore) -> io::Result<Snapshot> {
        let _turn = self.take_turn();
        let tmp = unique_path(&self.dir, "build", "tmp");
        // The metadata comes from the same read transaction as the pairs, so it matches the
        // snapshot's state exactly.
        let raft_state = store.export_to(&tmp).map_err(io_err)?;
        // openraft purges the log only behind a snapshot; make sure the live state env holds
        // everything the snapshot does, so a power loss never needs a purged entry.
        store.sync().map_err(io_err)?;
        let applied = AppliedState::load(raft_state)?;
        let meta = SnapshotMeta {
            last_log_id: applied.last,
            last_membership: applied.membership,
        };
        let sha = seal(&tmp)?;
        self.publish(&tmp, &meta, &snapshot_name(&meta, &sha))
    }

    /// Moves a sealed snapshot file into place with its metadata and drops older ones.
    fn publish(&self, file: &Path, meta: &SnapshotMeta, name: &str) -> io::Result<Snapshot> {
        let (snap, meta_path) = self.paths(name);
        fs::rename(file, &snap)?;
        let meta_tmp = unique_path(&self.dir, "meta", "tmp");
        fs::write(&meta_tmp, postcard::to_allocvec(meta).map_err(io_err)?)?;
        File::open(&meta_tmp)?.sync_all()?;
        fs::rename(&meta_tmp, &meta_path)?;
        sync_dir(&self.dir)?;
        self.remove_older_than(name)?;
        Ok(Snapshot {
            meta: meta.clone(),
            snapshot: File::open(&snap)?,
        })
    }

    /// Verifies `data` against its trailer, reads it through, publishes it as this node's
    /// current snapshot, then replaces `store`'s state with it.
    ///
    /// Published first: a power loss between the two leaves a published snapshot newer than
    /// the state, which openraft installs again when the node starts (`restore_from_snapshot`).
    /// The other order left a state newer than every published snapshot; openraft then purged
    /// the log up to the state on start, past its newest snapshot, and stopped on its own
    /// assertion (`purge_upto` going backwards) at the next snapshot (found by CI's
    /// snapshot-crash test).
    pub(crate) fn install(
        &self,
        store: &StateStore,
        meta: &SnapshotMeta,
        mut data: File,
    ) -> io::Result<()> {
        let len = verify_snapshot_file(&mut data)?;
        let _turn = self.take_turn();
        let tmp = unique_path(&self.dir, "install", "tmp");
        {
            let mut out = File::create(&tmp)?;
            io::copy(&mut (&mut data).take(len), &mut out)?;
            out.sync_all()?;
        }
        // Readable to the end before it is published (see above).
        if let Err(e) = store.check_snapshot(&tmp) {
            let _ = fs::remove_file(&tmp);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
        }
        let sha = seal(&tmp)?;
        let name = snapshot_name(meta, &sha);
        self.publish(&tmp, meta, &name)?;
        let (snap, _) = self.paths(&name);
        store.import_from(&snap).map_err(io_err)?;
        // The state env commits without a meta sync (MDB_NOMETASYNC): make the import
        // durable now, because openraft purges the log up to the snapshot once this returns.
        store.sync().map_err(io_err)
    }

    /// The newest complete snapshot, if any.
    pub(crate) fn current(&self) -> io::Result<Option<Snapshot>> {
        let _turn = self.take_turn();
        let mut best: Option<(SnapshotMeta, String)> = None;
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "meta") {
                continue;
            }
            let meta: SnapshotMeta = match postcard::from_bytes(&fs::read(&path)?) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(
                        "ignoring unreadable snapshot metadata {}: {e}",
                        path.display()
                    );
                    continue;
                }
            };
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if best
                .as_ref()
                .is_none_or(|(b, _)| b.last_log_id < meta.last_log_id)
            {
                best = Some((meta, name.to_owned()));
            }
        }
        let Some((meta, name)) = best else {
            return Ok(None);
        };
        let (snap, _) = self.paths(&name);
        Ok(Some(Snapshot {
            snapshot: File::open(snap)?,
            meta,
        }))
    }

    fn remove_older_than(&self, keep: &str) -> io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let ours = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("snap" | "meta")
            );
            if ours && stem != keep {
                remove_if_present(&path)?;
            }
        }
        Ok(())
    }

    fn remove_tmp(&self) -> io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                remove_if_present(&path)?;
            }
        }
        Ok(())
    }
}
