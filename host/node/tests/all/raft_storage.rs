//! The LMDB raft stores: openraft's conformance suite, restart without replay through a real
//! openraft node, snapshots of empty and real state, corruption detection.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::{RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{BasicNode, Config, ServerState, StorageError};
use tempfile::TempDir;
use wraft_core::EntryResponse;
use wraft_host::raft::{
    LogStore, Raft, Snapshot, SnapshotPolicy, StateMachine, StoreHolds, TypeConfig, Vote,
};

use crate::common::{name, probe_apply, probe_counter, raft_write, runtime, setup_probe};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let err = |e| {
            StorageError::from_io_error(openraft::ErrorSubject::Store, openraft::ErrorVerb::Read, e)
        };
        let dir = tempfile::tempdir().map_err(err)?;
        let log = LogStore::open(dir.path()).map_err(err)?;
        // Without `applying_only_durable`: the suite applies entries it never appended.
        let sm = StateMachine::open(dir.path(), runtime()).map_err(err)?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_lmdb() {
    Suite::test_all(Builder)
        .await
        .expect("openraft::testing::log::Suite");
}

/// A network for a single-node cluster: there is never anyone to talk to.
struct Alone;

fn unreachable() -> Unreachable<TypeConfig> {
    Unreachable::new(&std::io::Error::other("single-node test cluster"))
}

impl RaftNetworkFactory<TypeConfig> for Alone {
    type Network = Alone;
    async fn new_client(&mut self, _: u64, _: &BasicNode) -> Alone {
        Alone
    }
}

impl RaftNetworkV2<TypeConfig> for Alone {
    type SnapshotData = File;
    async fn append_entries(
        &mut self,
        _: AppendEntriesRequest<TypeConfig>,
        _: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable()))
    }
    async fn vote(
        &mut self,
        _: VoteRequest<TypeConfig>,
        _: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable()))
    }
    async fn full_snapshot(
        &mut self,
        _: Vote,
        _: Snapshot,
        _: impl Future<Output = ReplicationClosed> + Send + 'static,
        _: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(unreachable()))
    }
}

async fn start(
    dir: &std::path::Path,
    policy: SnapshotPolicy,
) -> (Raft, Arc<wraft_host::state::StateStore>, StoreHolds) {
    let log = LogStore::open(dir).expect("log store");
    let sm = StateMachine::open(dir, runtime())
        .expect("state machine")
        .applying_only_durable(log.durable());
    let (store, holds) = (sm.store().clone(), sm.holds());
    let log = log.held_by(&holds);
    let mut config = Config {
        election_timeout_min: 150,
        election_timeout_max: 300,
        heartbeat_interval: 50,
        ..Default::default()
    };
    policy.configure(&mut config);
    let config = Arc::new(config.validate().expect("config"));
    let raft = Raft::new(1, config, Alone, log, sm).await.expect("raft");
    (raft, store, holds)
}

/// Shuts `raft` down and waits until nothing openraft spawned holds its stores.
async fn stop(raft: Raft, holds: &StoreHolds) {
    raft.shutdown().await.expect("shutdown");
    drop(raft);
    holds.released().await;
}

async fn wait_leader(raft: &Raft) {
    raft.wait(Some(Duration::from_secs(10)))
        .state(ServerState::Leader, "leader")
        .await
        .expect("becomes leader");
}

/// Makes `raft` a one-node cluster, waits until it leads, and creates the probe FSM `p`.
async fn lead_with_probe(raft: &Raft) {
    raft.initialize(BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))]))
        .await
        .expect("init");
    wait_leader(raft).await;
    setup_probe(raft).await;
}

