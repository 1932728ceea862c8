//! The `wraft` command line: one module per group of subcommands.

pub mod backup;
pub mod bench;
pub mod cert;
pub mod client;
pub mod dev;
pub mod exit;
pub mod http_port;
pub mod init;
pub mod local;
pub mod profile;
pub mod reference;
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

/// Raises this process's soft limit on open files to its hard limit: a node holds a file
/// descriptor per HTTP connection, and the default soft limit (1024) is reached by a
/// thousand idle clients, after which even snapshot builds fail to open files.
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::debug!(
                "open files limit raised from {:?} to {:?}",
                limit.current,
                limit.maximum
            ),
            Err(e) => tracing::warn!(
                "could not raise the open files limit from {:?}: {e}",
                limit.current
            ),
        }
    }
}

/// How a command that prints state prints it: lines for people, or one JSON document for
/// programs, asked for as `--json` or, as kubectl and etcdctl spell it, `-o json`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Output {
    /// Print one JSON document instead of lines (the same as `-o json`).
    #[arg(long, conflicts_with = "output")]
    json: bool,
    /// Output format: `text` (lines; the default) or `json` (as `--json`).
    #[arg(short = 'o', long = "output", env = "WRAFT_OUTPUT", value_enum)]
    output: Option<Format>,
}

/// An output format of [`Output`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Lines for people.
    Text,
    /// One JSON document.
    Json,
}

impl Output {
    /// Whether JSON was asked for.
    pub fn json(&self) -> bool {
        self.json || self.output == Some(Format::Json)
    }
}

/// Per-FSM limits on the command line (`fsm create`, `local create`).
#[derive(Debug, clap::Args)]
pub struct LimitsArgs {
    /// Fuel per apply call (wasm operators, host calls and the bytes they move; docs/abi.md).
    /// Default 50000000.
    #[arg(long, env = "WRAFT_FUEL")]
    pub fuel: Option<u64>,
    /// Memory cap in 64 KiB pages. Default 1024 (64 MiB).
    #[arg(long, env = "WRAFT_MEMORY_PAGES")]
    pub memory_pages: Option<u32>,
    /// Largest output of one call, in bytes. Default 16 MiB.
    #[arg(long, env = "WRAFT_MAX_OUTPUT")]
    pub max_output: Option<u32>,
    /// Fuel per query call, and the base fuel of a JSON codec call. Default 25000000.
    #[arg(long, env = "WRAFT_QUERY_FUEL")]
    pub query_fuel: Option<u64>,
    /// Bytes the FSM's keyspace may hold (keys and values). Default 1 GiB.
    #[arg(long, env = "WRAFT_STORAGE_BYTES")]
    pub storage_bytes: Option<u64>,
}

impl LimitsArgs {
    /// `base` with the limits given on the command line in place of its own.
    pub fn over(&self, base: wraft_core::FsmLimits) -> wraft_core::FsmLimits {
        wraft_core::FsmLimits {
            fuel: self.fuel.unwrap_or(base.fuel),
            memory_pages: self.memory_pages.unwrap_or(base.memory_pages),
            max_output_bytes: self.max_output.unwrap_or(base.max_output_bytes),
            query_fuel: self.query_fuel.unwrap_or(base.query_fuel),
            storage_bytes: self.storage_bytes.unwrap_or(base.storage_bytes),
        }
    }

    /// The limits given, the defaults for the rest.
    pub fn limits(&self) -> wraft_core::FsmLimits {
        self.over(wraft_core::FsmLimits::default())
    }
}

/// Parses a module id (64 hex digits).
pub fn module_id(s: &str) -> anyhow::Result<wraft_core::ModuleId> {
    wraft_core::ModuleId::from_hex(s)
        .with_context(|| format!("{s:?} is not a module id (64 hex digits)"))
}
