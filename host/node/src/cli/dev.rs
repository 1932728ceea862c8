//! `wraft dev`: a local 3-node cluster in one process, with the example modules deployed.
//! The first-run experience: everything under one data directory, certificates included.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use openraft::BasicNode;
use wraft_client::Client;
use wraft_core::{FsmLimits, FsmName};
use wraft_host::cluster::{ClusterNode, NodeConfig};
use wraft_host::local::EXAMPLES;

/// Options of `wraft dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Data directory (node data in `node-<id>/`, certificates in `certs/`).
    #[arg(long, env = "WRAFT_DATA_DIR", default_value = "wraft-data/dev")]
    pub data_dir: PathBuf,
    /// Node 1 listens on this UDP port of 127.0.0.1, nodes 2 and 3 on the next two.
    #[arg(long, env = "WRAFT_DEV_PORT", default_value_t = 7001)]
    pub port: u16,
    /// Node 1's HTTP port on 127.0.0.1 (nodes 2 and 3 on the next two).
    #[arg(long, env = "WRAFT_DEV_HTTP_PORT", default_value_t = 8001)]
    pub http_port: u16,
}

/// The dev cluster's HTTP tokens (`ROLE:TOKEN` lines in `<data>/http-tokens`), made on the
/// first run from the kernel's random source.
fn dev_tokens(data_dir: &Path) -> anyhow::Result<Vec<String>> {
    let path = data_dir.join("http-tokens");
    if !path.exists() {
        let mut random = [0u8; 48];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
        let lines: Vec<String> = ["admin", "writer", "reader"]
            .iter()
            .zip(random.chunks(16))
            .map(|(role, r)| format!("{role}:{}", hex::encode(r)))
            .collect();
        std::fs::create_dir_all(data_dir)?;
        super::cert::write_private(&path, (lines.join("\n") + "\n").as_bytes())?;
    }
    Ok(std::fs::read_to_string(&path)?
        .lines()
        .map(str::to_string)
        .collect())
}

fn identity(certs: &Path, name: &str) -> anyhow::Result<wraft_transport_quic::TlsIdentity> {
    super::load_identity(
        &certs.join("ca.pem"),
        &certs.join(format!("{name}.pem")),
        &certs.join(format!("{name}.key")),
    )
}

/// Runs the cluster until SIGINT or SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    super::raise_open_files_limit();
    let certs = args.data_dir.join("certs");
    if !certs.join("ca.pem").exists() {
        super::cert::generate(&certs, &[1, 2, 3], &["127.0.0.1".into()], false)?;
    }
    let addrs: Vec<SocketAddr> = (0..3)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], args.port + i)))
        .collect();
    let tokens = dev_tokens(&args.data_dir)?
        .iter()
        .map(|t| wraft_host::http::parse_token(t).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let reader = tokens
        .iter()
        .find(|(_, role)| *role == wraft_api::Role::Reader)
        .map_or(String::new(), |(t, _)| t.clone());
    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let dir = args.data_dir.join(format!("node-{id}"));
        let mut config = NodeConfig::new(id, dir, *addr, identity(&certs, &format!("node-{id}"))?);
        let http = SocketAddr::from(([127, 0, 0, 1], args.http_port + i as u16));
        config.http = Some(wraft_host::http::HttpConfig::new(http, tokens.clone()));
        let node = ClusterNode::start(config)
            .await
            .with_context(|| format!("starting node {id} on {addr}"))?;
        nodes.push(node);
    }
    if !nodes[0].raft.is_initialized().await? {
        let members: BTreeMap<u64, BasicNode> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (i as u64 + 1, BasicNode::new(a.to_string())))
            .collect();
        nodes[0].raft.initialize(members).await?;
    }
    let client = Client::new(
        addrs.iter().map(ToString::to_string).collect(),
        &identity(&certs, "admin")?,
    )?
    .with_patience(Duration::from_secs(30));
    let existing = client.fsms().await?;
    for ((example, bytes), fsm) in EXAMPLES.iter().zip(["sequencer", "manifest", "airspace"]) {
        if existing.iter().any(|f| f.name == fsm) {
            continue;
        }
        let module = client.deploy(bytes.to_vec()).await?;
        client
            .create_fsm(FsmName::new(fsm)?, module, FsmLimits::default())
            .await?;
        println!("deployed {example} as module {module}; created FSM \"{fsm}\"");
    }
    let status = client.status().await?;
    let leader = status
        .leader
        .map_or("(electing)".into(), |l| format!("node {l}"));
    let d = args.data_dir.display();
    println!(
        "wraft dev: 3 nodes on {} ; leader {leader}; data in {d}\n\
         Try, in another terminal in this directory (the defaults point at this cluster):\n  \
         wraft apply sequencer '{{\"Commit\":{{\"number\":1,\"hash\":\"0x{h1}\",\"parent_hash\":\"0x{h0}\",\"payload\":\"0x01\"}}}}'\n  \
         wraft query sequencer '\"Latest\"'\n  \
         wraft cluster status\n  \
         wraft cluster transfer-leader\n  \
         curl -s -H \"Authorization: Bearer $(sed -n 's/^reader://p' {d}/http-tokens)\" http://127.0.0.1:{hp}/v1/status\n  \
         curl -s http://127.0.0.1:{hp}/metrics\n\
         The web console (plain HTTP: `wraft dev` is for one machine): http://127.0.0.1:{hp}/#token={reader}\n\
         Ctrl-C stops the cluster; `wraft dev` again resumes it from {d}.",
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        h1 = "ab".repeat(32),
        h0 = "00".repeat(32),
        hp = args.http_port,
    );
    println!("ready");
    // As `wraft serve` does: a node whose raft stopped on a fatal error (a storage fault, a
    // fault in an apply) ends the run with the reason, instead of a cluster that quietly
    // serves on two nodes.
    let stopped = {
        let each = nodes
            .iter()
            .map(|n| Box::pin(async move { (n.id, n.stopped().await) }));
        tokio::select! {
            _ = super::serve::shutdown_signal() => None,
            (stopped, _, _) = futures_util::future::select_all(each) => Some(stopped),
        }
    };
    eprintln!("stopping the dev cluster");
    for node in nodes {
        node.shutdown().await;
    }
    match stopped {
        None => Ok(()),
        Some((id, why)) => bail!("node {id} stopped: raft hit a fatal error: {why}"),
    }
}
