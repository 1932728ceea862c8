//! The replicated log entry: one `AppData` type for openraft, postcard-encoded, versioned.

use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

use crate::error::ApplyError;
use crate::name::FsmName;
use crate::name::ModuleId;
use crate::session::{Sequence, SessionId, SessionWrite};

/// The format an entry was written in, which is also the metering schedule it is applied
/// under: every replica meters an entry by the rules of its format, so a log written before
/// a change of the rules replays as it first applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// The first format: host calls cost no fuel, FSM keyspaces have no quota, and an FSM's
    /// limits have three fields (queries and codecs run on the apply fuel).
    V1,
    /// Fuel pays for host calls and the bytes they move, each FSM has a storage quota, and
    /// queries and codecs have a fuel limit of their own (docs/abi.md, "Fuel").
    V2,
}

/// A log entry as it is stored and replicated: postcard of an enum whose variant is the
/// [`Format`]. A node refuses (with a clear error) a format it does not know, rather than
/// misreading it; it reads older formats and writes them back unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    format: Format,
    timestamp_ms: u64,
    command: Command,
}

impl LogEntry {
    /// An entry in the current format.
    pub fn new(timestamp_ms: u64, command: Command) -> Self {
        Self {
            format: Format::V2,
            timestamp_ms,
            command,
        }
    }

    /// The format it was written in (and the metering schedule it applies under).
    pub fn format(&self) -> Format {
        self.format
    }

    /// The leader's wall clock when it proposed the entry, in ms since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// The command.
    pub fn command(&self) -> &Command {
        &self.command
    }

    /// Encodes to postcard bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("plain data always encodes into a Vec")
    }

    /// The length of [`LogEntry::to_bytes`], computed without encoding.
    pub fn encoded_len(&self) -> usize {
        postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default())
            .expect("plain data always encodes")
    }

    /// The length an entry in the current format carrying `command` would encode to, without
    /// building it (the timestamp's length varies with its value).
    pub fn encoded_len_of(timestamp_ms: u64, command: &Command) -> usize {
        postcard::serialize_with_flavor(
            &V2(timestamp_ms, command),
            postcard::ser_flavors::Size::default(),
        )
        .expect("plain data always encodes")
    }

    /// Decodes postcard bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

impl Serialize for LogEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.format {
            Format::V1 => v1::LogEntry::V1 {
                timestamp_ms: self.timestamp_ms,
                command: v1::Command::from(self.command.clone()),
            }
            .serialize(s),
            Format::V2 => V2(self.timestamp_ms, &self.command).serialize(s),
        }
    }
}

/// An entry in format V2, borrowed: its timestamp and command.
struct V2<'a>(u64, &'a Command);

impl Serialize for V2<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStructVariant;
        let mut v = s.serialize_struct_variant("LogEntry", 1, "V2", 2)?;
        v.serialize_field("timestamp_ms", &self.0)?;
        v.serialize_field("command", self.1)?;
        v.end()
    }
}

impl<'de> Deserialize<'de> for LogEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Every format, in variant order.
        #[derive(Deserialize)]
        enum Formats {
            V1 {
                timestamp_ms: u64,
                command: v1::Command,
            },
            V2 {
                timestamp_ms: u64,
                command: Command,
            },
        }
        Ok(match Formats::deserialize(d)? {
            Formats::V1 {
                timestamp_ms,
                command,
            } => Self {
                format: Format::V1,
                timestamp_ms,
                command: command.into(),
            },
            Formats::V2 {
                timestamp_ms,
                command,
            } => Self {
                format: Format::V2,
                timestamp_ms,
                command,
            },
        })
    }
}

/// The first format, kept to read (and write back) logs written in it. Only the limits of
/// `CreateFsm` differ from today's command.
mod v1 {
    use alloc::vec::Vec;
    use serde::{Deserialize, Serialize};

    use super::{Apply, ModuleId, StateDigest, serde_bytes_compat};
    use crate::name::FsmName;

    #[derive(Serialize)]
    pub(super) enum LogEntry {
        V1 { timestamp_ms: u64, command: Command },
    }

