//! The phases of one fault schedule: start the cluster behind the proxies, run the writers,
//! inject each fault, heal, read every key, stop, and compare the data directories.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wraft_host::state::Compile;

use wraft_api::{ApiError, ApiRequest, ApiResponse, Consistency, Payload};
use wraft_client::{Client, ClientError};
use wraft_faults::Rng;
use wraft_faults::counter::{self, Increment};
use wraft_faults::history::{Event, History, Op, Outcome};
use wraft_faults::process::NodeProcess;
use wraft_faults::proxy::{Faults, Network, NodeId};
use wraft_faults::schedule::{self, Fault, Target};
use wraft_faults::unsynced::{Lost, Survival};

use crate::cli::{free_udp_ports, text};
use crate::processes::{
    certs_for, create_register, identity, node_processes, put_command, register, wraft,
};

use super::{CLIENTS, KEYS};

fn get(key: u32) -> ApiRequest {
    let q = probe::Query::Get {
        key: key.to_be_bytes().to_vec(),
    };
    ApiRequest::Query {
        fsm: register(),
        query: Payload::Postcard(postcard::to_allocvec(&q).expect("encode")),
        consistency: Consistency::Linearizable,
    }
}

fn read_value(response: &ApiResponse) -> Result<Option<u64>, String> {
    let ApiResponse::Output(Payload::Postcard(bytes)) = response else {
        return Err(format!("unexpected answer {response:?}"));
    };
    match postcard::from_bytes::<probe::Output>(bytes).map_err(|e| e.to_string())? {
        probe::Output::None => Ok(None),
        probe::Output::Bytes(b) => Ok(Some(u64::from_be_bytes(
            b.try_into()
                .map_err(|_| "value is not 8 bytes".to_string())?,
        ))),
        other => Err(format!("unexpected output {other:?}")),
    }
}

