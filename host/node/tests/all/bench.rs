//! `wraft bench` as a user runs it: a local cluster of real processes, closed-loop clients,
//! the floors and the JSON report.

use serde_json::Value;

use crate::cli::{free_ports, text, wraft};

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

#[test]
fn bench_measures_a_local_cluster_and_cleans_up() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = dir.path().to_str().expect("utf-8 path");
    let port = free_ports().to_string();
    let out = wraft(
        dir.path(),
        &[
            "bench",
            "--dir",
            base,
            "--port",
            &port,
            "--secs",
            "1",
            "--clients",
            "1,4",
            "--size",
            "256,1024",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json report");

    assert!(num(&report, &["fdatasync", "p50_us"]) > 0.0, "{report}");
    assert!(num(&report, &["round_trip", "p50_us"]) > 0.0, "{report}");
    let rows = report["rows"].as_array().expect("rows");
    let shape: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| (num(r, &["command_bytes"]), num(r, &["clients"])))
        .collect();
    assert_eq!(
        shape,
        [(256.0, 1.0), (256.0, 4.0), (1024.0, 1.0), (1024.0, 4.0)]
    );
    for r in rows {
        assert!(num(r, &["commits"]) >= 1.0, "{r}");
        assert!(num(r, &["commits_per_sec"]) > 0.0, "{r}");
        let (p50, p99, max) = (
            num(r, &["latency", "p50_us"]),
            num(r, &["latency", "p99_us"]),
            num(r, &["latency", "max_us"]),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max * 1.001, "{r}");
        assert!(num(r, &["refused"]) <= num(r, &["commits"]), "{r}");
    }
    // One client never races itself: none of its blocks can be refused.
    assert_eq!(num(&rows[0], &["refused"]), 0.0, "{report}");
    let memory = report["memory"].as_array().expect("memory");
    assert_eq!(memory.len(), 3);
    for m in memory {
        assert!(num(m, &["rss_at_rest_bytes"]) > 1e6, "{m}");
        assert!(
            num(m, &["rss_peak_bytes"]) >= num(m, &["rss_at_rest_bytes"]),
            "{m}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "the bench left {left:?} behind");
}

#[test]
fn bench_refuses_zero_clients() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = wraft(dir.path(), &["bench", "--clients", "0"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--clients and --secs must be positive"),
        "{}",
        text(&out.stderr)
    );
}

/// `--http` drives the leader's HTTP JSON API (a keep-alive connection per loop), and
/// `--stages` reports where the leader's entries spent their time after each row: every
/// stage measured, the log flush and the apply taking time.
#[test]
fn bench_through_http_reports_the_leaders_stages() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = dir.path().to_str().expect("utf-8 path");
    let out = wraft(
        dir.path(),
        &[
            "bench",
            "--dir",
            base,
            "--secs",
            "1",
            "--clients",
            "1,4",
            "--http",
            "--stages",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(report["http"], Value::Bool(true), "{report}");
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{report}");
    for r in rows {
        assert!(num(r, &["commits"]) >= 1.0, "{r}");
        let stages = r["stages"].as_array().expect("stages");
        let names: Vec<&str> = stages
            .iter()
            .map(|s| s["stage"].as_str().expect("a stage's name"))
            .collect();
        assert_eq!(
            names,
            [
                "proposed_to_received",
                "received_to_submitted",
                "submitted_to_persisted",
                "persisted_to_committed",
                "committed_to_applied",
                "proposed_to_applied"
            ]
        );
        for s in stages {
            assert!(num(s, &["entries"]) >= 1.0, "{s}");
            assert!(num(s, &["p50_us"]) <= num(s, &["p99_us"]), "{s}");
        }
        let end_to_end = &stages[5];
        assert!(num(end_to_end, &["p50_us"]) > 0.0, "{end_to_end}");
    }
}
