//! The node's client API: who may do what, where writes and reads go, and admission control.
//!
//! * Roles come from the caller's certificate (`reader` < `writer` < `admin`).
//! * A follower forwards writes, linearizable/lease reads and membership operations to the
//!   leader as [`ApiRequest::Forwarded`] with the caller's role; the leader accepts a
//!   forwarded request only from a member node's certificate and checks the role again, so
//!   forwarding never widens what a caller may do (arc's forward-apply allowlist).
//! * Every proposal takes a slot of a bounded queue; when none is free the caller gets
//!   `QueueFull` at once instead of the node buffering without bound (Kommander).
//! * JSON is converted by the FSM's codecs here, at the edge; the log carries postcard.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{ChangeMembers, ReadPolicy, ServerState};
use tokio::sync::Semaphore;
use wraft_api::Role;
use wraft_api::{
    ApiCall, ApiCallRef, ApiError, ApiRequest, ApiResponse, ApiResult, ClusterStatus, Consistency,
    FsmInfo, ModuleInfo, NodeStatus, Payload,
};
use wraft_core::raft::{Node, NodeId};
use wraft_core::{Apply, ApplyError, Command, EntryResponse, FsmName, LogEntry};
use wraft_transport_quic::api::{self, ApiHandler, Caller};
use wraft_transport_quic::{ALPN_CLIENT, client_config, identity};

use crate::clock::now_ms;
use crate::raft::Raft;
use crate::runtime::EntryPoint;
use crate::state::{StateStore, module_id};

/// Proposals one node admits at once by default.
pub const DEFAULT_QUEUE: usize = 1024;

/// The client API of one node.
#[derive(Debug)]
pub struct NodeApi {
    id: NodeId,
    raft: Raft,
    store: Arc<StateStore>,
    queue: Arc<Semaphore>,
    /// Turns on the guest pool (see [`NodeApi::on_guest_thread`]), one lane for reads and
    /// one for writes, so a flood of queries never delays a write's codecs.
    guests: [Arc<Semaphore>; 2],
    /// Requests in progress per caller role (reader, writer, admin).
    in_progress: [Semaphore; 3],
    capacity: usize,
    forward: Forwarder,
    data_dir: std::path::PathBuf,
    removed: crate::raft::RemovedNodes,
    limits: crate::limits::NodeLimits,
}

struct Forwarder {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    conns: Mutex<HashMap<NodeId, quinn::Connection>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

/// A lane of the guest pool.
#[derive(Debug, Clone, Copy)]
enum Lane {
    Read = 0,
    Write = 1,
}

/// How long a forwarded request still waits for the old leader's answer once this node
/// knows another leader.
const ANSWER_AFTER_LEADER_MOVED: Duration = Duration::from_secs(1);

/// A write that may or may not have been applied, counted as such.
fn outcome_unknown(why: String) -> ApiError {
    crate::metrics::rejected("outcome_unknown");
    ApiError::OutcomeUnknown(why)
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(e.to_string())
}

impl NodeApi {
    /// The API of the node `config` describes, forwarding through `endpoint`; `removed`
    /// are the nodes its peers may no longer be.
    pub fn new(
        config: &crate::cluster::NodeConfig,
        raft: Raft,
        store: Arc<StateStore>,
        endpoint: quinn::Endpoint,
        removed: crate::raft::RemovedNodes,
    ) -> Result<Self, wraft_transport_quic::TransportError> {
        let forward = Forwarder {
            endpoint,
            config: client_config(&config.identity, ALPN_CLIENT)?,
            conns: Mutex::new(HashMap::new()),
        };
        let (capacity, limits) = (config.queue, config.limits.clone());
        Ok(Self {
            id: config.id,
            raft,
            store,
            queue: Arc::new(Semaphore::new(capacity)),
            guests: std::array::from_fn(|_| Arc::new(Semaphore::new(limits.guest_threads.max(1)))),
            in_progress: std::array::from_fn(|_| Semaphore::new(limits.requests_per_role)),
            capacity,
            forward,
            data_dir: config.data_dir.clone(),
            removed,
            limits,
        })
    }

    fn metrics(&self) -> openraft::RaftMetrics<wraft_core::raft::TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Whether the caller's certificate is that of a voter of the current membership: only
    /// voters forward requests to the leader.
    fn is_voter(&self, caller: &Caller) -> bool {
        let m = self.metrics();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        voters
            .into_iter()
            .any(|id| identity::is_node(&caller.connection, id))
    }