    /// [`super::FsmLimits`] as the first format wrote them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub(super) struct FsmLimits {
        pub fuel: u64,
        pub memory_pages: u32,
        pub max_output_bytes: u32,
    }

    #[derive(Serialize, Deserialize)]
    pub(super) enum Command {
        Apply(Apply),
        Batch(Vec<Apply>),
        DeployModule {
            module_id: ModuleId,
            #[serde(with = "serde_bytes_compat")]
            bytes: Vec<u8>,
        },
        CreateFsm {
            fsm: FsmName,
            module_id: ModuleId,
            limits: FsmLimits,
        },
        UpgradeFsm {
            fsm: FsmName,
            module_id: ModuleId,
        },
        DropFsm {
            fsm: FsmName,
        },
        DropModule {
            module_id: ModuleId,
        },
        Checkpoint {
            leader: Option<StateDigest>,
        },
    }

    impl From<FsmLimits> for super::FsmLimits {
        /// Queries and codecs ran on the apply fuel, and keyspaces had no quota.
        fn from(l: FsmLimits) -> Self {
            Self {
                fuel: l.fuel,
                memory_pages: l.memory_pages,
                max_output_bytes: l.max_output_bytes,
                query_fuel: l.fuel,
                storage_bytes: u64::MAX,
            }
        }
    }

    impl From<super::FsmLimits> for FsmLimits {
        fn from(l: super::FsmLimits) -> Self {
            Self {
                fuel: l.fuel,
                memory_pages: l.memory_pages,
                max_output_bytes: l.max_output_bytes,
            }
        }
    }

    impl From<Command> for super::Command {
        fn from(c: Command) -> Self {
            use super::Command as C;
            match c {
                Command::Apply(a) => C::Apply(a),
                Command::Batch(b) => C::Batch(b),
                Command::DeployModule { module_id, bytes } => C::DeployModule { module_id, bytes },
                Command::CreateFsm {
                    fsm,
                    module_id,
                    limits,
                } => C::CreateFsm {
                    fsm,
                    module_id,
                    limits: limits.into(),
                },
                Command::UpgradeFsm { fsm, module_id } => C::UpgradeFsm { fsm, module_id },
                Command::DropFsm { fsm } => C::DropFsm { fsm },
                Command::DropModule { module_id } => C::DropModule { module_id },
                Command::Checkpoint { leader } => C::Checkpoint { leader },
            }
        }
    }

    impl From<super::Command> for Command {
        fn from(c: super::Command) -> Self {
            use super::Command as C;
            match c {
                C::Apply(a) => Self::Apply(a),
                C::Batch(b) => Self::Batch(b),
                C::DeployModule { module_id, bytes } => Self::DeployModule { module_id, bytes },
                C::CreateFsm {
                    fsm,
                    module_id,
                    limits,
                } => Self::CreateFsm {
                    fsm,
                    module_id,
                    limits: limits.into(),
                },
                C::UpgradeFsm { fsm, module_id } => Self::UpgradeFsm { fsm, module_id },
                C::DropFsm { fsm } => Self::DropFsm { fsm },
                C::DropModule { module_id } => Self::DropModule { module_id },
                C::Checkpoint { leader } => Self::Checkpoint { leader },
                C::SetLimits { .. }
                | C::OpenSession { .. }
                | C::SessionWrite { .. }
                | C::KeyedWrite { .. }
                | C::Group(_) => {
                    unreachable!(
                        "first-format entries come from first-format bytes, which have no \
                         SetLimits, no sessions and no groups"
                    )
                }
            }
        }
    }
}

