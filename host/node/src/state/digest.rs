//! State digests and consistency checkpoints.
//!
//! A digest is a sha256 over the FSM registry and module table, and one per FSM keyspace,
//! taken inside a transaction so it describes exactly one log index. At every
//! [`Command::Checkpoint`](wraft_core::Command::Checkpoint) entry each replica records its
//! digest; the next checkpoint carries the leader's recorded digest, and a replica whose own
//! record at that index differs marks itself diverged: it logs the parts that differ, sets the
//! `wraft_state_diverged` gauge, and refuses reads until its state is replaced (restore from a
//! healthy node's backup, or a snapshot install), which clears the mark.

use heed::{RoTxn, RwTxn};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wraft_core::{EntryResponse, FsmName, StateDigest};

use super::keys::{self, MetaTag};
use super::{FsmRecord, StateError, StateStore, decode, encode};

/// A replica's record that its state differed from the leader's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    /// The checkpoint index whose digests differ.
    pub checkpoint: u64,
    /// The index of the entry that carried the leader's digest.
    pub detected_at: u64,
    /// What differs ("registry", "fsm NAME", ...).
    pub parts: Vec<String>,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "state diverged from the leader's at checkpoint {} (detected at entry {}): {}",
            self.checkpoint,
            self.detected_at,
            self.parts.join(", ")
        )
    }
}

fn hash_table<'t>(
    h: &mut Sha256,
    items: impl Iterator<Item = heed::Result<(&'t [u8], &'t [u8])>>,
    skip: usize,
) -> Result<(), StateError> {
    for item in items {
        let (k, v) = item?;
        let k = &k[skip..];
        h.update((k.len() as u32).to_le_bytes());
        h.update(k);
        h.update((v.len() as u32).to_le_bytes());
        h.update(v);
    }
    Ok(())
}

impl StateStore {
    /// sha256 over one FSM's keyspace (each key and value length-prefixed, in key order).
    pub(super) fn fsm_hash_in(
        &self,
        txn: &RoTxn<'_>,
        rec: &FsmRecord,
    ) -> Result<[u8; 32], StateError> {
        let mut h = Sha256::new();
        let prefix = keys::data_prefix(self.group, rec.id);
        hash_table(&mut h, self.dbs().data.prefix_iter(txn, &prefix)?, 16)?;
        Ok(h.finalize().into())
    }

    /// The digest of the state visible in `txn`, labelled with `index`.
    pub(super) fn digest_in(&self, txn: &RoTxn<'_>, index: u64) -> Result<StateDigest, StateError> {
        let group = self.group.to_be_bytes();
        let mut registry = Sha256::new();
        hash_table(&mut registry, self.dbs().fsms.prefix_iter(txn, &group)?, 8)?;
        hash_table(
            &mut registry,
            self.dbs().modules.prefix_iter(txn, &group)?,
            8,
        )?;
        // Sessions and idempotency keys decide what a retry does, so replicas must agree on
        // them too. (None yet: nothing is hashed, and the digest is as before sessions.)
        for tag in keys::SESSION_TAGS {
            let prefix = keys::meta(self.group, tag);
            hash_table(&mut registry, self.dbs().meta.prefix_iter(txn, &prefix)?, 8)?;
        }
        let mut fsms = Vec::new();
        for item in self.dbs().fsms.prefix_iter(txn, &group)? {
            let (k, v) = item?;
            let name = String::from_utf8_lossy(&k[8..]).into_owned();
            let rec = FsmRecord::decode(&format!("fsm {name}"), v)?;
            let name = FsmName::new(&name).map_err(|e| StateError::Corrupt {
                what: format!("fsm name {name:?}"),
                detail: e.to_string(),
            })?;
            fsms.push((name, self.fsm_hash_in(txn, &rec)?));
        }
        Ok(StateDigest {
            index,
            registry: registry.finalize().into(),
            fsms,
        })
    }

    /// The digest of the state at the applied index.
    pub fn digest(&self) -> Result<StateDigest, StateError> {
        let rtxn = self.env.read_txn()?;
        let index = self.applied_in(&rtxn)?.map_or(0, |a| a.index);
        self.digest_in(&rtxn, index)
    }

    /// The digest this node recorded at the last checkpoint it applied.
    pub fn last_checkpoint(&self) -> Result<Option<StateDigest>, StateError> {
        let rtxn = self.env.read_txn()?;
        self.meta_record(&rtxn, MetaTag::Checkpoint, "checkpoint digest")
    }

    /// Whether a checkpoint found this node's state different from the leader's.
    pub fn divergence(&self) -> Result<Option<Divergence>, StateError> {
        let rtxn = self.env.read_txn()?;
        self.divergence_in(&rtxn)
    }

    /// Reads the divergence record and sets the `wraft_state_diverged` gauge from it: when
    /// the state is opened, and after a snapshot replaced it (the imported state carries its
    /// own record, normally none).
    pub fn publish_divergence(&self) -> Result<(), StateError> {
        let diverged = self.divergence()?.is_some();
        metrics::gauge!(crate::metrics::names::STATE_DIVERGED).set(if diverged {
            1.0
        } else {
            0.0
        });
        Ok(())
    }

    pub(super) fn divergence_in(&self, txn: &RoTxn<'_>) -> Result<Option<Divergence>, StateError> {
        self.meta_record(txn, MetaTag::Divergence, "divergence record")
    }

    fn meta_record<T: for<'de> Deserialize<'de>>(
        &self,
        txn: &RoTxn<'_>,
        tag: MetaTag,
        what: &str,
    ) -> Result<Option<T>, StateError> {
        match self.dbs().meta.get(txn, &keys::meta(self.group, tag))? {
            Some(b) => Ok(Some(decode(what, b)?)),
            None => Ok(None),
        }
    }

    /// Applies a checkpoint entry at `index`: compares the leader's digest with this node's
    /// record at the same index (if it has one), then records this node's digest at `index`.
    pub(super) fn checkpoint(
        &self,
        txn: &mut RwTxn<'_>,
        leader: Option<&StateDigest>,
        index: u64,
    ) -> Result<EntryResponse, StateError> {
        let own: Option<StateDigest> =
            self.meta_record(txn, MetaTag::Checkpoint, "checkpoint digest")?;
        if let (Some(leader), Some(own)) = (leader, own)
            && leader.index == own.index
        {
            let parts = own.differences(leader);
            if parts.is_empty() {
                metrics::counter!(crate::metrics::names::CHECKPOINTS_VERIFIED).increment(1);
            } else if self.divergence_in(txn)?.is_none() {
                let d = Divergence {
                    checkpoint: own.index,
                    detected_at: index,
                    parts,
                };
                tracing::error!("{d}; this node serves no reads until it is repaired");
                metrics::counter!(crate::metrics::names::CHECKPOINT_MISMATCHES).increment(1);
                metrics::gauge!(crate::metrics::names::STATE_DIVERGED).set(1.0);
                self.dbs().meta.put(
                    txn,
                    &keys::meta(self.group, MetaTag::Divergence),
                    &encode(&d),
                )?;
            }
        }
        let digest = self.digest_in(txn, index)?;
        self.dbs().meta.put(
            txn,
            &keys::meta(self.group, MetaTag::Checkpoint),
            &encode(&digest),
        )?;
        Ok(EntryResponse::Done)
    }
}
