//! Client writes the leader groups into one entry (`Command::Group`): each applies as it
//! would in an entry of its own, with its own response and failure, and its commands take
//! their own positions of the entry (so their random numbers differ).

use probe::Command as C;
use wraft_core::session::SessionWrite;
use wraft_core::{Apply, ApplyError, Command, EntryResponse, GroupedWrite};

use crate::common::{Fixture, name, output, probe_counter};
use crate::sessions::{T0, at, incr, on, open};

fn probe(cmd: &C) -> Apply {
    Apply {
        fsm: name("p"),
        payload: postcard::to_allocvec(cmd).expect("encode"),
    }
}

fn put(key: &str) -> Apply {
    probe(&C::Put {
        key: key.into(),
        value: b"v".to_vec(),
    })
}

fn group(writes: &[Command]) -> Command {
    Command::Group(
        writes
            .iter()
            .cloned()
            .map(|c| GroupedWrite::of(c).expect("a client write"))
            .collect(),
    )
}

/// A group's responses and resulting state are those of the same writes in entries of their
/// own: a failing write (alone or in an atomic batch) leaves the others applied, a session
/// write retried within the group answers its first response, a keyed write applies once.
#[test]
fn a_group_applies_each_write_as_an_entry_of_its_own_would() {
    let (grouped, alone) = (Fixture::probe(), Fixture::probe());
    let (g, a) = (grouped.node.store(), alone.node.store());
    let session = open(g, T0, 60_000);
    assert_eq!(
        open(a, T0, 60_000),
        session,
        "both stores at the same index"
    );
    let keyed = Command::KeyedWrite {
        key: "k-1".into(),
        write: SessionWrite::Apply(incr()),
    };
    let writes = [
        Command::Apply(put("a")),
        Command::Apply(probe(&C::Fail {
            message: "no".into(),
        })),
        Command::Batch(vec![put("b"), put("c")]),
        Command::Batch(vec![
            put("d"),
            probe(&C::Fail {
                message: "no".into(),
            }),
        ]),
        Command::Apply(probe(&C::PutThenFail {
            key: b"x".to_vec(),
            value: b"v".to_vec(),
        })),
        on(session, 1, 0, incr()),
        on(session, 1, 0, incr()),
        keyed.clone(),
        keyed,
        Command::Apply(incr()),
    ];
    let EntryResponse::Group(responses) = at(g, T0, group(&writes)) else {
        panic!("a group answers a response per write")
    };
    let separately: Vec<EntryResponse> = writes.iter().map(|w| at(a, T0, w.clone())).collect();
    assert_eq!(responses, separately);
    assert_eq!(grouped.hash("p"), alone.hash("p"));
    assert!(matches!(
        &responses[1],
        EntryResponse::Failed(ApplyError::Rejected(_))
    ));
    assert!(matches!(
        &responses[3],
        EntryResponse::Failed(ApplyError::BatchFailed { position: 1, .. })
    ));
    assert_eq!(
        responses[5], responses[6],
        "a retry answers the first response"
    );
    assert_eq!(
        responses[7], responses[8],
        "a key answers its first response"
    );
    assert_eq!(probe_counter(g), 3, "session once, key once, plain once");
    for (key, there) in [
        ("a", true),
        ("b", true),
        ("c", true),
        ("d", false),
        ("x", false),
    ] {
        let found = grouped
            .query("p", &probe::Query::Get { key: key.into() })
            .expect("a read");
        assert_eq!(
            found != probe::Output::None,
            there,
            "{key}: {found:?} (a failed write's puts must vanish, the others' stay)"
        );
    }
}

/// Every command of a group sees the entry's index and a position of its own, in order
/// across the group's writes and their batches; so each draws its own random numbers.
#[test]
fn each_command_of_a_group_has_its_own_position_and_random_numbers() {
    let f = Fixture::probe();
    let store = f.node.store();
    let context = || probe(&C::Context);
    let writes = [
        Command::Apply(context()),
        Command::Batch(vec![context(), context()]),
        Command::Apply(context()),
    ];
    let EntryResponse::Group(responses) = at(store, T0, group(&writes)) else {
        panic!("a group answers a response per write")
    };
    let index = f.applied_index();
    let mut seen = Vec::new();
    for r in &responses {
        let outs = match r {
            EntryResponse::BatchOutputs(outs) => outs
                .iter()
                .map(|o| postcard::from_bytes(o).expect("decode"))
                .collect(),
            other => vec![output(other)],
        };
        for o in outs {
            let probe::Output::Context {
                index: at_index,
                position,
                random,
                ..
            } = o
            else {
                panic!("unexpected {o:?}")
            };
            assert_eq!(at_index, index);
            seen.push((position, random));
        }
    }
    let positions: Vec<u32> = seen.iter().map(|(p, _)| *p).collect();
    assert_eq!(positions, [0, 1, 2, 3]);
    let mut randoms: Vec<[u64; 2]> = seen.iter().map(|(_, r)| *r).collect();
    randoms.dedup();
    assert_eq!(randoms.len(), 4, "{randoms:?}");
}

