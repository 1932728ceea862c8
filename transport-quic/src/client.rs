//! openraft's network over QUIC: one connection per peer, reused for every RPC (one stream
//! each) and re-established when the peer restarts.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use tokio::io::AsyncReadExt;
use wraft_core::raft::{Node, NodeId, Snapshot, TypeConfig, Vote};

use crate::pki::node_name;
use crate::wire::{self, CHUNK, Chunk, Reply, Request};
use crate::{ALPN_RAFT, TlsIdentity, TransportError, client_config};

type Slot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// How long a handshake with a peer may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest reply to a raft RPC (votes, append results: a few dozen bytes).
const MAX_REPLY: usize = 64 << 10;
/// The slowest a peer may take in a request and persist it, in bytes per second: an RPC's
/// deadline is openraft's (the heartbeat interval) plus its size at this rate, so a batch
/// of large entries is given the time it needs instead of being cut off and resent forever.
pub const PEER_BYTES_PER_SECOND: u64 = 8 << 20;

/// The deadline of an RPC of `len` bytes whose own deadline is `ttl`.
pub fn scaled_deadline(ttl: Duration, len: usize) -> Duration {
    let per_byte = Duration::from_secs(1).as_nanos() / u128::from(PEER_BYTES_PER_SECOND);
    ttl + Duration::from_nanos((per_byte * len as u128).min(u64::MAX as u128) as u64)
}

struct Shared {
    me: NodeId,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    slots: Mutex<HashMap<NodeId, Slot>>,
}

/// The raft network of one node: a factory of [`RaftPeer`]s sharing one QUIC endpoint.
#[derive(Clone)]
pub struct RaftClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RaftClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftClient")
            .field("me", &self.shared.me)
            .finish_non_exhaustive()
    }
}

/// The connection to one peer.
#[derive(Debug, Clone)]
pub struct RaftPeer {
    client: RaftClient,
    target: NodeId,
    addr: String,
}

/// A failed RPC: `Unreachable` if no connection could be made (openraft backs off), else a
/// network error.
enum CallError {
    Unreachable(String),
    Network(String),
}

impl From<CallError> for RPCError<TypeConfig> {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unreachable(s) => {
                RPCError::Unreachable(Unreachable::new(&io::Error::other(s)))
            }
            CallError::Network(s) => RPCError::Network(NetworkError::new(&io::Error::other(s))),
        }
    }
}

impl From<CallError> for StreamingError<TypeConfig> {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unreachable(s) => {
                StreamingError::Unreachable(Unreachable::new(&io::Error::other(s)))
            }
            CallError::Network(s) => {
                StreamingError::Network(NetworkError::new(&io::Error::other(s)))
            }
        }
    }
}

fn net(e: impl std::fmt::Display) -> CallError {
    CallError::Network(e.to_string())
}

