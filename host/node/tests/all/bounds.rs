//! Bounded work for every input: a cluster of real `wraft serve` processes under hostile
//! requests and real multi-megabyte payloads. No request may crash, wedge or starve a node:
//! a nested forwarded frame, streams announcing huge frames, L2 blocks of 2 and 20 MiB with a
//! follower down, a hundred concurrent 1 MiB writes, a flood of expensive queries, batches
//! that are too long or encode too large, idle HTTP connections, a removed node's certificate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use wraft_api::{ApiError, ApiRequest, ApiResult, Consistency, Payload};
use wraft_client::{Client, ClientError};
use wraft_core::{FsmLimits, FsmName};
use wraft_faults::process::NodeProcess;
use wraft_transport_quic::pki::CLUSTER_NAME;

use crate::common::{deploy_and_create, name};
use crate::processes::{caught_up, identity, runtime, three_nodes};

/// Three `wraft serve` processes (without the power-loss preload: these tests move hundreds
/// of megabytes) and clients of each role.
pub(crate) struct Trio {
    _dir: tempfile::TempDir,
    pub(crate) certs: std::path::PathBuf,
    pub(crate) addrs: Vec<String>,
    pub(crate) nodes: Vec<NodeProcess>,
}

impl Trio {
    pub(crate) fn start(extra: &[&str]) -> Self {
        Self::start_with(|_| extra.iter().map(|s| s.to_string()).collect())
    }

    /// Nodes started with `extra(id)` beyond the common flags.
    fn start_with(extra: impl Fn(u64) -> Vec<String>) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let (certs, real, mut nodes) = three_nodes(dir.path());
        for n in &mut nodes {
            n.spec.unsynced_journal = None;
            // Checkpoints off, snapshots rare: these tests are about the log.
            n.tuning = ["--checkpoint-interval", "0", "--snapshot-entries", "100000"]
                .iter()
                .map(|s| s.to_string())
                .chain(extra(n.spec.id))
                .collect();
            n.start().expect("start");
        }
        Self {
            _dir: dir,
            certs,
            addrs: real.iter().map(ToString::to_string).collect(),
            nodes,
        }
    }

    pub(crate) fn client(&self, role: &str, ids: &[u64]) -> Client {
        let addrs = ids
            .iter()
            .map(|i| self.addrs[*i as usize - 1].clone())
            .collect();
        Client::new(addrs, &identity(&self.certs, role))
            .expect("client")
            .with_patience(Duration::from_secs(30))
    }

    pub(crate) async fn leader(&self) -> u64 {
        let admin = self.client("admin", &[1, 2, 3]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(s) = admin.status().await
                && let Some(l) = s.leader
            {
                return l;
            }
            assert!(Instant::now() < deadline, "no leader within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn term(&self) -> u64 {
        self.client("admin", &[1, 2, 3])
            .status()
            .await
            .expect("status")
            .term
    }

    /// Resident memory of node `id`'s process, in bytes.
    fn rss(&self, id: u64) -> u64 {
        let pid = self.nodes[id as usize - 1].pid().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb << 10
    }

    pub(crate) fn assert_all_running(&mut self) {
        for n in &mut self.nodes {
            let running = n.running();
            assert!(
                running && n.exits.is_empty(),
                "node {} stopped ({:?}):\n{}",
                n.spec.id,
                n.exits,
                n.log()
            );
        }
    }

    pub(crate) fn stop(&mut self) {
        for n in &mut self.nodes {
            assert!(
                n.stop(),
                "node {} did not stop cleanly:\n{}",
                n.spec.id,
                n.log()
            );
        }
    }
}

pub(crate) fn put(key: &[u8], value: Vec<u8>) -> ApiRequest {
    let cmd = probe::Command::Put {
        key: key.to_vec(),
        value,
    };
    ApiRequest::Apply {
        fsm: name("r"),
        command: Payload::Postcard(postcard::to_allocvec(&cmd).expect("encode")),
        once: None,
    }
}

pub(crate) async fn create_probe(admin: &Client, fsm: &str) {
    deploy_and_create(
        admin,
        name(fsm),
        wraft_fsm_artifacts::PROBE,
        FsmLimits::default(),
    )
    .await;
}

/// Sends `request`, an idempotent write (a put of a fixed value), until it is answered:
/// sent again when an election left its outcome unknown (a CPU-starved test machine can
/// depose a leader mid-way). Returns how often it was sent again.
async fn idempotent(client: &Client, request: ApiRequest) -> Result<u32, ClientError> {
    for resent in 0..5 {
        match client.request(request.clone()).await {
            Ok(_) => return Ok(resent),
            Err(ClientError::Api(ApiError::OutcomeUnknown(_)) | ClientError::OutcomeUnknown(_)) => {
            }
            Err(e) => return Err(e),
        }
    }
    client.request(request).await.map(|_| 5)
}

/// Some small writes commit through any node.
pub(crate) async fn writes_commit(trio: &Trio, tag: &str) {
    let writer = trio.client("writer", &[1, 2, 3]);
    for i in 0..5u8 {
        writer
            .request(put(format!("{tag}-{i}").as_bytes(), vec![i]))
            .await
            .unwrap_or_else(|e| panic!("{tag}: write {i}: {e}"));
    }
}

/// A raw client API connection to `addr` with `role`'s certificate.
pub(crate) async fn raw_connection(trio: &Trio, role: &str, addr: &str) -> quinn::Connection {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    ep.set_default_client_config(
        wraft_transport_quic::client_config(
            &identity(&trio.certs, role),
            wraft_transport_quic::ALPN_CLIENT,
        )
        .expect("config"),
    );
    ep.connect(addr.parse().expect("addr"), CLUSTER_NAME)
        .expect("connect")
        .await
        .expect("handshake")
}

/// One frame (`len | crc32 | payload`) of raw payload bytes.
pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Sends raw payload bytes as a request frame and reads the answer.
async fn raw_call(conn: &quinn::Connection, payload: &[u8]) -> Result<ApiResult, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&frame(payload))
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    wraft_transport_quic::wire::recv::<ApiResult>(&mut recv, 1 << 20)
        .await
        .map_err(|e| e.to_string())
}

