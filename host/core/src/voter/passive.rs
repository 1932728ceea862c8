//! The passive voter's state machine, by the raft rules as openraft applies them.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use super::{AppendOutcome, LeaderId, LogId, Refusal, Request, Response, Run, Status, Vote};

/// Most runs (leader changes) the uncommitted tail may hold. A new leader's first entry
/// commits within a round trip, so more than a couple is rare; the bound keeps the stored
/// record small.
pub const MAX_RUNS: usize = 16;

/// Most entries one append may carry (the bridge cuts longer ones; openraft sends 300).
pub const MAX_APPEND: u64 = 4096;

/// Log indexes stay below this: index arithmetic (`+ 1`, `+ count`) then never overflows.
const MAX_INDEX: u64 = 1 << 62;

/// Everything the voter persists, written whole on every change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// Current vote.
    pub vote: Vote,
    /// Newest log id known committed: every entry up to it matches any leader's log.
    pub committed: Option<LogId>,
    /// Ids of the entries after `committed`, in runs.
    pub tail: Vec<Run>,
    /// Times the voter started on this storage.
    pub boots: u32,
}

/// Durable storage for [`Persisted`]: `save` returns once the state survives power loss.
pub trait VoterStore {
    /// Why a save failed.
    type Error: core::fmt::Debug;
    /// Persists `state`, replacing the previous one.
    fn save(&mut self, state: &Persisted) -> Result<(), Self::Error>;
    /// Records written since the storage was formatted.
    fn writes(&self) -> u32;
}

/// A voter that never campaigns. Feed it requests with [`PassiveVoter::handle`].
#[derive(Debug)]
pub struct PassiveVoter<S> {
    state: Persisted,
    /// Milliseconds (on the caller's clock) until which an established leader's lease holds.
    lease_until: u64,
    store: S,
}

/// Where an index falls in the voter's log.
enum At {
    /// At or before the committed id: matches every leader's log.
    Committed,
    /// In the tail, proposed by this leader.
    Tail(LeaderId),
    /// Past the end.
    Missing,
}

impl Persisted {
    fn next_committed(&self) -> u64 {
        self.committed.map_or(0, |c| c.index + 1)
    }

    /// The last log id.
    pub fn last(&self) -> Option<LogId> {
        let tail: u64 = self.tail.iter().map(|r| u64::from(r.count)).sum();
        match self.tail.last() {
            Some(run) => Some(LogId {
                leader: run.leader,
                index: self.next_committed() + tail - 1,
            }),
            None => self.committed,
        }
    }

    fn at(&self, index: u64) -> At {
        let mut next = self.next_committed();
        if index < next {
            return At::Committed;
        }
        for run in &self.tail {
            next += u64::from(run.count);
            if index < next {
                return At::Tail(run.leader);
            }
        }
        At::Missing
    }

    fn has(&self, id: &LogId) -> bool {
        match self.at(id.index) {
            At::Committed => true,
            At::Tail(leader) => leader == id.leader,
            At::Missing => false,
        }
    }

    /// Drops the tail from `index` on.
    fn truncate(&mut self, index: u64) {
        let mut start = self.next_committed();
        let mut keep = Vec::new();
        for run in &self.tail {
            if start >= index {
                break;
            }
            let count = run
                .count
                .min(u32::try_from(index - start).unwrap_or(u32::MAX));
            keep.push(Run {
                leader: run.leader,
                count,
            });
            start += u64::from(run.count);
        }
        self.tail = keep;
    }

    fn push(&mut self, leader: LeaderId) -> Result<(), Refusal> {
        let full = self.tail.len() == MAX_RUNS;
        match self.tail.last_mut() {
            Some(run) if run.leader == leader => run.count += 1,
            _ if full => return Err(Refusal::TailFull),
            _ => self.tail.push(Run { leader, count: 1 }),
        }
        Ok(())
    }

    /// Marks everything up to `id` committed and forgets those entries' ids. `id` must be in
    /// this log (the caller checked it against the leader's).
    fn commit(&mut self, id: LogId) {
        if self.committed.is_some_and(|c| c.index >= id.index) {
            return;
        }
        let mut start = self.next_committed();
        let mut rest = Vec::new();
        for run in &self.tail {
            let end = start + u64::from(run.count);
            if end > id.index + 1 {
                let skip = (id.index + 1).saturating_sub(start);
                rest.push(Run {
                    leader: run.leader,
                    count: run.count - u32::try_from(skip).unwrap_or(0),
                });
            }
            start = end;
        }
        self.tail = rest;
        self.committed = Some(id);
    }
}

impl<S: VoterStore> PassiveVoter<S> {
    /// A voter resuming from `state` (loaded from `store`, or the default for new storage).
    pub fn new(state: Persisted, store: S) -> Self {
        Self {
            state,
            lease_until: 0,
            store,
        }
    }

    /// The state as persisted (or about to be: commit-only changes wait for the next write).
    pub fn state(&self) -> &Persisted {
        &self.state
    }

