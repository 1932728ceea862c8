//! The raft log in LMDB (`<data>/raft`).
//!
//! Keys start with the raft group id (u64 BE, 0 today), then the log index (u64 BE), so
//! entries sort by index and several groups can share the env later. Every entry is stored
//! as `crc32(postcard) u32 LE | postcard(Entry)`: LMDB does not checksum pages, so a read
//! verifies the checksum and names the index on a mismatch rather than returning bad data.
//!
//! Durability: a writer thread ([`writer`]) commits every append queued at the moment in one
//! write transaction (LMDB syncs on commit) before reporting it flushed; until then the
//! entries are read from an in-memory tail. The committed index is a hint for restarts
//! (apply up to it at once), so `save_committed` does not pay a commit of its own: it rides
//! in the next append's transaction. No LMDB write runs on an async worker thread.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, RoTxn, WithoutTls};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use serde::{Serialize, de::DeserializeOwned};

use super::holds::{Hold, StoreHolds};
use super::{Entry, LogId, TypeConfig, Vote, io_err};

mod offline;
mod writer;
pub use offline::LogSummary;
pub use writer::DurableLog;
use writer::{DurableSender, Tail, Writer, tail_range, truncated};

/// Default map size (address space) of the raft env; the file grows only as the log does.
#[cfg(target_pointer_width = "64")]
pub const DEFAULT_MAX_LOG_BYTES: usize = 64 << 30;
/// Default map size of the raft env on 32-bit hosts (4 GiB of address space in all).
#[cfg(not(target_pointer_width = "64"))]
pub const DEFAULT_MAX_LOG_BYTES: usize = 512 << 20;

/// Bytes of entries the leader sends a follower in one AppendEntries (openraft bounds a batch
/// by its entry count only: forty 2 MiB blocks would be one 80 MiB RPC).
pub const MAX_BATCH_BYTES: usize = 4 << 20;

#[repr(u8)]
#[derive(Debug, Clone, Copy)]
enum Meta {
    Vote = 1,
    Committed = 2,
    Purged = 3,
    /// The node id this env belongs to, written at first start (or by `wraft init`).
    Owner = 4,
}

#[derive(Debug)]
struct Inner {
    env: Env<WithoutTls>,
    logs: Database<Bytes, Bytes>,
    meta: Database<Bytes, Bytes>,
    group: u64,
    /// A committed log id not yet written: it goes into the next append's transaction.
    committed: Mutex<Option<Option<LogId>>>,
    /// Appended entries the writer has not committed yet.
    tail: Tail,
    /// How far the log is on disk, for the state machine.
    durable: DurableSender,
    /// What a compaction would give back, as the writer thread last measured it.
    reclaimable: crate::disk::Reclaimable,
}

/// The LMDB raft log store of one node.
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
    /// The writer thread (none for the offline tools, which write directly).
    writer: Option<Arc<Writer>>,
    /// Counts this store among the node's [`StoreHolds`] until the env is closed (declared
    /// after `inner` and `writer`, so it is released only once they are dropped).
    hold: Option<Arc<Hold>>,
}

/// A reader of the log, for openraft's replication tasks and state-machine worker.
#[derive(Debug, Clone)]
pub struct LogReader {
    inner: Arc<Inner>,
    /// Released after `inner` (see [`LogStore`]).
    _hold: Option<Arc<Hold>>,
}

fn log_key(group: u64, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

fn meta_key(group: u64, tag: Meta) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8] = tag as u8;
    k
}

/// `crc32 | postcard(entry)`.
pub(crate) fn encode_entry(entry: &Entry) -> io::Result<Vec<u8>> {
    let body = postcard::to_allocvec(entry).map_err(io_err)?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

fn decode_entry(index: u64, bytes: &[u8]) -> io::Result<Entry> {
    let corrupt = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("raft log entry {index}: {what}"),
        )
    };
    if bytes.len() < 4 {
        return Err(corrupt("record shorter than its checksum".into()));
    }
    let (crc, body) = bytes.split_at(4);
    let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let actual = crc32fast::hash(body);
    if expected != actual {
        return Err(corrupt(format!(
            "checksum mismatch (stored {expected:#010x}, computed {actual:#010x})"
        )));
    }
    postcard::from_bytes(body).map_err(|e| corrupt(format!("does not decode: {e}")))
}

impl Inner {
    /// Bytes a compacting copy of the env would give back.
    fn reclaimable_bytes(&self) -> io::Result<u64> {
        let rtxn = self.env.read_txn().map_err(io_err)?;
        crate::disk::reclaimable(&self.env, &rtxn, &[&self.logs, &self.meta]).map_err(io_err)
    }

