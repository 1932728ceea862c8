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
        /// What the keyspace holds before the call, and the quota its writes must keep to.
        usage: Usage,
    },
}

/// The bytes an FSM's keyspace holds, each key and value counted (the prefix not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes held.
    pub bytes: u64,
    /// The most a write may leave (`None`: not enforced, as for first-format entries). A
    /// write that shrinks the keyspace is allowed past it, so a lowered quota can be met.
    pub quota: Option<u64>,
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
    usage: Option<Usage>,
    usage_changed: bool,
}

// SAFETY: the pointers are only dereferenced during `FsmRuntime::call`, on the calling
// thread, while the caller's borrow of the transaction is live.
unsafe impl Send for Keyspace {}

impl Keyspace {
    pub(crate) fn new(target: KvTarget<'_, '_>) -> Self {
        let (access, db, prefix, usage) = match target {
            KvTarget::None => (Access::None, None, [0; 16], None),
            KvTarget::Read { txn, db, prefix } => (
                Access::Read((txn as *const RoTxn<'_>).cast()),
                Some(db),
                prefix,
                None,
            ),
            KvTarget::Write {
                txn,
                db,
                prefix,
                usage,
            } => (
                Access::Write((txn as *mut RwTxn<'_>).cast()),
                Some(db),
                prefix,
                Some(usage),
            ),
        };
        Self {
            access,
            db,
            prefix,
            key_buf: Vec::with_capacity(512),
            usage,
            usage_changed: false,
        }
    }

    /// What the keyspace holds after the call's writes, if they changed it.
    pub(crate) fn usage_after(&self) -> Option<u64> {
        self.usage.filter(|_| self.usage_changed).map(|u| u.bytes)
    }

    /// Copies the value of `key` into `out` and returns its length, or `None` if absent. A
    /// value longer than `affordable` bytes is not copied: the call runs out of fuel.
    pub(crate) fn get(
        &mut self,
        key: &[u8],
        out: &mut Vec<u8>,
        affordable: u64,
    ) -> Result<Option<usize>, HostAbort> {
        let (txn, db) = readable(&self.access, self.db)?;
        let full = join(&mut self.key_buf, &self.prefix, key);
        match db.get(txn, full).map_err(HostAbort::Storage)? {
            Some(v) if v.len() as u64 > affordable => Err(HostAbort::OutOfFuel),
            Some(v) => {
                out.clear();
                out.extend_from_slice(v);
                Ok(Some(v.len()))
            }
            None => Ok(None),
        }
    }

    /// Bytes `key`'s pair holds now (key and value), 0 if absent.
    fn held(&mut self, key: &[u8]) -> Result<u64, HostAbort> {
        let (txn, db) = readable(&self.access, self.db)?;
        let full = join(&mut self.key_buf, &self.prefix, key);
        Ok(db
            .get(txn, full)
            .map_err(HostAbort::Storage)?
            .map_or(0, |v| (key.len() + v.len()) as u64))
    }

    pub(crate) fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), HostAbort> {
        writable(&mut self.access, self.db)?;
        let before = self.held(key)?;
        let after = (key.len() + value.len()) as u64;
        if let Some(usage) = &mut self.usage {
            let bytes = usage.bytes.saturating_sub(before).saturating_add(after);
            if let Some(quota) = usage.quota
                && bytes > quota
                && after > before
            {
                return Err(HostAbort::Apply(ApplyError::QuotaExceeded {
                    needed: bytes,
                    quota,
                }));
            }
            usage.bytes = bytes;
            self.usage_changed = true;
        }
        let (txn, db) = writable(&mut self.access, self.db)?;
        let full = join(&mut self.key_buf, &self.prefix, key);
        db.put(txn, full, value).map_err(HostAbort::Storage)
    }

    pub(crate) fn delete(&mut self, key: &[u8]) -> Result<bool, HostAbort> {
        writable(&mut self.access, self.db)?;
        let before = self.held(key)?;
        if let Some(usage) = &mut self.usage
            && before > 0
        {
            usage.bytes = usage.bytes.saturating_sub(before);
            self.usage_changed = true;
        }
        let (txn, db) = writable(&mut self.access, self.db)?;
        let full = join(&mut self.key_buf, &self.prefix, key);
        db.delete(txn, full).map_err(HostAbort::Storage)
    }

    /// One page of the range `[start, end)` (`end` empty: to the end of the keyspace),
    /// encoded as postcard `Vec<(Vec<u8>, Vec<u8>)>` straight from LMDB's pages, with the
    /// number of pairs it holds.
    pub(crate) fn scan_page(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<u8>, usize), HostAbort> {
        let mut body = Vec::new();
        let mut items = 0usize;
        self.scan_each(start, end, limit, max_bytes, |k, v| {
            varint(&mut body, k.len());
            body.extend_from_slice(k);
            varint(&mut body, v.len());
            body.extend_from_slice(v);
            items += 1;
        })?;
        let mut page = Vec::with_capacity(body.len() + 5);
        varint(&mut page, items);
        page.extend_from_slice(&body);
        Ok((page, items))
    }

    /// Calls `each` with the pairs of one page: at most `limit`, stopping after the pair that
    /// takes the keys (with their prefix) and values past `max_bytes` (the ABI's rule).
    fn scan_each(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        max_bytes: usize,
        mut each: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HostAbort> {
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
        let (mut items, mut bytes) = (0, 0);
        if hi.as_deref().is_some_and(|h| h <= lo.as_slice()) {
            return Ok(());
        }
        let range = (Bound::Included(lo.as_slice()), upper);
        for item in db.range(txn, &range).map_err(HostAbort::Storage)? {
            if items >= limit || bytes > max_bytes {
                break;
            }
            let (k, v) = item.map_err(HostAbort::Storage)?;
            bytes += k.len() + v.len();
            items += 1;
            each(&k[self.prefix.len()..], v);
        }
        Ok(())
    }
}

/// postcard's encoding of a length: unsigned LEB128.
fn varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
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

#[cfg(test)]
mod tests {
    #[test]
    fn pages_encode_as_postcard_does() {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..300u32)
            .map(|i| (i.to_be_bytes().to_vec(), vec![7; i as usize]))
            .collect();
        let mut body = Vec::new();
        for (k, v) in &pairs {
            super::varint(&mut body, k.len());
            body.extend_from_slice(k);
            super::varint(&mut body, v.len());
            body.extend_from_slice(v);
        }
        let mut page = Vec::new();
        super::varint(&mut page, pairs.len());
        page.extend_from_slice(&body);
        assert_eq!(page, postcard::to_allocvec(&pairs).expect("encode"));
    }
}
