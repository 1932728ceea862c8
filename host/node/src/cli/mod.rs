//! The `wraft` command line: one module per group of subcommands.

pub mod cert;
pub mod client;
pub mod dev;
pub mod local;
pub mod serve;

use std::path::Path;

use anyhow::Context;
use wraft_transport_quic::TlsIdentity;

/// Loads a TLS identity from PEM files.
pub fn load_identity(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<TlsIdentity> {
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    Ok(TlsIdentity::from_pem(
        &read(ca)?,
        &read(cert)?,
        &read(key)?,
    )?)
}
