//! Frames: postcard messages over any `embedded-io` byte stream (QUIC stream, UART, TCP).
//!
//! ```text
//! +----------------+----------------+---------------------+
//! | len: u32 LE    | crc32: u32 LE  | payload: len bytes  |
//! +----------------+----------------+---------------------+
//! ```
//! `crc32` (IEEE) covers the payload, so a corrupted frame on a serial link or a flipped
//! bit on disk is a clear error, never silently misread data.

use alloc::vec::Vec;
use embedded_io::{Read, ReadExactError, Write};
use serde::{Serialize, de::DeserializeOwned};

/// Bytes before the payload.
pub const HEADER_LEN: usize = 8;
/// Payload bytes [`read_frame`] reads at a time: its buffer grows with the bytes that
/// arrived, never with the length a header announced.
pub const READ_STEP: usize = 64 << 10;

/// Why a frame could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError<E: core::fmt::Debug> {
    /// The underlying stream failed.
    #[error("i/o error: {0:?}")]
    Io(E),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    UnexpectedEof,
    /// The frame announces more bytes than the reader accepts.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The reader's limit.
        max: usize,
    },
    /// The payload does not match its checksum.
    #[error("frame checksum mismatch (expected {expected:#010x}, got {actual:#010x})")]
    Checksum {
        /// Checksum in the header.
        expected: u32,
        /// Checksum of the received payload.
        actual: u32,
    },
    /// The payload is not a valid postcard encoding of the expected type.
    #[error("frame payload does not decode: {0}")]
    Decode(postcard::Error),
}

impl<E: core::fmt::Debug> From<ReadExactError<E>> for FrameError<E> {
    fn from(e: ReadExactError<E>) -> Self {
        match e {
            ReadExactError::UnexpectedEof => Self::UnexpectedEof,
            ReadExactError::Other(e) => Self::Io(e),
        }
    }
}

/// Encodes `msg` as one frame appended to `out`.
pub fn encode_frame<T: Serialize>(msg: &T, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    // Serialized in place, after the header it then fills in: no payload copy.
    *out = postcard::to_extend(msg, core::mem::take(out))
        .expect("wraft's messages are plain data, which always encodes into a Vec");
    let payload = start + HEADER_LEN;
    let len = (out.len() - payload) as u32;
    let crc = crc32fast::hash(&out[payload..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Writes `msg` as one frame.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError<W::Error>> {
    let mut buf = Vec::new();
    encode_frame(msg, &mut buf);
    w.write_all(&buf).map_err(FrameError::Io)?;
    w.flush().map_err(FrameError::Io)
}

/// Reads one frame of at most `max_len` payload bytes and decodes it. The payload is read
/// [`READ_STEP`] bytes at a time, so a header that announces much and a stream that then
/// ends costs what arrived, not what was announced (found by the `frame` fuzz target).
pub fn read_frame<R: Read, T: DeserializeOwned>(
    r: &mut R,
    max_len: usize,
) -> Result<T, FrameError<R::Error>> {
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header)?;
    let (len, expected) = parse_header(&header);
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    let mut payload = Vec::with_capacity(len.min(READ_STEP));
    while payload.len() < len {
        let at = payload.len();
        payload.resize(at + (len - at).min(READ_STEP), 0);
        r.read_exact(&mut payload[at..])?;
    }
    decode_payload(&payload, expected)
}

/// Decodes one frame from the front of `buf`; returns the message and the bytes consumed.
/// `Ok(None)` means `buf` does not yet hold a whole frame (the sans-IO form of [`read_frame`]).
pub fn decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    max_len: usize,
) -> Result<Option<(T, usize)>, FrameError<core::convert::Infallible>> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(header);
    let (len, expected) = parse_header(&h);
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_payload(payload, expected)?, HEADER_LEN + len)))
}

fn parse_header(h: &[u8; HEADER_LEN]) -> (usize, u32) {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    (len, crc)
}