    /// Makes a read linearizable: `Ok` to answer it here, or `Err` with the leader's answer
    /// (the request forwarded) or why neither is possible.
    async fn read_barrier(
        &self,
        role: Role,
        request: &ApiRequest,
        policy: ReadPolicy,
    ) -> Result<(), ApiResult> {
        if !self.is_leader() {
            return Err(self.forward(role, request.clone()).await);
        }
        match self.raft.ensure_linearizable(policy).await {
            Ok(_) => Ok(()),
            Err(e) => Err(match e.forward_to_leader() {
                Some(_) => self.forward(role, request.clone()).await,
                None => Err(unavailable(e)),
            }),
        }
    }

    async fn serve(&self, role: Role, request: ApiRequest) -> ApiResult {
        match request {
            ApiRequest::Apply { .. }
            | ApiRequest::Batch { .. }
            | ApiRequest::Deploy { .. }
            | ApiRequest::CreateFsm { .. }
            | ApiRequest::UpgradeFsm { .. }
            | ApiRequest::SetLimits { .. }
            | ApiRequest::DropFsm { .. }
            | ApiRequest::DropModule { .. } => self.write(role, request).await,
            ApiRequest::Query {
                ref fsm,
                ref query,
                consistency,
            } => {
                // The `fault-stale-reads` feature breaks this on purpose (every read served
                // from local state), so the fault suite can show that it catches it.
                if consistency != Consistency::Stale && !cfg!(feature = "fault-stale-reads") {
                    let policy = match consistency {
                        Consistency::Lease => ReadPolicy::LeaseRead,
                        _ => ReadPolicy::ReadIndex,
                    };
                    if let Err(answer) = self.read_barrier(role, &request, policy).await {
                        return answer;
                    }
                }
                self.query(fsm, query).await
            }
            // Listings are linearizable too: a deploy or create acknowledged to anyone is
            // listed, whichever node answers.
            ApiRequest::ListFsms => {
                if let Err(answer) = self
                    .read_barrier(role, &request, ReadPolicy::ReadIndex)
                    .await
                {
                    return answer;
                }
                let fsms = self.store.fsms().map_err(unavailable)?;
                Ok(ApiResponse::Fsms(
                    fsms.into_iter()
                        .map(|(name, r)| FsmInfo {
                            name,
                            module_id: r.module_id,
                            limits: r.limits,
                        })
                        .collect(),
                ))
            }
            ApiRequest::ListModules => {
                if let Err(answer) = self
                    .read_barrier(role, &request, ReadPolicy::ReadIndex)
                    .await
                {
                    return answer;
                }
                let fsms = self.store.fsms().map_err(unavailable)?;
                let modules = self.store.modules().map_err(unavailable)?;
                Ok(ApiResponse::Modules(
                    modules
                        .into_iter()
                        .map(|(id, size)| ModuleInfo {
                            module_id: id,
                            size_bytes: size as u64,
                            fsms: fsms
                                .iter()
                                .filter(|(_, r)| r.module_id == id)
                                .map(|(name, _)| name.clone())
                                .collect(),
                        })
                        .collect(),
                ))
            }
            ApiRequest::Status => Ok(ApiResponse::Status(self.status())),
            ApiRequest::AddLearner { .. }
            | ApiRequest::Promote { .. }
            | ApiRequest::Remove { .. }
            | ApiRequest::TransferLeader { .. } => {
                if !self.is_leader() {
                    return self.forward(role, request).await;
                }
                self.manage(request).await
            }
            // The transport turns an upload into `Deploy` once its chunks have arrived.
            ApiRequest::Upload { .. } => Err(ApiError::BadRequest(
                "an upload's chunks must follow it on its stream".into(),
            )),
            // The transport streams a backup itself (see `ApiHandler::backup`).
            ApiRequest::Backup => Err(ApiError::BadRequest(
                "a backup is streamed on its own QUIC stream (`wraft backup`)".into(),
            )),
        }
    }

    fn is_leader(&self) -> bool {
        self.metrics().state == ServerState::Leader
    }

