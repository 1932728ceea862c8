//! The leader's proposer on a real cluster: what waits in it stays bounded by `--queue`
//! (callers that give up keep their slots until their writes are answered), a leader cut
//! off from its quorum tells the writes waiting behind its stuck groups that there is no
//! leader, and groups of large writes stay within one replication batch.

use std::time::Duration;

use openraft::storage::{RaftLogReader, RaftLogStorage};
use wraft_api::{Payload, Role};
use wraft_client::ClientError;
use wraft_core::{Command, EntryResponse, FsmLimits};
use wraft_host::api::propose::GROUPS_IN_FLIGHT;
use wraft_host::raft::{LogStore, MAX_BATCH_BYTES};

use crate::cluster::Cluster;
use crate::common::{deploy_and_create, name};
use crate::http::WRITER;

/// Proposal slots of the leader in the cut-off test: the 16 groups in flight, 4 writes
/// waiting behind them, and 4 HTTP callers that give up.
const QUEUE: usize = 24;

fn incr(key: &str) -> Payload {
    Payload::Postcard(
        postcard::to_allocvec(&probe::Command::Incr {
            key: key.as_bytes().to_vec(),
        })
        .expect("encode"),
    )
}

/// A leader whose followers are gone keeps `state == Leader` in openraft, and keeps the
/// writes it appended while its lease lasted (16 groups, one write each here) unanswered.
///
/// - HTTP callers that give up while their writes wait behind those groups keep their
///   `--queue` slots: a caller arriving after them finds the queue full (429), instead of
///   the queue growing past `--queue` with writes nobody waits for.
/// - Once the lease has passed, the writes still waiting in the proposer are refused with
///   "no leader" (nothing was appended, so the client may send them elsewhere) instead of
///   waiting until their callers give up with an unknown outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_quorum_bounds_its_queue_and_refuses_what_waits() {
    let tokens = vec![(WRITER.to_string(), Role::Writer)];
    let mut c = Cluster::start_tuned(3, tokens, |config| {
        config.queue = QUEUE;
        // A lease long enough for the 16 groups to be proposed once the followers are gone.
        config.raft.election_timeout_min = 2_000;
        config.raft.election_timeout_max = 3_000;
    })
    .await;
    let leader = c.leader().await.id;
    crate::cluster::setup_probe(&c.leader().await.raft).await;
    let admin = c.client(Role::Admin, &[leader]);
    let latest = wraft_fsm_artifacts::LATEST_PAYLOAD;
    deploy_and_create(&admin, name("sequencer"), latest, FsmLimits::default()).await;
    // One client per write, connected before the cut, writing without sessions (a session
    // would need an entry of its own to open).
    let patience = Duration::from_secs(8);
    let mut clients = Vec::new();
    for i in 0..20 {
        let client = c
            .client(Role::Writer, &[leader])
            .without_sessions()
            .with_patience(patience);
        client
            .apply(&name("p"), incr(&format!("w{i}")))
            .await
            .expect("a write while the cluster is whole");
        clients.push(client);
    }
    for id in (1..=3).filter(|id| *id != leader) {
        c.stop(id).await;
    }
    let mut stuck = tokio::task::JoinSet::new();
    let mut clients = clients.into_iter().enumerate();
    for (i, client) in clients.by_ref().take(16) {
        stuck.spawn(async move { client.apply(&name("p"), incr(&format!("w{i}"))).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut waiting = tokio::task::JoinSet::new();
    for (i, client) in clients {
        waiting.spawn(async move { client.apply(&name("p"), incr(&format!("w{i}"))).await });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let port = c.http_port(leader);
    let auth = vec![format!("Authorization: Bearer {WRITER}")];
    let commit = |n: u8| {
        format!(
            r#"{{"Commit":{{"number":{n},"hash":"0x{}","parent_hash":"0x{}","payload":"0x01"}}}}"#,
            hex::encode([n; 32]),
            hex::encode([n - 1; 32])
        )
    };
    let mut gave_up = tokio::task::JoinSet::new();
    for n in 1..=4u8 {
        let (port, auth, body) = (port.clone(), auth.clone(), commit(n));
        gave_up.spawn(async move {
            let sent = port.exchange("POST", "/v1/fsms/sequencer/apply", &auth, body.as_bytes());
            tokio::time::timeout(Duration::from_millis(300), sent).await
        });
    }
    for answered in gave_up.join_all().await {
        assert!(
            answered.is_err(),
            "a write behind the stuck groups was answered at once: {answered:?}"
        );
    }
    let last = commit(5);
    let after = port.exchange("POST", "/v1/fsms/sequencer/apply", &auth, last.as_bytes());
    let (status, body) = tokio::time::timeout(Duration::from_secs(1), after)
        .await
        .expect("a caller past the queue's capacity is answered at once")
        .expect("an answer");
    assert_eq!(
        (status, body.contains("queue_full")),
        (429, true),
        "{status} {body}"
    );
    for written in waiting.join_all().await {
        assert!(
            matches!(written, Err(ClientError::Unreachable { .. })),
            "a write that waited behind the stuck groups should hear there is no leader: \
             {written:?}"
        );
    }
    // The 16 appended while the lease lasted may commit if the followers come back: their
    // outcome is unknown.
    for written in stuck.join_all().await {
        assert!(
            matches!(written, Err(ClientError::OutcomeUnknown(_))),
            "a write appended by the cut-off leader: {written:?}"
        );
    }
    c.stop_all().await;
}

/// Writes of 1 MiB each that wait for the leader together share entries, yet no entry
/// outgrows one replication batch ([`MAX_BATCH_BYTES`], 4 MiB), though `--max-entry-bytes`
/// (32 MiB) would admit it: groups of small writes must not make huge `AppendEntries`.
/// Writes that loop until their fuel runs out (tens of ms of apply each) fill the 16 groups
/// in flight first, so the puts arriving behind them wait together.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_of_large_writes_stay_within_one_replication_batch() {
    const LOOPS: usize = 24;
    const PUTS: usize = 16;
    let mut c =
        crate::cluster::Cluster::start(3, wraft_host::raft::SnapshotPolicy::default()).await;
    let leader = c.leader().await.id;
    setup_probe_and_slow(&c).await;
    let encode = |c: &probe::Command| Payload::Postcard(postcard::to_allocvec(c).expect("encode"));
    let mut writers = tokio::task::JoinSet::new();
    let mut clients = connected(&c, &[leader], LOOPS + PUTS).await.into_iter();
    spin_on_slow(&mut writers, clients.by_ref().take(LOOPS)).await;
    for (w, client) in clients.enumerate() {
        let put = encode(&probe::Command::Put {
            key: format!("w{w}").into_bytes(),
            value: vec![w as u8; 1 << 20],
        });
        writers.spawn(async move {
            client.apply(&name("p"), put).await.expect("a put");
        });
    }
    writers.join_all().await;
    c.stop_all().await;
    let mut log = LogStore::open_read_only(c.data_dir(leader)).expect("raft env");
    let entries = log
        .get_log_reader()
        .await
        .try_get_log_entries(0..u64::MAX)
        .await
        .expect("entries");
    let (mut writes, mut grouped, mut largest) = (0, 0, 0);
    for e in &entries {
        let openraft::EntryPayload::Normal(entry) = &e.payload else {
            continue;
        };
        let bytes = entry.encoded_len();
        largest = largest.max(bytes);
        match entry.command() {
            Command::Group(g) => {
                writes += g.len();
                grouped += usize::from(bytes > 2 << 20);
            }
            Command::Apply(_) => writes += 1,
            _ => {}
        }
    }
    assert_eq!(writes, LOOPS + PUTS, "every write is in the log once");
    assert!(
        grouped > 0,
        "no two puts shared an entry: the test shows nothing"
    );
    assert!(
        largest <= MAX_BATCH_BYTES,
        "an entry of {largest} bytes, past a replication batch of {MAX_BATCH_BYTES}"
    );
}

fn encode_query() -> Payload {
    Payload::Postcard(
        postcard::to_allocvec(&probe::Query::Get {
            key: b"none".to_vec(),
        })
        .expect("encode"),
    )
}

/// The probe as FSM "p", and the probe with fuel for long loops (tens of milliseconds of
/// apply each) as FSM "slow".
async fn setup_probe_and_slow(c: &Cluster) {
    let raft = &c.leader().await.raft;
    crate::cluster::setup_probe(raft).await;
    let module_id = wraft_host::state::module_id(wraft_fsm_artifacts::PROBE);
    let limits = FsmLimits {
        fuel: 1_000_000_000,
        ..FsmLimits::default()
    };
    let slow = Command::CreateFsm {
        fsm: name("slow"),
        module_id,
        limits,
    };
    assert_eq!(
        crate::common::raft_write(raft, slow).await,
        EntryResponse::Done
    );
}

/// `n` writers without sessions, each connected (one read answered) before the test starts.
async fn connected(c: &Cluster, ids: &[u64], n: usize) -> Vec<wraft_client::Client> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let client = c.client(Role::Writer, ids).without_sessions();
        let stale = wraft_api::Consistency::Stale;
        client
            .query(&name("p"), encode_query(), stale)
            .await
            .expect("a read");
        clients.push(client);
    }
    clients
}

