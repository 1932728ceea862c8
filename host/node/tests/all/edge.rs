//! One cluster of three architectures: node 1 is this build (x86_64, Cranelift), node 2 the
//! aarch64 build under qemu-aarch64 (Cranelift), node 3 the armv7 build under qemu-arm
//! (Pulley, wasmtime's interpreter). They run the example FSMs and the probe through a few
//! thousand commands, floating point and hostile inputs included, and must end with the same
//! state hash for every FSM. Commands that run out of fuel write first: a node that ran out
//! at another command would keep or lose a key the others do not, and its hash would differ.
//! The nan-bits guest makes NaNs every way it can: each node must hold exactly the bits the
//! model says (`nan_model`: canonical NaNs from arithmetic), whatever its CPU or backend. A
//! recursion swept across the call-depth cut-off writes only when it completes, so a node
//! whose depth limit fell elsewhere would hold other keys. Then the armv7 node and the aarch64
//! node are each stopped while the others write past a snapshot, and catch up by installing
//! a snapshot built on another architecture.
//!
//! Needs the cross builds: `make edge-test` builds them and points `WRAFT_EDGE_AARCH64` and
//! `WRAFT_EDGE_ARMV7` at them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use probe::Command as P;
use wraft_api::{ApiError, ApiRequest, ApiResponse, Consistency, Payload};
use wraft_client::{Client, ClientError};
use wraft_core::{ApplyError, FsmLimits, FsmName};
use wraft_faults::process::{NodeProcess, NodeSpec, command_under};

use crate::cli::{WRAFT, free_udp_ports, text};
use crate::common::name;
use crate::guests::airspace_volume;
use crate::nan_model;
use crate::processes::{certs_for, converge, identity, newest_built};

/// Every node snapshots after this many entries and keeps a few behind it, so a node that
/// was down catches up from a snapshot.
const SNAPSHOT_EVERY: u64 = 64;

/// Batches of this many commands, each one raft entry.
const BATCHES: usize = 100;
const PER_BATCH: usize = 30;

fn edge_bin(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: `make edge-test` builds the edge binaries and sets it")
    });
    assert!(path.exists(), "{var}={}: no such file", path.display());
    path
}