    fn get_meta<T: DeserializeOwned>(&self, txn: &RoTxn<'_>, tag: Meta) -> io::Result<Option<T>> {
        match self
            .meta
            .get(txn, &meta_key(self.group, tag))
            .map_err(io_err)?
        {
            Some(b) => postcard::from_bytes(b).map(Some).map_err(io_err),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(&self, tag: Meta, value: &T) -> io::Result<()> {
        let mut wtxn = self.env.write_txn().map_err(io_err)?;
        self.put_meta_in(&mut wtxn, tag, value)?;
        wtxn.commit().map_err(io_err)
    }

    fn put_meta_in<T: Serialize>(
        &self,
        wtxn: &mut heed::RwTxn<'_>,
        tag: Meta,
        value: &T,
    ) -> io::Result<()> {
        let bytes = postcard::to_allocvec(value).map_err(io_err)?;
        self.meta
            .put(wtxn, &meta_key(self.group, tag), &bytes)
            .map_err(io_err)
    }

    /// The committed log id waiting for the next append, taken.
    fn take_committed(&self) -> Option<Option<LogId>> {
        locked(&self.committed, "committed").take()
    }

    /// The entries in `(start, end)`, stopping before the one that would take them past
    /// `max_bytes` (encoded), though never before the first.
    fn entries(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
        max_bytes: usize,
    ) -> io::Result<Vec<Entry>> {
        let lo = match start {
            Bound::Included(i) => i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let hi = match end {
            Bound::Included(i) => Bound::Included(log_key(self.group, i)),
            Bound::Excluded(i) => Bound::Excluded(log_key(self.group, i)),
            Bound::Unbounded => Bound::Included(log_key(self.group, u64::MAX)),
        };
        // The tail first: an entry leaves it only after its commit, so whatever the read
        // transaction below misses is still in this copy.
        let pending = tail_range(&self.tail, Bound::Included(lo), end);
        let lo = log_key(self.group, lo);
        let rtxn = self.env.read_txn().map_err(io_err)?;
        let range = (Bound::Included(&lo[..]), hi.as_ref().map(|k| &k[..]));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut fits = |len: usize, taken: usize| {
            bytes = bytes.saturating_add(len);
            taken == 0 || bytes <= max_bytes
        };
        let first_pending = pending.first().map_or(u64::MAX, |e| e.log_id.index);
        for item in self.logs.range(&rtxn, &range).map_err(io_err)? {
            let (k, v) = item.map_err(io_err)?;
            let index = u64::from_be_bytes(k[8..16].try_into().map_err(io_err)?);
            if index >= first_pending {
                break;
            }
            if !fits(v.len(), out.len()) {
                return Ok(out);
            }
            out.push(decode_entry(index, v)?);
        }
        for e in pending {
            let len = postcard::serialize_with_flavor(&e, postcard::ser_flavors::Size::default())
                .map_err(io_err)?;
            if !fits(len, out.len()) {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn last_entry(&self) -> io::Result<Option<Entry>> {
        if let Some(last) = locked(&self.tail, "tail")
            .last_key_value()
            .map(|(_, e)| e.clone())
        {
            return Ok(Some(last));
        }
        let rtxn = self.env.read_txn().map_err(io_err)?;
        let lo = log_key(self.group, 0);
        let hi = log_key(self.group, u64::MAX);
        let range = (Bound::Included(&lo[..]), Bound::Included(&hi[..]));
        let mut iter = self.logs.rev_range(&rtxn, &range).map_err(io_err)?;
        match iter.next() {
            Some(item) => {
                let (k, v) = item.map_err(io_err)?;
                let index = u64::from_be_bytes(k[8..16].try_into().map_err(io_err)?);
                decode_entry(index, v).map(Some)
            }
            None => Ok(None),
        }
    }

    fn delete_range(&self, from: u64, to_inclusive: u64) -> io::Result<()> {
        let lo = log_key(self.group, from);
        let hi = log_key(self.group, to_inclusive);
        let range = (Bound::Included(&lo[..]), Bound::Included(&hi[..]));
        let mut wtxn = self.env.write_txn().map_err(io_err)?;
        self.logs.delete_range(&mut wtxn, &range).map_err(io_err)?;
        wtxn.commit().map_err(io_err)
    }
}

impl LogStore {
    /// Counts this store and every reader made from it among `holds`: openraft does not join
    /// its state-machine worker, which drops its log reader after the state machine, so a
    /// node waiting for [`StoreHolds::released`] must wait for the log env too.
    pub fn held_by(mut self, holds: &StoreHolds) -> Self {
        self.hold = Some(Arc::new(holds.hold()));
        self
    }

    fn reader(&self) -> LogReader {
        LogReader {
            inner: self.inner.clone(),
            _hold: self.hold.clone(),
        }
    }

    /// Opens (creating if needed) `<data_dir>/raft` with the default map size.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        Self::open_sized(data_dir, DEFAULT_MAX_LOG_BYTES)
    }

    /// Opens (creating if needed) `<data_dir>/raft`, which may grow to `max_bytes`.
    pub fn open_sized(data_dir: &Path, max_bytes: usize) -> io::Result<Self> {
        let path = data_dir.join("raft");
        std::fs::create_dir_all(&path)?;
        let mut opts = EnvOpenOptions::new().read_txn_without_tls();
        opts.map_size(max_bytes).max_dbs(4);
        // The `fault-lazy-fsync` feature breaks durability on purpose (see writer.rs), so
        // the fault suite can show that it catches it.
        #[cfg(feature = "fault-lazy-fsync")]
        // SAFETY: NO_SYNC is a documented LMDB flag (commits skip fsync).
        unsafe {
            opts.flags(heed::EnvFlags::NO_SYNC)
        };
        // SAFETY: wraft's own directory, opened once per process (heed enforces it).
        let env = unsafe { opts.open(&path) }.map_err(|e| {
            io::Error::other(format!(
                "cannot open the raft env at {}: {e}",
                path.display()
            ))
        })?;
        if !crate::disk::lock_file_in_step(&env).map_err(io_err)? {
            return Err(io::Error::other(format!(
                "the raft env at {} does not match its lock file (lock.mdb): another process \
                 had the env open while its file was replaced; stop that process (a `wraft \
                 init info` or `verify`?) and start the node again",
                path.display()
            )));
        }
        let mut wtxn = env.write_txn().map_err(io_err)?;
        let logs = env
            .create_database(&mut wtxn, Some("logs"))
            .map_err(io_err)?;
        let meta = env
            .create_database(&mut wtxn, Some("meta"))
            .map_err(io_err)?;
        wtxn.commit().map_err(io_err)?;
        let mut store = Self::over(env, logs, meta);
        let end = match store.inner.last_entry()? {
            Some(last) => last.log_id.index + 1,
            None => {
                let rtxn = store.inner.env.read_txn().map_err(io_err)?;
                let purged: Option<LogId> = store.inner.get_meta(&rtxn, Meta::Purged)?;
                purged.map_or(0, |p| p.index + 1)
            }
        };
        store.inner.durable.send_modify(|d| d.end = end);
        store.writer = Some(Arc::new(Writer::start(store.inner.clone())?));
        Ok(store)
    }

    fn over(
        env: Env<WithoutTls>,
        logs: Database<Bytes, Bytes>,
        meta: Database<Bytes, Bytes>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                env,
                logs,
                meta,
                group: 0,
                committed: Mutex::new(None),
                tail: Mutex::new(Default::default()),
                durable: DurableSender::new(Default::default()),
                reclaimable: Default::default(),
            }),
            writer: None,
            hold: None,
        }
    }

    /// Records that this env belongs to node `id`, or refuses if it belongs to another node
    /// (starting node 2 on node 1's data directory would vote twice in one term).
    pub fn claim(&self, id: super::NodeId) -> io::Result<()> {
        let rtxn = self.inner.env.read_txn().map_err(io_err)?;
        let owner: Option<super::NodeId> = self.inner.get_meta(&rtxn, Meta::Owner)?;
        drop(rtxn);
        match owner {
            Some(owner) if owner != id => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("this data directory belongs to node {owner}, not node {id}"),
            )),
            Some(_) => Ok(()),
            None => self.inner.put_meta(Meta::Owner, &id),
        }
    }

