//! `wraft backup`, `wraft restore`, `wraft compact`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use wraft_host::ops::backup::{self, MANIFEST_FILE, STATE_FILE};
use wraft_host::ops::compact::compact;

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

/// `wraft compact`: give back the space LMDB keeps.
#[derive(Debug, clap::Args)]
pub struct CompactArgs {
    /// The node's data directory (the node must be stopped).
    #[arg(long, alias = "data-dir", env = "WRAFT_STATE_DIR")]
    pub state_dir: PathBuf,
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

/// Compacts a stopped node's envs.
pub fn run_compact(args: CompactArgs) -> anyhow::Result<()> {
    let done = compact(&args.state_dir)
        .with_context(|| format!("compacting {}", args.state_dir.display()))?;
    for c in done {
        println!(
            "{}/: {} -> {} bytes ({} reclaimed)",
            c.env,
            c.before,
            c.after,
            c.before.saturating_sub(c.after)
        );
    }
    Ok(())
}