/// Applies `n` increments with `concurrency` writers in flight.
async fn increments(raft: &Raft, n: u64, concurrency: u64) {
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let raft = raft.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                let r = raft_write(
                    &raft,
                    probe_apply("p", &probe::Command::Incr { key: b"n".to_vec() }),
                )
                .await;
                assert!(matches!(r, EntryResponse::Output(_)), "{r:?}");
                i += concurrency;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_applies_no_entry_twice() {
    let n: u64 = std::env::var("WRAFT_RESTART_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tmp");
    let (raft, store, holds) = start(dir.path(), SnapshotPolicy::default()).await;
    lead_with_probe(&raft).await;
    increments(&raft, n, 256).await;
    assert_eq!(probe_counter(&store), n);
    let applied = store.applied().expect("applied").expect("some");
    drop(store);
    stop(raft, &holds).await;

    let (raft, store, holds) = start(dir.path(), SnapshotPolicy::default()).await;
    assert_eq!(
        store.applied().expect("applied"),
        Some(applied),
        "resumes at the stored applied index"
    );
    wait_leader(&raft).await;
    // The counter counts applies: had any entry been applied again, it would exceed n.
    assert_eq!(probe_counter(&store), n);
    increments(&raft, 1, 1).await;
    assert_eq!(probe_counter(&store), n + 1);
    stop(raft, &holds).await;
}

/// A shutdown while a snapshot is being built (openraft builds in a task of its own, which
/// holds the state store) still releases every store: the data directory opens again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_a_snapshot_build_releases_the_stores() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut raft, mut store, mut holds) = start(dir.path(), SnapshotPolicy::default()).await;
    lead_with_probe(&raft).await;
    // State worth copying: the build takes a while.
    let value = vec![7u8; 1 << 20];
    for i in 0..48u32 {
        let put = probe::Command::Put {
            key: i.to_be_bytes().to_vec(),
            value: value.clone(),
        };
        raft_write(&raft, probe_apply("p", &put)).await;
    }
    for round in 0..3 {
        raft.trigger().snapshot().await.expect("trigger");
        tokio::time::sleep(Duration::from_millis(5 * round)).await;
        drop(store);
        stop(raft, &holds).await;
        (raft, store, holds) = start(dir.path(), SnapshotPolicy::default()).await;
        wait_leader(&raft).await;
    }
    drop(store);
    stop(raft, &holds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_of_empty_and_real_state_install_elsewhere() {
    let a = tempfile::tempdir().expect("tmp");
    let b = tempfile::tempdir().expect("tmp");
    let mut sm_a = StateMachine::open(a.path(), runtime()).expect("sm");
    let mut sm_b = StateMachine::open(b.path(), runtime()).expect("sm");

    // An empty state snapshots and installs without wedging anything.
    let empty = sm_a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("empty snapshot");
    assert_eq!(empty.meta.last_log_id, None);
    sm_b.install_snapshot(&empty.meta, empty.snapshot)
        .await
        .expect("install empty");

    // Real state: a single node's raft applies some entries; snapshot; install on b.
    drop(sm_a);
    let (raft, store, _holds) = start(a.path(), SnapshotPolicy::default()).await;
    lead_with_probe(&raft).await;
    increments(&raft, 300, 16).await;
    raft.trigger().snapshot().await.expect("trigger");
    let snap = loop {
        let current = raft
            .with_state_machine(|sm: &mut StateMachine| {
                Box::pin(async move { sm.get_current_snapshot().await.expect("current") })
            })
            .await
            .expect("sm");
        if let Some(s) = current.filter(|s| s.meta.last_log_id.is_some()) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    sm_b.install_snapshot(&snap.meta, snap.snapshot)
        .await
        .expect("install");
    assert_eq!(
        sm_b.store().fsm_hash(&name("p")).expect("hash"),
        store.fsm_hash(&name("p")).expect("hash")
    );
    assert_eq!(probe_counter(sm_b.store()), 300);
    let (applied, _) = sm_b.applied_state().await.expect("applied");
    assert_eq!(applied, snap.meta.last_log_id);
    raft.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_snapshot_is_refused_and_the_old_state_kept() {
    let a = tempfile::tempdir().expect("tmp");
    let b = tempfile::tempdir().expect("tmp");
    let mut sm_a = StateMachine::open(a.path(), runtime()).expect("sm");
    let mut sm_b = StateMachine::open(b.path(), runtime()).expect("sm");
    let snap = sm_a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    // Flip one byte of a copy of the snapshot file.
    let path = b.path().join("corrupt.snap");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut { snap.snapshot }, &mut bytes).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let before = sm_b.applied_state().await.expect("applied");
    let err = sm_b
        .install_snapshot(&snap.meta, File::open(&path).expect("open"))
        .await
        .expect_err("corrupt");
    assert!(err.to_string().contains("sha256"), "{err}");
    assert_eq!(sm_b.applied_state().await.expect("applied"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_log_entry_is_an_error_naming_its_index() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let mut log = LogStore::open(dir.path()).expect("log");
        let entries = (1..=3).map(|i| wraft_host::raft::Entry {
            log_id: openraft::LogId::new(
                openraft::impls::leader_id_adv::LeaderId {
                    term: 1,
                    node_id: 1,
                },
                i,
            ),
            payload: openraft::EntryPayload::Blank,
        });
        let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
        log.append(entries, openraft::storage::IOFlushed::signal(tx))
            .await
            .expect("append");
        rx.await.expect("callback").expect("durable");
    }
    // Damage the value of log index 1 behind the store's back.
    {
        let env = unsafe {
            heed::EnvOpenOptions::new()
                .max_dbs(4)
                .open(dir.path().join("raft"))
        }
        .expect("env");
        let mut wtxn = env.write_txn().expect("txn");
        let logs: heed::Database<heed::types::Bytes, heed::types::Bytes> = env
            .open_database(&wtxn, Some("logs"))
            .expect("db")
            .expect("logs db");
        let key = [0u64.to_be_bytes(), 1u64.to_be_bytes()].concat();
        let mut value = logs
            .get(&wtxn, &key)
            .expect("get")
            .expect("entry 1")
            .to_vec();
        let last = value.len() - 1;
        value[last] ^= 0x80;
        logs.put(&mut wtxn, &key, &value).expect("put");
        wtxn.commit().expect("commit");
        env.prepare_for_closing().wait();
    }
    let mut log = LogStore::open(dir.path()).expect("reopen");
    let err = openraft::storage::RaftLogReader::try_get_log_entries(&mut log, 1..2)
        .await
        .expect_err("corrupt");
    assert!(
        err.to_string()
            .contains("raft log entry 1: checksum mismatch"),
        "{err}"
    );
    let _ = log.get_log_state().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interval_knob_snapshots_without_reaching_the_threshold() {
    let dir = tempfile::tempdir().expect("tmp");
    let policy = SnapshotPolicy {
        interval: Duration::from_millis(200),
        threshold: 1_000_000,
        trailing_logs: 10,
    };
    let (raft, _store, _holds) = start(dir.path(), policy).await;
    raft.initialize(BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))]))
        .await
        .expect("init");
    wait_leader(&raft).await;
    let timer = policy.spawn_interval(raft.clone());
    setup_probe(&raft).await;
    increments(&raft, 20, 4).await;
    // Every write above was applied before client_write returned; the metrics may lag.
    let target = {
        use openraft::type_config::async_runtime::WatchReceiver;
        raft.metrics()
            .borrow_watched()
            .last_applied
            .as_ref()
            .map_or(0, |l| l.index)
    };
    assert!(target > 0);
    raft.wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.snapshot.as_ref().is_some_and(|s| s.index >= target),
            "a snapshot covering the writes",
        )
        .await
        .expect("interval snapshot taken");
    raft.shutdown().await.expect("shutdown");
    timer.abort();
}