impl fmt::Display for LogEntry {
    /// A one-line summary (no payload bytes), for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}ms ", self.timestamp_ms())?;
        match self.command() {
            Command::Apply(a) => write!(f, "apply {} ({} bytes)", a.fsm, a.payload.len()),
            Command::Batch(b) => write!(f, "batch of {}", b.len()),
            Command::DeployModule { module_id, bytes } => {
                write!(f, "deploy module {module_id} ({} bytes)", bytes.len())
            }
            Command::CreateFsm { fsm, module_id, .. } => {
                write!(f, "create fsm {fsm} on {module_id}")
            }
            Command::UpgradeFsm { fsm, module_id } => write!(f, "upgrade fsm {fsm} to {module_id}"),
            Command::DropFsm { fsm } => write!(f, "drop fsm {fsm}"),
            Command::DropModule { module_id } => write!(f, "drop module {module_id}"),
            Command::SetLimits { fsm, .. } => write!(f, "set limits of fsm {fsm}"),
            Command::OpenSession { idle_timeout_ms } => {
                write!(f, "open session (idle timeout {idle_timeout_ms} ms)")
            }
            Command::SessionWrite { sequence, write } => write!(
                f,
                "session {} write {} (acked {}): {}",
                sequence.session,
                sequence.seq,
                sequence.acked,
                WriteSummary(write)
            ),
            Command::KeyedWrite { key, write } => {
                write!(f, "keyed write {key:?}: {}", WriteSummary(write))
            }
            Command::Group(writes) => write!(f, "group of {} writes", writes.len()),
            Command::Checkpoint { leader } => match leader {
                Some(d) => write!(f, "checkpoint (leader's digest at {})", d.index),
                None => f.write_str("checkpoint"),
            },
        }
    }
}

/// One command for one FSM instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Apply {
    /// The FSM instance.
    pub fsm: FsmName,
    /// The FSM's command, postcard-encoded as the FSM's `Command` type.
    #[serde(with = "serde_bytes_compat")]
    pub payload: Vec<u8>,
}

/// The newest entry level this build reads and writes. Levels number the additions to
/// [`Command`] that an older build cannot decode:
///
/// 1. format V2 as first released: every command but [`Command::Group`];
/// 2. [`Command::Group`] (leader-side grouping of client writes).
///
/// A node says which level it reads (`ApiRequest::Features`), and a leader proposes an
/// entry of a level only while every member has said it reads that level, so a rolling
/// upgrade never sends a node an entry it cannot decode (docs/operations.md, "Upgrading
/// wraft").
pub const ENTRY_LEVEL: u32 = 2;

/// What a log entry does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// One command for one FSM.
    Apply(Apply),
    /// Many commands applied in one storage transaction under one log index, atomically: if
    /// any command fails, none of the batch's writes persist and the response is
    /// [`ApplyError::BatchFailed`].
    Batch(Vec<Apply>),
    /// Stores a module's bytes under their sha256.
    DeployModule {
        /// sha256 of `bytes`; replicas recompute and refuse a mismatch.
        module_id: ModuleId,
        /// The wasm module.
        #[serde(with = "serde_bytes_compat")]
        bytes: Vec<u8>,
    },
    /// Creates an FSM instance running a deployed module; runs its `init`.
    CreateFsm {
        /// The new instance's name.
        fsm: FsmName,
        /// A deployed module.
        module_id: ModuleId,
        /// Its limits.
        limits: FsmLimits,
    },
    /// Switches an FSM to another module, keeping its data; runs the new module's `migrate`.
    UpgradeFsm {
        /// The instance.
        fsm: FsmName,
        /// The new module.
        module_id: ModuleId,
    },
    /// Deletes an FSM instance and all its data.
    DropFsm {
        /// The instance.
        fsm: FsmName,
    },
    /// Removes a module no FSM uses.
    DropModule {
        /// The module.
        module_id: ModuleId,
    },
    /// A consistency checkpoint, proposed periodically by the leader. Every replica records
    /// the digest of its state at this entry's index; if `leader` carries the leader's digest
    /// at an earlier checkpoint that the replica also recorded, the replica compares the two
    /// and, on a mismatch, raises an alarm and stops serving reads. Changes no FSM data.
    Checkpoint {
        /// The proposing leader's digest at its previous checkpoint.
        leader: Option<StateDigest>,
    },
    /// Replaces an FSM's limits from this entry on (raising a quota or fuel that its commands
    /// need, or lowering them); its data and module stay.
    SetLimits {
        /// The instance.
        fsm: FsmName,
        /// Its new limits.
        limits: FsmLimits,
    },
    /// Opens a client session ([`crate::session`]); its id is this entry's index. The
    /// response is [`EntryResponse::SessionOpened`].
    OpenSession {
        /// Writes end the session after this long without one (by the entries' timestamps),
        /// between [`crate::session::MIN_IDLE_TIMEOUT_MS`] and
        /// [`crate::session::MAX_IDLE_TIMEOUT_MS`].
        idle_timeout_ms: u64,
    },
    /// A write on a session: applied once per sequence; a retry gets the first response.
    SessionWrite {
        /// Its place in the session.
        sequence: Sequence,
        /// What it does.
        write: SessionWrite,
    },
    /// A write under a client's idempotency key: applied once per key while the key's
    /// response is kept; a retry with the key gets the first response.
    KeyedWrite {
        /// The key ([`crate::session::check_idempotency_key`]).
        key: alloc::string::String,
        /// What it does.
        write: SessionWrite,
    },
    /// Client writes the leader grouped into one entry: each applies as it would in an entry
    /// of its own (its own nested transaction, fuel and session rules), in order, and gets
    /// its own response in [`EntryResponse::Group`]; one failing leaves the others applied.
    /// Its commands take consecutive positions of the entry context, in order.
    Group(Vec<GroupedWrite>),
}

