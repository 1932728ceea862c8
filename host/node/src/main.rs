//! The `wraft` command.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use cli::client::{ClusterCmd, Conn, FsmCmd, ModuleCmd, ReadLevel};

/// wraft: a Raft host whose state machines are WebAssembly modules.
#[derive(Debug, Parser)]
#[command(name = "wraft", version, about, after_help = cli::exit::HELP)]
struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` (one object a line,
    /// with the event's fields and spans) for log shippers. `WRAFT_LOG` sets the level.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "WRAFT_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    /// Give back the disk space LMDB keeps: a stopped node's envs (`--state-dir`), or a
    /// running node's state env (`--nodes ADDR`); `wraft init info` shows the gain.
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
        #[arg(
            long,
            value_enum,
            env = "WRAFT_CONSISTENCY",
            default_value = "linearizable"
        )]
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
    /// Print a completion script for a shell (bash: `source <(wraft completions bash)`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (`wraft.1` and one per subcommand) into a directory (`make man`).
    Man {
        /// Where the pages go.
        #[arg(long, default_value = "target/man")]
        dir: PathBuf,
    },
}

/// Logs to stderr in `format`, at the level `WRAFT_LOG` asks for (default: warnings).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WRAFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            cli::exit::Exit::of(&e).into()
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
        Cmd::Compact(args) => cli::backup::run_compact(args).await,
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
        Cmd::Apply { .. } => {
            Err(cli::exit::UsageError("give FSM and JSON, or --batch FILE".into()).into())
        }
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
        Cmd::Completions { shell } => cli::reference::completions(Cli::command(), shell),
        Cmd::Man { dir } => cli::reference::man_pages(Cli::command(), &dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log shipper gets one JSON object per event, with the event's fields.
    #[test]
    fn json_logs_are_one_object_a_line_with_the_fields() {
        #[derive(Clone, Default)]
        struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lines").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(fsm = "sequencer", index = 42, "a refused write");
        });
        let out = String::from_utf8(lines.0.lock().expect("lines").clone()).expect("utf-8");
        let line: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
        assert_eq!(line["level"], "WARN", "{line}");
        assert_eq!(line["fields"]["fsm"], "sequencer", "{line}");
        assert_eq!(line["fields"]["index"], 42, "{line}");
        assert_eq!(line["fields"]["message"], "a refused write", "{line}");
    }

    #[test]
    fn the_command_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    /// Every flag that takes a value can also come from a `WRAFT_*` environment variable
    /// (as systemd units and containers set them); switches (`--json`, `--force`, ...) and
    /// positional arguments are the exceptions.
    #[test]
    fn every_flag_with_a_value_has_an_environment_variable() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let takes_value = arg.get_action().takes_values();
                if arg.is_positional() || !takes_value || arg.get_id() == "help" {
                    continue;
                }
                match arg.get_env() {
                    Some(env) if env.to_string_lossy().starts_with("WRAFT_") => {}
                    _ => missing.push(format!("{path} --{}", arg.get_id())),
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        // A command's own operand, different every time: an environment variable left set
        // would silently become the next command's operand.
        let operands = [
            "wraft apply --batch",
            "wraft fsm create --module",
            "wraft fsm upgrade --module",
            "wraft cluster transfer-leader --to",
            "wraft voter keygen --out",
            "wraft man --dir",
        ];
        let mut missing = Vec::new();
        walk(&Cli::command(), "wraft", &mut missing);
        missing.retain(|flag| !operands.contains(&flag.as_str()));
        assert!(
            missing.is_empty(),
            "flags without a WRAFT_ variable: {missing:#?}"
        );
    }
}
