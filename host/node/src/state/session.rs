//! Client sessions and idempotency keys in the state env ([`wraft_core::session`]): each
//! kept response is written in the transaction that applied its write, so a retry finds it
//! after a restart, a snapshot install or a restore, and every replica answers a retry the
//! same way.
//!
//! Layout (`meta`, after the group): a session's record, its kept responses by sequence, an
//! expiry index ordered by time; an idempotency key's record (with its response) and its
//! expiry index; and the totals the bounds are checked against. Expiry runs before each
//! entry, by the entry's timestamp (FSM time, which never runs backwards), a bounded number
//! per entry.

use heed::RwTxn;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wraft_core::session::{
    self, EXPIRIES_PER_ENTRY, IDEMPOTENCY_KEY_TTL_MS, MAX_IDEMPOTENCY_KEYS, MAX_PENDING_RESPONSES,
    MAX_RETAINED_BYTES, MAX_SESSION_BYTES, MAX_SESSIONS, Sequence, SessionId, SessionWrite,
};
use wraft_core::{ApplyError, EntryResponse};

use super::keys::{self, MetaTag};
use super::{StateError, StateStore, decode, encode};

/// One open session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SessionRecord {
    idle_timeout_ms: u64,
    /// When it expires unless a write comes first (ms, FSM time).
    expires_at_ms: u64,
    /// Responses of sequences up to this one are forgotten.
    acked: u64,
    /// Responses kept, and their bytes.
    pending: u64,
    pending_bytes: u64,
}

/// One idempotency key's write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KeyRecord {
    expires_at_ms: u64,
    /// sha256 of the write it was first used for.
    request: [u8; 32],
    response: EntryResponse,
}

/// What the bounds are checked against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SessionTotals {
    sessions: u64,
    keys: u64,
    retained_bytes: u64,
}

/// What to do with a session or keyed write, decided before it applies.
pub(super) enum Admission {
    /// It applied before: answer this.
    Answered(EntryResponse),
    /// It is refused: nothing applies.
    Refused(ApplyError),
    /// Apply it, then [`StateStore::record_response`] with this.
    Apply(Pending),
}

/// A write admitted to apply, and where its response goes.
pub(super) enum Pending {
    Session(Sequence, SessionRecord),
    Key(String, [u8; 32]),
}

fn limit(what: &str, limit: u64) -> ApplyError {
    ApplyError::SessionLimit {
        what: what.into(),
        limit,
    }
}

impl StateStore {
    fn session_key(&self, id: SessionId) -> Vec<u8> {
        keys::meta_with(self.group, MetaTag::Session, &[&id.to_be_bytes()])
    }

    fn response_key(&self, id: SessionId, seq: u64) -> Vec<u8> {
        let (id, seq) = (id.to_be_bytes(), seq.to_be_bytes());
        keys::meta_with(self.group, MetaTag::SessionResponse, &[&id, &seq])
    }

    fn session_expiry_key(&self, at: u64, id: SessionId) -> Vec<u8> {
        let (at, id) = (at.to_be_bytes(), id.to_be_bytes());
        keys::meta_with(self.group, MetaTag::SessionExpiry, &[&at, &id])
    }

    fn key_key(&self, key: &str) -> Vec<u8> {
        keys::meta_with(self.group, MetaTag::IdempotencyKey, &[key.as_bytes()])
    }

    fn key_expiry_key(&self, at: u64, key: &str) -> Vec<u8> {
        let at = at.to_be_bytes();
        keys::meta_with(self.group, MetaTag::KeyExpiry, &[&at, key.as_bytes()])
    }

    fn totals(&self, txn: &RwTxn<'_>) -> Result<SessionTotals, StateError> {
        let key = keys::meta(self.group, MetaTag::SessionTotals);
        match self.dbs.meta.get(txn, &key)? {
            Some(b) => decode("session totals", b),
            None => Ok(SessionTotals::default()),
        }
    }

    fn put_totals(&self, txn: &mut RwTxn<'_>, t: SessionTotals) -> Result<(), StateError> {
        let key = keys::meta(self.group, MetaTag::SessionTotals);
        Ok(self.dbs.meta.put(txn, &key, &encode(&t))?)
    }

