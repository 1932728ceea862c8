//! A node with a large state: snapshot build and install throughput, and restart to serving.
//!
//! One durable node (a single-voter cluster, real QUIC, LMDB and the `probe` guest) is
//! filled through raft with `Batch` entries of 1 KiB puts until its state env holds
//! `WRAFT_BENCH_STATE_MIB` (default 1024) MiB. Then:
//! - snapshot build: `trigger().snapshot()` until openraft reports it (copy + sha256);
//! - restart to serving: stop the node, start it again on the same directory, and time until
//!   a stale query of a stored key answers (and until it leads again, which includes one
//!   election timeout of 300–600 ms);
//! - snapshot install: the snapshot file installed into a fresh state machine elsewhere.
//!
//! Run: `cargo bench -p wraft-host --bench restart` (`WRAFT_BENCH_DIR` picks the disk).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use openraft::BasicNode;
use openraft::storage::RaftStateMachine;
use wraft_api::{ApiRequest, Consistency, Payload};
use wraft_client::Client;
use wraft_core::{FsmLimits, FsmName};
use wraft_host::cluster::{ClusterNode, NodeConfig};
use wraft_host::raft::StateMachine;
use wraft_host::runtime::FsmRuntime;
use wraft_transport_quic::TlsIdentity;
use wraft_transport_quic::pki::{DevCa, Role};

mod support;

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1 << 20)
}

fn identity(ca: &DevCa, cert: &wraft_transport_quic::pki::CertifiedKey) -> TlsIdentity {
    TlsIdentity::from_pem(&ca.cert_pem, &cert.cert_pem, &cert.key_pem).expect("identity")
}

fn put(key: u64, value: &[u8]) -> Payload {
    Payload::Postcard(
        postcard::to_allocvec(&probe::Command::Put {
            key: key.to_be_bytes().to_vec(),
            value: value.to_vec(),
        })
        .expect("encode"),
    )
}

async fn stale_get(client: &Client, fsm: &FsmName, key: u64) -> bool {
    let query = postcard::to_allocvec(&probe::Query::Get {
        key: key.to_be_bytes().to_vec(),
    })
    .expect("encode");
    client
        .request(ApiRequest::Query {
            fsm: fsm.clone(),
            query: Payload::Postcard(query),
            consistency: Consistency::Stale,
        })
        .await
        .is_ok()
}

fn main() {
    let target_mib: u64 = support::env_or("WRAFT_BENCH_STATE_MIB", 1024);
    let dir = support::bench_dir();
    let data = dir.path().join("node-1");
    let ca = DevCa::generate("bench CA").expect("ca");
    let node_identity = identity(&ca, &ca.node(1).expect("cert"));
    let admin = identity(&ca, &ca.client("bench", Role::Admin).expect("cert"));
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port");
    let config = NodeConfig::new(1, data.clone(), port, node_identity);
    println!(
        "machine: {} cores; data: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        dir.path().display()
    );

    support::runtime().block_on(async {
        let node = ClusterNode::start(config.clone()).await.expect("node");
        let members = BTreeMap::from([(1, BasicNode::new(node.addr.to_string()))]);
        node.raft.initialize(members).await.expect("init");
        let client = Client::new(vec![node.addr.to_string()], &admin)
            .expect("client")
            .with_patience(Duration::from_secs(30));
        let module = client
            .deploy(wraft_fsm_artifacts::PROBE.to_vec())
            .await
            .expect("deploy");
        let fsm = FsmName::new("p").expect("name");
        client
            .create_fsm(fsm.clone(), module, FsmLimits::default())
            .await
            .expect("create");

        let value = vec![0x5a; 1024];
        let state_file = data.join("state").join("data.mdb");
        let started = Instant::now();
        let mut key = 0u64;
        while std::fs::metadata(&state_file).map_or(0, |m| m.len()) < target_mib << 20 {
            let commands = (0..500)
                .map(|_| {
                    key += 1;
                    (fsm.clone(), put(key, &value))
                })
                .collect();
            client
                .request(ApiRequest::Batch { commands, once: None })
                .await
                .expect("batch");
        }
        let state_bytes = std::fs::metadata(&state_file).expect("size").len();
        println!(
            "state: {key} keys of 1 KiB, data.mdb {:.1} MiB, filled through raft in {:.1} s",
            mib(state_bytes),
            started.elapsed().as_secs_f64()
        );

        let applied = {
            use openraft::type_config::async_runtime::WatchReceiver;
            node.raft.metrics().borrow_watched().last_applied
        };
        let t = Instant::now();
        node.raft.trigger().snapshot().await.expect("trigger");
        node.raft
            .wait(Some(Duration::from_secs(600)))
            .metrics(|m| m.snapshot == applied, "snapshot built")
            .await
            .expect("snapshot");
        let build = t.elapsed().as_secs_f64();
        node.shutdown().await;

        let t = Instant::now();
        let node = ClusterNode::start(config.clone()).await.expect("restart");
        let client = Client::new(vec![node.addr.to_string()], &admin).expect("client");
        while !stale_get(&client, &fsm, key).await {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let serving = t.elapsed().as_secs_f64();
        node.raft
            .wait(Some(Duration::from_secs(30)))
            .metrics(|m| m.current_leader == Some(1), "leader again")
            .await
            .expect("leader");
        let leading = t.elapsed().as_secs_f64();
        node.shutdown().await;

        let runtime = std::sync::Arc::new(FsmRuntime::new().expect("runtime"));
        let mut source = StateMachine::open(&data, runtime.clone()).expect("source");
        let snapshot = source
            .get_current_snapshot()
            .await
            .expect("read snapshot")
            .expect("a snapshot");
        let snap_bytes = snapshot.snapshot.metadata().expect("len").len();
        let mut target =
            StateMachine::open(&dir.path().join("installed"), runtime).expect("target");
        let t = Instant::now();
        target
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("install");
        let install = t.elapsed().as_secs_f64();

        println!(
            "snapshot file {:.1} MiB: build {:.2} s ({:.0} MB/s of state), install {:.2} s ({:.0} MB/s)",
            mib(snap_bytes),
            build,
            state_bytes as f64 / 1e6 / build,
            install,
            snap_bytes as f64 / 1e6 / install
        );
        println!(
            "restart with {:.1} MiB of state: serving (stale query answered) after {:.0} ms, \
             leader again after {:.0} ms",
            mib(state_bytes),
            serving * 1000.0,
            leading * 1000.0
        );
    });
}
