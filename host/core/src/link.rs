//! Link frames: postcard messages over a raw byte stream that can drop, corrupt or inject
//! bytes (a UART, or a TCP socket standing in for one).
//!
//! ```text
//! 0x00 | COBS( postcard(message) | crc32(postcard(message)): u32 LE ) | 0x00
//! ```
//! COBS removes every zero byte from the body, so `0x00` only ever delimits frames: a
//! receiver that lost sync (line noise, a reset mid-frame, a peer that connected halfway
//! through a frame) drops bytes until the next zero and is back in step. The leading zero
//! means garbage before a frame can only spoil itself, never the frame after it. The CRC
//! (IEEE) catches corruption COBS cannot see.
//!
//! [`Decoder`] is sans-IO and allocation-free (a fixed buffer), for firmware; [`encode`] needs
//! `alloc`. Unlike [`crate::frame`] (length-prefixed, for reliable streams) nothing here
//! trusts a length read off the wire.
//!
//! The CRC tells line noise apart from tampering, nothing more: the passive voter's link
//! seals every message with a MAC as well ([`auth`], over [`frame`] and [`unframe`]).

pub mod auth;
pub mod mac;

use alloc::vec::Vec;
use serde::{Serialize, de::DeserializeOwned};

/// Largest decoded body (message + CRC) a link carries.
pub const MAX_BODY: usize = 1024;
/// Largest encoded frame between delimiters: COBS adds one byte per 254, plus one.
pub const MAX_ENCODED: usize = MAX_BODY + MAX_BODY / 254 + 2;

/// Why a delimited frame was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// More than [`MAX_ENCODED`] bytes arrived without a delimiter.
    #[error("frame longer than {MAX_ENCODED} bytes")]
    TooLong,
    /// The bytes between delimiters are not valid COBS.
    #[error("frame is not valid COBS")]
    Cobs,
    /// The body does not match its CRC (or is too short to hold one).
    #[error("frame checksum mismatch")]
    Checksum,
    /// The body passed its CRC but is not a postcard encoding of the expected message.
    #[error("frame does not decode: {0}")]
    Decode(postcard::Error),
}

/// Appends `msg` to `out` as one delimited frame.
///
/// # Panics
/// Never for wraft's message types; a message whose encoding exceeds [`MAX_BODY`] is a bug in
/// the sender (callers bound what they put in one message) and is caught by a debug assert.
pub fn encode<T: Serialize>(msg: &T, out: &mut Vec<u8>) {
    let body = postcard::to_allocvec(msg).expect("plain data serializes into a Vec");
    frame(&body, out);
}

/// Appends `body` and its CRC to `out` as one delimited frame.
pub fn frame(body: &[u8], out: &mut Vec<u8>) {
    let crc = crc32fast::hash(body).to_le_bytes();
    debug_assert!(
        body.len() + crc.len() <= MAX_BODY,
        "link message of {} bytes",
        body.len()
    );
    out.push(0);
    let start = out.len();
    out.resize(start + cobs::max_encoding_length(body.len() + crc.len()), 0);
    let mut encoder = cobs::CobsEncoder::new(&mut out[start..]);
    encoder
        .push(body)
        .and_then(|()| encoder.push(&crc))
        .expect("the buffer is sized by max_encoding_length");
    let len = encoder.finalize();
    out.truncate(start + len);
    out.push(0);
}

/// Checks a decoded frame's CRC and returns the body before it.
pub fn unframe(decoded: &[u8]) -> Result<&[u8], LinkError> {
    let split = decoded.len().checked_sub(4).ok_or(LinkError::Checksum)?;
    let (body, crc) = decoded.split_at(split);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(LinkError::Checksum);
    }
    Ok(body)
}

/// Checks a decoded frame's CRC and decodes the message in it.
pub fn decode<T: DeserializeOwned>(decoded: &[u8]) -> Result<T, LinkError> {
    postcard::from_bytes(unframe(decoded)?).map_err(LinkError::Decode)
}

/// Splits a byte stream into frame bodies, one byte at a time, in a fixed buffer.
#[derive(Debug)]
pub struct Decoder {
    buf: [u8; MAX_ENCODED],
    len: usize,
    overflowed: bool,
    consumed: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// An empty decoder, waiting for a delimiter or the first frame's bytes.
    pub const fn new() -> Self {
        Self {
            buf: [0; MAX_ENCODED],
            len: 0,
            overflowed: false,
            consumed: false,
        }
    }

