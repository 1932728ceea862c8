//! Leader-side grouping of client writes: the writes that wait for the leader at the same
//! moment go into one log entry ([`Command::Group`]), each keeping its own response and its
//! own failure (unlike an atomic `Batch`). Raft, the log store, the network and every
//! replica's apply then pay their per-entry costs once per group instead of once per write.
//!
//! Nothing waits to fill a group: the proposer takes what has queued while the previous
//! proposal was handed to raft, so a lone write is proposed at once, alone, as the entry it
//! always was, and a loaded leader makes fewer, larger entries. A group holds at most
//! [`MAX_GROUP_WRITES`] writes and the smaller of `--max-entry-bytes` and a replication
//! batch ([`MAX_BATCH_BYTES`]); a write larger than that is proposed alone.
//!
//! Every proposal, grouped or not, holds its caller's slot of the node's proposal queue
//! (`--queue`) until it is answered, even when the caller has stopped waiting: what waits
//! here and in raft is bounded by `--queue` proposals of at most `--max-entry-bytes` each.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::Instant as _;
use openraft::error::{ClientWriteError, RaftError};
use openraft::impls::ProgressResponder;
use openraft::type_config::async_runtime::WatchReceiver;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use wraft_core::{Command, EntryResponse, GroupedWrite, LogEntry};

use super::level::EntryLevels;

use wraft_core::raft::TypeConfig;

use crate::clock::now_ms;
use crate::raft::MAX_BATCH_BYTES;
use crate::raft::Raft;

/// Writes one group holds at most.
pub const MAX_GROUP_WRITES: usize = 256;

/// Groups proposed and not yet applied, at most: enough to keep the log flush, replication
/// and apply of successive groups overlapping; the writes that arrive meanwhile wait and
/// form the next group.
pub const GROUPS_IN_FLIGHT: usize = 16;

/// Why a proposal has no response.
#[derive(Debug, Clone)]
pub(super) enum NotApplied {
    /// This node does not lead (any more), or has lost its quorum's acknowledgement: nothing
    /// was appended; the leader, once there is one, can take it.
    NotLeader,
    /// Appended, then replaced when this node adopted another leader's log: the next leader
    /// may have committed it.
    Discarded(String),
    /// Raft, or this node's proposer, stopped with the proposal in flight: it may have been
    /// appended, and may yet commit.
    Stopped(String),
    /// Committed, but its response cannot be told (it was not the shape the proposal
    /// needs): it has applied, with an outcome nobody can report.
    Unanswerable(String),
    /// Anything else raft refused it for, before appending it.
    Refused(String),
}

type Answer = Result<EntryResponse, NotApplied>;

/// A proposal's caller: where its answer goes, and the slot of the node's proposal queue it
/// holds until then.
struct Waiter {
    answer: oneshot::Sender<Answer>,
    _slot: OwnedSemaphorePermit,
}

impl Waiter {
    /// Answers the caller (if it still waits) and frees its slot of the queue.
    fn answer(self, answer: Answer) {
        let _ = self.answer.send(answer);
    }
}

/// What a caller proposes: a client write, which may share an entry, or another command
/// (a deploy, a membership of FSMs, a session opened), which never does.
enum Proposal {
    Write(GroupedWrite),
    Alone(Command),
}

struct Pending {
    proposal: Proposal,
    /// Its entry's encoded size standing alone (a bound on its share of a group's).
    bytes: usize,
    waiter: Waiter,
}

/// How the proposer groups, and when it stops waiting for a leader that has lost its quorum.
#[derive(Debug, Clone)]
struct Grouping {
    /// Encoded bytes of writes one group holds at most.
    max_bytes: usize,
    /// Raft's leader lease: a leader whose quorum has not acknowledged it for this long
    /// takes no writes (openraft refuses them), so neither does its proposer's queue.
    lease: Duration,
    /// Whether every member reads groups: until then each write has an entry of its own.
    levels: Arc<EntryLevels>,
}

