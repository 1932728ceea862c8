//! A deploy compiles on every node at once: while a leader validates a module (a compile)
//! before proposing its `DeployModule` entry, it sends the bytes to each member, which
//! compiles them into its module cache at the same time. The entry, once committed, then
//! applies from the cache on every node, instead of each follower compiling in turn after
//! the leader. A member that is busy, down or of an older build simply compiles when the
//! entry applies, as before; one still compiling when it applies is waited for, not
//! repeated (the runtime's per-module compile gate).
//!
//! Bounds: the request is only accepted from a voter's certificate (never from a client, nor
//! over HTTP), and each node compiles one at a time, answering `Busy` meanwhile. A leader
//! sends only a module that has a wasm header and whose entry it would propose (within
//! `--max-entry-bytes`), one module at a time (a deploy while one is being sent is not sent
//! ahead), and waits for no member: each send runs in a task of its own for at most
//! [`PREPARE_TIMEOUT`]. A module compiled ahead and never deployed is kept only among the
//! runtime's [`crate::runtime::MAX_PREPARED`] newest, and its artifact on disk until the
//! node restarts (which keeps only the deployed modules').

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;
use wraft_api::{ApiCallRef, ApiError, ApiRequest, ApiResponse, ApiResult, Role};
use wraft_transport_quic::api;

use super::{NodeApi, unavailable};

/// How long a leader's send of a module to one member may take, its compile included.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(30);

/// Held while this node compiles a module ahead of its deploy (released when the compile
/// ends, even if the request that started it is gone), or, leading, sends one ahead.
pub(super) struct PrepareSlot(Arc<AtomicBool>);

impl PrepareSlot {
    /// The node's slot, unless a compile holds it.
    fn take(flag: &Arc<AtomicBool>) -> Option<Self> {
        (!flag.swap(true, Ordering::AcqRel)).then(|| Self(flag.clone()))
    }
}

impl Drop for PrepareSlot {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl NodeApi {
    /// Leader: sends `bytes` to every member to compile now, each in a task of its own, and
    /// returns at once; not while another module is being sent. Passive voters
    /// (microcontrollers) run no modules.
    pub(super) fn send_ahead(&self, bytes: &[u8]) {
        let members = super::members_with_entries(&self.raft.metrics().borrow_watched(), self.id);
        if members.is_empty() {
            return;
        }
        // Released when the last member's send ends.
        let Some(sending) = PrepareSlot::take(&self.sending_ahead).map(Arc::new) else {
            tracing::debug!(
                "another module is being sent ahead: the members compile this one on apply"
            );
            return;
        };
        let request = Arc::new(ApiRequest::PrepareModule {
            bytes: bytes.to_vec(),
        });
        for (node, addr) in members {
            let (forward, request) = (self.forward.clone(), request.clone());
            let sending = sending.clone();
            tokio::spawn(async move {
                let _sending = sending;
                let send = async {
                    let conn = forward.connection(node, &addr).await?;
                    let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                    let call = ApiCallRef::Forwarded {
                        role: Role::Admin,
                        request: &request,
                    };
                    api::exchange(send, recv, call)
                        .await
                        .map_err(|e| e.to_string())
                };
                match tokio::time::timeout(PREPARE_TIMEOUT, send).await {
                    Ok(Ok(Ok(_))) => tracing::debug!("node {node} compiled the module ahead"),
                    // Busy, an older build, or a module it refuses: it compiles (or refuses
                    // it, as the leader did) when the entry applies.
                    Ok(Ok(Err(e))) => tracing::debug!("node {node} did not compile ahead: {e}"),
                    Ok(Err(e)) => tracing::debug!("sending a module ahead to node {node}: {e}"),
                    Err(_) => tracing::debug!("node {node} did not compile ahead in time"),
                }
            });
        }
    }

    /// Member: compiles `bytes` into this node's module cache, one module at a time.
    pub(super) async fn prepare_module(&self, bytes: Vec<u8>) -> ApiResult {
        let Some(slot) = PrepareSlot::take(&self.preparing) else {
            return Err(ApiError::Busy(format!(
                "node {} is compiling another module ahead of its deploy",
                self.id
            )));
        };
        let store = self.store.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            store.prepare_module(&bytes)
        })
        .await
        .map_err(|e| unavailable(format!("compiling the module: {e}")))?
        .map_err(unavailable)?;
        compiled
            .map(ApiResponse::Deployed)
            .map_err(|e| ApiError::BadRequest(format!("invalid module: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One compile at a time: the slot is refused while held, and free again once the
    /// holder (the compile's thread) lets it go.
    #[test]
    fn a_node_prepares_one_module_at_a_time() {
        let flag = Arc::new(AtomicBool::new(false));
        let held = PrepareSlot::take(&flag).expect("free");
        assert!(
            PrepareSlot::take(&flag).is_none(),
            "a second compile started"
        );
        drop(held);
        assert!(PrepareSlot::take(&flag).is_some(), "the slot stayed taken");
    }
}
