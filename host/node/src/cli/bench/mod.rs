//! `wraft bench`: closed-loop clients committing `latest-payload` blocks to a durable
//! cluster, beside the floors measured in the same run (the data disk's fdatasync and a QUIC
//! round trip), printed as a table with HDR percentiles or as JSON.
//!
//! By default it starts its own 3-node cluster of `wraft serve` processes (see [`local`]);
//! with `--existing` it measures the cluster at `--nodes`.

mod http;
mod local;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use wraft_api::{ApiError, ApiRequest, Payload, StageLatency};
use wraft_client::{Client, ClientError};
use wraft_core::{FsmLimits, FsmName};

use super::client::Conn;
use http::{HttpLoop, HttpTarget};
use local::LocalCluster;

/// Options of `wraft bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Measure the running cluster at --nodes (with the client certificate) instead of
    /// starting a local 3-node cluster.
    #[arg(long)]
    pub existing: bool,
    /// Where the local cluster's data goes (a new directory inside, removed afterwards) and
    /// where the fdatasync floor is measured; put it on the disk you want to measure.
    #[arg(long, env = "WRAFT_BENCH_DIR")]
    pub dir: Option<PathBuf>,
    /// Closed-loop clients, one row each.
    #[arg(
        long,
        env = "WRAFT_BENCH_CLIENTS",
        value_delimiter = ',',
        default_value = "1,16,64,256"
    )]
    pub clients: Vec<usize>,
    /// Command sizes in bytes (the encoded command), one set of rows each.
    #[arg(
        long,
        env = "WRAFT_BENCH_SIZE",
        value_delimiter = ',',
        default_value = "256"
    )]
    pub size: Vec<usize>,
    /// The local cluster's nodes listen on this UDP port of 127.0.0.1 and the next two
    /// (default: free ports).
    #[arg(long, env = "WRAFT_BENCH_PORT")]
    pub port: Option<u16>,
    /// Seconds per row.
    #[arg(long, env = "WRAFT_BENCH_SECS", default_value_t = 5)]
    pub secs: u64,
    /// The latest-payload FSM to commit to (created if missing).
    #[arg(long, env = "WRAFT_BENCH_FSM", default_value = "bench")]
    pub fsm: String,
    /// As JSON: one document instead of the table.
    #[command(flatten)]
    pub output: crate::cli::Output,
    /// Write on client sessions (exactly-once: each write carries a session sequence and
    /// its response is kept for retries), as `wraft-client`'s `apply` does, instead of plain
    /// writes.
    #[arg(long)]
    pub sessions: bool,
    /// After each row, where the leader's entries spent their time: openraft's log stages
    /// (proposed, received, submitted, persisted, committed, applied) over the leader's last
    /// 1024 batches, which the row's own entries fill.
    #[arg(long)]
    pub stages: bool,
    /// Drive the leader's HTTP JSON API instead of the QUIC API, as an HTTP client does: one
    /// keep-alive connection per loop, JSON commands through the FSM's codec (the local
    /// cluster only: its nodes then serve HTTP on free ports of 127.0.0.1).
    #[arg(long, conflicts_with_all = ["existing", "sessions"])]
    pub http: bool,
    /// Send every write to a follower, which forwards it to the leader (the hop a client
    /// connected to a follower pays), instead of to the leader. The round-trip floor is
    /// then measured to that follower.
    #[arg(long, conflicts_with_all = ["http", "stages"])]
    pub via_follower: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// One row: `clients` closed loops of `command_bytes` commands for the row's duration.
#[derive(Debug, Serialize)]
pub struct Row {
    pub command_bytes: usize,
    pub clients: usize,
    pub commits: u64,
    pub commits_per_sec: f64,
    /// Commits the FSM refused (a block that arrived after a newer one): still committed
    /// and applied through raft, counted in `commits`.
    pub refused: u64,
    pub latency: Latency,
    /// p50 over (fdatasync p50 + round trip p50).
    pub p50_over_floor: f64,
    /// With `--stages`: the leader's log stages after the row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<Vec<StageLatency>>,
}

