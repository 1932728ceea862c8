//! Byte types that are hex strings in JSON (`"0x0a1b"`) and raw bytes in postcard.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A byte vector: `"0x…"` in JSON, length-prefixed bytes in postcard.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HexBytes(pub Vec<u8>);

/// 32 bytes (a block hash, a sha256): `"0x…"` (64 digits) in JSON, 32 raw bytes in postcard.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hex32(pub [u8; 32]);

/// `0x` and two lowercase digits per byte. Through `hex`'s slice functions, not its
/// iterator of chars: a 2 MiB block payload is encoded in FSM fuel, and the iterator costs
/// several times the instructions per byte.
fn to_hex(bytes: &[u8]) -> String {
    let mut out = alloc::vec![0u8; 2 + bytes.len() * 2];
    out[..2].copy_from_slice(b"0x");
    hex::encode_to_slice(bytes, &mut out[2..]).expect("the buffer holds two digits per byte");
    String::from_utf8(out).expect("hex digits are ASCII")
}

fn from_hex(s: &str) -> Result<Vec<u8>, hex::FromHexError> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    if !digits.len().is_multiple_of(2) {
        return Err(hex::FromHexError::OddLength);
    }
    let mut out = alloc::vec![0u8; digits.len() / 2];
    hex::decode_to_slice(digits, &mut out)?;
    Ok(out)
}

impl Serialize for HexBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&to_hex(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            from_hex(&s).map(HexBytes).map_err(de::Error::custom)
        } else {
            struct V;
            impl<'de> de::Visitor<'de> for V {
                type Value = Vec<u8>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                    Ok(v.to_vec())
                }
            }
            d.deserialize_bytes(V).map(HexBytes)
        }
    }
}

impl Serialize for Hex32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&to_hex(&self.0))
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Hex32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            let v = from_hex(&s).map_err(de::Error::custom)?;
            let arr: [u8; 32] = v
                .try_into()
                .map_err(|_| de::Error::custom("expected 32 bytes"))?;
            Ok(Hex32(arr))
        } else {
            <[u8; 32]>::deserialize(d).map(Hex32)
        }
    }
}

impl fmt::Debug for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

impl fmt::Debug for Hex32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_hex_postcard_is_raw() {
        let h = Hex32([0xab; 32]);
        let json = serde_json::to_string(&h).expect("json");
        assert_eq!(json, alloc::format!("\"0x{}\"", "ab".repeat(32)));
        assert_eq!(serde_json::from_str::<Hex32>(&json).expect("parse"), h);
        assert_eq!(postcard::to_allocvec(&h).expect("pc").len(), 32);
        let b = HexBytes(vec![1, 2, 255]);
        assert_eq!(serde_json::to_string(&b).expect("json"), "\"0x0102ff\"");
        let pc = postcard::to_allocvec(&b).expect("pc");
        assert_eq!(pc, vec![3, 1, 2, 255]);
        assert_eq!(postcard::from_bytes::<HexBytes>(&pc).expect("de"), b);
        assert!(serde_json::from_str::<HexBytes>("\"0xzz\"").is_err());
    }
}
