//! Shared parts of wraft's fuzz targets (`fuzz_targets/*.rs`, one per decoder of bytes from
//! outside; docs/testing.md, "Fuzzing").
//!
//! * [`meter`]: a counting allocator, so a target can bound what a decoder allocates by the
//!   bytes it was given.
//! * [`Input`]: reads a target's structured input (selectors, lengths) off the fuzzer's bytes.
//! * [`voter`]: in-memory NOR flash, voter storage and a byte stream for the passive voter.
//! * `codec`: the example FSMs loaded once into a `wraft_host::runtime::FsmRuntime`.
//! * `seeds`: seed inputs built from real encodings (`cargo run --example seeds`).
//!
//! `codec` and `seeds` need the feature `host` (default).

#[cfg(feature = "host")]
pub mod codec;
pub mod meter;
#[cfg(feature = "host")]
pub mod seeds;
pub mod voter;

use serde::{Serialize, de::DeserializeOwned};

/// Most bytes a decoder may allocate beyond what its input accounts for: serde preallocates
/// at most 1 MiB for a sequence whose length it has not seen yet (`size_hint::cautious`),
/// and a message nests a few of them, only one failing at a time.
pub const ALLOC_SLACK: usize = 4 << 20;
/// Bytes a decoder may allocate per input byte (decoded values are larger than their
/// postcard encoding: a one-byte empty `Vec` is 24 bytes in memory, a name's length byte a
/// `String`).
pub const ALLOC_PER_BYTE: usize = 64;

/// The allocation bound of a decoder given `len` bytes.
pub fn alloc_bound(len: usize) -> usize {
    ALLOC_SLACK + ALLOC_PER_BYTE * len
}

/// Decodes `bytes` as postcard `T`; when that works, checks that the value encodes to bytes
/// that decode to a value encoding the same (the encoding is canonical after one round).
pub fn round_trip<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let value: T = postcard::from_bytes(bytes).ok()?;
    let again = postcard::to_allocvec(&value).expect("a decoded value encodes");
    let decoded: T = postcard::from_bytes(&again).expect("an encoded value decodes");
    assert_eq!(
        postcard::to_allocvec(&decoded).expect("encodes"),
        again,
        "encode(decode(encode(x))) differs from encode(x)"
    );
    Some(value)
}

/// `payload` as a `wraft_core::frame` frame (`len | crc32 | payload`), with a correct CRC so
/// the fuzzer's bytes reach the payload decoder.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + wraft_core::frame::HEADER_LEN);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A cursor over the fuzzer's bytes: a target reads selectors, numbers and slices off the
/// front; once they run out it reads zeros and empty slices.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next byte (0 once the input ran out).
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    /// The next two bytes, little endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// The next `n` bytes (fewer if the input runs out).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// A slice whose length is the next byte.
    pub fn short(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte());
        self.take(n)
    }

    /// A slice whose length is the next two bytes (little endian).
    pub fn long(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.take(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.0)
    }
}

/// Builds [`Input`]'s encodings, for seeds.
#[derive(Debug, Default, Clone)]
pub struct InputBuilder(pub Vec<u8>);

impl InputBuilder {
    /// Appends one byte.
    pub fn byte(mut self, b: u8) -> Self {
        self.0.push(b);
        self
    }

    /// Appends two bytes, little endian.
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a slice read back by [`Input::short`].
    pub fn short(self, bytes: &[u8]) -> Self {
        let len = u8::try_from(bytes.len()).expect("a short slice");
        self.byte(len).raw(bytes)
    }

    /// Appends a slice read back by [`Input::long`].
    pub fn long(self, bytes: &[u8]) -> Self {
        let len = u16::try_from(bytes.len()).expect("a long slice");
        self.u16(len).raw(bytes)
    }

    /// Appends bytes as they are (read back by [`Input::take`] or [`Input::rest`]).
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_reads_what_the_builder_wrote() {
        let b = InputBuilder::default()
            .byte(7)
            .u16(513)
            .short(b"ab")
            .long(b"cde")
            .raw(b"f");
        let mut i = Input(&b.0);
        assert_eq!((i.byte(), i.u16()), (7, 513));
        assert_eq!(
            (i.short(), i.long(), i.rest()),
            (&b"ab"[..], &b"cde"[..], &b"f"[..])
        );
        assert_eq!((i.byte(), i.take(3)), (0, &[][..]));
    }
}
