//! Forwarding to the leader: over this node's own certificate, with the caller's role, on a
//! cached connection; what the caller hears when the leader moves or the connection breaks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::type_config::async_runtime::WatchReceiver;
use wraft_api::Role;
use wraft_api::{ApiCallRef, ApiError, ApiRequest, ApiResult};
use wraft_core::raft::NodeId;
use wraft_transport_quic::api::{self};
use wraft_transport_quic::pipeline::{Calls, Pipeline, PipelineError};

use super::{NodeApi, outcome_unknown, unavailable};

pub(super) struct Forwarder {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    /// Each node's connection, with the address it was dialed at: a node re-added at another
    /// address is dialed there, not reached through its old address's connection.
    conns: Mutex<HashMap<NodeId, (String, quinn::Connection)>>,
    /// How calls go on each node's connection: on one pipeline, opened by the first call
    /// that finds none while that node's other calls wait for it (a lock per node).
    routes: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<Route>>>>,
}

/// How calls go on one node's connection.
#[derive(Debug, Default)]
struct Route {
    /// The connection `calls` is about (its stable id).
    on: usize,
    calls: Calls,
    /// After an opening the node did not accept in time (its call slots all held, a pause),
    /// calls take streams of their own until then instead of each waiting for an opening.
    streams_until: Option<Instant>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

/// How long a forwarded request still waits for the old leader's answer once this node
/// knows another leader.
const ANSWER_AFTER_LEADER_MOVED: Duration = Duration::from_secs(1);

/// How long forwarding waits for the leader to accept a pipeline before this call takes a
/// stream of its own; and how long calls then take streams of their own before the next
/// opening is tried.
const PIPELINE_OPEN_WAIT: Duration = Duration::from_secs(1);
const PIPELINE_RETRY_AFTER: Duration = Duration::from_secs(10);

/// A request larger than this (encoded) is forwarded on a stream of its own: a module's
/// deploy, a large command, would otherwise hold up every small call behind it on the
/// pipeline for its whole transfer.
const PIPELINED_AT_MOST: usize = 64 << 10;

/// Why a forwarded call has no answer.
enum Exchange {
    /// The leader never read it: any request may be sent again.
    NotSent(String),
    /// Sent, then the stream or connection broke: a write may have been applied.
    Lost(String),
}

impl NodeApi {
    /// Sends `request` to the leader on behalf of a caller with `role`.
    pub(super) async fn forward(&self, role: Role, request: ApiRequest) -> ApiResult {
        // The server metrics hold the leader and the membership: borrowed, not a copy of
        // raft's full metrics per forwarded request.
        let target = {
            let m = self.raft.server_metrics();
            let m = m.borrow_watched();
            m.current_leader.filter(|l| *l != self.id).and_then(|l| {
                let node = m.membership_config.membership().get_node(&l)?;
                Some((l, node.addr.clone()))
            })
        };
        let Some((leader, addr)) = target else {
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
                | ApiRequest::Stages
        );
        let forwarded = ApiCallRef::Forwarded {
            role,
            request: &request,
        };
        let mut attempts = if idempotent { 2 } else { 1 };
        // Once more for a call the leader never read (its pipeline had just ended, say):
        // nothing was sent, so even a write may go again.
        let mut resends = 1;
        // Plain data always has a size: `Err` is impossible, and would only cost a stream.
        let own_stream = postcard::experimental::serialized_size(&request)
            .map_or(true, |n| n > PIPELINED_AT_MOST);
        loop {
            attempts -= 1;
            // Nothing was sent if the leader cannot be reached: the caller may retry anything
            // (the leader this node knows has likely died, and an election is under way).
            let route = self.forward.route(leader, &addr, own_stream).await;
            let (conn, pipeline) = route.map_err(|e| {
                tracing::debug!("leader {leader} unreachable for forwarding: {e}");
                ApiError::NoLeader
            })?;
            // A leader that stops answering (a crash, a pause, a partition) is replaced by an
            // election long before its connection times out (10 s): stop waiting once this
            // node knows another leader. A read is then retried there by the client; a write
            // may have been applied.
            // Watched on the server metrics, which change with the leader, the state or the
            // membership, not with every commit as raft's full metrics do.
            let mut server = self.raft.server_metrics();
            let moved = async move {
                while server
                    .borrow_watched()
                    .current_leader
                    .is_none_or(|l| l == leader)
                {
                    if server.changed().await.is_err() {
                        break; // raft stopped: no leader will be learned here any more
                    }
                }
            };
            let exchange = exchange(&conn, pipeline, forwarded);
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
                Err(Exchange::NotSent(e)) if resends > 0 || attempts > 0 => {
                    tracing::debug!("forwarding to leader {leader}: not sent ({e}); again");
                    if attempts == 0 {
                        resends -= 1;
                        attempts = 1;
                    }
                }
                // Nothing was sent: any request may be sent again. On a connection that
                // still stands the leader ended the pipelines (a call over its byte budget
                // or limits just before this one): busy, not gone.
                Err(Exchange::NotSent(e)) if conn.close_reason().is_none() => {
                    return Err(ApiError::Busy(format!(
                        "forwarding to leader {leader}: not sent ({e})"
                    )));
                }
                Err(Exchange::NotSent(e)) => {
                    tracing::debug!("forwarding to leader {leader}: not sent ({e})");
                    return Err(ApiError::NoLeader);
                }
                Err(Exchange::Lost(e)) if attempts > 0 => {
                    tracing::debug!("forwarding to leader {leader} broke ({e}); dialing again");
                    conn.close(0u32.into(), b"broken; dialing again");
                }
                Err(Exchange::Lost(e)) if idempotent => {
                    return Err(unavailable(format!("forwarding to leader {leader}: {e}")));
                }
                // The leader may have received the write and applied it before the
                // connection broke: the caller must read before resending, as after a
                // discarded entry.
                Err(Exchange::Lost(e)) => {
                    return Err(outcome_unknown(format!(
                        "forwarded to leader {leader}, then {e}: it may have been applied"
                    )));
                }
            }
        }
    }
}

