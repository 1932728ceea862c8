//! Requests: what opens a client API stream, and the role each needs.

use serde::{Deserialize, Serialize};
use wraft_core::session::Sequence;
use wraft_core::{FsmLimits, FsmName, ModuleId, NodeId};

use crate::{ApiError, Role};

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Linearizable: the leader confirms its leadership with a quorum (read-index) and the
    /// read waits until that index is applied.
    Linearizable,
    /// The leader serves from its lease without a quorum round trip (assumes bounded clock
    /// drift).
    Lease,
    /// Whatever the answering node has applied; may be stale.
    Stale,
}

/// An FSM command, query or output: JSON at the edge (converted by the module's codecs),
/// or postcard bytes of the FSM's own types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// JSON text.
    Json(String),
    /// postcard bytes.
    Postcard(Vec<u8>),
}

/// A request to a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ApiRequest {
    /// Apply one command (writer).
    Apply {
        /// The FSM.
        fsm: FsmName,
        /// The command.
        command: Payload,
        /// Apply it at most once (a session's sequence, or an idempotency key), or not.
        once: Option<Once>,
    },
    /// Apply commands as one atomic `Batch` entry (writer).
    Batch {
        /// (FSM, command) pairs, in order.
        commands: Vec<(FsmName, Payload)>,
        /// Apply it at most once: a batch is one sequence of its session.
        once: Option<Once>,
    },
    /// Query an FSM (reader).
    Query {
        /// The FSM.
        fsm: FsmName,
        /// The query.
        query: Payload,
        /// How fresh.
        consistency: Consistency,
    },
    /// Deploy a module (admin).
    Deploy {
        /// The wasm bytes.
        bytes: Vec<u8>,
    },
    /// Create an FSM instance (admin).
    CreateFsm {
        /// Its name.
        fsm: FsmName,
        /// A deployed module.
        module_id: ModuleId,
        /// Its limits.
        limits: FsmLimits,
    },
    /// FSM instances and modules (reader).
    ListFsms,
    /// Cluster membership, roles and progress (reader).
    Status,
    /// Add a non-voting learner (admin).
    AddLearner {
        /// Its id.
        id: NodeId,
        /// Its address.
        addr: String,
    },
    /// Make a learner a voter (admin).
    Promote {
        /// Its id.
        id: NodeId,
    },
    /// Remove a node from the cluster (admin).
    Remove {
        /// Its id.
        id: NodeId,
    },
    /// Hand leadership to `to`, or to the most caught-up voter (admin).
    TransferLeader {
        /// The target, if any.
        to: Option<NodeId>,
    },
    /// Move an FSM instance to another deployed module; its `migrate` runs in the same
    /// entry (admin).
    UpgradeFsm {
        /// The FSM.
        fsm: FsmName,
        /// The new module.
        module_id: ModuleId,
    },
    /// Delete an FSM instance and all its data (admin).
    DropFsm {
        /// The FSM.
        fsm: FsmName,
    },
    /// Delete a module no FSM uses (admin).
    DropModule {
        /// The module.
        module_id: ModuleId,
    },
    /// Deployed modules (reader).
    ListModules,
    /// A hot backup of the answering node's state (admin): the answer is
    /// [`ApiResponse::Backup`] with the manifest, followed on the same stream by
    /// [`crate::wire::Chunk`] frames of `manifest.file_bytes` bytes in all.
    Backup,
    /// Deploy a module streamed after this frame as [`crate::wire::Chunk`] frames of
    /// `len` bytes in all (admin). The server turns it into [`ApiRequest::Deploy`] once
    /// every byte has arrived; the role and `len` (at most [`MAX_UPLOAD_BYTES`]) are checked
    /// before any chunk is read.
    Upload {
        /// Total bytes that follow.
        len: u64,
    },
    /// Replace an FSM's limits (admin).
    SetLimits {
        /// The FSM.
        fsm: FsmName,
        /// Its new limits.
        limits: FsmLimits,
    },
    /// Open a client session (writer): the answer is [`crate::ApiResponse::Session`].
    /// (New variants go last: postcard encodes the variant's index.)
    OpenSession {
        /// Its idle timeout (`wraft_core::session`'s bounds).
        idle_timeout_ms: u64,
    },
    /// Where this node's recent log entries spent their time, stage by stage (reader; served
    /// by the node asked, not forwarded): [`crate::ApiResponse::Stages`].
    Stages,
    /// What this node's build reads and writes (reader; served by the node asked, not
    /// forwarded): [`crate::ApiResponse::Features`]. A leader asks every member, and proposes
    /// an entry of a newer level only once all of them read it.
    Features,
    /// Compact the state env of the node asked, while it runs (admin; served by that node,
    /// not forwarded): [`crate::ApiResponse::Compacted`]. The node's applies wait while the
    /// compacting copy is written; its stale reads go on.
    Compact,
    /// Compile a module now, ahead of its deploy entry (sent by a leader to each member
    /// while it validates the module; served by the node asked, and only from a voter's
    /// certificate, never from a client): [`crate::ApiResponse::Deployed`] with its id.
    /// The entry then applies from the member's compile cache. Each node compiles one at a
    /// time and answers `Busy` meanwhile; of the modules compiled this way and never
    /// deployed, a node keeps only the few newest.
    PrepareModule {
        /// The wasm bytes.
        bytes: Vec<u8>,
    },
}