    fn session(&self, txn: &RwTxn<'_>, id: SessionId) -> Result<Option<SessionRecord>, StateError> {
        match self.dbs.meta.get(txn, &self.session_key(id))? {
            Some(b) => Ok(Some(decode(&format!("session {id}"), b)?)),
            None => Ok(None),
        }
    }

    /// Stores `rec`, moving its expiry to `now + idle` in the index.
    fn touch_session(
        &self,
        txn: &mut RwTxn<'_>,
        id: SessionId,
        mut rec: SessionRecord,
        now: u64,
    ) -> Result<SessionRecord, StateError> {
        let at = now.saturating_add(rec.idle_timeout_ms);
        if at != rec.expires_at_ms {
            let old = self.session_expiry_key(rec.expires_at_ms, id);
            self.dbs.meta.delete(txn, &old)?;
            self.dbs
                .meta
                .put(txn, &self.session_expiry_key(at, id), &[])?;
            rec.expires_at_ms = at;
        }
        self.dbs
            .meta
            .put(txn, &self.session_key(id), &encode(&rec))?;
        Ok(rec)
    }

    /// Opens session `id` (the opening entry's index) at `now`.
    pub(super) fn open_session(
        &self,
        txn: &mut RwTxn<'_>,
        id: SessionId,
        idle_timeout_ms: u64,
        now: u64,
    ) -> Result<Result<EntryResponse, ApplyError>, StateError> {
        let range = session::MIN_IDLE_TIMEOUT_MS..=session::MAX_IDLE_TIMEOUT_MS;
        if !range.contains(&idle_timeout_ms) {
            return Ok(Err(ApplyError::SessionLimit {
                what: format!(
                    "a session's idle timeout is {} to {} ms; {idle_timeout_ms} ms was asked",
                    range.start(),
                    range.end()
                ),
                limit: *range.end(),
            }));
        }
        let mut totals = self.totals(txn)?;
        if totals.sessions >= MAX_SESSIONS {
            return Ok(Err(limit(
                "too many open sessions: wait for idle ones to expire, or reuse a session",
                MAX_SESSIONS,
            )));
        }
        totals.sessions += 1;
        self.put_totals(txn, totals)?;
        let rec = SessionRecord {
            idle_timeout_ms,
            expires_at_ms: 0,
            acked: 0,
            pending: 0,
            pending_bytes: 0,
        };
        self.touch_session(txn, id, rec, now)?;
        Ok(Ok(EntryResponse::SessionOpened(id)))
    }

    /// Decides what a session write does: forgets what the client acknowledged, then answers
    /// a sequence that applied before, refuses one already forgotten or past a bound, or
    /// admits it.
    pub(super) fn admit_session_write(
        &self,
        txn: &mut RwTxn<'_>,
        sequence: Sequence,
        now: u64,
    ) -> Result<Admission, StateError> {
        let Sequence {
            session: id,
            seq,
            acked,
        } = sequence;
        let Some(mut rec) = self.session(txn, id)? else {
            return Ok(Admission::Refused(ApplyError::UnknownSession {
                session: id,
            }));
        };
        if acked > rec.acked {
            let freed = self.forget_responses(txn, id, rec.acked, acked)?;
            rec.pending -= freed.0;
            rec.pending_bytes -= freed.1;
            rec.acked = acked;
            let mut totals = self.totals(txn)?;
            totals.retained_bytes = totals.retained_bytes.saturating_sub(freed.1);
            self.put_totals(txn, totals)?;
        }
        if seq <= rec.acked {
            return Ok(Admission::Refused(ApplyError::SequenceTooOld {
                session: id,
                seq,
                acked: rec.acked,
            }));
        }
        let rec = self.touch_session(txn, id, rec, now)?;
        if let Some(b) = self.dbs.meta.get(txn, &self.response_key(id, seq))? {
            return Ok(Admission::Answered(decode(
                &format!("response {seq} of session {id}"),
                b,
            )?));
        }
        if rec.pending >= MAX_PENDING_RESPONSES {
            return Ok(Admission::Refused(limit(
                &format!(
                    "session {id} keeps {} unacknowledged responses: acknowledge some \
                     (the client's `acked`) before writing more",
                    rec.pending
                ),
                MAX_PENDING_RESPONSES,
            )));
        }
        if rec.pending_bytes >= MAX_SESSION_BYTES {
            return Ok(Admission::Refused(limit(
                &format!(
                    "session {id} keeps {} bytes of unacknowledged responses: acknowledge \
                     some before writing more",
                    rec.pending_bytes
                ),
                MAX_SESSION_BYTES,
            )));
        }
        self.check_retained(txn)?
            .map_or(Ok(Admission::Apply(Pending::Session(sequence, rec))), |e| {
                Ok(Admission::Refused(e))
            })
    }

