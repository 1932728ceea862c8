//! Crashes in the middle of building and of installing a snapshot lose nothing.
//!
//! A build copies the state env into a `.tmp` file, syncs the live env, seals the copy and
//! renames it into place with its metadata; an install copies the received file, imports it
//! in one transaction, syncs and publishes it. A crash anywhere leaves the old snapshot (or
//! none) and a stray `.tmp` that the next start removes; the raft log still holds whatever
//! the state lacks. Three `wraft serve` processes under the unsynced-write layer, 40 MB of
//! state so a build takes a while, and snapshots every `EVERY` entries. Each round crashes
//! its victim the moment it logs that it started: the leader's kill -9 mid-build, a
//! follower's power loss mid-build, a power loss of every node mid-build, and a lagging
//! follower's power loss mid-install. Then every acknowledged write must be on every node,
//! the data directories must verify, and the state digests must agree.

use std::time::{Duration, Instant};
use wraft_host::state::Compile;

use wraft_api::{ApiError, ApiRequest, Payload};
use wraft_client::{Client, ClientError};
use wraft_core::{FsmLimits, FsmName};
use wraft_faults::process::NodeProcess;
use wraft_faults::unsynced::Survival;

use crate::common::deploy_and_create;
use crate::processes::{
    caught_up, identity, newest_built, runtime, stop_verify_and_compare, three_nodes,
};

/// Batches of `PER_BATCH` pairs of `VALUE` bytes: 40 MB of state.
const BATCHES: u32 = 40;
const PER_BATCH: u32 = 250;
const VALUE: usize = 4096;
/// Snapshot every this many applied entries, keeping a few behind.
const EVERY: u32 = 30;

fn fsm() -> FsmName {
    FsmName::new("s").expect("name")
}

fn value_of(key: u32) -> Vec<u8> {
    key.to_be_bytes()
        .iter()
        .copied()
        .cycle()
        .take(VALUE)
        .collect()
}

fn put(key: u32) -> (FsmName, Payload) {
    let cmd = probe::Command::Put {
        key: key.to_be_bytes().to_vec(),
        value: value_of(key),
    };
    (
        fsm(),
        Payload::Postcard(postcard::to_allocvec(&cmd).expect("encode")),
    )
}

/// Keys written so far and acknowledged.
struct Written {
    next: u32,
}

impl Written {
    /// Writes `entries` more entries: big batches while filling, then one pair each.
    async fn write(&mut self, client: &Client, entries: u32) {
        for _ in 0..entries {
            let per = if self.next < BATCHES * PER_BATCH {
                PER_BATCH
            } else {
                1
            };
            // Puts are idempotent: a write whose outcome a crash made unknown is sent again
            // until it is acknowledged.
            let mut tries = 0;
            loop {
                let commands = (self.next..self.next + per).map(put).collect();
                match client
                    .request(ApiRequest::Batch {
                        commands,
                        once: None,
                    })
                    .await
                {
                    Ok(_) => break,
                    Err(
                        ClientError::OutcomeUnknown(_)
                        | ClientError::Api(ApiError::OutcomeUnknown(_)),
                    ) if tries < 10 => {
                        tries += 1;
                    }
                    Err(e) => panic!("write of keys from {}: {e}", self.next),
                }
            }
            self.next += per;
        }
    }
}

fn count(node: &NodeProcess, line: &str) -> usize {
    node.log().matches(line).count()
}

