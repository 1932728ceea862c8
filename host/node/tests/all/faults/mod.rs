//! The fault-injection suite: a 3- or 5-node cluster of real `wraft serve` processes behind
//! UDP fault proxies, clients recording a history of register writes and linearizable reads,
//! and a seeded schedule of kill -9 / restart, power losses (of one node or all: unsynced
//! writes undone), full disks, SIGSTOP / SIGCONT, partitions (both ways, one way, bridge,
//! minority) and lossy, duplicating, delaying links; nodes snapshot every 200 entries. After the schedule: every node
//! up and healed, all converge to the same applied index and state digest, a final read of
//! every key, the history checked for linearizability, clean shutdowns, no panic in any
//! log, and `wraft init verify` passing on every data directory.
//!
//! CI runs `WRAFT_FAULT_SEEDS` (default 2) schedules of `WRAFT_FAULT_SECS` (default 15)
//! seconds from seed `WRAFT_FAULT_SEED` (default 1); odd seeds run 3 nodes, even seeds 5
//! (`WRAFT_FAULT_NODES` forces one size). A failure names its seed; docs/testing.md says how
//! to replay one and how to run the long form.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wraft_client::Client;
use wraft_faults::checker;
use wraft_faults::history::{History, Op, Outcome};
use wraft_faults::proxy::NodeId;
use wraft_faults::schedule;
use wraft_faults::unsynced::{Lost, Survival};

use crate::cli::free_udp_ports;
use crate::processes::{
    certs_for, converge, create_register, identity, node_processes, put, runtime,
};

mod phases;
use phases::{
    check_counters, compare_data_directories, final_reads, heal, inject, spawn_clients, start,
    stop_cleanly, trace_per_second,
};

const KEYS: u32 = 24;
const CLIENTS: u32 = 4;

/// The cluster of a seed: 3 nodes for odd seeds, 5 for even ones, unless WRAFT_FAULT_NODES.
fn nodes_of(seed: u64) -> Vec<NodeId> {
    let n = env_u64("WRAFT_FAULT_NODES", if seed % 2 == 1 { 3 } else { 5 });
    (1..=n).collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a run did.
struct Report {
    acked: usize,
    lost: Lost,
}

/// Runs one schedule on `nodes`; an error names what failed. `tuning` replaces the nodes'
/// checkpoint and snapshot flags.
async fn run(
    seed: u64,
    nodes_ids: &[NodeId],
    steps: &[schedule::Step],
    secs: u64,
    tuning: Option<&[&str]>,
) -> Result<Report, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let result = run_in(&dir, seed, nodes_ids, steps, secs, tuning).await;
    if result.is_err() || std::env::var_os("WRAFT_FAULT_KEEP").is_some() {
        let kept = dir.keep();
        eprintln!(
            "seed {seed}: node logs and data directories kept in {}",
            kept.display()
        );
    }
    result
}

