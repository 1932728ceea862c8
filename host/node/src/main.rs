//! The `wraft` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use wraft_core::{FsmLimits, FsmName, ModuleId};
use wraft_host::local::{EXAMPLES, LocalNode};

/// wraft: a Raft host whose state machines are WebAssembly modules.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A first run: opens a data directory, deploys the latest-payload example, applies and
    /// queries a few commands, and prints what to try next.
    Dev {
        /// Data directory.
        #[arg(long, env = "WRAFT_DATA_DIR", default_value = "wraft-data/dev")]
        data_dir: PathBuf,
    },
    /// Operate on a data directory directly, as a single node (no cluster).
    Local {
        /// Data directory.
        #[arg(long, env = "WRAFT_DATA_DIR", default_value = "wraft-data/dev")]
        data_dir: PathBuf,
        /// Ceiling of the state env in bytes (LMDB map size); the file grows up to it.
        #[arg(long, env = "WRAFT_MAX_STATE_BYTES", default_value_t = wraft_host::state::DEFAULT_MAX_STATE_BYTES)]
        max_state_bytes: usize,
        #[command(subcommand)]
        op: LocalOp,
    },
}

#[derive(Debug, Subcommand)]
enum LocalOp {
    /// Deploy a module: a .wasm file, or `example:NAME` for a built-in example.
    Deploy {
        /// Path or example:NAME.
        module: String,
    },
    /// Create an FSM instance running a deployed module.
    Create {
        /// Name of the new FSM.
        fsm: String,
        /// Module id (sha256, hex) as printed by deploy.
        #[arg(long, env = "WRAFT_MODULE")]
        module: String,
        /// Fuel per call.
        #[arg(long, env = "WRAFT_FUEL", default_value_t = FsmLimits::default().fuel)]
        fuel: u64,
        /// Memory cap in 64 KiB pages.
        #[arg(long, env = "WRAFT_MEMORY_PAGES", default_value_t = FsmLimits::default().memory_pages)]
        memory_pages: u32,
        /// Largest output of one call, in bytes.
        #[arg(long, env = "WRAFT_MAX_OUTPUT", default_value_t = FsmLimits::default().max_output_bytes)]
        max_output: u32,
    },
    /// Apply a JSON command to an FSM and print its JSON output.
    Apply {
        /// FSM name.
        fsm: String,
        /// The command as JSON.
        json: String,
    },
    /// Query an FSM with a JSON query and print its JSON output.
    Query {
        /// FSM name.
        fsm: String,
        /// The query as JSON.
        json: String,
    },
    /// List modules, FSMs and the applied position.
    List,
    /// Print an FSM's state hash at the applied index.
    Hash {
        /// FSM name.
        fsm: String,
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
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Dev { data_dir } => dev(data_dir),
        Cmd::Local {
            data_dir,
            max_state_bytes,
            op,
        } => local(data_dir, max_state_bytes, op),
    }
}

fn open(data_dir: &std::path::Path) -> anyhow::Result<LocalNode> {
    LocalNode::open(data_dir).with_context(|| format!("opening {}", data_dir.display()))
}

fn name(s: &str) -> anyhow::Result<FsmName> {
    Ok(FsmName::new(s)?)
}

