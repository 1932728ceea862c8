//! `wraft init generate`: data directories whose raft env already holds the cluster's
//! membership and the initial leader's vote, so every node starts as an equal (no node runs a
//! bootstrap call) and the initial leader, finding its own committed vote, campaigns as soon as
//! it starts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use openraft::Membership;

use super::{DataDirLock, OpsError, at, occupied};
use crate::raft::{LogStore, Node, NodeId};

/// What to generate.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Every voter: id and raft address.
    pub nodes: Vec<(NodeId, String)>,
    /// The node that leads first.
    pub initial_leader: NodeId,
    /// The term it leads in (at least 1).
    pub initial_term: u64,
}

impl ClusterSpec {
    fn check(&self) -> Result<(), OpsError> {
        let ids: BTreeSet<NodeId> = self.nodes.iter().map(|(id, _)| *id).collect();
        if self.nodes.is_empty() {
            return Err(OpsError::Invalid("no nodes given".into()));
        }
        if ids.len() != self.nodes.len() {
            return Err(OpsError::Invalid("node ids must be distinct".into()));
        }
        if !ids.contains(&self.initial_leader) {
            return Err(OpsError::Invalid(format!(
                "the initial leader {} is not one of the nodes {ids:?}",
                self.initial_leader
            )));
        }
        if self.initial_term == 0 {
            return Err(OpsError::Invalid(
                "the initial term must be at least 1".into(),
            ));
        }
        Ok(())
    }

    fn membership(&self) -> Result<Membership<NodeId, Node>, OpsError> {
        let voters: BTreeSet<NodeId> = self.nodes.iter().map(|(id, _)| *id).collect();
        let nodes: BTreeMap<NodeId, Node> = self
            .nodes
            .iter()
            .map(|(id, addr)| (*id, Node::new(addr.clone())))
            .collect();
        Membership::new(vec![voters], nodes).map_err(|e| OpsError::Invalid(e.to_string()))
    }
}

/// The data directory of node `id` under `output_dir`.
pub fn node_dir(output_dir: &Path, id: NodeId) -> PathBuf {
    output_dir.join(format!("node-{id}"))
}

/// Writes `<output_dir>/node-<id>` for every node. An existing directory is refused unless
/// `force`, and then only if no process holds it; it is emptied first.
pub fn generate(
    spec: &ClusterSpec,
    output_dir: &Path,
    force: bool,
) -> Result<Vec<PathBuf>, OpsError> {
    spec.check()?;
    let membership = spec.membership()?;
    let dirs: Vec<PathBuf> = spec
        .nodes
        .iter()
        .map(|(id, _)| node_dir(output_dir, *id))
        .collect();
    for dir in &dirs {
        if occupied(dir) && !force {
            return Err(OpsError::Exists(dir.clone()));
        }
    }
    for ((id, _), dir) in spec.nodes.iter().zip(&dirs) {
        let lock = DataDirLock::acquire(dir).map_err(OpsError::Locked)?;
        clear(dir, lock.path())?;
        let log = LogStore::open(dir).map_err(OpsError::Raft)?;
        log.seed(spec.initial_term, spec.initial_leader, membership.clone())
            .map_err(OpsError::Raft)?;
        log.claim(*id).map_err(OpsError::Raft)?;
    }
    Ok(dirs)
}

/// Removes everything in `dir` but the lock file.
pub(crate) fn clear(dir: &Path, keep: &Path) -> Result<(), OpsError> {
    for entry in std::fs::read_dir(dir).map_err(at(dir))? {
        let path = entry.map_err(at(dir))?.path();
        if path == keep {
            continue;
        }
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(at(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(leader: NodeId) -> ClusterSpec {
        ClusterSpec {
            nodes: vec![(1, "127.0.0.1:1".into()), (2, "127.0.0.1:2".into())],
            initial_leader: leader,
            initial_term: 3,
        }
    }

    #[test]
    fn generated_dirs_hold_the_membership_and_the_leaders_vote() {
        let out = tempfile::tempdir().expect("tempdir");
        let dirs = generate(&spec(2), out.path(), false).expect("generate");
        assert_eq!(dirs.len(), 2);
        for dir in &dirs {
            let s = LogStore::open_read_only(dir)
                .expect("open")
                .summary()
                .expect("summary");
            assert!(s.problems.is_empty(), "{:?}", s.problems);
            let vote = s.vote.expect("vote");
            assert_eq!(
                (vote.leader_id.term, vote.leader_id.node_id, vote.committed),
                (3, 2, true)
            );
            let (log_id, m) = s.membership.expect("membership");
            assert_eq!(log_id.index, 0);
            assert_eq!(m.voter_ids().collect::<Vec<_>>(), vec![1, 2]);
        }
    }

    #[test]
    fn existing_dirs_are_kept_without_force_and_bad_specs_are_refused() {
        let out = tempfile::tempdir().expect("tempdir");
        generate(&spec(1), out.path(), false).expect("generate");
        let err = generate(&spec(1), out.path(), false).expect_err("exists");
        assert!(err.to_string().contains("--force"), "{err}");
        generate(&spec(2), out.path(), true).expect("forced");
        let s = LogStore::open_read_only(&node_dir(out.path(), 1))
            .expect("open")
            .summary()
            .expect("summary");
        assert_eq!(s.vote.expect("vote").leader_id.node_id, 2);
        let err = generate(&spec(9), out.path(), true).expect_err("leader not a node");
        assert!(err.to_string().contains("initial leader 9"), "{err}");
        let _held = DataDirLock::acquire(&node_dir(out.path(), 1)).expect("lock");
        let err = generate(&spec(1), out.path(), true).expect_err("in use");
        assert!(err.to_string().contains("in use"), "{err}");
    }
}