    /// Feeds one byte. At a delimiter that closes a non-empty frame, returns the frame's
    /// decoded body (pass it to [`decode`]) or why the frame was dropped.
    pub fn feed(&mut self, byte: u8) -> Option<Result<&[u8], LinkError>> {
        if self.consumed {
            self.len = 0;
            self.consumed = false;
        }
        if byte != 0 {
            if self.len == MAX_ENCODED {
                self.overflowed = true;
            } else {
                self.buf[self.len] = byte;
                self.len += 1;
            }
            return None;
        }
        if core::mem::take(&mut self.overflowed) {
            self.consumed = true;
            return Some(Err(LinkError::TooLong));
        }
        if self.len == 0 {
            return None;
        }
        self.consumed = true;
        let frame = &mut self.buf[..self.len];
        Some(match cobs::decode_in_place(frame) {
            Ok(len) => Ok(&frame[..len]),
            Err(_) => Err(LinkError::Cobs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    fn frames(wire: &[u8]) -> Vec<Result<Vec<u32>, LinkError>> {
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for &b in wire {
            if let Some(r) = d.feed(b) {
                got.push(r.and_then(decode::<Vec<u32>>));
            }
        }
        got
    }

    fn wire(msg: &Vec<u32>) -> Vec<u8> {
        let mut out = Vec::new();
        encode(msg, &mut out);
        out
    }

    #[test]
    fn a_frame_round_trips_and_holds_no_zero_inside() {
        let msg = vec![0, 1, 0xFFFF_FFFF, 0, 7];
        let w = wire(&msg);
        assert!(w[1..w.len() - 1].iter().all(|&b| b != 0));
        assert_eq!(frames(&w), vec![Ok(msg)]);
    }

    #[test]
    fn long_runs_without_zeros_cross_cobs_blocks() {
        let msg: Vec<u32> = (1..200).map(|i| 0x0101_0101 * (i % 200 + 1)).collect();
        assert_eq!(frames(&wire(&msg)), vec![Ok(msg)]);
    }

    #[test]
    fn a_flipped_bit_drops_that_frame_only() {
        let (a, b) = (vec![1, 2, 3], vec![4, 5]);
        let mut w = wire(&a);
        w[3] ^= 0x10;
        if w[3] == 0 {
            w[3] = 0x10;
        }
        w.extend(wire(&b));
        let got = frames(&w);
        assert_eq!(got.len(), 2);
        assert!(got[0].is_err());
        assert_eq!(got[1], Ok(b));
    }

    #[test]
    fn an_endless_frame_is_dropped_and_the_next_one_decodes() {
        let mut w = vec![0x55; MAX_ENCODED + 10];
        w.extend(wire(&vec![9]));
        let got = frames(&w);
        assert_eq!(got, vec![Err(LinkError::TooLong), Ok(vec![9])]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut d = Decoder::new();
            for b in bytes {
                if let Some(Ok(body)) = d.feed(b) {
                    let _ = decode::<crate::voter::Request>(body);
                    let _ = decode::<crate::voter::Response>(body);
                    // Sealed frames' messages (auth_tests.rs feeds the same to the checks).
                    let _ = decode::<auth::ToVoter>(body);
                    let _ = decode::<auth::FromVoter>(body);
                }
            }
        }

        #[test]
        fn frames_after_garbage_decode(
            garbage in proptest::collection::vec(any::<u8>(), 0..600),
            msgs in proptest::collection::vec(proptest::collection::vec(any::<u32>(), 0..40), 1..4),
        ) {
            let mut w = garbage;
            for m in &msgs {
                w.extend(wire(m));
            }
            let got: Vec<Vec<u32>> = frames(&w).into_iter().filter_map(Result::ok).collect();
            // Garbage can at worst decode as extra frames before ours; ours come last, in order.
            prop_assert!(got.len() >= msgs.len());
            prop_assert_eq!(&got[got.len() - msgs.len()..], &msgs[..]);
        }

        #[test]
        fn truncated_or_spliced_frames_are_rejected_not_misread(
            msg in proptest::collection::vec(any::<u32>(), 1..40),
            cut in 1usize..64,
        ) {
            let w = wire(&msg);
            let cut = cut.min(w.len() - 2);
            // A reset mid-frame: the first part, then a whole new frame.
            let mut spliced = w[..w.len() - cut].to_vec();
            spliced.extend(wire(&msg));
            let got = frames(&spliced);
            prop_assert_eq!(got.last(), Some(&Ok(msg.clone())));
            for r in &got[..got.len() - 1] {
                prop_assert!(r.is_err() || r.as_ref().ok() == Some(&msg));
            }
        }
    }
}