/// openraft builds snapshots in a task of its own, so a build can run while a leader's
/// snapshot is being installed: neither may clear away or replace the other's files (a
/// 5-node fault run stopped a node with "building a snapshot ... No such file or
/// directory" when an install removed the build's temporary file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_build_and_an_install_at_the_same_time_both_succeed() {
    let a = tempfile::tempdir().expect("tmp");
    let b = tempfile::tempdir().expect("tmp");
    let mut sm_a = StateMachine::open(a.path(), runtime()).expect("sm");
    let mut sm_b = StateMachine::open(b.path(), runtime()).expect("sm");
    sm_a.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot of a");
    for round in 0..30 {
        let from_a = sm_a
            .get_current_snapshot()
            .await
            .expect("current")
            .expect("a has a snapshot");
        let mut builder = sm_b.get_snapshot_builder().await;
        let (built, installed) = tokio::join!(
            builder.build_snapshot(),
            sm_b.install_snapshot(&from_a.meta, from_a.snapshot)
        );
        built.unwrap_or_else(|e| panic!("round {round}: build failed: {e}"));
        installed.unwrap_or_else(|e| panic!("round {round}: install failed: {e}"));
        assert!(
            sm_b.get_current_snapshot()
                .await
                .expect("current")
                .is_some(),
            "round {round}: b keeps a snapshot"
        );
    }
}

