//! Fuel pays for host calls and the bytes they move: hostile modules on a 3-node cluster of
//! real processes, default limits. A loop of `kv_get` on a 16 MiB value, of `kv_scan` pages,
//! of large outputs, of log messages, of `memory.fill`, and put/delete churn each end with
//! `OutOfFuel` within a second of apply time on every node; filling the state stops at the
//! FSM's quota; other FSMs keep committing; every node keeps running and all agree.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wraft_api::{ApiError, ApiRequest, Payload};
use wraft_client::{Client, ClientError};
use wraft_core::{ApplyError, FsmLimits};
use wraft_faults::process::NodeProcess;

use crate::common::name;
use crate::processes::{caught_up, identity, runtime, stop_verify_and_compare, three_nodes};

/// A module whose `apply` does what its input's first byte says, until it is stopped.
fn hostile() -> Vec<u8> {
    wat::parse_str(
        r#"(module
            (import "wraft" "kv_get" (func $get (param i32 i32) (result i32)))
            (import "wraft" "kv_put" (func $put (param i32 i32 i32 i32)))
            (import "wraft" "kv_delete" (func $delete (param i32 i32) (result i32)))
            (import "wraft" "kv_scan" (func $scan (param i32 i32 i32 i32 i32) (result i32)))
            (import "wraft" "take_result" (func $take (param i32)))
            (import "wraft" "set_output" (func $out (param i32 i32)))
            (import "wraft" "log_message" (func $log (param i32 i32 i32)))
            (memory (export "memory") 400)
            (data (i32.const 100) "big")
            (func (export "wraft_abi_version") (result i32) i32.const 1)
            (func (export "wraft_alloc") (param i32) (result i32) i32.const 64)
            (func (export "wraft_query") (param i32 i32) (result i32) i32.const 0)
            (func (export "wraft_apply") (param $p i32) (param $l i32) (result i32)
                (local $op i32) (local $i i32)
                (local.set $op (i32.load8_u (local.get $p)))
                ;; 1: store 16 MiB under "big" (setup)
                (if (i32.eq (local.get $op) (i32.const 1)) (then
                    (call $put (i32.const 100) (i32.const 3) (i32.const 1048576) (i32.const 16777216))
                    (return (i32.const 0))))
                ;; 2: store 20,000 pairs of 100 bytes (setup)
                (if (i32.eq (local.get $op) (i32.const 2)) (then
                    (block $done (loop $l
                        (br_if $done (i32.ge_u (local.get $i) (i32.const 20000)))
                        (i32.store (i32.const 200) (local.get $i))
                        (call $put (i32.const 200) (i32.const 4) (i32.const 1048576) (i32.const 100))
                        (local.set $i (i32.add (local.get $i) (i32.const 1)))
                        (br $l)))
                    (return (i32.const 0))))
                (loop $forever
                    ;; 10: read the 16 MiB value over and over
                    (if (i32.eq (local.get $op) (i32.const 10)) (then
                        (drop (call $get (i32.const 100) (i32.const 3)))
                        (call $take (i32.const 1048576))))
                    ;; 11: scan pages of the whole keyspace
                    (if (i32.eq (local.get $op) (i32.const 11)) (then
                        (drop (call $scan (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 10000)))
                        (call $take (i32.const 1048576))))
                    ;; 12: set an 8 MiB output
                    (if (i32.eq (local.get $op) (i32.const 12)) (then
                        (call $out (i32.const 1048576) (i32.const 8388608))))
                    ;; 13: log 4 KiB at error level
                    (if (i32.eq (local.get $op) (i32.const 13)) (then
                        (call $log (i32.const 0) (i32.const 1048576) (i32.const 4096))))
                    ;; 14: put then delete 1 MiB under "churn"
                    (if (i32.eq (local.get $op) (i32.const 14)) (then
                        (call $put (i32.const 100) (i32.const 3) (i32.const 1048576) (i32.const 1048576))
                        (drop (call $delete (i32.const 100) (i32.const 3)))))
                    ;; 15: fill the keyspace with 64 KiB values under new keys
                    (if (i32.eq (local.get $op) (i32.const 15)) (then
                        (local.set $i (i32.add (local.get $i) (i32.const 1)))
                        (i32.store (i32.const 200) (i32.add (local.get $i) (i32.const 1000000)))
                        (call $put (i32.const 200) (i32.const 4) (i32.const 1048576) (i32.const 65536))))
                    ;; 16: memory.fill the whole memory
                    (if (i32.eq (local.get $op) (i32.const 16)) (then
                        (memory.fill (i32.const 0) (i32.const 0) (i32.const 26214400))))
                    (br $forever))
                i32.const 0))"#,
    )
    .expect("wat")
}

fn op(fsm: &str, byte: u8) -> ApiRequest {
    ApiRequest::Apply {
        fsm: name(fsm),
        command: Payload::Postcard(vec![byte]),
        once: None,
    }
}

/// The node's count of applies and of those that took at most a second.
async fn applies_within_a_second(http: std::net::SocketAddr) -> (f64, f64) {
    let (_, metrics) = crate::http::http(http, "GET", "/metrics", &[], b"").await;
    // A node process labels its series (`node="1"`): match the name and the bucket's label.
    let sample = |line_start: &str, label: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(line_start) && l.contains(label))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // `wraft serve` labels every series of its process with its node id.
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wraft_fsm_apply_duration_seconds_count{node=\"")),
        "a node process's histograms carry no node label:\n{metrics}"
    );
    (
        sample("wraft_fsm_apply_duration_seconds_count", ""),
        sample("wraft_fsm_apply_duration_seconds_bucket{", "le=\"1\"}"),
    )
}