    /// Runs `call` (a guest call made for a caller: a query or a JSON codec) on a thread of
    /// the guest pool, so wasm never holds the async workers that carry raft's heartbeats;
    /// at most `guest_threads` run at once and the rest wait their turn.
    async fn on_guest_thread<T: Send + 'static>(
        &self,
        lane: Lane,
        call: impl FnOnce(&StateStore) -> Result<T, crate::state::StateError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _turn = self.guests[lane as usize]
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| unavailable("the node is shutting down"))?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || call(&store))
            .await
            .map_err(|e| unavailable(format!("guest call: {e}")))?
            .map_err(unavailable)
    }

    /// Runs one of `fsm`'s JSON codecs on `input` on the guest pool.
    async fn codec(
        &self,
        fsm: &FsmName,
        codec: EntryPoint,
        input: Vec<u8>,
    ) -> Result<Result<Vec<u8>, ApplyError>, ApiError> {
        let (fsm, max_output) = (fsm.clone(), self.codec_output_limit(codec));
        let lane = match codec {
            EntryPoint::QueryFromJson | EntryPoint::QueryOutputToJson => Lane::Read,
            _ => Lane::Write,
        };
        self.on_guest_thread(lane, move |store| {
            store.codec(&fsm, codec, &input, max_output)
        })
        .await
    }

    /// The largest output a codec may produce: a command or query headed for the log is
    /// bounded by the entry limit; JSON rendered from an output (hex and quoting at most
    /// double raw bytes, plus field names) by twice that.
    fn codec_output_limit(&self, codec: EntryPoint) -> usize {
        match codec {
            EntryPoint::CommandFromJson | EntryPoint::QueryFromJson => self.limits.max_entry_bytes,
            _ => 2 * self.limits.max_entry_bytes + (64 << 10),
        }
    }

    /// JSON → postcard through the FSM's codec. A new leader may not have applied the entry
    /// that created the FSM yet: if the codec cannot find it, catch up to the read index
    /// (every committed entry) and try once more before calling the request bad.
    async fn encode(
        &self,
        fsm: &FsmName,
        payload: &Payload,
        codec: EntryPoint,
    ) -> Result<Vec<u8>, ApiError> {
        let json = match payload {
            Payload::Postcard(b) => return Ok(b.clone()),
            Payload::Json(j) => j.as_bytes(),
        };
        let mut caught_up = false;
        loop {
            match self.codec(fsm, codec, json.to_vec()).await? {
                Ok(bytes) => return Ok(bytes),
                Err(ApplyError::UnknownFsm(_) | ApplyError::UnknownModule(_))
                    if !caught_up && self.is_leader() =>
                {
                    self.raft
                        .ensure_linearizable(ReadPolicy::ReadIndex)
                        .await
                        .map_err(unavailable)?;
                    caught_up = true;
                }
                Err(e @ ApplyError::UnknownFsm(_)) => return Err(ApiError::Failed(e)),
                Err(e) => return Err(ApiError::BadRequest(format!("{fsm}: {e}"))),
            }
        }
    }

    /// postcard → the request's encoding.
    async fn decode(
        &self,
        fsm: &FsmName,
        like: &Payload,
        bytes: Vec<u8>,
        codec: EntryPoint,
    ) -> Result<Payload, ApiError> {
        match like {
            Payload::Postcard(_) => Ok(Payload::Postcard(bytes)),
            Payload::Json(_) => match self.codec(fsm, codec, bytes).await? {
                Ok(json) => Ok(Payload::Json(String::from_utf8_lossy(&json).into_owned())),
                Err(e) => Err(ApiError::BadRequest(format!("{fsm}: output codec: {e}"))),
            },
        }
    }

    async fn query(&self, fsm: &FsmName, query: &Payload) -> ApiResult {
        let bytes = self.encode(fsm, query, EntryPoint::QueryFromJson).await?;
        let name = fsm.clone();
        let answer = self
            .on_guest_thread(Lane::Read, move |store| store.query(&name, &bytes))
            .await?;
        match answer {
            Ok(out) => Ok(ApiResponse::Output(
                self.decode(fsm, query, out, EntryPoint::QueryOutputToJson)
                    .await?,
            )),
            Err(e) => Err(ApiError::Failed(e)),
        }
    }

    async fn write(&self, role: Role, request: ApiRequest) -> ApiResult {
        if !self.is_leader() {
            return self.forward(role, request).await;
        }
        let Ok(_slot) = self.queue.try_acquire() else {
            crate::metrics::rejected("queue_full");
            return Err(ApiError::QueueFull {
                node: self.id,
                capacity: self.capacity,
            });
        };
        let marshal = std::time::Instant::now();
        let command = self.command(&request).await.inspect_err(|e| {
            if matches!(e, ApiError::BadRequest(_)) {
                crate::metrics::rejected("invalid");
            }
        })?;
        crate::metrics::seconds("commit_marshal_duration_seconds", marshal.elapsed());
        let entry = LogEntry::new(now_ms(), command);
        let len = entry.encoded_len();
        if len > self.limits.max_entry_bytes {
            crate::metrics::rejected("too_large");
            return Err(ApiError::BadRequest(format!(
                "the entry would be {len} bytes once encoded; node {} admits entries of at \
                 most {} bytes (--max-entry-bytes)",
                self.id, self.limits.max_entry_bytes
            )));
        }
        if let Command::Apply(a) = entry.command() {
            metrics::histogram!("commit_payload_size_bytes").record(a.payload.len() as f64);
        } else if let Command::Batch(b) = entry.command() {
            let size: usize = b.iter().map(|a| a.payload.len()).sum();
            metrics::histogram!("commit_payload_size_bytes").record(size as f64);
        }
        let replicate = std::time::Instant::now();
        let written = self.raft.client_write(entry).await;
        crate::metrics::seconds("commit_raft_apply_duration_seconds", replicate.elapsed());
        let response = match written {
            Ok(r) => r.data,
            // Refused before it was appended: the leader (if any) can take it.
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                return self.forward(role, request).await;
            }
            // Appended, then replaced when this node adopted another leader's log: the next
            // leader may have committed it. Forwarding it again could apply it twice (the
            // fault suite caught exactly that, seed 5002): the caller must find out first.
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(to))) => {
                tracing::warn!("a proposal's entry was discarded on a leader change: {to}");
                return Err(outcome_unknown(format!(
                    "node {} lost leadership before its entry committed; it may still have \
                     been committed by the next leader",
                    self.id
                )));
            }
            // Raft stopped (shutdown, a storage fault) with the proposal in flight: it may
            // have been appended and may yet commit elsewhere.
            Err(RaftError::Fatal(e)) => {
                return Err(outcome_unknown(format!(
                    "node {} stopped with the write in flight: {e}",
                    self.id
                )));
            }
            Err(e) => return Err(unavailable(e)),
        };
        match (response, &request) {
            (EntryResponse::Failed(e), _) => Err(ApiError::Failed(e)),
            (EntryResponse::Output(out), ApiRequest::Apply { fsm, command }) => {
                let out = self
                    .decode(fsm, command, out, EntryPoint::OutputToJson)
                    .await?;
                Ok(ApiResponse::Output(out))
            }
            (EntryResponse::BatchOutputs(outs), ApiRequest::Batch { commands }) => {
                let mut decoded = Vec::with_capacity(outs.len());
                for (out, (fsm, c)) in outs.into_iter().zip(commands) {
                    decoded.push(self.decode(fsm, c, out, EntryPoint::OutputToJson).await?);
                }
                Ok(ApiResponse::BatchOutputs(decoded))
            }
            (EntryResponse::Done, ApiRequest::Deploy { bytes }) => {
                Ok(ApiResponse::Deployed(module_id(bytes)))
            }
            (EntryResponse::Done, _) => Ok(ApiResponse::Done),
            (other, _) => Err(unavailable(format!("unexpected entry response {other:?}"))),
        }
    }

    /// The log command for a write request (JSON converted by the FSM's codec; a module
    /// validated before it may enter the log).
    async fn command(&self, request: &ApiRequest) -> Result<Command, ApiError> {
        Ok(match request {
            ApiRequest::Apply { fsm, command } => Command::Apply(Apply {
                fsm: fsm.clone(),
                payload: self
                    .encode(fsm, command, EntryPoint::CommandFromJson)
                    .await?,
            }),
            ApiRequest::Batch { commands } => {
                let max = self.limits.max_batch_commands;
                if commands.len() > max {
                    return Err(ApiError::BadRequest(format!(
                        "a batch of {} commands; node {} admits at most {max} per batch \
                         (--max-batch-commands)",
                        commands.len(),
                        self.id
                    )));
                }
                let mut applies = Vec::with_capacity(commands.len());
                let mut bytes = 0;
                for (fsm, c) in commands {
                    let payload = self.encode(fsm, c, EntryPoint::CommandFromJson).await?;
                    // Stop encoding once the entry cannot fit (a codec may turn a few bytes
                    // of JSON into much more): the exact check follows on the whole entry.
                    bytes += payload.len();
                    if bytes > self.limits.max_entry_bytes {
                        return Err(ApiError::BadRequest(format!(
                            "the batch's commands encode to more than {} bytes by command {} \
                             of {}; node {} admits entries of at most that (--max-entry-bytes)",
                            self.limits.max_entry_bytes,
                            applies.len() + 1,
                            commands.len(),
                            self.id
                        )));
                    }
                    applies.push(Apply {
                        fsm: fsm.clone(),
                        payload,
                    });
                }
                Command::Batch(applies)
            }
            ApiRequest::Deploy { bytes } => {
                // Refuse an invalid module before it enters the log; compiling takes a
                // thread of its own, never an async worker.
                let (store, module) = (self.store.clone(), bytes.clone());
                let module_id = tokio::task::spawn_blocking(move || store.prepare_module(&module))
                    .await
                    .map_err(|e| unavailable(format!("compiling the module: {e}")))?
                    .map_err(unavailable)?
                    .map_err(|e| ApiError::BadRequest(format!("invalid module: {e}")))?;
                Command::DeployModule {
                    module_id,
                    bytes: bytes.clone(),
                }
            }
            ApiRequest::CreateFsm {
                fsm,
                module_id,
                limits,
            } => Command::CreateFsm {
                fsm: fsm.clone(),
                module_id: *module_id,
                limits: *limits,
            },
            ApiRequest::SetLimits { fsm, limits } => Command::SetLimits {
                fsm: fsm.clone(),
                limits: *limits,
            },
            ApiRequest::UpgradeFsm { fsm, module_id } => Command::UpgradeFsm {
                fsm: fsm.clone(),
                module_id: *module_id,
            },
            ApiRequest::DropFsm { fsm } => Command::DropFsm { fsm: fsm.clone() },
            ApiRequest::DropModule { module_id } => Command::DropModule {
                module_id: *module_id,
            },
            _ => return Err(ApiError::BadRequest("not a write".into())),
        })
    }

    async fn manage(&self, request: ApiRequest) -> ApiResult {
        let written = match request {
            ApiRequest::AddLearner { id, addr } => {
                self.raft.add_learner(id, Node::new(addr), true).await
            }
            ApiRequest::Promote { id } => {
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
            }
            ApiRequest::Remove { id } => {
                let voters = self
                    .raft
                    .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                    .await;
                match voters {
                    Ok(_) => {
                        self.raft
                            .change_membership(
                                ChangeMembers::RemoveNodes(BTreeSet::from([id])),
                                false,
                            )
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
            ApiRequest::TransferLeader { to } => return self.transfer_leader(to).await,
            _ => return Err(ApiError::BadRequest("not a management request".into())),
        };
        match written {
            Ok(_) => Ok(ApiResponse::Done),
            // Refused before anything was appended (leadership moved while the request was
            // on its way): nothing happened, and the client retries NoLeader.
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(ApiError::NoLeader)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Hands leadership to `to` (or the most caught-up other voter) and reports who leads
    /// afterwards: the real outcome, not a timeout.
    async fn transfer_leader(&self, to: Option<NodeId>) -> ApiResult {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        // Passive voters never lead: not a target, explicit or chosen.
        let voters: Vec<NodeId> = membership
            .voter_ids()
            .filter(|v| *v != self.id)
            .filter(|v| {
                membership
                    .get_node(v)
                    .is_none_or(|n| !crate::voter::is_passive(&n.addr))
            })
            .collect();
        let target = match to {
            Some(t) if t == self.id => return Ok(ApiResponse::Leader(self.id)),
            Some(t) if voters.contains(&t) => t,
            Some(t) => {
                return Err(ApiError::BadRequest(format!(
                    "node {t} is not a voter that can lead"
                )));
            }
            None => {
                let matched: BTreeMap<NodeId, u64> = m
                    .replication
                    .as_ref()
                    .map(|r| {
                        r.iter()
                            .map(|(id, l)| (*id, l.as_ref().map_or(0, |l| l.index)))
                            .collect()
                    })
                    .unwrap_or_default();
                *voters
                    .iter()
                    .max_by_key(|v| matched.get(v).copied().unwrap_or(0))
                    .ok_or_else(|| {
                        ApiError::BadRequest("no other voter to hand leadership to".into())
                    })?
            }
        };
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(unavailable)?;
        let settled = self
            .raft
            .wait(Some(Duration::from_secs(5)))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != self.id),
                "leadership moved",
            )
            .await;
        match settled {
            Ok(m) => Ok(ApiResponse::Leader(m.current_leader.unwrap_or(target))),
            Err(_) => match self.metrics().current_leader {
                Some(l) => Ok(ApiResponse::Leader(l)),
                None => Err(ApiError::NoLeader),
            },
        }
    }

    /// The cluster as this node sees it.
    /// Why this node must not serve reads, if a checkpoint found its state diverged (or the
    /// record cannot be read).
    pub fn divergence(&self) -> Option<String> {
        match self.store.divergence() {
            Ok(d) => d.map(|d| d.to_string()),
            Err(e) => Some(e.to_string()),
        }
    }

    pub fn status(&self) -> ClusterStatus {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let matched = m.replication.clone().unwrap_or_default();
        ClusterStatus {
            node: self.id,
            state: format!("{:?}", m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log: m.last_log_index,
            committed: m.local_committed.map(|l| l.index),
            applied: m.last_applied.map(|l| l.index),
            nodes: membership
                .nodes()
                .map(|(id, node)| NodeStatus {
                    id: *id,
                    addr: node.addr.clone(),
                    membership: if voters.contains(id) {
                        "voter"
                    } else {
                        "learner"
                    }
                    .into(),
                    matched: matched.get(id).and_then(|l| l.map(|l| l.index)),
                })
                .collect(),
        }
    }

    /// Sends `request` to the leader on behalf of a caller with `role`.
    async fn forward(&self, role: Role, request: ApiRequest) -> ApiResult {
        let m = self.metrics();
        let Some(leader) = m.current_leader.filter(|l| *l != self.id) else {
            return Err(ApiError::NoLeader);
        };
        let Some(addr) = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
        else {
            return Err(ApiError::NoLeader);
        };
        // A read may be sent again: if the cached connection broke (the leader restarted, a
        // partition healed), dial once more before giving up. A write may not: it may have
        // been applied before the connection broke.
        let idempotent = matches!(
            request,
            ApiRequest::Query { .. }
                | ApiRequest::ListFsms
                | ApiRequest::ListModules
                | ApiRequest::Status
        );
        let forwarded = ApiCallRef::Forwarded {
            role,
            request: &request,
        };
        let mut attempts = if idempotent { 2 } else { 1 };
        loop {
            attempts -= 1;
            // Nothing was sent if the leader cannot be reached: the caller may retry anything
            // (the leader this node knows has likely died, and an election is under way).
            let conn = self.forward.connection(leader, &addr).await.map_err(|e| {
                tracing::debug!("leader {leader} unreachable for forwarding: {e}");
                ApiError::NoLeader
            })?;
            let (send, recv) = match conn.open_bi().await {
                Ok(stream) => stream,
                Err(e) => {
                    // Nothing was sent: any request may be sent again.
                    tracing::debug!("forwarding to leader {leader}: no stream ({e})");
                    conn.close(0u32.into(), b"broken; dialing again");
                    if attempts > 0 {
                        continue;
                    }
                    return Err(ApiError::NoLeader);
                }
            };
            // A leader that stops answering (a crash, a pause, a partition) is replaced by an
            // election long before its connection times out (10 s): stop waiting once this
            // node knows another leader. A read is then retried there by the client; a write
            // may have been applied.
            let waiter = self.raft.wait(None);
            let moved = waiter.metrics(
                |m| m.current_leader.is_some_and(|l| l != leader),
                "another leader",
            );
            let exchange = api::exchange(send, recv, forwarded);
            tokio::pin!(exchange);
            let answer = tokio::select! {
                answer = &mut exchange => answer,
                _ = moved => {
                    // The old leader may still answer: a transfer it carried out, a write it
                    // committed just before it stepped down.
                    match tokio::time::timeout(ANSWER_AFTER_LEADER_MOVED, &mut exchange).await {
                        Ok(answer) => answer,
                        Err(_) if idempotent => return Err(ApiError::NoLeader),
                        Err(_) => {
                            return Err(outcome_unknown(format!(
                                "forwarded to leader {leader}, which lost leadership before \
                                 it answered: it may have been applied"
                            )));
                        }
                    }
                }
            };
            match answer {
                Ok(answer) => return answer,
                Err(e) if attempts > 0 => {
                    tracing::debug!("forwarding to leader {leader} broke ({e}); dialing again");
                    conn.close(0u32.into(), b"broken; dialing again");
                }
                Err(e) if idempotent => {
                    return Err(unavailable(format!("forwarding to leader {leader}: {e}")));
                }
                // The leader may have received the write and applied it before the
                // connection broke: the caller must read before resending, as after a
                // discarded entry.
                Err(e) => {
                    return Err(outcome_unknown(format!(
                        "forwarded to leader {leader}, then {e}: it may have been applied"
                    )));
                }
            }
        }
    }
}

impl Forwarder {
    async fn connection(&self, leader: NodeId, addr: &str) -> Result<quinn::Connection, String> {
        let cached = self
            .conns
            .lock()
            .map_err(|e| e.to_string())?
            .get(&leader)
            .cloned();
        if let Some(c) = cached.filter(|c| c.close_reason().is_none()) {
            return Ok(c);
        }
        let name = wraft_transport_quic::pki::node_name(leader);
        let conn = wraft_transport_quic::dial(
            &self.endpoint,
            &self.config,
            addr,
            &name,
            Duration::from_secs(3),
        )
        .await
        .map_err(|e| e.to_string())?;
        self.conns
            .lock()
            .map_err(|e| e.to_string())?
            .insert(leader, conn.clone());
        Ok(conn)
    }
}

impl ApiHandler for NodeApi {
    async fn handle(&self, caller: Caller, call: ApiCall) -> ApiResult {
        let (role, request) = match call {
            ApiCall::Forwarded { role, request } => {
                if !self.is_voter(&caller) {
                    return Err(ApiError::NotAllowed {
                        needed: Role::Admin,
                        have: caller.role,
                    });
                }
                (Some(role), request)
            }
            ApiCall::Direct(request) => (caller.role, request),
        };
        self.serve_as(role, request).await
    }

    fn admits_peer(&self, id: NodeId) -> Result<(), String> {
        if self.removed.contains(id) {
            return Err(format!(
                "node {id} was removed from the cluster; its certificate is refused \
                 (add it again with `wraft cluster add-learner` to readmit it)"
            ));
        }
        Ok(())
    }

    async fn backup(&self) -> Result<wraft_api::BackupFile, ApiError> {
        let (store, id, dir) = (self.store.clone(), self.id, self.data_dir.clone());
        let started = std::time::Instant::now();
        let taken = tokio::task::spawn_blocking(move || crate::ops::backup::take(&store, id, &dir))
            .await
            .map_err(|e| ApiError::Unavailable(format!("backup task: {e}")))?
            .map_err(|e| ApiError::Unavailable(format!("backup failed: {e}")))?;
        tracing::info!(
            applied = taken.manifest.applied_index,
            bytes = taken.manifest.file_bytes,
            "backup copy taken in {:?}",
            started.elapsed()
        );
        Ok(taken)
    }
}

impl NodeApi {
    /// Answers `request` for a caller holding `role` (a client certificate's, or an HTTP
    /// token's), refusing it if the role is not enough.
    pub async fn serve_as(&self, role: Option<Role>, request: ApiRequest) -> ApiResult {
        let needed = request.required_role();
        match role {
            Some(role) if role >= needed => {
                let Ok(_slot) = self.in_progress[role as usize].try_acquire() else {
                    crate::metrics::rejected("busy");
                    return Err(ApiError::Busy(format!(
                        "node {} is serving its limit of {} {role:?} requests at once \
                         (--max-requests-per-role)",
                        self.id, self.limits.requests_per_role
                    )));
                };
                self.serve(role, request).await
            }
            have => {
                crate::metrics::rejected("not_allowed");
                Err(ApiError::NotAllowed { needed, have })
            }
        }
    }
}
