//! Client sessions: writes applied exactly once however often they are retried (the Raft
//! thesis, section 6.3).
//!
//! A client opens a session with a log entry ([`crate::Command::OpenSession`]); the session's
//! id is that entry's index. Each write then carries the session, a sequence number the
//! client picks (increasing, one per write) and the highest sequence below which the client
//! has every response (`acked`). The state machine keeps the response of every sequence above
//! `acked` in the replicated state, in the transaction that applied it: a write whose
//! sequence already applied gets its first response back and is not applied again; one at or
//! below `acked` is refused, never re-applied. Sessions expire by the entries' timestamps
//! after their idle time, at the same log index on every replica.
//!
//! An idempotency key ([`crate::Command::KeyedWrite`], HTTP's `Idempotency-Key`) is a
//! one-write session named by the client: its response is kept for
//! [`IDEMPOTENCY_KEY_TTL_MS`] after the write.
//!
//! Every bound below is part of the replicated rules (the same on every replica); a write
//! past one fails with [`crate::ApplyError::SessionLimit`], naming it, before it applies.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::entry::Apply;

/// A session's id: the log index of the entry that opened it.
pub type SessionId = u64;

/// What a write on a session or under an idempotency key does: one command, or an atomic
/// batch. (A separate type from [`crate::Command`] so a session write cannot nest another.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionWrite {
    /// One command.
    Apply(Apply),
    /// Commands applied atomically, as [`crate::Command::Batch`].
    Batch(Vec<Apply>),
}

/// Where a write sits in its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sequence {
    /// The session.
    pub session: SessionId,
    /// This write's sequence number (from 1, one per write; retries keep theirs).
    pub seq: u64,
    /// The client has the responses of every sequence up to this one: the session may
    /// forget them.
    pub acked: u64,
}

/// Shortest idle time a session may ask for.
pub const MIN_IDLE_TIMEOUT_MS: u64 = 1_000;
/// Longest idle time a session may ask for: a week.
pub const MAX_IDLE_TIMEOUT_MS: u64 = 7 * 24 * 3_600_000;
/// The idle time the clients ask for: an hour without a write ends a session.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 3_600_000;
/// Open sessions a cluster keeps at most.
pub const MAX_SESSIONS: u64 = 65_536;
/// Responses one session keeps at most (writes above its `acked`).
pub const MAX_PENDING_RESPONSES: u64 = 1_024;
/// Response bytes one session keeps at most (checked before a write applies, so a session
/// may exceed it by one response).
pub const MAX_SESSION_BYTES: u64 = 64 << 20;
/// Response bytes all sessions and idempotency keys together keep at most (checked before
/// a write applies, like [`MAX_SESSION_BYTES`]).
pub const MAX_RETAINED_BYTES: u64 = 512 << 20;
/// Largest response a session or idempotency key keeps (encoded): a write whose response
/// would be larger is undone and refused, so that every kept record fits in a snapshot
/// record (64 MiB) and the byte bounds are exceeded by at most this much.
pub const MAX_KEPT_RESPONSE_BYTES: u64 = 32 << 20;
/// How long an idempotency key's response is kept after its write: a day, as payment APIs do.
pub const IDEMPOTENCY_KEY_TTL_MS: u64 = 24 * 3_600_000;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// Idempotency keys a cluster keeps at most.
pub const MAX_IDEMPOTENCY_KEYS: u64 = 1 << 20;
/// Sessions and keys expired at most per client write an entry holds (one for an entry that
/// is not a group; the rest go at the next entries), so that the work of one entry stays
/// bounded and expiry keeps up with the records writes create (at most one each).
pub const EXPIRIES_PER_WRITE: usize = 64;

/// Checks an idempotency key: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] bytes of printable ASCII.
pub fn check_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(alloc::format!(
            "an idempotency key has 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes; this one has {}",
            key.len()
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("an idempotency key is printable ASCII without spaces".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_bounded_printable_ascii() {
        assert!(check_idempotency_key("order-7f3a").is_ok());
        assert!(check_idempotency_key("").is_err());
        assert!(check_idempotency_key("a b").is_err());
        assert!(check_idempotency_key("é").is_err());
        let long = "k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1);
        let err = check_idempotency_key(&long).expect_err("too long");
        assert!(err.contains("255"), "{err}");
        assert!(check_idempotency_key(&long[1..]).is_ok());
    }
}
