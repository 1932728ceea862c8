//! wraft-core: the contracts every wraft component shares.
//!
//! * [`entry`]: the versioned raft log entry (`Apply`, `Batch`, module and FSM lifecycle),
//!   each carrying the leader's wall-clock timestamp.
//! * [`abi`]: the FSM ABI between the host and a wasm guest, defined once: import module,
//!   import and export names and signatures, status codes, the entry context layout.
//! * [`session`]: client sessions and idempotency keys: writes applied exactly once.
//! * [`error`]: the deterministic errors an entry can produce, recorded as its response.
//! * [`frame`]: length-prefixed, checksummed postcard frames over `embedded-io`.
//! * [`link`]: COBS-delimited, checksummed postcard frames for lossy byte streams (UARTs).
//! * [`voter`]: the passive voter a microcontroller runs, and its flash storage.
//!
//! The crate is `no_std` + `alloc`; the `std` feature (default) adds `std::error::Error`
//! integrations. It builds for `thumbv7em-none-eabihf` with `--no-default-features`.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod abi;
pub mod entry;
pub mod error;
pub mod frame;
pub mod link;
pub mod name;
#[cfg(feature = "raft")]
pub mod raft;
pub mod rng;
pub mod session;
pub mod voter;

pub use entry::{
    Apply, BATCH_FUEL_FACTOR, Command, ENTRY_LEVEL, EntryResponse, Format, FsmLimits, GroupedWrite,
    LogEntry, StateDigest,
};
pub use error::ApplyError;
pub use name::{FsmName, ModuleId};

/// A node's id in the cluster.
pub type NodeId = u64;
