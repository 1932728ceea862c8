//! openraft's state machine over the state env: committed entries go through
//! [`StateStore::apply`] together with the last applied log id and membership, in one LMDB
//! transaction per batch openraft hands over.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use openraft::EntryPayload;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};

use super::holds::{Hold, StoreHolds};
use super::snapshot::SnapshotDir;
use super::{
    AppliedState, DurableLog, Entry, LogId, NodeId, Snapshot, SnapshotMeta, StoredMembership,
    TypeConfig, io_err,
};
use crate::runtime::FsmRuntime;
use crate::state::{AppliedPosition, Committed, Compaction, StateStore};

/// The raft state machine of one node.
#[derive(Debug)]
pub struct StateMachine {
    store: Arc<StateStore>,
    snapshots: SnapshotDir,
    applied: AppliedState,
    /// The nodes removed from the cluster as of the applied state, shared with the network.
    removed: RemovedNodes,
    /// The local raft log's progress on disk; entries are applied only once they are in it.
    durable: Option<DurableLog>,
    holds: StoreHolds,
    _hold: Hold,
}

/// The nodes removed from the cluster, as the applied state records them: the transport
/// refuses their certificates.
#[derive(Debug, Clone, Default)]
pub struct RemovedNodes(Arc<std::sync::RwLock<std::collections::BTreeSet<NodeId>>>);

impl RemovedNodes {
    /// Whether `id` was removed.
    pub fn contains(&self, id: NodeId) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    fn set(&self, applied: &AppliedState) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = applied.removed.clone();
    }
}

/// Builds snapshots from a point-in-time copy of the state env.
#[derive(Debug)]
pub struct SnapshotBuilder {
    store: Arc<StateStore>,
    snapshots: SnapshotDir,
    holds: StoreHolds,
    _hold: Hold,
}

impl StateMachine {
    /// Opens the state env and snapshot directory under `data_dir`; resumes at the stored
    /// last applied position (no replay of applied entries).
    pub fn open(data_dir: &Path, runtime: Arc<FsmRuntime>) -> io::Result<Self> {
        let store = Arc::new(StateStore::open(data_dir, runtime).map_err(io_err)?);
        Self::with_store(data_dir, store)
    }

    /// A state machine over an already opened store.
    pub fn with_store(data_dir: &Path, store: Arc<StateStore>) -> io::Result<Self> {
        let snapshots = SnapshotDir::open(data_dir)?;
        let applied = AppliedState::load(store.raft_state().map_err(io_err)?)?;
        let removed = RemovedNodes::default();
        removed.set(&applied);
        let holds = StoreHolds::default();
        Ok(Self {
            store,
            snapshots,
            applied,
            removed,
            durable: None,
            _hold: holds.hold(),
            holds,
        })
    }

    /// Applies an entry only once `log` has it on disk. openraft hands over entries the
    /// cluster committed while this node's own append may still be in flight; applying them
    /// then lets a power loss leave the state ahead of the log (and of the newest snapshot),
    /// which openraft cannot start from. A running node always has this; tests of the state
    /// machine alone need not.
    pub fn applying_only_durable(mut self, log: DurableLog) -> Self {
        self.durable = Some(log);
        self
    }

    /// The state store (for queries and state hashes).
    pub fn store(&self) -> &Arc<StateStore> {
        &self.store
    }

    /// What waits for openraft to let go of the store after `Raft::shutdown`.
    pub fn holds(&self) -> StoreHolds {
        self.holds.clone()
    }

    /// The nodes removed from the cluster, kept up to date as entries apply.
    pub fn removed_nodes(&self) -> RemovedNodes {
        self.removed.clone()
    }

