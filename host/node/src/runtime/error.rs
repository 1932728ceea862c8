//! Errors of the runtime layer.

use wraft_core::ApplyError;

/// A fault of this node (not of the FSM): the call did not complete and its result must not
/// be recorded, because another replica would not see the same thing.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The wasmtime engine could not be created.
    #[error("cannot create the wasm engine: {0}")]
    Engine(String),
    /// Reading or writing the FSM's keyspace in LMDB failed.
    #[error("storage error during an FSM call: {0}")]
    Storage(#[from] heed::Error),
    /// wasmtime failed for a reason that is not the guest's doing (e.g. the instance pool is
    /// exhausted).
    #[error("wasm runtime fault: {0}")]
    Fault(String),
}

/// Why a host import stopped a call. Carried through wasmtime as the trap's error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostAbort {
    /// A deterministic failure: becomes the call's result.
    #[error("{0}")]
    Apply(ApplyError),
    /// A node fault: becomes a [`RuntimeError`].
    #[error("storage: {0}")]
    Storage(heed::Error),
    /// The call could not pay for what it asked of the host: `ApplyError::OutOfFuel`.
    #[error("out of fuel")]
    OutOfFuel,
}
