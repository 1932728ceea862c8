//! wraft-client: talk to a wraft cluster from Rust. Give it any nodes' addresses and a
//! client certificate; it connects to one, and the nodes forward what must go to the leader.
//!
//! Retries: a request refused with `NoLeader` (an election is under way), or that could not
//! be sent because a node is down, is retried on the next node until `patience` runs out,
//! waiting 20 ms, then twice as long each time up to 1 s, with jitter.
//!
//! Writes are exactly-once: the client opens a session with the cluster on its first write
//! and gives each write the next sequence of it (`wraft_core::session`). A write whose
//! outcome is unknown (its connection broke after it was sent, or the node answered
//! `OutcomeUnknown`) is sent again with the same sequence until an answer comes or
//! `patience` runs out; the cluster applies it once and answers a retry with the first
//! response. [`Client::without_sessions`] turns this off: such a write is then not retried,
//! and the error says it may have applied. No request waits for its answer past `patience`:
//! one that was sent and not answered in time ends as `OutcomeUnknown` (a write) or
//! `Unreachable` (a read).
//!
//! Concurrent requests share one connection and are pipelined on one stream
//! (`wraft_transport_quic::pipeline`); uploads and backups take a stream of their own.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use wraft_api::ApiCallRef;
use wraft_api::{
    ApiError, ApiRequest, ApiResponse, ClusterStatus, Consistency, FsmInfo, ModuleInfo, Once,
    Payload, StageLatency,
};
use wraft_core::raft::NodeId;
use wraft_core::session;
use wraft_core::{ApplyError, FsmLimits, FsmName, ModuleId};
use wraft_transport_quic::api::{self};
use wraft_transport_quic::pipeline::{Calls, Pipeline, PipelineError};
use wraft_transport_quic::pki::CLUSTER_NAME;
use wraft_transport_quic::{ALPN_CLIENT, TlsIdentity, TransportError, client_config};

mod slot;
mod typed;
use slot::{SessionSlot, Taken};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TLS identity or endpoint could not be set up.
    #[error(transparent)]
    Setup(#[from] TransportError),
    /// No node could be reached within the client's patience.
    #[error("no node reachable (tried {tried}): {last}")]
    Unreachable {
        /// The addresses tried.
        tried: String,
        /// The last error.
        last: String,
    },
    /// The write was sent, then the connection broke: it may or may not have applied (the
    /// client's side of `ApiError::OutcomeUnknown`, which a node answers for the same
    /// reason). Read before resending.
    #[error("outcome unknown: connection lost after sending the request; it may have applied: {0}")]
    OutcomeUnknown(String),
    /// The cluster refused or failed the request.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A local file could not be written.
    #[error("{0}")]
    Local(String),
    /// A command, query or output did not encode or decode as the FSM's own type
    /// ([`Client::apply_as`], [`Client::query_as`]).
    #[error("{0}")]
    Codec(String),
    /// The node answered with something this request does not expect.
    #[error("unexpected answer: {0:?}")]
    Unexpected(Box<ApiResponse>),
}

/// A client of one cluster.
#[derive(Debug)]
pub struct Client {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    nodes: Vec<String>,
    current: Mutex<Option<Current>>,
    patience: Duration,
    /// How long one attempt of a repeatable request may wait for its answer.
    attempt_timeout: Option<Duration>,
    /// The session writes go on (`None`: the client writes without sessions).
    session: Option<SessionSlot>,
    /// The idle timeout the client's sessions ask for.
    session_idle_timeout: Duration,
}

/// The connection requests go on, and how.
#[derive(Debug)]
struct Current {
    /// Which of the nodes it is to.
    index: usize,
    conn: quinn::Connection,
    calls: Calls,
}

enum Attempt {
    NotSent(String),
    SentThenLost(String),
}