/// A write's outcome: certain only when the node answered, or refused before proposing.
fn write_outcome<T>(
    result: &Result<Result<T, ClientError>, tokio::time::error::Elapsed>,
) -> Outcome {
    match result {
        Ok(Ok(_)) => Outcome::Ok,
        Ok(Err(ClientError::Api(
            ApiError::Failed(_)
            | ApiError::QueueFull { .. }
            | ApiError::NotAllowed { .. }
            | ApiError::BadRequest(_),
        ))) => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

/// Client `id`'s own counter (apart from the registers, whose keys are 4 bytes).
fn counter_key(id: u32) -> Vec<u8> {
    format!("counter-{id}").into_bytes()
}

/// A client: writes registers and increments its own counter, each exactly once (the client
/// writes on a session and sends a write whose outcome is unknown again, with the same
/// sequence, until it is answered or its patience runs out), and reads registers. Returns
/// how its increments ended, in order.
async fn client_loop(
    id: u32,
    client: Client,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> (u32, Vec<Increment>) {
    let mut rng = Rng::new(seed ^ (u64::from(id) << 32));
    let mut n = 0u64;
    let mut increments = Vec::new();
    let r = register();
    while !stop.load(Ordering::Relaxed) {
        let key = rng.below(u64::from(KEYS)) as u32;
        let call = history.now();
        if rng.chance(0.25) {
            let incr = probe::Command::Incr {
                key: counter_key(id),
            };
            let incr = Payload::Postcard(postcard::to_allocvec(&incr).expect("encode"));
            let result = tokio::time::timeout(Duration::from_secs(8), client.apply(&r, incr)).await;
            increments.push(match (write_outcome(&result), result) {
                (Outcome::Ok, Ok(Ok(Payload::Postcard(out)))) => {
                    match postcard::from_bytes::<probe::Output>(&out) {
                        Ok(probe::Output::Number(v)) => Increment::Acked(v),
                        other => panic!("an increment answered {other:?}"),
                    }
                }
                (Outcome::Ok, other) => panic!("an increment answered {other:?}"),
                (Outcome::Failed, _) => Increment::Failed,
                (Outcome::Unknown, _) => Increment::Unknown,
            });
        } else if rng.chance(0.5) {
            n += 1;
            let value = (u64::from(id) + 1) << 40 | n;
            let write = client.apply(&r, put_command(key, value));
            let result = tokio::time::timeout(Duration::from_secs(8), write).await;
            let outcome = write_outcome(&result);
            history.record(Event {
                client: id,
                key,
                op: Op::Write(value),
                call,
                ret: history.now(),
                outcome,
            });
        } else {
            let result =
                tokio::time::timeout(Duration::from_secs(8), client.request(get(key))).await;
            if let Ok(Ok(response)) = result {
                let seen = read_value(&response).expect("a readable register");
                history.record(Event {
                    client: id,
                    key,
                    op: Op::Read(seen),
                    call,
                    ret: history.now(),
                    outcome: Outcome::Ok,
                });
            }
        }
    }
    (id, increments)
}

/// Reads every client's counter once the cluster healed, and checks that each acknowledged
/// increment applied exactly once and each other at most once ([`counter::check`]).
pub(super) async fn check_counters(
    rig: &Rig,
    increments: &[(u32, Vec<Increment>)],
) -> Result<u64, String> {
    let reader = Client::new(rig.addrs.clone(), &identity(&rig.certs, "reader"))
        .map_err(|e| e.to_string())?
        .with_patience(Duration::from_secs(30));
    let mut acked = 0;
    for (id, incs) in increments {
        let q = probe::Query::Get {
            key: counter_key(*id),
        };
        let read = ApiRequest::Query {
            fsm: register(),
            query: Payload::Postcard(postcard::to_allocvec(&q).expect("encode")),
            consistency: Consistency::Linearizable,
        };
        let response = reader
            .request(read)
            .await
            .map_err(|e| format!("reading counter {id}: {e}"))?;
        let ApiResponse::Output(Payload::Postcard(bytes)) = response else {
            return Err(format!("counter {id}: unexpected answer {response:?}"));
        };
        let value = match postcard::from_bytes::<probe::Output>(&bytes) {
            Ok(probe::Output::None) => 0,
            Ok(probe::Output::Bytes(b)) => {
                postcard::from_bytes::<u64>(&b).map_err(|e| format!("counter {id}: {e}"))?
            }
            other => return Err(format!("counter {id}: unexpected output {other:?}")),
        };
        // The read was invoked after every increment ended: one that missed acknowledged
        // increments (lost or stale) is what the history checker calls a linearizability
        // violation too.
        counter::check(incs, value).map_err(|e| match e {
            counter::Violation::Missed(why) => {
                format!("not linearizable: client {id}'s counter, read last: {why}")
            }
            counter::Violation::Wrong(why) => format!("client {id}'s counter: {why}"),
        })?;
        acked += incs
            .iter()
            .filter(|i| matches!(i, Increment::Acked(_)))
            .count() as u64;
    }
    Ok(acked)
}

/// The leader, as the first node that answers says (none if nobody knows).
async fn leader(admin: &Client) -> Option<NodeId> {
    tokio::time::timeout(Duration::from_secs(2), admin.status())
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|s| s.leader)
}

/// One schedule's cluster: its nodes behind the fault proxies, and an admin client.
pub(super) struct Rig {
    pub(super) certs: std::path::PathBuf,
    pub(super) network: Network,
    pub(super) nodes: Vec<NodeProcess>,
    pub(super) addrs: Vec<String>,
    pub(super) admin: Client,
}

/// Certificates, fault proxies, the nodes started, and the register FSM created.
pub(super) async fn start(
    dir: &std::path::Path,
    seed: u64,
    nodes_ids: &[NodeId],
    tuning: Option<&[&str]>,
) -> Result<Rig, String> {
    let count = nodes_ids.len();
    let certs = certs_for(dir, nodes_ids)?;
    let base = free_udp_ports(count as u16);
    let real: Vec<std::net::SocketAddr> = (0..count as u16)
        .map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], base + i)))
        .collect();
    let network = Network::start(&real, seed)
        .await
        .map_err(|e| e.to_string())?;
    let members = network.members();
    let mut nodes = node_processes(dir, &certs, nodes_ids, &real, &members);
    if let Some(tuning) = tuning {
        for n in &mut nodes {
            n.tuning = tuning.iter().map(ToString::to_string).collect();
        }
    }
    for n in &mut nodes {
        n.start().map_err(|e| e.to_string())?;
    }
    let addrs: Vec<String> = real.iter().map(ToString::to_string).collect();
    let admin = Client::new(addrs.clone(), &identity(&certs, "admin"))
        .map_err(|e| e.to_string())?
        .with_patience(Duration::from_secs(30));
    create_register(&admin).await?;
    Ok(Rig {
        certs,
        network,
        nodes,
        addrs,
        admin,
    })
}

