//! Refusals and failures a caller can get, with what to do about each.

use serde::{Deserialize, Serialize};
use wraft_core::{ApplyError, NodeId};

use crate::{ApiResponse, Role};

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApiError {
    /// The entry was applied and failed deterministically (the same on every node).
    #[error("{0}")]
    Failed(ApplyError),
    /// The caller's certificate does not carry the role the request needs.
    #[error("not allowed: this request needs the {needed:?} role; the caller has {have:?}")]
    NotAllowed {
        /// The role needed.
        needed: Role,
        /// The caller's role, if any.
        have: Option<Role>,
    },
    /// The node's proposal queue is full: retry later.
    #[error("queue full: node {node} has {capacity} proposals in flight; retry later")]
    QueueFull {
        /// The node.
        node: NodeId,
        /// Its queue capacity.
        capacity: usize,
    },
    /// There is no leader right now (an election is under way): retry.
    #[error("no leader right now; retry")]
    NoLeader,
    /// The request is malformed (bad JSON, unknown FSM for a codec, invalid module, ...).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The node could not serve it (storage fault, shutting down, leader unreachable).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The write may or may not have been applied: it was appended to the log and the node
    /// lost leadership before it committed (the next leader may commit it), or a follower
    /// forwarded it to the leader and the connection broke before the answer. Read before
    /// resending: a blind retry could apply it twice.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The node has as much work of this kind in progress as it admits (a bound on
    /// concurrent requests, in-flight bytes or connections): retry later, or elsewhere.
    /// Nothing was done.
    #[error("busy: {0}; retry later")]
    Busy(String),
}

/// A response frame.
pub type ApiResult = Result<ApiResponse, ApiError>;
