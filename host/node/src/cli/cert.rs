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
    /// IP addresses and DNS names the node certificates are also valid for: the names
    /// HTTPS clients reach the nodes' HTTP ports by (the QUIC port needs none of them). They
    /// replace the default, and every node's certificate carries all of them: for
    /// production, give each node's HTTP port its own certificate (`serve --http-cert`).
    #[arg(
        long,
        env = "WRAFT_CERT_HOSTS",
        value_delimiter = ',',
        default_value = "127.0.0.1,localhost"
    )]
    pub hosts: Vec<String>,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

fn write(dir: &Path, name: &str, ck: &CertifiedKey) -> anyhow::Result<()> {
    std::fs::write(dir.join(format!("{name}.pem")), &ck.cert_pem)?;
    write_private(&dir.join(format!("{name}.key")), ck.key_pem.as_bytes())
}

/// Writes a private key into a new file that only its owner can read from the moment it
/// exists (a key written first and restricted after is readable in between). A file of that
/// name is replaced, never reused with its old permissions.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("replacing {}", path.display()));
        }
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    /// Created 0600 whatever the umask, and an existing world-readable file is replaced.
    #[test]
    fn reserved_names_are_refused_as_hosts_whatever_their_case() {
        let dir = tempfile::tempdir().expect("tmp");
        for host in [
            "node-2.wraft",
            "NODE-2.WRAFT",
            "admin.client.wraft.",
            "wraft.",
            "*.example",
        ] {
            let e = super::generate(dir.path(), &[1], &[host.to_string()], true)
                .expect_err(host)
                .to_string();
            assert!(e.contains("reserved"), "{host}: {e}");
        }
        super::generate(
            dir.path(),
            &[1],
            &["10.0.0.1".into(), "db.example".into()],
            true,
        )
        .expect("ordinary hosts");
    }

    #[test]
    fn private_keys_are_created_readable_by_their_owner_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("k.key");
        std::fs::write(&path, b"old").expect("old");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        // SAFETY: umask only changes this process's file-creation mask.
        let old = unsafe { libc::umask(0) };
        let written = super::write_private(&path, b"secret");
        unsafe { libc::umask(old) };
        written.expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).expect("read"), b"secret");
    }
}

/// Writes `ca.pem`, `node-<id>.{pem,key}` (also valid for `hosts`) and `{admin,writer,reader}.{pem,key}` to `out`.
pub fn generate(out: &Path, nodes: &[u64], hosts: &[String], force: bool) -> anyhow::Result<()> {
    for host in hosts {
        // A `.wraft` name or a wildcard would make a node certificate pass as another node
        // or a client role on the QUIC port, which matches these names ignoring case.
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if name.contains('*') || name.ends_with(".wraft") || name == "wraft" {
            bail!(
                "--hosts {host:?}: wildcards and .wraft names are reserved for the cluster's own identities"
            );
        }
    }
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
        write(out, &format!("node-{id}"), &ca.node_at(*id, hosts)?)?;
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
    generate(&args.out, &args.nodes, &args.hosts, args.force)?;
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