/// The writers: each starts at a different node, so writes are also forwarded.
pub(super) fn spawn_clients(
    rig: &Rig,
    history: &Arc<History>,
    stop: &Arc<AtomicBool>,
    seed: u64,
) -> Result<tokio::task::JoinSet<(u32, Vec<Increment>)>, String> {
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..CLIENTS {
        let mut order = rig.addrs.clone();
        let len = order.len();
        order.rotate_left(id as usize % len);
        let client = Client::new(order, &identity(&rig.certs, "writer"))
            .map_err(|e| e.to_string())?
            .with_patience(Duration::from_secs(5));
        clients.spawn(client_loop(id, client, history.clone(), stop.clone(), seed));
    }
    Ok(clients)
}

/// One step of the schedule: the fault, held for its duration, then lifted.
pub(super) async fn inject(
    rig: &mut Rig,
    step: &schedule::Step,
    lost: &mut Lost,
) -> Result<(), String> {
    let mut add = |l: Lost| {
        lost.files.extend(l.files);
        lost.writes += l.writes;
        lost.bytes += l.bytes;
        lost.kept += l.kept;
    };
    let target = |t: &Target, leader: Option<NodeId>| match t {
        Target::Node(n) => *n as usize - 1,
        Target::Leader => leader.unwrap_or(1) as usize - 1,
    };
    let nodes = &mut rig.nodes;
    match &step.fault {
        Fault::Kill(t) => {
            let n = target(t, leader(&rig.admin).await);
            nodes[n].kill();
            tokio::time::sleep(step.lasts).await;
            nodes[n].start().map_err(|e| e.to_string())?;
        }
        Fault::PowerLoss(t, survival) => {
            let n = target(t, leader(&rig.admin).await);
            add(nodes[n]
                .lose_power(*survival)
                .map_err(|e| format!("{e:#}"))?);
            tokio::time::sleep(step.lasts).await;
            nodes[n].start().map_err(|e| e.to_string())?;
        }
        Fault::PowerLossAll(survival) => {
            for n in nodes.iter_mut() {
                n.kill();
            }
            for n in nodes.iter_mut() {
                let own = match *survival {
                    Survival::Torn(seed) => Survival::Torn(seed ^ n.spec.id),
                    nothing => nothing,
                };
                add(n.lose_power(own).map_err(|e| format!("{e:#}"))?);
            }
            tokio::time::sleep(step.lasts).await;
            for n in nodes.iter_mut() {
                n.start().map_err(|e| e.to_string())?;
            }
        }
        Fault::DiskFull(t) => {
            let n = target(t, leader(&rig.admin).await);
            nodes[n].fill_disk().map_err(|e| format!("{e:#}"))?;
            tokio::time::sleep(step.lasts).await;
            nodes[n].free_disk().map_err(|e| format!("{e:#}"))?;
        }
        Fault::Pause(t) => {
            let n = target(t, leader(&rig.admin).await);
            nodes[n].pause();
            tokio::time::sleep(step.lasts).await;
            nodes[n].resume();
        }
        Fault::Network(f) => {
            rig.network.set(f.clone());
            tokio::time::sleep(step.lasts).await;
            rig.network.set(Faults::healthy());
        }
    }
    Ok(())
}

