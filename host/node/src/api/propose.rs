//! Leader-side grouping of client writes: the writes that wait for the leader at the same
//! moment go into one log entry ([`Command::Group`]), each keeping its own response and its
//! own failure (unlike an atomic `Batch`). Raft, the log store, the network and every
//! replica's apply then pay their per-entry costs once per group instead of once per write.
//!
//! Nothing waits to fill a group: the proposer takes what has queued while the previous
//! proposal was handed to raft, so a lone write is proposed at once, alone, as the entry it
//! always was, and a loaded leader makes fewer, larger entries. A group holds at most
//! [`MAX_GROUP_WRITES`] writes and `--max-entry-bytes` of them.

use openraft::error::{ClientWriteError, RaftError};
use openraft::impls::ProgressResponder;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use wraft_core::{Command, EntryResponse, GroupedWrite, LogEntry};

use wraft_core::raft::TypeConfig;

use crate::clock::now_ms;
use crate::raft::Raft;

/// Writes one group holds at most.
pub const MAX_GROUP_WRITES: usize = 256;

/// Groups proposed and not yet applied, at most: enough to keep the log flush, replication
/// and apply of successive groups overlapping; the writes that arrive meanwhile wait and
/// form the next group.
const GROUPS_IN_FLIGHT: usize = 16;

/// Why a proposal has no response.
#[derive(Debug, Clone)]
pub(super) enum NotApplied {
    /// This node does not lead (any more): nothing was appended; the leader can take it.
    NotLeader,
    /// Appended, then replaced when this node adopted another leader's log: the next leader
    /// may have committed it.
    Discarded(String),
    /// Raft stopped with the proposal in flight: it may have been appended.
    Stopped(String),
    /// Anything else raft refused it for, before appending it.
    Refused(String),
}

type Answer = Result<EntryResponse, NotApplied>;

struct Pending {
    write: GroupedWrite,
    /// Its entry's encoded size standing alone (a bound on its share of a group's).
    bytes: usize,
    answer: oneshot::Sender<Answer>,
}

/// The handle of the node's proposer task.
#[derive(Debug)]
pub(super) struct Proposer {
    raft: Raft,
    queue: mpsc::UnboundedSender<Pending>,
}

impl Proposer {
    /// Starts the proposer of `raft`, grouping at most `max_entry_bytes` per entry; it ends
    /// when this handle is dropped. Its queue holds the writes whose callers hold a slot of
    /// the node's proposal queue (`--queue`), and also, until the proposer takes them, those
    /// whose callers gave up (their slot is released with them): not yet bounded by
    /// `--queue` (issue 28's closing note of 2026-12-05, first item).
    pub(super) fn start(raft: Raft, max_entry_bytes: usize) -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(run(raft.clone(), pending, max_entry_bytes));
        Self { raft, queue }
    }

    /// Proposes `command` (whose entry standing alone encodes to `bytes`) and waits for its
    /// response: a client write in the next group, anything else in an entry of its own.
    pub(super) async fn propose(&self, command: Command, bytes: usize) -> Answer {
        let write = match GroupedWrite::of(command) {
            Ok(write) => write,
            Err(command) => {
                let written = self
                    .raft
                    .client_write(LogEntry::new(now_ms(), command))
                    .await;
                return match written {
                    Ok(r) => Ok(r.data),
                    Err(e) => Err(not_applied(e)),
                };
            }
        };
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            write,
            bytes,
            answer,
        };
        if self.queue.send(pending).is_err() {
            return Err(NotApplied::Stopped("the proposer has stopped".into()));
        }
        answered
            .await
            .unwrap_or_else(|_| Err(NotApplied::Stopped("the proposer has stopped".into())))
    }
}

type WriteError = RaftError<TypeConfig, ClientWriteError<TypeConfig>>;

fn not_applied(e: WriteError) -> NotApplied {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => NotApplied::NotLeader,
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(to)) => {
            NotApplied::Discarded(to.to_string())
        }
        RaftError::Fatal(e) => NotApplied::Stopped(e.to_string()),
        other => NotApplied::Refused(other.to_string()),
    }
}

/// The proposer: a group of what is queued, proposed; then the next.
async fn run(raft: Raft, mut pending: mpsc::UnboundedReceiver<Pending>, max_entry_bytes: usize) {
    let in_flight = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(p) => p,
            None => match pending.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // While as many groups as the pipeline needs are on their way, the writes that
        // arrive wait here and go into the next group together.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut group = vec![first];
        while group.len() < MAX_GROUP_WRITES {
            match pending.try_recv() {
                Ok(p) if bytes + p.bytes <= max_entry_bytes => {
                    bytes += p.bytes;
                    group.push(p);
                }
                Ok(p) => {
                    next = Some(p);
                    break;
                }
                Err(_) => break,
            }
        }
        propose(&raft, group, slot).await;
    }
}

/// Hands `group` to raft as one entry (a lone write as the entry it would be alone) and
/// leaves a task to answer each write once it has applied.
async fn propose(raft: &Raft, group: Vec<Pending>, slot: OwnedSemaphorePermit) {
    crate::metrics::group_writes(group.len());
    let (writes, answers): (Vec<_>, Vec<_>) =
        group.into_iter().map(|p| (p.write, p.answer)).unzip();
    let command = match <[GroupedWrite; 1]>::try_from(writes) {
        Ok([write]) => write.into_command(),
        Err(writes) => Command::Group(writes),
    };
    let (responder, response) = ProgressResponder::complete_only();
    if let Err(fatal) = raft
        .client_write_ff(LogEntry::new(now_ms(), command), Some(responder))
        .await
    {
        for a in answers {
            let _ = a.send(Err(NotApplied::Stopped(fatal.to_string())));
        }
        return;
    }
    tokio::spawn(async move {
        let response = response.await;
        drop(slot);
        let result = match response {
            Ok(Ok(written)) => Ok(written.data),
            Ok(Err(e)) => Err(RaftError::APIError(e)),
            Err(_) => {
                let stopped =
                    || NotApplied::Stopped("raft stopped with the write in flight".into());
                for a in answers {
                    let _ = a.send(Err(stopped()));
                }
                return;
            }
        };
        deliver(result, answers);
    });
}

/// Each write's own response (a group's responses in its writes' order), or the reason
/// none came, to its waiter.
fn deliver(result: Result<EntryResponse, WriteError>, mut answers: Vec<oneshot::Sender<Answer>>) {
    match result {
        Ok(EntryResponse::Group(responses)) if responses.len() == answers.len() => {
            for (a, r) in answers.into_iter().zip(responses) {
                let _ = a.send(Ok(r));
            }
        }
        Ok(response) if answers.len() == 1 => {
            if let Some(a) = answers.pop() {
                let _ = a.send(Ok(response));
            }
        }
        Ok(other) => {
            // Every replica answers a group with a response per write (state/apply.rs).
            let e = format!("a group of {} writes was answered {other}", answers.len());
            for a in answers {
                let _ = a.send(Err(NotApplied::Refused(e.clone())));
            }
        }
        Err(e) => {
            let why = not_applied(e);
            for a in answers {
                let _ = a.send(Err(why.clone()));
            }
        }
    }
}
