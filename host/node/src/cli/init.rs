//! `wraft init generate|info|verify`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use wraft_host::ops::init::{ClusterSpec, generate};
use wraft_host::ops::inspect::inspect;

/// `wraft init` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum InitCmd {
    /// Write one data directory per node, holding the membership and the initial leader's
    /// vote: start every node with plain `wraft serve` (no --initial-members), in any order.
    Generate {
        /// Raft addresses, comma-separated, in the order of --ids.
        #[arg(long, env = "WRAFT_INIT_NODES", value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// Node ids, comma-separated.
        #[arg(long, env = "WRAFT_INIT_IDS", value_delimiter = ',', required = true)]
        ids: Vec<u64>,
        /// The node that leads first.
        #[arg(long, env = "WRAFT_INIT_INITIAL_LEADER")]
        initial_leader: u64,
        /// The term it leads in.
        #[arg(long, env = "WRAFT_INIT_INITIAL_TERM", default_value_t = 1)]
        initial_term: u64,
        /// Where to write `node-<id>/` directories.
        #[arg(long, env = "WRAFT_INIT_OUTPUT_DIR")]
        output_dir: PathBuf,
        /// Overwrite existing directories (refused while a node runs on one).
        #[arg(long, env = "WRAFT_INIT_FORCE")]
        force: bool,
    },
    /// What a data directory holds: vote, log range, membership, applied index, FSMs,
    /// modules, checkpoints, sizes and reclaimable space. Safe while the node runs. (As
    /// JSON: one object, sizes in bytes, positions as `{"index", "term"}`, `problems`.)
    Info {
        /// The node's data directory.
        #[arg(long, env = "WRAFT_INIT_STATE_DIR")]
        state_dir: PathBuf,
        #[command(flatten)]
        output: super::Output,
    },
    /// Check that a data directory's stores are intact and agree (entry checksums, log
    /// continuity, vote, module hashes, FSM records, snapshot checksums, applied position
    /// against the log, state against the last checkpoint). Exits non-zero on a problem.
    /// (As JSON: one object, as `init info --json` with each FSM's state hash and `"ok"`;
    /// the exit code still says whether there were problems.)
    Verify {
        /// The node's data directory.
        #[arg(long, env = "WRAFT_INIT_STATE_DIR")]
        state_dir: PathBuf,
        #[command(flatten)]
        output: super::Output,
    },
}

/// Runs a `wraft init` subcommand.
pub fn run(cmd: InitCmd) -> anyhow::Result<()> {
    match cmd {
        InitCmd::Generate {
            nodes,
            ids,
            initial_leader,
            initial_term,
            output_dir,
            force,
        } => {
            if nodes.len() != ids.len() {
                bail!(
                    "--nodes has {} addresses but --ids has {} ids",
                    nodes.len(),
                    ids.len()
                );
            }
            let spec = ClusterSpec {
                nodes: ids.into_iter().zip(nodes).collect(),
                initial_leader,
                initial_term,
            };
            for dir in generate(&spec, &output_dir, force)? {
                println!("{}", dir.display());
            }
            Ok(())
        }
        InitCmd::Info { state_dir, output } => {
            let json = output.json();
            let report = inspect(&state_dir, false)
                .with_context(|| format!("reading {}", state_dir.display()))?;
            if json {
                println!("{}", report.to_json());
                return Ok(());
            }
            print!("{}", report.render());
            for p in &report.problems {
                println!("problem: {p}");
            }
            Ok(())
        }
        InitCmd::Verify { state_dir, output } => {
            let json = output.json();
            let report = inspect(&state_dir, true)
                .with_context(|| format!("verifying {}", state_dir.display()))?;
            if json {
                let mut out = report.to_json();
                out["ok"] = report.problems.is_empty().into();
                println!("{out}");
            } else {
                print!("{}", report.render());
            }
            if report.problems.is_empty() {
                if !json {
                    println!("ok: {} is consistent", state_dir.display());
                }
                return Ok(());
            }
            for p in &report.problems {
                eprintln!("problem: {p}");
            }
            bail!(
                "{} has {} problem(s)",
                state_dir.display(),
                report.problems.len()
            )
        }
    }
}
