//! The client API (ALPN `wraft-client/1`): one bidirectional stream per request, one
//! [`ApiRequest`] frame in, one `Result<ApiResponse, ApiError>` frame out.

use serde::{Deserialize, Serialize};
use wraft_core::raft::NodeId;
use wraft_core::{ApplyError, FsmLimits, FsmName, ModuleId};

use crate::pki::Role;
use crate::wire::{self, WireError};

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
    },
    /// Apply commands as one atomic `Batch` entry (writer).
    Batch {
        /// (FSM, command) pairs, in order.
        commands: Vec<(FsmName, Payload)>,
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

    /// The least role allowed to make this request.
    pub fn required_role(&self) -> Role {
        match self {
            Self::Query { .. } | Self::ListFsms | Self::ListModules | Self::Status => Role::Reader,
            Self::Apply { .. } | Self::Batch { .. } => Role::Writer,
            Self::Deploy { .. }
            | Self::CreateFsm { .. }
            | Self::UpgradeFsm { .. }
            | Self::DropFsm { .. }
            | Self::DropModule { .. }
            | Self::SetLimits { .. }
            | Self::Upload { .. }
            | Self::Backup
            | Self::AddLearner { .. }
            | Self::Promote { .. }
            | Self::Remove { .. }
            | Self::TransferLeader { .. } => Role::Admin,
        }
    }
}

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

/// A backup file ready to stream; the server deletes it once sent (or on failure).
#[derive(Debug)]
pub struct BackupFile {
    /// Its manifest.
    pub manifest: BackupManifest,
    /// The copy on the node's disk.
    pub path: std::path::PathBuf,
}

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApiError {
    /// The entry was applied and failed deterministically (the same on every node).
    #[error("{0}")]
    Failed(ApplyError),
    /// The caller's certificate does not carry the role the request needs.
    #[error("not allowed: this request needs the {needed:?} role; the caller has {have:?}")]
    NotAllowed {
        /// The role needed.
        needed: Role,
        /// The caller's role, if any.
        have: Option<Role>,
    },
    /// The node's proposal queue is full: retry later.
    #[error("queue full: node {node} has {capacity} proposals in flight; retry later")]
    QueueFull {
        /// The node.
        node: NodeId,
        /// Its queue capacity.
        capacity: usize,
    },
    /// There is no leader right now (an election is under way): retry.
    #[error("no leader right now; retry")]
    NoLeader,
    /// The request is malformed (bad JSON, unknown FSM for a codec, invalid module, ...).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The node could not serve it (storage fault, shutting down, leader unreachable).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The write may or may not have been applied: it was appended to the log and the node
    /// lost leadership before it committed (the next leader may commit it), or a follower
    /// forwarded it to the leader and the connection broke before the answer. Read before
    /// resending: a blind retry could apply it twice.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The node has as much work of this kind in progress as it admits (a bound on
    /// concurrent requests, in-flight bytes or connections): retry later, or elsewhere.
    /// Nothing was done.
    #[error("busy: {0}; retry later")]
    Busy(String),
}

/// A response frame.
pub type ApiResult = Result<ApiResponse, ApiError>;

/// Who sent a request, as their certificate says.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The client role in the certificate, if it is a client certificate.
    pub role: Option<Role>,
    /// The connection (to check node identities).
    pub connection: quinn::Connection,
}

/// Serves client API requests (implemented by the node).
pub trait ApiHandler: Send + Sync + 'static {
    /// Answers one call.
    fn handle(&self, caller: Caller, call: ApiCall) -> impl Future<Output = ApiResult> + Send;

    /// Whether node `id` may send this node raft RPCs: `Err` says why not (it was removed
    /// from the cluster). Asked when a peer introduces itself and for every RPC after.
    fn admits_peer(&self, id: NodeId) -> Result<(), String>;

    /// Takes a consistent copy of the node's state for [`ApiRequest::Backup`] (the caller's
    /// role is checked before).
    fn backup(&self) -> impl Future<Output = Result<BackupFile, ApiError>> + Send;
}

/// Streams a backup to the caller: the manifest frame, then the file as chunks.
pub async fn send_backup(
    send: &mut quinn::SendStream,
    backup: &BackupFile,
) -> Result<(), WireError> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(&backup.path)
        .await
        .map_err(|e| WireError::Frame(format!("backup file: {e}")))?;
    let answer: ApiResult = Ok(ApiResponse::Backup(backup.manifest.clone()));
    wire::send(send, &answer).await?;
    let mut left = backup.manifest.file_bytes;
    let mut buf = vec![0u8; UPLOAD_CHUNK];
    while left > 0 {
        let want = buf.len().min(left as usize);
        file.read_exact(&mut buf[..want])
            .await
            .map_err(|e| WireError::Frame(format!("backup file: {e}")))?;
        wire::send(send, &wire::Chunk(buf[..want].to_vec())).await?;
        left -= want as u64;
    }
    send.finish()?;
    Ok(())
}

