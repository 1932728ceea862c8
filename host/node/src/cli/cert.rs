//! `wraft cert`: a development CA and the node and client certificates of a first cluster.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use wraft_transport_quic::pki::{CertifiedKey, DevCa, Role};

/// Options of `wraft cert`.
#[derive(Debug, clap::Args)]
pub struct CertArgs {
    /// Directory to write PEM files to.
    #[arg(long, env = "WRAFT_CERT_OUT", default_value = "wraft-certs")]
    pub out: PathBuf,
    /// Node ids to issue certificates for.
    #[arg(
        long,
        env = "WRAFT_CERT_NODES",
        value_delimiter = ',',
        default_value = "1,2,3"
    )]
    pub nodes: Vec<u64>,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

fn write(dir: &Path, name: &str, ck: &CertifiedKey) -> anyhow::Result<()> {
    std::fs::write(dir.join(format!("{name}.pem")), &ck.cert_pem)?;
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&key, &ck.key_pem)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Writes `ca.pem`, `node-<id>.{pem,key}` and `{admin,writer,reader}.{pem,key}` to `out`.
pub fn generate(out: &Path, nodes: &[u64], force: bool) -> anyhow::Result<()> {
    if out.join("ca.pem").exists() && !force {
        bail!(
            "{} already holds a CA (ca.pem); pass --force to replace it",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ca = DevCa::generate("wraft development CA")?;
    std::fs::write(out.join("ca.pem"), &ca.cert_pem)?;
    for id in nodes {
        write(out, &format!("node-{id}"), &ca.node(*id)?)?;
    }
    for role in Role::ALL {
        write(
            out,
            role.as_str(),
            &ca.client(&format!("wraft {} client", role.as_str()), role)?,
        )?;
    }
    Ok(())
}

/// Runs `wraft cert`.
pub fn run(args: CertArgs) -> anyhow::Result<()> {
    generate(&args.out, &args.nodes, args.force)?;
    println!(
        "wrote a development CA and certificates to {}:\n  ca.pem\n{}  admin, writer, reader (.pem/.key): client certificates by role",
        args.out.display(),
        args.nodes
            .iter()
            .map(|id| format!("  node-{id}.pem / node-{id}.key\n"))
            .collect::<String>()
    );
    Ok(())
}