/// A node's resident memory.
#[derive(Debug, Serialize)]
pub struct Memory {
    pub node: usize,
    pub rss_at_rest_bytes: u64,
    pub rss_peak_bytes: u64,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub cores: usize,
    pub cluster: String,
    /// Whether writes went on client sessions.
    pub sessions: bool,
    /// Whether writes went through the HTTP JSON API.
    pub http: bool,
    /// Whether writes went to a follower, which forwarded them.
    pub via_follower: bool,
    pub fdatasync: Latency,
    pub round_trip: Latency,
    pub rows: Vec<Row>,
    pub memory: Vec<Memory>,
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.clients.contains(&0) || args.secs == 0 {
        bail!("--clients and --secs must be positive");
    }
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let local = if args.existing {
        None
    } else {
        Some(LocalCluster::start(&base, args.port, args.http).await?)
    };
    let (identity, nodes, cluster) = match &local {
        Some(l) => (
            l.identity()?,
            l.addrs.iter().map(ToString::to_string).collect(),
            format!("3 local nodes (processes) with data in {}", l.dir.display()),
        ),
        None => {
            let c = args.conn.resolve()?;
            (
                super::load_identity(&c.ca, &c.cert, &c.key)?,
                c.nodes.clone(),
                c.nodes.join(","),
            )
        }
    };
    let client = Client::new(nodes, &identity)?;
    let fsm = prepare(&client, &args.fsm, local.is_some()).await?;
    let leader = Arc::new(writer_clients(&client, &identity, args.via_follower).await?);
    let http = match &local {
        Some(l) if args.http => Some(l.http_target(&client).await?),
        _ => None,
    };
    let fdatasync = fdatasync_floor(local.as_ref().map_or(&base, |l| &l.dir))?;
    let round_trip = round_trip_floor(&leader[0]).await?;
    let at_rest = local.as_ref().map(LocalCluster::memory).unwrap_or_default();
    let floor_ns = (fdatasync.value_at_quantile(0.5) + round_trip.value_at_quantile(0.5)) as f64;

