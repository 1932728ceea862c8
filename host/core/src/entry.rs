//! The replicated log entry: one `AppData` type for openraft, postcard-encoded, versioned.

use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

use crate::error::ApplyError;
use crate::name::FsmName;

/// A log entry as it is stored and replicated. The outer enum is the format version: a node
/// refuses (with a clear error) an entry version it does not know, rather than misreading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogEntry {
    /// Format version 1.
    V1 {
        /// The leader's wall clock when it proposed the entry, in ms since the Unix epoch.
        timestamp_ms: u64,
        /// What the entry does.
        command: Command,
    },
}

impl LogEntry {
    /// A version-1 entry.
    pub fn new(timestamp_ms: u64, command: Command) -> Self {
        Self::V1 {
            timestamp_ms,
            command,
        }
    }

    /// The leader's timestamp.
    pub fn timestamp_ms(&self) -> u64 {
        match self {
            Self::V1 { timestamp_ms, .. } => *timestamp_ms,
        }
    }

    /// The command.
    pub fn command(&self) -> &Command {
        match self {
            Self::V1 { command, .. } => command,
        }
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

    /// Decodes postcard bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
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
    /// Fuel (roughly, wasm instructions) per apply or query call.
    pub fuel: u64,
    /// Linear memory cap, in 64 KiB wasm pages.
    pub memory_pages: u32,
    /// Largest output of one call, in bytes.
    pub max_output_bytes: u32,
}

impl Default for FsmLimits {
    fn default() -> Self {
        Self {
            fuel: 50_000_000,
            memory_pages: 256,
            max_output_bytes: 1 << 20,
        }
    }
}

/// A module's id: the sha256 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ModuleId(pub [u8; 32]);

impl ModuleId {
    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
        }
        Some(Self(out))
    }
}

impl fmt::Display for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModuleId({self})")
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
}

impl fmt::Display for EntryResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Output(o) => write!(f, "output ({} bytes)", o.len()),
            Self::BatchOutputs(o) => write!(f, "batch outputs ({})", o.len()),
            Self::Done => f.write_str("done"),
            Self::Failed(e) => write!(f, "failed: {e}"),
            Self::Internal => f.write_str("internal"),
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
        bytes[0] = 1; // a future V2
        assert!(LogEntry::from_bytes(&bytes).is_err());
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
