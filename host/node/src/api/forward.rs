//! Forwarding to the leader: over this node's own certificate, with the caller's role, on a
//! cached connection; what the caller hears when the leader moves or the connection breaks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use wraft_api::Role;
use wraft_api::{ApiCallRef, ApiError, ApiRequest, ApiResult};
use wraft_core::raft::NodeId;
use wraft_transport_quic::api::{self};

use super::{NodeApi, outcome_unknown, unavailable};

pub(super) struct Forwarder {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    conns: Mutex<HashMap<NodeId, quinn::Connection>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

/// How long a forwarded request still waits for the old leader's answer once this node
/// knows another leader.
const ANSWER_AFTER_LEADER_MOVED: Duration = Duration::from_secs(1);

impl NodeApi {
    /// Sends `request` to the leader on behalf of a caller with `role`.
    pub(super) async fn forward(&self, role: Role, request: ApiRequest) -> ApiResult {
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
                | ApiRequest::Stages
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
    /// Forwards over `endpoint`, dialing leaders as `config` says.
    pub(super) fn new(endpoint: quinn::Endpoint, config: quinn::ClientConfig) -> Self {
        Self {
            endpoint,
            config,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// The cached connection to `node` (the leader, or a member a leader asks), dialed if
    /// there is none or it broke.
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
            .cloned();
        if let Some(c) = cached.filter(|c| c.close_reason().is_none()) {
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
        self.conns
            .lock()
            .map_err(|e| e.to_string())?
            .insert(node, conn.clone());
        Ok(conn)
    }
}
