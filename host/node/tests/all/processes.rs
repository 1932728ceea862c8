//! Real `wraft serve` processes for the cluster tests: certificates, the nodes of a cluster,
//! clients by role, waiting for convergence, and stopping, verifying and comparing data
//! directories. The fault suite (`faults`) and the other process tests share it.

use std::time::{Duration, Instant};

use wraft_api::{ApiRequest, Payload};
use wraft_client::Client;
use wraft_core::{FsmLimits, FsmName};
use wraft_faults::process::{NodeProcess, NodeSpec};
use wraft_faults::proxy::NodeId;

use crate::cli::{WRAFT, free_udp_ports, text};
/// The binary under test: this build's, or `WRAFT_FAULT_BIN` (a long run can use a frozen
/// copy while the tree is rebuilt).
fn wraft_bin() -> std::path::PathBuf {
    std::env::var_os("WRAFT_FAULT_BIN").map_or_else(|| WRAFT.into(), Into::into)
}

pub(crate) fn wraft(cwd: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(wraft_bin())
        .current_dir(cwd)
        .args(args)
        .env("WRAFT_LOG", "error")
        .output()
        .expect("run wraft")
}

/// Certificates for nodes `ids` (and the client roles) under `dir/certs`.
pub(crate) fn certs_for(
    dir: &std::path::Path,
    ids: &[NodeId],
) -> Result<std::path::PathBuf, String> {
    let certs = dir.join("certs");
    let ids = ids
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = wraft(
        dir,
        &[
            "cert",
            "--out",
            certs.to_str().unwrap_or("certs"),
            "--nodes",
            &ids,
        ],
    );
    if !out.status.success() {
        return Err(format!("wraft cert: {}", text(&out.stderr)));
    }
    Ok(certs)
}

/// Node processes `ids` listening on `listen` (by position), logging and keeping data under
/// `dir`, under the preload library (so they can lose power and run out of disk); node 1
/// initializes the cluster with `members`.
pub(crate) fn node_processes(
    dir: &std::path::Path,
    certs: &std::path::Path,
    ids: &[NodeId],
    listen: &[std::net::SocketAddr],
    members: &str,
) -> Vec<NodeProcess> {
    ids.iter()
        .zip(listen)
        .map(|(&id, &listen)| {
            NodeProcess::new(
                &wraft_bin(),
                certs,
                dir.join(format!("node-{id}.log")),
                NodeSpec {
                    id,
                    listen,
                    data_dir: dir.join(format!("node-{id}")),
                    initial_members: (id == 1).then(|| members.to_string()),
                    unsynced_journal: Some(dir.join(format!("unsynced-{id}"))),
                },
            )
        })
        .collect()
}

/// Waits (90 s at most) until every node reports the same applied index ([`converge`]); on
/// a timeout the panic carries each node's state and the end of its log.
pub(crate) async fn caught_up(
    addrs: &[String],
    certs: &std::path::Path,
    nodes: &mut [NodeProcess],
) {
    let each: Vec<Client> = addrs
        .iter()
        .map(|a| Client::new(vec![a.clone()], &identity(certs, "admin")).expect("client"))
        .collect();
    let Err(last) = converge(&each, Instant::now() + Duration::from_secs(90)).await else {
        return;
    };
    let mut report = format!("the nodes never caught up: {last}");
    for n in nodes.iter_mut() {
        let running = n.running();
        let log = n.log();
        let lines: Vec<&str> = log.lines().collect();
        // A panic's message, which a long backtrace would push out of the tail.
        let panics: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains("panicked at"))
            .flat_map(|(i, _)| lines[i.saturating_sub(5)..(i + 3).min(lines.len())].to_vec())
            .collect();
        let tail = &lines[lines.len().saturating_sub(40)..];
        report.push_str(&format!(
            "\n--- node {} (running: {running}, exits: {:?}):\n{}{}",
            n.spec.id,
            n.exits,
            if panics.is_empty() {
                String::new()
            } else {
                format!("[panics]\n{}\n[end of log]\n", panics.join("\n"))
            },
            tail.join("\n")
        ));
    }
    panic!("{report}");
}