/// A healthy network and every node running.
pub(super) fn heal(rig: &mut Rig) -> Result<(), String> {
    rig.network.set(Faults::healthy());
    for n in &mut rig.nodes {
        n.resume();
        if !n.running() {
            n.start().map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// A linearizable read of every key, recorded in the history (so a lost acknowledged write
/// cannot hide).
pub(super) async fn final_reads(rig: &Rig, history: &History) -> Result<(), String> {
    let final_reader = Client::new(rig.addrs.clone(), &identity(&rig.certs, "reader"))
        .map_err(|e| e.to_string())?
        .with_patience(Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(60);
    for key in 0..KEYS {
        // Right after the last fault a read may be refused for a moment (an election, a
        // forward on a broken connection): only a cluster that cannot answer for a minute
        // fails the run.
        let (call, response) = loop {
            let call = history.now();
            match final_reader.request(get(key)).await {
                Ok(r) => break (call, r),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("final read of key {key}: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        history.record(Event {
            client: CLIENTS,
            key,
            op: Op::Read(read_value(&response)?),
            call,
            ret: history.now(),
            outcome: Outcome::Ok,
        });
    }
    Ok(())
}

/// Operations per second of the run, ok and not (`WRAFT_FAULT_TRACE`).
pub(super) fn trace_per_second(events: &[Event]) {
    let mut per_second = std::collections::BTreeMap::<u64, (u32, u32)>::new();
    for e in events {
        let slot = per_second.entry(e.ret / 1_000_000_000).or_default();
        match e.outcome {
            Outcome::Ok => slot.0 += 1,
            _ => slot.1 += 1,
        }
    }
    eprintln!("  (second, ok, failed or unknown): {per_second:?}");
}

/// Every node shuts down cleanly, never exited by itself, never panicked and never
/// diverged at a checkpoint.
pub(super) fn stop_cleanly(nodes: &mut [NodeProcess]) -> Result<(), String> {
    for n in nodes {
        if !n.stop() {
            return Err(format!("node {} did not shut down cleanly", n.spec.id));
        }
        if !n.exits.is_empty() {
            return Err(format!(
                "node {} exited on its own: {:?}",
                n.spec.id, n.exits
            ));
        }
        let log = n.log();
        if log.contains("panicked") {
            return Err(format!("node {} panicked:\n{log}", n.spec.id));
        }
        // Nodes propose consistency checkpoints every 2 s: no replica may have diverged.
        if log.contains("serves no reads until it is repaired") {
            return Err(format!(
                "node {} diverged from the leader:\n{log}",
                n.spec.id
            ));
        }
    }
    Ok(())
}

/// `wraft init verify` passes on every stopped data directory, and every node's state digest
/// equals node 1's.
pub(super) fn compare_data_directories(
    dir: &std::path::Path,
    nodes_ids: &[NodeId],
    applied: u64,
    events: &[Event],
) -> Result<(), String> {
    let mut digests = Vec::new();
    for &id in nodes_ids {
        let data = dir.join(format!("node-{id}"));
        let out = wraft(
            dir,
            &["init", "verify", "--state-dir", data.to_str().unwrap_or("")],
        );
        if !out.status.success() {
            return Err(format!(
                "node {id}'s data directory needs repair: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            ));
        }
        let store = wraft_host::state::StateStore::open_read_only(&data.join("state"), false)
            .map_err(|e| e.to_string())?;
        digests.push(store.digest().map_err(|e| e.to_string())?);
    }
    // The applied indexes may differ by the checkpoint entries the leader kept proposing
    // while the nodes were being stopped one by one; the state itself may not.
    for (id, d) in nodes_ids.iter().zip(&digests).skip(1) {
        let parts = d.differences(&digests[0]);
        if !parts.is_empty() {
            return Err(format!(
                "node {id}'s state (at index {}) differs from node 1's (at index {}, converged at \
                 {applied}) in {parts:?}{}",
                d.index,
                digests[0].index,
                explain_difference(dir, *id, events)
            ));
        }
    }
    Ok(())
}

/// Which registers differ between node 1 and node `other` (read from their stopped data
/// directories), and what the history says about each value.
fn explain_difference(dir: &std::path::Path, other: NodeId, events: &[Event]) -> String {
    let read_all = |id: NodeId| -> Result<Vec<Option<u64>>, String> {
        let path = dir.join(format!("node-{id}/state"));
        let store = wraft_host::state::StateStore::open_read_only(&path, false)
            .map_err(|e| e.to_string())?;
        (0..KEYS)
            .map(|key| {
                let ApiRequest::Query { query, .. } = get(key) else {
                    return Err("not a query".to_string());
                };
                let Payload::Postcard(q) = query else {
                    return Err("not postcard".to_string());
                };
                let out = store
                    .query(&register(), &q, Compile::IfNeeded)
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                read_value(&ApiResponse::Output(Payload::Postcard(out)))
            })
            .collect()
    };
    let (a, b) = match (read_all(1), read_all(other)) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => return format!("\n(could not read the registers: {a:?} / {b:?})"),
    };
    let mut out = String::new();
    let writes_of = |v: Option<u64>| -> String {
        let Some(v) = v else {
            return "never written".into();
        };
        let found: Vec<String> = events
            .iter()
            .filter(|e| e.op == Op::Write(v))
            .map(|e| {
                format!(
                    "client {} {:?} [{:.3} s .. {:.3} s]",
                    e.client,
                    e.outcome,
                    e.call as f64 / 1e9,
                    e.ret as f64 / 1e9
                )
            })
            .collect();
        format!("{v} written by {found:?}")
    };
    for key in 0..KEYS as usize {
        if a[key] != b[key] {
            out.push_str(&format!(
                "\n  key {key}: node 1 has {}; node {other} has {}",
                writes_of(a[key]),
                writes_of(b[key])
            ));
        }
    }
    out
}
