//! FSM instance names.

use alloc::string::String;
use core::fmt;
use serde::{Deserialize, Serialize};

/// Longest FSM name, in bytes.
pub const MAX_FSM_NAME_LEN: usize = 64;

/// The name of one FSM instance in a cluster, e.g. `sequencer` or `manifest-eu`.
///
/// 1 to 64 bytes of `[a-z0-9_.-]`, starting with a letter or digit. Validated on construction
/// and on deserialization, so a `FsmName` read from the log or the network is always valid.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FsmName(String);

/// Why a string is not a valid [`FsmName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid FSM name {name:?}: {reason}")]
pub struct InvalidFsmName {
    /// The rejected name.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FsmName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidFsmName> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > MAX_FSM_NAME_LEN {
            Some("longer than 64 bytes")
        } else if !name.as_bytes()[0].is_ascii_alphanumeric() {
            Some("must start with a letter or digit")
        } else if !name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        }) {
            Some("only a-z, 0-9, '_', '.', '-' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(InvalidFsmName { name, reason }),
            None => Ok(Self(name)),
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FsmName {
    type Error = InvalidFsmName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<FsmName> for String {
    fn from(n: FsmName) -> String {
        n.0
    }
}

impl core::str::FromStr for FsmName {
    type Err = InvalidFsmName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for FsmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for FsmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A module's id: the sha256 of its bytes. In the log and the state (postcard) it is its 32
/// bytes; in human-readable formats (the HTTP API's JSON, `--json`) its 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleId(pub [u8; 32]);

impl Serialize for ModuleId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let mut digits = [0u8; 64];
            hex::encode_to_slice(self.0, &mut digits).map_err(serde::ser::Error::custom)?;
            let text = core::str::from_utf8(&digits).map_err(serde::ser::Error::custom)?;
            s.serialize_str(text)
        } else {
            // What `#[derive(Serialize)]` wrote: the bytes of the log and the state.
            s.serialize_newtype_struct("ModuleId", &self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ModuleId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            struct Hex;
            impl serde::de::Visitor<'_> for Hex {
                type Value = ModuleId;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a module id: 64 hex digits")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ModuleId, E> {
                    ModuleId::from_hex(v)
                        .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            d.deserialize_str(Hex)
        } else {
            #[derive(Deserialize)]
            #[serde(rename = "ModuleId")]
            struct Bytes([u8; 32]);
            Bytes::deserialize(d).map(|b| ModuleId(b.0))
        }
    }
}

impl ModuleId {
    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Display for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut digits = [0u8; 64];
        hex::encode_to_slice(self.0, &mut digits).map_err(|_| fmt::Error)?;
        f.write_str(core::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModuleId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert!(FsmName::new("sequencer").is_ok());
        assert!(FsmName::new("manifest-eu.v2_a").is_ok());
        for bad in ["", "-x", "Upper", "a b", "ü", &"a".repeat(65)] {
            assert!(FsmName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Postcard (the log, the state) keeps the 32 bytes `derive` wrote; JSON gets hex.
    #[test]
    fn module_ids_are_bytes_in_postcard_and_hex_in_json() {
        let id = ModuleId([0xab; 32]);
        let bytes = postcard::to_allocvec(&id).expect("postcard");
        assert_eq!(bytes, [0xab; 32]);
        assert_eq!(postcard::from_bytes::<ModuleId>(&bytes).expect("back"), id);
        let json = serde_json::to_string(&id).expect("json");
        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        assert_eq!(serde_json::from_str::<ModuleId>(&json).expect("back"), id);
        assert!(serde_json::from_str::<ModuleId>("\"abc\"").is_err());
    }

    #[test]
    fn deserialization_validates() {
        let bytes = postcard::to_allocvec("Bad Name").expect("encode");
        assert!(postcard::from_bytes::<FsmName>(&bytes).is_err());
        let bytes = postcard::to_allocvec("good").expect("encode");
        assert_eq!(
            postcard::from_bytes::<FsmName>(&bytes)
                .expect("decode")
                .as_str(),
            "good"
        );
    }
}
