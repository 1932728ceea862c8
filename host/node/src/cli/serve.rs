//! `wraft serve`: run one node, configured by flags, `WRAFT_*` variables or a TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use openraft::BasicNode;
use serde::Deserialize;
use wraft_host::cluster::{ClusterNode, NodeConfig};

/// Options of `wraft serve`. Flags and variables override the config file.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A TOML file with any of the keys below (`id`, `listen`, `data_dir`, `ca`, `cert`, `key`,
    /// `initial_members`, `queue`, `http_listen`, `http_tokens` and `voter_links` as lists,
    /// `http_token_file`, `http_cert`, `http_key`, `http_plaintext`,
    /// `voter_key`, `checkpoint_interval`, ...).
    #[arg(long, env = "WRAFT_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (its certificate must be `node-<id>`'s).
    #[arg(long, env = "WRAFT_ID")]
    pub id: Option<u64>,
    /// UDP address to listen on.
    #[arg(long, env = "WRAFT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory.
    #[arg(long, env = "WRAFT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Cluster CA certificate (PEM).
    #[arg(long, env = "WRAFT_CA")]
    pub ca: Option<PathBuf>,
    /// This node's certificate (PEM).
    #[arg(long, env = "WRAFT_CERT")]
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "WRAFT_KEY")]
    pub key: Option<PathBuf>,
    /// Initialize a new cluster with these members (`1=127.0.0.1:7001,2=...`), if this
    /// node's log is empty. Give it on one node only.
    #[arg(long, env = "WRAFT_INITIAL_MEMBERS")]
    pub initial_members: Option<String>,
    /// Proposals admitted at once before callers get "queue full".
    #[arg(long, env = "WRAFT_QUEUE")]
    pub queue: Option<usize>,
    #[command(flatten)]
    pub http: super::http_port::HttpArgs,
    /// Seconds between consistency checkpoints proposed while this node leads (0: off;
    /// default 60).
    #[arg(long, env = "WRAFT_CHECKPOINT_INTERVAL")]
    pub checkpoint_interval: Option<u64>,
    /// Snapshot once this many entries were applied since the last one (default 4096).
    #[arg(long, env = "WRAFT_SNAPSHOT_ENTRIES")]
    pub snapshot_entries: Option<u64>,
    /// Snapshot at least this often, in seconds, while entries are applied (default 60).
    #[arg(long, env = "WRAFT_SNAPSHOT_INTERVAL")]
    pub snapshot_interval: Option<u64>,
    /// Entries kept in the log behind a snapshot, so a briefly lagging follower catches up
    /// from the log rather than from a whole snapshot (default 2048).
    #[arg(long, env = "WRAFT_SNAPSHOT_TRAILING_ENTRIES")]
    pub snapshot_trailing_entries: Option<u64>,
    /// Ceiling of the state env in bytes (LMDB map size; the file grows up to it). Default
    /// 64 GiB on 64-bit hosts, 1 GiB on 32-bit ones; lower it where address space is short.
    #[arg(long, env = "WRAFT_MAX_STATE_BYTES")]
    pub max_state_bytes: Option<usize>,
    /// Ceiling of the raft log env in bytes (default 64 GiB on 64-bit hosts, 512 MiB on
    /// 32-bit ones); the log only holds entries since the last snapshot.
    #[arg(long, env = "WRAFT_MAX_LOG_BYTES")]
    pub max_log_bytes: Option<usize>,
    /// The newest log entry level this node says it reads (default: its build's). Set it
    /// to the old build's level on every upgraded node while the upgrade may still be rolled
    /// back: a leader then writes nothing the old build cannot read (docs/operations.md,
    /// "Upgrading wraft").
    #[arg(long, env = "WRAFT_ENTRY_LEVEL")]
    pub entry_level: Option<u32>,
    /// The byte stream to a passive voter (a microcontroller, docs/embedded.md) wired to this
    /// host, as ID=tcp:HOST:PORT or ID=/dev/ttyX; repeat the flag, or separate with commas in
    /// the variable.
    #[arg(long = "voter-link", env = "WRAFT_VOTER_LINKS", value_delimiter = ',')]
    pub voter_links: Vec<String>,
    /// The cluster's passive-voter key (a file of 64 hex digits, `wraft voter keygen`): every
    /// frame to and from a voter is sealed with it. Required with --voter-link.
    #[arg(long, env = "WRAFT_VOTER_KEY")]
    pub voter_key: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// What the node admits from callers and peers (docs/operations.md, "Limits").
