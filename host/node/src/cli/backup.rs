//! `wraft backup`, `wraft restore`, `wraft compact`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use wraft_host::ops::backup::{self, MANIFEST_FILE, STATE_FILE};
use wraft_host::ops::compact::{Compacted, compact};

use super::client::Conn;

/// `wraft backup`: a hot backup of a running node.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Directory to write `state.mdb` and `manifest.json` into (created; must be empty).
    #[arg(long, env = "WRAFT_BACKUP_OUT")]
    pub out: PathBuf,
    /// As JSON: the backup's manifest as one object (no progress bar).
    #[command(flatten)]
    pub output: super::Output,
    #[command(flatten)]
    pub conn: Conn,
}

/// `wraft restore`: put a backup in place of a stopped node's state.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// A directory written by `wraft backup`.
    #[arg(long, env = "WRAFT_BACKUP")]
    pub backup: PathBuf,
    /// The node's data directory (the node must be stopped).
    #[arg(long, alias = "data-dir", env = "WRAFT_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Replace existing state and snapshots.
    #[arg(long, env = "WRAFT_RESTORE_FORCE")]
    pub force: bool,
}

/// `wraft compact`: give back the space LMDB keeps, of a stopped node's raft and state envs
/// (`--state-dir`), or of a running node's state env (`--nodes ADDR`, that one node: its
/// applies wait for the copy, its stale reads go on; the command waits up to `--timeout`, else an
/// hour).
#[derive(Debug, clap::Args)]
pub struct CompactArgs {
    /// The data directory of a stopped node. Without it, the one running node `--nodes`
    /// names is compacted online.
    #[arg(long, alias = "data-dir", env = "WRAFT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// As JSON: `{"node": N or null, "envs": [{"env", "before", "after"}], "paused_ms"}`.
    #[command(flatten)]
    pub output: super::Output,
    #[command(flatten)]
    pub conn: Conn,
}

/// Downloads a backup into `--out` and checks it against its manifest.
pub async fn run_backup(args: BackupArgs) -> anyhow::Result<()> {
    let out = &args.out;
    if wraft_host::ops::occupied(out) {
        bail!("{} is not empty; give a new directory", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let bar = if args.output.json() {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    let bar = bar.with_style(
        indicatif::ProgressStyle::with_template(
            "backup {bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let manifest = args
        .conn
        .client()?
        .backup(&out.join(STATE_FILE), |got, total| {
            bar.set_length(total);
            bar.set_position(got);
        })
        .await;
    bar.finish_and_clear();
    let manifest = manifest?;
    backup::write_manifest(out, &manifest)?;
    backup::verify(out).context("the downloaded backup does not check out")?;
    if args.output.json() {
        let mut j = serde_json::to_value(&manifest).context("the manifest as JSON")?;
        j["dir"] = out.display().to_string().into();
        println!("{j}");
        return Ok(());
    }
    println!(
        "backup of node {} at applied index {} (term {}): {} bytes, sha256 {}, in {}",
        manifest.node,
        manifest.applied_index,
        manifest.applied_term,
        manifest.file_bytes,
        manifest.file_sha256,
        out.display()
    );
    Ok(())
}

/// Verifies a backup, then restores it.
pub fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    let m = backup::restore(&args.backup, &args.state_dir, args.force).with_context(|| {
        format!(
            "restoring {} ({STATE_FILE} + {MANIFEST_FILE}) into {}",
            args.backup.display(),
            args.state_dir.display()
        )
    })?;
    println!(
        "restored node {}'s state at applied index {} (term {}) into {}; start the node: it \
         catches up from the cluster (add it with `wraft cluster add-learner` if it is new)",
        m.node,
        m.applied_index,
        m.applied_term,
        args.state_dir.display()
    );
    Ok(())
}

/// Compacts a stopped node's envs, or a running node's state env.
pub async fn run_compact(args: CompactArgs) -> anyhow::Result<()> {
    let (node, done, paused_ms) = match &args.state_dir {
        Some(dir) => {
            let done = compact(dir).with_context(|| format!("compacting {}", dir.display()))?;
            (None, done, None)
        }
        None => {
            let nodes = args.conn.resolve()?.nodes;
            if nodes.len() != 1 {
                return Err(super::exit::UsageError(format!(
                    "compacting a running node needs that one node's address (--nodes ADDR), \
                     not {} of them; or give a stopped node's --state-dir",
                    nodes.len()
                ))
                .into());
            }
            let patience = args
                .conn
                .timeout
                .unwrap_or(std::time::Duration::from_secs(3600));
            let c = args
                .conn
                .client()?
                .with_patience(patience)
                .compact()
                .await?;
            let state = Compacted {
                env: "state",
                before: c.before_bytes,
                after: c.after_bytes,
            };
            (Some(c.node), vec![state], Some(c.paused_ms))
        }
    };
    if args.output.json() {
        let envs: Vec<_> = done
            .iter()
            .map(|c| serde_json::json!({"env": c.env, "before": c.before, "after": c.after}))
            .collect();
        let j = serde_json::json!({"node": node, "envs": envs, "paused_ms": paused_ms});
        println!("{j}");
        return Ok(());
    }
    for c in &done {
        println!(
            "{}/: {} -> {} bytes ({} reclaimed)",
            c.env,
            c.before,
            c.after,
            c.before.saturating_sub(c.after)
        );
    }
    if let (Some(node), Some(ms)) = (node, paused_ms) {
        println!("node {node} compacted online; its applies waited {ms} ms");
    }
    Ok(())
}
