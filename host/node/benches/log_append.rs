//! Raft log append throughput and latency (one durable LMDB commit per call) for 1, 16 and
//! 256 entries per call with 256-byte payloads, beside the disk's own fdatasync latency
//! measured in the same run on the same directory.
//!
//! Run: `cargo bench -p wraft-host --bench log_append` (`WRAFT_BENCH_DIR` picks the disk;
//! default: a temp dir under the system temp dir; `WRAFT_BENCH_CALLS` the calls per row).

use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{EntryPayload, LogId};
use wraft_core::{Apply, Command, FsmName, LogEntry};
use wraft_host::raft::{Entry, LogStore, TypeConfig};

fn entry(index: u64) -> Entry {
    let fsm = FsmName::new("bench").expect("name");
    Entry {
        log_id: LogId::new(
            openraft::impls::leader_id_adv::LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        ),
        payload: EntryPayload::Normal(LogEntry::new(
            index,
            Command::Apply(Apply {
                fsm,
                payload: vec![0xa5; 256],
            }),
        )),
    }
}

fn us(d: u64) -> f64 {
    d as f64 / 1000.0
}

fn main() {
    let base = std::env::var_os("WRAFT_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let calls: u64 = std::env::var("WRAFT_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir_in(base).expect("bench dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");

    // The floor: one 4 KiB write + fdatasync on the same file system.
    let mut floor = Histogram::<u64>::new(3).expect("hist");
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(dir.path().join("fdatasync.probe"))
        .expect("probe file");
    let page = [0u8; 4096];
    for _ in 0..calls {
        let t = Instant::now();
        f.write_all(&page).expect("write");
        f.sync_data().expect("fdatasync");
        floor.record(t.elapsed().as_nanos() as u64).expect("record");
    }
    println!(
        "machine: {} cores; dir: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        dir.path().display()
    );
    println!(
        "{:<28} {:>12} {:>10} {:>10} {:>12}",
        "row", "entries/s", "p50 µs", "p99 µs", "p50/fsync"
    );
    let floor_p50 = floor.value_at_quantile(0.5);
    println!(
        "{:<28} {:>12} {:>10.1} {:>10.1} {:>12}",
        "fdatasync (4 KiB write)",
        "-",
        us(floor_p50),
        us(floor.value_at_quantile(0.99)),
        "1.00"
    );

    rt.block_on(async {
        let mut log = LogStore::open(dir.path()).expect("log");
        let mut next = 1u64;
        for per_call in [1u64, 16, 256] {
            let mut hist = Histogram::<u64>::new(3).expect("hist");
            let started = Instant::now();
            for _ in 0..calls {
                let entries: Vec<Entry> = (next..next + per_call).map(entry).collect();
                next += per_call;
                let t = Instant::now();
                let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
                log.append(entries, IOFlushed::signal(tx))
                    .await
                    .expect("append");
                rx.await.expect("callback").expect("flushed");
                hist.record(t.elapsed().as_nanos() as u64).expect("record");
            }
            let secs = started.elapsed().max(Duration::from_nanos(1)).as_secs_f64();
            let p50 = hist.value_at_quantile(0.5);
            println!(
                "{:<28} {:>12.0} {:>10.1} {:>10.1} {:>12.2}",
                format!("append, {per_call} entries/call"),
                (calls * per_call) as f64 / secs,
                us(p50),
                us(hist.value_at_quantile(0.99)),
                p50 as f64 / floor_p50 as f64
            );
        }
    });
}
