//! Membership changes and leader transfers, served by the leader.

use std::collections::BTreeSet;

use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};
use wraft_api::{ApiError, ApiRequest, ApiResponse, ApiResult};
use wraft_core::raft::{Node, NodeId};

use super::{NodeApi, unavailable};

impl NodeApi {
    pub(super) async fn manage(&self, request: ApiRequest) -> ApiResult {
        let written = match request {
            ApiRequest::AddLearner { id, addr } => {
                self.check_joiner(id, &addr).await?;
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

    /// Hands leadership to `to` (or the most caught-up other voter that answers) and reports
    /// who leads afterwards: the real outcome, not a timeout. A named node that is down, far
    /// behind or cannot lead is refused before anything changes.
    pub(super) async fn transfer_leader(&self, to: Option<NodeId>) -> ApiResult {
        use crate::raft::leadership::{HAND_OVER_WAIT, HandOverError, hand_over};
        if to == Some(self.id) {
            return Ok(ApiResponse::Leader(self.id));
        }
        match hand_over(&self.raft, self.id, to, HAND_OVER_WAIT).await {
            Ok(leader) => Ok(ApiResponse::Leader(leader)),
            Err(
                e @ (HandOverError::NotAVoter(_)
                | HandOverError::NoSuccessor(_)
                | HandOverError::Unresponsive { .. }
                | HandOverError::Lagging { .. }),
            ) => Err(ApiError::BadRequest(e.to_string())),
            Err(HandOverError::NotLeader) => Err(ApiError::NoLeader),
            Err(e @ HandOverError::Raft(_)) => match self.metrics().current_leader {
                Some(l) if l != self.id => Ok(ApiResponse::Leader(l)),
                _ => Err(unavailable(e)),
            },
        }
    }
}

impl NodeApi {
    /// Compacts this node's state env while it runs (`wraft compact` against a live node):
    /// in the state-machine worker, so applies wait for the copy while stale reads go on. One at a
    /// time per node.
    pub(super) async fn compact(&self) -> ApiResult {
        use std::sync::atomic::Ordering;
        if self.compacting.swap(true, Ordering::AcqRel) {
            return Err(ApiError::BadRequest(format!(
                "a compaction of node {} is already running; wait for it to finish",
                self.id
            )));
        }
        let done = self
            .raft
            .with_state_machine(|sm: &mut crate::raft::StateMachine| {
                Box::pin(async move {
                    let started = std::time::Instant::now();
                    let done = sm.compact().await;
                    (done, started.elapsed())
                })
            })
            .await;
        self.compacting.store(false, Ordering::Release);
        let (done, paused) = done.map_err(unavailable)?;
        let c = done.map_err(|e| {
            tracing::warn!("online compaction failed: {e}");
            ApiError::Unavailable(format!("the compaction failed: {e}"))
        })?;
        tracing::info!(
            before = c.before,
            after = c.after,
            "state env compacted online in {} ms (applies waited meanwhile)",
            paused.as_millis()
        );
        Ok(ApiResponse::Compacted(wraft_api::Compacted {
            node: self.id,
            before_bytes: c.before,
            after_bytes: c.after,
            paused_ms: u64::try_from(paused.as_millis()).unwrap_or(u64::MAX),
        }))
    }
}
