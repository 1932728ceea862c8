//! Deterministic errors: what an entry's response says when it did not apply.
//!
//! Every variant is produced identically on every replica from the same log (no wall clock,
//! no host-specific text such as backtraces or addresses), because it is part of the
//! replicated response. New variants are only ever appended: postcard encodes the variant
//! index, which is also the stable [`ApplyError::code`].

use alloc::string::String;
use serde::{Deserialize, Serialize};

use crate::name::ModuleId;

/// Why a command, batch or lifecycle entry did not apply. The entry's writes are discarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    /// The FSM refused the command (its `apply` returned an error).
    #[error("rejected by the FSM: {0}")]
    Rejected(String),
    /// The FSM could not decode the command or query bytes.
    #[error("the FSM could not decode its input: {0}")]
    BadInput(String),
    /// The guest panicked; the message is the guest's panic message.
    #[error("the FSM panicked: {0}")]
    Panicked(String),
    /// The guest trapped (unreachable, out-of-bounds access, division by zero, ...).
    #[error("the FSM trapped: {0}")]
    Trap(String),
    /// The call used all of its fuel (the FSM's per-apply instruction budget).
    #[error("the FSM ran out of fuel ({limit} units per call)")]
    OutOfFuel {
        /// The FSM's fuel limit.
        limit: u64,
    },
    /// The guest tried to grow its memory past the FSM's cap.
    #[error("the FSM exceeded its memory cap of {pages} wasm pages")]
    MemoryLimit {
        /// The FSM's cap, in 64 KiB pages.
        pages: u32,
    },
    /// The guest's output is larger than the FSM's output limit.
    #[error("the FSM's output of {len} bytes exceeds its limit of {limit} bytes")]
    OutputTooLarge {
        /// Bytes the guest tried to output.
        len: u64,
        /// The limit.
        limit: u32,
    },
    /// A key or value exceeded the ABI's size limits.
    #[error("the FSM wrote a {what} of {len} bytes; the limit is {limit}")]
    TooLarge {
        /// "key" or "value".
        what: String,
        /// Its length.
        len: u64,
        /// The ABI limit.
        limit: u64,
    },
    /// A query tried to write.
    #[error("queries are read-only; the FSM tried to write")]
    ReadOnly,
    /// The guest broke the ABI (bad pointer, unknown status code, missing result buffer).
    #[error("the FSM broke the ABI: {0}")]
    AbiViolation(String),
    /// No FSM of that name exists.
    #[error("no FSM named {0:?}")]
    UnknownFsm(String),
    /// An FSM of that name already exists.
    #[error("an FSM named {0:?} already exists")]
    FsmExists(String),
    /// No module with that id has been deployed.
    #[error("no module {0} is deployed")]
    UnknownModule(ModuleId),
    /// The module failed validation.
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// The module is still used by an FSM and cannot be dropped.
    #[error("module {module} is used by FSM {fsm:?}")]
    ModuleInUse {
        /// The module.
        module: ModuleId,
        /// An FSM that uses it.
        fsm: String,
    },
    /// The module does not export the entry point this call needs (e.g. a JSON codec).
    #[error("the module does not export {0}")]
    MissingExport(String),
    /// A `Batch` command failed; no command of the batch applied.
    #[error("batch command {position} failed: {error}")]
    BatchFailed {
        /// Index of the failing command within the batch.
        position: u32,
        /// Its error (never itself a `BatchFailed`: decoding refuses one nested deeper).
        #[serde(deserialize_with = "nesting::one_level")]
        error: alloc::boxed::Box<ApplyError>,
    },
    /// A `Batch` spent the fuel budget of the whole entry ([`crate::BATCH_FUEL_FACTOR`] times
    /// the largest per-call fuel of its FSMs) before its last command finished.
    #[error(
        "the batch used its whole fuel budget of {budget} units ({} times the largest \
         per-call fuel of its FSMs); split it, or raise the FSMs' fuel",
        crate::BATCH_FUEL_FACTOR
    )]
    BatchOutOfFuel {
        /// The batch's budget.
        budget: u64,
    },
    /// A write would take the FSM's keyspace past its storage quota.
    #[error(
        "the FSM's keyspace would hold {needed} bytes; its quota is {quota} \
         (raise it with `wraft fsm set-limits --storage-bytes`)"
    )]
    QuotaExceeded {
        /// Bytes the keyspace would hold after the write.
        needed: u64,
        /// The FSM's `storage_bytes`.
        quota: u64,
    },
    /// The guest's calls nested past the call-depth limit (the same point on every node).
    #[error(
        "the FSM's calls nested too deep: past the call-depth limit of {limit} units \
         (docs/abi.md, \"Call depth\")"
    )]
    CallDepth {
        /// The limit.
        limit: u32,
    },
    /// A session write named a session that is not open: it expired (no write for its idle
    /// time) or was never opened. Its earlier writes' outcomes can no longer be told.
    #[error(
        "no session {session} is open: it expired after its idle time, or was never opened; \
         open a new session (docs/api.md, \"Sessions\")"
    )]
    UnknownSession {
        /// The session named.
        session: u64,
    },
    /// A session write's sequence is at or below what the client acknowledged: its response
    /// is gone, and it is not applied again.
    #[error(
        "sequence {seq} of session {session} is at or below the acknowledged {acked}: its \
         response is no longer kept, and it is not applied again"
    )]
    SequenceTooOld {
        /// The session.
        session: u64,
        /// The write's sequence.
        seq: u64,
        /// The session's acknowledged sequence.
        acked: u64,
    },
    /// A session or idempotency-key bound was reached; nothing was applied.
    #[error("{what}: the limit is {limit} (docs/api.md, \"Sessions\")")]
    SessionLimit {
        /// Which bound, and what to do.
        what: String,
        /// Its value.
        limit: u64,
    },
    /// An idempotency key came back with a different request than its first: the first
    /// response is not returned for it, and it is not applied.
    #[error("idempotency key {key:?} was first used for a different request; use a new key")]
    IdempotencyKeyReused {
        /// The key.
        key: String,
    },
}

