//! Records, commands, outputs and queries: the FSM's public types (JSON at the edge, postcard
//! in the log and the store).

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::geo::Volume;

/// The three kinds of record the DSS keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// Identification service area (remote ID: "flights are visible here").
    Isa = 0,
    /// A subscription to changes in an area.
    Subscription = 1,
    /// An operational intent (strategic deconfliction).
    Intent = 2,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Isa, Kind::Subscription, Kind::Intent];

    /// Byte in keys.
    pub fn byte(self) -> u8 {
        self as u8
    }

    /// From a key byte.
    pub fn from_byte(b: u8) -> Option<Kind> {
        Kind::ALL.get(b as usize).copied()
    }
}

/// State of an operational intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntentState {
    /// Planned and deconflicted.
    Accepted,
    /// Flying.
    Activated,
    /// Outside its volumes.
    Nonconforming,
    /// Lost control; others must avoid it.
    Contingent,
}

/// What a record of each kind carries besides its id, owner, volumes and version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Details {
    /// An ISA.
    Isa {
        /// Where observers fetch the flights.
        flights_url: String,
    },
    /// A subscription.
    Subscription {
        /// Where the owner wants notifications.
        callback_url: String,
        /// Notify on ISA changes.
        notify_for_isas: bool,
        /// Notify on operational intent changes.
        notify_for_intents: bool,
        /// Incremented on every notification.
        notification_index: u64,
    },
    /// An operational intent.
    Intent {
        /// State.
        state: IntentState,
        /// The owning USS's base URL.
        base_url: String,
    },
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Kind.
    pub kind: Kind,
    /// Caller-chosen id, unique per kind.
    pub id: String,
    /// Owner (the managing USS).
    pub owner: String,
    /// One volume (ISA, subscription) or up to [`crate::MAX_VOLUMES`] (intent).
    pub volumes: Vec<Volume>,
    /// Kind-specific fields.
    pub details: Details,
    /// Opaque version: a writer must present it to change or delete the record, and a new
    /// intent that intersects this one must present it as proof the writer saw it.
    pub ovn: String,
    /// 1 on creation, +1 per update.
    pub version: u64,
}

impl Record {
    /// When the record stops being visible: the latest end of its volumes.
    pub fn end_ms(&self) -> u64 {
        self.volumes.iter().map(|v| v.end_ms).max().unwrap_or(0)
    }

    /// Whether it is still visible at `now_ms`.
    pub fn live(&self, now_ms: u64) -> bool {
        self.end_ms() > now_ms
    }
}

/// Commands. `ovn: None` creates (the id must be free), `Some(ovn)` replaces the record
/// holding that OVN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create or update an identification service area.
    PutIsa {
        /// Id.
        id: String,
        /// Owner.
        owner: String,
        /// Where it applies.
        volume: Volume,
        /// Where observers fetch the flights.
        flights_url: String,
        /// Current OVN when updating.
        ovn: Option<String>,
    },
    /// Create or update a subscription.
    PutSubscription {
        /// Id.
        id: String,
        /// Owner.
        owner: String,
        /// Area of interest.
        volume: Volume,
        /// Where notifications go.
        callback_url: String,
        /// Notify on ISA changes.
        notify_for_isas: bool,
        /// Notify on operational intent changes.
        notify_for_intents: bool,
        /// Current OVN when updating.
        ovn: Option<String>,
    },
    /// Create or update an operational intent. Every live intent of another id that
    /// intersects one of `volumes` must have its current OVN in `key`, or nothing is written
    /// and the answer is [`Outcome::Conflict`].
    PutIntent {
        /// Id.
        id: String,
        /// Owner.
        owner: String,
        /// 1 to [`crate::MAX_VOLUMES`] volumes.
        volumes: Vec<Volume>,
        /// State.
        state: IntentState,
        /// The owner's base URL.
        base_url: String,
        /// OVNs of the intersecting intents the writer knows about.
        key: Vec<String>,
        /// Current OVN when updating.
        ovn: Option<String>,
    },
    /// Delete a record; `ovn` must be its current one.
    Delete {
        /// Kind.
        kind: Kind,
        /// Id.
        id: String,
        /// Current OVN.
        ovn: String,
    },
    /// Remove up to `max` expired records now (every apply also removes a few).
    Expire {
        /// Upper bound on removals.
        max: u32,
    },
}

/// A subscription to notify of a change.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Notification {
    /// Subscription id.
    pub subscription_id: String,
    /// Where to send it.
    pub callback_url: String,
    /// The subscription's notification index after this change.
    pub notification_index: u64,
}

/// An intent the writer must acknowledge (present the OVN of) before its write is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// Intent id.
    pub id: String,
    /// Owner.
    pub owner: String,
    /// Where to fetch its details.
    pub base_url: String,
    /// Its current OVN.
    pub ovn: String,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// The record was created or updated.
    Stored {
        /// Id.
        id: String,
        /// Its new OVN.
        ovn: String,
        /// Its new version.
        version: u64,
        /// Subscriptions to notify.
        notify: Vec<Notification>,
    },
    /// The record was deleted.
    Deleted {
        /// Id.
        id: String,
        /// Subscriptions to notify.
        notify: Vec<Notification>,
    },
    /// Nothing written: these intersecting intents' OVNs were missing from the key.
    Conflict {
        /// What to acknowledge.
        missing: Vec<Conflict>,
    },
    /// Expired records removed by [`Command::Expire`].
    Expired {
        /// How many.
        removed: u32,
    },
}

/// Queries. Expired records are never returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Query {
    /// One record.
    Get {
        /// Kind.
        kind: Kind,
        /// Id.
        id: String,
    },
    /// Every live record of `kinds` (empty: all kinds) intersecting `area`, ordered by kind
    /// then id.
    Search {
        /// Kinds to return.
        kinds: Vec<Kind>,
        /// The 4D area.
        area: Volume,
    },
    /// Counters.
    Stats,
}

/// Counters kept by apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Stored records per kind (including expired ones not yet removed).
    pub records: [u64; 3],
    /// Index keys per kind and grid level (searches skip empty levels).
    pub cells: [[u64; crate::index::LEVEL_COUNT]; 3],
    /// Expired records removed so far.
    pub expired: u64,
}

/// Query answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    /// Records.
    Records(Vec<Record>),
    /// Counters.
    Stats(alloc::boxed::Box<Stats>),
}