/// Loops on FSM "slow", one per client, 2 ms apart, each tens of milliseconds of apply:
/// 16 of them fill the leader's groups in flight, so that the writes arriving behind them
/// wait in the proposer and share entries.
async fn spin_on_slow(
    writers: &mut tokio::task::JoinSet<()>,
    clients: impl Iterator<Item = wraft_client::Client>,
) {
    for client in clients {
        let spin = Payload::Postcard(postcard::to_allocvec(&probe::Command::Loop).expect("encode"));
        writers.spawn(async move {
            // Refused when its fuel runs out: an entry all the same.
            let _ = client.apply(&name("slow"), spin).await;
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Leadership moves to another node while the old leader's 16 groups are in flight (12
/// loops, then the first increments) and the other increments wait behind them in its
/// proposer: every write is answered with the truth. The increments the old leader appended
/// apply, behind the loops, after it has stepped down, and are answered by it then; those
/// waiting in its proposer are refused there before being appended and sent on to the new
/// leader. So a write answered `Ok` applied exactly once, a write refused as retry-safe (no
/// leader, unreachable) applied never, one of unknown outcome at most once; and the replicas
/// agree. Each writer increments a counter of its own, without a session (a session would
/// hide a second apply).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leadership_transfer_with_groups_in_flight_answers_each_write_truthfully() {
    const LOOPS: usize = 12;
    const INCRS: usize = 32;
    let mut c = Cluster::start(3, wraft_host::raft::SnapshotPolicy::default()).await;
    let old = c.leader().await.id;
    let target = (1..=3).find(|id| *id != old).expect("another voter");
    setup_probe_and_slow(&c).await;
    let admin = c.client(Role::Admin, &[1, 2, 3]);
    let mut loops = tokio::task::JoinSet::new();
    let mut clients = connected(&c, &[old], LOOPS + INCRS).await.into_iter();
    spin_on_slow(&mut loops, clients.by_ref().take(LOOPS)).await;
    let mut incrs = tokio::task::JoinSet::new();
    for (w, client) in clients.enumerate() {
        incrs.spawn(async move { (w, client.apply(&name("p"), incr(&format!("w{w}"))).await) });
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        admin.transfer_leader(Some(target)).await.expect("transfer"),
        target
    );
    let answers = incrs.join_all().await;
    loops.join_all().await;
    c.converged_hashes().await;
    // One more increment per counter, through the new leader: it answers the count before
    // it plus one.
    let after = c.client(Role::Writer, &[target]).without_sessions();
    let (mut ok, mut refused, mut unknown) = (0, 0, 0);
    for (w, answer) in answers {
        let out = after
            .apply(&name("p"), incr(&format!("w{w}")))
            .await
            .expect("an increment after the transfer");
        let Payload::Postcard(bytes) = out else {
            panic!("a postcard write answers postcard")
        };
        let probe::Output::Number(n) = postcard::from_bytes(&bytes).expect("an output") else {
            panic!("an increment answers a number")
        };
        let applied = n - 1;
        match answer {
            Ok(_) => {
                ok += 1;
                assert_eq!(applied, 1, "writer {w}'s write was answered Ok");
            }
            Err(ClientError::OutcomeUnknown(_)) => {
                unknown += 1;
                assert!(applied <= 1, "writer {w}'s write applied {applied} times");
            }
            Err(e) => {
                refused += 1;
                assert_eq!(
                    applied, 0,
                    "writer {w}'s write was refused ({e}), yet applied"
                );
            }
        }
    }
    eprintln!("{ok} answered, {refused} refused, {unknown} of unknown outcome");
    assert!(
        ok > 0,
        "no write got through the transfer: the test shows nothing"
    );
    c.stop_all().await;
}

/// The leader keeps at most [`GROUPS_IN_FLIGHT`] entries proposed and not yet applied,
/// however many writes wait: 40 loops of tens of milliseconds each, from 40 clients at once,
/// are appended at most 16 ahead of the leader's apply (sampled every 2 ms from its metrics),
/// and the bound is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_keeps_at_most_sixteen_groups_in_flight() {
    use openraft::type_config::async_runtime::WatchReceiver;
    const LOOPS: usize = 40;
    let mut c = Cluster::start(3, wraft_host::raft::SnapshotPolicy::default()).await;
    let leader = c.leader().await.id;
    setup_probe_and_slow(&c).await;
    let mut loops = tokio::task::JoinSet::new();
    let clients = connected(&c, &[leader], LOOPS).await;
    let raft = c.node(leader).raft.clone();
    let ahead = move || {
        let m = raft.metrics();
        let m = m.borrow_watched();
        let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
        m.last_log_index.unwrap_or(0) - applied
    };
    let before = ahead();
    spin_on_slow(&mut loops, clients.into_iter()).await;
    let mut most = 0;
    while !loops.is_empty() {
        most = most.max(ahead());
        tokio::select! {
            _ = loops.join_next() => {}
            _ = tokio::time::sleep(Duration::from_millis(2)) => {}
        }
    }
    assert_eq!(before, 0, "the leader had applied its log before the loops");
    assert!(
        most <= GROUPS_IN_FLIGHT as u64,
        "{most} entries appended ahead of the leader's apply, past {GROUPS_IN_FLIGHT}"
    );
    assert_eq!(
        most, GROUPS_IN_FLIGHT as u64,
        "the loops never filled the groups in flight: the test shows nothing"
    );
    c.stop_all().await;
}
