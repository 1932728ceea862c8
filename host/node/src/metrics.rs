//! Prometheus metrics. One registry per process (installed on first use), rendered by each
//! node's `/metrics`. Every name starts with `wraft_` and is declared once, in [`names`]
//! (docs/api.md lists the same; a test holds them equal). `wraft serve` (one node a process)
//! labels every series with `node`; `wraft dev` and the tests run several nodes in one
//! process, which then share the commit-path series, while the gauges set at scrape time
//! carry the scraped node's `node` label.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Every metric name, declared once.
pub mod names {
    /// Histogram: JSON to postcard and building the entry, on the leader (seconds).
    pub const COMMIT_MARSHAL: &str = "wraft_commit_marshal_duration_seconds";
    /// Histogram: propose to committed and applied, on the leader (seconds).
    pub const COMMIT_RAFT_APPLY: &str = "wraft_commit_raft_apply_duration_seconds";
    /// Histogram: one FSM call in apply (seconds).
    pub const FSM_APPLY: &str = "wraft_fsm_apply_duration_seconds";
    /// Histogram: one durable log append (seconds).
    pub const RAFT_LOG_STORE: &str = "wraft_raft_log_store_duration_seconds";
    /// Histogram: a snapshot build (seconds).
    pub const SNAPSHOT_BUILD: &str = "wraft_snapshot_build_duration_seconds";
    /// Histogram: a snapshot install (seconds).
    pub const SNAPSHOT_INSTALL: &str = "wraft_snapshot_install_duration_seconds";
    /// Histogram: a module compile (seconds).
    pub const MODULE_COMPILE: &str = "wraft_module_compile_duration_seconds";
    /// Histogram: client writes per log entry the leader proposed (its groups' sizes).
    pub const COMMIT_GROUP_WRITES: &str = "wraft_commit_group_writes";
    /// Histogram: a write's encoded command (bytes).
    pub const COMMIT_PAYLOAD_SIZE: &str = "wraft_commit_payload_size_bytes";
    /// Histogram: a built snapshot (bytes).
    pub const SNAPSHOT_SIZE: &str = "wraft_snapshot_size_bytes";
    /// Histogram: fuel per apply call.
    pub const FSM_FUEL_USED: &str = "wraft_fsm_fuel_used";
    /// Counter: proposals refused before the log, by `cause`.
    pub const PROPOSALS_REJECTED: &str = "wraft_proposals_rejected_total";
    /// Counter: consistency checkpoints that matched.
    pub const CHECKPOINTS_VERIFIED: &str = "wraft_checkpoints_verified_total";
    /// Counter: consistency checkpoints that did not.
    pub const CHECKPOINT_MISMATCHES: &str = "wraft_checkpoint_mismatches_total";
    /// Gauge: 1 while this node's state differs from the leader's.
    pub const STATE_DIVERGED: &str = "wraft_state_diverged";
    /// Gauge (scrape): the version this node runs, `version` label, value 1.
    pub const BUILD_INFO: &str = "wraft_build_info";
    /// Gauge (scrape): the term.
    pub const RAFT_TERM: &str = "wraft_raft_term";
    /// Gauge (scrape): the leader's id (0: none known).
    pub const RAFT_LEADER_ID: &str = "wraft_raft_leader_id";
    /// Gauge (scrape): the last log index.
    pub const RAFT_LAST_LOG_INDEX: &str = "wraft_raft_last_log_index";
    /// Gauge (scrape): the committed index.
    pub const RAFT_COMMITTED_INDEX: &str = "wraft_raft_committed_index";
    /// Gauge (scrape): the applied index.
    pub const RAFT_APPLIED_INDEX: &str = "wraft_raft_applied_index";
    /// Gauge (scrape, leader only): entries each `follower` lacks of the leader's log.
    pub const RAFT_FOLLOWER_LAG: &str = "wraft_raft_follower_lag_entries";
    /// Gauge (scrape): log-stage latency percentiles, `stage` and `quantile` labels (seconds).
    pub const RAFT_LOG_STAGE: &str = "wraft_raft_log_stage_seconds";
    /// Gauge (scrape): the size of an LMDB env's data file, `env` = `raft` | `state` (bytes).
    pub const LMDB_FILE_SIZE: &str = "wraft_lmdb_file_size_bytes";
    /// Gauge (scrape): bytes of an LMDB env's data file on its free list, which a compaction
    /// (`wraft compact`) would give back, `env` = `raft` | `state`.
    pub const LMDB_RECLAIMABLE: &str = "wraft_lmdb_reclaimable_bytes";
    /// Gauge (scrape): proposals holding a slot of the node's queue (`--queue`) now.
    pub const PROPOSAL_QUEUE_DEPTH: &str = "wraft_proposal_queue_depth";
    /// Gauge (scrape): the entry level this node may propose now: while it leads, the lowest its
    /// members read (`wraft_core::ENTRY_LEVEL`, `--entry-level`); 1 otherwise.
    pub const CLUSTER_ENTRY_LEVEL: &str = "wraft_cluster_entry_level";