/// Three node processes (ids 1–3) on free 127.0.0.1 ports, not started, node 1
/// initializing the cluster, with certificates under `dir/certs`: the certificates'
/// directory, the nodes' addresses and the processes.
pub(crate) fn three_nodes(
    dir: &std::path::Path,
) -> (
    std::path::PathBuf,
    Vec<std::net::SocketAddr>,
    Vec<NodeProcess>,
) {
    let ids = [1, 2, 3];
    let certs = certs_for(dir, &ids).expect("certs");
    let base = free_udp_ports(3);
    let real: Vec<std::net::SocketAddr> = (0..3)
        .map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], base + i)))
        .collect();
    let members = real
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let nodes = node_processes(dir, &certs, &ids, &real, &members);
    (certs, real, nodes)
}

/// Three `wraft serve` processes with an HTTPS port each (their own certificates) accepting
/// `tokens` (`ROLE:TOKEN`), started with `extra` flags and log filter `log` (else the
/// default); returns the
/// certificates' directory, the QUIC addresses, node 1's HTTP port (node N's is N - 1 above
/// it) and the nodes.
pub(crate) fn three_nodes_serving_https(
    dir: &std::path::Path,
    tokens: &[String],
    extra: &[&str],
    log: Option<&str>,
) -> (std::path::PathBuf, Vec<String>, u16, Vec<NodeProcess>) {
    let (certs, real, mut nodes) = three_nodes(dir);
    let http_base = crate::cli::free_tcp_run(3);
    for n in &mut nodes {
        n.spec.unsynced_journal = None;
        if let Some(log) = log {
            n.log_filter = log.into();
        }
        let port = http_base + n.spec.id as u16 - 1;
        n.tuning = ["--http-listen".to_string(), format!("127.0.0.1:{port}")]
            .into_iter()
            .chain(
                tokens
                    .iter()
                    .flat_map(|t| ["--http-token".to_string(), t.clone()]),
            )
            .chain(extra.iter().map(|s| s.to_string()))
            .collect();
        n.start().expect("start");
    }
    let addrs = real.iter().map(ToString::to_string).collect();
    (certs, addrs, http_base, nodes)
}

/// Stops every node; each must stop cleanly (SIGTERM, exit 0).
pub(crate) fn stop_cleanly(nodes: &mut [NodeProcess]) {
    for n in nodes.iter_mut() {
        assert!(
            n.stop(),
            "node {} did not stop cleanly:\n{}",
            n.spec.id,
            n.log()
        );
    }
}

/// Stops every node (each must stop cleanly and never have exited on its own), requires
/// `wraft init verify` to pass on every data directory, runs `check` on each node's state,
/// and requires the state digests to agree.
pub(crate) fn stop_verify_and_compare(
    dir: &std::path::Path,
    nodes: &mut [NodeProcess],
    check: impl Fn(NodeId, &wraft_host::state::StateStore),
) {
    stop_cleanly(nodes);
    for n in nodes.iter() {
        assert!(
            n.exits.is_empty(),
            "node {} exited: {:?}",
            n.spec.id,
            n.exits
        );
    }
    let mut digests = Vec::new();
    for n in nodes.iter() {
        let (id, data) = (n.spec.id, &n.spec.data_dir);
        let out = wraft(
            dir,
            &[
                "init",
                "verify",
                "--state-dir",
                data.to_str().expect("utf-8"),
            ],
        );
        assert!(
            out.status.success(),
            "node {id}'s data directory needs repair: {}",
            text(&out.stdout)
        );
        let store = wraft_host::state::StateStore::open_read_only(&data.join("state"), false)
            .expect("state");
        check(id, &store);
        digests.push((id, store.digest().expect("digest")));
    }
    for (id, d) in digests.iter().skip(1) {
        let parts = d.differences(&digests[0].1);
        assert!(
            parts.is_empty(),
            "node {id}'s state differs from node {}'s: {parts:?}",
            digests[0].0
        );
    }
}

