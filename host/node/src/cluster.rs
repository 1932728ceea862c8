//! A raft node on the network: LMDB stores, the FSM runtime, openraft, and the QUIC
//! transport, started together and stopped together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::Config;
use tokio::task::JoinHandle;
use wraft_core::raft::NodeId;
use wraft_transport_quic::{RaftClient, TlsIdentity, endpoint_config, serve, server_config};

use crate::api::{DEFAULT_QUEUE, NodeApi};

use crate::raft::{LogStore, Raft, SnapshotPolicy, StateMachine};
use crate::runtime::FsmRuntime;
use crate::state::StateStore;

/// What a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (must match its certificate).
    pub id: NodeId,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The UDP address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// Its TLS identity.
    pub identity: TlsIdentity,
    /// Raft timing; defaults suit a LAN.
    pub raft: Config,
    /// When to snapshot.
    pub snapshots: SnapshotPolicy,
    /// Proposals admitted at once; more get `QueueFull`.
    pub queue: usize,
    /// Promote learners to voters automatically (off by default).
    pub auto_promote: Option<AutoPromote>,
    /// The HTTP port (health, metrics, JSON API), if any.
    pub http: Option<crate::http::HttpConfig>,
    /// How often the leader proposes a consistency checkpoint (when entries were applied
    /// since the last one); `None` turns checkpoints off.
    pub checkpoint_interval: Option<Duration>,
    /// Ceiling of the state env in bytes (LMDB map size).
    pub max_state_bytes: usize,
    /// Ceiling of the raft log env in bytes (LMDB map size).
    pub max_log_bytes: usize,
    /// Byte streams to the passive voters this node is wired to.
    pub voter_links: crate::voter::VoterLinks,
    /// The cluster's voter key, which seals every frame on those streams (required with
    /// any link).
    pub voter_key: Option<wraft_core::link::auth::ClusterKey>,
    /// What the node admits from callers and peers.
    pub limits: crate::limits::NodeLimits,
    /// The newest entry level this node says it reads, 1 to [`wraft_core::ENTRY_LEVEL`]:
    /// lower than its build's keeps a rolling upgrade reversible (`api::level`).
    pub entry_level: u32,
}

/// How often [`ClusterNode::stopped`] looks whether raft has stopped.
pub const STOPPED_CHECK_EVERY: Duration = Duration::from_millis(100);

/// Default interval between consistency checkpoints.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// While this node leads, proposes a checkpoint every `interval` if anything but a checkpoint
/// was applied since the last one. Ends when raft shuts down.
fn spawn_checkpoints(
    id: NodeId,
    raft: Raft,
    store: Arc<StateStore>,
    interval: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        use openraft::type_config::async_runtime::WatchReceiver;
        let mut tick = crate::raft::ticker(interval);
        loop {
            tick.tick().await;
            let m = raft.metrics().borrow_watched().clone();
            if m.running_state.is_err() {
                break;
            }
            if m.current_leader != Some(id) {
                continue;
            }
            // Off the async workers: a state read can wait behind a growth of the map.
            let read = store.clone();
            let last = match tokio::task::spawn_blocking(move || read.last_checkpoint()).await {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    tracing::warn!("checkpoint skipped: {e}");
                    continue;
                }
                Err(e) => {
                    tracing::warn!("checkpoint skipped: reading the last one: {e}");
                    continue;
                }
            };
            let applied = m.last_applied.map_or(0, |l| l.index);
            if last.as_ref().is_some_and(|d| d.index >= applied) {
                continue; // nothing applied since the last checkpoint
            }
            let entry = wraft_core::LogEntry::new(
                crate::clock::now_ms(),
                wraft_core::Command::Checkpoint { leader: last },
            );
            if let Err(e) = raft.client_write(entry).await {
                tracing::debug!("checkpoint not committed: {e}");
            }
        }
    })
}

/// Kommander's learner promotion: while this node leads, a learner whose replication lag
/// stays at or under `max_lag` entries for `stable_window` becomes a voter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoPromote {
    /// Largest lag (leader's last log index minus the learner's matched index).
    pub max_lag: u64,
    /// How long the lag must stay under the bound.
    pub stable_window: Duration,
}

