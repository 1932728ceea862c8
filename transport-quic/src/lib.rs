//! wraft-transport-quic: the network between wraft nodes and their clients.
//!
//! * One UDP port per node, QUIC (quinn) with TLS 1.3 (rustls, `ring` provider).
//! * Mutual TLS from a cluster CA ([`pki`]): a node's certificate names `node-<id>.wraft`;
//!   a client's names `<role>.client.wraft`. A peer must present a certificate signed by the
//!   cluster CA, and a node must present the certificate of the id it claims ([`identity`]).
//! * ALPN `wraft-raft/1` carries raft RPC: one bidirectional stream per RPC, messages as
//!   checksummed postcard frames ([`wire`]); snapshots stream as 1 MiB frames.
//!   ALPN `wraft-client/1` carries the client API ([`api`]): one request per stream, or many
//!   on one stream ([`pipeline`]).
//! * [`RaftClient`] is openraft's network (connections reused, re-established after a
//!   peer restarts); [`serve`] answers peers' RPCs with the local openraft node and client
//!   requests with the node's [`api::ApiHandler`].

pub mod api;
mod client;
pub mod identity;
pub mod limits;
pub mod pipeline;
pub mod pki;
mod server;
mod tls;
pub mod wire;

pub use client::{RaftClient, RaftPeer};
pub use limits::ServerLimits;
pub use server::serve;
pub use tls::{IDLE_TIMEOUT, TlsIdentity, client_config, endpoint_config, server_config};

/// ALPN of raft RPC between nodes.
pub const ALPN_RAFT: &[u8] = b"wraft-raft/1";
/// ALPN of the client API.
pub const ALPN_CLIENT: &[u8] = b"wraft-client/1";

/// Errors of the transport layer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A certificate or key could not be generated, parsed or used.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The QUIC endpoint could not be created or bound.
    #[error("QUIC endpoint: {0}")]
    Endpoint(#[from] std::io::Error),
    /// Connecting to a peer failed.
    #[error("connecting to {addr}: {detail}")]
    Connect {
        /// The peer's address.
        addr: String,
        /// Why.
        detail: String,
    },
    /// A peer broke the wire protocol or its identity did not check out.
    #[error("peer: {0}")]
    Peer(String),
    /// A message could not be sent or received.
    #[error(transparent)]
    Wire(#[from] wire::WireError),
}

/// Resolves `addr` (`host:port`) and opens a QUIC connection to it with `config`, expecting
/// the server certificate to carry `server_name`; gives up after `timeout`.
pub async fn dial(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    addr: &str,
    server_name: &str,
    timeout: std::time::Duration,
) -> Result<quinn::Connection, TransportError> {
    let err = |detail: String| TransportError::Connect {
        addr: addr.to_string(),
        detail,
    };
    let sock = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("the address resolves to nothing".into()))?;
    let connecting = endpoint
        .connect_with(config.clone(), sock, server_name)
        .map_err(|e| err(e.to_string()))?;
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| err(format!("no handshake within {timeout:?}")))?
        .map_err(|e| err(e.to_string()))
}
