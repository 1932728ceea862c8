//! Operations on a state env of a given size: the state digest a checkpoint computes (inside
//! the apply transaction), a hot backup (compacting copy + sha256 + digest of the copy),
//! `verify`, and compaction after the first half of the keys is deleted: online (a running
//! node's state env) and of a stopped node.
//!
//! Run: `cargo bench -p wraft-host --bench ops` (`WRAFT_BENCH_KEYS` keys of 1 KiB, default
//! 100000 ≈ 100 MiB of values; `WRAFT_BENCH_DIR` picks the disk).

use std::sync::Arc;
use std::time::Instant;

use wraft_core::{Apply, Command, FsmLimits, FsmName, LogEntry};
use wraft_host::ops;
use wraft_host::runtime::FsmRuntime;
use wraft_host::state::{AppliedPosition, Committed, StateStore, module_id};

fn apply_all(store: &StateStore, next: &mut u64, commands: Vec<Command>) {
    for chunk in commands.chunks(2000) {
        let entries: Vec<LogEntry> = chunk
            .iter()
            .map(|c| LogEntry::new(*next * 1000, c.clone()))
            .collect();
        let committed: Vec<Committed<'_>> = entries
            .iter()
            .map(|e| {
                *next += 1;
                Committed {
                    position: AppliedPosition {
                        index: *next,
                        term: 1,
                    },
                    entry: Some(e),
                }
            })
            .collect();
        store.apply(&committed, None).expect("apply");
    }
}

fn put(fsm: &FsmName, cmd: &probe::Command) -> Command {
    Command::Apply(Apply {
        fsm: fsm.clone(),
        payload: postcard::to_allocvec(cmd).expect("encode"),
    })
}

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1 << 20)
}

fn timed<T>(what: &str, bytes: u64, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    let s = started.elapsed().as_secs_f64();
    println!(
        "{what:<44} {:>9.1} ms  {:>7.0} MiB/s of state",
        s * 1000.0,
        mib(bytes) / s
    );
    out
}

/// The raft env's size in steady state under the default snapshot policy: `total` entries
/// of 256-byte payloads appended 256 per call, purged to `trailing` entries behind every
/// `threshold` entries (what a snapshot does).
fn raft_env_size(dir: &std::path::Path, total: u64) -> u64 {
    use openraft::storage::{IOFlushed, RaftLogStorage};
    use wraft_host::raft::{Entry, LogStore, SnapshotPolicy, TypeConfig};
    let policy = SnapshotPolicy::default();
    let entry = |index: u64| Entry {
        log_id: openraft::LogId::new(
            openraft::impls::leader_id_adv::LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        ),
        payload: openraft::EntryPayload::Normal(LogEntry::new(
            index,
            Command::Apply(Apply {
                fsm: FsmName::new("bench").expect("name"),
                payload: vec![0xa5; 256],
            }),
        )),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let mut log = LogStore::open(dir).expect("log");
        let mut next = 1u64;
        let mut last_purge = 0u64;
        while next <= total {
            let entries: Vec<Entry> = (next..next + 256).map(entry).collect();
            next += 256;
            let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
            log.append(entries, IOFlushed::signal(tx))
                .await
                .expect("append");
            rx.await.expect("callback").expect("flushed");
            if next - last_purge > policy.threshold {
                last_purge = next - 1;
                let upto = last_purge.saturating_sub(policy.trailing_logs);
                log.purge(entry(upto).log_id).await.expect("purge");
            }
        }
        log.disk_size().expect("size")
    })
}

fn main() {
    let keys: u32 = std::env::var("WRAFT_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let base = std::env::var_os("WRAFT_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).expect("bench dir");
    let data = dir.path().join("node");
    let store =
        StateStore::open(&data, Arc::new(FsmRuntime::new().expect("runtime"))).expect("state");
    let fsm = FsmName::new("p").expect("name");
    let bytes = wraft_fsm_artifacts::PROBE.to_vec();
    let id = module_id(&bytes);
    let mut next = 0;
    apply_all(
        &store,
        &mut next,
        vec![
            Command::DeployModule {
                module_id: id,
                bytes,
            },
            Command::CreateFsm {
                fsm: fsm.clone(),
                module_id: id,
                limits: FsmLimits::default(),
            },
        ],
    );
    let value = vec![0x5a; 1024];
    let puts = (0..keys)
        .map(|k| {
            put(
                &fsm,
                &probe::Command::Put {
                    key: k.to_be_bytes().to_vec(),
                    value: value.clone(),
                },
            )
        })
        .collect();
    let started = Instant::now();
    apply_all(&store, &mut next, puts);
    let size = store
        .path()
        .join("data.mdb")
        .metadata()
        .expect("size")
        .len();
    println!(
        "state: {keys} keys of 1 KiB, data.mdb {:.1} MiB (filled in {:.1} s)",
        mib(size),
        started.elapsed().as_secs_f64()
    );
    timed("checkpoint digest (whole state)", size, || {
        store.digest().expect("digest")
    });
    let backup = timed("hot backup copy (copy + sha256 + digest)", size, || {
        ops::backup::take(&store, 1, &data).expect("backup")
    });
    println!("  backup file {:.1} MiB", mib(backup.manifest.file_bytes));
    std::fs::remove_file(&backup.path).expect("remove backup");
    let deletes: Vec<Command> = (0..keys / 2)
        .map(|k| {
            put(
                &fsm,
                &probe::Command::Delete {
                    key: k.to_be_bytes().to_vec(),
                },
            )
        })
        .collect();
    apply_all(&store, &mut next, deletes.clone());
    let online = timed(
        "compact online (running node's state env; its applies wait)",
        size,
        || store.compact().expect("compact online"),
    );
    println!(
        "  state/: {:.1} -> {:.1} MiB",
        mib(online.before),
        mib(online.after)
    );
    // The same free pages again, for the stopped node's compaction.
    let refill = (0..keys / 2)
        .map(|k| {
            put(
                &fsm,
                &probe::Command::Put {
                    key: k.to_be_bytes().to_vec(),
                    value: vec![7; 1024],
                },
            )
        })
        .collect();
    apply_all(&store, &mut next, refill);
    apply_all(&store, &mut next, deletes);
    drop(store);
    let report = timed("verify (info + every hash and checksum)", size, || {
        ops::inspect::inspect(&data, true).expect("verify")
    });
    let state = report.state.expect("state summary");
    println!(
        "after deleting the first half of the keys: data.mdb {:.1} MiB, reclaimable {:.1} MiB",
        mib(state.file_bytes),
        mib(state.reclaimable_bytes)
    );
    let done = timed("compact (stopped node)", state.file_bytes, || {
        ops::compact::compact(&data).expect("compact")
    });
    for c in done {
        println!(
            "  {}/: {:.1} -> {:.1} MiB",
            c.env,
            mib(c.before),
            mib(c.after)
        );
    }
    let total = 100_000;
    let size = raft_env_size(&dir.path().join("raft-steady"), total);
    println!(
        "raft env after {total} entries of 256 B under the default snapshot policy: {:.1} MiB",
        mib(size)
    );
}
