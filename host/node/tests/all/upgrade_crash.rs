//! Crashes in the middle of an FSM upgrade. The migration, the FSM's new module and the
//! applied index are one LMDB transaction, so a node that dies while migrating comes back
//! with the FSM wholly on its old version and applies the upgrade again from its log: every
//! node ends on the new version with the state migrated exactly once.
//!
//! Three `wraft serve` processes (under the unsynced-write layer, so they can lose power).
//! Each round upgrades a fresh FSM holding `KEYS` pairs from `probe` (version 3) to
//! `probe-next` (version 4, whose `migrate` moves every key under `v4/` and records the
//! version it came from under `migrated-from`; a second migration would move that record to
//! `v4/migrated-from`). The crash comes as soon as the victim logs that it started migrating,
//! and the test checks from the victim's log that the migration had not finished.

use std::time::{Duration, Instant};
use wraft_host::state::Compile;

use wraft_api::{ApiRequest, ApiResponse, Payload};
use wraft_client::Client;
use wraft_core::{FsmLimits, ModuleId};
use wraft_faults::process::NodeProcess;
use wraft_faults::unsynced::Survival;

use crate::common::name;
use crate::processes::{caught_up, identity, runtime, stop_verify_and_compare, three_nodes};

/// Pairs in each upgraded FSM: enough that a debug-built node migrates for a while.
const KEYS: u32 = 20_000;
/// Pairs per batch entry while filling an FSM.
const PER_BATCH: u32 = 1_000;

fn postcard_payload<T: serde::Serialize>(v: &T) -> Payload {
    Payload::Postcard(postcard::to_allocvec(v).expect("encode"))
}

/// Default limits, with the fuel for a migration that rewrites all 20,000 pairs in one entry
/// (host calls and the bytes they write cost fuel) and for the check to read them in one scan.
fn verifiable() -> FsmLimits {
    FsmLimits {
        fuel: 2_000_000_000,
        query_fuel: 2_000_000_000,
        ..FsmLimits::default()
    }
}

fn value_of(key: u32) -> Vec<u8> {
    (u64::from(key) * 7919).to_be_bytes().to_vec()
}

async fn fill(client: &Client, fsm: &str) {
    for start in (0..KEYS).step_by(PER_BATCH as usize) {
        let commands = (start..(start + PER_BATCH).min(KEYS))
            .map(|k| {
                let put = probe::Command::Put {
                    key: k.to_be_bytes().to_vec(),
                    value: value_of(k),
                };
                (name(fsm), postcard_payload(&put))
            })
            .collect();
        client
            .request(ApiRequest::Batch {
                commands,
                once: None,
            })
            .await
            .expect("fill batch");
    }
}

/// Whether `line` is in the node's log, polling every 2 ms for up to `within`.
fn wait_for_line(node: &NodeProcess, line: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if node.log().contains(line) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn started(fsm: &str) -> String {
    format!("upgrading fsm {fsm} to module")
}

fn finished(fsm: &str) -> String {
    format!("upgraded fsm {fsm} to module")
}

/// How the victims of a round go down.
#[derive(Debug, Clone, Copy)]
enum Crash {
    /// One follower loses power (its unsynced writes are undone).
    FollowerPowerLoss,
    /// The leader is killed with SIGKILL.
    LeaderKill,
    /// Every node loses power at once.
    EveryonePowerLoss,
}

/// Checks one stopped node's copy of `fsm`: on `next`, every pair under `v4/` with its
/// value, and `migrated-from` = 3 recorded once.
fn check_migrated_once(
    store: &wraft_host::state::StateStore,
    fsm: &str,
    next: ModuleId,
) -> Result<(), String> {
    let rec = store
        .fsm(&name(fsm))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("fsm {fsm} is missing"))?;
    if rec.module_id != next || rec.fsm_version != 4 {
        return Err(format!(
            "fsm {fsm} runs module {} version {}, not the upgrade",
            rec.module_id, rec.fsm_version
        ));
    }
    let scan = postcard::to_allocvec(&probe::Query::ScanPrefix { prefix: vec![] })
        .map_err(|e| e.to_string())?;
    let out = store
        .query(&name(fsm), &scan, Compile::IfNeeded)
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let probe::Output::Pairs(pairs) =
        postcard::from_bytes::<probe::Output>(&out).map_err(|e| e.to_string())?
    else {
        return Err("a scan answered something else".into());
    };
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = (0..KEYS)
        .map(|k| ([b"v4/".as_slice(), &k.to_be_bytes()].concat(), value_of(k)))
        .collect();
    let from = postcard::to_allocvec(&3u64).map_err(|e| e.to_string())?;
    expected.push((b"migrated-from".to_vec(), from));
    expected.sort();
    if pairs != expected {
        let extra: Vec<_> = pairs
            .iter()
            .filter(|p| !expected.contains(p))
            .take(5)
            .collect();
        return Err(format!(
            "fsm {fsm} holds {} pairs, expected {} (first unexpected: {extra:?})",
            pairs.len(),
            expected.len()
        ));
    }
    Ok(())
}