/// How a write is applied at most once ([`wraft_core::session`]): retried with the same
/// `Once`, it answers what it did the first time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Once {
    /// The next write of a client session.
    Session(Sequence),
    /// A key the client chose (HTTP's `Idempotency-Key`).
    Key(String),
}

/// What opens a client API stream: a caller's own request, or one a voter forwards to the
/// leader for a caller. A forwarded request is a plain [`ApiRequest`], which has no way to
/// carry another forwarded one: the type does not nest, so decoding it never recurses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ApiCall {
    /// The caller's own request; its role is its certificate's.
    Direct(ApiRequest),
    /// A request a voter forwards on behalf of a caller with `role`. Only accepted from the
    /// certificate of a voter of the current membership.
    Forwarded {
        /// The original caller's role.
        role: Role,
        /// The original request.
        request: ApiRequest,
    },
    /// Opens a pipeline: this frame carries no request. The node accepts it with an
    /// `ApiResult` (`Ok(Done)`); every frame after it on the stream is an [`ApiCall`]
    /// (`Direct` or `Forwarded`, no upload or backup, which stream their own bytes), and the
    /// node answers each with a [`PipelinedReply`] as it completes.
    /// The transport's `pipeline` module describes the exchange.
    Pipeline,
}

/// The answer to the `call`-th call of a pipeline ([`ApiCall::Pipeline`]; the first call
/// after the opening frame is call 0). Answers come in the order calls complete, which is
/// not the order they were sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelinedReply {
    /// Which call, by its place on the stream.
    pub call: u64,
    /// Its answer.
    pub result: crate::ApiResult,
    /// The node reads no call after this one (it could not read this one whole): calls
    /// placed after it were never read.
    pub last: bool,
}

/// [`ApiCall`] by reference, for sending: encodes exactly as the owned form, without
/// copying a large request first.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum ApiCallRef<'a> {
    /// [`ApiCall::Direct`].
    Direct(&'a ApiRequest),
    /// [`ApiCall::Forwarded`].
    Forwarded {
        /// The original caller's role.
        role: Role,
        /// The original request.
        request: &'a ApiRequest,
    },
    /// [`ApiCall::Pipeline`].
    Pipeline,
}

/// Largest module upload accepted.
pub const MAX_UPLOAD_BYTES: u64 = 32 << 20;
/// Bytes per upload chunk.
pub const UPLOAD_CHUNK: usize = 64 << 10;

impl ApiRequest {
    /// Refuses a caller holding `have` (none: not a client certificate) if this request
    /// needs more.
    pub fn authorize(&self, have: Option<Role>) -> Result<(), ApiError> {
        let needed = self.required_role();
        if have >= Some(needed) {
            Ok(())
        } else {
            Err(ApiError::NotAllowed { needed, have })
        }
    }

    /// The request's kind, for logs and spans (`apply`, `query`, `deploy`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Apply { .. } => "apply",
            Self::Batch { .. } => "batch",
            Self::Query { .. } => "query",
            Self::Deploy { .. } => "deploy",
            Self::CreateFsm { .. } => "create_fsm",
            Self::ListFsms => "list_fsms",
            Self::Status => "status",
            Self::AddLearner { .. } => "add_learner",
            Self::Promote { .. } => "promote",
            Self::Remove { .. } => "remove",
            Self::TransferLeader { .. } => "transfer_leader",
            Self::UpgradeFsm { .. } => "upgrade_fsm",
            Self::DropFsm { .. } => "drop_fsm",
            Self::DropModule { .. } => "drop_module",
            Self::ListModules => "list_modules",
            Self::Backup => "backup",
            Self::Upload { .. } => "upload",
            Self::SetLimits { .. } => "set_limits",
            Self::OpenSession { .. } => "open_session",
            Self::Stages => "stages",
            Self::Features => "features",
            Self::Compact => "compact",
            Self::PrepareModule { .. } => "prepare_module",
        }
    }

    /// The FSM the request is about, if one (a batch may touch several: none is named).
    pub fn fsm(&self) -> Option<&FsmName> {
        match self {
            Self::Apply { fsm, .. }
            | Self::Query { fsm, .. }
            | Self::CreateFsm { fsm, .. }
            | Self::UpgradeFsm { fsm, .. }
            | Self::DropFsm { fsm, .. }
            | Self::SetLimits { fsm, .. } => Some(fsm),
            _ => None,
        }
    }

    /// The least role allowed to make this request.
    pub fn required_role(&self) -> Role {
        match self {
            Self::Query { .. }
            | Self::ListFsms
            | Self::ListModules
            | Self::Status
            | Self::Stages
            | Self::Features => Role::Reader,
            Self::Apply { .. } | Self::Batch { .. } | Self::OpenSession { .. } => Role::Writer,
            Self::Deploy { .. }
            | Self::CreateFsm { .. }
            | Self::UpgradeFsm { .. }
            | Self::DropFsm { .. }
            | Self::DropModule { .. }
            | Self::SetLimits { .. }
            | Self::Upload { .. }
            | Self::Backup
            | Self::Compact
            | Self::PrepareModule { .. }
            | Self::AddLearner { .. }
            | Self::Promote { .. }
            | Self::Remove { .. }
            | Self::TransferLeader { .. } => Role::Admin,
        }
    }
}