/// One client write of a [`Command::Group`], as it would stand in an entry of its own. (A
/// type apart from [`Command`], so that a group carries client writes only and cannot nest
/// a group.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupedWrite {
    /// As [`Command::Apply`].
    Apply(Apply),
    /// As [`Command::Batch`].
    Batch(Vec<Apply>),
    /// As [`Command::SessionWrite`].
    Session {
        /// Its place in the session.
        sequence: Sequence,
        /// What it does.
        write: SessionWrite,
    },
    /// As [`Command::KeyedWrite`].
    Keyed {
        /// The key.
        key: alloc::string::String,
        /// What it does.
        write: SessionWrite,
    },
}

impl GroupedWrite {
    /// The write `command` is, if a group may carry it; `command` itself otherwise.
    pub fn of(command: Command) -> Result<Self, Command> {
        Ok(match command {
            Command::Apply(a) => Self::Apply(a),
            Command::Batch(b) => Self::Batch(b),
            Command::SessionWrite { sequence, write } => Self::Session { sequence, write },
            Command::KeyedWrite { key, write } => Self::Keyed { key, write },
            other => return Err(other),
        })
    }

    /// The command of this write standing in an entry of its own.
    pub fn into_command(self) -> Command {
        match self {
            Self::Apply(a) => Command::Apply(a),
            Self::Batch(b) => Command::Batch(b),
            Self::Session { sequence, write } => Command::SessionWrite { sequence, write },
            Self::Keyed { key, write } => Command::KeyedWrite { key, write },
        }
    }

    /// How many FSM commands it applies: the positions it takes in its group.
    pub fn commands(&self) -> usize {
        match self {
            Self::Apply(_) => 1,
            Self::Batch(b) => b.len(),
            Self::Session { write, .. } | Self::Keyed { write, .. } => match write {
                SessionWrite::Apply(_) => 1,
                SessionWrite::Batch(b) => b.len(),
            },
        }
    }
}

/// Hashes of a node's state at one log index, as checkpoints compare them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDigest {
    /// The checkpoint entry's index.
    pub index: u64,
    /// sha256 over the FSM registry and the module table.
    pub registry: [u8; 32],
    /// sha256 over each FSM's keyspace, in name order.
    pub fsms: Vec<(FsmName, [u8; 32])>,
}

impl StateDigest {
    /// The parts that differ from `other` ("registry", "fsm NAME", "fsm NAME missing"); empty
    /// when the digests agree.
    pub fn differences(&self, other: &StateDigest) -> Vec<alloc::string::String> {
        use alloc::format;
        let mut out = Vec::new();
        if self.registry != other.registry {
            out.push("registry".into());
        }
        for (name, hash) in &self.fsms {
            match other.fsms.iter().find(|(n, _)| n == name) {
                Some((_, h)) if h == hash => {}
                Some(_) => out.push(format!("fsm {name}")),
                None => out.push(format!("fsm {name} missing on the other side")),
            }
        }
        for (name, _) in &other.fsms {
            if !self.fsms.iter().any(|(n, _)| n == name) {
                out.push(format!("fsm {name} missing here"));
            }
        }
        out
    }
}

