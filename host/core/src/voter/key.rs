//! The cluster key on the voter's flash: one record at the start of a sector of its own,
//! written when the board is provisioned (`wraft voter provision`), only read by the voter.
//!
//! ```text
//! "WVKY" | version u8 | key [32] | crc32 u32 LE (of the bytes before it) | 0xFF pad to 48
//! ```

use embedded_storage::nor_flash::{NorFlashErrorKind, ReadNorFlash};

use crate::link::auth::{ClusterKey, KEY_LEN};

const MAGIC: &[u8; 4] = b"WVKY";
/// The key record's format version.
pub const KEY_RECORD_VERSION: u8 = 1;
/// Bytes of a key record, padding included (a multiple of every NOR write size up to 16).
pub const KEY_RECORD_LEN: usize = 48;
const CRC_AT: usize = 4 + 1 + KEY_LEN;

/// Why the voter has no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key record: the board was never provisioned (`wraft voter provision`).
    #[error("no cluster key on flash (provision one with `wraft voter provision`)")]
    Missing,
    /// A key record of a format this firmware does not know.
    #[error("key record version {0} (this firmware reads {KEY_RECORD_VERSION})")]
    Version(u8),
    /// The record's checksum fails (a torn or corrupted write).
    #[error("key record checksum mismatch")]
    Corrupt,
    /// The flash driver failed.
    #[error("flash read failed: {0:?}")]
    Flash(NorFlashErrorKind),
}

/// The record holding `key`.
pub fn key_record(key: &ClusterKey) -> [u8; KEY_RECORD_LEN] {
    let mut record = [0xFF; KEY_RECORD_LEN];
    record[..4].copy_from_slice(MAGIC);
    record[4] = KEY_RECORD_VERSION;
    record[5..CRC_AT].copy_from_slice(key.as_bytes());
    let crc = crc32fast::hash(&record[..CRC_AT]);
    record[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    record
}

/// The key in `record`.
pub fn parse_key_record(record: &[u8; KEY_RECORD_LEN]) -> Result<ClusterKey, KeyError> {
    if &record[..4] != MAGIC {
        return Err(KeyError::Missing);
    }
    if record[4] != KEY_RECORD_VERSION {
        return Err(KeyError::Version(record[4]));
    }
    if crc32fast::hash(&record[..CRC_AT]).to_le_bytes() != record[CRC_AT..CRC_AT + 4] {
        return Err(KeyError::Corrupt);
    }
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&record[5..CRC_AT]);
    Ok(ClusterKey::from_bytes(key))
}

/// Reads the key record at `offset` of `flash`.
pub fn load_key<F: ReadNorFlash>(flash: &mut F, offset: u32) -> Result<ClusterKey, KeyError> {
    use embedded_storage::nor_flash::NorFlashError;
    let mut record = [0u8; KEY_RECORD_LEN];
    flash
        .read(offset, &mut record)
        .map_err(|e| KeyError::Flash(e.kind()))?;
    parse_key_record(&record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_record_round_trips_and_a_damaged_one_is_refused() {
        let key = ClusterKey::from_bytes(core::array::from_fn(|i| i as u8));
        let record = key_record(&key);
        assert_eq!(parse_key_record(&record), Ok(key));
        assert_eq!(
            parse_key_record(&[0xFF; KEY_RECORD_LEN]),
            Err(KeyError::Missing)
        );
        let mut flipped = record;
        flipped[20] ^= 1;
        assert_eq!(parse_key_record(&flipped), Err(KeyError::Corrupt));
        let mut newer = record;
        newer[4] = 2;
        assert_eq!(parse_key_record(&newer), Err(KeyError::Version(2)));
    }
}
