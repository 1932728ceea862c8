//! The raft log's writer thread and its in-memory tail.
//!
//! `append` puts the entries in the tail (readable at once, as openraft requires) and
//! queues them; the thread writes everything queued in one LMDB transaction, commits (one
//! durable sync), drops the written entries from the tail and only then reports them flushed.
//! So the leader replicates entries while its own flush is under way, and appends that
//! arrive during a flush share the next one (group commit across calls). Other writes (vote,
//! truncate, purge) go through the same queue, so they happen in call order.

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use openraft::storage::IOFlushed;

use super::{Inner, Meta, log_key};
use crate::raft::{Entry, LogId, TypeConfig, io_err};

/// Entries handed to `append` and not yet committed, by index.
pub(super) type Tail = Mutex<BTreeMap<u64, Entry>>;

type WriteFn = Box<dyn FnOnce(&Inner) -> io::Result<()> + Send>;

/// Encoded entries of one `append`: (index, log id, bytes).
pub(super) type Encoded = Vec<(u64, LogId, Vec<u8>)>;

/// Appends waiting for the next commit.
type Queued = Vec<(Encoded, IOFlushed<TypeConfig>)>;

enum Job {
    Append {
        entries: Encoded,
        callback: IOFlushed<TypeConfig>,
    },
    Write {
        what: &'static str,
        f: WriteFn,
        done: tokio::sync::oneshot::Sender<io::Result<()>>,
    },
}

/// How far the raft log is on disk: every entry below `end` is durable (or purged into a
/// snapshot, which is durable too). `failed` once an append could not be written: nothing
/// more will become durable in this process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Durability {
    pub(super) end: u64,
    pub(super) failed: bool,
}

/// What the state machine waits on before it applies entries: openraft may hand it committed
/// entries this node has only in its in-memory tail, and a state that runs ahead of the log on
/// disk is one a power loss can leave behind with no log to explain it (openraft refuses to
/// start on it when the newest snapshot is older).
#[derive(Debug, Clone)]
pub struct DurableLog(pub(super) tokio::sync::watch::Receiver<Durability>);

impl DurableLog {
    /// Returns once the entry at `index` is on disk in the raft log.
    pub async fn wait_for(&mut self, index: u64) -> io::Result<()> {
        let now = self
            .0
            .wait_for(|d| d.end > index || d.failed)
            .await
            .map_err(|_| gone())?;
        if now.end > index {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "raft log entry {index} was not written to disk; it is not applied"
            )))
        }
    }
}

/// The sending side, kept in the store.
pub(super) type DurableSender = tokio::sync::watch::Sender<Durability>;

/// Lowers the durable end to `from` (a truncation removed what lay above).
pub(super) fn truncated(durable: &DurableSender, from: u64) {
    durable.send_modify(|d| d.end = d.end.min(from));
}

