//! Client sessions and idempotency keys in the state env ([`wraft_core::session`]): each
//! kept response is written in the transaction that applied its write, so a retry finds it
//! after a restart, a snapshot install or a restore, and every replica answers a retry the
//! same way.
//!
//! Layout (`meta`, after the group): a session's record, its kept responses by sequence, an
//! idempotency key's record (with its response), one expiry index in time order for both,
//! and the totals the bounds are checked against. A write touches only its session's record:
//! the index holds a time at or before the session's real expiry (its last write plus its
//! idle timeout, which only moves later), and when that time comes the session is either
//! expired or indexed again at its real expiry. So a busy session moves in the index once
//! per idle period, not once per write. Expiry runs before each entry, by the entry's
//! timestamp (FSM time, which never runs backwards), a bounded number per entry.

use heed::{RoTxn, RwTxn};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wraft_core::session::{
    self, EXPIRIES_PER_WRITE, IDEMPOTENCY_KEY_TTL_MS, MAX_IDEMPOTENCY_KEYS, MAX_PENDING_RESPONSES,
    MAX_RETAINED_BYTES, MAX_SESSION_BYTES, MAX_SESSIONS, Sequence, SessionId, SessionWrite,
};
use wraft_core::{ApplyError, EntryResponse};

use super::keys::{self, MetaTag};
use super::{StateError, StateStore, decode, encode};

/// One open session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SessionRecord {
    idle_timeout_ms: u64,
    /// Its last write (or its opening), ms of FSM time.
    last_write_ms: u64,
    /// Responses of sequences up to this one are forgotten.
    acked: u64,
    /// Responses kept, and their bytes.
    pending: u64,
    pending_bytes: u64,
}

impl SessionRecord {
    fn expires_at(&self) -> u64 {
        self.last_write_ms.saturating_add(self.idle_timeout_ms)
    }
}

/// One idempotency key's write: decoded with its response owned, written with it borrowed
/// (the same bytes), so keeping a response does not copy it first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KeyRecord<R = EntryResponse> {
    expires_at_ms: u64,
    /// sha256 of the write it was first used for.
    request: [u8; 32],
    response: R,
}

/// What the bounds are checked against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SessionTotals {
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

/// A write admitted to apply, where its response goes, and the totals it counts in.
pub(super) struct Pending {
    owner: Owner,
    totals: SessionTotals,
}

enum Owner {
    Session(Sequence, SessionRecord),
    Key(String, [u8; 32]),
}