/// Per-FSM resource limits, enforced identically on every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsmLimits {
    /// Fuel per apply call (and per `init` or `migrate`): wasm operators, host calls and the
    /// bytes they move, as docs/abi.md prices them. A `Batch` entry may spend this much per
    /// command and no more than [`BATCH_FUEL_FACTOR`] times it in all.
    pub fuel: u64,
    /// Linear memory cap, in 64 KiB wasm pages.
    pub memory_pages: u32,
    /// Largest output of one call, in bytes.
    pub max_output_bytes: u32,
    /// Fuel per query call, and the base of a JSON codec call's fuel (a codec also gets fuel
    /// in proportion to its input; see docs/abi.md).
    pub query_fuel: u64,
    /// Bytes the FSM's keyspace may hold (each key and value counted); a write past it
    /// fails the entry with [`crate::ApplyError::QuotaExceeded`] on every replica.
    pub storage_bytes: u64,
}

/// How many times its per-call fuel one `Batch` entry may spend across its commands.
pub const BATCH_FUEL_FACTOR: u64 = 4;

impl Default for FsmLimits {
    /// Room for the example FSMs' real payloads: a 2 MiB L2 block through latest-payload's
    /// JSON codec needs ~220M codec fuel (given by its size) and ~12 MiB of memory, its
    /// apply ~17M fuel, and its query (~7M fuel per MiB of block) answers with the whole
    /// block; a query gets half an apply's fuel, so readers cannot outspend writers.
    fn default() -> Self {
        Self {
            fuel: 50_000_000,
            memory_pages: 1024,
            max_output_bytes: 16 << 20,
            query_fuel: 25_000_000,
            storage_bytes: 1 << 30,
        }
    }
}

/// The response an entry produced when it was applied: the same on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryResponse {
    /// An `Apply` succeeded: the FSM's postcard output.
    Output(#[serde(with = "serde_bytes_compat")] Vec<u8>),
    /// A `Batch` succeeded: one output per command, in order.
    BatchOutputs(Vec<Vec<u8>>),
    /// A lifecycle entry (deploy, create, upgrade, drop) succeeded.
    Done,
    /// The entry did not apply; none of its writes persist.
    Failed(ApplyError),
    /// A raft-internal entry (blank, membership) with no FSM effect.
    Internal,
    /// A session was opened; its id.
    SessionOpened(SessionId),
    /// A [`Command::Group`] applied: each write's own response, in order. Never encoded (a
    /// session keeps each write's own response), so decoding cannot recurse through it.
    #[serde(skip)]
    Group(Vec<EntryResponse>),
}

/// A session write's command in one line.
struct WriteSummary<'a>(&'a SessionWrite);

impl fmt::Display for WriteSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            SessionWrite::Apply(a) => write!(f, "apply {} ({} bytes)", a.fsm, a.payload.len()),
            SessionWrite::Batch(b) => write!(f, "batch of {}", b.len()),
        }
    }
}

impl fmt::Display for EntryResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Output(o) => write!(f, "output ({} bytes)", o.len()),
            Self::BatchOutputs(o) => write!(f, "batch outputs ({})", o.len()),
            Self::Done => f.write_str("done"),
            Self::Failed(e) => write!(f, "failed: {e}"),
            Self::Internal => f.write_str("internal"),
            Self::SessionOpened(id) => write!(f, "session {id} opened"),
            Self::Group(r) => write!(f, "group responses ({})", r.len()),
        }
    }
}

/// Byte vectors as postcard byte strings (length + raw bytes), without a serde_bytes dependency.
mod serde_bytes_compat {
    use alloc::vec::Vec;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn name(s: &str) -> FsmName {
        FsmName::new(s).expect("valid name")
    }

