//! Operations: `wraft init generate` (all nodes start as equals), `init verify` against
//! hand-corrupted stores, consistency checkpoints catching an altered replica, and hot
//! backup and restore under write load. Real processes or real in-process clusters over
//! QUIC, real LMDB, real wasm.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use heed::types::Bytes;
use heed::{Database, EnvOpenOptions};
use openraft::EntryPayload;
use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::type_config::async_runtime::WatchReceiver;
use wraft_api::Role;
use wraft_api::{ApiError, Consistency, Payload};
use wraft_core::FsmName;
use wraft_host::raft::{LogStore, SnapshotPolicy};
use wraft_host::state::{AppliedPosition, Committed, StateStore};

use crate::cli::{WRAFT, free_ports, text, wraft};
use crate::cluster::{Cluster, Incrementer, increments, setup_probe};
use crate::common::runtime;

const INCR: &str = r#"{"Incr":{"key":[110]}}"#;
const GET: &str = r#"{"Get":{"key":[110]}}"#;

fn p() -> FsmName {
    FsmName::new("p").expect("name")
}

/// `wraft serve` children, killed when dropped.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `wraft` and returns (success, stdout, stderr).
fn run(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let out = wraft(cwd, args);
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Flips the last byte of the value stored under the last key of `table` whose key passes
/// `pick`, in the LMDB env at `env_dir` (the node must be stopped). Returns the key.
fn corrupt(env_dir: &Path, table: &str, pick: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut opts = EnvOpenOptions::new();
    opts.map_size(64 << 30).max_dbs(8);
    // SAFETY: the env's node is stopped; nothing else maps it in this process.
    let env = unsafe { opts.open(env_dir) }.expect("open env");
    let mut wtxn = env.write_txn().expect("txn");
    let db: Database<Bytes, Bytes> = env
        .open_database(&wtxn, Some(table))
        .expect("open table")
        .expect("table exists");
    let (key, mut value) = db
        .iter(&wtxn)
        .expect("iter")
        .filter_map(Result::ok)
        .filter(|(k, _)| pick(k))
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .last()
        .expect("a record to corrupt");
    let last = value.len() - 1;
    value[last] ^= 0x5a;
    db.put(&mut wtxn, &key, &value).expect("put");
    wtxn.commit().expect("commit");
    key
}

pub(crate) fn admin_args(c: &Cluster, dir: &Path, ids: &[u64]) -> Vec<String> {
    let admin = c.ca.client("operator", Role::Admin).expect("admin cert");
    for (name, pem) in [
        ("ca.pem", &c.ca.cert_pem),
        ("admin.pem", &admin.cert_pem),
        ("admin.key", &admin.key_pem),
    ] {
        std::fs::write(dir.join(name), pem).expect("write pem");
    }
    let nodes: Vec<String> = ids
        .iter()
        .map(|id| c.addrs[*id as usize - 1].to_string())
        .collect();
    let d = |f: &str| dir.join(f).display().to_string();
    vec![
        "--nodes".into(),
        nodes.join(","),
        "--client-ca".into(),
        d("ca.pem"),
        "--client-cert".into(),
        d("admin.pem"),
        "--client-key".into(),
        d("admin.key"),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The leader a `cluster status` answer names (`..., leader 2, ...`); `None` for `leader -`.
fn leader_in(status: &str) -> Option<u64> {
    let rest = &status[status.find(", leader ")? + ", leader ".len()..];
    rest[..rest.find(',')?].parse().ok()
}

/// `wraft init generate` arguments for a 3-node cluster at `addrs` into `data/`.
fn generate_args(addrs: &[String], leader: u64, term: u64) -> Vec<String> {
    let args = format!(
        "init generate --ids 1,2,3 --initial-leader {leader} --initial-term {term} \
         --output-dir data --nodes {}",
        addrs.join(",")
    );
    args.split_whitespace().map(String::from).collect()
}

/// Certificates (`certs/`) and generated data directories (`data/node-N`) in `cwd` for a
/// 3-node cluster on free loopback ports; returns the nodes' addresses.
fn generated_cluster(cwd: &Path, leader: u64, term: u64) -> Vec<String> {
    let (ok, _, err) = run(cwd, &["cert", "--out", "certs", "--nodes", "1,2,3"]);
    assert!(ok, "{err}");
    let port = free_ports();
    let addrs: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", port + i)).collect();
    let (ok, _, err) = run(cwd, &strs(&generate_args(&addrs, leader, term)));
    assert!(ok, "{err}");
    addrs
}

#[test]
fn generated_nodes_start_as_equals_and_elect_a_leader() {
    let dir = tempfile::tempdir().expect("tmp");
    let cwd = dir.path();
    let addrs = generated_cluster(cwd, 2, 7);
    let (ok, _, err) = run(cwd, &strs(&generate_args(&addrs, 2, 7)));
    assert!(
        !ok && err.contains("--force"),
        "a second generate must refuse: {err}"
    );
    // All three at once, with no --initial-members and no bootstrap call.
    let mut nodes = Nodes(Vec::new());
    for (i, addr) in addrs.iter().enumerate() {
        let id = (i + 1).to_string();
        let child = Command::new(WRAFT)
            .current_dir(cwd)
            .args(["serve", "--id", &id, "--listen", addr])
            .args([
                "--data-dir",
                &format!("data/node-{id}"),
                "--ca",
                "certs/ca.pem",
            ])
            .args(["--cert", &format!("certs/node-{id}.pem")])
            .args(["--key", &format!("certs/node-{id}.key")])
            .env("WRAFT_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start wraft serve");
        nodes.0.push(child);
    }
    let conn = [
        "--nodes",
        &addrs.join(","),
        "--client-ca",
        "certs/ca.pem",
        "--client-cert",
        "certs/admin.pem",
        "--client-key",
        "certs/admin.key",
    ];
    let started = Instant::now();
    let status = loop {
        let mut args = vec!["cluster", "status"];
        args.extend(conn);
        let (ok, out, _) = run(cwd, &args);
        // The seeded vote names leader 2 in term 7, but no node resumes a seeded or old term
        // (see cluster.rs): node 2 campaigns at once, so a leader of a later term appears,
        // normally node 2 (another node wins if node 2's first campaign finds them not yet
        // listening).
        if ok && leader_in(&out).is_some() && !out.contains("term 7,") {
            break out;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no leader in a term after 7: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.contains("(Leader)") || status.contains("(Follower)"),
        "{status}"
    );
    // Writes work.
    let wasm = cwd.join("probe.wasm");
    std::fs::write(&wasm, wraft_fsm_artifacts::PROBE).expect("write wasm");
    let mut args = vec!["module", "deploy", wasm.to_str().expect("path")];
    args.extend(conn);
    let (ok, id, err) = run(cwd, &args);
    assert!(ok, "{err}");
    let id = id.trim().to_string();
    let mut args = vec!["fsm", "create", "p", "--module", &id];
    args.extend(conn);
    let (ok, _, err) = run(cwd, &args);
    assert!(ok, "{err}");
    for n in 1..=3 {
        let mut args = vec!["apply", "p", INCR];
        args.extend(conn);
        let (ok, out, err) = run(cwd, &args);
        assert!(ok, "{err}");
        assert_eq!(out.trim(), format!(r#"{{"Number":{n}}}"#));
    }
    // `info` beside a running node: the leader, which has applied every write above (a
    // follower may still be compiling the module). Usually node 2, not always (above).
    let mut args = vec!["cluster", "status"];
    args.extend(conn);
    let (ok, status, err) = run(cwd, &args);
    assert!(ok, "{err}");
    let leader = leader_in(&status).unwrap_or_else(|| panic!("no leader in: {status}"));
    let dir = format!("data/node-{leader}");
    let (ok, info, err) = run(cwd, &["init", "info", "--state-dir", &dir]);
    assert!(ok, "{err}");
    assert!(info.contains(&format!("node {leader}, leader")), "{info}");
    assert!(info.contains("fsm           p: module"), "{info}");
    drop(nodes);
    for id in 1..=3 {
        let dir = format!("data/node-{id}");
        let (ok, out, err) = run(cwd, &["init", "verify", "--state-dir", &dir]);
        assert!(ok, "{out}{err}");
        assert!(out.contains("is consistent"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_corrupted_log_entry_and_a_corrupted_module() {
    let mut c = Cluster::start(1, SnapshotPolicy::default()).await;
    setup_probe(&c.leader().await.raft).await;
    increments(&c.leader().await.raft, 5).await;
    c.stop_all().await;
    let data = c.data_dir(1).to_path_buf();
    let arg = data.display().to_string();
    let cwd = data.parent().expect("parent");
    let (ok, out, err) = run(cwd, &["init", "verify", "--state-dir", &arg]);
    assert!(ok, "an intact store verifies: {out}{err}");
    // One flipped byte in a log entry (keys: group u64 BE, index u64 BE).
    let key = corrupt(&data.join("raft"), "logs", |_| true);
    let index = u64::from_be_bytes(key[8..16].try_into().expect("index"));
    let (ok, _, err) = run(cwd, &["init", "verify", "--state-dir", &arg]);
    assert!(!ok, "verify must fail");
    assert!(
        err.contains(&format!("raft log entry {index}: checksum mismatch")),
        "{err}"
    );
    corrupt(&data.join("raft"), "logs", |k| k == key.as_slice()); // flips it back
    let (ok, out, err) = run(cwd, &["init", "verify", "--state-dir", &arg]);
    assert!(ok, "{out}{err}");
    // One flipped byte in a stored module (keys: group u64 BE, module id).
    let key = corrupt(&data.join("state"), "modules", |_| true);
    let id = wraft_core::ModuleId(key[8..40].try_into().expect("id"));
    let (ok, _, err) = run(cwd, &["init", "verify", "--state-dir", &arg]);
    assert!(!ok, "verify must fail");
    assert!(err.contains(&format!("module {id}: its ")), "{err}");
    assert!(err.contains("stored bytes hash to"), "{err}");
}

/// The node's answer to a stale read of the probe counter.
async fn stale_read(c: &Cluster, id: u64) -> Result<Payload, wraft_client::ClientError> {
    c.client(Role::Reader, &[id])
        .with_patience(Duration::from_secs(1))
        .query_json(&p(), GET, Consistency::Stale)
        .await
}

/// Node `id`'s `/readyz` answer.
async fn readyz(c: &Cluster, id: u64) -> (u16, String) {
    c.http_port(id).request("GET", "/readyz", &[], b"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_replica_is_caught_by_the_next_checkpoint_and_repaired_from_a_backup() {
    let mut c = Cluster::start_checkpointing(3, Duration::from_millis(200)).await;
    let leader = c.leader().await.id;
    setup_probe(&c.node(leader).raft).await;
    increments(&c.node(leader).raft, 5).await;
    let victim = (1..=3).find(|id| *id != leader).expect("a follower");
    c.converged_hashes().await;
    assert!(stale_read(&c, victim).await.is_ok());
    // Behind the cluster's back: one byte of the FSM's data changes on disk.
    c.stop(victim).await;
    corrupt(&c.data_dir(victim).join("state"), "data", |_| true);
    c.restart(victim).await;
    let started = Instant::now();
    let divergence = loop {
        increments(&c.node(leader).raft, 1).await;
        if let Some(d) = c.node(victim).store.divergence().expect("read") {
            break d;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no checkpoint caught the altered replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(divergence.parts, vec!["fsm p".to_string()], "{divergence}");
    // It stops serving reads; the healthy nodes do not.
    match stale_read(&c, victim).await {
        Err(wraft_client::ClientError::Api(ApiError::Unavailable(m))) => {
            assert!(m.contains("diverged"), "{m}")
        }
        other => panic!("a diverged replica must refuse reads: {other:?}"),
    }
    let (status, body) = readyz(&c, victim).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("diverged"), "{body}");
    for id in (1..=3).filter(|id| *id != victim) {
        assert_eq!(readyz(&c, id).await.0, 200);
        assert!(c.node(id).store.divergence().expect("read").is_none());
        assert!(stale_read(&c, id).await.is_ok());
    }
    // Repair: restore a healthy node's backup over its state, restart, catch up.
    let tmp = tempfile::tempdir().expect("tmp");
    let conn = admin_args(&c, tmp.path(), &[leader]);
    let backup = tmp.path().join("backup");
    let mut args = vec!["backup", "--out", backup.to_str().expect("path")];
    args.extend(strs(&conn));
    let (ok, out, err) = run(tmp.path(), &args);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("backup of node {leader}")), "{out}");
    c.stop(victim).await;
    let target = c.data_dir(victim).display().to_string();
    let restore = [
        "restore",
        "--backup",
        backup.to_str().expect("path"),
        "--state-dir",
        &target,
    ];
    let (ok, _, err) = run(tmp.path(), &restore);
    assert!(
        !ok && err.contains("--force"),
        "restore must refuse without --force: {err}"
    );
    let mut forced = restore.to_vec();
    forced.push("--force");
    let (ok, _, err) = run(tmp.path(), &forced);
    assert!(ok, "{err}");
    c.restart(victim).await;
    increments(&c.node(leader).raft, 3).await;
    let hashes = c.converged_hashes().await;
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    assert!(c.node(victim).store.divergence().expect("read").is_none());
    assert!(
        stale_read(&c, victim).await.is_ok(),
        "the repaired replica serves reads"
    );
    assert_eq!(readyz(&c, victim).await.0, 200);
    c.stop_all().await;
}

/// Applies the log entries `1..=upto` of the raft env in `data_dir` to a fresh state store
/// in `scratch`, and returns the digest of FSM "p" (an independent replay).
async fn replayed_hash(data_dir: &Path, scratch: &Path, upto: u64) -> [u8; 32] {
    let mut log = LogStore::open_read_only(data_dir).expect("raft env");
    let entries = log
        .get_log_reader()
        .await
        .try_get_log_entries(0..=upto)
        .await
        .expect("entries");
    assert_eq!(
        entries.first().map(|e| e.log_id.index),
        Some(0),
        "log not purged"
    );
    let store = StateStore::open(scratch, runtime()).expect("scratch store");
    let committed: Vec<Committed<'_>> = entries
        .iter()
        .filter(|e| e.log_id.index > 0)
        .map(|e| Committed {
            position: AppliedPosition {
                index: e.log_id.index,
                term: e.log_id.leader_id.term,
            },
            entry: match &e.payload {
                EntryPayload::Normal(entry) => Some(entry),
                _ => None,
            },
        })
        .collect();
    store.apply(&committed, None).expect("replay");
    store.fsm_hash(&p()).expect("hash").expect("fsm p")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_backup_under_write_load_restores_into_a_new_node_that_catches_up() {
    let mut c = Cluster::start(3, SnapshotPolicy::default()).await;
    let leader = c.leader().await.id;
    setup_probe(&c.node(leader).raft).await;
    let source = (1..=3).find(|id| *id != leader).expect("a follower");
    // A steady write load through the API while the backup is taken.
    let writer = Incrementer::start(c.client(Role::Writer, &[leader]));
    writer.wait_for_more(20).await;
    // The backup is the source's own state: wait until it has applied some of the load (on
    // a loaded machine a follower may trail the acknowledgements by many entries).
    let deadline = Instant::now() + Duration::from_secs(60);
    while c
        .node(source)
        .raft
        .metrics()
        .borrow_watched()
        .last_applied
        .as_ref()
        .map_or(0, |l| l.index)
        <= 20
    {
        assert!(
            Instant::now() < deadline,
            "node {source} never applied 20 entries"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let conn = admin_args(&c, tmp.path(), &[source]);
    let backup = tmp.path().join("backup");
    let mut args = vec![
        "backup".to_string(),
        "--out".into(),
        backup.display().to_string(),
    ];
    args.extend(conn);
    let out = tokio::task::spawn_blocking(move || {
        let cwd = std::env::temp_dir();
        run(&cwd, &strs(&args))
    })
    .await
    .expect("backup process");
    assert!(out.0, "{}", out.2);
    writer.wait_for_more(20).await;
    writer.stop().await;
    let manifest: wraft_api::BackupManifest =
        serde_json::from_slice(&std::fs::read(backup.join("manifest.json")).expect("manifest"))
            .expect("manifest json");
    assert_eq!(manifest.node, source);
    assert!(manifest.applied_index > 20, "{manifest:?}");
    // A damaged copy of the backup (one byte of its state file flipped) is refused, naming
    // the damage, and the target directory is left as it was.
    let damaged = tmp.path().join("damaged-backup");
    std::fs::create_dir_all(&damaged).expect("mkdir");
    for f in ["manifest.json", "state.mdb"] {
        std::fs::copy(backup.join(f), damaged.join(f)).expect("copy the backup");
    }
    let mut bytes = std::fs::read(damaged.join("state.mdb")).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(damaged.join("state.mdb"), bytes).expect("write");
    let untouched = tmp.path().join("untouched");
    std::fs::create_dir_all(&untouched).expect("mkdir");
    let (ok, _, err) = run(
        tmp.path(),
        &[
            "restore",
            "--backup",
            damaged.to_str().expect("path"),
            "--state-dir",
            untouched.to_str().expect("path"),
        ],
    );
    assert!(!ok, "a damaged backup was restored");
    assert!(err.contains("the backup is damaged"), "{err}");
    assert_eq!(
        std::fs::read_dir(&untouched).expect("dir").count(),
        0,
        "a refused restore wrote into the data directory"
    );
    // Restored into a new node's empty data directory, with the CLI.
    let new_dir: PathBuf = c.prepare_node_dir();
    let (ok, out, err) = run(
        tmp.path(),
        &[
            "restore",
            "--backup",
            backup.to_str().expect("path"),
            "--state-dir",
            new_dir.to_str().expect("path"),
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("applied index {}", manifest.applied_index)),
        "{out}"
    );
    // Same state hash at the backup's applied index as an independent replay of the
    // cluster's log up to that index.
    let restored = StateStore::open_read_only(&new_dir.join("state"), false).expect("restored");
    assert_eq!(
        restored.applied().expect("applied").map(|a| a.index),
        Some(manifest.applied_index)
    );
    let restored_hash = restored.fsm_hash(&p()).expect("hash").expect("fsm p");
    drop(restored);
    assert_eq!(
        hex::encode(restored_hash),
        manifest.fsms.iter().find(|(n, _)| n == "p").expect("p").1
    );
    // Restored over a data directory whose state env was left open across a reboot (a power
    // loss): the restored env is complete and synced, so its mark goes; kept, the node
    // would discard the restored state at start as a torn env (and the offline tools refuse
    // it).
    let lost: PathBuf = tmp.path().join("after-power-loss");
    std::fs::create_dir_all(lost.join("state")).expect("mkdir");
    std::fs::write(
        lost.join("state").join(wraft_host::state::unflushed::MARK),
        "an-earlier-boot",
    )
    .expect("mark");
    let (ok, _, err) = run(
        tmp.path(),
        &[
            "restore",
            "--backup",
            backup.to_str().expect("path"),
            "--state-dir",
            lost.to_str().expect("path"),
            "--force",
        ],
    );
    assert!(ok, "{err}");
    StateStore::open_read_only(&lost.join("state"), false).expect("the restored env is trusted");
    c.stop(leader).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let replayed = replayed_hash(c.data_dir(leader), scratch.path(), manifest.applied_index).await;
    assert_eq!(
        restored_hash, replayed,
        "the backup is the log's state at its index"
    );
    c.restart(leader).await;
    // The new node starts from the backup and catches up once added.
    let new_id = c.add_prepared_node().await;
    assert_eq!(
        c.node(new_id)
            .store
            .applied()
            .expect("applied")
            .map(|a| a.index),
        Some(manifest.applied_index),
        "the new node starts at the backup's index"
    );
    let admin = c.client(Role::Admin, &[leader]);
    admin
        .request(wraft_api::ApiRequest::AddLearner {
            id: new_id,
            addr: c.addrs[new_id as usize - 1].to_string(),
        })
        .await
        .expect("add learner");
    increments(&c.leader().await.raft, 3).await;
    let hashes = c.converged_hashes().await;
    assert_eq!(hashes.len(), 4);
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    c.stop_all().await;
}

/// Starts `wraft serve` for node `id` of a `wraft init generate`d cluster in `cwd`; with
/// `file_limit_kib`, under `ulimit -f` (writes past it fail with EFBIG: a full disk).
fn serve(cwd: &Path, id: u64, addr: &str, file_limit_kib: Option<u64>) -> Child {
    let log = std::fs::File::create(cwd.join(format!("node-{id}.log"))).expect("log file");
    let serve = format!(
        "exec {WRAFT} serve --id {id} --listen {addr} --data-dir data/node-{id} \
         --ca certs/ca.pem --cert certs/node-{id}.pem --key certs/node-{id}.key"
    );
    let script = match file_limit_kib {
        // SIGXFSZ ignored, so the write returns EFBIG instead of killing the process.
        Some(kib) => format!("trap '' XFSZ; ulimit -f {kib}; {serve}"),
        None => serve,
    };
    Command::new("bash")
        .current_dir(cwd)
        .args(["-c", &script])
        .env("WRAFT_LOG", "error")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start wraft serve")
}

/// The `fsm` and `applied` lines `wraft init verify` prints for a stopped node's directory.
fn verified_state(cwd: &Path, id: u64) -> String {
    let dir = format!("data/node-{id}");
    let (ok, out, err) = run(cwd, &["init", "verify", "--state-dir", &dir]);
    assert!(ok, "node {id}: {out}{err}");
    out.lines()
        .filter(|l| l.trim_start().starts_with("fsm") || l.trim_start().starts_with("applied"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_stops_with_a_clear_error_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let cwd = dir.path();
    let addrs = generated_cluster(cwd, 1, 1);
    let mut nodes = Nodes(vec![
        serve(cwd, 1, &addrs[0], None),
        serve(cwd, 2, &addrs[1], None),
        serve(cwd, 3, &addrs[2], Some(4096)),
    ]);
    let read = |f: &str| std::fs::read_to_string(cwd.join(f)).expect("pem");
    let identity = wraft_transport_quic::TlsIdentity::from_pem(
        &read("certs/ca.pem"),
        &read("certs/admin.pem"),
        &read("certs/admin.key"),
    )
    .expect("identity");
    let client = wraft_client::Client::new(addrs[..2].to_vec(), &identity)
        .expect("client")
        .with_patience(Duration::from_secs(30));
    let probe = wraft_fsm_artifacts::PROBE;
    crate::common::deploy_and_create(&client, p(), probe, wraft_core::FsmLimits::default()).await;
    // 64 KiB values until node 3's 4 MiB file limit stops it; the others keep acknowledging.
    let value: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut written = 0u32;
    let started = Instant::now();
    let status = loop {
        let key = written.to_be_bytes().to_vec();
        let cmd = serde_json::json!({"Put": {"key": key, "value": value}}).to_string();
        client
            .apply_json(&p(), &cmd)
            .await
            .expect("the cluster keeps serving");
        written += 1;
        if let Some(status) = nodes.0[2].try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "node 3 never hit its file limit ({written} writes)"
        );
    };
    assert!(!status.success(), "node 3 must exit with an error");
    let log = std::fs::read_to_string(cwd.join("node-3.log")).expect("log");
    assert!(log.contains("node 3 stopped"), "{log}");
    assert!(log.contains("free on that filesystem"), "{log}");
    // Two of three still acknowledge writes.
    for i in 0..10u32 {
        let cmd = serde_json::json!({"Put": {"key": (1_000_000 + i).to_be_bytes(), "value": [1]}});
        client
            .apply_json(&p(), &cmd.to_string())
            .await
            .expect("quorum of two");
    }
    // Its stores are intact; restarted with room, it catches up.
    let (ok, out, err) = run(cwd, &["init", "verify", "--state-dir", "data/node-3"]);
    assert!(ok, "a full disk must not corrupt: {out}{err}");
    nodes.0[2] = serve(cwd, 3, &addrs[2], None);
    let leader_applied = client.status().await.expect("status").applied;
    let node3 = wraft_client::Client::new(vec![addrs[2].clone()], &identity)
        .expect("client")
        .with_patience(Duration::from_secs(30));
    let started = Instant::now();
    while node3.status().await.map(|s| s.applied).ok().flatten() < leader_applied {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "node 3 did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // the last commit index reaches all
    drop(nodes);
    let states: Vec<String> = (1..=3).map(|id| verified_state(cwd, id)).collect();
    assert!(states[0].contains("fsm           p:"), "{}", states[0]);
    assert_eq!(states[0], states[1]);
    assert_eq!(states[0], states[2], "node 3 reached the same state");
}