    /// Compacts the state env while the node runs ([`StateStore::compact`]). Called in the
    /// state-machine worker (`Raft::with_state_machine`), which is the env's only writer: no
    /// apply or snapshot install runs until the copy is swapped in, and stale reads go on.
    pub async fn compact(&mut self) -> io::Result<Compaction> {
        let store = self.store.clone();
        let hold = self.holds.hold();
        tokio::task::spawn_blocking(move || {
            let _hold = hold;
            store.compact()
        })
        .await
        .map_err(io_err)?
        .map_err(io_err)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = File;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (store, dir) = (self.store.clone(), self.snapshots.clone());
        let started = std::time::Instant::now();
        let where_ = dir.path().to_path_buf();
        tracing::info!("building a snapshot");
        let hold = self.holds.hold();
        let snapshot = tokio::task::spawn_blocking(move || {
            let _hold = hold;
            dir.build(&store)
        })
        .await
        .map_err(io_err)?
        .map_err(|e| storage_fault("building a snapshot", &where_, e))?;
        crate::metrics::seconds(crate::metrics::names::SNAPSHOT_BUILD, started.elapsed());
        let len = snapshot.snapshot.metadata().map(|m| m.len()).unwrap_or(0);
        metrics::histogram!(crate::metrics::names::SNAPSHOT_SIZE).record(len as f64);
        tracing::info!(
            "built a snapshot up to {} ({len} bytes) in {} ms",
            display_log_id(&snapshot.meta.last_log_id),
            started.elapsed().as_millis()
        );
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = File;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied.last, self.applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let mut batch: Vec<Entry> = Vec::new();
        let mut responders = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            batch.push(entry);
            responders.push(responder);
        }
        let Some(last) = batch.last() else {
            return Ok(());
        };
        if let Some(durable) = &mut self.durable {
            durable.wait_for(last.log_id.index).await?;
        }
        let applied = self.applied.after(&batch);
        let blob = applied.encode();
        let store = self.store.clone();
        let hold = self.holds.hold();
        let responses = tokio::task::spawn_blocking(move || {
            let _hold = hold;
            let committed: Vec<Committed<'_>> = batch
                .iter()
                .map(|e| Committed {
                    position: AppliedPosition {
                        index: e.log_id.index,
                        term: e.log_id.leader_id.term,
                    },
                    entry: match &e.payload {
                        EntryPayload::Normal(d) => Some(d),
                        _ => None,
                    },
                })
                .collect();
            store.apply(&committed, Some(&blob)).map_err(|e| match e {
                // A storage fault, not a full map (that has its own message).
                e @ (crate::state::StateError::Storage(_)
                | crate::state::StateError::Runtime(crate::runtime::RuntimeError::Storage(
                    _,
                ))) => crate::disk::write_failed("applying to the state", store.path(), e),
                e => io_err(e),
            })
        })
        .await
        .map_err(io_err)??;
        self.removed.set(&applied);
        self.applied = applied;
        for (responder, response) in responders.into_iter().zip(responses) {
            if let Some(r) = responder {
                r.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            snapshots: self.snapshots.clone(),
            holds: self.holds.clone(),
            _hold: self.holds.hold(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: File,
    ) -> Result<(), io::Error> {
        let (store, dir, meta_owned) = (self.store.clone(), self.snapshots.clone(), meta.clone());
        let started = std::time::Instant::now();
        let where_ = dir.path().to_path_buf();
        let upto = display_log_id(&meta.last_log_id);
        tracing::info!("installing a snapshot up to {upto}");
        let hold = self.holds.hold();
        // The installed raft state is read there too, off the async workers.
        let raft_state = tokio::task::spawn_blocking(move || {
            let _hold = hold;
            dir.install(&store, &meta_owned, snapshot)
                .map(|()| store.raft_state())
        })
        .await
        .map_err(io_err)?
        .map_err(|e| storage_fault("installing a snapshot", &where_, e))?
        .map_err(|e| storage_fault("reading the installed snapshot", &where_, io_err(e)))?;
        crate::metrics::seconds(crate::metrics::names::SNAPSHOT_INSTALL, started.elapsed());
        tracing::info!(
            "installed a snapshot up to {upto} in {} ms",
            started.elapsed().as_millis()
        );
        self.applied = AppliedState::load(raft_state)?;
        self.removed.set(&self.applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let dir = self.snapshots.clone();
        tokio::task::spawn_blocking(move || dir.current())
            .await
            .map_err(io_err)?
    }
}

/// `term-index` of a snapshot's last entry, or `nothing`.
fn display_log_id(id: &Option<LogId>) -> String {
    id.as_ref().map_or_else(
        || "nothing".to_string(),
        |id| format!("{}-{}", id.leader_id.term, id.index),
    )
}

/// A snapshot's I/O error, explained as a storage fault unless it is about the data itself
/// (a corrupt or foreign snapshot is `InvalidData` and keeps its own message).
fn storage_fault(what: &str, dir: &std::path::Path, e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::InvalidData {
        e
    } else {
        crate::disk::write_failed(what, dir, e)
    }
}
