//! The example FSMs under load.
//!
//! - `batch`: arc's compaction pattern through a durable 3-node cluster on loopback: 40 file
//!   registrations as 40 separate entries (one client, one after another, as arc did) versus
//!   the same 40 as one `BatchFileOps` entry.
//! - `airspace`: area-query latency of airspace-store with 100,000 stored volumes (real LMDB,
//!   the wasm module; populated through `Batch` entries on one node, no raft).
//!
//! Run: `cargo bench -p wraft-host --bench examples [-- batch|airspace]`
//! (`WRAFT_BENCH_DIR` as for the cluster bench; `WRAFT_BENCH_VOLUMES`: stored volumes,
//! default 100000).

use std::time::Instant;

use airspace_store::{Answer, Command as A, Footprint, Kind, LatLng, Query, Volume};
use file_manifest::{Command as F, FileEntry, FileOp, Tier};
use hdrhistogram::Histogram;
use wraft_api::{ApiRequest, Payload};
use wraft_core::{Apply, Command, EntryResponse, FsmLimits, FsmName};
use wraft_host::clock::now_ms;
use wraft_host::local::LocalNode;
use wraft_host::state::Compile;

mod support;
use support::{BenchCluster, us};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |what: &str| args.is_empty() || args.iter().any(|a| a == what);
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if want("batch") {
        batch();
    }
    if want("airspace") {
        airspace();
    }
}

fn file(path: String) -> FileEntry {
    FileEntry {
        path,
        database: "metrics".into(),
        measurement: "cpu".into(),
        partition_time_ms: 0,
        size_bytes: 1 << 20,
        checksum: "sha256:0".into(),
        tier: Tier::Hot,
    }
}

fn batch() {
    let dir = support::bench_dir();
    let fsync = support::fsync_p50(dir.path());
    support::runtime().block_on(async {
        let cluster = BenchCluster::start(dir.path()).await;
        let fsm = cluster
            .create_fsm(wraft_fsm_artifacts::FILE_MANIFEST, "manifest")
            .await;
        let client = cluster.leader_client().await;
        let apply = |cmd: F| ApiRequest::Apply {
            fsm: fsm.clone(),
            command: Payload::Postcard(postcard::to_allocvec(&cmd).expect("encode")),
            once: None,
        };
        let (mut separate, mut batched) = (
            Histogram::<u64>::new(3).expect("hist"),
            Histogram::<u64>::new(3).expect("hist"),
        );
        for round in 0..30 {
            let t = Instant::now();
            for i in 0..40 {
                let cmd = F::RegisterFile(file(format!("sep/{round}/{i}")));
                client.request(apply(cmd)).await.expect("register");
            }
            separate
                .record(t.elapsed().as_nanos() as u64)
                .expect("record");
            let ops = (0..40)
                .map(|i| FileOp::Register(file(format!("batch/{round}/{i}"))))
                .collect();
            let t = Instant::now();
            client
                .request(apply(F::BatchFileOps(ops)))
                .await
                .expect("batch");
            batched
                .record(t.elapsed().as_nanos() as u64)
                .expect("record");
        }
        let (s, b) = (
            separate.value_at_quantile(0.5),
            batched.value_at_quantile(0.5),
        );
        println!(
            "batch: fdatasync p50 {:.1} µs; 30 rounds of 40 registrations",
            us(fsync)
        );
        println!("  40 entries, one after another: p50 {:>9.1} µs", us(s));
        println!("  1 BatchFileOps entry:          p50 {:>9.1} µs", us(b));
        println!("  speed-up: {:.1}x", s as f64 / b as f64);
        cluster.shutdown().await;
    });
}

/// SplitMix64, so every run stores the same volumes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn square(lat: f64, lng: f64, side: f64, now: u64) -> Volume {
    Volume {
        footprint: Footprint::square(lat, lng, side),
        altitude_lo_m: 0.0,
        altitude_hi_m: 120.0,
        start_ms: now - 60_000,
        end_ms: now + 20 * 3_600_000,
    }
}

fn airspace() {
    let volumes: usize = support::env_or("WRAFT_BENCH_VOLUMES", 100_000);
    let dir = support::bench_dir();
    let node = LocalNode::open(dir.path()).expect("open");
    let module = node
        .deploy(wraft_fsm_artifacts::AIRSPACE_STORE.to_vec())
        .expect("store")
        .expect("valid");
    let fsm = FsmName::new("airspace").expect("name");
    node.create(fsm.clone(), module, FsmLimits::default())
        .expect("store")
        .expect("created");
    // 100,000 volumes over a 5° x 5° region (central Europe), 50 m to 2 km across, a tenth
    // of them circles.
    let mut rng = Rng(7);
    let now = now_ms();
    let t = Instant::now();
    for chunk in 0..volumes.div_ceil(1000) {
        let batch = (chunk * 1000..((chunk + 1) * 1000).min(volumes))
            .map(|i| {
                let (lat, lng) = (45.0 + 5.0 * rng.unit(), 5.0 + 5.0 * rng.unit());
                let side = 0.0005 + 0.0175 * rng.unit();
                let mut volume = square(lat, lng, side, now);
                if i % 10 == 0 {
                    volume.footprint = Footprint::Circle {
                        center: LatLng { lat, lng },
                        radius_m: side * 50_000.0,
                    };
                }
                let cmd = A::PutIsa {
                    id: format!("isa-{i:06}"),
                    owner: format!("uss{}", i % 7),
                    volume,
                    flights_url: "https://uss.example/flights".into(),
                    ovn: None,
                };
                Apply {
                    fsm: fsm.clone(),
                    payload: postcard::to_allocvec(&cmd).expect("encode"),
                }
            })
            .collect();
        let r = node.propose(Command::Batch(batch)).expect("store");
        assert!(matches!(r, EntryResponse::BatchOutputs(_)), "{r:?}");
    }
    let load = t.elapsed();
    println!(
        "airspace: {volumes} volumes stored in {:.1} s ({:.1} µs per volume, 1000 per entry)",
        load.as_secs_f64(),
        load.as_secs_f64() * 1e6 / volumes as f64
    );
    println!(
        "{:>14} {:>10} {:>10} {:>10} {:>12}",
        "query side", "p50 µs", "p99 µs", "max µs", "mean found"
    );
    for side in [0.01, 0.05, 0.2] {
        let mut hist = Histogram::<u64>::new(3).expect("hist");
        let mut found = 0usize;
        let rounds = 300;
        for _ in 0..rounds {
            let (lat, lng) = (45.0 + 4.8 * rng.unit(), 5.0 + 4.8 * rng.unit());
            let q = Query::Search {
                kinds: vec![Kind::Isa],
                area: square(lat, lng, side, now),
            };
            let bytes = postcard::to_allocvec(&q).expect("encode");
            let t = Instant::now();
            let out = node
                .store()
                .query(&fsm, &bytes, Compile::IfNeeded)
                .expect("store")
                .expect("query");
            hist.record(t.elapsed().as_nanos() as u64).expect("record");
            match postcard::from_bytes::<Answer>(&out).expect("decode") {
                Answer::Records(r) => found += r.len(),
                Answer::Stats(_) => unreachable!("search answers records"),
            }
        }
        println!(
            "{:>12.2}° {:>10.1} {:>10.1} {:>10.1} {:>12.1}",
            side,
            us(hist.value_at_quantile(0.5)),
            us(hist.value_at_quantile(0.99)),
            us(hist.max()),
            found as f64 / rounds as f64
        );
    }
}