    fn check_retained(&self, txn: &RwTxn<'_>) -> Result<Option<ApplyError>, StateError> {
        let totals = self.totals(txn)?;
        Ok((totals.retained_bytes >= MAX_RETAINED_BYTES).then(|| {
            limit(
                &format!(
                    "the cluster keeps {} bytes of responses for retries: sessions must \
                     acknowledge theirs, or idempotency keys expire, before more are kept",
                    totals.retained_bytes
                ),
                MAX_RETAINED_BYTES,
            )
        }))
    }

    /// Deletes session `id`'s responses for sequences in `(from, to]`; their count and bytes.
    fn forget_responses(
        &self,
        txn: &mut RwTxn<'_>,
        id: SessionId,
        from: u64,
        to: u64,
    ) -> Result<(u64, u64), StateError> {
        let lo = self.response_key(id, from.saturating_add(1));
        let hi = self.response_key(id, to);
        let range = (
            std::ops::Bound::Included(&lo[..]),
            std::ops::Bound::Included(&hi[..]),
        );
        let (mut n, mut bytes) = (0u64, 0u64);
        for item in self.dbs.meta.range(txn, &range)? {
            let (_, v) = item?;
            n += 1;
            bytes += v.len() as u64;
        }
        self.dbs.meta.delete_range(txn, &range)?;
        Ok((n, bytes))
    }

    /// Decides what a keyed write does: answers a key seen with the same request, refuses
    /// one seen with another, or admits it.
    pub(super) fn admit_keyed_write(
        &self,
        txn: &RwTxn<'_>,
        key: &str,
        write: &SessionWrite,
    ) -> Result<Admission, StateError> {
        if let Err(e) = session::check_idempotency_key(key) {
            return Ok(Admission::Refused(limit(
                &e,
                session::MAX_IDEMPOTENCY_KEY_LEN as u64,
            )));
        }
        let request: [u8; 32] = Sha256::digest(encode(write)).into();
        if let Some(b) = self.dbs.meta.get(txn, &self.key_key(key))? {
            let rec: KeyRecord = decode(&format!("idempotency key {key:?}"), b)?;
            return Ok(if rec.request == request {
                Admission::Answered(rec.response)
            } else {
                Admission::Refused(ApplyError::IdempotencyKeyReused { key: key.into() })
            });
        }
        if self.totals(txn)?.keys >= MAX_IDEMPOTENCY_KEYS {
            return Ok(Admission::Refused(limit(
                "too many idempotency keys are kept: wait for old ones to expire",
                MAX_IDEMPOTENCY_KEYS,
            )));
        }
        Ok(match self.check_retained(txn)? {
            Some(e) => Admission::Refused(e),
            None => Admission::Apply(Pending::Key(key.into(), request)),
        })
    }

