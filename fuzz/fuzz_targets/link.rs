//! The voter link's framing (`wraft_core::link`): COBS frames split from a byte stream by
//! the allocation-free `Decoder`, checked by CRC, and decoded as the passive voter's
//! messages (`Request`, `Response`, and the sealed `ToVoter`/`FromVoter` envelopes).
//!
//! Selector 0 feeds the fuzzer's bytes as a raw stream: every frame the decoder yields fits
//! its buffer, and every message decoded from one re-encodes to a frame that decodes to it.
//! Other selectors take the bytes as one message body, frame it, and require the decoder to
//! give back exactly that body, after whatever garbage came first.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};
use std::fmt::Debug;
use wraft_core::link::auth::{FromVoter, ToVoter};
use wraft_core::link::{self, Decoder, LinkError, MAX_BODY, MAX_ENCODED};
use wraft_core::voter::{MAX_RUNS, Request, Response};
use wraft_fuzz::Input;

/// Bodies (decoded frames) the decoder yields for `wire`.
fn frames(wire: &[u8]) -> Vec<Result<Vec<u8>, LinkError>> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for &b in wire {
        if let Some(frame) = d.feed(b) {
            let frame = frame.map(<[u8]>::to_vec);
            if let Ok(body) = &frame {
                assert!(body.len() <= MAX_ENCODED, "a body longer than the buffer");
            }
            out.push(frame);
        }
    }
    out
}

/// Decodes `decoded` as `T`; a message that decodes re-encodes to a frame that decodes to it.
fn message<T: Serialize + DeserializeOwned + PartialEq + Debug>(decoded: &[u8]) -> Option<T> {
    let msg = link::decode::<T>(decoded).ok()?;
    let mut wire = Vec::new();
    link::encode(&msg, &mut wire);
    if wire.len() <= MAX_ENCODED + 2 {
        let got = frames(&wire);
        assert_eq!(got.len(), 1, "one frame in, {} out", got.len());
        let body = got[0].as_ref().expect("a frame it encoded");
        assert_eq!(link::decode::<T>(body).as_ref(), Ok(&msg));
    }
    Some(msg)
}

fn decode_all(decoded: &[u8]) {
    if let Some(Request::Append { runs, .. }) = message::<Request>(decoded) {
        assert!(runs.len() <= MAX_RUNS, "{} runs decoded", runs.len());
    }
    message::<Response>(decoded);
    if let Some(ToVoter::Call(call)) = message::<ToVoter>(decoded)
        && let Request::Append { runs, .. } = &call.body
    {
        assert!(runs.len() <= MAX_RUNS, "{} runs decoded", runs.len());
    }
    message::<FromVoter>(decoded);
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    if input.byte() % 2 == 0 {
        for frame in frames(input.rest()).into_iter().flatten() {
            decode_all(&frame);
        }
        return;
    }
    // A body as the sender frames it (message bytes and their CRC), after noise.
    let noise = input.short();
    let body = input.rest();
    if body.len() + 4 > MAX_BODY {
        return;
    }
    let mut wire = noise.to_vec();
    link::frame(body, &mut wire);
    let got = frames(&wire);
    let last = got.last().expect("at least the framed body");
    let decoded = last.as_ref().expect("a frame as framed decodes");
    assert_eq!(
        link::unframe(decoded),
        Ok(body),
        "COBS and the CRC give the body back"
    );
    decode_all(decoded);
});