/// The handle of the node's proposer task.
#[derive(Debug)]
pub(super) struct Proposer {
    raft: Raft,
    grouping: Grouping,
    /// The running task's queue; replaced by a new task's if the task has ended (it ends
    /// only if it panicked: its callers are told the outcome is unknown).
    queue: Mutex<mpsc::UnboundedSender<Pending>>,
}

impl Proposer {
    /// Starts the proposer of `raft`, grouping at most `max_entry_bytes` (and a replication
    /// batch) per entry; it ends when this handle is dropped.
    pub(super) fn start(raft: Raft, max_entry_bytes: usize, levels: Arc<EntryLevels>) -> Self {
        let grouping = Grouping {
            max_bytes: max_entry_bytes.min(MAX_BATCH_BYTES),
            lease: Duration::from_millis(raft.config().election_timeout_max),
            levels,
        };
        let queue = Mutex::new(spawn(raft.clone(), grouping.clone()));
        Self {
            raft,
            grouping,
            queue,
        }
    }

    /// Proposes `command` (whose entry standing alone encodes to `bytes`) and waits for its
    /// response: a client write in the next group, anything else in an entry of its own.
    /// `slot` (of the node's proposal queue) is held until the proposal is answered, also if
    /// this future is dropped first.
    pub(super) async fn propose(
        &self,
        command: Command,
        bytes: usize,
        slot: OwnedSemaphorePermit,
    ) -> Answer {
        let (answer, answered) = oneshot::channel();
        let proposal = match GroupedWrite::of(command) {
            Ok(write) => Proposal::Write(write),
            Err(command) => Proposal::Alone(command),
        };
        let pending = Pending {
            proposal,
            bytes,
            waiter: Waiter {
                answer,
                _slot: slot,
            },
        };
        self.send(pending);
        answered.await.unwrap_or_else(|_| {
            Err(NotApplied::Stopped(
                "this node's proposer stopped with the write in its queue".into(),
            ))
        })
    }

    /// Queues `pending` for the proposer task, starting a new task if the last one ended.
    fn send(&self, pending: Pending) {
        // Sending on an unbounded channel never blocks: the lock is held for an instant.
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(mpsc::error::SendError(pending)) = queue.send(pending) {
            tracing::error!("this node's proposer task had ended; starting a new one");
            *queue = spawn(self.raft.clone(), self.grouping.clone());
            if let Err(mpsc::error::SendError(pending)) = queue.send(pending) {
                // Dropped unanswered: the caller hears that the proposer stopped.
                drop(pending);
            }
        }
    }
}

/// A new proposer task for `raft`, and its queue.
fn spawn(raft: Raft, grouping: Grouping) -> mpsc::UnboundedSender<Pending> {
    let (queue, pending) = mpsc::unbounded_channel();
    tokio::spawn(run(raft, pending, grouping));
    queue
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
async fn run(raft: Raft, mut pending: mpsc::UnboundedReceiver<Pending>, grouping: Grouping) {
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
        let Some(slot) = in_flight_slot(&raft, &in_flight, grouping.lease).await else {
            // Nothing queued was appended: the callers may take it to a leader.
            first.waiter.answer(Err(NotApplied::NotLeader));
            while let Ok(p) = pending.try_recv() {
                p.waiter.answer(Err(NotApplied::NotLeader));
            }
            continue;
        };
        let write = match first.proposal {
            Proposal::Write(write) => write,
            Proposal::Alone(command) => {
                propose(&raft, command, vec![first.waiter], slot).await;
                continue;
            }
        };
        let mut bytes = first.bytes;
        let (mut writes, mut waiters) = (vec![write], vec![first.waiter]);
        // A member whose build predates groups (a rolling upgrade) cannot decode one.
        let most = if grouping.levels.groups(&raft) {
            MAX_GROUP_WRITES
        } else {
            1
        };
        while writes.len() < most {
            match pending.try_recv() {
                Ok(Pending {
                    proposal: Proposal::Write(w),
                    bytes: b,
                    waiter,
                }) if bytes + b <= grouping.max_bytes => {
                    bytes += b;
                    writes.push(w);
                    waiters.push(waiter);
                }
                Ok(p) => {
                    next = Some(p);
                    break;
                }
                Err(_) => break,
            }
        }
        crate::metrics::group_writes(writes.len());
        let command = match <[GroupedWrite; 1]>::try_from(writes) {
            Ok([write]) => write.into_command(),
            Err(writes) => Command::Group(writes),
        };
        propose(&raft, command, waiters, slot).await;
    }
}

