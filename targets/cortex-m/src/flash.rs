//! NOR flash emulated in a file on the machine running QEMU, through ARM semihosting.
//!
//! It behaves as NOR flash does (programming only clears bits; erasing sets a sector to
//! 0xFF), so the voter's store is exercised as it would be on a board's internal flash. A real
//! board implements the same `embedded-storage` traits with its flash controller.
//!
//! The file holds two regions: the voter's ring of records (the first 64 KiB) and the
//! cluster key's sector after it (written by `wraft voter provision`, only read here).

use cortex_m_semihosting::{nr, syscall};
use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash, check_erase, check_read, check_write,
};

/// Size of the emulated flash: 16 sectors of ring, one of key.
pub const CAPACITY: usize = KEY_AT + SECTOR;
/// Where the key sector starts (the ring ends).
pub const KEY_AT: usize = 64 * 1024;
const SECTOR: usize = 4096;

/// A region of a file standing in for flash.
#[derive(Debug)]
pub struct HostFileFlash {
    handle: usize,
    base: usize,
    len: usize,
}

impl HostFileFlash {
    /// Opens `path` (NUL-terminated, relative to QEMU's working directory), creating it as
    /// erased flash if it does not exist or is short.
    pub fn open(path: &[u8]) -> Option<Self> {
        let name_len = path.len().checked_sub(1)?;
        // SAFETY: `path` outlives the call and is NUL-terminated; semihosting reads it only.
        let mut handle = unsafe { syscall!(OPEN, path.as_ptr(), nr::open::RW_BINARY, name_len) };
        if handle == usize::MAX {
            // SAFETY: as above.
            handle = unsafe { syscall!(OPEN, path.as_ptr(), nr::open::RW_TRUNC_BINARY, name_len) };
        }
        if handle == usize::MAX {
            return None;
        }
        let flash = Self {
            handle,
            base: 0,
            len: CAPACITY,
        };
        // SAFETY: FLEN takes a handle this program opened.
        let len = unsafe { syscall!(FLEN, handle) };
        if len == usize::MAX {
            return None;
        }
        let mut at = len.min(CAPACITY);
        while at < CAPACITY {
            let n = (CAPACITY - at).min(256);
            flash.fill(at, n).ok()?;
            at += n;
        }
        Some(flash)
    }

    /// The voter's ring (before [`KEY_AT`]) and the key sector (from it).
    pub fn split(self) -> (Self, Self) {
        let ring = Self {
            handle: self.handle,
            base: 0,
            len: KEY_AT,
        };
        let key = Self {
            handle: self.handle,
            base: KEY_AT,
            len: CAPACITY - KEY_AT,
        };
        (ring, key)
    }

    fn seek(&self, offset: usize) -> Result<(), NorFlashErrorKind> {
        // SAFETY: a handle this program opened; SEEK takes no pointers.
        match unsafe { syscall!(SEEK, self.handle, self.base + offset) } {
            0 => Ok(()),
            _ => Err(NorFlashErrorKind::Other),
        }
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), NorFlashErrorKind> {
        self.seek(offset)?;
        // SAFETY: `buf` is writable for its length during the call; READ returns how many
        // bytes it did not read.
        match unsafe { syscall!(READ, self.handle, buf.as_mut_ptr(), buf.len()) } {
            0 => Ok(()),
            _ => Err(NorFlashErrorKind::Other),
        }
    }

    fn write_at(&self, offset: usize, buf: &[u8]) -> Result<(), NorFlashErrorKind> {
        self.seek(offset)?;
        // SAFETY: `buf` is readable for its length during the call; WRITE returns how many
        // bytes it did not write.
        match unsafe { syscall!(WRITE, self.handle, buf.as_ptr(), buf.len()) } {
            0 => Ok(()),
            _ => Err(NorFlashErrorKind::Other),
        }
    }

    fn fill(&self, offset: usize, len: usize) -> Result<(), NorFlashErrorKind> {
        let ones = [0xFFu8; 256];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(ones.len());
            self.write_at(at, &ones[..n])?;
            at += n;
        }
        Ok(())
    }
}

impl ErrorType for HostFileFlash {
    type Error = NorFlashErrorKind;
}

impl ReadNorFlash for HostFileFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        check_read(self, offset, bytes.len())?;
        self.read_at(offset as usize, bytes)
    }

    fn capacity(&self) -> usize {
        self.len
    }
}

impl NorFlash for HostFileFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = SECTOR;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        check_erase(self, from, to)?;
        self.fill(from as usize, (to - from) as usize)
    }

    /// Programs by clearing bits: the stored byte becomes `old & new`.
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        check_write(self, offset, bytes.len())?;
        let mut chunk = [0u8; 64];
        for (i, part) in bytes.chunks(chunk.len()).enumerate() {
            let at = offset as usize + i * chunk.len();
            let old = &mut chunk[..part.len()];
            self.read_at(at, old)?;
            old.iter_mut().zip(part).for_each(|(o, n)| *o &= *n);
            self.write_at(at, old)?;
        }
        Ok(())
    }
}
