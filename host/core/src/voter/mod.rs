//! The passive voter: a raft member that votes and acknowledges appends but never campaigns,
//! small enough for a microcontroller (docs/embedded.md).
//!
//! It keeps what a voter that can never lead needs and nothing more, as a witness does: its
//! vote, the newest log id it knows to be committed, and the log ids (not the entries) of its
//! uncommitted tail, as runs of consecutive entries from one leader. Entry payloads never
//! reach it; a host-side bridge strips them.
//!
//! * [`PassiveVoter`]: the sans-IO state machine (requests in, responses out, time passed in).
//! * [`VoterStore`]: where it persists; [`FlashStore`] keeps it on NOR flash
//!   (`embedded-storage`), wear-levelled and torn-write safe.
//! * The wire types below travel in [`crate::link`] frames, wrapped in an [`Envelope`] and
//!   sealed with the cluster key's session keys ([`crate::link::auth`]); [`VoterPort`] serves
//!   a voter on any `embedded-io` stream, and the key lives on flash ([`load_key`]).
//!
//! The types mirror openraft's with its default "advanced" leader ids (a leader id is a term
//! and a node id, totally ordered), so the bridge maps them field for field.

mod flash;
mod key;
mod passive;
mod port;

pub use flash::{FlashError, FlashStore};
pub use key::{
    KEY_RECORD_LEN, KEY_RECORD_VERSION, KeyError, key_record, load_key, parse_key_record,
};
pub use passive::{MAX_APPEND, MAX_RUNS, PassiveVoter, Persisted, VoterStore};
pub use port::VoterPort;

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// A leader: the term it was elected in and its node id. Ordered by term, then node.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct LeaderId {
    /// Election term.
    pub term: u64,
    /// The leader's node id.
    pub node: u64,
}

/// A log entry's id: the leader that proposed it and its index. Ordered by leader, then index
/// (raft's "more up to date").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogId {
    /// The proposing leader.
    pub leader: LeaderId,
    /// Position in the log (the first entry has index 0).
    pub index: u64,
}

/// A vote for a leader; `committed` once a quorum granted it (the leader is established).
/// Ordered by leader id, then committed over not.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Vote {
    /// The candidate or leader voted for.
    pub leader: LeaderId,
    /// Whether a quorum granted it.
    pub committed: bool,
}

/// `count` consecutive entries proposed by `leader`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The proposing leader.
    pub leader: LeaderId,
    /// How many entries (at least one).
    pub count: u32,
}

/// A request from the bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A candidate asks for this node's vote.
    Vote {
        /// The candidate's vote (uncommitted).
        vote: Vote,
        /// The candidate's last log id.
        last: Option<LogId>,
        /// A leadership transfer authorised by the current leader: ignores the leader lease.
        transfer: bool,
    },
    /// Would this node grant `vote`? Answered without changing anything.
    PreVote {
        /// The vote the candidate would ask for.
        vote: Vote,
        /// The candidate's last log id.
        last: Option<LogId>,
    },
    /// A leader appends entries (heartbeats carry none).
    Append {
        /// The leader's committed vote.
        vote: Vote,
        /// The id of the entry before the first appended one.
        prev: Option<LogId>,
        /// The appended entries' ids, from `prev.index + 1` on: at most [`MAX_RUNS`] runs and
        /// [`MAX_APPEND`] entries (decoding refuses more before allocating for them).
        #[serde(deserialize_with = "bounded_runs")]
        runs: Vec<Run>,
        /// The leader's commit point.
        commit: Option<LogId>,
        /// How long after this request the voter refuses other candidates (the leader lease).
        lease_ms: u32,
    },
    /// A leader installed a snapshot on this node: only its last log id matters here.
    Snapshot {
        /// The leader's committed vote.
        vote: Vote,
        /// The snapshot's last (committed) log id.
        last: LogId,
        /// As for `Append`.
        lease_ms: u32,
    },
    /// What the voter holds (for operators and tests).
    Status,
}

/// The voter's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// To `Vote` and `PreVote`.
    Vote {
        /// The voter's vote after handling the request.
        vote: Vote,
        /// Whether it was granted.
        granted: bool,
        /// The voter's last log id.
        last: Option<LogId>,
    },
    /// To `Append`.
    Append(AppendOutcome),
    /// To `Snapshot`: the voter's vote (higher than the request's if it refused).
    Snapshot {
        /// The voter's vote.
        vote: Vote,
    },
    /// To `Status`.
    Status(Status),
    /// The request could not be handled and changed nothing.
    Refused(Refusal),
}

/// How an append went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendOutcome {
    /// Every entry is stored (durably, before this answer).
    Success,
    /// `prev` is not in this voter's log; the leader should back up.
    Conflict,
    /// The voter has seen a higher vote; the sender is no longer leader.
    HigherVote(Vote),
}

/// Why a request changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Persisting the change failed; nothing was granted or acknowledged.
    Storage,
    /// The uncommitted tail would need more than [`MAX_RUNS`] runs; retry once more commits.
    TailFull,
    /// The request is out of bounds: more than [`MAX_APPEND`] entries, or log indexes near
    /// `u64::MAX` (no real log gets there; a corrupted or forged frame would).
    Invalid,
}

/// What a voter holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Current vote.
    pub vote: Vote,
    /// Last log id.
    pub last: Option<LogId>,
    /// Newest log id known committed.
    pub committed: Option<LogId>,
    /// Runs in the uncommitted tail.
    pub tail_runs: u32,
    /// Times the firmware started on this storage.
    pub boots: u32,
    /// Records written to storage since it was formatted.
    pub writes: u32,
    /// Frames dropped since boot as forged, replayed or sealed under another key (counted
    /// by the link, [`crate::link::auth::VoterAuth`]; line noise is not counted here).
    pub rejected: u32,
}

/// Decodes at most [`MAX_RUNS`] runs: a frame that passed its CRC may still claim thousands,
/// and a microcontroller's heap must not be sized by a length read off the wire.
fn bounded_runs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Run>, D::Error> {
    struct Runs;
    impl<'de> serde::de::Visitor<'de> for Runs {
        type Value = Vec<Run>;
        fn expecting(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
            write!(f, "at most {MAX_RUNS} runs")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Run>, A::Error> {
            if seq.size_hint().is_some_and(|n| n > MAX_RUNS) {
                return Err(serde::de::Error::invalid_length(MAX_RUNS + 1, &self));
            }
            let mut runs = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(run) = seq.next_element::<Run>()? {
                if runs.len() == MAX_RUNS {
                    return Err(serde::de::Error::invalid_length(MAX_RUNS + 1, &self));
                }
                runs.push(run);
            }
            Ok(runs)
        }
    }
    d.deserialize_seq(Runs)
}

/// A request or response with the sequence number that pairs them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Chosen by the bridge, echoed by the voter.
    pub seq: u32,
    /// The message.
    pub body: T,
}