impl AutoPromote {
    /// Runs until the node shuts down.
    fn spawn(self, raft: Raft) -> JoinHandle<()> {
        tokio::spawn(async move {
            use openraft::type_config::async_runtime::WatchReceiver;
            let mut since: std::collections::HashMap<NodeId, tokio::time::Instant> =
                Default::default();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let m = raft.metrics().borrow_watched().clone();
                if m.running_state.is_err() {
                    break;
                }
                let (Some(replication), Some(last)) = (m.replication.as_ref(), m.last_log_index)
                else {
                    since.clear();
                    continue;
                };
                let learners: Vec<NodeId> =
                    m.membership_config.membership().learner_ids().collect();
                since.retain(|id, _| learners.contains(id));
                for id in learners {
                    let matched = replication
                        .get(&id)
                        .and_then(|l| l.as_ref())
                        .map_or(0, |l| l.index);
                    if last.saturating_sub(matched) > self.max_lag {
                        since.remove(&id);
                        continue;
                    }
                    let first = *since.entry(id).or_insert_with(tokio::time::Instant::now);
                    if first.elapsed() >= self.stable_window {
                        let add = openraft::ChangeMembers::AddVoterIds(
                            std::collections::BTreeSet::from([id]),
                        );
                        match raft.change_membership(add, false).await {
                            Ok(_) => tracing::info!(
                                learner = id,
                                "promoted to voter: lag stayed within bounds"
                            ),
                            Err(e) => {
                                tracing::warn!(learner = id, "automatic promotion failed: {e}")
                            }
                        }
                        since.remove(&id);
                    }
                }
            }
        })
    }
}

impl NodeConfig {
    /// A config with wraft's defaults: pre-vote on, LAN timings, the default snapshot policy.
    pub fn new(id: NodeId, data_dir: PathBuf, listen: SocketAddr, identity: TlsIdentity) -> Self {
        let raft = Config {
            cluster_name: "wraft".into(),
            election_timeout_min: 300,
            election_timeout_max: 600,
            heartbeat_interval: 100,
            enable_pre_vote: Some(true),
            // A leader that restarts must win an election in a new term. Resuming in its old
            // term is unsafe here: it replicates entries before its own flush of them, so a
            // power loss can cost it entries its followers keep, and its next proposals
            // would reuse their log ids with other contents (followers match entries by log
            // id and keep theirs: the replicas diverge). In a new term, ids never collide.
            enable_leader_restore: Some(false),
            ..Default::default()
        };
        Self {
            id,
            data_dir,
            listen,
            identity,
            raft,
            snapshots: SnapshotPolicy::default(),
            queue: DEFAULT_QUEUE,
            auto_promote: None,
            http: None,
            checkpoint_interval: Some(DEFAULT_CHECKPOINT_INTERVAL),
            max_state_bytes: crate::state::DEFAULT_MAX_STATE_BYTES,
            max_log_bytes: crate::raft::DEFAULT_MAX_LOG_BYTES,
            voter_links: Default::default(),
            voter_key: None,
            limits: Default::default(),
            entry_level: wraft_core::ENTRY_LEVEL,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Opening the stores failed.
    #[error("storage: {0}")]
    Storage(#[from] std::io::Error),
    /// The runtime or state env failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The transport could not be set up.
    #[error(transparent)]
    Transport(#[from] wraft_transport_quic::TransportError),
    /// openraft refused the configuration or failed to start.
    #[error("raft: {0}")]
    Raft(String),
    /// The guest pool's threads could not start (the process is out of threads or memory).
    #[error("the guest pool (--guest-threads + --codec-threads threads): {0}")]
    GuestPool(String),
    /// Links to passive voters were given without the key that seals their frames.
    #[error("passive voter links need the cluster's voter key (--voter-key)")]
    NoVoterKey,
    /// An entry level this build does not have.
    #[error(
        "--entry-level {0} is not a level this build reads: give {base} to {max} (or \
         `entry_level` in the config file)",
        base = crate::api::level::BASE_LEVEL,
        max = wraft_core::ENTRY_LEVEL
    )]
    EntryLevel(u32),
}

/// Refuses an entry level this build does not read ([`NodeError::EntryLevel`]).
pub fn check_entry_level(level: u32) -> Result<(), NodeError> {
    if (crate::api::level::BASE_LEVEL..=wraft_core::ENTRY_LEVEL).contains(&level) {
        Ok(())
    } else {
        Err(NodeError::EntryLevel(level))
    }
}

/// Whether `error` comes from a write that found no room (a full disk, a quota, a file-size
/// limit), anywhere in its chain of causes.
fn out_of_space(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{FileTooLarge, QuotaExceeded, StorageFull};
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), StorageFull | QuotaExceeded | FileTooLarge)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The endpoint's bounds: the node's, with snapshots no larger than its state env may grow
/// (plus their checksum trailer).
fn transport_limits(config: &NodeConfig) -> wraft_transport_quic::ServerLimits {
    let mut limits = config.limits.transport.clone();
    let state = config.max_state_bytes as u64 + (1 << 20);
    limits.max_snapshot_bytes = limits.max_snapshot_bytes.min(state);
    limits
}

/// A running node.
#[derive(Debug)]
pub struct ClusterNode {
    /// Its id.
    pub id: NodeId,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The HTTP port's address, if it has one.
    pub http_addr: Option<SocketAddr>,
    /// The openraft handle.
    pub raft: Raft,
    /// Its state (queries, hashes).
    pub store: Arc<StateStore>,
    endpoint: quinn::Endpoint,
    tasks: Vec<JoinHandle<()>>,
    holds: crate::raft::StoreHolds,
    _lock: crate::ops::DataDirLock,
}

impl ClusterNode {
    /// Opens the node's stores and starts raft and the transport. A full disk (or file-size
    /// limit) while starting is explained as it is while running: make room, then restart.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        let data_dir = config.data_dir.clone();
        Self::open(config).await.map_err(|e| {
            if out_of_space(&e) {
                NodeError::Storage(crate::disk::write_failed(
                    "starting the node",
                    &data_dir,
                    &e,
                ))
            } else {
                e
            }
        })
    }

