//! Which entries a leader may propose while its members run different builds: the entry
//! level gate of a rolling upgrade.
//!
//! Each build reads the entry levels up to [`wraft_core::ENTRY_LEVEL`]; an operator may pin
//! a node lower (`--entry-level`) to keep a way back to an older build. A leader asks every
//! member which level it reads (`ApiRequest::Features`) and proposes entries of a newer
//! level only once all of them have said they read it, so no node is sent an entry it cannot
//! decode. The model is etcd's cluster version: a member's level is remembered once heard,
//! and a member that has not answered this leader yet counts as level 1. So a new leader
//! proposes level-1 entries only until each member has answered once (one round trip), or,
//! if a member is down, until it is back. Downgrading a node below a level the log already
//! holds is not supported: pin the level before the upgrade instead (docs/operations.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use wraft_api::{ApiCallRef, ApiRequest, ApiResponse, NodeFeatures, Role};
use wraft_core::raft::NodeId;
use wraft_transport_quic::api;

use super::NodeApi;

/// The level every build reads: format V2 as first released.
pub const BASE_LEVEL: u32 = 1;
/// The level that adds `Command::Group`.
pub const GROUP_LEVEL: u32 = 2;

/// How often a leader asks its members which level they read.
const ASK_EVERY: Duration = Duration::from_millis(500);
/// How long a leader waits for one member's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// This node's own entry level and, while it leads, the level its members all read.
#[derive(Debug)]
pub(crate) struct EntryLevels {
    /// The level this node reads and says it reads.
    own: u32,
    /// The level this node may propose now: the lowest its members read, as last asked;
    /// [`BASE_LEVEL`] while it does not lead or has not heard from every member.
    cluster: AtomicU32,
}

impl EntryLevels {
    pub(crate) fn new(own: u32) -> Self {
        Self {
            own,
            cluster: AtomicU32::new(BASE_LEVEL),
        }
    }

    /// The level this node reads.
    pub(crate) fn own(&self) -> u32 {
        self.own
    }

    /// Whether every member reads grouped writes (`Command::Group`).
    pub(crate) fn groups(&self) -> bool {
        self.cluster.load(Ordering::Acquire) >= GROUP_LEVEL
    }

    fn set(&self, level: u32) {
        let was = self.cluster.swap(level, Ordering::AcqRel);
        if was != level {
            tracing::info!("entries of level {level} may be proposed (was {was})");
        }
        metrics::gauge!(crate::metrics::names::CLUSTER_ENTRY_LEVEL).set(f64::from(level));
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

    /// While this node leads, asks its members which level they read, every [`ASK_EVERY`],
    /// and sets the level it may propose. Ends when raft shuts down.
    pub fn spawn_level_watch(self: &Arc<Self>) -> JoinHandle<()> {
        let api = self.clone();
        tokio::spawn(async move {
            use openraft::type_config::async_runtime::WatchReceiver;
            // Each member's last answer to this node, kept across its terms as leader: a
            // member's level only rises (a downgrade below the log's level is unsupported).
            let mut heard: HashMap<NodeId, u32> = HashMap::new();
            let mut tick = crate::raft::ticker(ASK_EVERY);
            loop {
                let m = api.raft.metrics().borrow_watched().clone();
                if m.running_state.is_err() {
                    break;
                }
                if m.current_leader != Some(api.id) {
                    api.levels.set(BASE_LEVEL);
                    tick.tick().await;
                    continue;
                }
                let members: Vec<(NodeId, String)> = m
                    .membership_config
                    .membership()
                    .nodes()
                    .filter(|(id, _)| **id != api.id)
                    .map(|(id, n)| (*id, n.addr.clone()))
                    .collect();
                let mut asks = tokio::task::JoinSet::new();
                for (node, addr) in &members {
                    let (api, node, addr) = (api.clone(), *node, addr.clone());
                    asks.spawn(async move { (node, api.entry_level_of(node, &addr).await) });
                }
                for (node, level) in asks.join_all().await {
                    if let Some(level) = level {
                        heard.insert(node, level);
                    }
                }
                let level = members
                    .iter()
                    .map(|(node, _)| heard.get(node).copied().unwrap_or(BASE_LEVEL))
                    .fold(api.levels.own(), u32::min);
                // Only for the membership and term the members were asked under: a member
                // added meanwhile has not been asked.
                let now = api.raft.metrics().borrow_watched().clone();
                let same = now.current_leader == Some(api.id)
                    && now.current_term == m.current_term
                    && now.membership_config.log_id() == m.membership_config.log_id();
                api.levels.set(if same { level } else { BASE_LEVEL });
                tick.tick().await;
            }
        })
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
