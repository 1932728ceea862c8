//! `wraft_core::frame`: `len | crc32 | payload` frames, as QUIC streams carry them, decoded
//! from a slice (`decode_frame`) and from a reader (`read_frame`) with a log entry inside.
//! Both agree, a decoded frame re-encodes to a frame that decodes the same, and neither
//! allocates more than the bytes given account for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wraft_core::LogEntry;
use wraft_core::frame::{FrameError, HEADER_LEN, decode_frame, encode_frame, read_frame};
use wraft_fuzz::{alloc_bound, meter};

#[global_allocator]
static ALLOC: meter::Meter = meter::Meter;

/// A reader's limit well past the bound the allocation check holds decoders to.
const MAX: usize = 64 << 20;

fuzz_target!(|data: &[u8]| {
    let (sliced, peak) = meter::measure(|| decode_frame::<LogEntry>(data, MAX));
    assert!(
        peak <= alloc_bound(data.len()),
        "decode_frame held {peak} bytes for {}",
        data.len()
    );
    let (read, peak) = meter::measure(|| read_frame::<_, LogEntry>(&mut &data[..], MAX));
    assert!(
        peak <= alloc_bound(data.len()),
        "read_frame held {peak} bytes for {}",
        data.len()
    );
    match (&sliced, &read) {
        (Ok(Some((entry, used))), Ok(again)) => {
            assert_eq!(entry, again);
            let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
            assert_eq!(*used, HEADER_LEN + len);
            let mut wire = Vec::new();
            encode_frame(entry, &mut wire);
            let (back, n) = decode_frame::<LogEntry>(&wire, MAX)
                .expect("an encoded frame decodes")
                .expect("whole");
            assert_eq!((&back, n), (entry, wire.len()));
            // The bytes after a frame are not its business.
            let exact = decode_frame::<LogEntry>(&data[..*used], MAX).expect("same frame");
            assert_eq!(exact.map(|(e, _)| e).as_ref(), Some(entry));
        }
        (Ok(None), Err(FrameError::UnexpectedEof))
        | (Err(FrameError::TooLarge { .. }), Err(FrameError::TooLarge { .. }))
        | (Err(FrameError::Checksum { .. }), Err(FrameError::Checksum { .. }))
        | (Err(FrameError::Decode(_)), Err(FrameError::Decode(_))) => {}
        (a, b) => panic!("decode_frame says {a:?}, read_frame {b:?}"),
    }
});