fn local(data_dir: PathBuf, max_state_bytes: usize, op: LocalOp) -> anyhow::Result<()> {
    let options = wraft_host::state::StateOptions {
        max_bytes: max_state_bytes,
    };
    let node = LocalNode::open_with(&data_dir, options)
        .with_context(|| format!("opening {}", data_dir.display()))?;
    match op {
        LocalOp::Deploy { module } => {
            let bytes = match module.strip_prefix("example:") {
                Some(ex) => match EXAMPLES.iter().find(|(n, _)| *n == ex) {
                    Some((_, b)) => b.to_vec(),
                    None => bail!(
                        "no example {ex:?}; examples: {}",
                        EXAMPLES
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
                None => std::fs::read(&module).with_context(|| format!("reading {module}"))?,
            };
            let id = node.deploy(bytes)??;
            println!("{id}");
        }
        LocalOp::Create {
            fsm,
            module,
            fuel,
            memory_pages,
            max_output,
        } => {
            let id = ModuleId::from_hex(&module)
                .with_context(|| format!("{module:?} is not a module id (64 hex digits)"))?;
            let limits = FsmLimits {
                fuel,
                memory_pages,
                max_output_bytes: max_output,
            };
            node.create(name(&fsm)?, id, limits)??;
            println!("created {fsm}");
        }
        LocalOp::Apply { fsm, json } => println!("{}", node.apply_json(&name(&fsm)?, &json)??),
        LocalOp::Query { fsm, json } => println!("{}", node.query_json(&name(&fsm)?, &json)??),
        LocalOp::List => {
            let store = node.store();
            match store.applied()? {
                Some(a) => println!("applied: index {} term {}", a.index, a.term),
                None => println!("applied: nothing yet"),
            }
            for (id, len) in store.modules()? {
                println!("module {id} ({len} bytes)");
            }
            for (fsm, rec) in store.fsms()? {
                println!(
                    "fsm {fsm}: module {} fuel {} pages {}",
                    rec.module_id, rec.limits.fuel, rec.limits.memory_pages
                );
            }
        }
        LocalOp::Hash { fsm } => match node.store().fsm_hash(&name(&fsm)?)? {
            Some(h) => println!("{}", hex::encode(h)),
            None => bail!("no FSM named {fsm:?}"),
        },
    }
    Ok(())
}

fn dev(data_dir: PathBuf) -> anyhow::Result<()> {
    let node = open(&data_dir)?;
    let (_, bytes) = EXAMPLES[0];
    let id = node.deploy(bytes.to_vec())??;
    println!("deployed latest-payload as module {id}");
    let fsm = name("sequencer")?;
    if node.store().fsm(&fsm)?.is_none() {
        node.create(fsm.clone(), id, FsmLimits::default())??;
        println!("created FSM \"sequencer\"");
    }
    let latest = node.query_json(&fsm, "\"Latest\"")??;
    let next = serde_json::from_str::<serde_json::Value>(&latest)?
        .get("number")
        .and_then(|n| n.as_u64())
        .map_or(1, |n| n + 1);
    let h = |b: u8| format!("0x{}", hex::encode([b; 32]));
    for number in next..next + 3 {
        let cmd = format!(
            r#"{{"Commit":{{"number":{number},"hash":"{}","parent_hash":"{}","payload":"0x{}"}}}}"#,
            h(number as u8),
            h(number.wrapping_sub(1) as u8),
            hex::encode(number.to_be_bytes())
        );
        println!("apply  {cmd}\n    -> {}", node.apply_json(&fsm, &cmd)??);
    }
    let stale = format!(
        r#"{{"Commit":{{"number":{},"hash":"{}","parent_hash":"{}","payload":"0x"}}}}"#,
        next.saturating_sub(1).max(1),
        h(0),
        h(0)
    );
    match node.apply_json(&fsm, &stale)? {
        Ok(out) => println!("apply  (stale block) -> {out}"),
        Err(e) => println!("apply  (stale block) -> refused: {e}"),
    }
    println!(
        "query  \"Latest\"\n    -> {}",
        node.query_json(&fsm, "\"Latest\"")??
    );
    let hash = node
        .store()
        .fsm_hash(&fsm)?
        .map(hex::encode)
        .unwrap_or_default();
    println!("state hash of sequencer: {hash}");
    let d = data_dir.display();
    println!(
        "\nState is in {d} (LMDB). Try next:\n  \
         wraft local --data-dir {d} query sequencer '\"Latest\"'\n  \
         wraft local --data-dir {d} list\n  \
         wraft local --data-dir {d} hash sequencer\n\
         Run `wraft dev` again: it resumes from the stored state."
    );
    Ok(())
}