#[derive(Debug, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitArgs {
    /// Largest log entry a write may make once encoded, in bytes (default 32 MiB).
    #[arg(long, env = "WRAFT_MAX_ENTRY_BYTES")]
    pub max_entry_bytes: Option<usize>,
    /// Most commands in one batch (default 1024).
    #[arg(long, env = "WRAFT_MAX_BATCH_COMMANDS")]
    pub max_batch_commands: Option<usize>,
    /// Largest request from a reader certificate, in bytes (default 1 MiB).
    #[arg(long, env = "WRAFT_MAX_READ_REQUEST_BYTES")]
    pub max_read_request_bytes: Option<usize>,
    /// Bytes of client requests held at once across all connections (default 256 MiB).
    #[arg(long, env = "WRAFT_MAX_IN_FLIGHT_BYTES")]
    pub max_in_flight_bytes: Option<usize>,
    /// Requests of each role (reader, writer, admin) served at once (default 1024).
    #[arg(long, env = "WRAFT_MAX_REQUESTS_PER_ROLE")]
    pub max_requests_per_role: Option<usize>,
    /// QUIC connections open at once from one certificate (default 64).
    #[arg(long, env = "WRAFT_MAX_CONNECTIONS_PER_IDENTITY")]
    pub max_connections_per_identity: Option<usize>,
    /// QUIC connections open at once in all (default 4096).
    #[arg(long, env = "WRAFT_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Queries (and their JSON codecs) running at once, 1 to 24; default: one per CPU.
    #[arg(long, env = "WRAFT_GUEST_THREADS")]
    pub guest_threads: Option<usize>,
    /// Writes' JSON codec calls running at once, 1 to 24; default: 8 per CPU, at most 24
    /// (one per CPU on 32-bit hosts).
    #[arg(long, env = "WRAFT_CODEC_THREADS")]
    pub codec_threads: Option<usize>,
    /// Largest HTTP request body, in bytes (default 65 MiB).
    #[arg(long, env = "WRAFT_HTTP_MAX_BODY")]
    pub http_max_body: Option<usize>,
    /// HTTP connections open at once (default 4096).
    #[arg(long, env = "WRAFT_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
}

impl LimitArgs {
    /// The node's limits: the flags', else the file's, else the defaults.
    fn node_limits(&self, file: &LimitArgs) -> anyhow::Result<wraft_host::limits::NodeLimits> {
        macro_rules! pick {
            ($f:ident) => {
                self.$f.or(file.$f)
            };
        }
        let mut l = wraft_host::limits::NodeLimits::new(
            pick!(max_entry_bytes).unwrap_or(wraft_host::limits::DEFAULT_MAX_ENTRY_BYTES),
        );
        if let Some(n) = pick!(max_batch_commands) {
            l.max_batch_commands = n;
        }
        if let Some(n) = pick!(max_requests_per_role) {
            l.requests_per_role = n;
        }
        let max = wraft_host::runtime::MAX_GUEST_THREADS;
        let lane = |n: usize, flag: &str| -> anyhow::Result<usize> {
            if !(1..=max).contains(&n) {
                bail!(
                    "--{flag} {n}: give 1 to {max} (or in the config file): the wasm instance \
                     pool has 64 slots, and queries and codecs together must leave room for \
                     the apply"
                );
            }
            Ok(n)
        };
        if let Some(n) = pick!(guest_threads) {
            l.guest_threads = lane(n, "guest-threads")?;
        }
        if let Some(n) = pick!(codec_threads) {
            l.codec_threads = lane(n, "codec-threads")?;
        }
        let t = &mut l.transport;
        if let Some(n) = pick!(max_read_request_bytes) {
            t.max_read_request_bytes = n;
        }
        if let Some(n) = pick!(max_in_flight_bytes) {
            t.in_flight_bytes = n;
        }
        if let Some(n) = pick!(max_connections_per_identity) {
            t.connections_per_identity = n;
        }
        if let Some(n) = pick!(max_connections) {
            t.connections = n;
        }
        Ok(l)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    initial_members: Option<String>,
    queue: Option<usize>,
    #[serde(flatten)]
    http: super::http_port::HttpArgs,
    checkpoint_interval: Option<u64>,
    snapshot_entries: Option<u64>,
    snapshot_interval: Option<u64>,
    snapshot_trailing_entries: Option<u64>,
    max_state_bytes: Option<usize>,
    max_log_bytes: Option<usize>,
    entry_level: Option<u32>,
    #[serde(default)]
    voter_links: Vec<String>,
    voter_key: Option<PathBuf>,
    #[serde(flatten)]
    limits: LimitArgs,
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_members(s: &str) -> anyhow::Result<std::collections::BTreeMap<u64, BasicNode>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (id, addr) = pair
                .split_once('=')
                .with_context(|| format!("member {pair:?} is not ID=HOST:PORT"))?;
            let id: u64 = id
                .trim()
                .parse()
                .with_context(|| format!("member id {id:?} is not a number"))?;
            Ok((id, BasicNode::new(addr.trim())))
        })
        .collect()
}