/// The handle of the writer thread; dropping it ends the thread and waits for it, so the
/// env is closed when the store is gone.
#[derive(Debug)]
pub(super) struct Writer {
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

fn gone() -> io::Error {
    io::Error::other("the raft log writer has stopped")
}

impl Writer {
    pub(super) fn start(inner: Arc<Inner>) -> io::Result<Self> {
        let (jobs, rx) = channel();
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || run(&inner, &rx))?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    fn send(&self, job: Job) -> Result<(), Job> {
        match &self.jobs {
            Some(jobs) => jobs.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Queues encoded entries; `callback` fires once they are durable.
    pub(super) fn append(
        &self,
        entries: Encoded,
        callback: IOFlushed<TypeConfig>,
    ) -> io::Result<()> {
        match self.send(Job::Append { entries, callback }) {
            Ok(()) => Ok(()),
            Err(Job::Append { callback, .. }) => {
                callback.io_completed(Err(gone()));
                Err(gone())
            }
            Err(Job::Write { .. }) => Err(gone()),
        }
    }

    /// Runs `f` on the writer thread after everything queued before it; waits for it.
    pub(super) async fn write(
        &self,
        what: &'static str,
        f: impl FnOnce(&Inner) -> io::Result<()> + Send + 'static,
    ) -> io::Result<()> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.send(Job::Write {
            what,
            f: Box::new(f),
            done,
        })
        .map_err(|_| gone())?;
        wait.await.map_err(|_| gone())?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How often the writer measures what a compaction would give back while the log is
/// written (and once more when it goes quiet).
const MEASURE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn run(inner: &Inner, jobs: &Receiver<Job>) {
    #[cfg(feature = "fault-lazy-fsync")]
    let mut synced = std::time::Instant::now();
    let mut measure = Measure::new(inner);
    loop {
        let first = match jobs.recv_timeout(MEASURE_EVERY) {
            Ok(job) => job,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                measure.if_written(inner);
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        // Broken on purpose (`fault-lazy-fsync`): commits are not durable, the env is
        // synced at most every 200 ms.
        #[cfg(feature = "fault-lazy-fsync")]
        if synced.elapsed() >= std::time::Duration::from_millis(200) {
            let _ = inner.env.force_sync();
            synced = std::time::Instant::now();
        }
        let mut appends = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next {
            match job {
                Job::Append { entries, callback } => appends.push((entries, callback)),
                Job::Write { what, f, done } => {
                    commit_appends(inner, std::mem::take(&mut appends));
                    let result =
                        f(inner).map_err(|e| crate::disk::write_failed(what, inner.env.path(), e));
                    let _ = done.send(result);
                }
            }
            next = jobs.try_recv().ok();
        }
        commit_appends(inner, appends);
        measure.written(inner);
    }
}

/// When the writer last measured the env's reclaimable bytes, and whether it wrote since.
struct Measure {
    at: std::time::Instant,
    written: bool,
}

impl Measure {
    fn new(inner: &Inner) -> Self {
        let mut m = Self {
            at: std::time::Instant::now(),
            written: true,
        };
        m.if_written(inner);
        m
    }

    /// After a write: measured again if the last measurement is [`MEASURE_EVERY`] old.
    fn written(&mut self, inner: &Inner) {
        self.written = true;
        if self.at.elapsed() >= MEASURE_EVERY {
            self.if_written(inner);
        }
    }

    /// Measured again if anything was written since the last time.
    fn if_written(&mut self, inner: &Inner) {
        if !std::mem::take(&mut self.written) {
            return;
        }
        self.at = std::time::Instant::now();
        match inner.reclaimable_bytes() {
            Ok(bytes) => inner.reclaimable.set(bytes),
            Err(e) => tracing::debug!("measuring the raft env's reclaimable bytes: {e}"),
        }
    }
}

/// One transaction for every queued append, then their callbacks in order.
fn commit_appends(inner: &Inner, appends: Queued) {
    if appends.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    let result = write_entries(inner, &appends)
        .map_err(|e| crate::disk::write_failed("appending to the raft log", inner.env.path(), e));
    let last = appends
        .iter()
        .flat_map(|(e, _)| e)
        .map(|(i, _, _)| *i)
        .max();
    inner.durable.send_modify(|d| match (&result, last) {
        (Ok(()), Some(last)) => d.end = d.end.max(last + 1),
        (Ok(()), None) => {}
        (Err(_), _) => d.failed = true,
    });
    if result.is_ok() {
        crate::metrics::seconds(crate::metrics::names::RAFT_LOG_STORE, started.elapsed());
        let mut tail = super::locked(&inner.tail, "tail");
        for (index, log_id, _) in appends.iter().flat_map(|(e, _)| e) {
            if tail.get(index).is_some_and(|e| e.log_id == *log_id) {
                tail.remove(index);
            }
        }
        drop(tail);
    }
    for (_, callback) in appends {
        callback.io_completed(match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        });
    }
}

fn write_entries(inner: &Inner, appends: &Queued) -> io::Result<()> {
    let mut wtxn = inner.env.write_txn().map_err(io_err)?;
    for (index, _, bytes) in appends.iter().flat_map(|(e, _)| e) {
        inner
            .logs
            .put(&mut wtxn, &log_key(inner.group, *index), bytes)
            .map_err(io_err)?;
    }
    if let Some(committed) = inner.take_committed() {
        inner.put_meta_in(&mut wtxn, Meta::Committed, &committed)?;
    }
    wtxn.commit().map_err(io_err)
}

/// The tail's entries within `(start, end)`.
pub(super) fn tail_range(tail: &Tail, start: Bound<u64>, end: Bound<u64>) -> Vec<Entry> {
    super::locked(tail, "tail")
        .range((start, end))
        .map(|(_, e)| e.clone())
        .collect()
}
