//! Hot backup and restore of a node's state.
//!
//! A backup is a compacting LMDB copy of `state/` taken from one read transaction while the
//! node serves (LMDB readers never block the writer), plus a manifest describing it: the
//! applied position, the membership, the digest checkpoints compare, and the copy's sha256.
//! The raft env is not part of it: a backup is the state machine at one log index, and a
//! restored node gets everything after that index from the cluster's log (or a snapshot).
//!
//! Restore verifies the copy against its manifest before touching anything, then swaps it
//! in as `state/data.mdb`, deletes `snapshots/` (a snapshot newer than the backup would
//! otherwise be installed over it), and keeps `raft/` (the node's vote and log) when it is
//! compatible: its log must still hold the entries after the backup's applied index, and
//! agree with the backup on the term of that entry.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use wraft_api::{BackupFile, BackupManifest};
use wraft_core::raft::NodeId;

use super::{DataDirLock, OpsError, at, occupied};
use crate::raft::{AppliedState, LogStore};
use crate::state::StateStore;

/// The state copy inside a backup directory.
pub const STATE_FILE: &str = "state.mdb";
/// The manifest inside a backup directory (JSON).
pub const MANIFEST_FILE: &str = "manifest.json";
/// Extension of backup copies spooled in `<data>/snapshots/` while they stream.
const SPOOL_EXT: &str = "backup";

/// sha256 and length of a file.
pub fn file_sha256(path: &Path) -> Result<([u8; 32], u64), OpsError> {
    let mut file = File::open(path).map_err(at(path))?;
    let len = file.metadata().map_err(at(path))?.len();
    let sha = crate::raft::sha256_prefix(&mut file, len).map_err(at(path))?;
    Ok((sha, len))
}

/// Describes the state copy at `path` (a single-file LMDB env).
fn describe(path: &Path, node: NodeId) -> Result<BackupManifest, OpsError> {
    let (sha, len) = file_sha256(path)?;
    let copy = StateStore::open_read_only(path, true)?;
    let applied = copy.applied()?;
    let digest = copy.digest()?;
    let membership = AppliedState::load(copy.raft_state()?)
        .map_err(OpsError::Raft)?
        .membership;
    let m = membership.membership();
    Ok(BackupManifest {
        node,
        taken_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        version: env!("CARGO_PKG_VERSION").to_string(),
        applied_index: applied.map_or(0, |a| a.index),
        applied_term: applied.map_or(0, |a| a.term),
        voters: m.voter_ids().collect(),
        learners: m.learner_ids().collect(),
        registry_sha256: hex::encode(digest.registry),
        fsms: digest
            .fsms
            .iter()
            .map(|(n, h)| (n.as_str().to_string(), hex::encode(h)))
            .collect(),
        file_bytes: len,
        file_sha256: hex::encode(sha),
    })
}