    /// The writer thread, which a store opened for a running node has.
    fn writer(&self) -> io::Result<&Writer> {
        self.writer
            .as_deref()
            .ok_or_else(|| io::Error::other("this raft env was opened read-only"))
    }

    /// Runs a write on the writer thread, after every append queued before it.
    async fn write(
        &self,
        what: &'static str,
        f: impl FnOnce(&Inner) -> io::Result<()> + Send + 'static,
    ) -> io::Result<()> {
        self.writer()?.write(what, f).await
    }

    /// How far this log is on disk; a state machine given it applies nothing before that
    /// ([`super::StateMachine::applying_only_durable`]).
    pub fn durable(&self) -> DurableLog {
        DurableLog(self.inner.durable.subscribe())
    }

    /// Size of the env's data file in bytes.
    pub fn disk_size(&self) -> io::Result<u64> {
        self.inner.env.real_disk_size().map_err(io_err)
    }

    /// The bytes a compaction would give back, as the writer thread last measured them (it
    /// measures at most every second while the log is written, and once it goes quiet).
    pub fn reclaimable(&self) -> crate::disk::Reclaimable {
        self.inner.reclaimable.clone()
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
        self.inner.entries(start, end, usize::MAX)
    }

    /// A replication batch: at most [`MAX_BATCH_BYTES`] of entries (and at least one), so
    /// large entries are sent a few at a time, each RPC within a deadline its size allows.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        self.inner.entries(
            Bound::Included(start),
            Bound::Excluded(end),
            MAX_BATCH_BYTES,
        )
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        let rtxn = self.inner.env.read_txn().map_err(io_err)?;
        self.inner.get_meta(&rtxn, Meta::Vote)
    }
}