/// 64 writers on sessions, 20 increments each of a counter of their own, all at once
/// through the leader of a real 3-node cluster: the leader puts writes into shared entries
/// (fewer log entries than writes), every writer gets its own answers (writer `w`'s counter
/// starts at `w` million, so an answer meant for another writer is seen), and the replicas
/// agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_entries_and_each_gets_its_own_answer() {
    let mut c =
        crate::cluster::Cluster::start(3, wraft_host::raft::SnapshotPolicy::default()).await;
    crate::cluster::setup_probe(&c.leader().await.raft).await;
    let (entries, alone) = concurrent_writes(&c, 64, 20, 0).await;
    assert!(
        entries < alone,
        "{entries} entries for writes that alone take {alone}: no write shared an entry"
    );
    eprintln!("{entries} entries for writes that alone take {alone}");
    c.converged_hashes().await;
    c.stop_all().await;
}

/// Node 3's entry level in [`writes_share_no_entry_while_a_member_reads_no_groups`].
static NODE_3_LEVEL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// A rolling upgrade: node 3 says it reads only level 1 (an older build, or one pinned with
/// `--entry-level 1`), so the leader puts every write in an entry of its own, however many
/// wait at once; once node 3 restarts at its build's level, the leader groups again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_share_no_entry_while_a_member_reads_no_groups() {
    use std::sync::atomic::Ordering;
    NODE_3_LEVEL.store(1, Ordering::SeqCst);
    let mut c = crate::cluster::Cluster::start_tuned(3, Vec::new(), |config| {
        if config.id == 3 {
            config.entry_level = NODE_3_LEVEL.load(Ordering::SeqCst);
        }
    })
    .await;
    crate::cluster::setup_probe(&c.leader().await.raft).await;
    let says = |c: &crate::cluster::Cluster| c.client(wraft_api::Role::Reader, &[3]);
    let features = says(&c).features().await.expect("node 3's features");
    assert_eq!((features.node, features.entry_level), (3, 1));
    for round in 0..3 {
        let (entries, alone) = concurrent_writes(&c, 64, 5, round * 64).await;
        assert!(
            entries >= alone,
            "round {round}: {entries} entries for writes that alone take {alone}: writes \
             shared entries while node 3 reads no groups"
        );
    }
    c.stop(3).await;
    NODE_3_LEVEL.store(wraft_core::ENTRY_LEVEL, Ordering::SeqCst);
    c.restart(3).await;
    let features = says(&c).features().await.expect("node 3's features");
    assert_eq!(features.entry_level, wraft_core::ENTRY_LEVEL);
    // The leader asks its members every 500 ms: within a few rounds it groups again.
    let mut grouped = false;
    for round in 3..40 {
        let (entries, alone) = concurrent_writes(&c, 64, 5, round * 64).await;
        if entries < alone {
            grouped = true;
            break;
        }
    }
    assert!(grouped, "no write shared an entry after node 3 read groups");
    c.converged_hashes().await;
    c.stop_all().await;
}

static NODE_4_LEVEL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// A joiner whose build reads fewer entry levels than the leader writes is refused at
/// add-learner (it would stop at the first grouped entry it replays), and nothing changes;
/// once it runs at the leader's level it is added and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_that_reads_a_lower_entry_level_is_refused() {
    use std::sync::atomic::Ordering;
    use wraft_api::{ApiError, ApiRequest, ApiResponse, Role};
    NODE_4_LEVEL.store(1, Ordering::SeqCst);
    let mut c = crate::cluster::Cluster::start_tuned(3, Vec::new(), |config| {
        if config.id == 4 {
            config.entry_level = NODE_4_LEVEL.load(Ordering::SeqCst);
        }
    })
    .await;
    crate::cluster::setup_probe(&c.leader().await.raft).await;
    concurrent_writes(&c, 16, 2, 0).await;
    let new = c.add_node().await;
    let addr = c.addrs[new as usize - 1].to_string();
    let admin = c.client(Role::Admin, &[1, 2, 3]);
    let add = ApiRequest::AddLearner {
        id: new,
        addr: addr.clone(),
    };
    match admin.request(add.clone()).await {
        Err(wraft_client::ClientError::Api(ApiError::BadRequest(why))) => assert!(
            why.contains(&format!(
                "node {new} at {addr} says it reads entries up to level 1 (an older build, \
                 or --entry-level 1), and this leader's build may write level {}",
                wraft_core::ENTRY_LEVEL
            )),
            "{why}"
        ),
        other => panic!("a level-1 joiner was not refused: {other:?}"),
    }
    // add-learner answers once the membership change committed: had it been made, the
    // leader's membership would hold node 4 now.
    for id in 1..=3 {
        use openraft::type_config::async_runtime::WatchReceiver;
        let m = c.node(id).raft.metrics().borrow_watched().clone();
        let nodes = m.membership_config.membership().nodes().count();
        assert_eq!(nodes, 3, "node {id}'s membership holds the refused joiner");
    }
    c.stop(new).await;
    NODE_4_LEVEL.store(wraft_core::ENTRY_LEVEL, Ordering::SeqCst);
    c.restart(new).await;
    assert_eq!(admin.request(add).await.expect("add"), ApiResponse::Done);
    assert_eq!(members(&c, 4).await, 4);
    concurrent_writes(&c, 16, 2, 16).await;
    c.converged_hashes().await;
    c.stop_all().await;
}

