//! Answers: outputs, listings, status reports and backup manifests.

use serde::{Deserialize, Serialize};
use wraft_core::{FsmLimits, ModuleId, NodeId};

use crate::Payload;

/// One FSM instance in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsmInfo {
    /// Its name.
    pub name: String,
    /// Its module.
    pub module_id: ModuleId,
    /// Its limits.
    pub limits: FsmLimits,
}

/// One deployed module in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// Its id (sha256 of the bytes).
    pub module_id: ModuleId,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// The FSMs running it.
    pub fsms: Vec<String>,
}

/// One node in a status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its id.
    pub id: NodeId,
    /// Its address.
    pub addr: String,
    /// "voter" or "learner".
    pub membership: String,
    /// The last log index the leader knows it has (leader's view), if known.
    pub matched: Option<u64>,
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The answering node.
    pub node: NodeId,
    /// Its raft state ("Leader", "Follower", ...).
    pub state: String,
    /// The current term.
    pub term: u64,
    /// The leader it follows.
    pub leader: Option<NodeId>,
    /// Its last log index.
    pub last_log: Option<u64>,
    /// Its committed index.
    pub committed: Option<u64>,
    /// Its applied index.
    pub applied: Option<u64>,
    /// Every member.
    pub nodes: Vec<NodeStatus>,
}

impl ClusterStatus {
    /// How many entries of the answering node's log `n` is not known to hold: the leader
    /// knows each member's matched index (`None` where it does not, or on a follower).
    pub fn lag(&self, n: &NodeStatus) -> Option<u64> {
        n.matched
            .zip(self.last_log)
            .map(|(m, last)| last.saturating_sub(m))
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiResponse {
    /// An apply's or query's output, in the request's encoding.
    Output(Payload),
    /// A batch's outputs.
    BatchOutputs(Vec<Payload>),
    /// Done (create, membership changes).
    Done,
    /// A deployed module's id.
    Deployed(ModuleId),
    /// FSMs and modules.
    Fsms(Vec<FsmInfo>),
    /// Cluster status.
    Status(ClusterStatus),
    /// Who leads after a transfer.
    Leader(NodeId),
    /// Deployed modules.
    Modules(Vec<ModuleInfo>),
    /// A backup's manifest; its file's bytes follow as chunks.
    Backup(BackupManifest),
    /// A session was opened: its id.
    Session(u64),
    /// Per-stage latencies of the node's recent log entries, in stage order.
    Stages(Vec<StageLatency>),
    /// What the node asked reads and writes.
    Features(NodeFeatures),
    /// What an online compaction of the node's state env gave back.
    Compacted(Compacted),
}

/// One online compaction of a node's state env ([`crate::ApiRequest::Compact`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compacted {
    /// The node.
    pub node: NodeId,
    /// The env's file before, in bytes.
    pub before_bytes: u64,
    /// After, in bytes.
    pub after_bytes: u64,
    /// How long the node's applies waited for it, in milliseconds (the copy and the swap).
    pub paused_ms: u64,
}

/// What a node's build reads and writes, for a leader deciding which entries it may propose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFeatures {
    /// The node.
    pub node: NodeId,
    /// Its wraft version.
    pub version: String,
    /// The newest entry level it reads ([`wraft_core::ENTRY_LEVEL`] of its build, or lower
    /// where its operator pinned it with `--entry-level`).
    pub entry_level: u32,
}

/// How long a node's recent log entries took from one stage of their life to the next
/// (openraft's log-stage statistics over its last 1024 batches of entries): proposed (a
/// leader's client write), received (by the raft core), submitted (to the log store),
/// persisted (flushed), committed (by a quorum), applied (by the state machine), and
/// proposed to applied end to end. A follower has no proposals: its first stages read 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageLatency {
    /// `proposed_to_received`, `received_to_submitted`, `submitted_to_persisted`,
    /// `persisted_to_committed`, `committed_to_applied` or `proposed_to_applied`.
    pub stage: String,
    /// Entries measured.
    pub entries: u64,
    /// Median, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
}

/// What a backup holds, as the node that took it describes it. Hashes are lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    /// The node that took it.
    pub node: NodeId,
    /// When (milliseconds since the Unix epoch).
    pub taken_at_ms: u64,
    /// The wraft version that wrote it.
    pub version: String,
    /// The last log index (and its term) the copied state includes.
    pub applied_index: u64,
    /// The term of that entry.
    pub applied_term: u64,
    /// Voters of the membership the copied state records.
    pub voters: Vec<NodeId>,
    /// Learners of that membership.
    pub learners: Vec<NodeId>,
    /// sha256 of the FSM registry and module table (as checkpoints compute it).
    pub registry_sha256: String,
    /// Each FSM's name and the sha256 of its keyspace.
    pub fsms: Vec<(String, String)>,
    /// Length of the copy (`state.mdb`).
    pub file_bytes: u64,
    /// sha256 of the copy.
    pub file_sha256: String,
}

/// Largest answer a client reads (it grows with the bytes that arrive): well past any
/// output an FSM's limits allow.
pub const MAX_REPLY: usize = 1 << 30;

/// A backup file ready to stream; the server deletes it once sent (or on failure).
#[derive(Debug)]
pub struct BackupFile {
    /// Its manifest.
    pub manifest: BackupManifest,
    /// The copy on the node's disk.
    pub path: std::path::PathBuf,
}