    #[test]
    fn every_kind_round_trips() {
        let commands = [
            Command::Apply(Apply {
                fsm: name("a"),
                payload: vec![1, 2, 3],
            }),
            Command::Batch(vec![
                Apply {
                    fsm: name("a"),
                    payload: vec![],
                },
                Apply {
                    fsm: name("b"),
                    payload: vec![9; 300],
                },
            ]),
            Command::DeployModule {
                module_id: ModuleId([7; 32]),
                bytes: vec![0, 97, 115, 109],
            },
            Command::CreateFsm {
                fsm: name("a"),
                module_id: ModuleId([7; 32]),
                limits: FsmLimits::default(),
            },
            Command::UpgradeFsm {
                fsm: name("a"),
                module_id: ModuleId([8; 32]),
            },
            Command::DropFsm { fsm: name("a") },
            Command::DropModule {
                module_id: ModuleId([7; 32]),
            },
            Command::Checkpoint { leader: None },
            Command::SetLimits {
                fsm: name("a"),
                limits: FsmLimits::default(),
            },
            Command::Checkpoint {
                leader: Some(StateDigest {
                    index: 9,
                    registry: [1; 32],
                    fsms: vec![(name("a"), [2; 32])],
                }),
            },
        ];
        for command in commands {
            let e = LogEntry::new(1_700_000_000_000, command);
            assert_eq!(LogEntry::from_bytes(&e.to_bytes()).expect("decode"), e);
        }
    }

    #[test]
    fn the_encoded_length_is_that_of_the_bytes() {
        let e = LogEntry::new(
            7,
            Command::Batch(vec![
                Apply {
                    fsm: name("a"),
                    payload: vec![3; 300],
                };
                5
            ]),
        );
        assert_eq!(e.encoded_len(), e.to_bytes().len());
    }

    #[test]
    fn payload_is_encoded_compactly() {
        let e = LogEntry::new(
            0,
            Command::Apply(Apply {
                fsm: name("a"),
                payload: vec![0xff; 256],
            }),
        );
        // version + timestamp + kind + name + length + payload: no per-byte overhead.
        assert!(e.to_bytes().len() < 256 + 8, "{}", e.to_bytes().len());
    }

    #[test]
    fn unknown_version_is_an_error_not_a_misread() {
        let mut bytes = LogEntry::new(5, Command::DropFsm { fsm: name("a") }).to_bytes();
        bytes[0] = 2; // a future V3
        assert!(LogEntry::from_bytes(&bytes).is_err());
    }

    /// Bytes as the first format wrote them (variant 0, then the command with three-field
    /// limits), by hand: they read back as V1 with the limits they had, and write back the
    /// same bytes.
    #[test]
    fn first_format_entries_read_and_write_back_unchanged() {
        let mut old = vec![0u8]; // LogEntry::V1
        old.extend_from_slice(&postcard::to_allocvec(&1_700_000_000_000u64).expect("ts"));
        old.push(3); // Command::CreateFsm
        old.extend_from_slice(&postcard::to_allocvec(&name("a")).expect("name"));
        old.extend_from_slice(&[7; 32]);
        old.extend_from_slice(&postcard::to_allocvec(&(900u64, 16u32, 4096u32)).expect("l"));
        let e = LogEntry::from_bytes(&old).expect("a first-format entry");
        assert_eq!(e.format(), Format::V1);
        let Command::CreateFsm { limits, .. } = e.command() else {
            panic!("{e:?}")
        };
        assert_eq!(
            *limits,
            FsmLimits {
                fuel: 900,
                memory_pages: 16,
                max_output_bytes: 4096,
                query_fuel: 900,
                storage_bytes: u64::MAX,
            }
        );
        assert_eq!(e.to_bytes(), old, "written back in its own format");
        assert_eq!(e.encoded_len(), old.len());
        assert_eq!(
            LogEntry::new(0, Command::Checkpoint { leader: None }).format(),
            Format::V2
        );
    }

    #[test]
    fn digests_name_the_parts_that_differ() {
        let a = StateDigest {
            index: 4,
            registry: [0; 32],
            fsms: vec![(name("x"), [1; 32]), (name("y"), [2; 32])],
        };
        assert!(a.differences(&a).is_empty());
        let mut b = a.clone();
        b.fsms[1].1 = [3; 32];
        b.fsms.push((name("z"), [4; 32]));
        assert_eq!(
            a.differences(&b),
            vec!["fsm y".to_string(), "fsm z missing here".to_string()]
        );
    }

    #[test]
    fn module_id_hex_round_trips() {
        let id = ModuleId(core::array::from_fn(|i| i as u8 * 7));
        let hex = alloc::format!("{id}");
        assert_eq!(ModuleId::from_hex(&hex), Some(id));
        assert_eq!(ModuleId::from_hex("zz"), None);
    }
}
