//! Log entries (`LogEntry::from_bytes`, both formats), the responses entries record
//! (`EntryResponse`) and their errors (`ApplyError`, whose nested `BatchFailed` decoding is
//! refused by a depth guard): decoding never panics or recurses without bound, a decoded
//! value re-encodes to bytes that decode to it, and decoding allocates in proportion to the
//! input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wraft_core::{ApplyError, EntryResponse, LogEntry};
use wraft_fuzz::{Input, alloc_bound, meter};

#[global_allocator]
static ALLOC: meter::Meter = meter::Meter;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let which = input.byte();
    let bytes = input.rest();
    match which % 3 {
        0 => {
            let (entry, peak) = meter::measure(|| LogEntry::from_bytes(bytes));
            assert!(
                peak <= alloc_bound(bytes.len()),
                "{peak} bytes for {}",
                bytes.len()
            );
            let Ok(entry) = entry else { return };
            let again = entry.to_bytes();
            assert_eq!(entry.encoded_len(), again.len());
            let back = LogEntry::from_bytes(&again).expect("an encoded entry decodes");
            assert_eq!(back, entry);
            assert_eq!(
                back.format(),
                entry.format(),
                "written back in its own format"
            );
            let _ = entry.to_string();
        }
        1 => {
            let (response, peak) = meter::measure(|| postcard::from_bytes::<EntryResponse>(bytes));
            assert!(
                peak <= alloc_bound(bytes.len()),
                "{peak} bytes for {}",
                bytes.len()
            );
            let Ok(response) = response else { return };
            let again = postcard::to_allocvec(&response).expect("encodes");
            assert_eq!(
                postcard::from_bytes::<EntryResponse>(&again).ok(),
                Some(response.clone())
            );
            let _ = response.to_string();
        }
        _ => {
            let Ok(error) = postcard::from_bytes::<ApplyError>(bytes) else {
                return;
            };
            if let ApplyError::BatchFailed { error: inner, .. } = &error {
                assert!(
                    !matches!(**inner, ApplyError::BatchFailed { .. }),
                    "nested: {error:?}"
                );
            }
            let again = postcard::to_allocvec(&error).expect("encodes");
            assert_eq!(u16::from(again[0]), error.code());
            assert_eq!(
                postcard::from_bytes::<ApplyError>(&again).ok(),
                Some(error.clone())
            );
            let _ = error.to_string();
        }
    }
});
