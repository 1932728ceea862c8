//! Online compaction of the state env (`wraft compact --nodes ADDR`): a running node rewrites
//! its state env as a compacting copy and swaps it in, losing no write and changing no
//! state. Real LMDB, real wasm, a real in-process cluster over QUIC, and the `wraft` binary.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use wraft_api::{ApiError, Consistency, Payload, Role};
use wraft_client::ClientError;
use wraft_core::{Apply, Command, EntryResponse};
use wraft_host::raft::SnapshotPolicy;
use wraft_host::state::{COPY_FILE, StateError, StateStore};

use crate::cli::{text, wraft};
use crate::cluster::{Cluster, Incrementer, setup_probe};
use crate::common::{Fixture, name, probe_counter, raft_write, reopen};

const GET: &str = r#"{"Get":{"key":[110]}}"#;
/// Values of 16 KiB: each one an overflow page run that a delete frees whole.
const VALUE: usize = 16 << 10;

fn put(i: u32) -> Apply {
    probe_apply(&probe::Command::Put {
        key: format!("k{i:05}").into_bytes(),
        value: vec![(i % 251) as u8; VALUE],
    })
}

fn delete(i: u32) -> Apply {
    probe_apply(&probe::Command::Delete {
        key: format!("k{i:05}").into_bytes(),
    })
}

fn probe_apply(cmd: &probe::Command) -> Apply {
    Apply {
        fsm: name("p"),
        payload: postcard::to_allocvec(cmd).expect("encode"),
    }
}

/// Batches of 20 puts of keys `0..n`, then deletes of keys `0..deleted`: a state env whose
/// file is mostly free pages.
fn fill_then_delete(n: u32, deleted: u32) -> Vec<Command> {
    let ids: Vec<u32> = (0..n).collect();
    let mut batches: Vec<Command> = ids
        .chunks(20)
        .map(|c| Command::Batch(c.iter().map(|i| put(*i)).collect()))
        .collect();
    let gone: Vec<u32> = (0..deleted).collect();
    batches.extend(
        gone.chunks(100)
            .map(|c| Command::Batch(c.iter().map(|i| delete(*i)).collect())),
    );
    batches
}

fn file_len(store: &StateStore) -> u64 {
    store
        .path()
        .join("data.mdb")
        .metadata()
        .expect("data.mdb")
        .len()
}

#[test]
fn a_state_env_compacted_online_keeps_every_record_and_gives_back_its_free_pages() {
    let f = Fixture::probe();
    for batch in fill_then_delete(600, 500) {
        let r = f.node.propose(batch).expect("no fault");
        assert!(matches!(r, EntryResponse::BatchOutputs(_)), "{r:?}");
    }
    let (hash, applied) = (f.hash("p"), f.applied_index());
    let store = f.node.store();
    let before = file_len(store);
    let done = store.compact().expect("compacted");
    assert_eq!(done.before, before);
    assert!(
        done.after * 3 < done.before,
        "100 of 600 values of 16 KiB kept: the file should shrink to well under a third: {done:?}"
    );
    assert_eq!(file_len(store), done.after);
    assert!(
        !store.path().join(COPY_FILE).exists(),
        "the copy was renamed"
    );
    assert_eq!(f.hash("p"), hash, "the same state");
    assert_eq!(f.applied_index(), applied, "the same applied position");
    let kept = f
        .query(
            "p",
            &probe::Query::Get {
                key: b"k00599".to_vec(),
            },
        )
        .expect("query");
    assert_eq!(kept, probe::Output::Bytes(vec![(599 % 251) as u8; VALUE]));
    // The env opened again takes writes, and a reopened store finds everything.
    f.apply("p", &probe::Command::Incr { key: b"n".to_vec() });
    let after_write = f.hash("p");
    let Fixture { dir, node, .. } = f;
    drop(node);
    let store = reopen(dir.path());
    assert_eq!(probe_counter(&store), 1);
    assert_eq!(
        store
            .fsm_hash(&name("p"))
            .expect("hash")
            .expect("fsm exists"),
        after_write
    );
}

