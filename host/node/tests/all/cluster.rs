//! Real clusters: three nodes on 127.0.0.1 over QUIC with mutual TLS, real LMDB, real wasm.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use openraft::{BasicNode, ServerState};
use tempfile::TempDir;
use wraft_core::EntryResponse;
use wraft_host::cluster::{ClusterNode, NodeConfig, NodeError};
use wraft_host::raft::{Raft, SnapshotPolicy};
use wraft_transport_quic::pki::DevCa;
use wraft_transport_quic::wire::{self, Reply, Request};
use wraft_transport_quic::{ALPN_RAFT, TlsIdentity, client_config};

pub use crate::common::setup_probe;

const DEFAULT_CHECKPOINTS: Option<Duration> =
    Some(wraft_host::cluster::DEFAULT_CHECKPOINT_INTERVAL);
use crate::common::{name, probe_apply, probe_counter, raft_write};

pub(crate) fn identity(ca: &DevCa, id: u64) -> TlsIdentity {
    let node = ca.node(id).expect("node cert");
    TlsIdentity::from_pem(&ca.cert_pem, &node.cert_pem, &node.key_pem).expect("identity")
}

pub struct Cluster {
    pub ca: DevCa,
    dirs: Vec<TempDir>,
    nodes: Vec<Option<ClusterNode>>,
    pub addrs: Vec<SocketAddr>,
    policy: SnapshotPolicy,
    queue: usize,
    pub auto_promote: Option<wraft_host::cluster::AutoPromote>,
    /// Give every node an HTTP port with these tokens.
    pub http_tokens: Option<Vec<(String, wraft_api::Role)>>,
    /// How often leaders propose consistency checkpoints.
    checkpoint_interval: Option<Duration>,
    /// Changes every node's config after the above (timings, limits).
    tune: fn(&mut NodeConfig),
}

impl Cluster {
    pub async fn start(n: u64, policy: SnapshotPolicy) -> Self {
        Self::start_with(n, policy, wraft_host::api::DEFAULT_QUEUE).await
    }

    pub async fn start_with(n: u64, policy: SnapshotPolicy, queue: usize) -> Self {
        Self::start_full(n, policy, queue, None).await
    }

    pub async fn start_full(
        n: u64,
        policy: SnapshotPolicy,
        queue: usize,
        auto_promote: Option<wraft_host::cluster::AutoPromote>,
    ) -> Self {
        Self::start_all(n, policy, queue, auto_promote, None, DEFAULT_CHECKPOINTS).await
    }

    /// Nodes whose leader proposes a consistency checkpoint every `interval` (each with an
    /// HTTP port, for `/readyz`).
    pub async fn start_checkpointing(n: u64, interval: Duration) -> Self {
        Self::start_all(
            n,
            SnapshotPolicy::default(),
            wraft_host::api::DEFAULT_QUEUE,
            None,
            Some(vec![(
                "reader-token-0123".to_string(),
                wraft_api::Role::Reader,
            )]),
            Some(interval),
        )
        .await
    }

    /// Nodes with an HTTP port each, accepting `tokens`, whose configs `tune` changes.
    pub async fn start_tuned(
        n: u64,
        tokens: Vec<(String, wraft_api::Role)>,
        tune: fn(&mut NodeConfig),
    ) -> Self {
        let mut c = Self::unstarted(
            SnapshotPolicy::default(),
            wraft_host::api::DEFAULT_QUEUE,
            None,
            Some(tokens),
            DEFAULT_CHECKPOINTS,
        );
        c.tune = tune;
        c.boot_all(n).await;
        c
    }

    /// Nodes with an HTTP port each, accepting `tokens`.
    pub async fn start_http(n: u64, tokens: Vec<(String, wraft_api::Role)>) -> Self {
        Self::start_all(
            n,
            SnapshotPolicy::default(),
            wraft_host::api::DEFAULT_QUEUE,
            None,
            Some(tokens),
            DEFAULT_CHECKPOINTS,
        )
        .await
    }

    async fn start_all(
        n: u64,
        policy: SnapshotPolicy,
        queue: usize,
        auto_promote: Option<wraft_host::cluster::AutoPromote>,
        http_tokens: Option<Vec<(String, wraft_api::Role)>>,
        checkpoint_interval: Option<Duration>,
    ) -> Self {
        let mut c = Self::unstarted(
            policy,
            queue,
            auto_promote,
            http_tokens,
            checkpoint_interval,
        );
        c.boot_all(n).await;
        c
    }