/// Writes one entry at a time until `node` has logged `line` more than `before` times, for up
/// to `entries` entries.
async fn write_until_logged(
    written: &mut Written,
    client: &Client,
    node: &NodeProcess,
    line: &str,
    before: usize,
    entries: u32,
) -> bool {
    for _ in 0..entries {
        if count(node, line) > before {
            return true;
        }
        written.write(client, 1).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if count(node, line) > before {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

/// How long the last `what` ("built a snapshot", "installed a snapshot") took: the
/// shortest of each node's latest (so a fraction of it lands inside the next one on any
/// node), or zero if none logged one.
fn last_took(nodes: &[NodeProcess], what: &str) -> Duration {
    let ms = nodes
        .iter()
        .filter_map(|n| {
            n.log()
                .lines()
                .filter(|l| l.contains(what))
                .filter_map(|l| l.rsplit(" in ").next()?.strip_suffix(" ms")?.parse().ok())
                .next_back()
        })
        .min()
        .unwrap_or(0);
    Duration::from_millis(ms)
}

/// Waits `fraction` of how long the last `what` took, for a crash part-way through.
async fn wait_into(nodes: &[NodeProcess], what: &str, fraction: f64) -> Duration {
    if fraction == 0.0 {
        return Duration::ZERO;
    }
    let took = last_took(nodes, what);
    assert!(!took.is_zero(), "no earlier `{what}` to time a crash from");
    let delay = took.mul_f64(fraction);
    tokio::time::sleep(delay).await;
    delay
}

/// Whether the node's last run (its log since its last `serving on`) logged `started` more
/// often than `finished`: it died in the middle of one.
fn died_during(node: &NodeProcess, started: &str, finished: &str) -> bool {
    let log = node.log();
    let run = log.rsplit("serving on").next().unwrap_or(&log);
    run.matches(started).count() > run.matches(finished).count()
}

const BUILDING: &str = "building a snapshot";
const BUILT: &str = "built a snapshot";
const INSTALLING: &str = "installing a snapshot";
const INSTALLED: &str = "installed a snapshot";

#[test]
fn crashes_in_the_middle_of_snapshot_builds_and_installs_lose_nothing() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("tmp");
        let ids = [1, 2, 3];
        let (certs, real, mut nodes) = three_nodes(dir.path());
        for n in &mut nodes {
            n.log_filter = "warn,wraft_host::raft=info".into();
            n.tuning = [
                "--checkpoint-interval",
                "0",
                "--snapshot-entries",
                &EVERY.to_string(),
                "--snapshot-trailing-entries",
                "3",
                "--snapshot-interval",
                "3600",
            ]
            .map(String::from)
            .to_vec();
            n.start().expect("start");
        }
        let addrs: Vec<String> = real.iter().map(ToString::to_string).collect();
        let admin = Client::new(addrs.clone(), &identity(&certs, "admin"))
            .expect("client")
            .with_patience(Duration::from_secs(60));
        deploy_and_create(
            &admin,
            fsm(),
            wraft_fsm_artifacts::PROBE,
            FsmLimits::default(),
        )
        .await;
        let mut written = Written { next: 0 };
        written.write(&admin, BATCHES).await;
        let leader = || async {
            admin
                .status()
                .await
                .expect("status")
                .leader
                .expect("a leader")
        };

        let mut fractional_mid = 0;
        // 1.–3. During a build: the leader's kill -9 as it starts, a follower's power loss
        //    half-way through (by its previous build's duration), everyone's power loss
        //    three quarters of the way.
        // A crash part-way through is timed by the previous operation's duration, which
        // varies with the machine's load: one that lands after the end is tried again at a
        // smaller fraction.
        let builds: [(&str, &[f64]); 3] = [
            ("leader kill", &[0.0]),
            ("follower power loss", &[0.5, 0.25, 0.1]),
            ("power loss of every node", &[0.75, 0.4, 0.2]),
        ];
        for (round, fractions) in builds {
            for &fraction in fractions {
                let l = leader().await;
                let victim = if round == "follower power loss" {
                    ids.iter().copied().find(|&i| i != l).expect("a follower")
                } else {
                    l
                };
                let v = &nodes[victim as usize - 1];
                let building = count(v, BUILDING);
                let seen =
                    write_until_logged(&mut written, &admin, v, BUILDING, building, 2 * EVERY)
                        .await;
                assert!(
                    seen,
                    "{round}: node {victim} never started a snapshot:\n{}",
                    v.log()
                );
                let into = wait_into(&nodes, BUILT, fraction).await;
                match round {
                    "leader kill" => nodes[victim as usize - 1].kill(),
                    "follower power loss" => {
                        nodes[victim as usize - 1]
                            .lose_power(Survival::Nothing)
                            .expect("power loss");
                    }
                    _ => {
                        nodes[victim as usize - 1].kill();
                        for n in nodes.iter_mut() {
                            n.kill();
                        }
                        for n in nodes.iter_mut() {
                            n.lose_power(Survival::Nothing).expect("power loss");
                        }
                    }
                }
                // Its log is complete now.
                let v = &nodes[victim as usize - 1];
                let mid = died_during(v, BUILDING, BUILT);
                fractional_mid += usize::from(mid && fraction > 0.0);
                assert!(
                    mid || fraction > 0.0,
                    "{round}: node {victim} finished its snapshot before the crash"
                );
                eprintln!(
                    "{round}: node {victim} crashed {into:?} into a build{}",
                    if mid { "" } else { ", which had finished" }
                );
                for n in nodes.iter_mut() {
                    n.start().expect("restart");
                }
                written.write(&admin, 5).await;
                caught_up(&addrs, &certs, &mut nodes).await;
                if mid {
                    break;
                }
            }
        }

        let mut fractional_install = false;
        // 4.–5. During an install: a follower misses enough for the others to snapshot past
        //    its log, comes back, and loses power as it starts installing; then again 60 %
        //    of the way (by its previous install's duration), and at 30 % and 15 % if that
        //    landed after the end.
        for fraction in [0.0, 0.6, 0.3, 0.15] {
            if fraction < 0.6 && fractional_install {
                break;
            }
            let l = leader().await;
            let victim = ids.iter().copied().find(|&i| i != l).expect("a follower");
            let victim_client = Client::new(
                vec![addrs[victim as usize - 1].clone()],
                &identity(&certs, "admin"),
            )
            .expect("client")
            .with_patience(Duration::from_secs(30));
            let others: Vec<String> = ids
                .iter()
                .filter(|&&i| i != victim)
                .map(|&i| addrs[i as usize - 1].clone())
                .collect();
            let rest = Client::new(others, &identity(&certs, "admin"))
                .expect("client")
                .with_patience(Duration::from_secs(60));
            // The leader purges its log behind a snapshot when no replication still reads
            // those entries, which is not at a moment the test can see: if the victim comes
            // back and catches up from the log instead, it goes down again and misses more.
            let mut installing_now = false;
            for _ in 0..4 {
                let victim_last = victim_client
                    .status()
                    .await
                    .expect("status")
                    .last_log
                    .unwrap_or(0);
                nodes[victim as usize - 1].kill();
                // Until the leader has a snapshot well past the victim's log.
                let past = victim_last + u64::from(EVERY);
                for _ in 0..20 * EVERY {
                    if newest_built(&nodes[l as usize - 1]) > past {
                        break;
                    }
                    written.write(&rest, 1).await;
                }
                assert!(
                    newest_built(&nodes[l as usize - 1]) > past,
                    "the leader never snapshotted past index {past}"
                );
                tokio::time::sleep(Duration::from_millis(1000)).await;
                let v = &mut nodes[victim as usize - 1];
                let installing = count(v, INSTALLING);
                v.start().expect("restart");
                let v = &nodes[victim as usize - 1];
                installing_now =
                    write_until_logged(&mut written, &rest, v, INSTALLING, installing, 0).await;
                if installing_now {
                    break;
                }
                eprintln!("node {victim} caught up from the log; it misses more writes");
            }
            assert!(
                installing_now,
                "node {victim} never installed a snapshot:\n{}",
                nodes[victim as usize - 1].log()
            );
            let into = wait_into(&nodes, INSTALLED, fraction).await;
            nodes[victim as usize - 1]
                .lose_power(Survival::Nothing)
                .expect("power loss");
            let v = &nodes[victim as usize - 1];
            let mid = died_during(v, INSTALLING, INSTALLED);
            fractional_mid += usize::from(mid && fraction > 0.0);
            fractional_install |= mid && fraction > 0.0;
            assert!(
                mid || fraction > 0.0,
                "node {victim} finished installing before the crash"
            );
            eprintln!(
                "follower power loss: node {victim} crashed {into:?} into an install{}",
                if mid { "" } else { ", which had finished" }
            );
            nodes[victim as usize - 1].start().expect("restart");
            written.write(&admin, 5).await;
            caught_up(&addrs, &certs, &mut nodes).await;
        }

        assert!(
            fractional_mid > 0,
            "none of the crashes part-way through landed before the end"
        );
        // Every node applies everything written, then stops cleanly.
        caught_up(&addrs, &certs, &mut nodes).await;
        let keys = written.next;
        stop_verify_and_compare(dir.path(), &mut nodes, |id, store| {
            // Every acknowledged pair (one key in 7, to keep it quick) with its value.
            for key in (0..keys).step_by(7) {
                let q = postcard::to_allocvec(&probe::Query::Get {
                    key: key.to_be_bytes().to_vec(),
                })
                .expect("encode");
                let out = store
                    .query(&fsm(), &q, Compile::IfNeeded)
                    .expect("query")
                    .expect("query answered");
                assert_eq!(
                    postcard::from_bytes::<probe::Output>(&out).expect("output"),
                    probe::Output::Bytes(value_of(key)),
                    "node {id}: key {key}"
                );
            }
        });
    });
}