fn blank(index: u64) -> wraft_host::raft::Entry {
    wraft_host::raft::Entry {
        log_id: openraft::LogId::new(
            openraft::impls::leader_id_adv::LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        ),
        payload: openraft::EntryPayload::Blank,
    }
}

/// openraft may hand the state machine entries the cluster committed before this node's own
/// append is on disk; applying them then would let a power loss leave the state ahead of the
/// log. The state machine waits for the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_is_applied_only_once_the_local_log_has_it_on_disk() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut log = LogStore::open(dir.path()).expect("log");
    let mut sm = StateMachine::open(dir.path(), runtime())
        .expect("sm")
        .applying_only_durable(log.durable());
    let mut apply = tokio::spawn(async move {
        let entries = futures_util::stream::iter((1..=3).map(|i| Ok((blank(i), None))));
        sm.apply(entries).await.expect("apply");
        sm.applied_state().await.expect("applied").0
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut apply)
            .await
            .is_err(),
        "applied entries the log does not have"
    );
    let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
    log.append((1..=3).map(blank), openraft::storage::IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("callback").expect("durable");
    let applied = tokio::time::timeout(Duration::from_secs(10), apply)
        .await
        .expect("applies once the log is durable")
        .expect("task");
    assert_eq!(applied.map(|l| l.index), Some(3));
    // A truncation takes entries off the disk again: applying one of them waits anew.
    log.truncate_after(Some(blank(1).log_id))
        .await
        .expect("truncate");
    let other = tempfile::tempdir().expect("tmp");
    let mut sm = StateMachine::open(other.path(), runtime())
        .expect("sm")
        .applying_only_durable(log.durable());
    let waits = tokio::spawn(async move {
        let entries = futures_util::stream::iter([Ok((blank(2), None))]);
        sm.apply(entries).await
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), waits)
            .await
            .is_err(),
        "applied an entry truncated from the log"
    );
}

/// Snapshots are key/value streams (LMDB files depend on the word size); a snapshot written
/// as an LMDB copy by an earlier wraft still installs. Both reach the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_as_pairs_and_as_older_lmdb_copies_install_the_same_state() {
    let dir = tempfile::tempdir().expect("tmp");
    let (raft, store, holds) = start(dir.path(), SnapshotPolicy::default()).await;
    lead_with_probe(&raft).await;
    increments(&raft, 50, 4).await;
    let pairs = dir.path().join("pairs.snap");
    let lmdb = dir.path().join("lmdb.snap");
    store.export_to(&pairs).expect("export");
    store.copy_to(&lmdb).expect("lmdb copy");
    assert!(
        std::fs::read(&pairs)
            .expect("read")
            .starts_with(b"WRAFTKV1")
    );
    let want = store.digest().expect("digest");
    for file in [&pairs, &lmdb] {
        let other = tempfile::tempdir().expect("tmp");
        let target = wraft_host::state::StateStore::open(other.path(), runtime()).expect("open");
        target.import_from(file).expect("import");
        assert_eq!(target.digest().expect("digest"), want, "{}", file.display());
        assert_eq!(probe_counter(&target), 50);
    }
    // A record cut short is an error, not a partial state.
    let bytes = std::fs::read(&pairs).expect("read");
    std::fs::write(&pairs, &bytes[..bytes.len() - 10]).expect("truncate");
    let other = tempfile::tempdir().expect("tmp");
    let target = wraft_host::state::StateStore::open(other.path(), runtime()).expect("open");
    let err = target.import_from(&pairs).expect_err("truncated");
    assert!(err.to_string().contains("cut short"), "{err}");
    assert_eq!(target.applied().expect("applied"), None);
    // Sealed with a valid trailer, it is still read through before it is published: a
    // snapshot that cannot be imported never becomes the one a restart installs.
    let seal = |content: &[u8]| {
        let mut sealed = content.to_vec();
        sealed.extend_from_slice(&sha2::Digest::finalize(sha2::Digest::chain_update(
            <sha2::Sha256 as sha2::Digest>::new(),
            content,
        )));
        sealed.extend_from_slice(&(content.len() as u64).to_le_bytes());
        sealed.extend_from_slice(b"WRAFTSN1");
        sealed
    };
    std::fs::write(&pairs, seal(&bytes[..bytes.len() - 10])).expect("seal");
    let other = tempfile::tempdir().expect("tmp");
    let mut sm = StateMachine::open(other.path(), runtime()).expect("sm");
    let meta = wraft_host::raft::SnapshotMeta {
        last_log_id: store.applied().expect("applied").map(|p| {
            openraft::LogId::new(
                openraft::impls::leader_id_adv::LeaderId {
                    term: p.term,
                    node_id: 1,
                },
                p.index,
            )
        }),
        last_membership: Default::default(),
    };
    let err = sm
        .install_snapshot(&meta, File::open(&pairs).expect("open"))
        .await
        .expect_err("cut short");
    assert!(err.to_string().contains("cut short"), "{err}");
    assert!(sm.get_current_snapshot().await.expect("current").is_none());
    // An earlier version's LMDB copy, sealed, installs through the same path.
    std::fs::write(&lmdb, seal(&std::fs::read(&lmdb).expect("read"))).expect("seal");
    sm.install_snapshot(&meta, File::open(&lmdb).expect("open"))
        .await
        .expect("an LMDB copy installs");
    assert_eq!(sm.store().digest().expect("digest"), want);
    drop(store);
    stop(raft, &holds).await;
}