/// Decoding a `BatchFailed` inside a `BatchFailed` is refused before it recurses, so a
/// hostile answer of nested errors cannot exhaust the stack of whoever decodes it.
mod nesting {
    use alloc::boxed::Box;
    use serde::{Deserialize, Deserializer, de::Error};

    use super::ApplyError;

    #[cfg(feature = "std")]
    std::thread_local!(static INSIDE: core::cell::Cell<bool> = const { core::cell::Cell::new(false) });

    /// Without threads (firmware) one flag serves: decoding never runs concurrently there.
    #[cfg(not(feature = "std"))]
    static INSIDE_FLAG: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

    fn enter() -> bool {
        #[cfg(feature = "std")]
        return INSIDE.with(|i| i.replace(true));
        #[cfg(not(feature = "std"))]
        return INSIDE_FLAG.swap(true, core::sync::atomic::Ordering::Relaxed);
    }

    fn leave() {
        #[cfg(feature = "std")]
        INSIDE.with(|i| i.set(false));
        #[cfg(not(feature = "std"))]
        INSIDE_FLAG.store(false, core::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn one_level<'de, D: Deserializer<'de>>(d: D) -> Result<Box<ApplyError>, D::Error> {
        if enter() {
            return Err(D::Error::custom(
                "a batch error may not nest another batch error",
            ));
        }
        let inner = ApplyError::deserialize(d);
        leave();
        Ok(Box::new(inner?))
    }
}

impl ApplyError {
    /// The stable numeric code of this error (its variant index), for clients in any language.
    pub fn code(&self) -> u16 {
        match self {
            Self::Rejected(_) => 0,
            Self::BadInput(_) => 1,
            Self::Panicked(_) => 2,
            Self::Trap(_) => 3,
            Self::OutOfFuel { .. } => 4,
            Self::MemoryLimit { .. } => 5,
            Self::OutputTooLarge { .. } => 6,
            Self::TooLarge { .. } => 7,
            Self::ReadOnly => 8,
            Self::AbiViolation(_) => 9,
            Self::UnknownFsm(_) => 10,
            Self::FsmExists(_) => 11,
            Self::UnknownModule(_) => 12,
            Self::InvalidModule(_) => 13,
            Self::ModuleInUse { .. } => 14,
            Self::MissingExport(_) => 15,
            Self::BatchFailed { .. } => 16,
            Self::BatchOutOfFuel { .. } => 17,
            Self::QuotaExceeded { .. } => 18,
            Self::CallDepth { .. } => 19,
            Self::UnknownSession { .. } => 20,
            Self::SequenceTooOld { .. } => 21,
            Self::SessionLimit { .. } => 22,
            Self::IdempotencyKeyReused { .. } => 23,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;

    /// Tens of thousands of nested batch errors (a few bytes each) decode as an error, not a
    /// stack overflow; one level still decodes.
    #[test]
    fn nested_batch_errors_are_refused_without_recursing() {
        let mut bytes = alloc::vec::Vec::new();
        for _ in 0..100_000 {
            bytes.extend_from_slice(&[16, 0]); // BatchFailed { position: 0, error: ...
        }
        bytes.push(8); // ReadOnly
        assert!(postcard::from_bytes::<ApplyError>(&bytes).is_err());
        let one = ApplyError::BatchFailed {
            position: 1,
            error: Box::new(ApplyError::ReadOnly),
        };
        let bytes = postcard::to_allocvec(&one).expect("encode");
        assert_eq!(
            postcard::from_bytes::<ApplyError>(&bytes).expect("one level"),
            one
        );
        // The flag is cleared after a refusal too.
        assert_eq!(
            postcard::from_bytes::<ApplyError>(&bytes).expect("again"),
            one
        );
    }

    #[test]
    fn code_is_the_postcard_variant_index() {
        let samples = [
            ApplyError::Rejected("x".into()),
            ApplyError::OutOfFuel { limit: 5 },
            ApplyError::ReadOnly,
            ApplyError::UnknownModule(ModuleId([1; 32])),
            ApplyError::BatchFailed {
                position: 3,
                error: Box::new(ApplyError::ReadOnly),
            },
        ];
        let samples = samples.into_iter().chain([
            ApplyError::QuotaExceeded {
                needed: 9,
                quota: 8,
            },
            ApplyError::UnknownSession { session: 4 },
            ApplyError::SequenceTooOld {
                session: 4,
                seq: 2,
                acked: 3,
            },
            ApplyError::SessionLimit {
                what: "x".into(),
                limit: 1,
            },
            ApplyError::IdempotencyKeyReused { key: "k".into() },
        ]);
        for e in samples {
            let bytes = postcard::to_allocvec(&e).expect("encode");
            assert_eq!(u16::from(bytes[0]), e.code(), "{e:?}");
            assert_eq!(
                postcard::from_bytes::<ApplyError>(&bytes).expect("decode"),
                e
            );
        }
    }
}
