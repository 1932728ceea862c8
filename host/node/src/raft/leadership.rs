//! Handing leadership over (`wraft cluster transfer-leader`, and `wraft serve` on SIGTERM):
//! to a named voter or the most caught-up one, never to one that is down or far behind. Such a
//! node could not take over, and the cluster would sit without a leader until an election
//! timeout; openraft's own transfer accepts any voter.

use std::time::Duration;

use openraft::Instant as _;
use openraft::RaftMetrics;
use openraft::type_config::async_runtime::WatchReceiver;
use wraft_core::raft::{NodeId, TypeConfig};

use super::Raft;

/// A voter that has not answered the leader (a heartbeat or an append) for this long is
/// taken as down or cut off: ten heartbeats, more than an election timeout.
pub const ANSWERED_WITHIN: Duration = Duration::from_secs(1);

/// A voter more entries than this behind the leader's last one is too far behind to take
/// over at once (it must first receive and flush them all).
pub const MAX_LAG_ENTRIES: u64 = 1_000;

/// How long a hand-over waits for another node to lead.
pub const HAND_OVER_WAIT: Duration = Duration::from_secs(5);

/// Why leadership was not handed over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandOverError {
    /// The named node is not a voter that can lead (a learner, a passive voter, unknown).
    #[error("node {0} is not a voter that can lead")]
    NotAVoter(NodeId),
    /// No other voter can lead.
    #[error("no other voter can take over leadership now{0}")]
    NoSuccessor(String),
    /// The named node has not answered the leader lately.
    #[error(
        "node {node} has not answered the leader {for_how_long} (down or cut off): refusing to \
         hand it leadership; name a node that answers, or leave the choice to the leader"
    )]
    Unresponsive {
        /// The node.
        node: NodeId,
        /// "for 4.2 s", or "since the leader took over".
        for_how_long: String,
    },
    /// The named node is far behind the leader's log.
    #[error(
        "node {node} is {lag} entries behind the leader (more than {MAX_LAG_ENTRIES}): refusing \
         to hand it leadership; wait for it to catch up, or name another"
    )]
    Lagging {
        /// The node.
        node: NodeId,
        /// Entries behind.
        lag: u64,
    },
    /// This node does not lead (any more).
    #[error("this node is not the leader")]
    NotLeader,
    /// Raft refused or failed the transfer.
    #[error("the transfer failed: {0}")]
    Raft(String),
}

/// What the leader knows of another member, for choosing a successor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its id.
    pub id: NodeId,
    /// A voter that may lead (not a learner, not a passive voter).
    pub can_lead: bool,
    /// The last log index the leader knows it holds.
    pub matched: Option<u64>,
    /// How long since it last answered the leader (`None`: not since this leader took over).
    pub silent_for: Option<Duration>,
}

impl Peer {
    fn refusal(&self, last_log: u64) -> Option<HandOverError> {
        if !self.can_lead {
            return Some(HandOverError::NotAVoter(self.id));
        }
        match self.silent_for {
            None => {
                return Some(HandOverError::Unresponsive {
                    node: self.id,
                    for_how_long: "since the leader took over".into(),
                });
            }
            Some(silent) if silent > ANSWERED_WITHIN => {
                return Some(HandOverError::Unresponsive {
                    node: self.id,
                    for_how_long: format!("for {:.1} s", silent.as_secs_f64()),
                });
            }
            Some(_) => {}
        }
        let lag = last_log.saturating_sub(self.matched.unwrap_or(0));
        (lag > MAX_LAG_ENTRIES).then_some(HandOverError::Lagging { node: self.id, lag })
    }
}

/// The node to hand leadership to: `to` if it can take over now, else (with no `to`) the
/// most caught-up voter that answers.
pub fn successor(
    peers: &[Peer],
    last_log: u64,
    to: Option<NodeId>,
) -> Result<NodeId, HandOverError> {
    if let Some(to) = to {
        let peer = peers
            .iter()
            .find(|p| p.id == to)
            .ok_or(HandOverError::NotAVoter(to))?;
        return match peer.refusal(last_log) {
            Some(why) => Err(why),
            None => Ok(to),
        };
    }
    let mut why_not = Vec::new();
    let best = peers
        .iter()
        .filter(|p| p.can_lead)
        .filter(|p| match p.refusal(last_log) {
            Some(why) => {
                why_not.push(why.to_string());
                false
            }
            None => true,
        })
        .max_by_key(|p| (p.matched, std::cmp::Reverse(p.id)));
    best.map(|p| p.id).ok_or_else(|| {
        HandOverError::NoSuccessor(if why_not.is_empty() {
            String::new()
        } else {
            format!(": {}", why_not.join("; "))
        })
    })
}