impl RaftClient {
    /// The network of node `me`, dialing from `endpoint` with `identity`.
    pub fn new(
        me: NodeId,
        endpoint: quinn::Endpoint,
        identity: &TlsIdentity,
    ) -> Result<Self, TransportError> {
        let config = client_config(identity, ALPN_RAFT)?;
        Ok(Self {
            shared: Arc::new(Shared {
                me,
                endpoint,
                config,
                slots: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn slot(&self, target: NodeId) -> Slot {
        let mut slots = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(target).or_default().clone()
    }

    /// The live connection to `target`, dialing (and introducing ourselves) if needed.
    async fn connection(&self, target: NodeId, addr: &str) -> Result<quinn::Connection, CallError> {
        let slot = self.slot(target);
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(conn.clone());
        }
        let unreachable = |e: &dyn std::fmt::Display| {
            CallError::Unreachable(format!("node {target} at {addr}: {e}"))
        };
        let conn = crate::dial(
            &self.shared.endpoint,
            &self.shared.config,
            addr,
            &node_name(target),
            DIAL_TIMEOUT,
        )
        .await
        .map_err(|e| unreachable(&e))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| unreachable(&e))?;
        wire::send(
            &mut send,
            &Request::Hello {
                from: self.shared.me,
            },
        )
        .await
        .map_err(net)?;
        send.finish().map_err(net)?;
        match wire::recv::<Reply>(&mut recv, MAX_REPLY)
            .await
            .map_err(|e| unreachable(&e))?
        {
            Reply::Hello(Ok(())) => {}
            Reply::Hello(Err(e)) => {
                return Err(CallError::Unreachable(format!(
                    "node {target} refused us: {e}"
                )));
            }
            other => return Err(net(format!("unexpected reply to hello: {other:?}"))),
        }
        *guard = Some(conn.clone());
        Ok(conn)
    }

    async fn call(
        &self,
        target: NodeId,
        addr: &str,
        req: Request,
        ttl: Duration,
    ) -> Result<Reply, CallError> {
        let mut frame = Vec::new();
        wraft_core::frame::encode_frame(&req, &mut frame);
        drop(req);
        let ttl = scaled_deadline(ttl, frame.len());
        let rpc = async {
            let conn = self.connection(target, addr).await?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(net)?;
            send.write_all(&frame).await.map_err(net)?;
            send.finish().map_err(net)?;
            wire::recv::<Reply>(&mut recv, MAX_REPLY).await.map_err(net)
        };
        tokio::time::timeout(ttl, rpc)
            .await
            .map_err(|_| net(format!("no reply from node {target} within {ttl:?}")))?
    }
}

impl RaftNetworkFactory<TypeConfig> for RaftClient {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> RaftPeer {
        RaftPeer {
            client: self.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

fn remote<T>(r: Result<T, String>) -> Result<T, RPCError<TypeConfig>> {
    r.map_err(|e| CallError::Network(format!("remote: {e}")).into())
}

fn unexpected<T>(reply: Reply) -> Result<T, RPCError<TypeConfig>> {
    Err(net(format!("unexpected reply {reply:?}")).into())
}

impl RaftPeer {
    /// One request/reply RPC to this peer within the option's hard deadline.
    async fn send(
        &self,
        request: Request,
        option: RPCOption,
    ) -> Result<Reply, RPCError<TypeConfig>> {
        Ok(self
            .client
            .call(self.target, &self.addr, request, option.hard_ttl())
            .await?)
    }
}

impl RaftNetworkV2<TypeConfig> for RaftPeer {
    type SnapshotData = std::fs::File;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let reply = self.send(Request::AppendEntries(rpc), option).await?;
        match reply {
            Reply::AppendEntries(r) => remote(r),
            other => unexpected(other),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let reply = self.send(Request::Vote(rpc), option).await?;
        match reply {
            Reply::Vote(r) => remote(r),
            other => unexpected(other),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let reply = self.send(Request::PreVote(rpc), option).await?;
        match reply {
            Reply::Vote(r) => remote(r),
            other => unexpected(other),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let reply = self.send(Request::TransferLeader(req), option).await?;
        match reply {
            Reply::TransferLeader(r) => remote(r),
            other => unexpected(other),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let transfer = async {
            let conn = self.client.connection(self.target, &self.addr).await?;
            let file = snapshot.snapshot;
            let len = file.metadata().map_err(net)?.len();
            let mut file = tokio::fs::File::from_std(file);
            let (mut send, mut recv) = conn.open_bi().await.map_err(net)?;
            wire::send(
                &mut send,
                &Request::Snapshot {
                    vote,
                    meta: snapshot.meta,
                    len,
                },
            )
            .await
            .map_err(net)?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = file.read(&mut buf).await.map_err(net)?;
                if n == 0 {
                    break;
                }
                wire::send(&mut send, &Chunk(buf[..n].to_vec()))
                    .await
                    .map_err(net)?;
            }
            send.finish().map_err(net)?;
            match wire::recv::<Reply>(&mut recv, MAX_REPLY)
                .await
                .map_err(net)?
            {
                Reply::Snapshot(Ok(r)) => Ok(r),
                Reply::Snapshot(Err(e)) => Err(net(format!("remote: {e}"))),
                other => Err(net(format!("unexpected reply {other:?}"))),
            }
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = transfer => r.map_err(StreamingError::from),
        }
    }
}
