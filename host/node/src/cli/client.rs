//! The client commands: `apply`, `query`, `module`, `fsm`, `cluster`. They talk to a running
//! cluster through `wraft-client`; the defaults match `wraft dev`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use wraft_api::{ApiRequest, Consistency, Payload};
use wraft_client::Client;
use wraft_core::FsmName;

/// How to reach the cluster: flags or variables, else the profile (`--profile`), else the
/// defaults of `wraft dev`.
#[derive(Debug, clap::Args)]
pub struct Conn {
    /// A named set of the settings below from the profile file (`$WRAFT_PROFILES`, else
    /// `~/.config/wraft/profiles.toml`; docs/operations.md, "Client profiles").
    #[arg(long, env = "WRAFT_PROFILE", global = true)]
    pub profile: Option<String>,
    /// Any nodes' addresses [default: 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003].
    #[arg(long, env = "WRAFT_NODES", value_delimiter = ',', global = true)]
    pub nodes: Vec<String>,
    /// Cluster CA certificate [default: wraft-data/dev/certs/ca.pem].
    #[arg(long = "client-ca", env = "WRAFT_CLIENT_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate (its role decides what is allowed) [default:
    /// wraft-data/dev/certs/admin.pem].
    #[arg(long = "client-cert", env = "WRAFT_CLIENT_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// Client private key [default: wraft-data/dev/certs/admin.key].
    #[arg(long = "client-key", env = "WRAFT_CLIENT_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// How long a command keeps trying (other nodes, a new leader, a lost answer) before it
    /// gives up: `10s`, `500ms`, `2m` [default: 10s].
    #[arg(long, env = "WRAFT_TIMEOUT", value_parser = parse_duration, global = true)]
    pub timeout: Option<std::time::Duration>,
}

/// The settings a command connects with, once flags, the profile and defaults are merged.
#[derive(Debug)]
pub struct Resolved {
    /// Any nodes' addresses.
    pub nodes: Vec<String>,
    /// Cluster CA certificate.
    pub ca: PathBuf,
    /// Client certificate.
    pub cert: PathBuf,
    /// Client private key.
    pub key: PathBuf,
    /// How long a command keeps trying.
    pub timeout: std::time::Duration,
}

/// `10s`, `500ms`, `2m`, or plain seconds (`1.5`). Hand-made: no duration-parsing crate
/// (humantime) is in the dependency tree, and three units are all a timeout needs.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => s.split_at(at),
        None => (s, "s"),
    };
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        other => return Err(format!("unknown unit {other:?} in {s:?}: use ms, s or m")),
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 500ms or 2m"))?;
    std::time::Duration::try_from_secs_f64(n * scale).map_err(|e| format!("{s:?}: {e}"))
}

impl Conn {
    /// The settings: each from its flag or variable, else the profile, else the default.
    pub fn resolve(&self) -> anyhow::Result<Resolved> {
        // An empty value (`WRAFT_PROFILE=`, `--nodes ""`) is no value.
        let profile = match self.profile.as_deref().filter(|p| !p.is_empty()) {
            Some(name) => super::profile::load(&super::profile::file()?, name)?,
            None => super::profile::Profile::default(),
        };
        let given: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect();
        let timeout = match (self.timeout, &profile.timeout) {
            (Some(t), _) => t,
            (None, Some(text)) => parse_duration(text)
                .map_err(anyhow::Error::msg)
                .context("the profile's timeout")?,
            (None, None) => std::time::Duration::from_secs(10),
        };
        let dev = |file: &str| PathBuf::from("wraft-data/dev/certs").join(file);
        Ok(Resolved {
            nodes: match (given, profile.nodes) {
                (given, _) if !given.is_empty() => given,
                (_, Some(nodes)) => nodes,
                _ => ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
                    .map(String::from)
                    .to_vec(),
            },
            ca: self
                .ca
                .clone()
                .or(profile.ca)
                .unwrap_or_else(|| dev("ca.pem")),
            cert: self
                .cert
                .clone()
                .or(profile.cert)
                .unwrap_or_else(|| dev("admin.pem")),
            key: self
                .key
                .clone()
                .or(profile.key)
                .unwrap_or_else(|| dev("admin.key")),
            timeout,
        })
    }

    /// A client.
    pub fn client(&self) -> anyhow::Result<Client> {
        let c = self.resolve()?;
        let identity = super::load_identity(&c.ca, &c.cert, &c.key)?;
        // One command's client: its session (if it writes) only needs to outlive the
        // command's retries.
        Ok(Client::new(c.nodes, &identity)?
            .with_patience(c.timeout)
            .with_session_idle_timeout(std::time::Duration::from_secs(60)))
    }
}

/// Read consistency on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ReadLevel {
    /// Read-index through the leader.
    Linearizable,
    /// The leader's lease.
    Lease,
    /// The answering node's state.
    Stale,
}