    let mut report = Report {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cluster,
        sessions: args.sessions,
        http: args.http,
        via_follower: args.via_follower,
        fdatasync: Latency::of(&fdatasync),
        round_trip: Latency::of(&round_trip),
        rows: Vec::new(),
        memory: Vec::new(),
    };
    if !args.output.json() {
        print_header(&report, &at_rest);
    }
    let next_block = Arc::new(AtomicU64::new(first_block(&leader[0], &fsm).await?));
    for &size in &args.size {
        for &clients in &args.clients {
            let shape = RowShape {
                size,
                clients,
                secs: args.secs,
                sessions: args.sessions,
            };
            let target = match &http {
                Some(t) => Target::Http(t.clone()),
                None => Target::Quic(leader.clone()),
            };
            let mut row = run_row(&target, &fsm, shape, &next_block, floor_ns)
                .await
                .with_context(|| format!("{clients} clients, {size}-byte commands"))?;
            if args.stages {
                row.stages = Some(leader[0].stages().await.context("the leader's stages")?);
            }
            if !args.output.json() {
                print_row(&row);
            }
            report.rows.push(row);
        }
    }
    if let Some(l) = &local {
        report.memory = at_rest
            .iter()
            .zip(l.memory())
            .enumerate()
            .map(|(i, ((rest, _), (_, peak)))| Memory {
                node: i + 1,
                rss_at_rest_bytes: *rest,
                rss_peak_bytes: peak,
            })
            .collect();
    }
    if args.output.json() {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for m in &report.memory {
            println!(
                "node {}: RSS {:.1} MiB at rest (3 example FSMs deployed), peak {:.1} MiB",
                m.node,
                mib(m.rss_at_rest_bytes),
                mib(m.rss_peak_bytes)
            );
        }
    }
    Ok(())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Makes sure `fsm` exists on latest-payload; on a local cluster also deploys the other two
/// examples, so memory at rest is measured with all three, as in production.
async fn prepare(client: &Client, fsm: &str, all_examples: bool) -> anyhow::Result<FsmName> {
    let name = FsmName::new(fsm)?;
    let existing = client.fsms().await?;
    if !existing.iter().any(|f| f.name == fsm) {
        let module = client
            .deploy(wraft_fsm_artifacts::LATEST_PAYLOAD.to_vec())
            .await?;
        client
            .create_fsm(name.clone(), module, FsmLimits::default())
            .await?;
    }
    if all_examples {
        for ((_, bytes), other) in wraft_host::local::EXAMPLES
            .iter()
            .skip(1)
            .zip(["manifest", "airspace"])
        {
            let module = client.deploy(bytes.to_vec()).await?;
            client
                .create_fsm(FsmName::new(other)?, module, FsmLimits::default())
                .await?;
        }
    }
    Ok(name)
}

/// Clients that talk to the leader directly, or with `via_follower` to a follower (which
/// forwards each write: one more hop than a well-routed client pays). One QUIC connection
/// per 16 closed loops.
async fn writer_clients(
    client: &Client,
    identity: &wraft_transport_quic::TlsIdentity,
    via_follower: bool,
) -> anyhow::Result<Vec<Client>> {
    let status = client.status().await?;
    let leader = status.leader.context("the cluster has no leader")?;
    let addr = status
        .nodes
        .iter()
        .find(|n| {
            if via_follower {
                // A learner does not forward.
                n.id != leader && n.membership == "voter"
            } else {
                n.id == leader
            }
        })
        .map(|n| n.addr.clone())
        .context(if via_follower {
            "the cluster has no follower"
        } else {
            "the leader is not in the membership"
        })?;
    (0..16)
        .map(|_| Ok(Client::new(vec![addr.clone()], identity)?))
        .collect()
}

/// 200 writes of 4 KiB, each followed by fdatasync, in a file under `dir`.
fn fdatasync_floor(dir: &Path) -> anyhow::Result<Histogram<u64>> {
    let path = dir.join("fdatasync.probe");
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let mut h = Histogram::<u64>::new(3)?;
    for _ in 0..200 {
        let t = Instant::now();
        file.write_all(&[0u8; 4096])?;
        file.sync_data()?;
        h.record(t.elapsed().as_nanos() as u64)?;
    }
    std::fs::remove_file(&path)?;
    Ok(h)
}

/// 300 `Status` requests to the leader: the QUIC round trip plus the smallest request.
async fn round_trip_floor(client: &Client) -> anyhow::Result<Histogram<u64>> {
    let mut h = Histogram::<u64>::new(3)?;
    for _ in 0..300 {
        let t = Instant::now();
        client.request(ApiRequest::Status).await?;
        h.record(t.elapsed().as_nanos() as u64)?;
    }
    Ok(h)
}

/// The block number after the FSM's latest.
async fn first_block(client: &Client, fsm: &FsmName) -> anyhow::Result<u64> {
    let query = postcard::to_allocvec(&latest_payload::Query::Latest)?;
    let out = client
        .request(ApiRequest::Query {
            fsm: fsm.clone(),
            query: Payload::Postcard(query),
            consistency: wraft_api::Consistency::Linearizable,
        })
        .await?;
    let bytes = match out {
        wraft_api::ApiResponse::Output(Payload::Postcard(b)) => b,
        other => bail!("unexpected answer to Latest: {other:?}"),
    };
    let latest: Option<latest_payload::Payload> = postcard::from_bytes(&bytes)?;
    Ok(latest.map_or(1, |p| p.number + 1))
}

/// The `Commit` of block `number` whose postcard encoding is `size` bytes long (or the
/// smallest commit, if `size` is below it).
fn commit(number: u64, size: usize) -> anyhow::Result<Payload> {
    Ok(Payload::Postcard(postcard::to_allocvec(&commit_command(
        number, size,
    )?)?))
}

/// The same command as JSON, the body an HTTP client sends.
fn commit_json(number: u64, size: usize) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(&commit_command(number, size)?)?)
}

fn commit_command(number: u64, size: usize) -> anyhow::Result<latest_payload::Command> {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&number.to_be_bytes());
    let mut parent = [0u8; 32];
    parent[..8].copy_from_slice(&number.wrapping_sub(1).to_be_bytes());
    let command = |len: usize| {
        latest_payload::Command::Commit(latest_payload::Payload {
            number,
            hash: wraft_guest::Hex32(hash),
            parent_hash: wraft_guest::Hex32(parent),
            payload: wraft_guest::HexBytes(vec![0x5a; len]),
        })
    };
    // The payload's length prefix grows with it: shrink until the whole fits.
    let encoded = |len: usize| postcard::to_allocvec(&command(len)).map(|b| b.len());
    let mut len = size.saturating_sub(encoded(0)?);
    while len > 0 && encoded(len)? > size {
        len -= 1;
    }
    Ok(command(len))
}

/// Where a row's loops write.
#[derive(Clone)]
enum Target {
    /// The leader's QUIC API, through these clients (a loop uses one of them).
    Quic(Arc<Vec<Client>>),
    /// The leader's HTTP API (a loop opens its own connection).
    Http(HttpTarget),
}

/// One closed loop's way of writing.
enum Writer<'a> {
    Quic { client: &'a Client, sessions: bool },
    Http(HttpLoop),
}