    /// All of them.
    pub const ALL: &[&str] = &[
        COMMIT_MARSHAL,
        COMMIT_RAFT_APPLY,
        FSM_APPLY,
        RAFT_LOG_STORE,
        SNAPSHOT_BUILD,
        SNAPSHOT_INSTALL,
        MODULE_COMPILE,
        COMMIT_GROUP_WRITES,
        COMMIT_PAYLOAD_SIZE,
        SNAPSHOT_SIZE,
        FSM_FUEL_USED,
        PROPOSALS_REJECTED,
        CHECKPOINTS_VERIFIED,
        CHECKPOINT_MISMATCHES,
        STATE_DIVERGED,
        BUILD_INFO,
        RAFT_TERM,
        RAFT_LEADER_ID,
        RAFT_LAST_LOG_INDEX,
        RAFT_COMMITTED_INDEX,
        RAFT_APPLIED_INDEX,
        RAFT_FOLLOWER_LAG,
        RAFT_LOG_STAGE,
        LMDB_FILE_SIZE,
        LMDB_RECLAIMABLE,
        PROPOSAL_QUEUE_DEPTH,
        CLUSTER_ENTRY_LEVEL,
    ];
}

/// The node a process serves, when it serves one (`wraft serve`): every series gets its
/// `node` label. Set before the first metric is recorded.
static NODE: OnceLock<u64> = OnceLock::new();

/// Labels every series of this process with `node` (call once, before anything records).
pub fn serve_as(node: u64) {
    let _ = NODE.set(node);
}

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
/// Buckets for writes per entry, up to a group's most (`api::propose::MAX_GROUP_WRITES`).
const WRITES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Buckets for fuel per call.
const FUEL: &[f64] = &[1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

const LATENCIES: &[&str] = &[
    names::COMMIT_MARSHAL,
    names::COMMIT_RAFT_APPLY,
    names::FSM_APPLY,
    names::RAFT_LOG_STORE,
    names::SNAPSHOT_BUILD,
    names::SNAPSHOT_INSTALL,
    names::MODULE_COMPILE,
];

fn builder() -> Result<PrometheusBuilder, BuildError> {
    let mut b = PrometheusBuilder::new();
    if let Some(node) = NODE.get() {
        b = b.add_global_label("node", node.to_string());
    }
    for name in LATENCIES {
        b = b.set_buckets_for_metric(Matcher::Full((*name).into()), SECONDS)?;
    }
    b = b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES)?;
    b = b.set_buckets_for_metric(Matcher::Full(names::COMMIT_GROUP_WRITES.into()), WRITES)?;
    b.set_buckets_for_metric(Matcher::Full(names::FSM_FUEL_USED.into()), FUEL)
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

/// Records how many client writes one proposed entry carries.
pub fn group_writes(n: usize) {
    metrics::histogram!(names::COMMIT_GROUP_WRITES).record(n as f64);
}

/// Counts a refused proposal.
pub fn rejected(cause: &'static str) {
    metrics::counter!(names::PROPOSALS_REJECTED, "cause" => cause).increment(1);
}

#[cfg(test)]
mod tests {
    use super::names;

    /// docs/api.md's "Metrics" section names exactly the metrics the node declares.
    #[test]
    fn the_documented_metric_names_are_the_declared_ones() {
        let doc = include_str!("../../../docs/api.md");
        let section = doc
            .split("## Metrics")
            .nth(1)
            .expect("docs/api.md has a Metrics section");
        let section = section.split("\n## ").next().unwrap_or(section);
        let mut documented: Vec<&str> = section
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|code| code.split(['{', ' ']).next().unwrap_or(code))
            .filter(|name| name.starts_with("wraft_"))
            .collect();
        documented.sort_unstable();
        documented.dedup();
        let mut declared = names::ALL.to_vec();
        declared.sort_unstable();
        assert_eq!(documented, declared);
    }

    /// The Grafana dashboard in docs/ queries only metrics the node serves (a histogram's
    /// `_bucket`, `_count` and `_sum` series are its own), and every panel has a query.
    #[test]
    fn the_grafana_dashboard_queries_declared_metrics() {
        let text = include_str!("../../../docs/grafana-dashboard.json");
        let dashboard: serde_json::Value = serde_json::from_str(text).expect("dashboard JSON");
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(panels.len() >= 10, "{} panels", panels.len());
        let mut used = 0;
        for panel in panels {
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
            for target in targets {
                let expr = target["expr"].as_str().expect("a PromQL expression");
                let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
                for word in words.filter(|w| w.starts_with("wraft_")) {
                    let family = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|suffix| word.strip_suffix(suffix))
                        .filter(|base| names::ALL.contains(base))
                        .unwrap_or(word);
                    assert!(
                        names::ALL.contains(&family),
                        "panel {} queries {word}, which the node does not serve",
                        panel["title"]
                    );
                    used += 1;
                }
            }
        }
        assert!(used > 0);
    }
}