    fn unstarted(
        policy: SnapshotPolicy,
        queue: usize,
        auto_promote: Option<wraft_host::cluster::AutoPromote>,
        http_tokens: Option<Vec<(String, wraft_api::Role)>>,
        checkpoint_interval: Option<Duration>,
    ) -> Self {
        Cluster {
            ca: DevCa::generate("wraft test CA").expect("CA"),
            dirs: Vec::new(),
            nodes: Vec::new(),
            addrs: Vec::new(),
            policy,
            queue,
            auto_promote,
            http_tokens,
            checkpoint_interval,
            tune: |_| {},
        }
    }

    /// Boots nodes `1..=n` and initializes them as one cluster.
    async fn boot_all(&mut self, n: u64) {
        let c = self;
        for id in 1..=n {
            c.dirs.push(tempfile::tempdir().expect("tmp"));
            let node = c.boot(id, "127.0.0.1:0".parse().expect("addr")).await;
            c.addrs.push(node.addr);
            c.nodes.push(Some(node));
        }
        let members: BTreeMap<u64, BasicNode> = c
            .addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (i as u64 + 1, BasicNode::new(a.to_string())))
            .collect();
        c.node(1)
            .raft
            .initialize(members)
            .await
            .expect("initialize");
    }

    async fn boot(&self, id: u64, listen: SocketAddr) -> ClusterNode {
        // A restart reuses the node's port. Now and then the stopped node's QUIC endpoint
        // keeps it bound until a connection's 30 s idle timeout ends (a lingering connection
        // not yet pinned down; a new process never sees this); wait for it, up to 40 s.
        let mut tries = 0;
        loop {
            match ClusterNode::start(self.config(id, listen)).await {
                Err(NodeError::Storage(e))
                    if e.kind() == std::io::ErrorKind::AddrInUse && tries < 200 =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                started => return started.expect("node starts"),
            }
        }
    }

    fn config(&self, id: u64, listen: SocketAddr) -> NodeConfig {
        let mut config = NodeConfig::new(
            id,
            self.dirs[id as usize - 1].path().to_path_buf(),
            listen,
            identity(&self.ca, id),
        );
        config.snapshots = self.policy;
        config.queue = self.queue;
        config.auto_promote = self.auto_promote;
        config.checkpoint_interval = self.checkpoint_interval;
        if let Some(tokens) = &self.http_tokens {
            let mut http = wraft_host::http::HttpConfig::new(
                "127.0.0.1:0".parse().expect("addr"),
                tokens.clone(),
            );
            // TLS, as `wraft serve` serves by default: a certificate of the cluster CA valid
            // for the address the tests connect to.
            let cert = self
                .ca
                .node_at(id, &["127.0.0.1".into()])
                .expect("HTTP certificate");
            http.tls = Some(
                wraft_host::http::server_config(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes())
                    .expect("TLS settings"),
            );
            // Small enough for the tests to send a body past it.
            http.max_body = 1 << 20;
            config.http = Some(http);
        }
        (self.tune)(&mut config);
        config
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> &std::path::Path {
        self.dirs[id as usize - 1].path()
    }

    /// Node `id`'s HTTP port, reached over TLS trusting the cluster CA.
    pub fn http_port(&self, id: u64) -> crate::http::Port {
        let addr = self.node(id).http_addr.expect("an HTTP port");
        crate::http::Port::tls(addr, &self.ca.cert_pem)
    }

    pub fn node(&self, id: u64) -> &ClusterNode {
        self.nodes[id as usize - 1]
            .as_ref()
            .expect("node is running")
    }

    pub fn live(&self) -> impl Iterator<Item = &ClusterNode> {
        self.nodes.iter().flatten()
    }

    /// The leader all live nodes agree on.
    pub async fn leader(&self) -> &ClusterNode {
        for _ in 0..200 {
            let views: Vec<Option<u64>> = self
                .live()
                .map(|n| n.raft.metrics().borrow_watched().current_leader)
                .collect();
            if let Some(Some(l)) = views.first()
                && views.iter().all(|v| *v == Some(*l))
                && self.nodes[*l as usize - 1].is_some()
            {
                let leader = self.node(*l);
                if leader.raft.metrics().borrow_watched().state == ServerState::Leader {
                    return leader;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no agreed leader within 10 s");
    }

    pub async fn stop(&mut self, id: u64) {
        let node = self.nodes[id as usize - 1].take().expect("running");
        node.shutdown().await;
    }

    pub async fn restart(&mut self, id: u64) {
        let node = self.boot(id, self.addrs[id as usize - 1]).await;
        self.nodes[id as usize - 1] = Some(node);
    }

    /// Restarts `id` on another port: the others still send to its old address, so it
    /// hears nobody while it can still reach everyone (a one-way partition).
    pub async fn restart_unreachable(&mut self, id: u64) {
        let node = self.boot(id, "127.0.0.1:0".parse().expect("addr")).await;
        self.nodes[id as usize - 1] = Some(node);
    }

    /// Starts one more node (not a member yet); returns its id.
    pub async fn add_node(&mut self) -> u64 {
        self.prepare_node_dir();
        self.add_prepared_node().await
    }

    /// Creates the next node's data directory (to fill it before it starts).
    pub fn prepare_node_dir(&mut self) -> std::path::PathBuf {
        self.dirs.push(tempfile::tempdir().expect("tmp"));
        self.dirs[self.dirs.len() - 1].path().to_path_buf()
    }

    /// Starts the node whose directory [`Cluster::prepare_node_dir`] made; returns its id.
    pub async fn add_prepared_node(&mut self) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        assert_eq!(self.dirs.len() as u64, id, "prepare_node_dir first");
        let node = self.boot(id, "127.0.0.1:0".parse().expect("addr")).await;
        self.addrs.push(node.addr);
        self.nodes.push(Some(node));
        id
    }

    /// A client certificate identity with `role`.
    pub fn client_identity(&self, role: wraft_api::Role) -> TlsIdentity {
        let c = self.ca.client("test client", role).expect("client cert");
        TlsIdentity::from_pem(&self.ca.cert_pem, &c.cert_pem, &c.key_pem).expect("identity")
    }

    /// A client that knows only the given nodes.
    pub fn client(&self, role: wraft_api::Role, ids: &[u64]) -> wraft_client::Client {
        let addrs = ids
            .iter()
            .map(|id| self.addrs[*id as usize - 1].to_string())
            .collect();
        wraft_client::Client::new(addrs, &self.client_identity(role)).expect("client")
    }

    pub async fn stop_all(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            if self.nodes[id as usize - 1].is_some() {
                self.stop(id).await;
            }
        }
    }

    /// Waits until every live node's state env (its store, not its metrics, which may lag)
    /// has applied the leader's whole log, then returns each node's state hash of FSM "p".
    pub async fn converged_hashes(&self) -> Vec<[u8; 32]> {
        self.converged_hashes_of("p").await
    }

    /// As [`Cluster::converged_hashes`], for FSM `fsm`.
    pub async fn converged_hashes_of(&self, fsm: &str) -> Vec<[u8; 32]> {
        let leader = self.leader().await;
        // The leader's log, not what its store has applied: a new leader may still be
        // applying its predecessor's entries (one transaction for a run of slow ones), and
        // every node, the leader too, must have applied them before hashes compare.
        let target = leader
            .raft
            .metrics()
            .borrow_watched()
            .last_log_index
            .unwrap_or(0);
        for n in self.live() {
            let mut waited = 0;
            while n.store.applied().expect("applied").map_or(0, |a| a.index) < target {
                assert!(
                    waited < 400,
                    "node {} did not reach index {target} within 20 s",
                    n.id
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                waited += 1;
            }
        }
        self.live()
            .map(|n| {
                n.store
                    .fsm_hash(&name(fsm))
                    .expect("hash")
                    .expect("fsm exists")
            })
            .collect()
    }
}

use openraft::type_config::async_runtime::WatchReceiver;

pub(crate) async fn increments(raft: &Raft, n: u64) {
    for _ in 0..n {
        let r = raft_write(
            raft,
            probe_apply("p", &probe::Command::Incr { key: b"n".to_vec() }),
        )
        .await;
        assert!(matches!(r, EntryResponse::Output(_)), "{r:?}");
    }
}

fn all_equal(hashes: &[[u8; 32]]) -> bool {
    hashes.windows(2).all(|w| w[0] == w[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_survive_leader_loss_and_agree() {
    let mut c = Cluster::start(3, SnapshotPolicy::default()).await;
    let leader = c.leader().await;
    setup_probe(&leader.raft).await;
    increments(&leader.raft, 30).await;
    let hashes = c.converged_hashes().await;
    assert_eq!(hashes.len(), 3);
    let counters: Vec<u64> = c.live().map(|n| probe_counter(&n.store)).collect();
    let applied: Vec<_> = c
        .live()
        .map(|n| n.store.applied().expect("applied"))
        .collect();
    assert!(
        all_equal(&hashes),
        "replicas disagree: counters {counters:?}, applied {applied:?}"
    );

    // Kill the leader: another node takes over and writes continue; nothing acknowledged is lost.
    let old = c.leader().await.id;
    c.stop(old).await;
    let new = c.leader().await;
    assert_ne!(new.id, old);
    assert_eq!(
        probe_counter(&new.store),
        30,
        "every acknowledged write survived the leader's loss"
    );
    increments(&new.raft, 20).await;
    assert!(all_equal(&c.converged_hashes().await));

    // The old leader restarts on its address and catches up.
    c.restart(old).await;
    let hashes = c.converged_hashes().await;
    assert_eq!(hashes.len(), 3);
    assert!(
        all_equal(&hashes),
        "the restarted node disagrees: {hashes:?}"
    );
    assert_eq!(probe_counter(&c.node(old).store), 50);
    for id in 1..=3 {
        c.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_missed_purged_entries_installs_a_snapshot_over_quic() {
    // Snapshot every 10 entries and keep no trailing log, so the leader purges quickly.
    let policy = SnapshotPolicy {
        interval: Duration::from_secs(3600),
        threshold: 10,
        trailing_logs: 0,
    };
    let mut c = Cluster::start(3, policy).await;
    let leader = c.leader().await;
    setup_probe(&leader.raft).await;
    let follower = (1..=3).find(|id| *id != leader.id).expect("a follower");
    c.stop(follower).await;
    let leader = c.leader().await;
    increments(&leader.raft, 60).await;
    leader
        .raft
        .wait(Some(Duration::from_secs(20)))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index > 10),
            "leader purged its log",
        )
        .await
        .expect("purge");
    c.restart(follower).await;
    let hashes = c.converged_hashes().await;
    assert!(all_equal(&hashes), "{hashes:?}");
    let f = c.node(follower);
    assert_eq!(probe_counter(&f.store), 60);
    assert!(
        f.raft.metrics().borrow_watched().snapshot.is_some(),
        "the follower caught up through a snapshot"
    );
    for id in 1..=3 {
        c.stop(id).await;
    }
}

/// Connects to `addr` as `identity` and introduces itself as node `claim`.
pub(crate) async fn hello(
    identity: &TlsIdentity,
    addr: SocketAddr,
    server: u64,
    claim: u64,
) -> Result<(), String> {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    ep.set_default_client_config(client_config(identity, ALPN_RAFT).expect("config"));
    let conn = ep
        .connect(addr, &wraft_transport_quic::pki::node_name(server))
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    wire::send(&mut send, &Request::Hello { from: claim })
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    match wire::recv::<Reply>(&mut recv, 1 << 16)
        .await
        .map_err(|e| e.to_string())?
    {
        Reply::Hello(r) => r,
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_a_foreign_ca_or_a_borrowed_identity_are_refused() {
    let c = Cluster::start(1, SnapshotPolicy::default()).await;
    let addr = c.node(1).addr;
    // A proper node certificate is accepted.
    assert_eq!(hello(&identity(&c.ca, 2), addr, 1, 2).await, Ok(()));
    // Node 3's certificate cannot speak as node 2.
    let err = hello(&identity(&c.ca, 3), addr, 1, 2)
        .await
        .expect_err("impersonation");
    assert!(err.contains("not node 2"), "{err}");
    // A certificate from another CA is refused by the TLS handshake.
    let other = DevCa::generate("another CA").expect("CA");
    let foreign = other.node(2).expect("cert");
    let id = TlsIdentity::from_pem(&c.ca.cert_pem, &foreign.cert_pem, &foreign.key_pem)
        .expect("identity");
    assert!(
        hello(&id, addr, 1, 2).await.is_err(),
        "a foreign-CA certificate got through"
    );
    // And a node does not trust a server from another CA either.
    let stranger = TlsIdentity::from_pem(&other.cert_pem, &foreign.cert_pem, &foreign.key_pem)
        .expect("identity");
    assert!(hello(&stranger, addr, 1, 2).await.is_err());
}

/// A client incrementing the probe FSM "p"'s counter `n` through the API, one write after
/// another until stopped: the write load beside a backup or a compaction.
pub(crate) struct Incrementer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Incrementer {
    pub(crate) fn start(client: wraft_client::Client) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = {
            let (stop, acked) = (stop.clone(), acked.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    client
                        .apply_json(&name("p"), r#"{"Incr":{"key":[110]}}"#)
                        .await
                        .expect("write acknowledged");
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        Self { stop, acked, task }
    }

    /// Returns once `more` writes past those acknowledged now are acknowledged.
    pub(crate) async fn wait_for_more(&self, more: u64) {
        use std::sync::atomic::Ordering;
        let target = self.acked.load(Ordering::Relaxed) + more;
        while self.acked.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops after the write in flight; returns the writes acknowledged.
    pub(crate) async fn stop(self) -> u64 {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("writer");
        self.acked.load(Ordering::Relaxed)
    }
}