/// Asks the node at the other end of `conn` for a backup; writes its bytes to `out` and
/// calls `progress(received, total)` after each chunk. Returns the manifest; the caller
/// checks the bytes against it.
pub async fn receive_backup(
    conn: &quinn::Connection,
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut progress: impl FnMut(u64, u64),
) -> Result<Result<BackupManifest, ApiError>, WireError> {
    use tokio::io::AsyncWriteExt;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| WireError::Frame(format!("open stream: {e}")))?;
    wire::send(&mut send, &ApiCallRef::Direct(&ApiRequest::Backup)).await?;
    send.finish()?;
    let manifest = match wire::recv::<ApiResult>(&mut recv, MAX_REPLY).await? {
        Ok(ApiResponse::Backup(m)) => m,
        Ok(other) => return Err(WireError::Frame(format!("unexpected answer {other:?}"))),
        Err(e) => return Ok(Err(e)),
    };
    let mut received = 0u64;
    while received < manifest.file_bytes {
        let wire::Chunk(chunk) = wire::recv(&mut recv, wire::MAX_CHUNK_FRAME).await?;
        received += chunk.len() as u64;
        if received > manifest.file_bytes {
            return Err(WireError::Frame("backup longer than announced".into()));
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| WireError::Frame(format!("writing the backup: {e}")))?;
        progress(received, manifest.file_bytes);
    }
    out.flush()
        .await
        .map_err(|e| WireError::Frame(format!("writing the backup: {e}")))?;
    Ok(Ok(manifest))
}

/// Uploads `bytes` as a module on a new stream of `conn`, calling `progress(sent, total)`
/// after each chunk, and reads the answer (the deployed module's id).
pub async fn upload(
    conn: &quinn::Connection,
    bytes: &[u8],
    mut progress: impl FnMut(u64, u64),
) -> Result<ApiResult, WireError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| WireError::Frame(format!("open stream: {e}")))?;
    let total = bytes.len() as u64;
    let sending = async {
        let request = ApiRequest::Upload { len: total };
        wire::send(&mut send, &ApiCallRef::Direct(&request)).await?;
        let mut sent = 0u64;
        for chunk in bytes.chunks(UPLOAD_CHUNK) {
            wire::send(&mut send, &wire::Chunk(chunk.to_vec())).await?;
            sent += chunk.len() as u64;
            progress(sent, total);
        }
        send.finish()?;
        Ok::<_, WireError>(())
    };
    let sent = sending.await;
    // A refusal (role, size) arrives before the server reads the chunks and stops the
    // stream; its answer says why, so read it even when sending failed.
    match (wire::recv(&mut recv, MAX_REPLY).await, sent) {
        (Ok(answer), _) => Ok(answer),
        (Err(_), Err(e)) | (Err(e), Ok(())) => Err(e),
    }
}

/// Reads the chunks of an [`ApiRequest::Upload`] of `len` bytes by a caller with `role`.
pub async fn receive_upload(
    recv: &mut quinn::RecvStream,
    role: Option<Role>,
    len: u64,
) -> Result<Vec<u8>, ApiError> {
    ApiRequest::Upload { len }.authorize(role)?;
    if len > MAX_UPLOAD_BYTES {
        return Err(ApiError::BadRequest(format!(
            "invalid module: {len} bytes; the limit is {MAX_UPLOAD_BYTES}"
        )));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    while (bytes.len() as u64) < len {
        let wire::Chunk(chunk) = wire::recv(recv, wire::MAX_CHUNK_FRAME)
            .await
            .map_err(|e| ApiError::BadRequest(format!("upload cut short: {e}")))?;
        if bytes.len() as u64 + chunk.len() as u64 > len {
            return Err(ApiError::BadRequest("upload longer than announced".into()));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Largest answer a client reads (it grows with the bytes that arrive): well past any
/// output an FSM's limits allow.
pub const MAX_REPLY: usize = 1 << 30;

/// Sends one request on a new stream of `conn` and reads its answer.
pub async fn call(conn: &quinn::Connection, request: &ApiRequest) -> Result<ApiResult, WireError> {
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| WireError::Frame(format!("open stream: {e}")))?;
    exchange(send, recv, ApiCallRef::Direct(request)).await
}

/// Sends one call on a stream the caller opened (so it knows nothing was sent if that
/// failed) and reads its answer.
pub async fn exchange(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    call: ApiCallRef<'_>,
) -> Result<ApiResult, WireError> {
    wire::send(&mut send, &call).await?;
    send.finish()?;
    wire::recv(&mut recv, MAX_REPLY).await
}
