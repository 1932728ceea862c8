//! The `wraft` command line: one module per group of subcommands.

pub mod backup;
pub mod bench;
pub mod cert;
pub mod client;
pub mod dev;
pub mod init;
pub mod local;
pub mod serve;
pub mod voter;

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

/// Per-FSM limits on the command line (`fsm create`, `local create`).
#[derive(Debug, clap::Args)]
pub struct LimitsArgs {
    /// Fuel (about one unit per wasm instruction) per call.
    #[arg(long, env = "WRAFT_FUEL", default_value_t = wraft_core::FsmLimits::default().fuel)]
    pub fuel: u64,
    /// Memory cap in 64 KiB pages.
    #[arg(long, env = "WRAFT_MEMORY_PAGES", default_value_t = wraft_core::FsmLimits::default().memory_pages)]
    pub memory_pages: u32,
    /// Largest output of one call, in bytes.
    #[arg(long, env = "WRAFT_MAX_OUTPUT", default_value_t = wraft_core::FsmLimits::default().max_output_bytes)]
    pub max_output: u32,
}

impl LimitsArgs {
    /// The limits.
    pub fn limits(&self) -> wraft_core::FsmLimits {
        wraft_core::FsmLimits {
            fuel: self.fuel,
            memory_pages: self.memory_pages,
            max_output_bytes: self.max_output,
        }
    }
}

/// Parses a module id (64 hex digits).
pub fn module_id(s: &str) -> anyhow::Result<wraft_core::ModuleId> {
    wraft_core::ModuleId::from_hex(s)
        .with_context(|| format!("{s:?} is not a module id (64 hex digits)"))
}