/// Takes a hot backup of a serving node's state into `<data_dir>/snapshots/` (deleted by
/// the server once streamed, or at the next start if the node died meanwhile).
pub fn take(store: &StateStore, node: NodeId, data_dir: &Path) -> Result<BackupFile, OpsError> {
    let dir = data_dir.join("snapshots");
    std::fs::create_dir_all(&dir).map_err(at(&dir))?;
    let path = crate::raft::unique_path(&dir, "backup", SPOOL_EXT);
    let result = store
        .copy_to(&path)
        .map_err(OpsError::from)
        .and_then(|()| describe(&path, node));
    match result {
        Ok(manifest) => Ok(BackupFile { manifest, path }),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// Deletes backup copies a previous run left behind (it died while streaming one).
pub fn remove_stale(data_dir: &Path) {
    let dir = data_dir.join("snapshots");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().is_some_and(|e| e == SPOOL_EXT) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Writes `manifest` as `<dir>/manifest.json`.
pub fn write_manifest(dir: &Path, manifest: &BackupManifest) -> Result<(), OpsError> {
    let path = dir.join(MANIFEST_FILE);
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| OpsError::Invalid(format!("manifest: {e}")))?;
    let mut file = File::create(&path).map_err(at(&path))?;
    file.write_all(&json).map_err(at(&path))?;
    file.sync_all().map_err(at(&path))
}

/// Reads and checks a backup directory: the copy's length and sha256 match the manifest,
/// and the copy opens and holds the applied position and state the manifest describes.
pub fn verify(backup: &Path) -> Result<BackupManifest, OpsError> {
    let path = backup.join(MANIFEST_FILE);
    let json = std::fs::read(&path).map_err(at(&path))?;
    let manifest: BackupManifest = serde_json::from_slice(&json).map_err(|e| {
        OpsError::Invalid(format!("{}: not a backup manifest: {e}", path.display()))
    })?;
    let file = backup.join(STATE_FILE);
    let (sha, len) = file_sha256(&file)?;
    if len != manifest.file_bytes || hex::encode(sha) != manifest.file_sha256 {
        return Err(OpsError::Invalid(format!(
            "{}: {len} bytes hashing to {}; the manifest says {} bytes hashing to {}: \
             the backup is damaged",
            file.display(),
            hex::encode(sha),
            manifest.file_bytes,
            manifest.file_sha256
        )));
    }
    let found = describe(&file, manifest.node)?;
    let same = found.applied_index == manifest.applied_index
        && found.applied_term == manifest.applied_term
        && found.registry_sha256 == manifest.registry_sha256
        && found.fsms == manifest.fsms;
    if !same {
        return Err(OpsError::Invalid(format!(
            "{}: its state (applied {}, term {}) does not match the manifest's (applied {}, \
             term {})",
            file.display(),
            found.applied_index,
            found.applied_term,
            manifest.applied_index,
            manifest.applied_term
        )));
    }
    Ok(manifest)
}

/// Checks that the raft env in `data_dir` (if any) can resume from the backup's applied
/// index: the entries after it are still in the log, and the entry at it is the same one.
fn check_log(data_dir: &Path, m: &BackupManifest) -> Result<(), OpsError> {
    let raft = data_dir.join("raft");
    if !raft.join("data.mdb").exists() {
        return Ok(());
    }
    let log = LogStore::open_read_only(data_dir).map_err(OpsError::Raft)?;
    let summary = log.summary().map_err(OpsError::Raft)?;
    if let Some(p) = summary.purged
        && p.index > m.applied_index
    {
        return Err(OpsError::Invalid(format!(
            "this node's log was purged up to {}, past the backup's applied index {}: the \
             entries in between are gone here; restore into an empty data directory (or take a \
             newer backup)",
            p.index, m.applied_index
        )));
    }
    if let Some(id) = log.log_id_at(m.applied_index).map_err(OpsError::Raft)?
        && id.leader_id.term != m.applied_term
    {
        return Err(OpsError::Invalid(format!(
            "this node's log holds entry {} from term {}, the backup's is from term {}: the \
             backup comes from another cluster or history",
            m.applied_index, id.leader_id.term, m.applied_term
        )));
    }
    Ok(())
}

/// Restores `backup` into `data_dir` (whose node must be stopped). Without `force` it
/// refuses a directory that already holds state or snapshots.
pub fn restore(backup: &Path, data_dir: &Path, force: bool) -> Result<BackupManifest, OpsError> {
    let manifest = verify(backup)?;
    let state = data_dir.join("state");
    let snapshots = data_dir.join("snapshots");
    if !force && (occupied(&state) || occupied(&snapshots)) {
        return Err(OpsError::Exists(state));
    }
    let _lock = DataDirLock::acquire(data_dir).map_err(OpsError::Locked)?;
    check_log(data_dir, &manifest)?;
    std::fs::create_dir_all(&state).map_err(at(&state))?;
    let incoming = state.join("data.mdb.restoring");
    std::fs::copy(backup.join(STATE_FILE), &incoming).map_err(at(&incoming))?;
    File::open(&incoming)
        .and_then(|f| f.sync_all())
        .map_err(at(&incoming))?;
    swap_in(&incoming, &state.join("data.mdb"))?;
    crate::state::unflushed::replaced(&state).map_err(at(&state))?;
    // The reader table of the replaced env is stale; LMDB recreates it.
    crate::disk::remove_if_present(&state.join("lock.mdb")).map_err(at(&state))?;
    if snapshots.exists() {
        std::fs::remove_dir_all(&snapshots).map_err(at(&snapshots))?;
    }
    Ok(manifest)
}

/// Renames `from` over `to` and syncs the directory, so a crash leaves one or the other.
pub(crate) fn swap_in(from: &Path, to: &Path) -> Result<(), OpsError> {
    std::fs::rename(from, to).map_err(at(to))?;
    let dir: PathBuf = to.parent().map_or_else(|| ".".into(), Path::to_path_buf);
    crate::disk::sync_dir(&dir).map_err(at(&dir))
}
