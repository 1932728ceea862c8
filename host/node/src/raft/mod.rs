//! The raft layer: openraft's types declared once, the LMDB log store (`<data>/raft`) and the
//! state machine over the state env (`<data>/state`), with snapshots (`<data>/snapshots`).

mod log_store;
mod snapshot;
mod state_machine;

pub use log_store::{LogReader, LogStore};
pub use snapshot::SnapshotPolicy;
pub use state_machine::StateMachine;

use wraft_core::{EntryResponse, LogEntry};

openraft::declare_raft_types!(
    /// wraft's raft type configuration: the log carries [`LogEntry`], applying one yields an
    /// [`EntryResponse`].
    pub TypeConfig:
        D = LogEntry,
        R = EntryResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// A node id.
pub type NodeId = u64;
/// A log id (leader id + index).
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A raft log entry.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A vote.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// Membership as stored with the applied state.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot whose data is a file (an LMDB copy of the state env).
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, std::fs::File>;
/// A raft node.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