impl From<ReadLevel> for Consistency {
    fn from(r: ReadLevel) -> Self {
        match r {
            ReadLevel::Linearizable => Consistency::Linearizable,
            ReadLevel::Lease => Consistency::Lease,
            ReadLevel::Stale => Consistency::Stale,
        }
    }
}

/// `wraft module ...`
#[derive(Debug, Subcommand)]
pub enum ModuleCmd {
    /// Upload a .wasm module (streamed, with a progress bar on a terminal); prints its id
    /// once the deploy is committed.
    Deploy {
        /// The file.
        file: PathBuf,
    },
    /// List deployed modules, with their sizes and the FSMs running them (as JSON: one
    /// array of `{module_id, size_bytes, fsms}`).
    List {
        #[command(flatten)]
        output: super::Output,
    },
    /// Delete a module no FSM uses.
    Drop {
        /// Module id (hex).
        module: String,
    },
}

/// `wraft fsm ...`
#[derive(Debug, Subcommand)]
pub enum FsmCmd {
    /// Create an FSM instance.
    Create {
        /// Its name.
        name: String,
        /// Module id (hex).
        #[arg(long)]
        module: String,
        #[command(flatten)]
        limits: super::LimitsArgs,
    },
    /// List FSM instances (as JSON: one array of `{name, module_id, limits}`).
    List {
        #[command(flatten)]
        output: super::Output,
    },
    /// Move an FSM to another deployed module, keeping its data; the new module's
    /// `migrate` runs in the same entry, and if it fails the FSM stays on its old module.
    Upgrade {
        /// Its name.
        name: String,
        /// The new module id (hex).
        #[arg(long)]
        module: String,
    },
    /// Change an FSM's limits (those not given stay as they are), from the next entry on.
    SetLimits {
        /// Its name.
        name: String,
        #[command(flatten)]
        limits: super::LimitsArgs,
    },
    /// Delete an FSM and all its data.
    Drop {
        /// Its name.
        name: String,
    },
}

/// `wraft cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Membership, roles and progress (as JSON: the answering node's view as one object,
    /// the API's `ClusterStatus`, each node with its `lag` behind the leader's last log
    /// index where known).
    Status {
        #[command(flatten)]
        output: super::Output,
    },
    /// Add a non-voting learner.
    AddLearner {
        /// Its id.
        id: u64,
        /// Its address.
        addr: String,
    },
    /// Make a learner a voter.
    Promote {
        /// Its id.
        id: u64,
    },
    /// Remove a node.
    Remove {
        /// Its id.
        id: u64,
    },
    /// Hand leadership to a node, or to the most caught-up voter.
    TransferLeader {
        /// The target.
        #[arg(long)]
        to: Option<u64>,
    },
}

fn json(p: Payload) -> String {
    match p {
        Payload::Json(j) => j,
        Payload::Postcard(b) => format!("{b:?}"),
    }
}

fn name(s: &str) -> anyhow::Result<FsmName> {
    Ok(FsmName::new(s)?)
}

/// `wraft apply FSM JSON`.
pub async fn apply(conn: &Conn, fsm: &str, command: &str) -> anyhow::Result<()> {
    println!(
        "{}",
        json(conn.client()?.apply_json(&name(fsm)?, command).await?)
    );
    Ok(())
}

