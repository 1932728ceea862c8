//! The node's client API: who may do what, where writes and reads go, and admission control.
//!
//! * Roles come from the caller's certificate (`reader` < `writer` < `admin`).
//! * A follower forwards writes, linearizable/lease reads and membership operations to the
//!   leader as `ApiCall::Forwarded` with the caller's role; the leader accepts a forwarded
//!   request only from a voter's certificate and checks the role again, so forwarding never
//!   widens what a caller may do (arc's forward-apply allowlist): [`forward`].
//! * Every proposal takes a slot of a bounded queue; when none is free the caller gets
//!   `QueueFull` at once instead of the node buffering without bound (Kommander).
//! * JSON is converted by the FSM's codecs here, at the edge; the log carries postcard; queries
//!   and codecs run on the guest pool: [`guest`].
//! * The path of a write, top to bottom: [`write`]; client writes waiting for the leader at
//!   the same moment share one log entry: [`propose`]. Membership and leadership: [`admin`].

mod admin;
mod forward;
mod guest;
pub(crate) mod level;
mod prepare;
pub mod propose;
mod write;

use forward::Forwarder;

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{ReadPolicy, ServerState};
use tokio::sync::Semaphore;
use wraft_api::Role;
use wraft_api::{
    ApiCall, ApiError, ApiRequest, ApiResponse, ApiResult, ClusterStatus, Consistency, FsmInfo,
    ModuleInfo, NodeStatus, StageLatency,
};
use wraft_core::raft::NodeId;
use wraft_transport_quic::api::{ApiHandler, Caller};
use wraft_transport_quic::{ALPN_CLIENT, client_config, identity};

use crate::raft::Raft;
use crate::state::StateStore;

/// Proposals one node admits at once by default.
pub const DEFAULT_QUEUE: usize = 1024;

/// The client API of one node.
#[derive(Debug)]
pub struct NodeApi {
    id: NodeId,
    raft: Raft,
    store: Arc<StateStore>,
    queue: Arc<Semaphore>,
    /// Groups client writes into log entries (the leader's).
    proposer: propose::Proposer,
    /// The entry level this node reads, and the one its members all read while it leads.
    levels: Arc<level::EntryLevels>,
    /// Turns on the guest pool (see [`NodeApi::on_guest_thread`]), one lane for reads and
    /// one for writes, so a flood of queries never delays a write's codecs.
    guests: [Arc<Semaphore>; 2],
    /// The guest pool's threads: one per turn of both lanes.
    guest_pool: Arc<rayon_core::ThreadPool>,
    /// Requests in progress per caller role (reader, writer, admin).
    in_progress: [Semaphore; 3],
    capacity: usize,
    forward: Arc<Forwarder>,
    data_dir: std::path::PathBuf,
    /// What compacting the raft env would give back, as its writer last measured it.
    log_reclaimable: crate::disk::Reclaimable,
    removed: crate::raft::RemovedNodes,
    limits: crate::limits::NodeLimits,
    /// Requests this node has answered: the id of a request that brings none.
    requests: std::sync::atomic::AtomicU64,
    /// Set while an online compaction of this node's state env runs: a second is refused.
    compacting: std::sync::atomic::AtomicBool,
    /// Set while this node compiles a module its leader sent ahead of the deploy entry: a
    /// second is answered `Busy` ([`prepare`]).
    preparing: Arc<std::sync::atomic::AtomicBool>,
    /// Set while this node, leading, sends a module to its members ahead of its deploy: a
    /// second deploy meanwhile is not sent ahead.
    sending_ahead: Arc<std::sync::atomic::AtomicBool>,
}

/// The id of a request that came without one: `n<node>-<count>`.
struct NodeRequest(NodeId, u64);

impl std::fmt::Display for NodeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "n{}-{}", self.0, self.1)
    }
}

/// How a request ended, for its log line: `ok`, or the refusal's message quoted and escaped
/// (it may quote what the caller sent: escaped, it cannot forge a line of the text log).
struct Outcome<'a>(Option<&'a ApiError>);