/// A snapshot is published before the state imports it: if the import does not finish (here
/// the state env is too small for it; in the field a power loss), the node's newest snapshot
/// is still ahead of its state, and openraft installs it again when the node starts. Imported
/// first, a power loss could leave a state ahead of every published snapshot, and openraft,
/// purging the log up to that state on start, stopped on its own assertion at the next
/// snapshot (CI's snapshot-crash test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_cut_short_is_finished_when_the_node_starts() {
    let a = tempfile::tempdir().expect("tmp");
    let (raft, store, holds) = start(a.path(), SnapshotPolicy::default()).await;
    lead_with_probe(&raft).await;
    increments(&raft, 20, 2).await;
    let big = probe::Command::Put {
        key: b"big".to_vec(),
        value: vec![7; 1 << 20],
    };
    let r = raft_write(&raft, probe_apply("p", &big)).await;
    assert!(matches!(r, EntryResponse::Output(_)), "{r:?}");
    let want = store.digest().expect("digest");
    drop(store);
    stop(raft, &holds).await;
    let mut sm_a = StateMachine::open(a.path(), runtime()).expect("sm");
    let snap = sm_a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    drop(sm_a);

    let b = tempfile::tempdir().expect("tmp");
    {
        let small = wraft_host::state::StateOptions {
            max_bytes: 512 << 10,
            ..Default::default()
        };
        let store = wraft_host::state::StateStore::open_with(b.path(), runtime(), small)
            .expect("a state env of 512 KiB");
        let mut sm_b = StateMachine::with_store(b.path(), Arc::new(store)).expect("sm");
        sm_b.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .expect_err("1 MiB of state does not fit in 512 KiB");
        assert_eq!(sm_b.applied_state().await.expect("applied").0, None);
        let published = sm_b.get_current_snapshot().await.expect("current");
        assert_eq!(
            published.map(|s| s.meta.last_log_id),
            Some(snap.meta.last_log_id),
            "the snapshot is published although its import did not finish"
        );
    }
    let (raft, store, holds) = start(b.path(), SnapshotPolicy::default()).await;
    assert_eq!(
        store.applied().expect("applied").map(|p| p.index),
        snap.meta.last_log_id.map(|l| l.index),
        "openraft installed the published snapshot on start"
    );
    let parts = store.digest().expect("digest").differences(&want);
    assert!(
        parts.is_empty(),
        "differs from the snapshot's source in {parts:?}"
    );
    drop(store);
    stop(raft, &holds).await;
}