#[test]
fn a_write_that_reaches_the_env_during_the_copy_is_never_lost() {
    // Called directly, with nothing keeping the applies out (a node runs it in its
    // state-machine worker): the compaction must notice the writes and keep the live env.
    let f = Fixture::probe();
    for batch in fill_then_delete(400, 300) {
        let r = f.node.propose(batch).expect("no fault");
        assert!(matches!(r, EntryResponse::BatchOutputs(_)), "{r:?}");
    }
    let stop = AtomicBool::new(false);
    let acked = AtomicU64::new(0);
    let mut refused = 0;
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                f.apply("p", &probe::Command::Incr { key: b"n".to_vec() });
                acked.fetch_add(1, Ordering::Relaxed);
            }
        });
        while acked.load(Ordering::Relaxed) < 10 {
            std::thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..5 {
            match f.node.store().compact() {
                Ok(_) => {}
                Err(StateError::Compaction(why)) => {
                    assert!(why.contains("written during the copy"), "{why}");
                    refused += 1;
                }
                Err(e) => panic!("unexpected: {e}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(
        probe_counter(f.node.store()),
        acked.load(Ordering::Relaxed),
        "every acknowledged increment is in the env"
    );
    assert!(
        refused > 0,
        "a writer in a loop beside five copies of a multi-megabyte env reaches at least one"
    );
    assert!(!f.node.store().path().join(COPY_FILE).exists());
}

async fn linearizable_counter(c: &Cluster, leader: u64) -> u64 {
    let out = c
        .client(Role::Reader, &[leader])
        .query(
            &name("p"),
            Payload::Json(GET.into()),
            Consistency::Linearizable,
        )
        .await
        .expect("read");
    let Payload::Json(j) = out else {
        panic!("JSON in, JSON out: {out:?}")
    };
    let v: serde_json::Value = serde_json::from_str(&j).expect("json");
    // The probe's counter is a little-endian u64's postcard bytes.
    let bytes: Vec<u8> = serde_json::from_value(v["Bytes"].clone()).expect("bytes");
    postcard::from_bytes(&bytes).expect("u64")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_node_compacts_its_state_env_under_write_load_and_loses_nothing() {
    let mut c = Cluster::start(3, SnapshotPolicy::default()).await;
    let leader = c.leader().await.id;
    setup_probe(&c.node(leader).raft).await;
    for batch in fill_then_delete(600, 500) {
        let r = raft_write(&c.node(leader).raft, batch).await;
        assert!(matches!(r, EntryResponse::BatchOutputs(_)), "{r:?}");
    }
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    c.converged_hashes().await;
    let writer = Incrementer::start(c.client(Role::Writer, &[leader]));
    writer.wait_for_more(20).await;

    // A writer's certificate may not compact.
    match c.client(Role::Writer, &[follower]).compact().await {
        Err(ClientError::Api(ApiError::NotAllowed { .. })) => {}
        other => panic!("a writer compacted: {other:?}"),
    }
    // A follower, through the client: its applies wait for the copy, the leader commits on.
    let before = file_len(&c.node(follower).store);
    let done = c
        .client(Role::Admin, &[follower])
        .compact()
        .await
        .expect("compacted");
    assert_eq!(
        done.node, follower,
        "the node asked compacts, not the leader"
    );
    assert_eq!(done.before_bytes, before);
    assert!(done.after_bytes * 3 < done.before_bytes, "{done:?}");
    // The applies it held back have run since, into the compacted file.
    assert!(file_len(&c.node(follower).store) * 2 < before);

    // The leader, through the CLI as an operator runs it, with `--json`.
    let tmp = tempfile::tempdir().expect("tmp");
    let mut args = vec!["compact".to_string(), "--json".into()];
    args.extend(crate::ops::admin_args(&c, tmp.path(), &[leader]));
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        wraft(&std::env::temp_dir(), &args)
    })
    .await
    .expect("wraft compact");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(j["node"], leader);
    assert_eq!(j["envs"][0]["env"], "state");
    let (b, a) = (
        j["envs"][0]["before"].as_u64().expect("before"),
        j["envs"][0]["after"].as_u64().expect("after"),
    );
    assert!(a * 3 < b, "{j}");
    assert!(j["paused_ms"].as_u64().is_some(), "{j}");

    writer.wait_for_more(20).await;
    let acked = writer.stop().await;
    assert_eq!(
        linearizable_counter(&c, leader).await,
        acked,
        "every acknowledged write is applied, once"
    );
    let hashes = c.converged_hashes().await;
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");

    // The compacted follower restarts from its compacted env (no rebuild) and agrees.
    c.stop(follower).await;
    c.restart(follower).await;
    let hashes = c.converged_hashes().await;
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    assert!(
        file_len(&c.node(follower).store) <= done.after_bytes + (1 << 20),
        "the restarted node opened the compacted file"
    );
}

#[test]
fn compacting_a_running_node_needs_exactly_one_address() {
    let out = wraft(
        &std::env::temp_dir(),
        &["compact", "--nodes", "127.0.0.1:1,127.0.0.1:2"],
    );
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(
        text(&out.stderr).contains("that one node's address (--nodes ADDR)"),
        "{}",
        text(&out.stderr)
    );
}