/// Deploys the probe module and creates FSM `r` from it (the registers under test).
/// [`three_nodes`] started, with the register FSM: what the tests that stop or pause nodes
/// begin with.
pub(crate) struct RegisterCluster {
    /// The certificates' directory.
    pub certs: std::path::PathBuf,
    /// The nodes' QUIC addresses, node 1's first.
    pub addrs: Vec<String>,
    /// The node processes.
    pub nodes: Vec<NodeProcess>,
    /// An admin client of every node, patient for 30 s.
    pub admin: Client,
    /// The leader when the FSM was created.
    pub leader: u64,
}

/// Starts [`three_nodes`] under `dir` and creates the register FSM.
pub(crate) async fn three_nodes_with_register(dir: &std::path::Path) -> RegisterCluster {
    let (certs, real, mut nodes) = three_nodes(dir);
    for n in &mut nodes {
        n.start().expect("start");
    }
    let addrs: Vec<String> = real.iter().map(ToString::to_string).collect();
    let (admin, leader) = with_register(&certs, &addrs).await;
    RegisterCluster {
        certs,
        addrs,
        nodes,
        admin,
        leader,
    }
}

/// An admin client of the nodes at `addrs` (30 s patience), once it has created the
/// register FSM, and the leader then.
pub(crate) async fn with_register(certs: &std::path::Path, addrs: &[String]) -> (Client, u64) {
    let admin = Client::new(addrs.to_vec(), &identity(certs, "admin"))
        .expect("client")
        .with_patience(Duration::from_secs(30));
    create_register(&admin).await.expect("the register FSM");
    let leader = admin
        .status()
        .await
        .expect("status")
        .leader
        .expect("leader");
    (admin, leader)
}

pub(crate) async fn create_register(admin: &Client) -> Result<(), String> {
    let module = admin
        .deploy(wraft_fsm_artifacts::PROBE.to_vec())
        .await
        .map_err(|e| format!("deploy: {e}"))?;
    admin
        .create_fsm(register(), module, FsmLimits::default())
        .await
        .map_err(|e| format!("create: {e}"))
}

pub(crate) fn identity(certs: &std::path::Path, name: &str) -> wraft_transport_quic::TlsIdentity {
    let read = |f: String| std::fs::read_to_string(certs.join(f)).expect("cert file");
    wraft_transport_quic::TlsIdentity::from_pem(
        &read("ca.pem".into()),
        &read(format!("{name}.pem")),
        &read(format!("{name}.key")),
    )
    .expect("identity")
}

/// The register FSM's name.
pub(crate) fn register() -> FsmName {
    FsmName::new("r").expect("name")
}

/// The command that writes `value` to register `key`.
pub(crate) fn put_command(key: u32, value: u64) -> Payload {
    let cmd = probe::Command::Put {
        key: key.to_be_bytes().to_vec(),
        value: value.to_be_bytes().to_vec(),
    };
    Payload::Postcard(postcard::to_allocvec(&cmd).expect("encode"))
}

/// A plain (not once-only) write of `value` to register `key`.
pub(crate) fn put(key: u32, value: u64) -> ApiRequest {
    ApiRequest::Apply {
        fsm: register(),
        command: put_command(key, value),
        once: None,
    }
}

/// Waits until every node reports the same applied index; returns it.
pub(crate) async fn converge(per_node: &[Client], deadline: Instant) -> Result<u64, String> {
    let mut last = Vec::new();
    while Instant::now() < deadline {
        let mut applied = Vec::new();
        for c in per_node {
            let s = tokio::time::timeout(Duration::from_secs(2), c.status()).await;
            applied.push(match s {
                Ok(Ok(s)) => s.applied,
                _ => None,
            });
        }
        if applied.iter().all(|a| a.is_some() && *a == applied[0]) {
            return Ok(applied[0].unwrap_or(0));
        }
        if std::env::var_os("WRAFT_FAULT_TRACE").is_some() {
            eprintln!("  applied {applied:?}");
        }
        last = applied;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("nodes did not converge: applied {last:?}"))
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The last index of the newest snapshot `node` logged it built.
pub(crate) fn newest_built(node: &NodeProcess) -> u64 {
    node.log()
        .lines()
        .filter_map(|l| l.split("built a snapshot up to ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|id| id.split('-').nth(1)?.parse().ok())
        .max()
        .unwrap_or(0)
}
