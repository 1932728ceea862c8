//! `wraft init info` and `wraft init verify`: what a data directory holds, and whether its
//! stores agree with each other.

use std::fmt::Write as _;
use std::path::Path;

use super::{OpsError, at};
use crate::raft::{AppliedState, LogId, LogStore, LogSummary, Node, NodeId, StoredMembership};
use crate::state::{AppliedPosition, Divergence, FsmRecord, StateStore};
use openraft::Membership;
use wraft_core::{ModuleId, StateDigest};

/// The state env's side of a report.
#[derive(Debug, Clone)]
pub struct StateSummary {
    /// Last applied position.
    pub applied: Option<AppliedPosition>,
    /// Last applied log id and membership, as the raft layer stored them.
    pub raft: Option<(Option<LogId>, StoredMembership)>,
    /// FSM instances.
    pub fsms: Vec<(String, FsmRecord)>,
    /// Modules and their sizes.
    pub modules: Vec<(ModuleId, usize)>,
    /// The data file's size.
    pub file_bytes: u64,
    /// What `wraft compact` would give back.
    pub reclaimable_bytes: u64,
    /// The digest recorded at the last checkpoint.
    pub last_checkpoint: Option<StateDigest>,
    /// Set if a checkpoint found this node diverged.
    pub divergence: Option<Divergence>,
    /// The digest now (verify only).
    pub digest: Option<StateDigest>,
}

impl StateSummary {
    /// `fsm`'s state hash in hex, when the digest was computed (verify only).
    fn state_hash(&self, fsm: &str) -> Option<String> {
        let digest = self.digest.as_ref()?;
        let (_, hash) = digest.fsms.iter().find(|(n, _)| n.as_str() == fsm)?;
        Some(hex::encode(hash))
    }
}

/// What a data directory holds.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The raft env, if there is one.
    pub raft: Option<LogSummary>,
    /// The state env, if there is one.
    pub state: Option<StateSummary>,
    /// Snapshot files and their sizes.
    pub snapshots: Vec<(String, u64)>,
    /// Bytes under `cache/`.
    pub cache_bytes: u64,
    /// Inconsistencies found; empty means consistent.
    pub problems: Vec<String>,
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// Reads `data_dir` without changing it. With `verify`, also reads every module and FSM
/// keyspace (hashes), every snapshot file (checksums), and cross-checks the stores.
pub fn inspect(data_dir: &Path, verify: bool) -> Result<Report, OpsError> {
    if !data_dir.is_dir() {
        return Err(OpsError::Invalid(format!(
            "{} is not a directory",
            data_dir.display()
        )));
    }
    let mut report = Report::default();
    if data_dir.join("raft").exists() {
        let log = LogStore::open_read_only(data_dir).map_err(OpsError::Raft)?;
        let summary = log.summary().map_err(OpsError::Raft)?;
        report.problems.extend(summary.problems.iter().cloned());
        report.raft = Some(summary);
    }
    if data_dir.join("state").exists() {
        let store = StateStore::open_read_only(&data_dir.join("state"), false)?;
        report.state = Some(state_summary(&store, verify, &mut report.problems)?);
    }
    let snapshots = data_dir.join("snapshots");
    if let Ok(entries) = std::fs::read_dir(&snapshots) {
        for entry in entries {
            let path = entry.map_err(at(&snapshots))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let len = path.metadata().map_or(0, |m| m.len());
            if verify && path.extension().is_some_and(|e| e == "snap") {
                let checked = std::fs::File::open(&path)
                    .and_then(|mut f| crate::raft::verify_snapshot_file(&mut f));
                if let Err(e) = checked {
                    report.problems.push(format!("{}: {e}", path.display()));
                }
            }
            report.snapshots.push((name.unwrap_or_default(), len));
        }
    }
    report.cache_bytes = dir_bytes(&data_dir.join("cache"));
    if report.raft.is_none() && report.state.is_none() {
        return Err(OpsError::Invalid(format!(
            "{} is not a wraft data directory (no raft/ or state/)",
            data_dir.display()
        )));
    }
    cross_check(&mut report);
    Ok(report)
}