/// Sends `call` on `pipeline`, or on a stream of its own on `conn`.
async fn exchange(
    conn: &quinn::Connection,
    pipeline: Option<Pipeline>,
    call: ApiCallRef<'_>,
) -> Result<ApiResult, Exchange> {
    if let Some(pipeline) = pipeline {
        return pipeline.call(call).await.map_err(|e| match e {
            PipelineError::NotSent(e) | PipelineError::Refused(e) => Exchange::NotSent(e),
            PipelineError::Lost(e) => Exchange::Lost(e),
        });
    }
    let (send, recv) = match conn.open_bi().await {
        Ok(stream) => stream,
        Err(e) => {
            conn.close(0u32.into(), b"broken; dialing again");
            return Err(Exchange::NotSent(format!("no stream ({e})")));
        }
    };
    api::exchange(send, recv, call)
        .await
        .map_err(|e| Exchange::Lost(e.to_string()))
}

impl Forwarder {
    /// Forwards over `endpoint`, dialing leaders as `config` says.
    pub(super) fn new(endpoint: quinn::Endpoint, config: quinn::ClientConfig) -> Self {
        Self {
            endpoint,
            config,
            conns: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// The connection to `node` at `addr` ([`Forwarder::connection`]) and the pipeline to
    /// send on, or `None` for a stream of its own: asked for (`own_stream`), the node takes
    /// no pipelines, or it did not accept one within [`PIPELINE_OPEN_WAIT`] lately.
    async fn route(
        &self,
        node: NodeId,
        addr: &str,
        own_stream: bool,
    ) -> Result<(quinn::Connection, Option<Pipeline>), String> {
        let conn = self.connection(node, addr).await?;
        if own_stream {
            return Ok((conn, None));
        }
        let route = self
            .routes
            .lock()
            .map_err(|e| e.to_string())?
            .entry(node)
            .or_default()
            .clone();
        let mut route = route.lock().await;
        if route.on != conn.stable_id() {
            *route = Route {
                on: conn.stable_id(),
                ..Route::default()
            };
        }
        if route.streams_until.is_some_and(|t| Instant::now() < t) {
            return Ok((conn, None));
        }
        match route.calls.route(&conn, PIPELINE_OPEN_WAIT).await {
            Ok(pipeline) => Ok((conn, pipeline)),
            Err(e) => {
                tracing::debug!("no pipeline to node {node} now ({e}): streams of their own");
                route.streams_until = Some(Instant::now() + PIPELINE_RETRY_AFTER);
                Ok((conn, None))
            }
        }
    }

    /// The cached connection to `node` at `addr` (the leader, or a member a leader asks),
    /// dialed if there is none, it broke, or it was dialed at another address.
    pub(super) async fn connection(
        &self,
        node: NodeId,
        addr: &str,
    ) -> Result<quinn::Connection, String> {
        let cached = self
            .conns
            .lock()
            .map_err(|e| e.to_string())?
            .get(&node)
            .filter(|(at, c)| at == addr && c.close_reason().is_none())
            .map(|(_, c)| c.clone());
        if let Some(c) = cached {
            return Ok(c);
        }
        let name = wraft_transport_quic::pki::node_name(node);
        let conn = wraft_transport_quic::dial(
            &self.endpoint,
            &self.config,
            addr,
            &name,
            Duration::from_secs(3),
        )
        .await
        .map_err(|e| e.to_string())?;
        let replaced = self
            .conns
            .lock()
            .map_err(|e| e.to_string())?
            .insert(node, (addr.to_owned(), conn.clone()));
        // The node moved: its old address may still hold a connection nobody serves.
        if let Some((at, old)) = replaced.filter(|(at, _)| at != addr) {
            tracing::debug!("node {node} moved from {at} to {addr}: closing the old connection");
            old.close(0u32.into(), b"the node moved");
        }
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wraft_transport_quic::pki::DevCa;
    use wraft_transport_quic::{ALPN_CLIENT, TlsIdentity, client_config, server_config};

    fn identity(ca: &DevCa, id: NodeId) -> TlsIdentity {
        let cert = ca.node(id).expect("certificate");
        TlsIdentity::from_pem(&ca.cert_pem, &cert.cert_pem, &cert.key_pem).expect("identity")
    }

    /// A node 4 listening on a port of its own, holding every connection it accepts.
    fn node_4(ca: &DevCa) -> std::net::SocketAddr {
        let server = server_config(&identity(ca, 4)).expect("server config");
        let endpoint =
            quinn::Endpoint::server(server, "127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = endpoint.local_addr().expect("bound");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(incoming) = endpoint.accept().await {
                if let Ok(conn) = incoming.await {
                    held.push(conn);
                }
            }
        });
        addr
    }

    /// A node re-added at a new address (a new machine, a new port) is dialed there: the
    /// connection to its old address, still open, is not reused, and is closed.
    #[tokio::test]
    async fn a_node_at_a_new_address_is_dialed_there() {
        let ca = DevCa::generate("forward test").expect("CA");
        let (old, new) = (node_4(&ca), node_4(&ca));
        let client = client_config(&identity(&ca, 1), ALPN_CLIENT).expect("client config");
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let forward = Forwarder::new(endpoint, client);

        let first = forward.connection(4, &old.to_string()).await.expect("dial");
        assert_eq!(first.remote_address(), old);
        let again = forward
            .connection(4, &old.to_string())
            .await
            .expect("cached");
        assert_eq!(
            again.stable_id(),
            first.stable_id(),
            "the same address reuses it"
        );

        let moved = forward.connection(4, &new.to_string()).await.expect("dial");
        assert_eq!(moved.remote_address(), new, "dialed at the new address");
        assert!(
            first.close_reason().is_some(),
            "the old address's connection is closed"
        );
    }
}