/// How many nodes (voters and learners) node 1's membership holds, once it holds `n` (or
/// after 5 s): node 1 may learn of a change a heartbeat after the leader.
async fn members(c: &crate::cluster::Cluster, n: usize) -> usize {
    use openraft::type_config::async_runtime::WatchReceiver;
    let mut count = 0;
    for _ in 0..100 {
        let m = c.node(1).raft.metrics().borrow_watched().clone();
        count = m.membership_config.membership().nodes().count();
        if count == n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    count
}

/// `writers` clients on sessions (ids from `first`), each setting a counter of its own to
/// `w` million and then incrementing it `each` times, all at once through the leader; checks
/// each got its own answers. Returns the log entries this took, and how many it takes with
/// every write in an entry of its own (one per write and per session opened).
async fn concurrent_writes(
    c: &crate::cluster::Cluster,
    writers: u64,
    each: u64,
    first: u64,
) -> (u64, u64) {
    use openraft::type_config::async_runtime::WatchReceiver;
    use wraft_api::{Payload, Role};
    const START: u64 = 1_000_000;
    let leader = c.leader().await.id;
    let last_log = || {
        c.node(leader)
            .raft
            .metrics()
            .borrow_watched()
            .last_log_index
            .unwrap_or(0)
    };
    let encode = |c: &C| Payload::Postcard(postcard::to_allocvec(c).expect("encode"));
    let before = last_log();
    let mut tasks = tokio::task::JoinSet::new();
    for w in first..first + writers {
        let client = c.client(Role::Writer, &[leader]);
        let key = format!("w{w}").into_bytes();
        let (start, incr) = (
            encode(&C::Put {
                key: key.clone(),
                value: postcard::to_allocvec(&(w * START)).expect("encode"),
            }),
            encode(&C::Incr { key }),
        );
        tasks.spawn(async move {
            client.apply(&name("p"), start).await.expect("a put");
            let mut seen = Vec::new();
            for _ in 0..each {
                let out = client
                    .apply(&name("p"), incr.clone())
                    .await
                    .expect("an increment");
                let Payload::Postcard(bytes) = out else {
                    panic!("a postcard write answers postcard")
                };
                match postcard::from_bytes(&bytes).expect("an output") {
                    probe::Output::Number(n) => seen.push(n),
                    other => panic!("unexpected {other:?}"),
                }
            }
            (w, seen)
        });
    }
    for (w, seen) in tasks.join_all().await {
        let mine: Vec<u64> = (1..=each).map(|k| w * START + k).collect();
        assert_eq!(seen, mine, "writer {w}'s answers");
    }
    (last_log() - before, writers * (each + 1) + writers)
}

/// Expiry keeps up with groups: an entry expires up to 64 keys and sessions per write it
/// holds (a group of 256 writes, 16 384), as 256 entries of one write each would; not 64
/// per entry, which let expired keys pile up under grouped keyed writes until the cap on
/// idempotency keys refused new ones.
#[test]
fn a_group_expires_as_many_keys_as_its_writes_would_alone() {
    let f = Fixture::probe();
    let store = f.node.store();
    let keyed = |k: usize| Command::KeyedWrite {
        key: format!("k-{k}"),
        write: SessionWrite::Apply(probe(&C::Nop)),
    };
    let full = |from: usize| group(&(from..from + 256).map(keyed).collect::<Vec<_>>());
    at(store, T0, full(0));
    at(store, T0, full(256));
    assert_eq!(keys(store), 512);
    // A day later all 512 are due; the next group of 256 writes expires them all (256 × 64
    // of room) and keeps its own 256.
    let later = T0 + wraft_core::session::IDEMPOTENCY_KEY_TTL_MS + 1;
    at(store, later, full(512));
    assert_eq!(keys(store), 256);
}

fn keys(store: &wraft_host::state::StateStore) -> u64 {
    store.session_counts().expect("counts").1
}