/// (binary, runner) of nodes 1, 2 and 3.
fn architectures() -> [(PathBuf, Vec<String>); 3] {
    let runner = |r: &[&str]| r.iter().map(ToString::to_string).collect();
    [
        (PathBuf::from(WRAFT), Vec::new()),
        (
            edge_bin("WRAFT_EDGE_AARCH64"),
            runner(&["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]),
        ),
        (
            edge_bin("WRAFT_EDGE_ARMV7"),
            runner(&["qemu-arm", "-L", "/usr/arm-linux-gnueabihf"]),
        ),
    ]
}

fn probe(cmd: &P) -> (FsmName, Payload) {
    (
        name("probe"),
        Payload::Postcard(postcard::to_allocvec(cmd).expect("encode")),
    )
}

fn nan(command: &nan_bits::Command) -> (FsmName, Payload) {
    (
        name("nan"),
        Payload::Postcard(postcard::to_allocvec(command).expect("encode")),
    )
}

/// Checks the NaN bits `client`'s node stored (a stale read: whatever it applied) against the
/// model.
async fn check_nans(client: &Client, node: usize) {
    for (prefix, operands) in nan_model::commands() {
        let query = nan_bits::Query::Results {
            prefix: prefix.as_bytes().to_vec(),
        };
        let request = ApiRequest::Query {
            fsm: name("nan"),
            query: Payload::Postcard(postcard::to_allocvec(&query).expect("encode")),
            consistency: Consistency::Stale,
        };
        let Ok(ApiResponse::Output(Payload::Postcard(out))) = client.request(request).await else {
            panic!("node {node}: no answer to the NaN query")
        };
        let stored: Vec<(Vec<u8>, Vec<u8>)> = postcard::from_bytes(&out).expect("decode");
        assert_eq!(
            stored.len(),
            nan_model::RESULTS,
            "node {node}: {prefix} results"
        );
        for (op, bits) in &stored {
            let op = std::str::from_utf8(op).expect("an instruction name");
            let expected = nan_model::expected(op, &operands);
            assert_eq!(
                bits,
                &expected,
                "node {node}: {prefix}{op}: stored {}, the model says {}",
                nan_model::show(op, bits),
                nan_model::show(op, &expected)
            );
        }
    }
}

/// A module whose apply recurses as deep as its command says (u32 LE), then stores the
/// command as a key: a node whose call-depth cut-off fell elsewhere would hold other keys.
/// Its recursive function costs 11 units a frame (8, one parameter, two operands).
fn deep_module() -> Vec<u8> {
    wat::parse_str(
        r#"(module
            (import "wraft" "kv_put" (func $put (param i32 i32 i32 i32)))
            (memory (export "memory") 1)
            (data (i32.const 16) "ok")
            (func (export "wraft_abi_version") (result i32) i32.const 1)
            (func (export "wraft_alloc") (param i32) (result i32) i32.const 1024)
            (func (export "wraft_query") (param i32 i32) (result i32) i32.const 0)
            (func $down (param i32)
                (if (local.get 0) (then (call $down (i32.sub (local.get 0) (i32.const 1))))))
            (func (export "wraft_apply") (param i32 i32) (result i32)
                (call $down (i32.load (local.get 0)))
                (call $put (local.get 0) (i32.const 4) (i32.const 16) (i32.const 2))
                i32.const 0))"#,
    )
    .expect("wat")
}

/// The depths swept: around the deepest recursion the counter lets through.
fn deep_depths() -> std::ops::RangeInclusive<u32> {
    let cut_off = wraft_host::runtime::DEPTH_LIMIT / (wraft_host::runtime::FRAME_UNITS + 3);
    cut_off - 4..=cut_off + 4
}

/// Makes node 1 (x86_64) the leader if it is not; returns its term.
async fn x86_64_leads(admin: &Client, node_1: &Client) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = node_1.status().await.expect("status");
        if status.leader == Some(1) {
            return status.term;
        }
        assert!(Instant::now() < deadline, "node 1 never led: {status:?}");
        // Refused while an election is under way: asked again.
        let _ = admin.transfer_leader(Some(1)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Stops node `victim` (an index), writes until node 1 (x86_64, made the leader) has built a
/// snapshot well past the victim's log, and restarts it, until it installs node 1's snapshot (a leader purges its log
/// behind a snapshot only once no replication reads those entries, which the test cannot
/// see, so a node may catch up from the log instead: then it goes down again).
async fn catch_up_by_snapshot(
    nodes: &mut [NodeProcess],
    victim: usize,
    (admin, writer): (&Client, &Client),
    per_node: &[Client],
) {
    const INSTALLED: &str = "installed a snapshot";
    let fill = probe(&P::Incr {
        key: b"fill".to_vec(),
    });
    for round in 0..4 {
        let term = x86_64_leads(admin, &per_node[0]).await;
        let last = per_node[victim]
            .status()
            .await
            .expect("status")
            .last_log
            .unwrap_or(0);
        let installed = nodes[victim].log().matches(INSTALLED).count();
        assert!(nodes[victim].stop(), "node {} stopped cleanly", victim + 1);
        let past = last + SNAPSHOT_EVERY;
        for _ in 0..8 * SNAPSHOT_EVERY {
            if newest_built(&nodes[0]) > past {
                break;
            }
            apply_alone(writer, fill.clone()).await.expect("fill");
        }
        assert!(
            newest_built(&nodes[0]) > past,
            "node 1 never snapshotted past index {past}"
        );
        nodes[victim].start().expect("restart");
        converge(per_node, Instant::now() + Duration::from_secs(300))
            .await
            .expect("converge");
        let now = per_node[0].status().await.expect("status");
        if (now.leader, now.term) != (Some(1), term) {
            eprintln!("leadership moved during round {round}; another round");
            continue;
        }
        if nodes[victim].log().matches(INSTALLED).count() > installed {
            // Node 1 led throughout: the snapshot was built on x86_64.
            eprintln!(
                "node {} installed node 1's snapshot (round {round})",
                victim + 1
            );
            return;
        }
        eprintln!(
            "node {} caught up from the log; it misses more writes",
            victim + 1
        );
    }
    panic!(
        "node {} never installed a snapshot:\n{}",
        victim + 1,
        nodes[victim].log()
    );
}

fn json(fsm: &str, s: String) -> (FsmName, Payload) {
    (name(fsm), Payload::Json(s))
}

/// Command `i` of the bulk load: blocks, manifest files, airspace intents whose coordinates
/// and altitudes are fractional, tiny, huge or negative zero, and probe counters.
fn command(i: usize) -> (FsmName, Payload) {
    let hash = |n: usize| format!("0x{:064x}", n);
    match i % 4 {
        0 => json(
            "sequencer",
            format!(
                r#"{{"Commit":{{"number":{},"hash":"{}","parent_hash":"{}","payload":"0x{:02x}"}}}}"#,
                i + 1,
                hash(i + 1),
                hash(i),
                i % 256
            ),
        ),
        1 => json(
            "manifest",
            if i.is_multiple_of(3) && i > 8 {
                format!(r#"{{"DeleteFile":{{"path":"f{}"}}}}"#, i - 8)
            } else {
                format!(
                    r#"{{"RegisterFile":{{"path":"f{i}","database":"db","measurement":"m{}","partition_time_ms":{},"size_bytes":{},"checksum":"c{i}","tier":"Hot"}}}}"#,
                    i % 7,
                    i * 3_600_000,
                    i * 4096 + 1
                )
            },
        ),
        2 => {
            let lat = 10.0 + (i as f64) * 0.021 + 1e-300;
            let lng = -120.0 + (i as f64).sqrt() / 7.0;
            let alt = match i % 3 {
                0 => (-0.0, 120.5),
                1 => (0.1 + 0.2, 30_000.0 / 7.0),
                _ => (5e-324, 400.0),
            };
            let volume = airspace_volume(lat, lng, 0.01 + 1.0 / (i as f64 + 3.0) * 1e-3, alt);
            json(
                "airspace",
                format!(
                    r#"{{"PutIntent":{{"id":"op{i}","owner":"uss{}","volumes":[{volume}],"state":"Accepted","base_url":"https://uss.example","key":[],"ovn":null}}}}"#,
                    i % 3
                ),
            )
        }
        _ => probe(&P::Incr {
            key: vec![(i % 11) as u8],
        }),
    }
}

/// The outcome of one command sent alone: `Ok(())`, or the deterministic failure.
async fn apply_alone(
    client: &Client,
    (fsm, command): (FsmName, Payload),
) -> Result<(), ApplyError> {
    match client
        .request(ApiRequest::Apply {
            fsm,
            command,
            once: None,
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(ClientError::Api(ApiError::Failed(e))) => Err(e),
        Err(e) => panic!("not a deterministic outcome: {e}"),
    }
}

/// `fsm name -> state hash` from `wraft init verify` run by the node's own binary (an armv7
/// LMDB file is not readable by a 64-bit build).
fn fsm_hashes(bin: &Path, runner: &[String], data: &Path) -> BTreeMap<String, String> {
    let out = command_under(runner, bin)
        .args(["init", "verify", "--state-dir"])
        .arg(data)
        .env("WRAFT_LOG", "error")
        .output()
        .expect("run wraft init verify");
    let report = text(&out.stdout);
    assert!(
        out.status.success(),
        "{} init verify {}: {report}{}",
        bin.display(),
        data.display(),
        text(&out.stderr)
    );
    report
        .lines()
        .filter_map(|l| l.trim().strip_prefix("fsm"))
        .filter_map(|l| {
            let (fsm, rest) = l.trim().split_once(':')?;
            let (_, hash) = rest.split_once(", state ")?;
            Some((fsm.to_string(), hash.trim().to_string()))
        })
        .collect()
}

/// Peak resident memory of a process, in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    })
}

#[test]
#[ignore = "needs the edge builds: make edge-test"]
fn x86_64_aarch64_and_armv7_nodes_reach_identical_state() {
    let arches = architectures();
    let dir = tempfile::tempdir().expect("tmp");
    let ids = [1, 2, 3];
    let certs = certs_for(dir.path(), &ids).expect("certs");
    let base = free_udp_ports(3);
    let listen: Vec<std::net::SocketAddr> = (0..3)
        .map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], base + i)))
        .collect();
    let members = listen
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<NodeProcess> = ids
        .iter()
        .zip(&arches)
        .zip(&listen)
        .map(|((&id, (bin, runner)), &listen)| {
            let mut n = NodeProcess::new(
                bin,
                &certs,
                dir.path().join(format!("node-{id}.log")),
                NodeSpec {
                    id,
                    listen,
                    data_dir: dir.path().join(format!("node-{id}")),
                    initial_members: (id == 1).then(|| members.clone()),
                    unsynced_journal: None,
                },
            );
            n.runner = runner.clone();
            n.log_filter = "warn,wraft_host::raft=info".into();
            n.tuning = [
                "--checkpoint-interval",
                "2",
                "--snapshot-entries",
                &SNAPSHOT_EVERY.to_string(),
                "--snapshot-trailing-entries",
                "8",
                "--snapshot-interval",
                "3",
            ]
            .map(String::from)
            .to_vec();
            if id == 2 {
                // qemu-user cannot map the 64 GiB default of a 64-bit host (nor can every
                // board kernel with a 39-bit address space): docs/edge.md.
                n.tuning.extend(
                    [
                        "--max-state-bytes",
                        "4294967296",
                        "--max-log-bytes",
                        "4294967296",
                    ]
                    .map(String::from),
                );
            }
            n
        })
        .collect();
    for n in &mut nodes {
        n.start().expect("start");
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let addrs: Vec<String> = listen.iter().map(ToString::to_string).collect();
    let started = Instant::now();
    let (spins, peaks) = rt.block_on(async {
        let admin = Client::new(addrs.clone(), &identity(&certs, "admin"))
            .expect("client")
            .with_patience(Duration::from_secs(60));
        for (module, fsm) in [
            (wraft_fsm_artifacts::LATEST_PAYLOAD, "sequencer"),
            (wraft_fsm_artifacts::FILE_MANIFEST, "manifest"),
            (wraft_fsm_artifacts::AIRSPACE_STORE, "airspace"),
            (wraft_fsm_artifacts::PROBE, "probe"),
            (wraft_fsm_artifacts::NAN_BITS, "nan"),
            (&deep_module(), "deep"),
        ] {
            let id = admin.deploy(module.to_vec()).await.expect("deploy");
            let limits = match fsm {
                "probe" => FsmLimits {
                    fuel: 5_000_000,
                    memory_pages: 64,
                    max_output_bytes: 64 << 10,
                    query_fuel: 5_000_000,
                    ..FsmLimits::default()
                },
                _ => FsmLimits::default(),
            };
            admin
                .create_fsm(name(fsm), id, limits)
                .await
                .expect("create");
        }
        eprintln!("deployed 6 modules in {:?}", started.elapsed());
        let writer = Client::new(addrs.clone(), &identity(&certs, "writer"))
            .expect("client")
            .with_patience(Duration::from_secs(60));
        for b in 0..BATCHES {
            let commands = (b * PER_BATCH..(b + 1) * PER_BATCH).map(command).collect();
            match writer
                .request(ApiRequest::Batch {
                    commands,
                    once: None,
                })
                .await
            {
                Ok(ApiResponse::BatchOutputs(outs)) => assert_eq!(outs.len(), PER_BATCH),
                other => panic!("batch {b}: {other:?}"),
            }
        }
        eprintln!(
            "{} commands in {BATCHES} batches after {:?}",
            BATCHES * PER_BATCH,
            started.elapsed()
        );
        // Hostile commands, each alone: every one fails, the same way on every node.
        let hostile = [
            P::Loop,
            P::AllocBomb,
            P::PutThenTrap {
                key: b"t".to_vec(),
                value: b"x".to_vec(),
            },
            P::PutThenPanic {
                key: b"p".to_vec(),
                value: b"x".to_vec(),
            },
            P::HugeOutput { len: 1 << 20 },
        ];
        for cmd in &hostile {
            let outcome = apply_alone(&writer, probe(cmd)).await;
            assert!(outcome.is_err(), "{cmd:?} succeeded");
        }
        let garbage = ApiRequest::Apply {
            fsm: name("probe"),
            command: Payload::Postcard(vec![0xff; 9]),
            once: None,
        };
        assert!(writer.request(garbage).await.is_err(), "garbage applied");
        // NaNs, each command alone.
        for (prefix, operands) in nan_model::commands() {
            let cmd = nan_bits::Command::Compute {
                prefix: prefix.as_bytes().to_vec(),
                operands,
            };
            apply_alone(&writer, nan(&cmd))
                .await
                .expect("NaNs computed");
        }
        // A recursion across the call-depth cut-off, each depth alone.
        let mut deep = Vec::new();
        for depth in deep_depths() {
            let command = Payload::Postcard(depth.to_le_bytes().to_vec());
            deep.push(apply_alone(&writer, (name("deep"), command)).await);
        }
        assert!(
            deep.first().is_some_and(Result::is_ok)
                && deep
                    .last()
                    .is_some_and(|r| matches!(r, Err(ApplyError::CallDepth { .. }))),
            "the sweep straddles the cut-off: {deep:?}"
        );
        // Spins that write, then run out of fuel past some number of rounds.
        let mut spins = Vec::new();
        for i in 0..60u64 {
            let cmd = P::Spin {
                key: format!("spin{i}").into_bytes(),
                rounds: i * 5_000,
            };
            spins.push(apply_alone(&writer, probe(&cmd)).await);
        }
        let per_node: Vec<Client> = addrs
            .iter()
            .map(|a| {
                Client::new(vec![a.clone()], &identity(&certs, "reader"))
                    .expect("client")
                    .with_patience(Duration::from_secs(5))
            })
            .collect();
        let applied = converge(&per_node, Instant::now() + Duration::from_secs(300))
            .await
            .expect("converge");
        eprintln!("converged at index {applied} after {:?}", started.elapsed());
        // The armv7 node, then the aarch64 one, catch up from a snapshot another CPU built.
        for victim in [2, 1] {
            catch_up_by_snapshot(&mut nodes, victim, (&admin, &writer), &per_node).await;
            eprintln!(
                "node {} caught up after {:?}",
                victim + 1,
                started.elapsed()
            );
        }
        for (i, client) in per_node.iter().enumerate() {
            check_nans(client, i + 1).await;
        }
        let peaks: Vec<Option<u64>> = nodes
            .iter()
            .map(|n| n.pid().and_then(peak_rss_kib))
            .collect();
        (spins, peaks)
    });
    let out_of_fuel = spins
        .iter()
        .filter(|s| matches!(s, Err(ApplyError::OutOfFuel { .. })))
        .count();
    assert!(
        out_of_fuel > 0 && spins.iter().any(Result::is_ok),
        "the spins straddle the fuel limit: {spins:?}"
    );
    for n in &mut nodes {
        let id = n.spec.id;
        assert!(n.stop(), "node {id} did not stop cleanly:\n{}", n.log());
        let log = n.log();
        assert!(!log.contains("panicked"), "node {id} panicked:\n{log}");
        assert!(
            !log.contains("serves no reads until it is repaired"),
            "node {id} diverged at a checkpoint:\n{log}"
        );
        assert!(n.exits.is_empty(), "node {id} exited: {:?}", n.exits);
    }
    let hashes: Vec<BTreeMap<String, String>> = nodes
        .iter()
        .zip(&arches)
        .map(|(n, (bin, runner))| fsm_hashes(bin, runner, &n.spec.data_dir))
        .collect();
    assert_eq!(hashes[0].len(), 6, "six FSMs: {:?}", hashes[0]);
    for (i, h) in hashes.iter().enumerate().skip(1) {
        assert_eq!(h, &hashes[0], "node {} differs from node 1", i + 1);
    }
    for (n, peak) in nodes.iter().zip(peaks) {
        eprintln!(
            "node {}: peak RSS {} KiB, data directory {} KiB",
            n.spec.id,
            peak.map_or("?".into(), |p| p.to_string()),
            dir_bytes(&n.spec.data_dir) / 1024
        );
    }
    eprintln!(
        "{out_of_fuel} of {} spins ran out of fuel; identical state on all three after {:?}",
        spins.len(),
        started.elapsed()
    );
}
