//! What the raft layer stores beside the applied state, in the same LMDB transaction: the
//! last applied log id, the membership, and the nodes removed from the cluster. One type,
//! one codec, read by the state machine, snapshots and the offline tools alike.

use std::collections::BTreeSet;
use std::io;

use serde::{Deserialize, Serialize};

use super::{Entry, LogId, NodeId, StoredMembership, io_err};

/// The raft layer's part of the applied state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    /// The last applied log id.
    pub last: Option<LogId>,
    /// The membership as of the last applied membership entry.
    pub membership: StoredMembership,
    /// Nodes that were members and were removed: their certificates are refused as peers
    /// (a node id is never re-admitted unless a membership entry adds it again).
    pub removed: BTreeSet<NodeId>,
}

/// The blob written before removed nodes were tracked: a `(last, membership)` pair.
type AppliedStateV1 = (Option<LogId>, StoredMembership);

impl AppliedState {
    /// postcard bytes, a prefix of which is the older `(last, membership)` pair, so an older
    /// wraft still reads what this one writes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("plain data always encodes into a Vec")
    }

    /// Decodes a blob written by [`AppliedState::encode`], or by a wraft that did not track
    /// removed nodes yet (none are then known).
    pub fn decode(blob: &[u8]) -> io::Result<Self> {
        match postcard::from_bytes::<Self>(blob) {
            Ok(s) => Ok(s),
            Err(postcard::Error::DeserializeUnexpectedEnd) => {
                let (last, membership): AppliedStateV1 =
                    postcard::from_bytes(blob).map_err(io_err)?;
                Ok(Self {
                    last,
                    membership,
                    removed: BTreeSet::new(),
                })
            }
            Err(e) => Err(io_err(e)),
        }
    }

    /// The stored state, or the initial one if nothing was applied yet.
    pub fn load(blob: Option<Vec<u8>>) -> io::Result<Self> {
        blob.map_or_else(|| Ok(Self::default()), |b| Self::decode(&b))
    }

    /// The state after applying `entries` (consecutive, in log order): the last one's id,
    /// the last membership among them, and every node a membership change dropped.
    pub fn after(&self, entries: &[Entry]) -> Self {
        let mut next = self.clone();
        for e in entries {
            next.last = Some(e.log_id);
            if let openraft::EntryPayload::Membership(m) = &e.payload {
                let now: BTreeSet<NodeId> = m.nodes().map(|(id, _)| *id).collect();
                next.removed.extend(
                    next.membership
                        .membership()
                        .nodes()
                        .map(|(id, _)| *id)
                        .filter(|id| !now.contains(id)),
                );
                next.removed.retain(|id| !now.contains(id));
                next.membership = StoredMembership::new(Some(e.log_id), m.clone());
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::{EntryPayload, Membership};
    use wraft_core::raft::Node;

    use super::*;

    fn membership(index: u64, voters: &[NodeId], learners: &[NodeId]) -> Entry {
        let nodes: BTreeMap<NodeId, Node> = voters
            .iter()
            .chain(learners)
            .map(|id| (*id, Node::new(format!("127.0.0.1:{id}"))))
            .collect();
        let voters = vec![voters.iter().copied().collect::<BTreeSet<_>>()];
        Entry {
            log_id: openraft::testing::log_id::<wraft_core::raft::TypeConfig>(1, 1, index),
            payload: EntryPayload::Membership(Membership::new(voters, nodes).expect("membership")),
        }
    }

    #[test]
    fn nodes_dropped_by_a_membership_change_are_removed_until_added_again() {
        let s = AppliedState::default().after(&[membership(1, &[1, 2, 3], &[])]);
        assert!(s.removed.is_empty());
        let s = s.after(&[membership(2, &[1, 2], &[3])]);
        assert!(s.removed.is_empty(), "a demoted voter is still a member");
        let s = s.after(&[membership(3, &[1, 2], &[])]);
        assert_eq!(s.removed, BTreeSet::from([3]));
        let s = s.after(&[membership(4, &[1, 2], &[3])]);
        assert!(s.removed.is_empty(), "added again");
        assert_eq!(s.last.map(|l| l.index), Some(4));
    }

    #[test]
    fn the_older_blob_without_removed_nodes_still_decodes() {
        let s = AppliedState::default().after(&[membership(7, &[1, 2], &[])]);
        let old = postcard::to_allocvec(&(s.last, s.membership.clone())).expect("encode");
        assert_eq!(AppliedState::decode(&old).expect("decode"), s);
        let mut with_removed = s.clone();
        with_removed.removed.insert(9);
        let blob = with_removed.encode();
        assert_eq!(AppliedState::decode(&blob).expect("decode"), with_removed);
        let (last, m): AppliedStateV1 = postcard::from_bytes(&blob).expect("an older reader");
        assert_eq!((last, m), (s.last, s.membership));
    }
}
