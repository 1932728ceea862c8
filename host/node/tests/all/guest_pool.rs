//! The guest pool: queries and JSON codecs made for callers run on rayon's threads, and a
//! call there never compiles (`api/guest.rs`).

use std::collections::BTreeSet;
use std::time::Duration;

use wraft_api::{Consistency, Payload, Role};
use wraft_host::raft::SnapshotPolicy;

use crate::api::{GET, INCR, p};
use crate::cluster::Cluster;
use crate::common::setup_probe;

/// A cluster restarted without its compiled copies (`<data>/cache` deleted on every node, as
/// after an engine upgrade) gets a burst of JSON writes and reads at its leader: their codec
/// and query calls find the module not in memory on the guest pool, run again on tokio's
/// blocking pool, where the module is compiled once, and are answered. Fails if such a call
/// is not run again (callers hear "not compiled in memory"), and if a call compiles on the
/// pool (the runtime refuses a compile gate on a rayon thread: the deadlock it could cause
/// needs a stolen compile job and a new call at that moment, which a test cannot arrange).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_find_their_module_not_compiled_compile_it_once_and_are_answered() {
    let mut c = Cluster::start(3, SnapshotPolicy::default()).await;
    setup_probe(&c.leader().await.raft).await;
    let first = c.client(Role::Writer, &[c.leader().await.id]);
    first.apply_json(&p(), INCR).await.expect("apply");
    c.converged_hashes().await;
    for id in 1..=3 {
        c.stop(id).await;
        std::fs::remove_dir_all(c.data_dir(id).join("cache")).expect("remove the compile cache");
    }
    for id in 1..=3 {
        c.restart(id).await;
    }
    let at = c.leader().await.id;
    let runtime = c.node(at).store.runtime().clone();
    assert_eq!(
        runtime.compilations(),
        0,
        "the restart compiled the module before any call: the test would prove nothing"
    );

    const WRITES: u64 = 24;
    const READS: usize = 24;
    let client = std::sync::Arc::new(c.client(Role::Writer, &[at]));
    let writes = (0..WRITES).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.apply_json(&p(), INCR).await })
    });
    let reads = (0..READS).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.query_json(&p(), GET, Consistency::Stale).await })
    });
    let (writes, reads): (Vec<_>, Vec<_>) = (writes.collect(), reads.collect());
    let answered = tokio::time::timeout(Duration::from_secs(60), async {
        let mut numbers = BTreeSet::new();
        for w in writes {
            match w.await.expect("task").expect("write") {
                Payload::Json(j) => assert!(numbers.insert(j.clone()), "{j} twice"),
                other => panic!("a JSON write answered {other:?}"),
            }
        }
        for r in reads {
            match r.await.expect("task").expect("read") {
                Payload::Json(j) => assert!(j.starts_with(r#"{"Bytes":["#), "{j}"),
                other => panic!("a JSON read answered {other:?}"),
            }
        }
        numbers
    })
    .await
    .expect("every call answered within 60 s (a stuck guest pool?)");
    let expected: BTreeSet<String> = (2..=WRITES + 1)
        .map(|n| format!(r#"{{"Number":{n}}}"#))
        .collect();
    assert_eq!(answered, expected, "each write applied once, in turn");
    assert_eq!(
        runtime.compilations(),
        1,
        "the module is compiled once, however many calls found it missing"
    );
    assert!(
        runtime.not_in_memory() > 0,
        "no call on the guest pool found the module missing: the test proved nothing"
    );
    c.stop_all().await;
}
