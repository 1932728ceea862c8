//! The openraft type configuration, declared once for every host crate (feature `raft`).

use crate::{EntryResponse, LogEntry};

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
pub use crate::NodeId;
/// A node's address record.
pub type Node = openraft::BasicNode;
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
/// A snapshot whose data is a file (an LMDB copy of the state env with a checksum trailer).
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, std::fs::File>;