/// The two kinds of expiry index entries.
const EXPIRY_SESSION: u8 = 0;
const EXPIRY_KEY: u8 = 1;

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

    fn expiry_key(&self, at: u64, kind: u8, name: &[u8]) -> Vec<u8> {
        let at = at.to_be_bytes();
        keys::meta_with(self.group, MetaTag::Expiry, &[&at, &[kind], name])
    }

    fn key_key(&self, key: &str) -> Vec<u8> {
        keys::meta_with(self.group, MetaTag::IdempotencyKey, &[key.as_bytes()])
    }

    fn totals(&self, txn: &RoTxn<'_>) -> Result<SessionTotals, StateError> {
        let key = keys::meta(self.group, MetaTag::SessionTotals);
        match self.dbs().meta.get(txn, &key)? {
            Some(b) => decode("session totals", b),
            None => Ok(SessionTotals::default()),
        }
    }

    fn put_totals(&self, txn: &mut RwTxn<'_>, t: SessionTotals) -> Result<(), StateError> {
        let key = keys::meta(self.group, MetaTag::SessionTotals);
        Ok(self.dbs().meta.put(txn, &key, &encode(&t))?)
    }

    fn session(&self, txn: &RoTxn<'_>, id: SessionId) -> Result<Option<SessionRecord>, StateError> {
        match self.dbs().meta.get(txn, &self.session_key(id))? {
            Some(b) => Ok(Some(decode(&format!("session {id}"), b)?)),
            None => Ok(None),
        }
    }

    fn put_session(
        &self,
        txn: &mut RwTxn<'_>,
        id: SessionId,
        rec: &SessionRecord,
    ) -> Result<(), StateError> {
        Ok(self
            .dbs()
            .meta
            .put(txn, &self.session_key(id), &encode(rec))?)
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
            last_write_ms: now,
            acked: 0,
            pending: 0,
            pending_bytes: 0,
        };
        let index = self.expiry_key(rec.expires_at(), EXPIRY_SESSION, &id.to_be_bytes());
        self.dbs().meta.put(txn, &index, &[])?;
        self.put_session(txn, id, &rec)?;
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
        let mut totals = self.totals(txn)?;
        if acked > rec.acked {
            // Kept whatever happens to the write below (the run's transaction commits a
            // refused write's admission too): the rows and their counts go together.
            let (n, bytes) = self.forget_responses(txn, id, rec.acked, acked)?;
            rec.pending = rec.pending.saturating_sub(n);
            rec.pending_bytes = rec.pending_bytes.saturating_sub(bytes);
            rec.acked = acked;
            totals.retained_bytes = totals.retained_bytes.saturating_sub(bytes);
            self.put_session(txn, id, &rec)?;
            self.put_totals(txn, totals)?;
        }
        if seq <= rec.acked {
            return Ok(Admission::Refused(ApplyError::SequenceTooOld {
                session: id,
                seq,
                acked: rec.acked,
            }));
        }
        if let Some(b) = self.dbs().meta.get(txn, &self.response_key(id, seq))? {
            // A retry changes nothing: it is not a new write for the idle time, and its
            // first attempt already applied its `acked` (so normally nothing was forgotten
            // above). So a retry that arrives late, after its client moved on, leaves the
            // state as it was, and replicas that differ only by such entries agree.
            return Ok(Admission::Answered(decode(
                &format!("response {seq} of session {id}"),
                b,
            )?));
        }
        rec.last_write_ms = rec.last_write_ms.max(now);
        let refusal = if rec.pending >= MAX_PENDING_RESPONSES {
            Some(limit(
                &format!(
                    "session {id} keeps {} unacknowledged responses: acknowledge some \
                     (the client's `acked`) before writing more",
                    rec.pending
                ),
                MAX_PENDING_RESPONSES,
            ))
        } else if rec.pending_bytes >= MAX_SESSION_BYTES {
            Some(limit(
                &format!(
                    "session {id} keeps {} bytes of unacknowledged responses: acknowledge \
                     some before writing more",
                    rec.pending_bytes
                ),
                MAX_SESSION_BYTES,
            ))
        } else {
            retained_refusal(&totals)
        };
        Ok(match refusal {
            Some(e) => Admission::Refused(e),
            None => Admission::Apply(Pending {
                owner: Owner::Session(sequence, rec),
                totals,
            }),
        })
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
        for item in self.dbs().meta.range(txn, &range)? {
            let (_, v) = item?;
            n += 1;
            bytes += v.len() as u64;
        }
        if n > 0 {
            self.dbs().meta.delete_range(txn, &range)?;
        }
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
        // Hashed as it encodes: a write can be as large as an entry.
        let request: [u8; 32] = postcard::to_io(write, Sha256::new())
            .map_err(|e| StateError::Corrupt {
                what: format!("the write under idempotency key {key:?}"),
                detail: e.to_string(),
            })?
            .finalize()
            .into();
        if let Some(b) = self.dbs().meta.get(txn, &self.key_key(key))? {
            let rec: KeyRecord = decode(&format!("idempotency key {key:?}"), b)?;
            return Ok(if rec.request == request {
                Admission::Answered(rec.response)
            } else {
                Admission::Refused(ApplyError::IdempotencyKeyReused { key: key.into() })
            });
        }
        let totals = self.totals(txn)?;
        let refusal = if totals.keys >= MAX_IDEMPOTENCY_KEYS {
            Some(limit(
                "too many idempotency keys are kept: wait for old ones to expire",
                MAX_IDEMPOTENCY_KEYS,
            ))
        } else {
            retained_refusal(&totals)
        };
        Ok(match refusal {
            Some(e) => Admission::Refused(e),
            None => Admission::Apply(Pending {
                owner: Owner::Key(key.into(), request),
                totals,
            }),
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
        let Pending { owner, mut totals } = pending;
        match owner {
            Owner::Session(s, mut rec) => {
                let bytes = encode(response);
                let len = bytes.len() as u64;
                self.dbs()
                    .meta
                    .put(txn, &self.response_key(s.session, s.seq), &bytes)?;
                totals.retained_bytes = totals.retained_bytes.saturating_add(len);
                rec.pending += 1;
                rec.pending_bytes = rec.pending_bytes.saturating_add(len);
                self.put_session(txn, s.session, &rec)?;
            }
            Owner::Key(key, request) => {
                let at = now.saturating_add(IDEMPOTENCY_KEY_TTL_MS);
                let rec = KeyRecord {
                    expires_at_ms: at,
                    request,
                    response,
                };
                let bytes = encode(&rec);
                totals.retained_bytes = totals.retained_bytes.saturating_add(bytes.len() as u64);
                totals.keys += 1;
                self.dbs().meta.put(txn, &self.key_key(&key), &bytes)?;
                let index = self.expiry_key(at, EXPIRY_KEY, key.as_bytes());
                self.dbs().meta.put(txn, &index, &[])?;
            }
        }
        self.put_totals(txn, totals)
    }

    /// Looks at the expiry index entries due by `now`, at most [`EXPIRIES_PER_WRITE`] for
    /// each of an entry's `writes`: ends the keys, and the sessions whose last write is older
    /// than their idle timeout; indexes the other sessions again at their real expiry.
    pub(super) fn expire_sessions(
        &self,
        txn: &mut RwTxn<'_>,
        now: u64,
        writes: usize,
    ) -> Result<(), StateError> {
        let most = EXPIRIES_PER_WRITE.saturating_mul(writes.max(1));
        let prefix = keys::meta(self.group, MetaTag::Expiry);
        let mut due = Vec::new();
        for item in self.dbs().meta.prefix_iter(txn, &prefix)? {
            let (k, _) = item?;
            let at = k
                .get(9..17)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            match at {
                Some(at) if at <= now && due.len() < most => due.push(k.to_vec()),
                _ => break,
            }
        }
        if due.is_empty() {
            return Ok(());
        }
        let mut totals = self.totals(txn)?;
        for index in due {
            self.dbs().meta.delete(txn, &index)?;
            let corrupt = || StateError::Corrupt {
                what: "session expiry index".into(),
                detail: format!("key {index:02x?}"),
            };
            let (kind, name) = (*index.get(17).ok_or_else(corrupt)?, &index[18..]);
            if kind == EXPIRY_KEY {
                let key = self.key_key(&String::from_utf8_lossy(name));
                if let Some(b) = self.dbs().meta.get(txn, &key)? {
                    let bytes = b.len() as u64;
                    self.dbs().meta.delete(txn, &key)?;
                    totals.keys = totals.keys.saturating_sub(1);
                    totals.retained_bytes = totals.retained_bytes.saturating_sub(bytes);
                }
                continue;
            }
            let id = u64::from_be_bytes(name.try_into().map_err(|_| corrupt())?);
            let Some(rec) = self.session(txn, id)? else {
                continue;
            };
            if rec.expires_at() > now {
                let again = self.expiry_key(rec.expires_at(), EXPIRY_SESSION, name);
                self.dbs().meta.put(txn, &again, &[])?;
                continue;
            }
            let (_, bytes) = self.forget_responses(txn, id, 0, u64::MAX)?;
            self.dbs().meta.delete(txn, &self.session_key(id))?;
            totals.sessions = totals.sessions.saturating_sub(1);
            totals.retained_bytes = totals.retained_bytes.saturating_sub(bytes);
        }
        self.put_totals(txn, totals)
    }

    /// Open sessions, kept idempotency keys, and the bytes of the responses kept for both.
    pub fn session_counts(&self) -> Result<(u64, u64, u64), StateError> {
        let rtxn = self.env.read_txn()?;
        let totals = self.totals(&rtxn)?;
        Ok((totals.sessions, totals.keys, totals.retained_bytes))
    }
}

/// The refusal of a write when all sessions and keys together keep too many bytes.
fn retained_refusal(totals: &SessionTotals) -> Option<ApplyError> {
    (totals.retained_bytes >= MAX_RETAINED_BYTES).then(|| {
        limit(
            &format!(
                "the cluster keeps {} bytes of responses for retries: sessions must acknowledge \
                 theirs, or idempotency keys expire, before more are kept",
                totals.retained_bytes
            ),
            MAX_RETAINED_BYTES,
        )
    })
}