/// The store reads through the same code as its readers.
impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.reader().try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.reader().read_vote().await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let purged: Option<LogId> = {
            let rtxn = self.inner.env.read_txn().map_err(io_err)?;
            self.inner.get_meta(&rtxn, Meta::Purged)?
        };
        let last = self.inner.last_entry()?.map(|e| e.log_id).or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let vote = *vote;
        self.write("saving the vote", move |inner| {
            inner.put_meta(Meta::Vote, &vote)
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        *locked(&self.inner.committed, "committed") = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        if let Some(committed) = *locked(&self.inner.committed, "committed") {
            return Ok(committed);
        }
        let rtxn = self.inner.env.read_txn().map_err(io_err)?;
        Ok(self
            .inner
            .get_meta::<Option<LogId>>(&rtxn, Meta::Committed)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let writer = self.writer()?;
        let mut encoded = Vec::new();
        let mut tail = locked(&self.inner.tail, "tail");
        for e in entries {
            encoded.push((e.log_id.index, e.log_id, encode_entry(&e)?));
            tail.insert(e.log_id.index, e);
        }
        drop(tail);
        writer.append(encoded, callback)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        locked(&self.inner.tail, "tail").split_off(&from);
        self.write("truncating the raft log", move |inner| {
            truncated(&inner.durable, from);
            inner.delete_range(from, u64::MAX)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.write("purging the raft log", move |inner| {
            // Record the purge point first: a crash between the two steps leaves extra
            // entries below it, which are ignored, never a gap above it.
            inner.put_meta(Meta::Purged, &log_id)?;
            inner.delete_range(0, log_id.index)
        })
        .await
    }
}

/// Locks one of the store's in-memory tables. Nothing panics while holding them (map and
/// option updates), so a poisoned lock is a bug elsewhere: the node stops naming the table,
/// rather than hand openraft no entries or drop a commit hint and carry on.
pub(super) fn locked<'a, T>(table: &'a Mutex<T>, name: &str) -> std::sync::MutexGuard<'a, T> {
    table.lock().unwrap_or_else(|_| {
        panic!("the raft log's in-memory {name} table was poisoned by a panic while locked")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// openraft's state-machine worker drops its log reader after the state machine: the
    /// holds are released only when the last reader is gone and the env closed, so the
    /// directory opens again at once (the restart test failed on CI when they were not).
    #[tokio::test]
    async fn the_holds_last_until_the_last_log_reader_is_gone() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().expect("tmp");
        let holds = StoreHolds::default();
        let mut store = LogStore::open(dir.path()).expect("open").held_by(&holds);
        let reader = store.get_log_reader().await;
        drop(store);
        assert!(
            holds.released().now_or_never().is_none(),
            "a reader still holds the env"
        );
        assert!(LogStore::open(dir.path()).is_err(), "the env is still open");
        drop(reader);
        assert!(holds.released().now_or_never().is_some());
        LogStore::open(dir.path()).expect("opens again once released");
    }

    /// A poisoned tail stops the reader loudly; it used to read as no entries at all.
    #[test]
    fn a_poisoned_tail_is_not_read_as_an_empty_log() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = LogStore::open(dir.path()).expect("open");
        let inner = store.inner.clone();
        let poisoner = std::thread::spawn(move || {
            let _held = inner.tail.lock().expect("lock");
            panic!("poison the tail");
        });
        assert!(poisoner.join().is_err());
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store
                .inner
                .entries(Bound::Included(1), Bound::Unbounded, usize::MAX)
        }));
        let Err(panic) = read else {
            panic!(
                "a poisoned tail was read as {:?}",
                read.map(|r| r.map(|e| e.len()))
            )
        };
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("tail table was poisoned"), "{message}");
    }

    #[test]
    fn a_flipped_bit_is_reported_with_its_index() {
        let entry = Entry {
            log_id: openraft::LogId::new(
                openraft::impls::leader_id_adv::LeaderId {
                    term: 3,
                    node_id: 1,
                },
                42,
            ),
            payload: openraft::EntryPayload::Blank,
        };
        let mut bytes = encode_entry(&entry).expect("encode");
        assert_eq!(
            decode_entry(42, &bytes).expect("decode").log_id,
            entry.log_id
        );
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let err = decode_entry(42, &bytes).expect_err("corrupt");
        assert!(
            err.to_string()
                .contains("raft log entry 42: checksum mismatch"),
            "{err}"
        );
    }
}