fn state_summary(
    store: &StateStore,
    verify: bool,
    problems: &mut Vec<String>,
) -> Result<StateSummary, OpsError> {
    if verify {
        problems.extend(store.check()?);
    }
    let raft = store
        .raft_state()?
        .map(|b| AppliedState::decode(&b).map(|a| (a.last, a.membership)))
        .transpose()
        .unwrap_or_else(|e| {
            problems.push(format!("the stored raft state does not decode: {e}"));
            None
        });
    let last_checkpoint = store.last_checkpoint()?;
    let digest = if verify { Some(store.digest()?) } else { None };
    if let (Some(now), Some(cp)) = (&digest, &last_checkpoint)
        && now.index == cp.index
    {
        for part in now.differences(cp) {
            problems.push(format!(
                "{part}: the state no longer matches the digest recorded at checkpoint {}",
                cp.index
            ));
        }
    }
    let divergence = store.divergence()?;
    if let Some(d) = &divergence {
        problems.push(format!("this node's {d}"));
    }
    Ok(StateSummary {
        applied: store.applied()?,
        raft,
        fsms: store.fsms()?,
        modules: store.modules()?,
        file_bytes: store.file_bytes()?,
        reclaimable_bytes: store.reclaimable_bytes()?,
        last_checkpoint,
        divergence,
        digest,
    })
}

