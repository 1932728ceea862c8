//! Kill a process that is appending to the raft log and applying to the state env with
//! SIGKILL at random points, many times. After every restart: every append it reported
//! durable is present and checksums verify, the log is contiguous, and the state env is
//! consistent with its applied index (the FSM's counter equals the number of applied
//! increments). `WRAFT_CRASH_ITERATIONS` sets the number of kills (default 12).

use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wraft_host::state::Compile;

use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::{EntryPayload, LogId};
use wraft_core::{Command, FsmLimits, LogEntry};
use wraft_host::raft::{Entry, LogStore, TypeConfig};
use wraft_host::state::{AppliedPosition, Committed, StateStore, module_id};

use crate::common::{name, probe_apply, runtime};

const CHILD_ENV: &str = "WRAFT_CRASH_CHILD_DIR";
/// Entries 1 and 2 deploy the probe and create FSM "p"; every later entry increments "n".
const SETUP_ENTRIES: u64 = 2;

fn entry(index: u64) -> Entry {
    let command = match index {
        1 => {
            let bytes = wraft_fsm_artifacts::PROBE.to_vec();
            Command::DeployModule {
                module_id: module_id(&bytes),
                bytes,
            }
        }
        2 => Command::CreateFsm {
            fsm: name("p"),
            module_id: module_id(wraft_fsm_artifacts::PROBE),
            limits: FsmLimits::default(),
        },
        _ => probe_apply("p", &probe::Command::Incr { key: b"n".to_vec() }),
    };
    Entry {
        log_id: LogId::new(
            openraft::impls::leader_id_adv::LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        ),
        payload: EntryPayload::Normal(LogEntry::new(index, command)),
    }
}

/// The child: append and apply until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by crash::sigkill_at_random_points_loses_nothing as a child process"]
async fn child_appender() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let mut log = LogStore::open(&dir).expect("log");
    let store = StateStore::open(&dir, runtime()).expect("state");
    let mut next = log
        .get_log_state()
        .await
        .expect("state")
        .last_log_id
        .map_or(1, |l| l.index + 1);
    // Catch up: apply what is durable but was not applied before the last kill.
    let applied = store.applied().expect("applied").map_or(0, |a| a.index);
    let backlog = log
        .try_get_log_entries(applied + 1..next)
        .await
        .expect("read log");
    apply(&store, &backlog);
    let mut rng = std::process::id() as u64 | 1;
    loop {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let n = 1 + rng % 64;
        let entries: Vec<Entry> = (next..next + n).map(entry).collect();
        let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
        log.append(entries.clone(), IOFlushed::signal(tx))
            .await
            .expect("append");
        rx.await.expect("callback").expect("flushed");
        println!("durable {}", next + n - 1);
        // Apply what is durable, as the state machine would once it is committed.
        apply(&store, &entries);
        next += n;
    }
}

fn apply(store: &StateStore, entries: &[Entry]) {
    let todo: Vec<Committed<'_>> = entries
        .iter()
        .map(|e| Committed {
            position: AppliedPosition {
                index: e.log_id.index,
                term: 1,
            },
            entry: match &e.payload {
                EntryPayload::Normal(d) => Some(d),
                _ => None,
            },
        })
        .collect();
    store.apply(&todo, None).expect("apply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing() {
    let iterations: u32 = std::env::var("WRAFT_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let dir = tempfile::tempdir().expect("tmp");
    let exe = std::env::current_exe().expect("test binary");
    let mut reported = 0u64;
    for i in 0..iterations {
        let mut child = Process::new(&exe)
            .args([
                "crash::child_appender",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        // Kill after a pseudo-random number of durable appends (the first run also pays for
        // compiling the probe module).
        let kill_after = 1 + (u64::from(i) * 7919 + 13) % 40;
        let mut seen = 0;
        let started = Instant::now();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("durable ") {
                reported = reported.max(n.parse().expect("index"));
                seen += 1;
                if seen >= kill_after || started.elapsed() > Duration::from_secs(30) {
                    break;
                }
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");

        // Recover and check.
        let mut log = LogStore::open(dir.path()).expect("reopen log");
        let state = log.get_log_state().await.expect("log state");
        let last = state.last_log_id.map_or(0, |l| l.index);
        assert!(
            last >= reported,
            "iteration {i}: durable append {reported} lost (log ends at {last})"
        );
        let entries = log
            .try_get_log_entries(1..=last)
            .await
            .expect("every entry reads and verifies");
        assert_eq!(entries.len() as u64, last, "iteration {i}: gap in the log");
        for (k, e) in entries.iter().enumerate() {
            assert_eq!(e.log_id.index, k as u64 + 1);
        }
        drop(log);
        let store = Arc::new(StateStore::open(dir.path(), runtime()).expect("reopen state"));
        let applied = store.applied().expect("applied").map_or(0, |a| a.index);
        assert!(
            applied <= last,
            "iteration {i}: applied {applied} beyond the log end {last}"
        );
        if applied > SETUP_ENTRIES {
            let q =
                postcard::to_allocvec(&probe::Query::Get { key: b"n".to_vec() }).expect("encode");
            let out: probe::Output = postcard::from_bytes(
                &store
                    .query(&name("p"), &q, Compile::IfNeeded)
                    .expect("no fault")
                    .expect("query"),
            )
            .expect("decode");
            let probe::Output::Bytes(b) = out else {
                panic!("iteration {i}: counter missing")
            };
            let n: u64 = postcard::from_bytes(&b).expect("u64");
            assert_eq!(
                n,
                applied - SETUP_ENTRIES,
                "iteration {i}: state and applied index disagree"
            );
        }
    }
    assert!(reported > 0, "the child never reported a durable append");
}
