//! [`VoterStore`] on NOR flash: an append-only ring of checksummed records.
//!
//! ```text
//! record: magic u32 | seq u32 | len u16 | 0xFFFF | postcard(Persisted) | crc32 u32 | 0xFF pad
//! ```
//! Every save appends a whole [`Persisted`] with the next sequence number; the newest record
//! with a valid CRC is the state. Writing moves through the sectors in order and erases a
//! sector only when it moves into it, so every sector is erased once per lap (even wear) and
//! the sector holding the newest record is never the one being erased. A torn write leaves a
//! record whose CRC fails (the previous one stays newest: it was the last acknowledged
//! state); a torn erase leaves older records than the newest. Opening always continues in a
//! freshly erased sector, so nothing is ever programmed over a torn region.

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};

use super::{MAX_RUNS, Persisted, VoterStore};

const MAGIC: u32 = 0x5746_5652;
const HEADER: usize = 12;
/// Largest record (header, payload, CRC, padding).
const MAX_RECORD: usize = 512;
/// Records start on this alignment (a multiple of every NOR write size in use).
const ALIGN: usize = 16;

/// Why the voter's flash could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlashError {
    /// The flash driver failed.
    #[error("flash operation failed: {0:?}")]
    Flash(NorFlashErrorKind),
    /// A record read back differs from what was written (worn or failing flash).
    #[error("record read back differs from what was written")]
    Verify,
    /// Fewer than two sectors, sectors smaller than two records, or a write size over 16.
    #[error("flash region too small or oddly shaped for the voter's records")]
    Layout,
    /// Saves failed in every other sector since the last good record, which is kept.
    #[error("saves failed in every sector; the flash is worn out or failing")]
    Worn,
    /// The state does not fit in one record.
    #[error("voter state does not fit in a {MAX_RECORD}-byte record")]
    TooLarge,
}

fn flash_err(e: impl NorFlashError) -> FlashError {
    FlashError::Flash(e.kind())
}

/// The voter's state on a NOR flash region (the whole of `F`).
#[derive(Debug)]
pub struct FlashStore<F> {
    flash: F,
    sector: u32,
    sectors: u32,
    /// Sequence number of the newest record.
    seq: u32,
    /// Where the next record goes.
    pos: u32,
    /// End of the sector being filled (erased when writing moved into it).
    end: u32,
    /// The sector holding the newest good record: never erased.
    newest: u32,
}

impl<F: NorFlash> FlashStore<F> {
    /// Opens the region: loads the newest valid record (or the default state on blank or
    /// foreign flash), counts this boot, and writes that state to a freshly erased sector.
    pub fn open(flash: F) -> Result<(Self, Persisted), FlashError> {
        let sector = u32::try_from(F::ERASE_SIZE).map_err(|_| FlashError::Layout)?;
        let sectors = u32::try_from(flash.capacity()).map_err(|_| FlashError::Layout)? / sector;
        if sectors < 2 || F::ERASE_SIZE < 2 * MAX_RECORD || !ALIGN.is_multiple_of(F::WRITE_SIZE) {
            return Err(FlashError::Layout);
        }
        let mut store = Self {
            flash,
            sector,
            sectors,
            seq: 0,
            pos: 0,
            end: 0,
            newest: u32::MAX,
        };
        let mut newest: Option<(u32, u32, Persisted)> = None;
        for s in 0..sectors {
            store.scan(s, &mut newest)?;
        }
        let (mut state, next_sector) = match newest {
            Some((seq, s, state)) => {
                store.seq = seq;
                store.newest = s;
                (state, (s + 1) % sectors)
            }
            None => (Persisted::default(), 0),
        };
        state.boots = state.boots.wrapping_add(1);
        // Start the boot's record in the sector after the newest record: `end` at that
        // sector's start makes `append` move into it (erasing it). A sector that fails is
        // skipped; every sector failing is an error (the newest record's is never erased).
        store.pos = next_sector * sector;
        store.end = store.pos;
        let mut last = Ok(());
        for _ in 0..sectors {
            last = store.append(&state);
            if last.is_ok() {
                break;
            }
        }
        last.map(|()| (store, state))
    }

    /// Gives the flash back.
    pub fn into_inner(self) -> F {
        self.flash
    }