impl std::fmt::Display for Outcome<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("ok"),
            Some(e) => write!(f, "{:?}", e.to_string()),
        }
    }
}

/// A request that takes longer is logged at `warn` with its span ([`NodeApi::serve_traced`]).
pub const SLOW_REQUEST: std::time::Duration = std::time::Duration::from_secs(1);

/// A write that may or may not have been applied, counted as such.
fn outcome_unknown(why: String) -> ApiError {
    crate::metrics::rejected("outcome_unknown");
    ApiError::OutcomeUnknown(why)
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(e.to_string())
}

/// The members of the membership in `m` other than `me` that hold entries and run modules,
/// with their addresses: passive voters (microcontrollers) are sent log ids only.
fn members_with_entries(
    m: &openraft::RaftMetrics<wraft_core::raft::TypeConfig>,
    me: NodeId,
) -> Vec<(NodeId, String)> {
    m.membership_config
        .membership()
        .nodes()
        .filter(|(id, n)| **id != me && !crate::voter::is_passive(&n.addr))
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect()
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
        log_reclaimable: crate::disk::Reclaimable,
    ) -> Result<Self, crate::cluster::NodeError> {
        let forward = Arc::new(Forwarder::new(
            endpoint,
            client_config(&config.identity, ALPN_CLIENT)?,
        ));
        let (capacity, limits) = (config.queue, config.limits.clone());
        let levels = Arc::new(level::EntryLevels::new(config.entry_level));
        Ok(Self {
            id: config.id,
            proposer: propose::Proposer::start(
                raft.clone(),
                limits.max_entry_bytes,
                levels.clone(),
            ),
            levels,
            raft,
            store,
            queue: Arc::new(Semaphore::new(capacity)),
            guests: [limits.guest_threads, limits.codec_threads]
                .map(|n| Arc::new(Semaphore::new(n.max(1)))),
            guest_pool: Arc::new(guest_pool(&limits)?),
            in_progress: std::array::from_fn(|_| Semaphore::new(limits.requests_per_role)),
            capacity,
            forward,
            data_dir: config.data_dir.clone(),
            log_reclaimable,
            removed,
            limits,
            requests: std::sync::atomic::AtomicU64::new(0),
            compacting: std::sync::atomic::AtomicBool::new(false),
            preparing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            sending_ahead: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    /// A new request id of this node's: `n<node>-<count>`.
    pub fn request_id(&self) -> String {
        self.next_request().to_string()
    }

    /// The next of this node's request ids, not yet formatted.
    fn next_request(&self) -> NodeRequest {
        let n = self
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        NodeRequest(self.id, n)
    }

    /// This node's LMDB envs (`raft`, `state`) for `/metrics`: each one's data file, and the
    /// bytes compacting it would give back (`None`: the state env could not be read).
    pub async fn envs(&self) -> [(&'static str, std::path::PathBuf, Option<u64>); 2] {
        let state = self
            .off_worker(|store| store.reclaimable_bytes())
            .await
            .ok();
        [
            (
                "raft",
                self.data_dir.join("raft").join("data.mdb"),
                Some(self.log_reclaimable.bytes()),
            ),
            ("state", self.store.path().join("data.mdb"), state),
        ]
    }

    /// Runs `read`, a call on the state store, on a blocking thread. Any state transaction
    /// can wait behind a growth of the env's map (`state/map.rs`), and that wait must not
    /// hold an async worker that carries raft's heartbeats. For callers already bounded in
    /// number: an HTTP request (at most `--http-max-connections` at once), a listing (at
    /// most `--max-requests-per-role`); tokio's blocking pool caps the threads. (Guest calls
    /// run on the guest pool instead: [`NodeApi::on_guest_thread`].)
    pub(super) async fn off_worker<T: Send + 'static>(
        &self,
        read: impl FnOnce(&StateStore) -> Result<T, crate::state::StateError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || read(&store))
            .await
            .map_err(|e| unavailable(format!("state call: {e}")))?
            .map_err(unavailable)
    }

    /// Proposals holding a slot of this node's queue now (proposed, not yet answered).
    pub fn queue_depth(&self) -> usize {
        self.capacity.saturating_sub(self.queue.available_permits())
    }

    fn metrics(&self) -> openraft::RaftMetrics<wraft_core::raft::TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Whether the caller's certificate is that of a voter of the current membership: only
    /// voters forward requests to the leader.
    fn is_voter(&self, caller: &Caller) -> bool {
        let voters: Vec<NodeId> = self
            .raft
            .server_metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
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

    /// Sends `request`, from a caller whose `role` allows it, to where it is served.
    async fn dispatch(&self, role: Role, request: ApiRequest) -> ApiResult {
        match request {
            ApiRequest::Apply { .. }
            | ApiRequest::Batch { .. }
            | ApiRequest::OpenSession { .. }
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
                let fsms = self.off_worker(|store| store.fsms()).await?;
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
                let (fsms, modules) = self
                    .off_worker(|store| Ok((store.fsms()?, store.modules()?)))
                    .await?;
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
            ApiRequest::Stages => Ok(ApiResponse::Stages(self.stages().await?)),
            ApiRequest::Features => Ok(ApiResponse::Features(self.features())),
            ApiRequest::Compact => self.compact().await,
            ApiRequest::PrepareModule { bytes } => self.prepare_module(bytes).await,
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

    /// Asked on every request: a look at the server's metrics, not a copy of all of raft's.
    fn is_leader(&self) -> bool {
        self.raft.server_metrics().borrow_watched().state == ServerState::Leader
    }

    /// Why this node must not serve reads, if a checkpoint found its state diverged (or the
    /// record cannot be read).
    pub async fn divergence(&self) -> Option<String> {
        match self.off_worker(|store| store.divergence()).await {
            Ok(d) => d.map(|d| d.to_string()),
            Err(e) => Some(e.to_string()),
        }
    }

    /// Where this node's recent log entries spent their time (openraft's log-stage
    /// statistics, over its last 1024 batches).
    pub async fn stages(&self) -> Result<Vec<StageLatency>, ApiError> {
        let stats = self.raft.runtime_stats().await.map_err(unavailable)?;
        let h = &stats.log_stage_histograms;
        let stages = [
            ("proposed_to_received", &h.proposed_to_received),
            ("received_to_submitted", &h.received_to_submitted),
            ("submitted_to_persisted", &h.submitted_to_persisted),
            ("persisted_to_committed", &h.persisted_to_committed),
            ("committed_to_applied", &h.committed_to_applied),
            ("proposed_to_applied", &h.proposed_to_applied),
        ];
        Ok(stages
            .into_iter()
            .map(|(stage, h)| {
                let p = h.percentile_stats();
                StageLatency {
                    stage: stage.into(),
                    entries: p.samples,
                    p50_us: p.p50,
                    p90_us: p.p90,
                    p99_us: p.p99,
                }
            })
            .collect())
    }

    /// The cluster as this node sees it.
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
}

/// The threads guest calls made for callers run on: as many as both lanes' turns, so a call
/// that has its turn never waits for a thread. A pool of its own rather than tokio's
/// blocking pool: the blocking pool starts a thread whenever none is idle at that instant
/// and keeps each for 10 s, and under 256 HTTP clients a leader held ~150 of them, each woken
/// from sleep for a codec call (context switches were ~14% of the leader's CPU); rayon's
/// workers are fixed in number and look for the next call before they sleep
/// (docs/benchmarks.md). Calls on it never compile ([`NodeApi::on_guest_thread`]).
fn guest_pool(
    limits: &crate::limits::NodeLimits,
) -> Result<rayon_core::ThreadPool, crate::cluster::NodeError> {
    rayon_core::ThreadPoolBuilder::new()
        .num_threads(limits.guest_threads.max(1) + limits.codec_threads.max(1))
        .thread_name(|i| format!("guest-{i}"))
        // Room for wasm's stack (`max_wasm_stack`, 1 MiB) and the host's frames under it,
        // as on tokio's blocking threads.
        .stack_size(2 << 20)
        // A panic in a call drops its answer's sender: the caller hears `Unavailable`.
        .panic_handler(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            tracing::error!("a guest call panicked: {why}");
        })
        .build()
        .map_err(|e| crate::cluster::NodeError::GuestPool(e.to_string()))
}

impl ApiHandler for NodeApi {
    async fn handle(&self, caller: Caller, call: ApiCall) -> ApiResult {
        let (role, request) = match call {
            ApiCall::Forwarded { role, request } => {
                // What a build reads is no secret (any reader may ask): a leader asks every
                // member, also a learner that does not know it as a voter yet.
                if !matches!(request, ApiRequest::Features) && !self.is_voter(&caller) {
                    return Err(ApiError::NotAllowed {
                        needed: Role::Admin,
                        have: caller.role,
                    });
                }
                (Some(role), request)
            }
            // Node to node only: a client deploys, and its leader sends the module ahead.
            ApiCall::Direct(ApiRequest::PrepareModule { .. }) => {
                return Err(ApiError::BadRequest(
                    "prepare_module is sent by a leader to its members; deploy the module \
                     instead (`wraft module deploy`)"
                        .into(),
                ));
            }
            ApiCall::Direct(request) => (caller.role, request),
            // The transport opens pipelines and never hands their opening frame on.
            ApiCall::Pipeline => {
                return Err(ApiError::BadRequest(
                    "a pipeline is opened by the first frame of a stream, not inside one".into(),
                ));
            }
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
        self.serve_traced(role, request, None).await
    }

    /// [`NodeApi::serve_as`], inside a `request` span (request id, kind, FSM, role) that
    /// every log line of the request carries, so a slow request can be followed: `id` is the
    /// caller's (HTTP `X-Request-Id`) or one of this node's (`n<node>-<count>`). A request
    /// slower than [`SLOW_REQUEST`] is logged at `warn` with its time and outcome; every
    /// request at `debug`.
    pub async fn serve_traced(
        &self,
        role: Option<Role>,
        request: ApiRequest,
        id: Option<String>,
    ) -> ApiResult {
        use tracing::Instrument;
        // Formatted only if a subscriber records the span: nothing is allocated per request
        // at the default log level.
        let own;
        let id: &(dyn std::fmt::Display + Sync) = match &id {
            Some(id) => id,
            None => {
                own = self.next_request();
                &own
            }
        };
        let span = tracing::info_span!(
            "request",
            id = %id,
            kind = request.name(),
            fsm = request.fsm().map(|f| f.as_str()),
            role = role.map(|r| r.as_str()),
        );
        let kind = request.name();
        let fsm = request.fsm().cloned();
        async {
            let started = std::time::Instant::now();
            let answer = self.serve_checked(role, request).await;
            let elapsed = started.elapsed();
            let elapsed_ms = elapsed.as_secs_f64() * 1e3;
            let outcome = Outcome(answer.as_ref().err());
            if elapsed >= SLOW_REQUEST {
                // With its request's fields: at the default level (warn) the info span is
                // off, and this is the line an operator gets.
                tracing::warn!(
                    request_id = %id,
                    kind,
                    fsm = fsm.as_ref().map(|f| f.as_str()),
                    role = role.map(|r| r.as_str()),
                    elapsed_ms,
                    outcome = %outcome,
                    "slow request"
                );
            } else {
                tracing::debug!(elapsed_ms, outcome = %outcome, "request answered");
            }
            answer
        }
        .instrument(span)
        .await
    }

    async fn serve_checked(&self, role: Option<Role>, request: ApiRequest) -> ApiResult {
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
                self.dispatch(role, request).await
            }
            have => {
                crate::metrics::rejected("not_allowed");
                Err(ApiError::NotAllowed { needed, have })
            }
        }
    }
}
