//! The raft ALPN's messages (`wraft_transport_quic::wire`): `Request` (hello, append
//! entries with their log entries, votes, snapshot headers, leader transfer), `Reply` and
//! snapshot `Chunk`s, in frames with a correct checksum so the fuzzer's bytes reach the
//! payload decoder. The frame decoder agrees with postcard, allocates in proportion to the
//! input, and every decoded message re-encodes canonically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};
use wraft_core::frame::decode_frame;
use wraft_fuzz::{Input, alloc_bound, frame, meter, round_trip};
use wraft_transport_quic::wire::{Chunk, MAX_CHUNK_FRAME, MAX_HELLO, Reply, Request};

#[global_allocator]
static ALLOC: meter::Meter = meter::Meter;

/// A node's raft frame limit with default settings is far larger; the decoder must not care.
const MAX: usize = 64 << 20;

fn check<T: Serialize + DeserializeOwned>(payload: &[u8], max: usize) {
    let wire = frame(payload);
    let (decoded, peak) = meter::measure(|| decode_frame::<T>(&wire, max));
    assert!(
        peak <= alloc_bound(payload.len()),
        "{peak} bytes for {}",
        payload.len()
    );
    let direct = round_trip::<T>(payload);
    match decoded {
        Ok(Some((msg, used))) => {
            assert_eq!(used, wire.len());
            let direct = direct.expect("postcard decodes what the frame decoder did");
            assert_eq!(
                postcard::to_allocvec(&msg).expect("encodes"),
                postcard::to_allocvec(&direct).expect("encodes")
            );
        }
        Ok(None) => panic!("a whole frame reported incomplete"),
        Err(_) => assert!(direct.is_none() || payload.len() > max),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let which = input.byte();
    let payload = input.rest();
    match which % 4 {
        0 => check::<Request>(payload, MAX),
        1 => check::<Request>(payload, MAX_HELLO),
        2 => check::<Reply>(payload, MAX),
        _ => check::<Chunk>(payload, MAX_CHUNK_FRAME),
    }
});