/// A slot of the groups in flight, once one is free; `None` if, while waiting for it, this
/// node stopped leading or lost its quorum's acknowledgement for a lease, as a leader cut
/// off from its followers does: openraft refuses such a leader's writes, and the writes
/// queued here would otherwise wait behind its stuck groups until their callers give up,
/// instead of hearing at once that there is no leader to take them.
async fn in_flight_slot(
    raft: &Raft,
    in_flight: &Arc<Semaphore>,
    lease: Duration,
) -> Option<OwnedSemaphorePermit> {
    loop {
        if let Ok(slot) = in_flight.clone().try_acquire_owned() {
            return Some(slot);
        }
        if !leads_with_lease(raft, lease) {
            return None;
        }
        // Looked at again a few times a lease, so that a write waits at most about a lease
        // more than raft would have taken to refuse it.
        match tokio::time::timeout(lease / 4, in_flight.clone().acquire_owned()).await {
            Ok(slot) => return Some(slot.expect("the proposer never closes its semaphore")),
            Err(_) => continue,
        }
    }
}

/// Whether this node leads, acknowledged by its quorum within the last `lease`.
fn leads_with_lease(raft: &Raft, lease: Duration) -> bool {
    let m = raft.metrics();
    let m = m.borrow_watched();
    if m.current_leader != Some(m.id) {
        return false;
    }
    match &m.last_quorum_acked {
        Some(acked) => acked.into_inner().elapsed() < lease,
        // A lone voter is its own quorum; openraft reports no acknowledgement for it.
        None => m.membership_config.membership().voter_ids().count() == 1,
    }
}

/// Hands `command` to raft as one entry and leaves a task to answer `waiters` (one per
/// write of a group, in order; one for anything else) once it has applied.
async fn propose(raft: &Raft, command: Command, waiters: Vec<Waiter>, slot: OwnedSemaphorePermit) {
    let (responder, response) = ProgressResponder::complete_only();
    if let Err(fatal) = raft
        .client_write_ff(LogEntry::new(now_ms(), command), Some(responder))
        .await
    {
        for w in waiters {
            w.answer(Err(NotApplied::Stopped(fatal.to_string())));
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
                for w in waiters {
                    w.answer(Err(stopped()));
                }
                return;
            }
        };
        deliver(result, waiters);
    });
}

/// Each write's own response (a group's responses in its writes' order), or the reason
/// none came, to its waiter.
fn deliver(result: Result<EntryResponse, WriteError>, mut waiters: Vec<Waiter>) {
    match result {
        Ok(EntryResponse::Group(responses)) if responses.len() == waiters.len() => {
            for (w, r) in waiters.into_iter().zip(responses) {
                w.answer(Ok(r));
            }
        }
        Ok(response) if waiters.len() == 1 => {
            if let Some(w) = waiters.pop() {
                w.answer(Ok(response));
            }
        }
        Ok(other) => {
            // Every replica answers a group with a response per write (state/apply.rs):
            // this is a defect, and the writes have applied with outcomes nobody can tell.
            let e = format!(
                "a group of {} writes was answered {other}; they have applied, but their \
                 responses are lost",
                waiters.len()
            );
            tracing::error!("{e}");
            for w in waiters {
                w.answer(Err(NotApplied::Unanswerable(e.clone())));
            }
        }
        Err(e) => {
            let why = not_applied(e);
            for w in waiters {
                w.answer(Err(why.clone()));
            }
        }
    }
}
