//! The node's openraft network: QUIC (`wraft_transport_quic::RaftClient`) to wraft nodes, a
//! [`VoterLink`] to each passive voter this node is wired to, with openraft's messages mapped
//! to the voter's (log ids only: entry payloads never cross the link) and back.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::vote::RaftLeaderId;
use wraft_core::link::auth::ClusterKey;
use wraft_core::raft::{Entry, LogId, Node, NodeId, Snapshot, TypeConfig, Vote};
use wraft_core::voter::{
    self as core, AppendOutcome, MAX_APPEND, MAX_RUNS, Request, Response, Run,
};
use wraft_transport_quic::{RaftClient, RaftPeer};

use crate::voter::{VoterLink, VoterLinkError, VoterLinks, is_passive};

/// The node's raft network: a QUIC client plus its voter links.
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    quic: RaftClient,
    links: Arc<BTreeMap<NodeId, Arc<VoterLink>>>,
    lease: Duration,
}

impl PeerNetwork {
    /// `lease` is how long a voter refuses other candidates after hearing from the leader:
    /// openraft's leader lease (its `election_timeout_max`). Links need the cluster's voter
    /// `key`: without one there are none (every passive voter is unreachable).
    pub fn new(
        quic: RaftClient,
        links: &VoterLinks,
        key: Option<&ClusterKey>,
        lease: Duration,
    ) -> Self {
        let links = key.map_or_else(BTreeMap::new, |key| {
            links
                .iter()
                .map(|(id, addr)| (*id, Arc::new(VoterLink::new(addr.clone(), key.clone()))))
                .collect()
        });
        Self {
            quic,
            links: Arc::new(links),
            lease,
        }
    }
}

/// The connection to one peer.
#[derive(Debug)]
pub enum PeerRpc {
    /// A wraft node, over QUIC.
    Quic(RaftPeer),
    /// A passive voter, over its link.
    Voter(VoterRpc),
}

/// RPCs to a passive voter.
#[derive(Debug)]
pub struct VoterRpc {
    target: NodeId,
    link: Option<Arc<VoterLink>>,
    lease_ms: u32,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerRpc;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerRpc {
        if !is_passive(&node.addr) && !self.links.contains_key(&target) {
            return PeerRpc::Quic(self.quic.new_client(target, node).await);
        }
        PeerRpc::Voter(VoterRpc {
            target,
            link: self.links.get(&target).cloned(),
            lease_ms: u32::try_from(self.lease.as_millis()).unwrap_or(u32::MAX),
        })
    }
}

fn network_error(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&io::Error::other(e.to_string())))
}

fn to_core_vote(v: &Vote) -> core::Vote {
    core::Vote {
        leader: core::LeaderId {
            term: v.leader_id.term,
            node: v.leader_id.node_id,
        },
        committed: v.committed,
    }
}

fn from_core_vote(v: core::Vote) -> Vote {
    if v.committed {
        Vote::new_committed(v.leader.term, v.leader.node)
    } else {
        Vote::new(v.leader.term, v.leader.node)
    }
}

fn to_core_id(id: &LogId) -> core::LogId {
    core::LogId {
        leader: core::LeaderId {
            term: id.leader_id.term,
            node: id.leader_id.node_id,
        },
        index: id.index,
    }
}

fn from_core_id(id: core::LogId) -> LogId {
    LogId::new(RaftLeaderId::new(id.leader.term, id.leader.node), id.index)
}

impl VoterRpc {
    async fn call(
        &self,
        request: Request,
        ttl: Duration,
    ) -> Result<Response, RPCError<TypeConfig>> {
        let Some(link) = &self.link else {
            return Err(RPCError::Unreachable(Unreachable::new(&io::Error::other(
                format!("no --voter-link for passive voter {}", self.target),
            ))));
        };
        match link.call(request, ttl).await {
            Ok(Response::Refused(why)) => Err(network_error(format!(
                "voter {} refused: {why:?}",
                self.target
            ))),
            Ok(r) => Ok(r),
            Err(e @ VoterLinkError::Open { .. }) => Err(RPCError::Unreachable(Unreachable::new(
                &io::Error::other(e.to_string()),
            ))),
            Err(e) => Err(network_error(e)),
        }
    }

    fn unexpected<T>(&self, r: Response) -> Result<T, RPCError<TypeConfig>> {
        Err(network_error(format!(
            "voter {} answered {r:?}",
            self.target
        )))
    }
}

/// Entry ids as runs, at most [`MAX_RUNS`] of them covering at most [`MAX_APPEND`] entries,
/// and how many entries those cover.
fn runs(entries: &[Entry]) -> (Vec<Run>, usize) {
    let mut runs: Vec<Run> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        if i as u64 == MAX_APPEND {
            return (runs, i);
        }
        let leader = to_core_id(&entry.log_id).leader;
        let full = runs.len() == MAX_RUNS;
        match runs.last_mut() {
            Some(run) if run.leader == leader => run.count += 1,
            _ if full => return (runs, i),
            _ => runs.push(Run { leader, count: 1 }),
        }
    }
    (runs, entries.len())
}

