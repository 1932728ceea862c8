//! The passive voter's surroundings, in memory: NOR flash, storage and a byte stream.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::rc::Rc;

use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash};
use wraft_core::voter::{Persisted, VoterStore};

/// Bytes per sector of [`Nor`] (the smallest the voter's flash store accepts).
pub const SECTOR: usize = 1024;

/// NOR flash in memory: programming only clears bits, an erase sets a sector to 0xFF, and
/// power fails once `budget` bytes were programmed or erased (the operation in progress is
/// left half done; every later one fails).
#[derive(Debug, Clone)]
pub struct Nor {
    /// The flash's content.
    pub bytes: Vec<u8>,
    /// Bytes that may still be programmed or erased before the power fails.
    pub budget: usize,
}

impl Nor {
    /// `sectors` sectors holding `image` (cut or padded with erased bytes).
    pub fn new(sectors: usize, image: &[u8]) -> Self {
        let mut bytes = vec![0xFF; sectors * SECTOR];
        let n = image.len().min(bytes.len());
        bytes[..n].copy_from_slice(&image[..n]);
        Self {
            bytes,
            budget: usize::MAX,
        }
    }

    fn spend(&mut self, n: usize) -> usize {
        let done = n.min(self.budget);
        self.budget -= done;
        done
    }
}

impl ErrorType for Nor {
    type Error = NorFlashErrorKind;
}

impl ReadNorFlash for Nor {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let from = offset as usize;
        let src = self
            .bytes
            .get(from..from + bytes.len())
            .ok_or(NorFlashErrorKind::OutOfBounds)?;
        bytes.copy_from_slice(src);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.bytes.len()
    }
}

impl NorFlash for Nor {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = SECTOR;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        let (from, to) = (from as usize, to as usize);
        if !from.is_multiple_of(SECTOR) || !to.is_multiple_of(SECTOR) {
            return Err(NorFlashErrorKind::NotAligned);
        }
        if from > to || to > self.bytes.len() {
            return Err(NorFlashErrorKind::OutOfBounds);
        }
        let done = self.spend(to - from);
        self.bytes[from..from + done].fill(0xFF);
        if from + done < to {
            return Err(NorFlashErrorKind::Other);
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let at = offset as usize;
        if !at.is_multiple_of(Self::WRITE_SIZE) || !bytes.len().is_multiple_of(Self::WRITE_SIZE) {
            return Err(NorFlashErrorKind::NotAligned);
        }
        if at + bytes.len() > self.bytes.len() {
            return Err(NorFlashErrorKind::OutOfBounds);
        }
        let done = self.spend(bytes.len());
        for (dst, src) in self.bytes[at..at + done].iter_mut().zip(bytes) {
            *dst &= *src;
        }
        if done < bytes.len() {
            return Err(NorFlashErrorKind::Other);
        }
        Ok(())
    }
}

/// Voter storage in memory: keeps the last state saved, and fails saves while `failing`
/// (shared with the test, which sets it while the voter owns the store).
#[derive(Debug, Default)]
pub struct MemStore {
    /// The state as durable storage holds it.
    pub saved: Persisted,
    /// Saves so far.
    pub writes: u32,
    /// Whether saves fail (a worn or disconnected flash).
    pub failing: Rc<Cell<bool>>,
}

impl VoterStore for MemStore {
    type Error = ();

    fn save(&mut self, state: &Persisted) -> Result<(), ()> {
        if self.failing.get() {
            return Err(());
        }
        self.saved = state.clone();
        self.writes = self.writes.wrapping_add(1);
        Ok(())
    }

    fn writes(&self) -> u32 {
        self.writes
    }
}

/// A byte stream in memory, shared with the test that drives it (`Wire` clones share their
/// buffers): the voter reads `rx` (at most `chunk` bytes per read, so frames arrive in
/// pieces) and writes to `tx`.
#[derive(Debug, Default, Clone)]
pub struct Wire(pub Rc<RefCell<Pipes>>);

/// The two directions of a [`Wire`].
#[derive(Debug, Default)]
pub struct Pipes {
    /// Bytes on their way to the voter.
    pub rx: VecDeque<u8>,
    /// Bytes the voter sent.
    pub tx: Vec<u8>,
    /// Most bytes one read returns (at least 1).
    pub chunk: usize,
}

impl embedded_io::ErrorType for Wire {
    type Error = Infallible;
}

impl embedded_io::Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        let mut p = self.0.borrow_mut();
        let n = buf.len().min(p.rx.len()).min(p.chunk.max(1));
        for (dst, src) in buf.iter_mut().zip(p.rx.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }
}

impl embedded_io::ReadReady for Wire {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(!self.0.borrow().rx.is_empty())
    }
}

impl embedded_io::Write for Wire {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        self.0.borrow_mut().tx.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}
