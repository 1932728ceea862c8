//! One cluster of three architectures: node 1 is this build (x86_64, Cranelift), node 2 the
//! aarch64 build under qemu-aarch64 (Cranelift), node 3 the armv7 build under qemu-arm
//! (Pulley, wasmtime's interpreter). They run the example FSMs and the probe through a few
//! thousand commands, floating point and hostile inputs included, and must end with the same
//! state hash for every FSM. Commands that run out of fuel write first: a node that ran out
//! at another command would keep or lose a key the others do not, and its hash would differ.
//!
//! Needs the cross builds: `make edge-test` builds them and points `WRAFT_EDGE_AARCH64` and
//! `WRAFT_EDGE_ARMV7` at them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use probe::Command as P;
use wraft_api::{ApiError, ApiRequest, ApiResponse, Payload};
use wraft_client::{Client, ClientError};
use wraft_core::{ApplyError, FsmLimits, FsmName};
use wraft_faults::process::{NodeProcess, NodeSpec, command_under};

use crate::cli::{WRAFT, free_udp_ports, text};
use crate::faults::{certs_for, converge, identity};
use crate::guests::airspace_volume;

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

fn name(s: &str) -> FsmName {
    FsmName::new(s).expect("name")
}

fn probe(cmd: &P) -> (FsmName, Payload) {
    (
        name("probe"),
        Payload::Postcard(postcard::to_allocvec(cmd).expect("encode")),
    )
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
    match client.request(ApiRequest::Apply { fsm, command }).await {
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
        eprintln!("deployed 4 modules in {:?}", started.elapsed());
        let writer = Client::new(addrs.clone(), &identity(&certs, "writer"))
            .expect("client")
            .with_patience(Duration::from_secs(60));
        for b in 0..BATCHES {
            let commands = (b * PER_BATCH..(b + 1) * PER_BATCH).map(command).collect();
            match writer.request(ApiRequest::Batch { commands }).await {
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
        };
        assert!(writer.request(garbage).await.is_err(), "garbage applied");
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
    assert_eq!(hashes[0].len(), 4, "four FSMs: {:?}", hashes[0]);
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