impl Client {
    /// A client for the cluster reachable at any of `nodes` (`host:port`), authenticating as
    /// `identity`.
    pub fn new(nodes: Vec<String>, identity: &TlsIdentity) -> Result<Self, ClientError> {
        let bind: SocketAddr = "0.0.0.0:0"
            .parse()
            .map_err(|e| TransportError::Tls(format!("{e}")))?;
        let endpoint = quinn::Endpoint::client(bind).map_err(TransportError::Endpoint)?;
        let config = client_config(identity, ALPN_CLIENT)?;
        Ok(Self {
            endpoint,
            config,
            nodes,
            current: Mutex::new(None),
            patience: Duration::from_secs(10),
            attempt_timeout: None,
            session: Some(SessionSlot::default()),
            session_idle_timeout: Duration::from_millis(session::DEFAULT_IDLE_TIMEOUT_MS),
        })
    }

    /// How long to keep retrying on leader changes and down nodes (default 10 s).
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// How long one attempt of a read or an exactly-once write waits for its answer before
    /// it is sent again to the next node (default: the client's patience). A leader cut off
    /// from its cluster may hold a write unanswered until the partition heals; a shorter
    /// timeout moves the retry to a node that can answer.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// The idle time after which the cluster ends this client's session (default an hour;
    /// `wraft_core::session` bounds it): a short-lived client (one CLI command) asks for
    /// little, so the sessions it leaves behind do not hold their room for long.
    pub fn with_session_idle_timeout(mut self, idle: Duration) -> Self {
        self.session_idle_timeout = idle;
        self
    }

    /// Writes without a session: one log entry fewer per client, but a write whose outcome is
    /// unknown is not retried (the error says it may have applied).
    pub fn without_sessions(mut self) -> Self {
        self.session = None;
        self
    }