async fn run_in(
    dir: &tempfile::TempDir,
    seed: u64,
    nodes_ids: &[NodeId],
    steps: &[schedule::Step],
    secs: u64,
    tuning: Option<&[&str]>,
) -> Result<Report, String> {
    let mut rig = start(dir.path(), seed, nodes_ids, tuning).await?;
    let history = Arc::new(History::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = spawn_clients(&rig, &history, &stop, seed)?;

    let mut lost = Lost::default();
    let started = Instant::now();
    for step in steps {
        if let Some(wait) = step.at.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        inject(&mut rig, step, &mut lost).await?;
    }
    if let Some(rest) = Duration::from_secs(secs).checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut increments = Vec::new();
    while let Some(joined) = clients.join_next().await {
        increments.push(joined.map_err(|e| format!("a client: {e}"))?);
    }

    // Heal everything, then every node must catch up to the same state.
    let phase = |what: &str| {
        eprintln!(
            "seed {seed}: {what} at {:.1} s",
            started.elapsed().as_secs_f64()
        )
    };
    phase("schedule over");
    heal(&mut rig)?;
    final_reads(&rig, &history).await?;
    let increments = check_counters(&rig, &increments).await?;
    phase(&format!(
        "final reads done; {increments} acknowledged increments each applied exactly once"
    ));
    let per_node: Vec<Client> = rig
        .addrs
        .iter()
        .map(|a| Client::new(vec![a.clone()], &identity(&rig.certs, "reader")))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let applied = converge(&per_node, Instant::now() + Duration::from_secs(60)).await?;
    phase("converged");

    let events = history.events();
    let acked = events
        .iter()
        .filter(|e| matches!(e.op, Op::Write(_)) && e.outcome == Outcome::Ok)
        .count();
    if std::env::var_os("WRAFT_FAULT_TRACE").is_some() {
        trace_per_second(&events);
    }
    checker::check(&events).map_err(|v| format!("not linearizable: {v}"))?;
    stop_cleanly(&mut rig.nodes)?;
    phase("stopped");
    compare_data_directories(dir.path(), nodes_ids, applied, &events)?;
    Ok(Report { acked, lost })
}

#[test]
#[cfg(not(any(feature = "fault-stale-reads", feature = "fault-lazy-fsync")))]
fn seeded_fault_schedules_lose_no_acknowledged_write_and_stay_linearizable() {
    let first = env_u64("WRAFT_FAULT_SEED", 1);
    let count = env_u64("WRAFT_FAULT_SEEDS", 2);
    let secs = env_u64("WRAFT_FAULT_SECS", 15);
    let rt = runtime();
    for seed in first..first + count {
        let nodes = nodes_of(seed);
        let steps = schedule::draw(seed, &nodes, Duration::from_secs(secs));
        eprintln!("seed {seed}: {} nodes, schedule:", nodes.len());
        for step in &steps {
            eprintln!("  {step}");
        }
        let started = Instant::now();
        match rt.block_on(run(seed, &nodes, &steps, secs, None)) {
            Ok(r) => eprintln!(
                "seed {seed}: ok, {} nodes, {} acknowledged writes, {} faults, power losses \
                 undid {} unsynced writes ({} bytes, {} kept torn) to {:?}, {:.1} s",
                nodes.len(),
                r.acked,
                steps.len(),
                r.lost.writes,
                r.lost.bytes,
                r.lost.kept,
                r.lost
                    .files
                    .iter()
                    .collect::<std::collections::BTreeSet<_>>(),
                started.elapsed().as_secs_f64()
            ),
            Err(e) => {
                let schedule: Vec<String> = steps.iter().map(ToString::to_string).collect();
                panic!(
                    "seed {seed} failed: {e}\nschedule:\n{}\nreplay: WRAFT_FAULT_SEED={seed} \
                     WRAFT_FAULT_SEEDS=1 WRAFT_FAULT_SECS={secs} cargo test -p wraft-host \
                     --test all faults",
                    schedule.join("\n")
                );
            }
        }
    }
}

/// The suite can fail: in a build whose linearizable reads skip the read barrier
/// (`--features fault-stale-reads`), a schedule must end in a linearizability violation.
#[test]
#[cfg(feature = "fault-stale-reads")]
fn the_suite_catches_a_build_that_serves_stale_reads() {
    let first = env_u64("WRAFT_FAULT_SEED", 1);
    let secs = env_u64("WRAFT_FAULT_SECS", 15);
    let rt = runtime();
    let mut outcomes = Vec::new();
    for seed in first..first + 3 {
        let nodes = nodes_of(seed);
        let steps = schedule::draw(seed, &nodes, Duration::from_secs(secs));
        match rt
            .block_on(run(seed, &nodes, &steps, secs, None))
            .map(|r| (r.acked, r.lost.writes))
        {
            Err(e) if e.starts_with("not linearizable") => {
                eprintln!("seed {seed} caught the broken build: {e}");
                return;
            }
            other => outcomes.push((seed, other)),
        }
    }
    panic!("three schedules did not catch stale reads: {outcomes:?}");
}

/// The suite can fail: in a build whose raft log acknowledges appends before they are
/// durable (`--features fault-lazy-fsync`: no fsync per commit, a sync every 200 ms), a
/// power loss of the whole cluster under load must fail the run. Either the checker finds a
/// lost acknowledged write, or (more often, since the state machine then runs ahead of
/// both the log and the last snapshot) openraft refuses to start the nodes again. Not in CI:
/// a run whose nodes cannot restart waits out the suite's one-minute deadlines.
#[test]
#[cfg(feature = "fault-lazy-fsync")]
fn the_suite_catches_a_build_that_acknowledges_writes_before_fsync() {
    let secs = env_u64("WRAFT_FAULT_SECS", 15);
    let nodes = nodes_of(1);
    let steps: Vec<schedule::Step> = [5, 10]
        .into_iter()
        .map(|at| schedule::Step {
            at: Duration::from_secs(at),
            lasts: Duration::from_secs(1),
            fault: Fault::PowerLossAll(Survival::Nothing),
        })
        .collect();
    let rt = runtime();
    let mut outcomes = Vec::new();
    // The default snapshot policy, under which the checker's catch is likelier.
    let tuning = ["--checkpoint-interval", "2"];
    for seed in 1..=3 {
        match rt.block_on(run(seed, &nodes, &steps, secs, Some(&tuning))) {
            Err(e) => {
                eprintln!("seed {seed} caught the broken build: {e}");
                return;
            }
            other => outcomes.push((seed, other.map(|r| (r.acked, r.lost.writes)))),
        }
    }
    panic!("three runs did not catch acknowledged writes lost to a power loss: {outcomes:?}");
}

/// A node that installs a snapshot and loses power right after must come back with the
/// snapshot's state: openraft purges the log behind an installed snapshot, so the install is
/// synced before it returns (the state env's commits leave their last meta page unsynced).
/// openraft also restores the newest local snapshot at startup, which covers the same
/// window, so this guards the property, not one line of code.
#[test]
#[cfg(not(any(feature = "fault-stale-reads", feature = "fault-lazy-fsync")))]
fn a_power_loss_right_after_a_snapshot_install_loses_nothing() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("tmp");
        let certs = certs_for(dir.path(), &[1, 2, 3]).expect("certs");
        let base = free_udp_ports(3);
        let listen: Vec<std::net::SocketAddr> = (0..3)
            .map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], base + i)))
            .collect();
        let addrs: Vec<String> = listen.iter().map(ToString::to_string).collect();
        let members = format!("1={},2={},3={}", addrs[0], addrs[1], addrs[2]);
        let mut nodes = node_processes(dir.path(), &certs, &[1, 2, 3], &listen, &members);
        for n in &mut nodes {
            // No checkpoints and a snapshot after 1 s idle: once the writes stop, the
            // leader's snapshot covers its last entry, and the lagging node's install is its
            // last write until the power loss.
            n.tuning = [
                "--checkpoint-interval",
                "0",
                "--snapshot-interval",
                "1",
                "--snapshot-trailing-entries",
                "50",
            ]
            .map(String::from)
            .to_vec();
            n.start().expect("start");
        }
        let admin = Client::new(addrs.clone(), &identity(&certs, "admin"))
            .expect("client")
            .with_patience(Duration::from_secs(30));
        create_register(&admin).await.expect("the register FSM");
        let per_node: Vec<Client> = addrs
            .iter()
            .map(|a| Client::new(vec![a.clone()], &identity(&certs, "reader")).expect("client"))
            .collect();
        converge(&per_node, Instant::now() + Duration::from_secs(30))
            .await
            .expect("converged before");

        // Node 3 misses 600 writes: the others snapshot every 200 and keep 50 behind.
        nodes[2].kill();
        let writer = Client::new(addrs[..2].to_vec(), &identity(&certs, "writer"))
            .expect("client")
            .with_patience(Duration::from_secs(30));
        for i in 0..600u64 {
            writer
                .request(put((i % 24) as u32, i + 1))
                .await
                .expect("write");
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let target = per_node[0]
            .status()
            .await
            .expect("status")
            .applied
            .expect("applied");
        // It comes back, installs a snapshot, and loses power as soon as it has caught up.
        nodes[2].start().expect("restart");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let applied = tokio::time::timeout(Duration::from_secs(2), per_node[2].status())
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|s| s.applied);
            if applied.is_some_and(|a| a >= target) {
                break;
            }
            assert!(Instant::now() < deadline, "node 3 never caught up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let lost = nodes[2].lose_power(Survival::Nothing).expect("power loss");
        let installed = std::fs::read_dir(dir.path().join("node-3/snapshots"))
            .expect("snapshots dir")
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "snap"));
        assert!(installed, "node 3 caught up from a snapshot");
        nodes[2].start().expect("restart after power loss");
        for i in 0..30u64 {
            writer
                .request(put((i % 24) as u32, 10_000 + i))
                .await
                .expect("write after");
        }
        converge(&per_node, Instant::now() + Duration::from_secs(60))
            .await
            .expect("converged after");
        for n in &mut nodes {
            assert!(n.stop(), "node {} stops cleanly: {}", n.spec.id, n.log());
        }
        let digests: Vec<_> = (1..=3)
            .map(|id| {
                let data = dir.path().join(format!("node-{id}/state"));
                wraft_host::state::StateStore::open_read_only(&data, false)
                    .expect("open")
                    .digest()
                    .expect("digest")
            })
            .collect();
        for (id, d) in digests.iter().enumerate().skip(1) {
            assert!(
                d.differences(&digests[0]).is_empty(),
                "node {} differs from node 1 after a power loss that undid {lost:?}: {:?}",
                id + 1,
                d.differences(&digests[0])
            );
        }
    });
}

