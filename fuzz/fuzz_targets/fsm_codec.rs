//! HTTP bodies and `Payload::Json` through the example FSMs' JSON codecs, run in wasm as a
//! node runs them (`wraft_host::runtime::FsmRuntime`, no keyspace, the query fuel plus fuel
//! per input byte), for latest-payload, file-manifest and airspace-store: JSON to a command
//! or a query, and an output or a query output (postcard) to JSON.
//!
//! A codec call is never a node fault; it succeeds exactly when the same types compiled
//! natively decode the input, with the same bytes; otherwise it fails as bad input (never a
//! trap, a panic or an ABI violation). The native decode is what libFuzzer's coverage sees
//! (wasm code is not instrumented).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wraft_core::ApplyError;
use wraft_fuzz::Input;
use wraft_fuzz::codec::{ENTRIES, examples};

fuzz_target!(
    // Compiling the three modules takes a while (a minute in an unoptimized build): before
    // the first input, so it does not count against libFuzzer's per-input timeout.
    init: {
        examples();
    },
    |data: &[u8]| codec(data)
);

fn codec(data: &[u8]) {
    let mut input = Input(data);
    let which = usize::from(input.byte());
    let body = input.rest();
    let (runtime, examples) = examples();
    let example = &examples[which % examples.len()];
    let entry = ENTRIES[(which / examples.len()) % ENTRIES.len()];
    let outcome = example.call(runtime, entry, body);
    match (&outcome.wasm, &outcome.native) {
        (Ok(wasm), Some(native)) => assert_eq!(wasm, native, "{} {entry:?}", example.name),
        (Err(ApplyError::BadInput(_)), None) => {}
        _ => panic!("{} {entry:?}: {outcome:?}", example.name),
    }
}