/// `wraft apply --batch FILE`: a JSON array of `{"fsm": NAME, "command": JSON}` applied as
/// one atomic Batch entry; prints the outputs as a JSON array.
pub async fn apply_batch(conn: &Conn, file: &std::path::Path) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Item {
        fsm: String,
        command: serde_json::Value,
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let items: Vec<Item> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a JSON array of {{\"fsm\", \"command\"}} objects",
            file.display()
        )
    })?;
    let commands = items
        .into_iter()
        .map(|i| Ok((name(&i.fsm)?, i.command.to_string())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let outputs = conn.client()?.batch_json(commands).await?;
    println!(
        "[{}]",
        outputs.into_iter().map(json).collect::<Vec<_>>().join(",")
    );
    Ok(())
}

/// `wraft query FSM JSON`.
pub async fn query(conn: &Conn, fsm: &str, q: &str, level: ReadLevel) -> anyhow::Result<()> {
    println!(
        "{}",
        json(
            conn.client()?
                .query_json(&name(fsm)?, q, level.into())
                .await?
        )
    );
    Ok(())
}

/// `wraft module ...`.
pub async fn module(conn: &Conn, cmd: ModuleCmd) -> anyhow::Result<()> {
    match cmd {
        ModuleCmd::Deploy { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            // A progress bar on stderr when it is a terminal (hidden otherwise).
            let bar = indicatif::ProgressBar::new(bytes.len() as u64).with_style(
                indicatif::ProgressStyle::with_template(
                    "uploading {bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let id = conn
                .client()?
                .deploy_streamed(&bytes, |sent, _| bar.set_position(sent))
                .await;
            bar.finish_and_clear();
            println!("{}", id?);
        }
        ModuleCmd::List { output } if output.json() => {
            // The API's own shape: a module id is its hex digits in JSON.
            let modules = conn.client()?.modules().await?;
            println!("{}", serde_json::to_string_pretty(&modules)?);
        }
        ModuleCmd::List { .. } => {
            for m in conn.client()?.modules().await? {
                println!(
                    "{}\t{} bytes\tfsms [{}]",
                    m.module_id,
                    m.size_bytes,
                    m.fsms.join(", ")
                );
            }
        }
        ModuleCmd::Drop { module } => {
            let id = super::module_id(&module)?;
            conn.client()?.drop_module(id).await?;
            println!("dropped module {id}");
        }
    }
    Ok(())
}

/// `wraft fsm ...`.
pub async fn fsm(conn: &Conn, cmd: FsmCmd) -> anyhow::Result<()> {
    match cmd {
        FsmCmd::Create {
            name: n,
            module,
            limits,
        } => {
            let (id, limits) = (super::module_id(&module)?, limits.limits());
            conn.client()?.create_fsm(name(&n)?, id, limits).await?;
            println!("created {n}");
        }
        FsmCmd::List { output } if output.json() => {
            let fsms = conn.client()?.fsms().await?;
            println!("{}", serde_json::to_string_pretty(&fsms)?);
        }
        FsmCmd::List { .. } => {
            for f in conn.client()?.fsms().await? {
                println!(
                    "{}\tmodule {}\tfuel {}\tpages {}",
                    f.name, f.module_id, f.limits.fuel, f.limits.memory_pages
                );
            }
        }
        FsmCmd::Upgrade { name: n, module } => {
            let id = super::module_id(&module)?;
            conn.client()?.upgrade_fsm(name(&n)?, id).await?;
            println!("upgraded {n} to module {id}");
        }
        FsmCmd::SetLimits { name: n, limits } => {
            let client = conn.client()?;
            let fsm = name(&n)?;
            let current = client
                .fsms()
                .await?
                .into_iter()
                .find(|f| f.name == n)
                .with_context(|| format!("no FSM named {n}"))?
                .limits;
            let limits = limits.over(current);
            client.set_limits(fsm, limits).await?;
            println!("limits of {n}: {limits:?}");
        }
        FsmCmd::Drop { name: n } => {
            conn.client()?.drop_fsm(name(&n)?).await?;
            println!("dropped {n}");
        }
    }
    Ok(())
}

/// `wraft cluster ...`.
pub async fn cluster(conn: &Conn, cmd: ClusterCmd) -> anyhow::Result<()> {
    let client = conn.client()?;
    match cmd {
        ClusterCmd::Status { output } if output.json() => {
            let s = client.status().await?;
            let mut value = serde_json::to_value(&s)?;
            if let Some(nodes) = value["nodes"].as_array_mut() {
                for (v, n) in nodes.iter_mut().zip(&s.nodes) {
                    v["lag"] = serde_json::json!(s.lag(n));
                }
            }
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        ClusterCmd::Status { .. } => {
            let s = client.status().await?;
            let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            println!(
                "answered by node {} ({}), term {}, leader {}, last log {}, committed {}, applied {}",
                s.node,
                s.state,
                s.term,
                opt(s.leader),
                opt(s.last_log),
                opt(s.committed),
                opt(s.applied)
            );
            println!(
                "{:<6} {:<22} {:<8} {:<8} {:>8} {:>6}",
                "node", "address", "member", "role", "matched", "lag"
            );
            for n in &s.nodes {
                let role = if Some(n.id) == s.leader { "leader" } else { "" };
                let lag = s.lag(n);
                println!(
                    "{:<6} {:<22} {:<8} {:<8} {:>8} {:>6}",
                    n.id,
                    n.addr,
                    n.membership,
                    role,
                    opt(n.matched),
                    opt(lag)
                );
            }
        }
        ClusterCmd::AddLearner { id, addr } => {
            client.request(ApiRequest::AddLearner { id, addr }).await?;
            println!("node {id} added as a learner");
        }
        ClusterCmd::Promote { id } => {
            client.request(ApiRequest::Promote { id }).await?;
            println!("node {id} is a voter");
        }
        ClusterCmd::Remove { id } => {
            client.request(ApiRequest::Remove { id }).await?;
            println!("node {id} removed");
        }
        ClusterCmd::TransferLeader { to } => {
            let leader = client.transfer_leader(to).await?;
            println!("leader is now node {leader}");
        }
    }
    Ok(())
}
