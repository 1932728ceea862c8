//! wraft-host: the wraft node.
//!
//! * [`runtime`]: the deterministic wasm FSM runtime (wasmtime), one fresh instance per call.
//! * [`state`]: the LMDB state env: FSM keyspaces, registry, modules, applied position.
//! * [`local`]: a single-node driver that assigns log positions and timestamps, used by the
//!   `wraft local` commands until the raft layer drives the state store.

pub mod api;
pub mod cluster;
pub mod local;
pub mod raft;
pub mod runtime;
pub mod state;
