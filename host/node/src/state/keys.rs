//! Key layout of the state env. Every key starts with the raft group id (big-endian u64,
//! 0 for now), so several groups can later share one env without a data migration.

use wraft_core::ModuleId;

use crate::runtime::KeyPrefix;

/// Raft group id.
pub type GroupId = u64;

/// `meta` tags.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub enum MetaTag {
    /// Last applied log position (postcard `AppliedPosition`).
    Applied = 1,
    /// Last applied entry timestamp (u64 LE ms): FSM time never runs backwards.
    LastTimestamp = 2,
    /// Next FSM id to assign (u64 LE).
    NextFsmId = 3,
    /// Store format version (u32 LE).
    Format = 4,
    /// The raft layer's applied state (last applied log id and membership), opaque here.
    RaftState = 5,
    /// This node's digest at the last checkpoint it applied (postcard `StateDigest`).
    Checkpoint = 6,
    /// Set when a checkpoint found this node's state different from the leader's
    /// (postcard `Divergence`); reads are refused while it exists.
    Divergence = 7,
    /// Bytes one FSM's keyspace holds (u64 LE), keyed by its id after the tag ([`usage`]).
    Usage = 8,
    /// One open session (postcard `SessionRecord`), keyed by its id after the tag.
    Session = 9,
    /// A session's kept response (postcard `EntryResponse`): | session id | sequence.
    SessionResponse = 10,
    /// When a session or an idempotency key is next looked at for expiry: | ms | 0 | session
    /// id, or | ms | 1 | key; empty values (an index in time order).
    Expiry = 11,
    /// An idempotency key's record (postcard `KeyRecord`): | key.
    IdempotencyKey = 12,
    /// Counts of sessions, keys and kept response bytes (postcard `SessionTotals`).
    SessionTotals = 13,
}

/// The tags whose records are sessions' and idempotency keys' (hashed in digests).
pub const SESSION_TAGS: [MetaTag; 5] = [
    MetaTag::Session,
    MetaTag::SessionResponse,
    MetaTag::Expiry,
    MetaTag::IdempotencyKey,
    MetaTag::SessionTotals,
];

/// `meta` key: group | tag | the parts, each as given (big-endian numbers sort in order).
pub fn meta_with(group: GroupId, tag: MetaTag, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = meta(group, tag).to_vec();
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// `meta` key: group | tag.
pub fn meta(group: GroupId, tag: MetaTag) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8] = tag as u8;
    k
}

/// `meta` key of an FSM's storage use: group | [`MetaTag::Usage`] | fsm id.
pub fn usage(group: GroupId, fsm_id: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..9].copy_from_slice(&meta(group, MetaTag::Usage));
    k[9..].copy_from_slice(&fsm_id.to_be_bytes());
    k
}

/// `fsms` key: group | name.
pub fn fsm(group: GroupId, name: &str) -> Vec<u8> {
    [&group.to_be_bytes()[..], name.as_bytes()].concat()
}

/// `modules` key: group | sha256.
pub fn module(group: GroupId, id: &ModuleId) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..].copy_from_slice(&id.0);
    k
}

/// `data` key prefix of one FSM: group | fsm id. The FSM's own key follows.
pub fn data_prefix(group: GroupId, fsm_id: u64) -> KeyPrefix {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..].copy_from_slice(&fsm_id.to_be_bytes());
    k
}
