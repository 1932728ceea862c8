//! Which entries a leader may propose while its members run different builds: the entry
//! level gate of a rolling upgrade.
//!
//! Each build reads the entry levels up to [`wraft_core::ENTRY_LEVEL`]; an operator may pin
//! a node lower (`--entry-level`) to keep a way back to an older build. A leader asks every
//! member which level it reads (`ApiRequest::Features`) and proposes entries of a newer
//! level only once all of them have said they read it, so no node is sent an entry it cannot
//! decode. The level a leader finds holds only for the term and the membership it asked
//! under: a new term or a membership change falls back to level 1 until every member of it
//! has answered (one round trip; while a member is down, until it is back). Passive voters
//! (microcontrollers) are not asked: they are sent log ids, never entries. Downgrading a
//! node to a build below a level the log already holds is not supported: pin the level
//! before the upgrade instead (docs/operations.md, "Upgrading wraft"). For the same reason
//! a leader refuses to add a learner that says it reads less than the leader writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;
use tokio::task::JoinHandle;
use wraft_api::{ApiCallRef, ApiError, ApiRequest, ApiResponse, NodeFeatures, Role};
use wraft_core::raft::{LogId, NodeId};
use wraft_transport_quic::api;

use super::NodeApi;
use crate::raft::Raft;

/// The level every build reads: format V2 as first released.
pub const BASE_LEVEL: u32 = 1;
/// The level that adds `Command::Group`.
pub const GROUP_LEVEL: u32 = 2;

/// How often a leader asks its members which level they read.
const ASK_EVERY: Duration = Duration::from_millis(500);
/// How long a leader waits for one member's answer (a dial included).
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a level was found: the leader's term and the membership its members were asked
/// under. The level holds only while both are current.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Asked {
    term: u64,
    membership: Option<LogId>,
}

impl Asked {
    fn now(raft: &Raft) -> Self {
        Self::of(&raft.metrics().borrow_watched())
    }

    fn of(m: &openraft::RaftMetrics<wraft_core::raft::TypeConfig>) -> Self {
        Self {
            term: m.current_term,
            membership: *m.membership_config.log_id(),
        }
    }
}

/// This node's own entry level and, while it leads, the level its members all read.
#[derive(Debug)]
pub(crate) struct EntryLevels {
    /// The level this node reads and says it reads.
    own: u32,
    /// The lowest level the members read, and the term and membership they were asked
    /// under; `None` until a leader's first round of asks.
    found: Mutex<Option<(Asked, u32)>>,
}

impl EntryLevels {
    pub(crate) fn new(own: u32) -> Self {
        Self {
            own,
            found: Mutex::new(None),
        }
    }

    /// The level this node reads.
    pub(crate) fn own(&self) -> u32 {
        self.own
    }

    /// The level this node may propose now: what its members said under the current term
    /// and membership, [`BASE_LEVEL`] if they have not all said it yet.
    pub(crate) fn now(&self, raft: &Raft) -> u32 {
        let found = self.found.lock().unwrap_or_else(PoisonError::into_inner);
        match &*found {
            Some((asked, level)) if *asked == Asked::now(raft) => *level,
            _ => BASE_LEVEL,
        }
    }

    /// Whether every member reads grouped writes (`Command::Group`) now.
    pub(crate) fn groups(&self, raft: &Raft) -> bool {
        self.now(raft) >= GROUP_LEVEL
    }

    fn set(&self, found: Option<(Asked, u32)>) {
        let level = found.as_ref().map_or(BASE_LEVEL, |(_, l)| *l);
        let mut slot = self.found.lock().unwrap_or_else(PoisonError::into_inner);
        let was = slot.as_ref().map_or(BASE_LEVEL, |(_, l)| *l);
        if was != level {
            tracing::info!("entries of level {level} may be proposed (was {was})");
        }
        *slot = found;
    }
}

/// Forgets the level when the watch task ends, however it ends.
struct ForgetOnExit(Arc<NodeApi>);

impl Drop for ForgetOnExit {
    fn drop(&mut self) {
        self.0.levels.set(None);
    }
}

impl NodeApi {
    /// What this node reads, for a leader asking.
    pub(super) fn features(&self) -> NodeFeatures {
        NodeFeatures {
            node: self.id,
            version: env!("CARGO_PKG_VERSION").into(),
            entry_level: self.levels.own(),
        }
    }

    /// The log entry level this node may propose now (1 unless it leads and every member
    /// has said it reads more), for `/metrics`.
    pub fn entry_level(&self) -> u32 {
        self.levels.now(&self.raft)
    }

