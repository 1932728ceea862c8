//! A leader that restarts having lost the tail of its log (a power loss before its own flush;
//! it had already replicated those entries, which a leader does while its flush runs) must
//! not resume leading in its old term: its next proposals would reuse log ids its followers
//! hold with other contents, and followers keep an entry whose id they already have.

use std::time::Duration;
use wraft_host::state::Compile;

use openraft::impls::leader_id_adv::LeaderId;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{EntryPayload, LogId, ServerState};
use wraft_core::{Command, EntryResponse, FsmLimits, LogEntry};
use wraft_host::cluster::{ClusterNode, NodeConfig};
use wraft_host::ops::init::{ClusterSpec, generate, node_dir};
use wraft_host::raft::{Entry, LogStore, TypeConfig};
use wraft_transport_quic::TlsIdentity;
use wraft_transport_quic::pki::DevCa;

use crate::cli::free_udp_ports;
use crate::common::{name, probe_apply};

/// Entries 1..=n as leader 2 in term 3 wrote them: deploy the probe, create `r`, put k=A.
fn entries(n: u64) -> Vec<Entry> {
    let bytes = wraft_fsm_artifacts::PROBE.to_vec();
    let module_id = wraft_host::state::module_id(&bytes);
    let commands = [
        Command::DeployModule { module_id, bytes },
        Command::CreateFsm {
            fsm: name("r"),
            module_id,
            limits: FsmLimits::default(),
        },
        probe_apply(
            "r",
            &probe::Command::Put {
                key: b"k".to_vec(),
                value: b"A".to_vec(),
            },
        ),
    ];
    commands
        .into_iter()
        .zip(1..=n)
        .map(|(command, index)| Entry {
            log_id: LogId::new(
                LeaderId {
                    term: 3,
                    node_id: 2,
                },
                index,
            ),
            payload: EntryPayload::Normal(LogEntry::new(1_000 + index, command)),
        })
        .collect()
}

async fn append(dir: &std::path::Path, entries: Vec<Entry>) {
    let mut log = LogStore::open(dir).expect("log");
    let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
    log.append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("callback").expect("durable");
}

fn value_of_k(node: &ClusterNode) -> Option<Vec<u8>> {
    let q = postcard::to_allocvec(&probe::Query::Get { key: b"k".to_vec() }).expect("encode");
    let out = node
        .store
        .query(&name("r"), &q, Compile::IfNeeded)
        .ok()?
        .ok()?;
    match postcard::from_bytes(&out).ok()? {
        probe::Output::Bytes(b) => Some(b),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_missing_its_log_tail_does_not_reuse_the_followers_log_ids() {
    let out = tempfile::tempdir().expect("tmp");
    let base = free_udp_ports(3);
    let addrs: Vec<std::net::SocketAddr> = (0..3)
        .map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], base + i)))
        .collect();
    let spec = ClusterSpec {
        nodes: (1..=3)
            .zip(&addrs)
            .map(|(id, a)| (id, a.to_string()))
            .collect(),
        initial_leader: 2,
        initial_term: 3,
    };
    generate(&spec, out.path(), false).expect("generate");
    // Node 3 has entries 1..=3 on disk; node 2, the leader, lost entry 3 in a power loss.
    append(&node_dir(out.path(), 3), entries(3)).await;
    append(&node_dir(out.path(), 2), entries(2)).await;

    let ca = DevCa::generate("wraft test CA").expect("CA");
    let mut nodes = Vec::new();
    for id in [2u64, 3] {
        let cert = ca.node(id).expect("node cert");
        let identity =
            TlsIdentity::from_pem(&ca.cert_pem, &cert.cert_pem, &cert.key_pem).expect("id");
        let mut config = NodeConfig::new(
            id,
            node_dir(out.path(), id),
            addrs[id as usize - 1],
            identity,
        );
        config.checkpoint_interval = None;
        nodes.push(ClusterNode::start(config).await.expect("start"));
    }
    // Whoever leads now writes k=B; every node must end with B, the later write.
    let mut written = false;
    for _ in 0..200 {
        for n in &nodes {
            if n.raft.metrics().borrow_watched().state == ServerState::Leader {
                let put = probe_apply(
                    "r",
                    &probe::Command::Put {
                        key: b"k".to_vec(),
                        value: b"B".to_vec(),
                    },
                );
                let entry = LogEntry::new(wraft_host::clock::now_ms(), put);
                if let Ok(r) = n.raft.client_write(entry).await {
                    assert!(matches!(r.data, EntryResponse::Output(_)), "{:?}", r.data);
                    written = true;
                }
            }
        }
        if written {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(written, "no node accepted the write");
    let mut values = Vec::new();
    for _ in 0..200 {
        values = nodes.iter().map(value_of_k).collect::<Vec<_>>();
        if values.iter().all(|v| v.as_deref() == Some(&b"B"[..])) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        values,
        vec![Some(b"B".to_vec()), Some(b"B".to_vec())],
        "nodes 2 and 3 disagree on k (A is the entry the leader lost, B the later write)"
    );
    let hashes: Vec<_> = nodes
        .iter()
        .map(|n| n.store.fsm_hash(&name("r")).expect("hash"))
        .collect();
    assert_eq!(hashes[0], hashes[1]);
    for n in nodes {
        n.shutdown().await;
    }
}
