//! Prometheus metrics. One registry per process (installed on first use), rendered by each
//! node's `/metrics`. In production a process is one node; `wraft dev` and the tests run
//! several nodes in one process, which then share the commit-path series (the raft gauges
//! are set from the scraped node at scrape time).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets from 5 µs to 10 s, for latencies.
const SECONDS: &[f64] = &[
    5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets from 64 B to 64 MiB, for sizes.
const BYTES: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];
/// Buckets for fuel per call.
const FUEL: &[f64] = &[1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

const LATENCIES: &[&str] = &[
    "commit_marshal_duration_seconds",
    "commit_raft_apply_duration_seconds",
    "fsm_apply_duration_seconds",
    "raft_log_store_duration_seconds",
    "snapshot_build_duration_seconds",
    "snapshot_install_duration_seconds",
    "module_compile_duration_seconds",
];

fn builder() -> Result<PrometheusBuilder, BuildError> {
    let mut b = PrometheusBuilder::new();
    for name in LATENCIES {
        b = b.set_buckets_for_metric(Matcher::Full((*name).into()), SECONDS)?;
    }
    b = b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES)?;
    b.set_buckets_for_metric(Matcher::Full("fsm_fuel_used".into()), FUEL)
}

/// The process's metrics registry.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Only empty bucket lists fail, and ours are constants.
        let recorder = builder()
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding application's); ours
        // then renders without samples.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Records a duration in seconds.
pub fn seconds(name: &'static str, d: Duration) {
    metrics::histogram!(name).record(d.as_secs_f64());
}

/// Counts a refused proposal.
pub fn rejected(cause: &'static str) {
    metrics::counter!("proposals_rejected_total", "cause" => cause).increment(1);
}
