//! wraft-host: the wraft node.
//!
//! * [`runtime`]: the deterministic wasm FSM runtime (wasmtime), one fresh instance per call.
//! * [`state`]: the LMDB state env: FSM keyspaces, registry, modules, applied position.
//! * [`raft`]: openraft's log store (`<data>/raft`), state machine and snapshots.
//! * [`cluster`]: a node on the network: stores, openraft and the QUIC transport together.
//! * [`clock`]: the wall clock a leader stamps entries with.
//! * [`api`]: the client API a node serves (roles, forwarding, admission, read levels).
//! * [`http`]: the HTTP port: health, readiness, Prometheus metrics, the JSON API.
//! * [`limits`]: what a node admits from callers (entry and batch sizes, concurrency).
//! * [`metrics`]: the metrics registry and names.
//! * [`disk`]: explaining failed writes (full disk, file-size limit, failing device).
//! * [`ops`]: data directories offline and hot: the lock, `init generate|info|verify`,
//!   backup and restore, compaction.
//! * [`network`]: the node's openraft network (QUIC peers and passive voters' links).
//! * [`voter`]: passive voters (microcontrollers) as members, over a UART or TCP byte stream.
//! * [`local`]: a single-node driver without raft (assigns log positions and timestamps
//!   itself), behind `wraft local`.

pub mod api;
pub mod clock;
pub mod cluster;
pub mod disk;
pub mod http;
pub mod limits;
pub mod local;
pub mod metrics;
pub mod network;
pub mod ops;
pub mod raft;
pub mod runtime;
pub mod state;
pub mod voter;
