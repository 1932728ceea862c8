//! Module lifecycle costs.
//!
//! - Deploy of a 1 MiB module (512 KiB of code, the shape bound, and data) to "serving on every node": a durable 3-node cluster on
//!   loopback; the clock runs from the upload until a stale query of a new FSM on that
//!   module answers on all three nodes (the leader's validation compile, each member's
//!   compile of the module sent ahead, replication, the create entry). Meanwhile a writer
//!   commits to another FSM (latest-payload, one block at a time): its commit latency while
//!   modules deploy shows that a deploy's validation and compiles leave the write path
//!   alone; and the longest time a follower's applied index stood still while the leader's
//!   was ahead shows whether a follower's apply waited for a compile.
//! - First call after a restart with the compile cache warm versus deleted (cold), and the
//!   steady-state per-call cost (a fresh instance per call) for the same module.
//!
//! Run: `cargo bench -p wraft-host --bench lifecycle` (`WRAFT_BENCH_DIR` as for the cluster
//! bench).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wraft_api::{ApiRequest, Consistency, Payload};
use wraft_core::{FsmLimits, FsmName};
use wraft_host::local::LocalNode;
use wraft_host::state::Compile;

mod support;
use support::{BenchCluster, us};

/// An ABI-conforming module of about `target` bytes: the minimal FSM, straight-line code
/// cranelift must compile up to the shape bound on code (512 KiB), and a data segment for
/// the rest. `salt` makes each one a different module.
fn big_module(target: usize, salt: u64) -> Vec<u8> {
    let code_bound = wraft_host::runtime::SHAPE.code_bytes as usize - (16 << 10);
    let mut funcs = String::new();
    let mut i = 0u64;
    loop {
        let mut body = String::from("local.get 0\n");
        for k in 0..64u64 {
            body.push_str(&format!(
                "i64.const {}\ni64.mul\ni64.const {}\ni64.add\n",
                // The salt above bit 0, which `| 1` sets: salts 0 and 1 gave one module.
                ((salt << 1) ^ i ^ k) | 1,
                i * 64 + k
            ));
        }
        funcs.push_str(&format!(
            "(func $f{i} (export \"f{i}\") (param i64) (result i64)\n{body})\n"
        ));
        i += 1;
        if i.is_multiple_of(64) && assemble(&funcs, 0).len() >= code_bound {
            break;
        }
    }
    let code = assemble(&funcs, 0).len();
    assemble(&funcs, target.saturating_sub(code))
}

fn assemble(funcs: &str, data: usize) -> Vec<u8> {
    let pages = data / 65536 + 1;
    let data = "\\00".repeat(data);
    wat::parse_str(format!(
        r#"(module
            (memory (export "memory") {pages})
            (data (i32.const 0) "{data}")
            (func (export "wraft_abi_version") (result i32) i32.const 1)
            (func (export "wraft_alloc") (param i32) (result i32) i32.const 1024)
            (func (export "wraft_apply") (param i32 i32) (result i32) i32.const 0)
            (func (export "wraft_query") (param i32 i32) (result i32) i32.const 0)
            {funcs})"#
    ))
    .expect("wat")
}