    async fn open(config: NodeConfig) -> Result<Self, NodeError> {
        if !config.voter_links.is_empty() && config.voter_key.is_none() {
            return Err(NodeError::NoVoterKey);
        }
        check_entry_level(config.entry_level)?;
        let lock = crate::ops::DataDirLock::acquire(&config.data_dir)?;
        let runtime = Arc::new(
            FsmRuntime::with_cache(&config.data_dir.join("cache"))
                .map_err(crate::state::StateError::from)?,
        );
        let options = crate::state::StateOptions {
            max_bytes: config.max_state_bytes,
            behind_log: true,
            ..Default::default()
        };
        let store = Arc::new(StateStore::open_with(&config.data_dir, runtime, options)?);
        // Read before raft starts, while nothing else can hold or grow the state env.
        store.publish_divergence()?;
        let log = LogStore::open_sized(&config.data_dir, config.max_log_bytes)?;
        let sm = StateMachine::with_store(&config.data_dir, store.clone())?
            .applying_only_durable(log.durable());
        let (removed, holds) = (sm.removed_nodes(), sm.holds());
        let log = log.held_by(&holds);
        let log_reclaimable = log.reclaimable();
        log.claim(config.id)?;
        // A node that led when it stopped (or the initial leader of `wraft init generate`)
        // campaigns at once in a new term (after a pre-vote, so a leader elected meanwhile
        // is left alone) rather than waiting out an election timeout.
        let led = openraft::storage::RaftLogReader::read_vote(&mut log.clone())
            .await?
            .is_some_and(|v| v.is_committed() && v.leader_id().node_id == config.id);
        crate::ops::backup::remove_stale(&config.data_dir);
        let endpoint = quinn::Endpoint::new(
            endpoint_config(&config.identity),
            Some(server_config(&config.identity)?),
            std::net::UdpSocket::bind(config.listen)?,
            Arc::new(quinn::TokioRuntime),
        )?;
        let addr = endpoint.local_addr()?;
        let quic = RaftClient::new(config.id, endpoint.clone(), &config.identity)?;
        let mut raft_config = config.raft.clone();
        config.snapshots.configure(&mut raft_config);
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| NodeError::Raft(e.to_string()))?,
        );
        // A voter honours the leader's lease as openraft's followers do (election_timeout_max).
        let lease = Duration::from_millis(raft_config.election_timeout_max);
        let network = crate::network::PeerNetwork::new(
            quic,
            &config.voter_links,
            config.voter_key.as_ref(),
            lease,
        );
        let raft = Raft::new(config.id, raft_config, network, log, sm)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if led {
            let _ = raft.trigger().elect(true).await;
        }
        let spool = config.data_dir.join("snapshots");
        let api = NodeApi::new(
            &config,
            raft.clone(),
            store.clone(),
            endpoint.clone(),
            removed,
            log_reclaimable,
        )?;
        crate::metrics::handle();
        let api = Arc::new(api);
        let mut tasks = vec![
            api.spawn_level_watch(),
            tokio::spawn(serve(
                endpoint.clone(),
                raft.clone(),
                spool,
                api.clone(),
                transport_limits(&config),
            )),
            config.snapshots.spawn_interval(raft.clone()),
        ];
        let http_addr = match config.http {
            Some(http) => {
                let (addr, task) = crate::http::serve(http, api).await?;
                tasks.push(task);
                Some(addr)
            }
            None => None,
        };
        if let Some(interval) = config.checkpoint_interval {
            tasks.push(spawn_checkpoints(
                config.id,
                raft.clone(),
                store.clone(),
                interval,
            ));
        }
        if let Some(auto) = config.auto_promote {
            tasks.push(auto.spawn(raft.clone()));
        }
        Ok(Self {
            id: config.id,
            addr,
            http_addr,
            raft,
            store,
            endpoint,
            tasks,
            holds,
            _lock: lock,
        })
    }

    /// Resolves, with the reason, once raft has stopped on a fatal error (a storage fault, a
    /// fault in an apply). Looked at every [`STOPPED_CHECK_EVERY`], not on each change of
    /// raft's metrics: those change several times per commit, and a task woken by each cost
    /// every node a thread wake-up, and a copy of the metrics, per commit.
    pub async fn stopped(&self) -> String {
        use openraft::type_config::async_runtime::WatchReceiver;
        let mut tick = crate::raft::ticker(STOPPED_CHECK_EVERY);
        loop {
            tick.tick().await;
            if let Err(e) = &self.raft.metrics().borrow_watched().running_state {
                return e.to_string();
            }
        }
    }

    /// Stops raft and closes the endpoint (peers see the connection close), then waits
    /// (up to 5 s) for in-flight requests to release the stores, so the same data directory
    /// can be opened again by this process.
    pub async fn shutdown(self) {
        // Bounded: after a fatal storage error, a stop must not wait on raft forever.
        if tokio::time::timeout(Duration::from_secs(5), self.raft.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("raft did not stop within 5 s; closing the node anyway");
        }
        self.endpoint.close(0u32.into(), b"node shutting down");
        for t in self.tasks {
            t.abort();
            if tokio::time::timeout(Duration::from_secs(2), t)
                .await
                .is_err()
            {
                tracing::warn!("a node task did not stop within 2 s of being aborted");
            }
        }
        // Let peers see the close; do not wait out the idle timeout of a dead peer.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        // openraft does not join its state-machine worker or the snapshot builds it spawned:
        // wait for them to let go of the store (a build copies the whole state env).
        if tokio::time::timeout(Duration::from_secs(120), self.holds.released())
            .await
            .is_err()
        {
            tracing::warn!("a snapshot build still holds the state env after 120 s");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.store) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(self.endpoint);
        // The UDP port is free once every endpoint handle is gone: wait for it, so a restart
        // on the same address succeeds.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while std::net::UdpSocket::bind(self.addr).is_err()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
