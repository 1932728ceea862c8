//! A 3-node cluster on loopback, durable (fsync on), closed-loop clients sending 256-byte
//! commands: commits/s and p50/p99 latency for 1, 16, 64 and 256 clients, beside the
//! floors measured in the same run: the disk's fdatasync and a client API round trip.
//!
//! Run: `cargo bench -p wraft-host --bench cluster` (`WRAFT_BENCH_DIR`: where the data
//! goes, default the system temp dir; `WRAFT_BENCH_SECS`: seconds per row, default 5).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use wraft_transport_quic::api::{ApiRequest, Payload};

mod support;
use support::{BenchCluster, us};

fn main() {
    let secs = support::bench_secs();
    let dir = support::bench_dir();
    let fsync = support::fsync_p50(dir.path());

    support::runtime().block_on(async {
        let cluster = BenchCluster::start(dir.path()).await;
        let p = cluster.create_fsm(wraft_fsm_artifacts::PROBE, "p").await;
        let client = Arc::new(cluster.leader_client().await);

        let mut rtt = Histogram::<u64>::new(3).expect("hist");
        for _ in 0..300 {
            let t = Instant::now();
            client.request(ApiRequest::Status).await.expect("status");
            rtt.record(t.elapsed().as_nanos() as u64).expect("record");
        }
        let rtt50 = rtt.value_at_quantile(0.5);
        println!(
            "machine: {} cores; data: {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            dir.path().display()
        );
        println!(
            "floor: fdatasync p50 {:.1} µs, API round trip (Status) p50 {:.1} µs",
            us(fsync),
            us(rtt50)
        );
        println!(
            "{:>8} {:>12} {:>10} {:>10} {:>16}",
            "clients", "commits/s", "p50 µs", "p99 µs", "p50/(fsync+rtt)"
        );
        for clients in [1usize, 16, 64, 256] {
            let deadline = Instant::now() + Duration::from_secs(secs);
            let mut tasks = Vec::new();
            for w in 0..clients {
                let (client, p) = (client.clone(), p.clone());
                tasks.push(tokio::spawn(async move {
                    let mut hist = Histogram::<u64>::new(3).expect("hist");
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let cmd = probe::Command::Put {
                            key: format!("{w}-{}", i % 1000).into_bytes(),
                            value: vec![0xa5; 256],
                        };
                        let command =
                            Payload::Postcard(postcard::to_allocvec(&cmd).expect("encode"));
                        let t = Instant::now();
                        client
                            .request(ApiRequest::Apply {
                                fsm: p.clone(),
                                command,
                            })
                            .await
                            .expect("commit");
                        hist.record(t.elapsed().as_nanos() as u64).expect("record");
                        i += 1;
                    }
                    hist
                }));
            }
            let started = Instant::now();
            let mut all = Histogram::<u64>::new(3).expect("hist");
            for t in tasks {
                all.add(t.await.expect("task")).expect("merge");
            }
            let elapsed = started.elapsed().as_secs_f64();
            let p50 = all.value_at_quantile(0.5);
            println!(
                "{:>8} {:>12.0} {:>10.1} {:>10.1} {:>16.2}",
                clients,
                all.len() as f64 / elapsed,
                us(p50),
                us(all.value_at_quantile(0.99)),
                p50 as f64 / (fsync + rtt50) as f64
            );
        }
        cluster.shutdown().await;
    });
}
