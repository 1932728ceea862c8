//! `wraft local`: operate on a data directory directly, as a single node without raft
//! (inspection, experiments).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use wraft_core::FsmName;
use wraft_host::local::{EXAMPLES, LocalNode};

#[derive(Debug, Subcommand)]
pub enum LocalOp {
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
        #[command(flatten)]
        limits: super::LimitsArgs,
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

fn name(s: &str) -> anyhow::Result<FsmName> {
    Ok(FsmName::new(s)?)
}

pub fn run(data_dir: PathBuf, max_state_bytes: usize, op: LocalOp) -> anyhow::Result<()> {
    let options = wraft_host::state::StateOptions {
        max_bytes: max_state_bytes,
        ..Default::default()
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
            limits,
        } => {
            node.create(name(&fsm)?, super::module_id(&module)?, limits.limits())??;
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