/// Checks that the state env can resume from the raft env: nothing between the applied index
/// and the log is missing, and the applied entry is the one in the log.
fn cross_check(report: &mut Report) {
    let (Some(log), Some(state)) = (&report.raft, &report.state) else {
        return;
    };
    let applied = state.applied.map_or(0, |a| a.index);
    if let Some(p) = log.purged
        && state.applied.is_none_or(|a| a.index < p.index)
    {
        report.problems.push(format!(
            "the state was applied up to {applied} but the log was purged up to {}: \
             entries {}..={} are gone",
            p.index,
            applied + 1,
            p.index
        ));
    }
    if let (Some(a), Some((Some(raft_applied), _))) = (state.applied, &state.raft)
        && (raft_applied.index != a.index || raft_applied.leader_id.term != a.term)
    {
        report.problems.push(format!(
            "the state's applied position ({}, term {}) disagrees with its raft state ({}, term {})",
            a.index, a.term, raft_applied.index, raft_applied.leader_id.term
        ));
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// `voters 1 (127.0.0.1:7101), 2 (…); learners none`
fn members(m: &Membership<NodeId, Node>) -> String {
    let list = |ids: Vec<NodeId>| {
        if ids.is_empty() {
            return "none".to_string();
        }
        ids.iter()
            .map(|id| match m.get_node(id) {
                Some(n) => format!("{id} ({})", n.addr),
                None => id.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "voters {}; learners {}",
        list(m.voter_ids().collect()),
        list(m.learner_ids().collect())
    )
}

/// What the stored vote and membership say this node was when it stopped.
fn role(r: &LogSummary) -> String {
    let Some(owner) = r.owner else {
        return "unknown (no owner recorded: the node never started)".into();
    };
    let member = r.membership.as_ref().map(|(_, m)| m);
    let leader = r
        .vote
        .is_some_and(|v| v.committed && v.leader_id.node_id == owner);
    match member {
        Some(m) if m.voter_ids().any(|v| v == owner) && leader => format!("node {owner}, leader"),
        Some(m) if m.voter_ids().any(|v| v == owner) => format!("node {owner}, voter"),
        Some(m) if m.learner_ids().any(|v| v == owner) => format!("node {owner}, learner"),
        _ => format!("node {owner}, not a member of the stored membership"),
    }
}

fn log_id(l: &Option<LogId>) -> String {
    l.map_or("none".into(), |l| {
        format!("{} (term {})", l.index, l.leader_id.term)
    })
}

impl Report {
    /// A human-readable report.
    pub fn render(&self) -> String {
        let mut o = String::new();
        if let Some(r) = &self.raft {
            let _ = writeln!(
                o,
                "raft/   {} ({} reclaimable by `wraft compact`)",
                bytes(r.file_bytes),
                bytes(r.reclaimable_bytes)
            );
            let _ = writeln!(o, "  role          {}", role(r));
            let vote = r.vote.map_or("none".into(), |v| {
                format!(
                    "term {}, for node {}{}",
                    v.leader_id.term,
                    v.leader_id.node_id,
                    if v.committed { " (leader)" } else { "" }
                )
            });
            let _ = writeln!(o, "  vote          {vote}");
            let _ = writeln!(
                o,
                "  log           {} entries: first {}, last {}; purged up to {}",
                r.entries,
                log_id(&r.first),
                log_id(&r.last),
                log_id(&r.purged)
            );
            let _ = writeln!(o, "  committed     {}", log_id(&r.committed));
            if let Some((at, m)) = &r.membership {
                let _ = writeln!(o, "  membership    {} (log entry {})", members(m), at.index);
            }
        }
        if let Some(s) = &self.state {
            let _ = writeln!(
                o,
                "state/  {} ({} reclaimable by `wraft compact`)",
                bytes(s.file_bytes),
                bytes(s.reclaimable_bytes)
            );
            let applied = s.applied.map_or("nothing".into(), |a| {
                format!("{} (term {})", a.index, a.term)
            });
            let _ = writeln!(o, "  applied       {applied}");
            if let Some((_, m)) = &s.raft {
                let _ = writeln!(o, "  membership    {}", members(m.membership()));
            }
            for (name, rec) in &s.fsms {
                let hash = s
                    .state_hash(name)
                    .map_or(String::new(), |h| format!(", state {h}"));
                let _ = writeln!(o, "  fsm           {name}: module {}{hash}", rec.module_id);
            }
            for (id, size) in &s.modules {
                let _ = writeln!(o, "  module        {id} ({})", bytes(*size as u64));
            }
            match &s.last_checkpoint {
                Some(c) => {
                    let _ = writeln!(o, "  checkpoint    at {}", c.index);
                }
                None => {
                    let _ = writeln!(o, "  checkpoint    none yet");
                }
            }
            if let Some(d) = &s.divergence {
                let _ = writeln!(o, "  DIVERGED      {d}");
            }
        }
        let snaps: u64 = self.snapshots.iter().map(|(_, n)| n).sum();
        let _ = writeln!(
            o,
            "snapshots/ {} in {} files",
            bytes(snaps),
            self.snapshots.len()
        );
        let _ = writeln!(o, "cache/  {}", bytes(self.cache_bytes));
        o
    }
}

fn log_id_json(l: &Option<LogId>) -> serde_json::Value {
    l.map_or(
        serde_json::Value::Null,
        |l| serde_json::json!({ "index": l.index, "term": l.leader_id.term }),
    )
}

/// `{"voters": [{"id": 1, "addr": "..."}], "learners": [...]}`
fn members_json(m: &Membership<NodeId, Node>) -> serde_json::Value {
    let list = |ids: Vec<NodeId>| -> Vec<serde_json::Value> {
        ids.iter()
            .map(|id| {
                let addr = m.get_node(id).map(|n| n.addr.clone());
                serde_json::json!({ "id": id, "addr": addr })
            })
            .collect()
    };
    serde_json::json!({
        "voters": list(m.voter_ids().collect()),
        "learners": list(m.learner_ids().collect()),
    })
}

impl Report {
    /// The report for machines (`wraft init info --json`): the same facts as
    /// [`Report::render`], sizes in bytes, log positions as `{"index", "term"}` (or null).
    pub fn to_json(&self) -> serde_json::Value {
        let raft = self.raft.as_ref().map(|r| {
            serde_json::json!({
                "file_bytes": r.file_bytes,
                "reclaimable_bytes": r.reclaimable_bytes,
                "owner": r.owner,
                "role": role(r),
                "vote": r.vote.map(|v| serde_json::json!({
                    "term": v.leader_id.term,
                    "node": v.leader_id.node_id,
                    "committed": v.committed,
                })),
                "entries": r.entries,
                "first": log_id_json(&r.first),
                "last": log_id_json(&r.last),
                "purged": log_id_json(&r.purged),
                "committed": log_id_json(&r.committed),
                "membership": r.membership.as_ref().map(|(at, m)| {
                    let mut j = members_json(m);
                    j["log_index"] = at.index.into();
                    j
                }),
            })
        });
        let state = self.state.as_ref().map(|s| {
            serde_json::json!({
                "file_bytes": s.file_bytes,
                "reclaimable_bytes": s.reclaimable_bytes,
                "applied": s.applied.map(|a| serde_json::json!({ "index": a.index, "term": a.term })),
                "membership": s.raft.as_ref().map(|(_, m)| members_json(m.membership())),
                "fsms": s.fsms.iter().map(|(name, rec)| serde_json::json!({
                    "name": name,
                    "module_id": rec.module_id.to_string(),
                    "state_hash": s.state_hash(name),
                })).collect::<Vec<_>>(),
                "modules": s.modules.iter().map(|(id, size)| serde_json::json!({
                    "module_id": id.to_string(),
                    "bytes": size,
                })).collect::<Vec<_>>(),
                "last_checkpoint": s.last_checkpoint.as_ref().map(|c| c.index),
                "divergence": s.divergence.as_ref().map(|d| serde_json::json!({
                    "checkpoint": d.checkpoint,
                    "detected_at": d.detected_at,
                    "parts": d.parts,
                })),
            })
        });
        serde_json::json!({
            "raft": raft,
            "state": state,
            "snapshots": self.snapshots.iter().map(|(name, bytes)| serde_json::json!({
                "file": name,
                "bytes": bytes,
            })).collect::<Vec<_>>(),
            "cache_bytes": self.cache_bytes,
            "problems": self.problems,
        })
    }
}