impl RaftNetworkV2<TypeConfig> for VoterRpc {
    type SnapshotData = std::fs::File;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let (runs, covered) = runs(&rpc.entries);
        let request = Request::Append {
            vote: to_core_vote(&rpc.vote),
            prev: rpc.prev_log_id.as_ref().map(to_core_id),
            runs,
            commit: rpc.leader_commit.as_ref().map(to_core_id),
            lease_ms: self.lease_ms,
        };
        match self.call(request, option.hard_ttl()).await? {
            Response::Append(AppendOutcome::Success) if covered < rpc.entries.len() => {
                let last = covered.checked_sub(1).map(|i| rpc.entries[i].log_id);
                Ok(AppendEntriesResponse::PartialSuccess(
                    last.or(rpc.prev_log_id),
                ))
            }
            Response::Append(AppendOutcome::Success) => Ok(AppendEntriesResponse::Success),
            Response::Append(AppendOutcome::Conflict) => Ok(AppendEntriesResponse::Conflict),
            Response::Append(AppendOutcome::HigherVote(v)) => {
                Ok(AppendEntriesResponse::HigherVote(from_core_vote(v)))
            }
            other => self.unexpected(other),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = Request::Vote {
            vote: to_core_vote(&rpc.vote),
            last: rpc.last_log_id.as_ref().map(to_core_id),
            transfer: rpc.leadership_transfer,
        };
        self.vote_response(request, option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = Request::PreVote {
            vote: to_core_vote(&rpc.vote),
            last: rpc.last_log_id.as_ref().map(to_core_id),
        };
        self.vote_response(request, option).await
    }

    /// A voter can never be the target of a transfer (the API refuses it) and has nothing to
    /// do when another node is: the candidate's vote request says it is a transfer.
    async fn transfer_leader(
        &mut self,
        _req: TransferLeaderRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(Ok(()))
    }

    /// Only the snapshot's last log id reaches the voter: it keeps no state to install.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let Some(last) = snapshot.meta.last_log_id.as_ref().map(to_core_id) else {
            return Ok(SnapshotResponse::new(vote));
        };
        let request = Request::Snapshot {
            vote: to_core_vote(&vote),
            last,
            lease_ms: self.lease_ms,
        };
        let answer = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = self.call(request, option.hard_ttl()) => r,
        };
        match answer {
            Ok(Response::Snapshot { vote }) => Ok(SnapshotResponse::new(from_core_vote(vote))),
            Ok(other) => Err(streaming(format!(
                "voter {} answered {other:?}",
                self.target
            ))),
            Err(RPCError::Unreachable(u)) => Err(StreamingError::Unreachable(u)),
            Err(e) => Err(streaming(e)),
        }
    }
}

fn streaming(e: impl std::fmt::Display) -> StreamingError<TypeConfig> {
    StreamingError::Network(NetworkError::new(&io::Error::other(e.to_string())))
}

impl VoterRpc {
    async fn vote_response(
        &self,
        request: Request,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(request, option.hard_ttl()).await? {
            Response::Vote {
                vote,
                granted,
                last,
            } => Ok(VoteResponse::new(
                from_core_vote(vote),
                last.map(from_core_id),
                granted,
            )),
            other => self.unexpected(other),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerRpc {
    type SnapshotData = std::fs::File;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self {
            Self::Quic(p) => p.append_entries(rpc, option).await,
            Self::Voter(v) => v.append_entries(rpc, option).await,
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self {
            Self::Quic(p) => p.vote(rpc, option).await,
            Self::Voter(v) => v.vote(rpc, option).await,
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self {
            Self::Quic(p) => p.pre_vote(rpc, option).await,
            Self::Voter(v) => v.pre_vote(rpc, option).await,
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self {
            Self::Quic(p) => p.transfer_leader(req, option).await,
            Self::Voter(v) => v.transfer_leader(req, option).await,
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        match self {
            Self::Quic(p) => p.full_snapshot(vote, snapshot, cancel, option).await,
            Self::Voter(v) => v.full_snapshot(vote, snapshot, cancel, option).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::entry::RaftEntry;

    fn id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(RaftLeaderId::new(term, node), index)
    }

    #[test]
    fn entries_become_runs_by_leader_and_stop_at_the_cap() {
        let entries: Vec<Entry> = [(1, 1), (1, 1), (2, 2), (3, 1), (3, 1), (3, 1)]
            .iter()
            .enumerate()
            .map(|(i, &(t, n))| Entry::new_blank(id(t, n, i as u64)))
            .collect();
        let (r, covered) = runs(&entries);
        let counts: Vec<(u64, u32)> = r.iter().map(|r| (r.leader.term, r.count)).collect();
        assert_eq!((counts, covered), (vec![(1, 2), (2, 1), (3, 3)], 6));
        // One leader per entry, more leaders than a voter's tail holds: cut at the cap.
        let many: Vec<Entry> = (0..MAX_RUNS as u64 + 5)
            .map(|i| Entry::new_blank(id(i + 1, 1, i)))
            .collect();
        let (r, covered) = runs(&many);
        assert_eq!((r.len(), covered), (MAX_RUNS, MAX_RUNS));
    }

    #[test]
    fn votes_and_log_ids_map_both_ways() {
        for v in [Vote::new(7, 3), Vote::new_committed(9, 1)] {
            assert_eq!(from_core_vote(to_core_vote(&v)), v);
        }
        let l = id(4, 2, 1234);
        assert_eq!(from_core_id(to_core_id(&l)), l);
        // The voter's order is openraft's: compare a few pairs.
        let (a, b) = (Vote::new(3, 2), Vote::new_committed(3, 1));
        assert_eq!(
            a.partial_cmp(&b),
            to_core_vote(&a).partial_cmp(&to_core_vote(&b))
        );
        let (x, y) = (id(2, 5, 10), id(3, 1, 4));
        assert_eq!(x.cmp(&y), to_core_id(&x).cmp(&to_core_id(&y)));
    }
}