    /// The next sequence of this client's session, opening one first if needed.
    async fn next_sequence<'a>(&self, slot: &'a SessionSlot) -> Result<Taken<'a>, ClientError> {
        if let Some(taken) = slot.take() {
            return Ok(taken);
        }
        let _opening = slot.opening.lock().await;
        if let Some(taken) = slot.take() {
            return Ok(taken);
        }
        let opened = self
            .request(ApiRequest::OpenSession {
                idle_timeout_ms: self.session_idle_timeout.as_millis() as u64,
            })
            .await
            .map_err(|e| match e {
                // The write itself was never sent: its outcome is known (not applied), and
                // a session opened unseen only expires.
                ClientError::OutcomeUnknown(why) => ClientError::Unreachable {
                    tried: self.nodes.join(","),
                    last: format!("no session could be opened for the write (not sent): {why}"),
                },
                other => other,
            })?;
        let ApiResponse::Session(id) = opened else {
            return Err(ClientError::Unexpected(Box::new(opened)));
        };
        slot.install(id);
        Ok(slot.take().expect("a session was installed just above"))
    }

    /// Sends a write (an `Apply` or a `Batch`), on the session if the client has one.
    async fn write(&self, mut request: ApiRequest) -> Result<ApiResponse, ClientError> {
        let Some(slot) = &self.session else {
            return self.request(request).await;
        };
        // A session that expired before this write first reached it loses nothing: the
        // write is sent once more on a new session. One that expired between the write's
        // retries cannot tell whether it applied.
        for _ in 0..2 {
            let taken = self.next_sequence(slot).await?;
            let sequence = taken.sequence;
            match &mut request {
                ApiRequest::Apply { once, .. } | ApiRequest::Batch { once, .. } => {
                    *once = Some(Once::Session(sequence));
                }
                _ => unreachable!("write() is given applies and batches only"),
            }
            let (result, resent) = self.send(&request).await;
            drop(taken);
            match result {
                Err(ClientError::Api(ApiError::Failed(ApplyError::UnknownSession { .. }))) => {
                    slot.forget(sequence.session);
                    if resent {
                        return Err(ClientError::OutcomeUnknown(format!(
                            "session {} expired while write {} of it was retried",
                            sequence.session, sequence.seq
                        )));
                    }
                }
                other => return other,
            }
        }
        Err(ClientError::OutcomeUnknown(
            "a new session expired before its first write".into(),
        ))
    }

    async fn connect(&self, start: usize) -> Result<(usize, quinn::Connection), String> {
        let mut last = String::from("no nodes configured");
        for k in 0..self.nodes.len() {
            let i = (start + k) % self.nodes.len();
            let addr = &self.nodes[i];
            let attempt = wraft_transport_quic::dial(
                &self.endpoint,
                &self.config,
                addr,
                CLUSTER_NAME,
                Duration::from_secs(3),
            );
            match attempt.await {
                Ok(conn) => return Ok((i, conn)),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(last)
    }

    /// The open connection, or a new one to the next node that answers.
    async fn connection(&self) -> Result<quinn::Connection, String> {
        let mut current = self.current.lock().await;
        Ok(self.open_connection(&mut current).await?.conn.clone())
    }

    async fn open_connection<'a>(
        &self,
        current: &'a mut Option<Current>,
    ) -> Result<&'a mut Current, String> {
        if current
            .as_ref()
            .is_none_or(|c| c.conn.close_reason().is_some())
        {
            let start = current.as_ref().map_or(0, |c| c.index + 1);
            let (index, conn) = self.connect(start).await?;
            *current = Some(Current {
                index,
                conn,
                calls: Calls::Opening,
            });
        }
        Ok(current.as_mut().expect("a connection was set just above"))
    }

    /// Where the next call goes: the connection's pipeline (a new one if the last ended, if
    /// the node accepts it within `limit`), or a stream of its own if the node takes no
    /// pipelines.
    async fn route(
        &self,
        limit: Duration,
    ) -> Result<(quinn::Connection, Option<Pipeline>), String> {
        let mut current = self.current.lock().await;
        let c = self.open_connection(&mut current).await?;
        let pipeline = c
            .calls
            .route(&c.conn, limit)
            .await
            .map_err(|e| e.to_string())?;
        Ok((c.conn.clone(), pipeline))
    }

    /// One attempt: the open connection (or the next node's), then the request on it,
    /// waiting at most `limit` for the answer.
    async fn once(
        &self,
        request: &ApiRequest,
        limit: Duration,
    ) -> Result<Result<ApiResponse, ApiError>, Attempt> {
        let (conn, pipeline) = self.route(limit).await.map_err(Attempt::NotSent)?;
        let call = async {
            match pipeline {
                Some(pipeline) => match pipeline.call(ApiCallRef::Direct(request)).await {
                    Ok(answer) => Ok(Ok(answer)),
                    // Never read by the node: the next attempt opens a new pipeline.
                    Err(PipelineError::NotSent(e) | PipelineError::Refused(e)) => Err(e),
                    Err(e @ PipelineError::Lost(_)) => Ok(Err(e.to_string())),
                },
                None => Ok(api::call(&conn, request).await.map_err(|e| e.to_string())),
            }
        };
        let called = match tokio::time::timeout(limit, call).await {
            Ok(Ok(called)) => called,
            Ok(Err(not_sent)) => return Err(Attempt::NotSent(not_sent)),
            Err(_) => Err(format!("no answer within {limit:?}")),
        };
        called.map_err(|e| {
            // This attempt's connection (no other's): the next attempt sees it closed and
            // moves on to the next node.
            conn.close(0u32.into(), b"retrying elsewhere");
            Attempt::SentThenLost(e)
        })
    }

    /// Sends `request`, retrying as the module docs describe.
    pub async fn request(&self, request: ApiRequest) -> Result<ApiResponse, ClientError> {
        self.send(&request).await.0
    }

    /// Sends `request`, retrying as the module docs describe; also says whether it was sent
    /// again after an attempt whose outcome is unknown.
    async fn send(&self, request: &ApiRequest) -> (Result<ApiResponse, ClientError>, bool) {
        let deadline = Instant::now() + self.patience;
        // Reads change nothing, and a write made once-only answers a retry with its first
        // response: both may be sent again when an attempt's outcome is unknown.
        let repeatable = matches!(
            request,
            ApiRequest::Query { .. }
                | ApiRequest::ListFsms
                | ApiRequest::Status
                | ApiRequest::Stages
                | ApiRequest::Apply { once: Some(_), .. }
                | ApiRequest::Batch { once: Some(_), .. }
                // Opening again after a lost answer leaves one unused session, which
                // expires: nothing a caller sees.
                | ApiRequest::OpenSession { .. }
        );
        let mut backoff = Backoff::default();
        let mut resent = false;
        let mut unknown = None;
        let attempt_timeout = self.attempt_timeout.unwrap_or(self.patience);
        loop {
            // A write that cannot be sent again waits for its answer as long as the patience
            // lasts, then says its outcome is unknown: it used to wait with no limit, and a
            // `wraft module deploy` to a leader that had lost its quorum never returned.
            let left = deadline.saturating_duration_since(Instant::now());
            let limit = if repeatable {
                attempt_timeout.min(left)
            } else {
                left
            };
            let limit = limit.max(Duration::from_millis(100));
            let attempt = self.once(request, limit).await;
            let retry = match attempt {
                Ok(Ok(response)) => return (Ok(response), resent),
                Ok(Err(ApiError::NoLeader)) => "no leader".to_string(),
                Ok(Err(ApiError::OutcomeUnknown(e))) if repeatable => {
                    unknown = Some(e.clone());
                    e
                }
                Ok(Err(e)) => return (Err(ClientError::Api(e)), resent),
                Err(Attempt::NotSent(e)) => e,
                Err(Attempt::SentThenLost(e)) if repeatable => {
                    unknown = Some(e.clone());
                    e
                }
                Err(Attempt::SentThenLost(e)) => {
                    return (Err(ClientError::OutcomeUnknown(e)), resent);
                }
            };
            if Instant::now() >= deadline {
                let error = match unknown {
                    // Given up with an attempt's outcome unknown: say so, not "unreachable".
                    Some(e) if !matches!(request, ApiRequest::Query { .. }) => {
                        ClientError::OutcomeUnknown(format!(
                            "no answer within the client's patience of {:?}; the last: {retry}; \
                             an earlier attempt: {e}",
                            self.patience
                        ))
                    }
                    _ => ClientError::Unreachable {
                        tried: self.nodes.join(","),
                        last: retry,
                    },
                };
                return (Err(error), resent);
            }
            resent |= unknown.is_some();
            backoff.wait().await;
        }
    }

    fn output(r: ApiResponse) -> Result<Payload, ClientError> {
        match r {
            ApiResponse::Output(p) => Ok(p),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Applies a JSON command; returns the FSM's JSON output.
    pub async fn apply_json(&self, fsm: &FsmName, json: &str) -> Result<Payload, ClientError> {
        self.apply(fsm, Payload::Json(json.into())).await
    }

    /// Applies a command (JSON, or postcard of the FSM's own type), exactly once unless the
    /// client is [`Client::without_sessions`]; returns the FSM's output in the same encoding.
    pub async fn apply(&self, fsm: &FsmName, command: Payload) -> Result<Payload, ClientError> {
        let r = self
            .write(ApiRequest::Apply {
                fsm: fsm.clone(),
                command,
                once: None,
            })
            .await?;
        Self::output(r)
    }

    /// Applies JSON commands as one atomic batch.
    pub async fn batch_json(
        &self,
        commands: Vec<(FsmName, String)>,
    ) -> Result<Vec<Payload>, ClientError> {
        let commands = commands
            .into_iter()
            .map(|(f, j)| (f, Payload::Json(j)))
            .collect();
        match self
            .write(ApiRequest::Batch {
                commands,
                once: None,
            })
            .await?
        {
            ApiResponse::BatchOutputs(outs) => Ok(outs),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Runs a JSON query.
    pub async fn query_json(
        &self,
        fsm: &FsmName,
        json: &str,
        consistency: Consistency,
    ) -> Result<Payload, ClientError> {
        self.query(fsm, Payload::Json(json.into()), consistency)
            .await
    }

    /// Runs a query (JSON, or postcard of the FSM's own type); returns the answer in the same
    /// encoding.
    pub async fn query(
        &self,
        fsm: &FsmName,
        query: Payload,
        consistency: Consistency,
    ) -> Result<Payload, ClientError> {
        let r = self
            .request(ApiRequest::Query {
                fsm: fsm.clone(),
                query,
                consistency,
            })
            .await?;
        Self::output(r)
    }

    /// Deploys a module; returns its id.
    pub async fn deploy(&self, bytes: Vec<u8>) -> Result<ModuleId, ClientError> {
        self.deploy_streamed(&bytes, |_, _| {}).await
    }

    /// Deploys a module by streaming it in chunks, calling `progress(sent, total)` as they
    /// go; returns its id. Retried from the start while no leader is known or no node can be
    /// reached; a deploy is idempotent (a module is stored once, by hash), so an upload lost
    /// after it was sent is retried too.
    pub async fn deploy_streamed(
        &self,
        bytes: &[u8],
        mut progress: impl FnMut(u64, u64),
    ) -> Result<ModuleId, ClientError> {
        let deadline = Instant::now() + self.patience;
        let mut backoff = Backoff::default();
        // An upload that was sent and got no answer may have been stored.
        let mut unanswered = None;
        loop {
            let retry = match self.connection().await {
                Err(e) => e,
                Ok(conn) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let upload = api::upload(&conn, bytes, &mut progress);
                    let limit = left.max(Duration::from_millis(100));
                    let answer = match tokio::time::timeout(limit, upload).await {
                        Ok(answer) => answer.map_err(|e| e.to_string()),
                        Err(_) => Err(format!("no answer within {limit:?}")),
                    };
                    match answer {
                        Ok(Ok(ApiResponse::Deployed(id))) => return Ok(id),
                        Ok(Ok(other)) => return Err(ClientError::Unexpected(Box::new(other))),
                        Ok(Err(ApiError::NoLeader)) => "no leader".to_string(),
                        Ok(Err(e)) => return Err(ClientError::Api(e)),
                        Err(e) => {
                            conn.close(0u32.into(), b"retrying elsewhere");
                            unanswered = Some(e.clone());
                            e
                        }
                    }
                }
            };
            if Instant::now() >= deadline {
                return Err(match unanswered {
                    Some(e) => ClientError::OutcomeUnknown(format!(
                        "the module was sent and no answer came within the client's patience \
                         of {:?} ({e}); it may have been stored: deploying it again is safe",
                        self.patience
                    )),
                    None => ClientError::Unreachable {
                        tried: self.nodes.join(","),
                        last: retry,
                    },
                });
            }
            backoff.wait().await;
        }
    }

    /// Takes a hot backup of the first node that answers: writes the copy of its state to
    /// `out`, calling `progress(received, total)` as chunks arrive, and returns the manifest
    /// (which names the node). The caller verifies the bytes against the manifest.
    pub async fn backup(
        &self,
        out: &std::path::Path,
        progress: impl FnMut(u64, u64),
    ) -> Result<wraft_api::BackupManifest, ClientError> {
        let conn = self
            .connection()
            .await
            .map_err(|last| ClientError::Unreachable {
                tried: self.nodes.join(","),
                last,
            })?;
        let mut file = tokio::fs::File::create(out)
            .await
            .map_err(|e| ClientError::Local(format!("{}: {e}", out.display())))?;
        let received = api::receive_backup(&conn, &mut file, progress).await;
        file.sync_all()
            .await
            .map_err(|e| ClientError::Local(format!("{}: {e}", out.display())))?;
        match received {
            Ok(Ok(manifest)) => Ok(manifest),
            Ok(Err(e)) => Err(ClientError::Api(e)),
            Err(e) => Err(ClientError::Unreachable {
                tried: self.nodes.join(","),
                last: format!("backup cut short: {e}"),
            }),
        }
    }

    /// Creates an FSM instance.
    pub async fn create_fsm(
        &self,
        fsm: FsmName,
        module_id: ModuleId,
        limits: FsmLimits,
    ) -> Result<(), ClientError> {
        self.request(ApiRequest::CreateFsm {
            fsm,
            module_id,
            limits,
        })
        .await
        .map(|_| ())
    }

    /// Moves an FSM to another deployed module (its `migrate` runs in the same entry).
    pub async fn upgrade_fsm(&self, fsm: FsmName, module_id: ModuleId) -> Result<(), ClientError> {
        self.request(ApiRequest::UpgradeFsm { fsm, module_id })
            .await
            .map(|_| ())
    }

    /// Replaces an FSM's limits.
    pub async fn set_limits(&self, fsm: FsmName, limits: FsmLimits) -> Result<(), ClientError> {
        self.request(ApiRequest::SetLimits { fsm, limits })
            .await
            .map(|_| ())
    }

    /// Deletes an FSM and its data.
    pub async fn drop_fsm(&self, fsm: FsmName) -> Result<(), ClientError> {
        self.request(ApiRequest::DropFsm { fsm }).await.map(|_| ())
    }

    /// Deletes a module that no FSM uses.
    pub async fn drop_module(&self, module_id: ModuleId) -> Result<(), ClientError> {
        self.request(ApiRequest::DropModule { module_id })
            .await
            .map(|_| ())
    }

    /// Deployed modules.
    pub async fn modules(&self) -> Result<Vec<ModuleInfo>, ClientError> {
        match self.request(ApiRequest::ListModules).await? {
            ApiResponse::Modules(m) => Ok(m),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// FSM instances.
    pub async fn fsms(&self) -> Result<Vec<FsmInfo>, ClientError> {
        match self.request(ApiRequest::ListFsms).await? {
            ApiResponse::Fsms(f) => Ok(f),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// The cluster as the answering node sees it.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        match self.request(ApiRequest::Status).await? {
            ApiResponse::Status(s) => Ok(s),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Where the answering node's recent log entries spent their time, stage by stage.
    pub async fn stages(&self) -> Result<Vec<StageLatency>, ClientError> {
        match self.request(ApiRequest::Stages).await? {
            ApiResponse::Stages(s) => Ok(s),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Compacts the state env of the node this client reaches while it runs (give the client
    /// that one node's address): its applies wait while the compacting copy is written, its
    /// stale reads go on. Not sent again after an attempt whose outcome is unknown.
    pub async fn compact(&self) -> Result<wraft_api::Compacted, ClientError> {
        match self.request(ApiRequest::Compact).await? {
            ApiResponse::Compacted(c) => Ok(c),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// What the answering node's build reads: its version and log entry level (what a
    /// leader asks its members before it proposes entries of a newer level).
    pub async fn features(&self) -> Result<wraft_api::NodeFeatures, ClientError> {
        match self.request(ApiRequest::Features).await? {
            ApiResponse::Features(f) => Ok(f),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Hands leadership over; returns who leads afterwards.
    pub async fn transfer_leader(&self, to: Option<NodeId>) -> Result<NodeId, ClientError> {
        match self.request(ApiRequest::TransferLeader { to }).await? {
            ApiResponse::Leader(id) => Ok(id),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }
}

/// Waits between retries: exponential from 20 ms up to 1 s, each wait drawn uniformly from
/// half to all of it (jitter, so clients refused together do not come back together).
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(20),
        }
    }
}

impl Backoff {
    const MAX: Duration = Duration::from_secs(1);

    async fn wait(&mut self) {
        let full = self.next.as_micros() as u64;
        let wait = Duration::from_micros(fastrand::u64(full / 2..=full));
        self.next = (self.next * 2).min(Self::MAX);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backoff_grows_to_a_second_with_jitter() {
        tokio::time::pause();
        let mut b = Backoff::default();
        let mut waits = Vec::new();
        for _ in 0..10 {
            let before = tokio::time::Instant::now();
            b.wait().await;
            waits.push(before.elapsed());
        }
        assert!(waits[0] >= Duration::from_millis(10) && waits[0] <= Duration::from_millis(20));
        assert!(waits[9] >= Duration::from_millis(500) && waits[9] <= Duration::from_secs(1));
        assert!(waits.windows(2).all(|w| w[1] >= w[0] / 2), "{waits:?}");
    }
}