struct Nodes {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    certs: std::path::PathBuf,
    addrs: Vec<String>,
    http: Vec<std::net::SocketAddr>,
    nodes: Vec<NodeProcess>,
}

fn start() -> Nodes {
    let tmp = tempfile::tempdir().expect("tmp");
    let (certs, real, mut nodes) = three_nodes(tmp.path());
    let base = crate::cli::free_udp_ports(3);
    let http: Vec<std::net::SocketAddr> = (0..3)
        .map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], base + i)))
        .collect();
    for (n, h) in nodes.iter_mut().zip(&http) {
        n.spec.unsynced_journal = None;
        n.tuning = [
            "--checkpoint-interval",
            "0",
            "--snapshot-entries",
            "100000",
            "--http-listen",
            &h.to_string(),
            "--http-plaintext",
        ]
        .map(String::from)
        .to_vec();
        n.start().expect("start");
    }
    Nodes {
        dir: tmp.path().to_path_buf(),
        _dir: tmp,
        certs,
        addrs: real.iter().map(ToString::to_string).collect(),
        http,
        nodes,
    }
}

#[test]
fn hostile_host_calls_run_out_of_fuel_quickly_everywhere_and_quotas_hold() {
    let _heavy = crate::common::heavy();
    runtime().block_on(async {
        let mut c = start();
        let client = |role: &str| {
            Client::new(c.addrs.clone(), &identity(&c.certs, role))
                .expect("client")
                .with_patience(Duration::from_secs(30))
        };
        let admin = client("admin");
        let hostile_id = admin.deploy(hostile()).await.expect("deploy");
        let probe = wraft_fsm_artifacts::PROBE;
        crate::common::deploy_and_create(&admin, name("r"), probe, FsmLimits::default()).await;
        // Set up with room to write 16 MiB, then back to the defaults.
        let setup = FsmLimits {
            fuel: 2_000_000_000,
            ..FsmLimits::default()
        };
        admin
            .create_fsm(name("h"), hostile_id, setup)
            .await
            .expect("create h");
        for byte in [1, 2] {
            admin.request(op("h", byte)).await.expect("setup");
        }
        admin
            .set_limits(name("h"), FsmLimits::default())
            .await
            .expect("default limits");

        // Another FSM commits all along; the slowest of its writes is kept.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = client("writer");
        let bystander = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut n, mut slowest) = (0u32, Duration::ZERO);
                while !stop.load(Ordering::Relaxed) {
                    let put = probe::Command::Put {
                        key: b"bystander".to_vec(),
                        value: n.to_be_bytes().to_vec(),
                    };
                    let started = Instant::now();
                    writer
                        .request(ApiRequest::Apply {
                            fsm: name("r"),
                            command: Payload::Postcard(postcard::to_allocvec(&put).expect("e")),
                            once: None,
                        })
                        .await
                        .unwrap_or_else(|e| panic!("bystander write {n}: {e}"));
                    slowest = slowest.max(started.elapsed());
                    n += 1;
                }
                (n, slowest)
            })
        };
        let logs_before: Vec<usize> = c.nodes.iter().map(|n| n.log().len()).collect();
        let fuel = FsmLimits::default().fuel;
        for (byte, what) in [
            (10, "kv_get of a 16 MiB value"),
            (11, "kv_scan pages"),
            (12, "8 MiB outputs"),
            (13, "4 KiB log messages"),
            (14, "put/delete churn of 1 MiB"),
            (16, "memory.fill of 25 MiB"),
        ] {
            let started = Instant::now();
            let err = admin.request(op("h", byte)).await.expect_err(what);
            eprintln!("a loop of {what}: {err} after {:?}", started.elapsed());
            assert!(
                matches!(
                    err,
                    ClientError::Api(ApiError::Failed(ApplyError::OutOfFuel { limit })) if limit == fuel
                ),
                "a loop of {what}: {err}"
            );
        }
        // Filling the keyspace stops at the quota, the same way on every node.
        let quota = 4 << 20;
        admin
            .set_limits(
                name("h"),
                FsmLimits {
                    storage_bytes: quota,
                    ..FsmLimits::default()
                },
            )
            .await
            .expect("quota");
        let err = admin.request(op("h", 15)).await.expect_err("fill");
        assert!(
            matches!(
                err,
                ClientError::Api(ApiError::Failed(ApplyError::QuotaExceeded { quota: q, .. })) if q == quota
            ),
            "{err}"
        );
        stop.store(true, Ordering::Relaxed);
        let (writes, slowest) = bystander.await.expect("bystander");
        eprintln!("the bystander FSM committed {writes} writes meanwhile, the slowest in {slowest:?}");
        assert!(writes > 0);
        assert!(slowest < Duration::from_secs(2), "a bystander write took {slowest:?}");
        caught_up(&c.addrs, &c.certs, &mut c.nodes).await;
        // Every node applied every hostile command within a second.
        for (i, http) in c.http.iter().enumerate() {
            let (count, within) = applies_within_a_second(*http).await;
            eprintln!("node {}: {within} of {count} applies within 1 s", i + 1);
            assert!(count >= 8.0, "node {}: {count} applies", i + 1);
            assert_eq!(within, count, "node {}: an apply took over a second", i + 1);
        }
        for (n, before) in c.nodes.iter().zip(logs_before) {
            let grew = n.log().len() - before;
            assert!(grew < 64 << 10, "node {}'s log grew by {grew} bytes", n.spec.id);
        }
        // "big" and 20,000 pairs of 4 + 100 bytes: nothing the failed commands wrote stayed.
        let held = 3 + (16 << 20) + 20_000 * 104;
        stop_verify_and_compare(&c.dir, &mut c.nodes, |id, store| {
            let used = store.usage(&name("h")).expect("usage").expect("fsm h");
            assert_eq!(used, held, "node {id}");
        });
    });
}
