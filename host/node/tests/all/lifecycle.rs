//! Module lifecycle through the log on a real 3-node cluster: deploy, create, upgrade with a
//! migrate that rewrites keys (refused first, then accepted) while a node is down, drop; and
//! the hostile corpus deployed to the live cluster while another FSM keeps serving.

use wraft_api::Role;
use wraft_api::{ApiError, ApiRequest, Consistency, Payload};
use wraft_client::ClientError;
use wraft_core::{ApplyError, FsmLimits, FsmName};
use wraft_host::raft::SnapshotPolicy;

use crate::cluster::Cluster;
use crate::common::name;
use crate::validation::module;

fn p() -> FsmName {
    name("p")
}

async fn put(c: &wraft_client::Client, key: &str) {
    let cmd = format!(r#"{{"Put":{{"key":{:?},"value":[49]}}}}"#, key.as_bytes());
    c.apply_json(&p(), &cmd).await.expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_with_migrate_reaches_every_node_including_one_that_was_down() {
    let mut c = Cluster::start(3, SnapshotPolicy::default()).await;
    let leader = c.leader().await.id;
    let down = (1..=3).find(|id| *id != leader).expect("follower");
    let admin = c.client(Role::Admin, &[leader]);
    let probe = wraft_fsm_artifacts::PROBE;
    let v3 = crate::common::deploy_and_create(&admin, p(), probe, FsmLimits::default()).await;
    for key in ["a", "b", "refuse-upgrade"] {
        put(&admin, key).await;
    }
    c.stop(down).await;

    let v4 = admin
        .deploy(wraft_fsm_artifacts::PROBE_NEXT.to_vec())
        .await
        .expect("deploy next");
    let refused = admin
        .upgrade_fsm(p(), v4)
        .await
        .expect_err("migrate refuses");
    assert!(
        matches!(&refused, ClientError::Api(ApiError::Failed(ApplyError::Rejected(m))) if m.contains("upgrade refused")),
        "{refused}"
    );
    let on = |fsms: Vec<wraft_api::FsmInfo>| {
        fsms.into_iter()
            .find(|f| f.name == "p")
            .map(|f| f.module_id)
    };
    assert_eq!(
        on(admin.fsms().await.expect("fsms")),
        Some(v3),
        "old module serves"
    );
    admin
        .apply_json(
            &p(),
            r#"{"Delete":{"key":[114,101,102,117,115,101,45,117,112,103,114,97,100,101]}}"#,
        )
        .await
        .expect("delete refuse-upgrade");
    admin.upgrade_fsm(p(), v4).await.expect("upgrade");
    put(&admin, "after").await;
    let moved = admin
        .query_json(
            &p(),
            r#"{"ScanPrefix":{"prefix":[118,52,47]}}"#,
            Consistency::Linearizable,
        )
        .await
        .expect("scan");
    let Payload::Json(moved) = moved else {
        panic!("json")
    };
    // v4/a and v4/b: the keys migrate rewrote ("after" was written by v4 under its own name).
    assert!(
        moved.contains("[118,52,47,97]") && moved.contains("[118,52,47,98]"),
        "{moved}"
    );

    c.restart(down).await;
    let hashes = c.converged_hashes_of("p").await;
    assert_eq!(hashes.len(), 3);
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    let rejoined = c.node(down).store.fsms().expect("fsms");
    assert_eq!(
        rejoined
            .iter()
            .find(|(n, _)| n == "p")
            .map(|(_, r)| r.module_id),
        Some(v4),
        "the node that was down runs the new module"
    );

    // Modules: listed with their users; an unused one can be dropped, a used one cannot.
    let modules = admin.modules().await.expect("modules");
    assert_eq!(modules.len(), 2);
    assert!(modules.iter().any(|m| m.module_id == v4 && m.fsms == ["p"]));
    let in_use = admin.drop_module(v4).await.expect_err("in use");
    assert!(
        matches!(
            in_use,
            ClientError::Api(ApiError::Failed(ApplyError::ModuleInUse { .. }))
        ),
        "{in_use}"
    );
    admin.drop_module(v3).await.expect("drop unused");
    admin.drop_fsm(p()).await.expect("drop fsm");
    assert!(on(admin.fsms().await.expect("fsms")).is_none());
    admin.drop_module(v4).await.expect("now unused");
    assert!(admin.modules().await.expect("modules").is_empty());
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_modules_are_refused_or_contained_while_the_cluster_serves() {
    let mut c = Cluster::start(3, SnapshotPolicy::default()).await;
    let leader = c.leader().await.id;
    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    let admin = c.client(Role::Admin, &[follower]);
    let seq = name("seq");
    let latest = wraft_fsm_artifacts::LATEST_PAYLOAD;
    crate::common::deploy_and_create(&admin, seq.clone(), latest, FsmLimits::default()).await;
    let mut block = 0u64;
    let mut commit = async || {
        block += 1;
        let h = |b: u64| format!("0x{:064x}", b);
        let cmd = format!(
            r#"{{"Commit":{{"number":{block},"hash":"{}","parent_hash":"{}","payload":"0x01"}}}}"#,
            h(block),
            h(block - 1)
        );
        admin
            .apply_json(&seq, &cmd)
            .await
            .expect("the cluster keeps serving");
    };

    let corpus: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\0asm garbage".to_vec()),
        (
            "WASI import",
            module(
                r#"(import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))"#,
                1,
            ),
        ),
        (
            "unknown wraft import",
            module(r#"(import "wraft" "open_socket" (func))"#, 1),
        ),
        ("wrong ABI version", module("", 999)),
        (
            "spinning start function",
            module(r#"(func $spin (loop $l (br $l))) (start $spin)"#, 1),
        ),
        (
            "no exports",
            wat::parse_str(r#"(module (memory (export "memory") 1))"#).expect("wat"),
        ),
        (
            "oversized",
            vec![0u8; wraft_host::runtime::MAX_MODULE_BYTES + 1],
        ),
    ];
    for (what, bytes) in corpus {
        let e = admin.deploy(bytes).await.expect_err(what);
        assert!(
            matches!(&e, ClientError::Api(ApiError::BadRequest(m)) if m.contains("invalid module")),
            "{what}: {e}"
        );
        commit().await;
    }
    assert!(
        admin.modules().await.expect("modules").len() == 1,
        "no refused module entered the log"
    );

    // Modules that validate but misbehave at apply are contained by their limits.
    let probe = admin
        .deploy(wraft_fsm_artifacts::PROBE.to_vec())
        .await
        .expect("deploy probe");
    let limits = FsmLimits {
        fuel: 5_000_000,
        memory_pages: 32,
        max_output_bytes: 4096,
        query_fuel: 5_000_000,
        ..FsmLimits::default()
    };
    admin.create_fsm(p(), probe, limits).await.expect("create");
    for (cmd, expect) in [
        (r#""Loop""#, "fuel"),
        (r#""AllocBomb""#, "memory"),
        (r#"{"HugeOutput":{"len":100000}}"#, "output"),
        (r#"{"PutThenTrap":{"key":[1],"value":[1]}}"#, "trap"),
    ] {
        let e = admin.apply_json(&p(), cmd).await.expect_err(cmd);
        assert!(e.to_string().to_lowercase().contains(expect), "{cmd}: {e}");
        commit().await;
    }
    let hashes = c.converged_hashes_of("seq").await;
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    let hashes = c.converged_hashes_of("p").await;
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_in_chunks_and_are_refused_early() {
    use wraft_api::{MAX_UPLOAD_BYTES, UPLOAD_CHUNK};
    let mut c = Cluster::start(3, SnapshotPolicy::default()).await;
    let leader = c.leader().await.id;
    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    let admin = c.client(Role::Admin, &[follower]);
    let bytes = wraft_fsm_artifacts::AIRSPACE_STORE;
    let mut seen = Vec::new();
    let id = admin
        .deploy_streamed(bytes, |sent, total| seen.push((sent, total)))
        .await
        .expect("deploy through a follower");
    assert_eq!(seen.len(), bytes.len().div_ceil(UPLOAD_CHUNK));
    assert_eq!(seen.last(), Some(&(bytes.len() as u64, bytes.len() as u64)));
    assert!(
        admin
            .modules()
            .await
            .expect("modules")
            .iter()
            .any(|m| m.module_id == id)
    );
    // A writer may not upload: refused before the chunks are read.
    let writer = c.client(Role::Writer, &[leader]);
    let e = writer.deploy(bytes.to_vec()).await.expect_err("writer");
    assert!(
        matches!(e, ClientError::Api(ApiError::NotAllowed { .. })),
        "{e}"
    );
    // Over the limit: refused from the announced length.
    let huge = vec![0u8; MAX_UPLOAD_BYTES as usize + 1];
    let e = admin.deploy(huge).await.expect_err("too large");
    assert!(
        matches!(&e, ClientError::Api(ApiError::BadRequest(m)) if m.contains("limit")),
        "{e}"
    );
    admin.status().await.expect("still serving");
    c.stop_all().await;
}

/// A deploy compiles on every node at once: the leader sends the module to each member
/// while it validates it, so every node has compiled it ahead of the entry, and no node
/// compiles it twice (the entry's apply finds it compiled, or waits for the compile under
/// way). A client may not send the node-to-node request itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_compiles_ahead_on_every_member_and_once_on_each_node() {
    let mut c = Cluster::start(3, SnapshotPolicy::default()).await;
    let leader = c.leader().await.id;
    let counts = |c: &Cluster| -> Vec<(u64, u64)> {
        c.live()
            .map(|n| {
                let rt = n.store.runtime();
                (rt.compilations(), rt.compiled_ahead())
            })
            .collect()
    };
    let before = counts(&c);
    let admin = c.client(Role::Admin, &[leader]);
    let bytes = wraft_fsm_artifacts::AIRSPACE_STORE;
    crate::common::deploy_and_create(&admin, p(), bytes, FsmLimits::default()).await;
    let hashes = c.converged_hashes_of(p().as_str()).await;
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    let after = counts(&c);
    for ((id, b), a) in (1..).zip(&before).zip(&after) {
        assert_eq!(
            a.0 - b.0,
            1,
            "node {id} compiled the module {} times",
            a.0 - b.0
        );
        assert_eq!(
            a.1 - b.1,
            1,
            "node {id} did not compile the module ahead of its entry"
        );
    }
    let e = admin
        .request(ApiRequest::PrepareModule {
            bytes: bytes.to_vec(),
        })
        .await
        .expect_err("a client's prepare");
    assert!(
        matches!(&e, ClientError::Api(ApiError::BadRequest(m)) if m.contains("prepare_module")),
        "{e}"
    );
    c.stop_all().await;
}