fn main() {
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let dir = support::bench_dir();
    let modules: Vec<Vec<u8>> = (0..5).map(|s| big_module(1 << 20, s)).collect();
    let ids: std::collections::BTreeSet<_> = modules
        .iter()
        .map(|m| wraft_host::state::module_id(m))
        .collect();
    assert_eq!(
        ids.len(),
        modules.len(),
        "five distinct modules, five real deploys"
    );
    println!("module size: {} bytes", modules[0].len());

    support::runtime().block_on(async {
        let cluster = BenchCluster::start(dir.path()).await;
        let admin = cluster.client();
        admin.status().await.expect("status");
        let sequencer = cluster
            .create_fsm(wraft_fsm_artifacts::LATEST_PAYLOAD, "sequencer")
            .await;
        let deploying = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let writer = {
            let (client, deploying) = (cluster.client(), deploying.clone());
            tokio::spawn(async move {
                let mut commits = Histogram::<u64>::new(3).expect("hist");
                let mut number = 1u64;
                while deploying.load(std::sync::atomic::Ordering::Relaxed) {
                    let block = format!(
                        r#"{{"Commit":{{"number":{number},"hash":"0x{number:064x}","parent_hash":"0x{:064x}","payload":"0x00"}}}}"#,
                        number - 1
                    );
                    let t = Instant::now();
                    client
                        .request(ApiRequest::Apply {
                            fsm: sequencer.clone(),
                            command: Payload::Json(block),
                            once: None,
                        })
                        .await
                        .expect("commit while deploying");
                    commits.record(t.elapsed().as_nanos() as u64).expect("record");
                    number += 1;
                }
                commits
            })
        };
        // How long each follower's applied index stands still while the leader's is ahead
        // of it: a follower that compiles a module in the deploy entry's apply stalls every
        // FSM it serves for the compile.
        let stalls = {
            let stores: Vec<_> = cluster.nodes.iter().map(|n| (n.id, n.store.clone(), n.raft.clone())).collect();
            let deploying = deploying.clone();
            tokio::spawn(async move {
                use openraft::type_config::async_runtime::WatchReceiver;
                let applied = |s: &wraft_host::state::StateStore| {
                    s.applied().expect("applied").map_or(0, |a| a.index)
                };
                let mut since: std::collections::HashMap<u64, (u64, Instant)> =
                    std::collections::HashMap::new();
                let mut longest = Duration::ZERO;
                while deploying.load(std::sync::atomic::Ordering::Relaxed) {
                    let leader = stores
                        .iter()
                        .find(|(id, _, raft)| raft.metrics().borrow_watched().current_leader == Some(*id));
                    if let Some((leader, leader_store, _)) = leader {
                        let ahead = applied(leader_store);
                        for (id, store, _) in stores.iter().filter(|(id, _, _)| id != leader) {
                            let at = applied(store);
                            let now = Instant::now();
                            let entry = since.entry(*id).or_insert((at, now));
                            if entry.0 != at || at >= ahead {
                                *entry = (at, now);
                            }
                            longest = longest.max(now - entry.1);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                longest
            })
        };
        let mut hist = Histogram::<u64>::new(3).expect("hist");
        // Where each deploy's time went: the deploy answered (upload, the leader's validation
        // and compile, the entry committed and applied on the leader), the create answered,
        // every node serving.
        let mut phases = Vec::new();
        for (i, bytes) in modules.iter().enumerate() {
            let fsm = FsmName::new(format!("big{i}")).expect("name");
            let t = Instant::now();
            let id = admin.deploy(bytes.clone()).await.expect("deploy");
            let deployed = t.elapsed();
            admin
                .create_fsm(fsm.clone(), id, FsmLimits::default())
                .await
                .expect("create");
            let created = t.elapsed();
            phases.push((deployed, created));
            for node in &cluster.nodes {
                let one = wraft_client::Client::new(vec![node.addr.to_string()], &cluster.identity)
                    .expect("client");
                loop {
                    let q = ApiRequest::Query {
                        fsm: fsm.clone(),
                        query: Payload::Postcard(Vec::new()),
                        consistency: Consistency::Stale,
                    };
                    if one.request(q).await.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            hist.record(t.elapsed().as_nanos() as u64).expect("record");
        }
        println!(
            "deploy 1 MiB module to serving on 3 nodes: p50 {:.1} ms, max {:.1} ms ({} runs)",
            us(hist.value_at_quantile(0.5)) / 1000.0,
            us(hist.max()) / 1000.0,
            hist.len()
        );
        for (deployed, created) in &phases {
            println!(
                "  deploy answered at {:.0} ms, create answered at {:.0} ms",
                deployed.as_secs_f64() * 1e3,
                created.as_secs_f64() * 1e3
            );
        }
        deploying.store(false, std::sync::atomic::Ordering::Relaxed);
        let commits = writer.await.expect("writer");
        let stalled = stalls.await.expect("stall sampler");
        println!(
            "followers' longest apply stall during those deploys (applied index unmoved while the leader's is ahead): {:.1} ms",
            stalled.as_secs_f64() * 1e3
        );
        println!(
            "commits to another FSM during those deploys: {} commits, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            commits.len(),
            us(commits.value_at_quantile(0.5)) / 1000.0,
            us(commits.value_at_quantile(0.99)) / 1000.0,
            us(commits.max()) / 1000.0
        );
        cluster.shutdown().await;
    });

    // One node, no raft: first call after a restart, warm and cold cache.
    let local = support::bench_dir();
    let fsm = FsmName::new("big").expect("name");
    {
        let node = LocalNode::open(local.path()).expect("open");
        let id = node
            .deploy(modules[0].clone())
            .expect("store")
            .expect("valid");
        node.create(fsm.clone(), id, FsmLimits::default())
            .expect("store")
            .expect("created");
    }
    let first_call = || {
        let t = Instant::now();
        let node = LocalNode::open(local.path()).expect("open");
        node.store()
            .query(&fsm, &[], Compile::IfNeeded)
            .expect("store")
            .expect("query");
        (t.elapsed(), node)
    };
    let (warm, node) = first_call();
    let mut steady = Histogram::<u64>::new(3).expect("hist");
    for _ in 0..2000 {
        let t = Instant::now();
        node.store()
            .query(&fsm, &[], Compile::IfNeeded)
            .expect("store")
            .expect("query");
        steady
            .record(t.elapsed().as_nanos() as u64)
            .expect("record");
    }
    drop(node);
    std::fs::remove_dir_all(local.path().join("cache")).expect("rm cache");
    let (cold, _) = first_call();
    println!(
        "open + first call after restart: cache warm {:.1} ms, cache deleted {:.1} ms",
        warm.as_secs_f64() * 1e3,
        cold.as_secs_f64() * 1e3
    );
    println!(
        "steady state, fresh instance per call (1 MiB module): p50 {:.1} µs, p99 {:.1} µs",
        us(steady.value_at_quantile(0.5)),
        us(steady.value_at_quantile(0.99))
    );
}