fn decode_payload<T: DeserializeOwned, E: core::fmt::Debug>(
    payload: &[u8],
    expected: u32,
) -> Result<T, FrameError<E>> {
    let actual = crc32fast::hash(payload);
    if actual != expected {
        return Err(FrameError::Checksum { expected, actual });
    }
    postcard::from_bytes(payload).map_err(FrameError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Command, LogEntry};
    use crate::name::FsmName;

    fn entry() -> LogEntry {
        LogEntry::new(
            42,
            Command::DropFsm {
                fsm: FsmName::new("x").expect("name"),
            },
        )
    }

    #[test]
    fn round_trip_over_embedded_io() {
        let mut wire: Vec<u8> = Vec::new();
        write_frame(&mut wire, &entry()).expect("write");
        write_frame(&mut wire, &entry()).expect("write");
        let mut r: &[u8] = &wire;
        for _ in 0..2 {
            let got: LogEntry = read_frame(&mut r, 1024).expect("read");
            assert_eq!(got, entry());
        }
        assert!(matches!(
            read_frame::<_, LogEntry>(&mut r, 1024),
            Err(FrameError::UnexpectedEof)
        ));
    }

    /// `encode_frame` appends: each frame's header describes its own payload only.
    #[test]
    fn frames_encoded_one_after_another_into_a_buffer_read_back() {
        let mut wire = vec![0xAA];
        encode_frame(&entry(), &mut wire);
        encode_frame(&7u64, &mut wire);
        let mut r: &[u8] = &wire[1..];
        assert_eq!(
            read_frame::<_, LogEntry>(&mut r, 1024).expect("read"),
            entry()
        );
        assert_eq!(read_frame::<_, u64>(&mut r, 1024).expect("read"), 7);
        assert!(r.is_empty());
    }

    #[test]
    fn corruption_is_detected() {
        let mut wire = Vec::new();
        encode_frame(&entry(), &mut wire);
        let last = wire.len() - 1;
        wire[last] ^= 0x40;
        let mut r: &[u8] = &wire;
        assert!(matches!(
            read_frame::<_, LogEntry>(&mut r, 1024),
            Err(FrameError::Checksum { .. })
        ));
    }

    #[test]
    fn oversized_frames_are_refused_before_allocating() {
        let mut wire = Vec::new();
        encode_frame(&entry(), &mut wire);
        let mut r: &[u8] = &wire;
        assert!(matches!(
            read_frame::<_, LogEntry>(&mut r, 2),
            Err(FrameError::TooLarge { max: 2, .. })
        ));
    }

    /// Regression (fuzz target `frame`): an 8-byte header announcing 4.5 MiB made
    /// `read_frame` allocate all of it before the stream ended. Now it asks the reader for
    /// at most [`READ_STEP`] bytes at a time.
    #[test]
    fn a_large_announced_frame_is_read_in_steps() {
        struct Stingy<'a> {
            bytes: &'a [u8],
            largest_ask: usize,
        }
        impl embedded_io::ErrorType for Stingy<'_> {
            type Error = core::convert::Infallible;
        }
        impl Read for Stingy<'_> {
            fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
                self.largest_ask = self.largest_ask.max(buf.len());
                let n = buf.len().min(self.bytes.len());
                buf[..n].copy_from_slice(&self.bytes[..n]);
                self.bytes = &self.bytes[n..];
                Ok(n)
            }
        }
        let announced = [0x00, 0x00, 0x46, 0x00, 0x00, 0x00, 0x08, 0x08];
        let mut r = Stingy {
            bytes: &announced,
            largest_ask: 0,
        };
        assert!(matches!(
            read_frame::<_, LogEntry>(&mut r, 64 << 20),
            Err(FrameError::UnexpectedEof)
        ));
        assert_eq!(r.largest_ask, READ_STEP);

        // A frame longer than a step still reads whole.
        let big = LogEntry::new(
            1,
            Command::DeployModule {
                module_id: crate::ModuleId([1; 32]),
                bytes: alloc::vec![7; 3 * READ_STEP + 5],
            },
        );
        let mut wire = Vec::new();
        encode_frame(&big, &mut wire);
        let mut r = Stingy {
            bytes: &wire,
            largest_ask: 0,
        };
        assert_eq!(
            read_frame::<_, LogEntry>(&mut r, 1 << 20).expect("read"),
            big
        );
        assert_eq!(r.largest_ask, READ_STEP);
    }

    #[test]
    fn sans_io_decoder_waits_for_whole_frames() {
        let mut wire = Vec::new();
        encode_frame(&entry(), &mut wire);
        for cut in 0..wire.len() {
            assert!(
                decode_frame::<LogEntry>(&wire[..cut], 1024)
                    .expect("partial")
                    .is_none()
            );
        }
        let (got, used) = decode_frame::<LogEntry>(&wire, 1024)
            .expect("ok")
            .expect("whole");
        assert_eq!((got, used), (entry(), wire.len()));
    }
}
