//! The `wraft` command.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cli::client::{ClusterCmd, Conn, FsmCmd, ModuleCmd, ReadLevel};

/// wraft: a Raft host whose state machines are WebAssembly modules.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A local 3-node cluster with the example modules deployed (the first run).
    Dev(cli::dev::DevArgs),
    /// Run one node.
    Serve(Box<cli::serve::ServeArgs>),
    /// Write a development CA and node/client certificates.
    Cert(cli::cert::CertArgs),
    /// Passive voters (microcontrollers) reached over a byte stream.
    Voter {
        #[command(subcommand)]
        cmd: cli::voter::VoterCmd,
    },
    /// Pre-built cluster state (all nodes start as equals) and data-directory checks.
    Init {
        #[command(subcommand)]
        cmd: cli::init::InitCmd,
    },
    /// Hot backup of a running node's state (a consistent LMDB copy and a manifest with
    /// checksums) into a new directory.
    Backup(cli::backup::BackupArgs),
    /// Restore a backup into a stopped node's data directory (verified first).
    Restore(cli::backup::RestoreArgs),
    /// Closed-loop clients against a durable cluster (a local one by default): commits/s
    /// and latency percentiles beside the disk's fdatasync and a QUIC round trip.
    Bench(cli::bench::BenchArgs),
    /// Give back the disk space LMDB keeps (a stopped node; `wraft init info` shows the gain).
    Compact(cli::backup::CompactArgs),
    /// Apply a JSON command to an FSM and print its JSON output; or, with `--batch FILE`,
    /// apply a JSON array of `{"fsm": ..., "command": ...}` as one atomic Batch entry.
    Apply {
        /// The FSM.
        #[arg(required_unless_present = "batch")]
        fsm: Option<String>,
        /// The command, JSON.
        #[arg(required_unless_present = "batch")]
        json: Option<String>,
        /// A JSON file with many commands, applied together or not at all.
        #[arg(long, conflicts_with_all = ["fsm", "json"])]
        batch: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Query an FSM; prints its JSON output.
    Query {
        /// The FSM.
        fsm: String,
        /// The query, JSON.
        json: String,
        /// How fresh the answer must be.
        #[arg(long, value_enum, default_value = "linearizable")]
        consistency: ReadLevel,
        #[command(flatten)]
        conn: Conn,
    },
    /// Deploy modules.
    Module {
        #[command(subcommand)]
        cmd: ModuleCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Create and list FSM instances.
    Fsm {
        #[command(subcommand)]
        cmd: FsmCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Membership and leadership.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Operate on a data directory directly, as a single node without raft.
    Local {
        /// Data directory.
        #[arg(long, env = "WRAFT_DATA_DIR", default_value = "wraft-data/local")]
        data_dir: PathBuf,
        /// Ceiling of the state env in bytes (LMDB map size); the file grows up to it.
        #[arg(long, env = "WRAFT_MAX_STATE_BYTES", default_value_t = wraft_host::state::DEFAULT_MAX_STATE_BYTES)]
        max_state_bytes: usize,
        #[command(subcommand)]
        op: cli::local::LocalOp,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WRAFT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(Cli::parse())),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Dev(args) => cli::dev::run(args).await,
        Cmd::Serve(args) => cli::serve::run(*args).await,
        Cmd::Cert(args) => cli::cert::run(args),
        Cmd::Voter { cmd } => cli::voter::run(cmd).await,
        Cmd::Init { cmd } => cli::init::run(cmd),
        Cmd::Backup(args) => cli::backup::run_backup(args).await,
        Cmd::Restore(args) => cli::backup::run_restore(args),
        Cmd::Compact(args) => cli::backup::run_compact(args),
        Cmd::Bench(args) => cli::bench::run(args).await,
        Cmd::Apply {
            batch: Some(file),
            conn,
            ..
        } => cli::client::apply_batch(&conn, &file).await,
        Cmd::Apply {
            fsm: Some(fsm),
            json: Some(json),
            conn,
            ..
        } => cli::client::apply(&conn, &fsm, &json).await,
        Cmd::Apply { .. } => Err(anyhow::anyhow!("give FSM and JSON, or --batch FILE")),
        Cmd::Query {
            fsm,
            json,
            consistency,
            conn,
        } => cli::client::query(&conn, &fsm, &json, consistency).await,
        Cmd::Module { cmd, conn } => cli::client::module(&conn, cmd).await,
        Cmd::Fsm { cmd, conn } => cli::client::fsm(&conn, cmd).await,
        Cmd::Cluster { cmd, conn } => cli::client::cluster(&conn, cmd).await,
        Cmd::Local {
            data_dir,
            max_state_bytes,
            op,
        } => cli::local::run(data_dir, max_state_bytes, op),
    }
}