impl Writer<'_> {
    /// Writes block `number`: `true` if it applied, `false` if the FSM refused it.
    async fn write(&mut self, fsm: &FsmName, number: u64, size: usize) -> anyhow::Result<bool> {
        let result = match self {
            Self::Http(conn) => return conn.apply(fsm.as_str(), commit_json(number, size)?).await,
            Self::Quic {
                client,
                sessions: true,
            } => client.apply(fsm, commit(number, size)?).await.map(drop),
            Self::Quic { client, .. } => {
                let request = ApiRequest::Apply {
                    fsm: fsm.clone(),
                    command: commit(number, size)?,
                    once: None,
                };
                client.request(request).await.map(drop)
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(ClientError::Api(ApiError::Failed(_))) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// What one row measures: command size, closed-loop clients, seconds, and whether writes go
/// on client sessions.
#[derive(Debug, Clone, Copy)]
struct RowShape {
    size: usize,
    clients: usize,
    secs: u64,
    sessions: bool,
}

async fn run_row(
    target: &Target,
    fsm: &FsmName,
    shape: RowShape,
    next_block: &Arc<AtomicU64>,
    floor_ns: f64,
) -> anyhow::Result<Row> {
    let RowShape {
        size,
        clients,
        secs,
        sessions,
    } = shape;
    let command_bytes = match commit(1, size)? {
        Payload::Postcard(b) => b.len(),
        Payload::Json(j) => j.len(),
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (target, fsm, next_block) = (target.clone(), fsm.clone(), next_block.clone());
        tasks.spawn(async move {
            let mut writer = match &target {
                Target::Quic(leader) => Writer::Quic {
                    client: &leader[c % leader.len()],
                    sessions,
                },
                Target::Http(t) => Writer::Http(HttpLoop::connect(t).await?),
            };
            let mut h = Histogram::<u64>::new(3)?;
            let mut refused = 0u64;
            while Instant::now() < deadline {
                let number = next_block.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                // Refused: another client's newer block got there first; still a commit.
                if !writer.write(&fsm, number, size).await? {
                    refused += 1;
                }
                h.record(t.elapsed().as_nanos() as u64)?;
            }
            anyhow::Ok((h, refused))
        });
    }
    let mut all = Histogram::<u64>::new(3)?;
    let mut refused = 0;
    while let Some(joined) = tasks.join_next().await {
        let (h, r) = joined??;
        all.add(h)?;
        refused += r;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Row {
        command_bytes,
        clients,
        commits: all.len(),
        commits_per_sec: all.len() as f64 / elapsed,
        refused,
        latency: Latency::of(&all),
        p50_over_floor: all.value_at_quantile(0.5) as f64 / floor_ns,
        stages: None,
    })
}

fn print_header(r: &Report, at_rest: &[(u64, u64)]) {
    let writes = if r.sessions {
        "on client sessions"
    } else if r.http {
        "through the HTTP JSON API"
    } else if r.via_follower {
        "plain, sent to a follower that forwards them"
    } else {
        "plain"
    };
    println!(
        "cluster: {}; {} cores here; writes {writes}",
        r.cluster, r.cores
    );
    println!(
        "floor: fdatasync p50 {:.1} µs, p99 {:.1} µs; QUIC round trip (Status) p50 {:.1} µs, p99 {:.1} µs",
        r.fdatasync.p50_us, r.fdatasync.p99_us, r.round_trip.p50_us, r.round_trip.p99_us
    );
    if !at_rest.is_empty() {
        let rss: Vec<String> = at_rest
            .iter()
            .map(|(rss, _)| format!("{:.1}", mib(*rss)))
            .collect();
        println!(
            "RSS at rest, 3 example FSMs deployed: {} MiB",
            rss.join(" / ")
        );
    }
    println!(
        "{:>7} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "bytes",
        "clients",
        "commits/s",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "max µs",
        "p50/floor",
        "refused"
    );
}

fn print_row(r: &Row) {
    println!(
        "{:>7} {:>7} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.2} {:>8}",
        r.command_bytes,
        r.clients,
        r.commits_per_sec,
        r.latency.p50_us,
        r.latency.p99_us,
        r.latency.p999_us,
        r.latency.max_us,
        r.p50_over_floor,
        r.refused
    );
    if let Some(stages) = &r.stages {
        let each: Vec<String> = stages
            .iter()
            .map(|s| format!("{} {}/{}", s.stage, s.p50_us, s.p99_us))
            .collect();
        println!("        leader's stages, p50/p99 µs: {}", each.join(", "));
    }
}