    fn scan(
        &mut self,
        s: u32,
        newest: &mut Option<(u32, u32, Persisted)>,
    ) -> Result<(), FlashError> {
        let start = s * self.sector;
        let end = start + self.sector;
        let mut pos = start;
        let mut buf = [0u8; MAX_RECORD];
        while pos + HEADER as u32 <= end {
            self.flash
                .read(pos, &mut buf[..HEADER])
                .map_err(flash_err)?;
            let magic = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let seq = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
            let len = usize::from(u16::from_le_bytes([buf[8], buf[9]]));
            let total = record_len(len);
            if magic != MAGIC || total > MAX_RECORD || pos + total as u32 > end {
                // Erased space, a torn record or foreign data: nothing after it in this sector
                // was written after it.
                return Ok(());
            }
            self.flash
                .read(pos + HEADER as u32, &mut buf[HEADER..HEADER + len + 4])
                .map_err(flash_err)?;
            let body = &buf[4..HEADER + len];
            let crc = &buf[HEADER + len..HEADER + len + 4];
            if crc32fast::hash(body).to_le_bytes() != crc {
                return Ok(());
            }
            // A state past the voter's bounds was not written by it (foreign data that
            // happens to pass the CRC): skipped like a bad record. Within them every state
            // fits a record, one more boot included (found by the voter_flash fuzz target:
            // a stored tail of many runs made `open` fail with `TooLarge` at every boot).
            if let Ok(state) = postcard::from_bytes::<Persisted>(&buf[HEADER..HEADER + len])
                && state.tail.len() <= MAX_RUNS
                && newest.as_ref().is_none_or(|(n, _, _)| seq > *n)
            {
                *newest = Some((seq, s, state));
            }
            pos += total as u32;
        }
        Ok(())
    }

    fn append(&mut self, state: &Persisted) -> Result<(), FlashError> {
        let mut buf = [0xFFu8; MAX_RECORD];
        let len = postcard::to_slice(state, &mut buf[HEADER..MAX_RECORD - 4 - ALIGN])
            .map_err(|_| FlashError::TooLarge)?
            .len();
        let seq = self.seq.wrapping_add(1);
        buf[..4].copy_from_slice(&MAGIC.to_le_bytes());
        buf[4..8].copy_from_slice(&seq.to_le_bytes());
        buf[8..10].copy_from_slice(
            &u16::try_from(len)
                .map_err(|_| FlashError::TooLarge)?
                .to_le_bytes(),
        );
        let crc = crc32fast::hash(&buf[4..HEADER + len]);
        buf[HEADER + len..HEADER + len + 4].copy_from_slice(&crc.to_le_bytes());
        let total = record_len(len);
        if self.pos + total as u32 > self.end {
            // Move to the next sector (from a partly filled one: the rest stays unused).
            let start = self.end.div_ceil(self.sector) * self.sector % (self.sectors * self.sector);
            if start / self.sector == self.newest {
                // Saves kept failing all the way round the ring: keep the last good state.
                return Err(FlashError::Worn);
            }
            self.pos = start;
            self.end = start + self.sector;
            if let Err(e) = self.flash.erase(start, self.end) {
                // Skip this sector next time (`end` just past its start).
                self.end = start + 1;
                return Err(flash_err(e));
            }
        }
        // This sequence number is used up whatever happens: no two records share one.
        let at = self.pos;
        self.pos += total as u32;
        self.seq = seq;
        let written = self.write_verified(at, &buf[..total]);
        if written.is_ok() {
            self.newest = at / self.sector;
        } else {
            // A scan stops at the first bad record of a sector, so nothing may follow a
            // failed one in its sector: the next save starts a freshly erased sector.
            self.end = self.pos;
        }
        written
    }

    fn write_verified(&mut self, at: u32, record: &[u8]) -> Result<(), FlashError> {
        self.flash.write(at, record).map_err(flash_err)?;
        let mut check = [0u8; MAX_RECORD];
        let check = &mut check[..record.len()];
        self.flash.read(at, check).map_err(flash_err)?;
        if check != record {
            return Err(FlashError::Verify);
        }
        Ok(())
    }
}

fn record_len(payload: usize) -> usize {
    (HEADER + payload + 4).div_ceil(ALIGN) * ALIGN
}

impl<F: NorFlash> VoterStore for FlashStore<F> {
    type Error = FlashError;

    fn save(&mut self, state: &Persisted) -> Result<(), FlashError> {
        self.append(state)
    }

    fn writes(&self) -> u32 {
        self.seq
    }
}

#[cfg(test)]
#[path = "flash_tests.rs"]
mod tests;