#[test]
fn a_crash_in_the_middle_of_a_migration_leaves_the_upgrade_applied_exactly_once() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("tmp");
        let ids = [1, 2, 3];
        let (certs, real, mut nodes) = three_nodes(dir.path());
        for n in &mut nodes {
            n.log_filter = "warn,wraft_host::state=info".into();
            n.start().expect("start");
        }
        let addrs: Vec<String> = real.iter().map(ToString::to_string).collect();
        let admin = Client::new(addrs.clone(), &identity(&certs, "admin"))
            .expect("client")
            .with_patience(Duration::from_secs(60));
        let old = admin
            .deploy(wraft_fsm_artifacts::PROBE.to_vec())
            .await
            .expect("deploy probe");
        let next = admin
            .deploy(wraft_fsm_artifacts::PROBE_NEXT.to_vec())
            .await
            .expect("deploy probe-next");

        let rounds = [
            ("a", Crash::FollowerPowerLoss),
            ("b", Crash::LeaderKill),
            ("c", Crash::EveryonePowerLoss),
        ];
        for (fsm, crash) in rounds {
            admin
                .create_fsm(name(fsm), old, verifiable())
                .await
                .expect("create");
            fill(&admin, fsm).await;
            let leader = admin
                .status()
                .await
                .expect("status")
                .leader
                .expect("a leader");
            let victim = match crash {
                Crash::FollowerPowerLoss => ids.iter().copied().find(|&i| i != leader),
                Crash::LeaderKill | Crash::EveryonePowerLoss => Some(leader),
            }
            .expect("a victim");
            // Straight to the leader: a follower's crash must not cut the caller off.
            let upgrading = Client::new(
                vec![addrs[leader as usize - 1].clone()],
                &identity(&certs, "admin"),
            )
            .expect("client")
            .with_patience(Duration::from_secs(60));
            let upgrade = tokio::spawn(async move { upgrading.upgrade_fsm(name(fsm), next).await });

            let v = &mut nodes[victim as usize - 1];
            let seen = tokio::task::block_in_place(|| {
                wait_for_line(v, &started(fsm), Duration::from_secs(60))
            });
            assert!(
                seen,
                "node {victim} never started migrating {fsm}:\n{}",
                v.log()
            );
            let crashed_at = Instant::now();
            match crash {
                Crash::FollowerPowerLoss => {
                    v.lose_power(Survival::Nothing).expect("power loss");
                }
                Crash::LeaderKill => v.kill(),
                Crash::EveryonePowerLoss => {
                    v.kill();
                    for n in nodes.iter_mut() {
                        n.kill();
                    }
                    for n in nodes.iter_mut() {
                        n.lose_power(Survival::Nothing).expect("power loss");
                    }
                }
            }
            let log = nodes[victim as usize - 1].log();
            assert!(
                !log.contains(&finished(fsm)),
                "round {fsm} ({crash:?}): node {victim} had finished migrating before the crash; \
                 the test needs more keys to land in the middle"
            );
            eprintln!("round {fsm}: {crash:?} of node {victim} mid-migration");
            if let Crash::FollowerPowerLoss = crash {
                // For the record: how long the survivors' migration takes (the margin).
                let l = &nodes[leader as usize - 1];
                if tokio::task::block_in_place(|| {
                    wait_for_line(l, &finished(fsm), Duration::from_secs(60))
                }) {
                    eprintln!(
                        "round {fsm}: the leader finished migrating {:?} after the crash",
                        crashed_at.elapsed()
                    );
                }
            }
            for n in nodes.iter_mut() {
                n.start().expect("restart");
            }
            let answer = tokio::time::timeout(Duration::from_secs(120), upgrade)
                .await
                .expect("the upgrade request ends")
                .expect("task");
            eprintln!("round {fsm}: the upgrade request answered {answer:?}");
            if let Crash::FollowerPowerLoss = crash {
                answer.expect("a follower's crash does not fail the upgrade");
            }
            // Whatever the caller heard, the entry was committed (a node applies only
            // committed entries), so every node applies it; a read through the leader now
            // sees the migrated state.
            let probe_read = ApiRequest::Query {
                fsm: name(fsm),
                query: postcard_payload(&probe::Query::Get {
                    key: b"migrated-from".to_vec(),
                }),
                consistency: wraft_api::Consistency::Linearizable,
            };
            let read = admin
                .request(probe_read)
                .await
                .expect("read after the crash");
            let ApiResponse::Output(Payload::Postcard(bytes)) = read else {
                panic!("unexpected answer {read:?}")
            };
            assert_eq!(
                postcard::from_bytes::<probe::Output>(&bytes).expect("output"),
                probe::Output::Bytes(postcard::to_allocvec(&3u64).expect("encode")),
                "round {fsm}: migrated-from"
            );
        }

        // Every node applies what was committed before it stops.
        caught_up(&addrs, &certs, &mut nodes).await;
        stop_verify_and_compare(dir.path(), &mut nodes, |id, store| {
            for (fsm, _) in rounds {
                if let Err(e) = check_migrated_once(store, fsm, next) {
                    panic!("node {id}: {e}");
                }
            }
        });
    });
}