    /// The storage.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Handles one request at `now_ms` (any monotonic millisecond clock). A response that
    /// grants or acknowledges anything is only returned once that is durable.
    pub fn handle(&mut self, now_ms: u64, request: &Request) -> Response {
        if !in_bounds(request) {
            return Response::Refused(Refusal::Invalid);
        }
        let mut next = self.state.clone();
        let mut lease_until = self.lease_until;
        let response = match request {
            Request::Vote {
                vote,
                last,
                transfer,
            } => {
                let leased = self.state.vote.committed && now_ms < lease_until && !transfer;
                let granted = !leased && *last >= next.last() && *vote >= next.vote;
                if granted && *vote > next.vote {
                    next.vote = *vote;
                    lease_until = now_ms;
                }
                Response::Vote {
                    vote: next.vote,
                    granted,
                    last: next.last(),
                }
            }
            Request::PreVote { vote, last } => {
                let leased = self.state.vote.committed && now_ms < lease_until;
                Response::Vote {
                    vote: next.vote,
                    granted: !leased && *last >= next.last() && *vote >= next.vote,
                    last: next.last(),
                }
            }
            Request::Append {
                vote,
                prev,
                runs,
                commit,
                lease_ms,
            } => {
                if *vote < next.vote {
                    Response::Append(AppendOutcome::HigherVote(next.vote))
                } else {
                    next.vote = *vote;
                    lease_until = now_ms + u64::from(*lease_ms);
                    match append(&mut next, prev, runs, commit) {
                        Ok(outcome) => Response::Append(outcome),
                        Err(refusal) => return Response::Refused(refusal),
                    }
                }
            }
            Request::Snapshot {
                vote,
                last,
                lease_ms,
            } => {
                if *vote >= next.vote {
                    next.vote = *vote;
                    lease_until = now_ms + u64::from(*lease_ms);
                    if !next.has(last) {
                        next.tail.clear();
                    }
                    next.commit(*last);
                }
                Response::Snapshot { vote: next.vote }
            }
            Request::Status => Response::Status(Status {
                vote: next.vote,
                last: next.last(),
                committed: next.committed,
                tail_runs: u32::try_from(next.tail.len()).unwrap_or(u32::MAX),
                boots: next.boots,
                writes: self.store.writes(),
                // The link's count: the port fills it in (`VoterPort`).
                rejected: 0,
            }),
        };
        // Only the vote and the tail need to survive a restart; a newer commit point (which
        // only lets the voter forget ids) rides along with the next write.
        // (Any truncation changes the last log id: raft's log matching property.)
        let changed = next.vote != self.state.vote || next.last() != self.state.last();
        if changed && self.store.save(&next).is_err() {
            return Response::Refused(Refusal::Storage);
        }
        self.state = next;
        self.lease_until = lease_until;
        response
    }
}

/// Whether every index in `request` (and every index an append reaches) is below
/// [`MAX_INDEX`], and an append carries at most [`MAX_APPEND`] entries.
fn in_bounds(request: &Request) -> bool {
    let ok = |id: &Option<LogId>| id.is_none_or(|id| id.index < MAX_INDEX);
    match request {
        Request::Vote { last, .. } | Request::PreVote { last, .. } => ok(last),
        Request::Snapshot { last, .. } => last.index < MAX_INDEX,
        Request::Append {
            prev, runs, commit, ..
        } => {
            let count: u64 = runs.iter().map(|r| u64::from(r.count)).sum();
            ok(prev) && ok(commit) && count <= MAX_APPEND
        }
        Request::Status => true,
    }
}

/// Applies an append to `state` by raft's rules: `prev` must be in the log; entries that
/// differ from the voter's replace the rest of its tail; matching ones are kept.
fn append(
    state: &mut Persisted,
    prev: &Option<LogId>,
    runs: &[Run],
    commit: &Option<LogId>,
) -> Result<AppendOutcome, Refusal> {
    if let Some(prev) = prev
        && !state.has(prev)
    {
        state.truncate(prev.index);
        return Ok(AppendOutcome::Conflict);
    }
    // The log matches the leader's up to `prev`: commit what the leader committed up to
    // there first, so a tail at its run bound can make room before the new entries.
    if let (Some(prev), Some(commit)) = (*prev, *commit) {
        state.commit(if commit.index <= prev.index {
            commit
        } else {
            prev
        });
    }
    let mut index = prev.map_or(0, |p| p.index + 1);
    let mut last = *prev;
    for run in runs {
        for _ in 0..run.count {
            match state.at(index) {
                At::Committed => {}
                At::Tail(leader) if leader == run.leader => {}
                At::Tail(_) => {
                    state.truncate(index);
                    state.push(run.leader)?;
                }
                At::Missing => state.push(run.leader)?,
            }
            last = Some(LogId {
                leader: run.leader,
                index,
            });
            index += 1;
        }
    }
    // The log now matches the leader's up to `last`, so its commit point (or `last`, if the
    // leader has committed further) is committed here too.
    if let Some(commit) = *commit {
        match last {
            Some(last) if commit.index > last.index => state.commit(last),
            Some(_) => state.commit(commit),
            None => {}
        }
    }
    Ok(AppendOutcome::Success)
}

#[cfg(test)]
#[path = "passive_tests.rs"]
mod tests;