    /// Keeps the response of an admitted write, in the transaction that applied it.
    pub(super) fn record_response(
        &self,
        txn: &mut RwTxn<'_>,
        pending: Pending,
        response: &EntryResponse,
        now: u64,
    ) -> Result<(), StateError> {
        let mut totals = self.totals(txn)?;
        match pending {
            Pending::Session(s, mut rec) => {
                let key = self.response_key(s.session, s.seq);
                let bytes = encode(response);
                let len = bytes.len() as u64;
                self.dbs.meta.put(txn, &key, &bytes)?;
                totals.retained_bytes = totals.retained_bytes.saturating_add(len);
                rec.pending += 1;
                rec.pending_bytes = rec.pending_bytes.saturating_add(len);
                self.dbs
                    .meta
                    .put(txn, &self.session_key(s.session), &encode(&rec))?;
            }
            Pending::Key(key, request) => {
                let at = now.saturating_add(IDEMPOTENCY_KEY_TTL_MS);
                let rec = KeyRecord {
                    expires_at_ms: at,
                    request,
                    response: response.clone(),
                };
                let bytes = encode(&rec);
                totals.retained_bytes = totals.retained_bytes.saturating_add(bytes.len() as u64);
                self.dbs.meta.put(txn, &self.key_key(&key), &bytes)?;
                self.dbs
                    .meta
                    .put(txn, &self.key_expiry_key(at, &key), &[])?;
                totals.keys += 1;
            }
        }
        self.put_totals(txn, totals)
    }

    /// Ends the sessions and keys whose time ran out by `now`, at most
    /// [`EXPIRIES_PER_ENTRY`] of them.
    pub(super) fn expire_sessions(&self, txn: &mut RwTxn<'_>, now: u64) -> Result<(), StateError> {
        let prefix = keys::meta(self.group, MetaTag::SessionExpiry);
        let due = |k: &[u8]| -> Option<(u64, u64)> {
            let at = u64::from_be_bytes(k.get(9..17)?.try_into().ok()?);
            let id = u64::from_be_bytes(k.get(17..25)?.try_into().ok()?);
            (at <= now).then_some((at, id))
        };
        let mut sessions = Vec::new();
        for item in self.dbs.meta.prefix_iter(txn, &prefix)? {
            let (k, _) = item?;
            match due(k) {
                Some(s) if sessions.len() < EXPIRIES_PER_ENTRY => sessions.push(s),
                _ => break,
            }
        }
        let prefix = keys::meta(self.group, MetaTag::KeyExpiry);
        let mut keys_due = Vec::new();
        for item in self.dbs.meta.prefix_iter(txn, &prefix)? {
            let (k, _) = item?;
            let at = k
                .get(9..17)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            match at {
                Some(at) if at <= now && keys_due.len() < EXPIRIES_PER_ENTRY => {
                    keys_due.push((at, String::from_utf8_lossy(&k[17..]).into_owned()));
                }
                _ => break,
            }
        }
        if sessions.is_empty() && keys_due.is_empty() {
            return Ok(());
        }
        let mut totals = self.totals(txn)?;
        for (at, id) in sessions {
            self.dbs
                .meta
                .delete(txn, &self.session_expiry_key(at, id))?;
            let (_, bytes) = self.forget_responses(txn, id, 0, u64::MAX)?;
            self.dbs.meta.delete(txn, &self.session_key(id))?;
            totals.sessions = totals.sessions.saturating_sub(1);
            totals.retained_bytes = totals.retained_bytes.saturating_sub(bytes);
        }
        for (at, key) in keys_due {
            self.dbs.meta.delete(txn, &self.key_expiry_key(at, &key))?;
            if let Some(b) = self.dbs.meta.get(txn, &self.key_key(&key))? {
                let bytes = b.len() as u64;
                self.dbs.meta.delete(txn, &self.key_key(&key))?;
                totals.keys = totals.keys.saturating_sub(1);
                totals.retained_bytes = totals.retained_bytes.saturating_sub(bytes);
            }
        }
        self.put_totals(txn, totals)
    }

    /// Open sessions and kept idempotency keys (for status and tests).
    pub fn session_counts(&self) -> Result<(u64, u64), StateError> {
        let rtxn = self.env.read_txn()?;
        let key = keys::meta(self.group, MetaTag::SessionTotals);
        let totals: SessionTotals = match self.dbs.meta.get(&rtxn, &key)? {
            Some(b) => decode("session totals", b)?,
            None => SessionTotals::default(),
        };
        Ok((totals.sessions, totals.keys))
    }
}