/// Item 1: a reader's frame of tens of thousands of nested `Forwarded` requests (as the
/// request type used to allow) used to overflow the stack of the node decoding it.
#[test]
fn a_nested_forwarded_frame_from_a_reader_is_refused_and_the_node_keeps_serving() {
    let _heavy = crate::common::heavy();
    runtime().block_on(async {
        let mut trio = Trio::start(&[]);
        let admin = trio.client("admin", &[1, 2, 3]);
        create_probe(&admin, "r").await;
        let leader = trio.leader().await;
        let conn = raw_connection(&trio, "reader", &trio.addrs[leader as usize - 1]).await;
        // ApiRequest::Forwarded was variant 11, Reader role 0, then the inner request: 40,000
        // levels of it, then Status (variant 6). Today's envelope, Forwarded (variant 1)
        // around the same bytes, too.
        let mut nested = [11u8, 0].repeat(40_000);
        nested.push(6);
        let mut enveloped = vec![1u8, 0];
        enveloped.extend_from_slice(&nested);
        for payload in [nested, enveloped] {
            match raw_call(&conn, &payload).await {
                Ok(Err(ApiError::BadRequest(why))) => eprintln!("refused: {why}"),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        writes_commit(&trio, "after-nesting").await;
        trio.assert_all_running();
        trio.stop();
    });
}

/// Item 2: 1024 streams from one certificate, each announcing a 64 MiB frame and sending
/// a megabyte of it. The node used to zero-fill each announced frame: 64 GiB.
#[test]
fn streams_announcing_huge_frames_cost_the_node_no_memory() {
    let _heavy = crate::common::heavy();
    let streams: usize = std::env::var("WRAFT_BOUNDS_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    runtime().block_on(async {
        let mut trio = Trio::start(&[]);
        let admin = trio.client("admin", &[1, 2, 3]);
        create_probe(&admin, "r").await;
        writes_commit(&trio, "warm-up").await;
        let target = trio.leader().await;
        let at_rest = trio.rss(target);
        let addr = trio.addrs[target as usize - 1].clone();
        // 16 connections (within the per-certificate cap) of 64 streams each.
        let per_conn = 64;
        let mut conns = Vec::new();
        for _ in 0..streams.div_ceil(per_conn) {
            conns.push(raw_connection(&trio, "writer", &addr).await);
        }
        let refused = Arc::new(AtomicU64::new(0));
        let mut attack = Vec::new();
        for i in 0..streams {
            let conn = conns[i / per_conn].clone();
            let refused = refused.clone();
            attack.push(tokio::spawn(async move {
                let Ok((mut send, mut recv)) = conn.open_bi().await else {
                    return;
                };
                let mut header = (64u32 << 20).to_le_bytes().to_vec();
                header.extend_from_slice(&[0; 4]);
                let _ = send.write_all(&header).await;
                let _ = send.write_all(&vec![0x5a; 1 << 20]).await;
                if let Ok(Err(e)) =
                    wraft_transport_quic::wire::recv::<ApiResult>(&mut recv, 1 << 20).await
                {
                    assert!(e.to_string().contains("exceeds the limit"), "{e}");
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // While the streams arrive: writes commit, and the node's memory stays near rest.
        let mut peak = at_rest;
        let deadline = Instant::now() + Duration::from_secs(20);
        while attack.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            writes_commit(&trio, "under-attack").await;
            peak = peak.max(trio.rss(target));
        }
        for t in attack {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        peak = peak.max(trio.rss(target));
        eprintln!(
            "node {target}: {} MiB at rest, {} MiB at peak; {} of {streams} streams refused",
            at_rest >> 20,
            peak >> 20,
            refused.load(Ordering::Relaxed)
        );
        assert!(
            peak < at_rest + (256 << 20),
            "RSS grew from {} MiB to {} MiB",
            at_rest >> 20,
            peak >> 20
        );
        assert_eq!(refused.load(Ordering::Relaxed), streams as u64);
        writes_commit(&trio, "after-attack").await;
        trio.assert_all_running();
        trio.stop();
    });
}

fn block(number: u64, len: usize) -> String {
    let hash = format!("0x{}", format!("{number:02x}").repeat(32));
    let payload: String = "ab".repeat(len);
    format!(
        r#"{{"Commit":{{"number":{number},"hash":"{hash}","parent_hash":"{hash}","payload":"0x{payload}"}}}}"#
    )
}

/// Item 3: L2 blocks of 2 MiB through latest-payload's JSON codec with its default limits,
/// and 20 MiB entries, land while a follower is down; it catches up within 10 s of its
/// return. The leader used to send them as one RPC under a 100 ms deadline, forever.
#[test]
fn a_follower_down_while_large_entries_land_catches_up_quickly() {
    let _heavy = crate::common::heavy();
    runtime().block_on(async {
        let mut trio = Trio::start(&[]);
        let admin = trio.client("admin", &[1, 2, 3]);
        // The probe decodes a 10 MiB value byte by byte: it needs more than default fuel.
        let generous = FsmLimits {
            fuel: 1_000_000_000,
            ..FsmLimits::default()
        };
        deploy_and_create(&admin, name("r"), wraft_fsm_artifacts::PROBE, generous).await;
        let latest = wraft_fsm_artifacts::LATEST_PAYLOAD;
        deploy_and_create(&admin, name("sequencer"), latest, FsmLimits::default()).await;
        let leader = trio.leader().await;
        let down = (1..=3).find(|i| *i != leader).expect("a follower");
        trio.nodes[down as usize - 1].kill();
        let up: Vec<u64> = (1..=3).filter(|i| *i != down).collect();
        let writer = trio.client("writer", &up);
        for number in 1..=40 {
            // A block committed again is a no-op (`changed: false`): resent if an election
            // left its outcome unknown.
            let mut resent = false;
            let out = loop {
                match writer
                    .apply_json(&name("sequencer"), &block(number, 2 << 20))
                    .await
                {
                    Ok(out) => break out,
                    Err(
                        ClientError::Api(ApiError::OutcomeUnknown(_))
                        | ClientError::OutcomeUnknown(_),
                    ) if !resent => {
                        resent = true;
                    }
                    Err(e) => panic!("block {number}: {e}"),
                }
            };
            let answer = |changed: bool| {
                Payload::Json(format!(r#"{{"number":{number},"changed":{changed}}}"#))
            };
            assert!(
                out == answer(true) || (resent && out == answer(false)),
                "block {number}: {out:?}"
            );
        }
        for i in 0..4u8 {
            let half = |k: u8| {
                let cmd = probe::Command::Put {
                    key: vec![b'b', i, k],
                    value: vec![i; 10 << 20],
                };
                (
                    name("r"),
                    Payload::Postcard(postcard::to_allocvec(&cmd).expect("encode")),
                )
            };
            writer
                .request(ApiRequest::Batch {
                    commands: vec![half(0), half(1)],
                    once: None,
                })
                .await
                .unwrap_or_else(|e| panic!("20 MiB batch {i}: {e}"));
        }
        // The latest block comes back whole (2 MiB of payload under the default output cap).
        let latest = writer
            .query_json(&name("sequencer"), r#""Latest""#, Consistency::Linearizable)
            .await
            .expect("query");
        let Payload::Json(latest) = latest else {
            panic!("json")
        };
        assert!(latest.len() > 4 << 20 && latest.contains(r#""number":40"#));

        trio.nodes[down as usize - 1].start().expect("restart");
        let returned = Instant::now();
        let leader_client = trio.client("admin", &[leader]);
        let down_client = trio.client("admin", &[down]);
        loop {
            let target = leader_client.status().await.expect("status").last_log;
            let at = down_client.status().await.ok().and_then(|s| s.applied);
            if at.is_some() && at >= target {
                break;
            }
            assert!(
                returned.elapsed() < Duration::from_secs(10),
                "node {down} at {at:?} of {target:?} after 10 s:\n{}",
                trio.nodes[down as usize - 1].log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("node {down} caught up in {:?}", returned.elapsed());
        writes_commit(&trio, "after-catch-up").await;
        caught_up(&trio.addrs, &trio.certs, &mut trio.nodes).await;
        trio.assert_all_running();
        trio.stop();
    });
}

/// Item 3: a hundred concurrent 1 MiB writes used to stop the whole cluster committing.
#[test]
fn a_hundred_concurrent_megabyte_writes_all_commit() {
    let _heavy = crate::common::heavy();
    runtime().block_on(async {
        let mut trio = Trio::start(&[]);
        let admin = trio.client("admin", &[1, 2, 3]);
        // The probe encodes a value it reads byte by byte: reading 1 MiB back takes more
        // than the default query fuel.
        let limits = FsmLimits {
            query_fuel: 500_000_000,
            ..FsmLimits::default()
        };
        deploy_and_create(&admin, name("r"), wraft_fsm_artifacts::PROBE, limits).await;
        let writer = Arc::new(trio.client("writer", &[1, 2, 3]));
        let started = Instant::now();
        let writes: Vec<_> = (0..100u32)
            .map(|i| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    idempotent(&writer, put(&i.to_be_bytes(), vec![i as u8; 1 << 20])).await
                })
            })
            .collect();
        let mut resent = 0;
        for (i, w) in writes.into_iter().enumerate() {
            resent += w
                .await
                .expect("task")
                .unwrap_or_else(|e| panic!("write {i}: {e}"));
        }
        eprintln!(
            "100 writes of 1 MiB in {:?} ({resent} resent after an election)",
            started.elapsed()
        );
        // Every value is there, whole.
        let reader = trio.client("reader", &[1, 2, 3]);
        for i in 0..100u32 {
            let q = probe::Query::Get {
                key: i.to_be_bytes().to_vec(),
            };
            let out = reader
                .request(ApiRequest::Query {
                    fsm: name("r"),
                    query: Payload::Postcard(postcard::to_allocvec(&q).expect("q")),
                    consistency: Consistency::Linearizable,
                })
                .await
                .expect("read");
            let wraft_api::ApiResponse::Output(Payload::Postcard(bytes)) = out else {
                panic!("unexpected {out:?}")
            };
            assert_eq!(
                postcard::from_bytes::<probe::Output>(&bytes).expect("output"),
                probe::Output::Bytes(vec![i as u8; 1 << 20]),
                "key {i}"
            );
        }
        writes_commit(&trio, "after-megabytes").await;
        caught_up(&trio.addrs, &trio.certs, &mut trio.nodes).await;
        trio.assert_all_running();
        trio.stop();
    });
}

/// Item 4: 2,000 concurrent queries that each burn their whole fuel. Writes keep committing
/// and no election happens; queries past the node's concurrency are answered `Busy`.
#[test]
fn a_flood_of_expensive_queries_leaves_writes_and_leadership_alone() {
    let _heavy = crate::common::heavy();
    runtime().block_on(async {
        let mut trio = Trio::start(&[]);
        let admin = trio.client("admin", &[1, 2, 3]);
        create_probe(&admin, "r").await;
        let leader = trio.leader().await;
        let term = trio.term().await;
        let looping = ApiRequest::Query {
            fsm: name("r"),
            query: Payload::Postcard(postcard::to_allocvec(&probe::Query::Loop).expect("q")),
            consistency: Consistency::Stale,
        };
        // 40 connections of 50 queries each, all to the leader.
        let readers: Vec<Arc<Client>> = (0..40)
            .map(|_| Arc::new(trio.client("reader", &[leader])))
            .collect();
        let (fuel, busy) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let flood: Vec<_> = (0..2000)
            .map(|i| {
                let (reader, q) = (readers[i % 40].clone(), looping.clone());
                let (fuel, busy) = (fuel.clone(), busy.clone());
                tokio::spawn(async move {
                    match reader.request(q).await {
                        Err(ClientError::Api(ApiError::Failed(
                            wraft_core::ApplyError::OutOfFuel { .. },
                        ))) => fuel.fetch_add(1, Ordering::Relaxed),
                        Err(ClientError::Api(ApiError::Busy(_))) => {
                            busy.fetch_add(1, Ordering::Relaxed)
                        }
                        other => panic!("query {i}: {other:?}"),
                    };
                })
            })
            .collect();
        let writer = trio.client("writer", &[leader]);
        let mut slowest = Duration::ZERO;
        let mut n = 0u32;
        while flood.iter().any(|t| !t.is_finished()) {
            let started = Instant::now();
            writer
                .request(put(b"during", n.to_be_bytes().to_vec()))
                .await
                .unwrap_or_else(|e| panic!("write {n} during the flood: {e}"));
            slowest = slowest.max(started.elapsed());
            n += 1;
        }
        for t in flood {
            t.await.expect("query task");
        }
        eprintln!(
            "{} queries ran out of fuel, {} were busy; {n} writes, the slowest {slowest:?}",
            fuel.load(Ordering::Relaxed),
            busy.load(Ordering::Relaxed)
        );
        assert!(n > 0, "no write was made during the flood");
        assert_eq!(trio.term().await, term, "an election happened");
        assert_eq!(trio.leader().await, leader);
        trio.assert_all_running();
        trio.stop();
    });
}

/// A module whose JSON codec turns any command into 1 MiB of zeros.
fn expanding_codec() -> Vec<u8> {
    wat::parse_str(
        r#"(module
            (import "wraft" "set_output" (func $out (param i32 i32)))
            (memory (export "memory") 20)
            (func (export "wraft_abi_version") (result i32) i32.const 1)
            (func (export "wraft_alloc") (param i32) (result i32) i32.const 1024)
            (func (export "wraft_apply") (param i32 i32) (result i32) i32.const 0)
            (func (export "wraft_query") (param i32 i32) (result i32) i32.const 0)
            (func (export "wraft_command_from_json") (param i32 i32) (result i32)
                (call $out (i32.const 65536) (i32.const 1048576)) i32.const 0)
            (func (export "wraft_output_to_json") (param i32 i32) (result i32) i32.const 0)
            (func (export "wraft_query_from_json") (param i32 i32) (result i32) i32.const 0)
            (func (export "wraft_query_output_to_json") (param i32 i32) (result i32) i32.const 0))"#,
    )
    .expect("wat")
}

/// Item 5: a batch of more commands than a node admits, and one whose commands encode past
/// the entry limit (a codec that expands each 1-byte command to 1 MiB), are refused before
/// anything is proposed, saying which limit; the cluster keeps committing.
#[test]
fn batches_too_long_or_too_large_are_refused_before_proposing() {
    let _heavy = crate::common::heavy();
    runtime().block_on(async {
        let mut trio = Trio::start(&[]);
        let admin = trio.client("admin", &[1, 2, 3]);
        create_probe(&admin, "r").await;
        let module = admin.deploy(expanding_codec()).await.expect("deploy");
        admin
            .create_fsm(name("x"), module, FsmLimits::default())
            .await
            .expect("create");
        let writer = trio.client("writer", &[1, 2, 3]);
        // The writer's first write opens its session (a log entry of its own): done here, so
        // that the refused batches below are the only writes that could propose anything.
        writer
            .batch_json(vec![(name("r"), "\"Nop\"".into())])
            .await
            .expect("a first batch");
        let last_log = || async { admin.status().await.expect("status").last_log };
        let before = last_log().await;
        let long: Vec<(FsmName, String)> =
            (0..1025).map(|_| (name("r"), "\"Nop\"".into())).collect();
        let err = writer.batch_json(long).await.expect_err("over-long batch");
        assert!(err.to_string().contains("--max-batch-commands"), "{err}");
        let large: Vec<(FsmName, String)> = (0..70).map(|_| (name("x"), "1".into())).collect();
        let err = writer.batch_json(large).await.expect_err("entry too large");
        assert!(err.to_string().contains("--max-entry-bytes"), "{err}");
        assert!(
            matches!(err, ClientError::Api(ApiError::BadRequest(_))),
            "{err:?}"
        );
        assert_eq!(last_log().await, before, "something was proposed");
        // A batch within both limits commits.
        let fine: Vec<(FsmName, String)> = (0..20).map(|_| (name("x"), "1".into())).collect();
        writer.batch_json(fine).await.expect("a batch of 20 MiB");
        writes_commit(&trio, "after-batches").await;
        trio.assert_all_running();
        trio.stop();
    });
}

/// Item 7: once a node is removed from the cluster, the others refuse its certificate for
/// raft; a node never in the cluster (one about to join) is still heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_certificate_is_refused_by_the_others() {
    use crate::cluster::{Cluster, hello, identity as node_identity};
    use wraft_api::Role;
    let mut c = Cluster::start(3, wraft_host::raft::SnapshotPolicy::default()).await;
    crate::common::setup_probe(&c.leader().await.raft).await;
    let admin = c.client(Role::Admin, &[1, 2, 3]);
    let new = c.add_node().await;
    let addr = c.addrs[new as usize - 1].to_string();
    admin
        .request(ApiRequest::AddLearner { id: new, addr })
        .await
        .expect("add learner");
    admin
        .request(ApiRequest::Promote { id: new })
        .await
        .expect("promote");
    for id in 1..=3 {
        let at = c.node(id).addr;
        assert_eq!(hello(&node_identity(&c.ca, new), at, id, new).await, Ok(()));
    }
    admin
        .request(ApiRequest::Remove { id: new })
        .await
        .expect("remove");
    for id in 1..=3 {
        let at = c.node(id).addr;
        // Each node refuses it once it has applied the removal.
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = loop {
            match hello(&node_identity(&c.ca, new), at, id, new).await {
                Err(e) => break e,
                Ok(()) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(()) => panic!("node {id} still hears removed node {new}"),
            }
        };
        assert!(err.contains("was removed from the cluster"), "{err}");
        // A node id never seen in the cluster is not refused: it may be about to join.
        assert_eq!(hello(&node_identity(&c.ca, 9), at, id, 9).await, Ok(()));
    }
    let writer = c.client(Role::Writer, &[1, 2, 3]);
    writer
        .apply_json(&name("p"), r#"{"Incr":{"key":[110]}}"#)
        .await
        .expect("the cluster keeps committing");
    c.stop_all().await;
}

const HTTP_WRITER: &str = "writer-token-0123456789";

/// Item 6: a thousand idle HTTP connections (and slow ones that sent half a request) used
/// to take every file descriptor of the node: health checks and writes stopped, and so did
/// snapshot builds. They are now held for the header timeout at most, `/healthz` and writes
/// answer meanwhile, and a request with a wrong token is refused before its body is read.
#[test]
fn idle_and_slow_http_connections_do_not_stop_the_node_serving() {
    let _heavy = crate::common::heavy();
    let idle: usize = std::env::var("WRAFT_BOUNDS_HTTP_IDLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    // This test process holds a socket per idle connection.
    raise_open_files_limit();
    let http_port = crate::cli::free_udp_ports(3);
    let http = move |id: u64| -> std::net::SocketAddr {
        ([127, 0, 0, 1], http_port + id as u16 - 1).into()
    };
    runtime().block_on(async {
        let mut trio = Trio::start_with(|id| {
            vec![
                "--http-listen".into(),
                http(id).to_string(),
                "--http-plaintext".into(),
                "--http-token".into(),
                format!("writer:{HTTP_WRITER}"),
            ]
        });
        let admin = trio.client("admin", &[1, 2, 3]);
        create_probe(&admin, "r").await;
        let target = http(1);
        let mut held = Vec::new();
        for i in 0..idle {
            let mut s = tokio::net::TcpStream::connect(target).await.expect("connect");
            if i % 2 == 1 {
                // Half a request, then silence.
                let head = "POST /v1/fsms/r/apply HTTP/1.1\r\nHost: x\r\nContent-Length: 100";
                s.write_all(head.as_bytes()).await.expect("write");
            }
            held.push(s);
        }
        let started = Instant::now();
        let (status, _) = crate::http::http(target, "GET", "/healthz", &[], b"").await;
        assert_eq!(status, 200, "healthz with {idle} idle connections");
        let auth = format!("Authorization: Bearer {HTTP_WRITER}");
        let incr = br#"{"Incr":{"key":[104]}}"#;
        let (status, body) =
            crate::http::http(target, "POST", "/v1/fsms/r/apply", std::slice::from_ref(&auth), incr).await;
        assert_eq!(status, 200, "a write with {idle} idle connections: {body}");
        eprintln!("healthz and a write answered in {:?}", started.elapsed());
        // A wrong token is refused at once, though the body it announces never comes.
        let mut s = tokio::net::TcpStream::connect(target).await.expect("connect");
        let head = "POST /v1/fsms/r/apply HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope-nope-nope\r\nContent-Length: 10000000\r\n\r\n";
        s.write_all(head.as_bytes()).await.expect("write");
        let mut answer = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut answer))
            .await
            .expect("answered before the body")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        // Past the header timeout, the node has closed the idle connections.
        tokio::time::sleep(wraft_host::http::HEADER_TIMEOUT + Duration::from_secs(2)).await;
        let mut closed = 0;
        for s in &mut held {
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
                // A timeout answer (408) then the close counts as closed too.
                Ok(Ok(_)) => closed += 1,
                Err(_) => {}
            }
        }
        assert_eq!(closed, idle, "idle connections still open past the header timeout");
        let (status, body) =
            crate::http::http(target, "POST", "/v1/fsms/r/apply", &[auth], incr).await;
        assert_eq!(status, 200, "{body}");
        trio.assert_all_running();
        trio.stop();
    });
}

/// Raises this test process's soft limit of open files to its hard limit.
fn raise_open_files_limit() {
    // SAFETY: plain getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
