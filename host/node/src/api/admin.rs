//! Membership changes and leader transfers, served by the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};
use wraft_api::{ApiError, ApiRequest, ApiResponse, ApiResult};
use wraft_core::raft::{Node, NodeId};

use super::{NodeApi, unavailable};

impl NodeApi {
    pub(super) async fn manage(&self, request: ApiRequest) -> ApiResult {
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
    pub(super) async fn transfer_leader(&self, to: Option<NodeId>) -> ApiResult {
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
}
