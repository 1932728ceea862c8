//! The raft layer: openraft's types (declared once, in `wraft_core::raft`), the LMDB log store (`<data>/raft`) and the
//! state machine over the state env (`<data>/state`), with snapshots (`<data>/snapshots`).

mod applied;
mod holds;
pub mod leadership;
mod log_store;
mod snapshot;
mod state_machine;

pub use applied::AppliedState;
pub use holds::StoreHolds;
pub use log_store::{
    DEFAULT_MAX_LOG_BYTES, DurableLog, LogReader, LogStore, LogSummary, MAX_BATCH_BYTES,
};
pub use snapshot::{SnapshotPolicy, verify_snapshot_file};
pub(crate) use snapshot::{sha256_prefix, ticker, unique_path};
pub use state_machine::{RemovedNodes, StateMachine};

pub use wraft_core::raft::{
    Entry, LogId, Node, NodeId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig, Vote,
};

/// A raft node.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