/// The other members as the leader `me` sees them in `m`.
fn peers(m: &RaftMetrics<TypeConfig>, me: NodeId) -> Vec<Peer> {
    let membership = m.membership_config.membership();
    membership
        .nodes()
        .map(|(id, _)| *id)
        .filter(|id| *id != me)
        .map(|id| Peer {
            id,
            can_lead: membership.voter_ids().any(|v| v == id)
                && membership
                    .get_node(&id)
                    .is_none_or(|n| !crate::voter::is_passive(&n.addr)),
            matched: m
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|l| l.index),
            silent_for: m
                .heartbeat
                .as_ref()
                .and_then(|h| h.get(&id).cloned().flatten())
                .map(|at| at.elapsed()),
        })
        .collect()
}

/// Hands leadership from `me` to `to` (or the best successor) and waits up to `wait` for
/// another node to lead; returns the node that leads then.
pub async fn hand_over(
    raft: &Raft,
    me: NodeId,
    to: Option<NodeId>,
    wait: Duration,
) -> Result<NodeId, HandOverError> {
    let m = raft.metrics().borrow_watched().clone();
    if m.current_leader != Some(me) {
        return Err(HandOverError::NotLeader);
    }
    let target = successor(&peers(&m, me), m.last_log_index.unwrap_or(0), to)?;
    raft.trigger()
        .transfer_leader(target)
        .await
        .map_err(|e| HandOverError::Raft(e.to_string()))?;
    let moved = raft
        .wait(Some(wait))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != me),
            "leadership moved",
        )
        .await;
    match moved {
        Ok(m) => Ok(m.current_leader.unwrap_or(target)),
        Err(e) => Err(HandOverError::Raft(format!(
            "node {target} did not take over within {wait:?}: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voter(id: NodeId, matched: u64, silent_ms: u64) -> Peer {
        Peer {
            id,
            can_lead: true,
            matched: Some(matched),
            silent_for: Some(Duration::from_millis(silent_ms)),
        }
    }

    #[test]
    fn the_most_caught_up_voter_that_answers_takes_over() {
        let peers = [voter(2, 90, 50), voter(3, 100, 5_000), voter(4, 95, 80)];
        assert_eq!(successor(&peers, 100, None), Ok(4));
    }

    #[test]
    fn a_named_node_that_is_down_far_behind_or_not_a_voter_is_refused() {
        let learner = Peer {
            can_lead: false,
            ..voter(5, 100, 10)
        };
        let never = Peer {
            silent_for: None,
            ..voter(6, 100, 0)
        };
        let peers = [voter(2, 100, 4_200), voter(3, 10, 20), learner, never];
        let down = successor(&peers, 2_000, Some(2)).expect_err("down");
        assert!(down.to_string().contains("for 4.2 s"), "{down}");
        assert_eq!(
            successor(&peers, 2_000, Some(3)),
            Err(HandOverError::Lagging {
                node: 3,
                lag: 1_990
            })
        );
        assert_eq!(
            successor(&peers, 2_000, Some(5)),
            Err(HandOverError::NotAVoter(5))
        );
        assert!(matches!(
            successor(&peers, 2_000, Some(6)),
            Err(HandOverError::Unresponsive { node: 6, .. })
        ));
        assert_eq!(
            successor(&peers, 2_000, Some(9)),
            Err(HandOverError::NotAVoter(9))
        );
        let none = successor(&peers, 2_000, None).expect_err("no successor");
        assert!(
            none.to_string().contains("node 2 has not answered"),
            "{none}"
        );
        // Within the bounds, the named node is accepted.
        assert_eq!(successor(&peers, 1_000, Some(3)), Ok(3));
    }
}