    /// While this node leads, asks its members which level they read, every [`ASK_EVERY`],
    /// and records the lowest with the term and membership it holds for. Ends when raft
    /// shuts down.
    pub fn spawn_level_watch(self: &Arc<Self>) -> JoinHandle<()> {
        let api = self.clone();
        tokio::spawn(async move {
            let _forget = ForgetOnExit(api.clone());
            // Each member's last answer in this term: a new term starts from nothing.
            let mut heard: HashMap<NodeId, u32> = HashMap::new();
            let mut term = 0;
            let mut tick = crate::raft::ticker(ASK_EVERY);
            loop {
                let m = api.raft.metrics().borrow_watched().clone();
                if m.running_state.is_err() {
                    break;
                }
                if m.current_term != term {
                    (heard, term) = (HashMap::new(), m.current_term);
                }
                if m.current_leader != Some(api.id) {
                    api.levels.set(None);
                    tick.tick().await;
                    continue;
                }
                let asked = Asked::of(&m);
                let members = super::members_with_entries(&m, api.id);
                let mut asks = tokio::task::JoinSet::new();
                // Everyone, every round: a member restarted on a newer build (or unpinned)
                // raises the level. One down keeps its last answer of this term.
                for (node, addr) in &members {
                    let (api, node, addr) = (api.clone(), *node, addr.clone());
                    asks.spawn(async move { (node, api.entry_level_of(node, &addr).await) });
                }
                while let Some(answer) = asks.join_next().await {
                    if let Ok((node, Some(level))) = answer {
                        heard.insert(node, level);
                    }
                }
                let level = members
                    .iter()
                    .map(|(node, _)| heard.get(node).copied().unwrap_or(BASE_LEVEL))
                    .fold(api.levels.own(), u32::min);
                api.levels.set(Some((asked, level)));
                tick.tick().await;
            }
        })
    }

    /// Refuses to add `node` (at `addr`) as a learner when it says it reads a lower entry
    /// level than this leader's own: the log may hold entries of that level from any term,
    /// which an older build would replay up to the first it cannot decode and stop there
    /// (stalling the cluster once promoted). Conservative for a newer build pinned lower,
    /// which is refused too. One that cannot be asked (not started yet, or no answer within
    /// a second) is added as before, with a warning; passive voters receive no entries.
    pub(super) async fn check_joiner(&self, node: NodeId, addr: &str) -> Result<(), ApiError> {
        if crate::voter::is_passive(addr) {
            return Ok(());
        }
        let own = self.levels.own();
        match self.entry_level_of(node, addr).await {
            Some(level) if level < own => Err(ApiError::BadRequest(format!(
                "node {node} at {addr} says it reads entries up to level {level} (an older \
                 build, or --entry-level {level}), and this leader's build may write level \
                 {own}: start it on a build at least as new as the members', without a lower \
                 --entry-level (docs/operations.md, \"Upgrading wraft\")"
            ))),
            Some(_) => Ok(()),
            None => {
                tracing::warn!(
                    "node {node} at {addr} did not say which entry level it reads: added \
                     without the check"
                );
                Ok(())
            }
        }
    }

    /// The level `node` (at `addr`) says it reads: `Some(BASE_LEVEL)` if it answers without
    /// knowing the question (an older build), `None` if it cannot be asked now.
    async fn entry_level_of(&self, node: NodeId, addr: &str) -> Option<u32> {
        let ask = async {
            let conn = self.forward.connection(node, addr).await.ok()?;
            let (send, recv) = conn.open_bi().await.ok()?;
            let call = ApiCallRef::Forwarded {
                role: Role::Reader,
                request: &ApiRequest::Features,
            };
            match api::exchange(send, recv, call).await {
                Ok(Ok(ApiResponse::Features(f))) if f.node == node => Some(f.entry_level),
                Ok(Ok(other)) => {
                    tracing::warn!("node {node} answered a features request with {other:?}");
                    None
                }
                // A build that predates the question refuses it as a request it cannot
                // decode; any other refusal (not yet a member, say) tells nothing.
                Ok(Err(wraft_api::ApiError::BadRequest(why))) => {
                    tracing::debug!("node {node} does not know features requests: {why}");
                    Some(BASE_LEVEL)
                }
                Ok(Err(e)) => {
                    tracing::debug!("node {node} refused a features request: {e}");
                    None
                }
                Err(e) => {
                    tracing::debug!("asking node {node} for its features: {e}");
                    None
                }
            }
        };
        tokio::time::timeout(ASK_TIMEOUT, ask).await.ok().flatten()
    }
}
