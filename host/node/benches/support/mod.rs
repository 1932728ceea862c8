//! What the cluster benchmarks share: the disk's fdatasync floor and a 3-node cluster on
//! loopback with an admin client. Each bench uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use hdrhistogram::Histogram;
use openraft::BasicNode;
use wraft_client::Client;
use wraft_core::{FsmLimits, FsmName};
use wraft_host::cluster::{ClusterNode, NodeConfig};
use wraft_transport_quic::TlsIdentity;
use wraft_transport_quic::pki::{DevCa, Role};

/// Microseconds, for printing.
pub fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// The number in variable `name`, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seconds per measurement, from `WRAFT_BENCH_SECS` (default 5).
pub fn bench_secs() -> u64 {
    env_or("WRAFT_BENCH_SECS", 5)
}

/// A temp dir under `WRAFT_BENCH_DIR` (default: the system temp dir).
pub fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("WRAFT_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    tempfile::tempdir_in(base).expect("bench dir")
}

/// p50 of a 4 KiB write + fdatasync in `dir`, in ns.
pub fn fsync_p50(dir: &Path) -> u64 {
    let mut floor = Histogram::<u64>::new(3).expect("hist");
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(dir.join("fsync.probe"))
        .expect("probe");
    for _ in 0..200 {
        let t = Instant::now();
        f.write_all(&[0u8; 4096]).expect("write");
        f.sync_data().expect("fdatasync");
        floor.record(t.elapsed().as_nanos() as u64).expect("record");
    }
    floor.value_at_quantile(0.5)
}

/// A multi-threaded tokio runtime for a bench's async part.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt")
}

/// Three durable nodes with data under `dir`, and an admin identity.
pub struct BenchCluster {
    pub nodes: Vec<ClusterNode>,
    pub identity: TlsIdentity,
}

impl BenchCluster {
    pub async fn start(dir: &Path) -> Self {
        let ca = DevCa::generate("bench CA").expect("ca");
        let mut nodes = Vec::new();
        for id in 1..=3u64 {
            let c = ca.node(id).expect("cert");
            let identity =
                TlsIdentity::from_pem(&ca.cert_pem, &c.cert_pem, &c.key_pem).expect("identity");
            let mut config = NodeConfig::new(
                id,
                dir.join(format!("node-{id}")),
                "127.0.0.1:0".parse().expect("addr"),
                identity,
            );
            config.queue = 4096;
            nodes.push(ClusterNode::start(config).await.expect("node"));
        }
        let members: BTreeMap<u64, BasicNode> = nodes
            .iter()
            .map(|n| (n.id, BasicNode::new(n.addr.to_string())))
            .collect();
        nodes[0].raft.initialize(members).await.expect("init");
        let c = ca.client("bench", Role::Admin).expect("cert");
        let identity =
            TlsIdentity::from_pem(&ca.cert_pem, &c.cert_pem, &c.key_pem).expect("identity");
        Self { nodes, identity }
    }

    /// Deploys `module` and creates FSM `name` on it.
    pub async fn create_fsm(&self, module: &[u8], name: &str) -> FsmName {
        let admin = self.client();
        let id = admin.deploy(module.to_vec()).await.expect("deploy");
        let fsm = FsmName::new(name).expect("name");
        admin
            .create_fsm(fsm.clone(), id, FsmLimits::default())
            .await
            .expect("create");
        fsm
    }

    /// A client of every node.
    pub fn client(&self) -> Client {
        Client::new(
            self.nodes.iter().map(|n| n.addr.to_string()).collect(),
            &self.identity,
        )
        .expect("client")
    }

    /// A client of the current leader only.
    pub async fn leader_client(&self) -> Client {
        let leader = self
            .client()
            .status()
            .await
            .expect("status")
            .leader
            .expect("leader");
        let addr = self
            .nodes
            .iter()
            .find(|n| n.id == leader)
            .expect("leader node")
            .addr
            .to_string();
        Client::new(vec![addr], &self.identity).expect("client")
    }

    pub async fn shutdown(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}