/// A node started on a full disk stops with the same advice as one whose disk fills while it
/// runs (seed 6056 at 7795e15: a node restarted during a full-disk fault failed to write its
/// `LOCK` and exited with a bare "No space left on device").
#[test]
#[cfg(not(any(feature = "fault-stale-reads", feature = "fault-lazy-fsync")))]
fn a_node_started_on_a_full_disk_says_how_to_recover() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("tmp");
        let certs = certs_for(dir.path(), &[1]).expect("certs");
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_udp_ports(1)));
        let members = format!("1={listen}");
        let mut nodes = node_processes(dir.path(), &certs, &[1], &[listen], &members);
        let node = &mut nodes[0];
        node.start().expect("start");
        let client = Client::new(vec![listen.to_string()], &identity(&certs, "reader"))
            .expect("client")
            .with_patience(Duration::from_secs(30));
        client.status().await.expect("serving");
        assert!(node.stop(), "clean stop");

        node.fill_disk().expect("fill the disk");
        node.start().expect("start on a full disk");
        let deadline = Instant::now() + Duration::from_secs(30);
        while node.running() {
            assert!(
                Instant::now() < deadline,
                "a node with no room kept running"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = node.log();
        assert!(log.contains("make room, then restart the node"), "{log}");
        // Room again: the harness restarts it, the exit is expected, it serves.
        node.free_disk().expect("room again");
        assert!(node.exits.is_empty(), "{:?}", node.exits);
        client.status().await.expect("serving again");
        assert!(node.stop(), "clean stop");
    });
}