/// Runs `wraft serve` until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    super::raise_open_files_limit();
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<FileConfig>(&text)
                .with_context(|| format!("invalid config file {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    macro_rules! need {
        ($field:ident, $flag:literal) => {
            match args.$field.or(file.$field) {
                Some(v) => v,
                None => bail!(concat!(
                    "missing --",
                    $flag,
                    " (or `",
                    stringify!($field),
                    "` in the config file)"
                )),
            }
        };
    }
    let snapshot_entries = args.snapshot_entries.or(file.snapshot_entries);
    let snapshot_interval = args.snapshot_interval.or(file.snapshot_interval);
    anyhow::ensure!(
        snapshot_entries != Some(0),
        "--snapshot-entries must be at least 1"
    );
    anyhow::ensure!(
        snapshot_interval != Some(0),
        "--snapshot-interval must be at least 1 second"
    );
    let entry_level = args.entry_level.or(file.entry_level);
    if let Some(level) = entry_level {
        wraft_host::cluster::check_entry_level(level)?;
    }
    let limits = args.limits.node_limits(&file.limits)?;
    let id = need!(id, "id");
    let listen = need!(listen, "listen");
    let data_dir = need!(data_dir, "data-dir");
    let (cert, key) = (need!(cert, "cert"), need!(key, "key"));
    let identity = super::load_identity(&need!(ca, "ca"), &cert, &key)?;
    let members = args
        .initial_members
        .or(file.initial_members)
        .map(|m| parse_members(&m))
        .transpose()?;
    // One node in this process: every metric series carries its id.
    wraft_host::metrics::serve_as(id);
    let mut config = NodeConfig::new(id, data_dir, listen, identity);
    config.limits = limits;
    if let Some(q) = args.queue.or(file.queue) {
        config.queue = q;
    }
    config.http = args.http.config(file.http, &cert, &key)?;
    if let Some(http) = &mut config.http {
        if let Some(n) = args.limits.http_max_body.or(file.limits.http_max_body) {
            http.max_body = n;
        }
        if let Some(n) = args
            .limits
            .http_max_connections
            .or(file.limits.http_max_connections)
        {
            http.max_connections = n;
        }
    }
    if let Some(secs) = args.checkpoint_interval.or(file.checkpoint_interval) {
        config.checkpoint_interval = (secs > 0).then(|| std::time::Duration::from_secs(secs));
    }
    if let Some(n) = snapshot_entries {
        config.snapshots.threshold = n;
    }
    if let Some(secs) = snapshot_interval {
        config.snapshots.interval = std::time::Duration::from_secs(secs);
    }
    if let Some(n) = args
        .snapshot_trailing_entries
        .or(file.snapshot_trailing_entries)
    {
        config.snapshots.trailing_logs = n;
    }
    if let Some(n) = args.max_state_bytes.or(file.max_state_bytes) {
        config.max_state_bytes = n;
    }
    if let Some(n) = args.max_log_bytes.or(file.max_log_bytes) {
        config.max_log_bytes = n;
    }
    if let Some(level) = entry_level {
        config.entry_level = level;
    }
    let links = if args.voter_links.is_empty() {
        file.voter_links
    } else {
        args.voter_links
    };
    for link in links {
        let (voter, addr) = wraft_host::voter::parse_link(&link).map_err(anyhow::Error::msg)?;
        config.voter_links.insert(voter, addr);
    }
    match args.voter_key.or(file.voter_key) {
        Some(path) => config.voter_key = Some(super::voter::read_key(&path)?),
        None if !config.voter_links.is_empty() => bail!(
            "--voter-link needs --voter-key (the cluster's voter key file, from `wraft voter \
             keygen`; or `voter_key` in the config file)"
        ),
        None => {}
    }
    let scheme = match config.http.as_ref().map(|h| h.tls.is_some()) {
        Some(false) => "http",
        _ => "https",
    };
    let node = ClusterNode::start(config).await?;
    if let Some(members) = members
        && !node.raft.is_initialized().await?
    {
        node.raft.initialize(members).await?;
    }
    println!("node {id} serving on {}", node.addr);
    if let Some(http) = node.http_addr {
        println!("node {id} HTTP on {scheme}://{http}");
    }
    let stopped = tokio::select! {
        _ = shutdown_signal() => None,
        why = node.stopped() => Some(why),
    };
    eprintln!("shutting down node {id}");
    if stopped.is_none() {
        step_down(&node, id).await;
    }
    node.shutdown().await;
    match stopped {
        None => Ok(()),
        Some(why) => bail!("node {id} stopped: raft hit a fatal error: {why}"),
    }
}

/// How long a stopping leader waits for its successor to take over.
const STEP_DOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A leader that is asked to stop hands leadership to the most caught-up voter that answers
/// first, so the cluster leads again within a round trip instead of after an election
/// timeout; the writes it was serving get `NoLeader`/forwarded answers, not timeouts.
async fn step_down(node: &ClusterNode, id: u64) {
    use wraft_host::raft::leadership::{HandOverError, hand_over};
    match hand_over(&node.raft, id, None, STEP_DOWN_WAIT).await {
        Ok(leader) => eprintln!("node {id} handed leadership to node {leader} before stopping"),
        Err(HandOverError::NotLeader) => {}
        Err(e) => eprintln!("node {id} stops as leader without handing over: {e}"),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
