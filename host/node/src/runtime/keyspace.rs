//! An FSM's keyspace inside an LMDB transaction, as the host imports see it.
//!
//! wasmtime requires a store's data to be `'static`, but an LMDB transaction borrows its
//! environment. [`Keyspace`] therefore holds a raw pointer to a transaction that the caller
//! of [`FsmRuntime::call`](super::FsmRuntime::call) lends for exactly the duration of that
//! call: the `Store` holding the keyspace is created and dropped inside `call`, which borrows
//! the transaction (mutably, for writes) for its whole body.

use std::ops::Bound;

use heed::types::Bytes;
use heed::{Database, RoTxn, RwTxn};

use super::HostAbort;
use wraft_core::ApplyError;

/// The byte prefix of one FSM's keys: group id and FSM id, both big-endian u64.
pub type KeyPrefix = [u8; 16];

/// Where a call's key-value imports go.
pub enum KvTarget<'t, 'p> {
    /// No keyspace (JSON codecs): every kv import is an ABI violation.
    None,
    /// Read-only (queries): writes are refused with `ApplyError::ReadOnly`.
    Read {
        /// The read transaction.
        txn: &'t RoTxn<'p>,
        /// The data database.
        db: Database<Bytes, Bytes>,
        /// The FSM's prefix.
        prefix: KeyPrefix,
    },
    /// Read-write (apply, init, migrate).
    Write {
        /// The write transaction (a nested one per entry, so failures roll back).
        txn: &'t mut RwTxn<'p>,
        /// The data database.
        db: Database<Bytes, Bytes>,
        /// The FSM's prefix.
        prefix: KeyPrefix,
    },
}

impl std::fmt::Debug for KvTarget<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "KvTarget::None",
            Self::Read { .. } => "KvTarget::Read",
            Self::Write { .. } => "KvTarget::Write",
        })
    }
}

enum Access {
    None,
    Read(*const RoTxn<'static>),
    Write(*mut RwTxn<'static>),
}

pub(crate) struct Keyspace {
    access: Access,
    db: Option<Database<Bytes, Bytes>>,
    prefix: KeyPrefix,
    key_buf: Vec<u8>,
}

// SAFETY: the pointers are only dereferenced during `FsmRuntime::call`, on the calling
// thread, while the caller's borrow of the transaction is live.
unsafe impl Send for Keyspace {}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

impl Keyspace {
    pub(crate) fn new(target: KvTarget<'_, '_>) -> Self {
        let (access, db, prefix) = match target {
            KvTarget::None => (Access::None, None, [0; 16]),
            KvTarget::Read { txn, db, prefix } => (
                Access::Read((txn as *const RoTxn<'_>).cast()),
                Some(db),
                prefix,
            ),
            KvTarget::Write { txn, db, prefix } => (
                Access::Write((txn as *mut RwTxn<'_>).cast()),
                Some(db),
                prefix,
            ),
        };
        Self {
            access,
            db,
            prefix,
            key_buf: Vec::with_capacity(512),
        }
    }

    pub(crate) fn get(&mut self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, HostAbort> {
        let (txn, db) = readable(&self.access, self.db)?;
        let full = join(&mut self.key_buf, &self.prefix, key);
        match db.get(txn, full).map_err(HostAbort::Storage)? {
            Some(v) => {
                out.clear();
                out.extend_from_slice(v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub(crate) fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), HostAbort> {
        let (txn, db) = writable(&mut self.access, self.db)?;
        let full = join(&mut self.key_buf, &self.prefix, key);
        db.put(txn, full, value).map_err(HostAbort::Storage)
    }

    pub(crate) fn delete(&mut self, key: &[u8]) -> Result<bool, HostAbort> {
        let (txn, db) = writable(&mut self.access, self.db)?;
        let full = join(&mut self.key_buf, &self.prefix, key);
        db.delete(txn, full).map_err(HostAbort::Storage)
    }

    /// One page of the range `[start, end)` (`end` empty: to the end of the keyspace).
    pub(crate) fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        max_bytes: usize,
    ) -> Result<Pairs, HostAbort> {
        let (txn, db) = readable(&self.access, self.db)?;
        let lo = [&self.prefix[..], start].concat();
        let hi = if end.is_empty() {
            prefix_successor(&self.prefix)
        } else {
            Some([&self.prefix[..], end].concat())
        };
        let upper = match &hi {
            Some(h) => Bound::Excluded(h.as_slice()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        if hi.as_deref().is_some_and(|h| h <= lo.as_slice()) {
            return Ok(out);
        }
        let range = (Bound::Included(lo.as_slice()), upper);
        for item in db.range(txn, &range).map_err(HostAbort::Storage)? {
            if out.len() >= limit || bytes > max_bytes {
                break;
            }
            let (k, v) = item.map_err(HostAbort::Storage)?;
            bytes += k.len() + v.len();
            out.push((k[self.prefix.len()..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

fn no_keyspace() -> HostAbort {
    HostAbort::Apply(ApplyError::AbiViolation("no keyspace in this call".into()))
}

fn join<'b>(buf: &'b mut Vec<u8>, prefix: &[u8], key: &[u8]) -> &'b [u8] {
    buf.clear();
    buf.extend_from_slice(prefix);
    buf.extend_from_slice(key);
    buf
}

fn readable(
    access: &Access,
    db: Option<Database<Bytes, Bytes>>,
) -> Result<(&RoTxn<'static>, Database<Bytes, Bytes>), HostAbort> {
    let db = db.ok_or_else(no_keyspace)?;
    // SAFETY: see the module docs; the pointee outlives this call.
    let txn = unsafe {
        match access {
            Access::None => return Err(no_keyspace()),
            Access::Read(p) => &**p,
            Access::Write(p) => &***p,
        }
    };
    Ok((txn, db))
}

fn writable(
    access: &mut Access,
    db: Option<Database<Bytes, Bytes>>,
) -> Result<(&mut RwTxn<'static>, Database<Bytes, Bytes>), HostAbort> {
    match (access, db) {
        // SAFETY: see the module docs; the pointee outlives this call and nothing else uses
        // it while the call runs.
        (Access::Write(p), Some(db)) => Ok((unsafe { &mut **p }, db)),
        (Access::Read(_), _) => Err(HostAbort::Apply(ApplyError::ReadOnly)),
        _ => Err(no_keyspace()),
    }
}

/// The smallest byte string greater than every string starting with `prefix`.
pub(crate) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
