//! The client ALPN's messages (`wraft_api`): the `ApiCall` envelope a node
//! decodes from any client certificate (direct or forwarded requests, a pipeline's opening),
//! the `ApiResult` a client decodes (outputs, listings, status, backup manifests, errors),
//! the `PipelinedReply` a pipelining client decodes, and a bare `BackupManifest`. Decoding never panics and allocates in proportion to the input; values
//! round-trip; `ApiCallRef` encodes exactly as `ApiCall`; authorization answers for every
//! role.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wraft_api::Role;
use wraft_api::{ApiCall, ApiCallRef, ApiResult, BackupManifest, MAX_REPLY, PipelinedReply};
use wraft_core::frame::decode_frame;
use wraft_fuzz::{Input, alloc_bound, frame, meter, round_trip};

#[global_allocator]
static ALLOC: meter::Meter = meter::Meter;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let which = input.byte();
    let payload = input.rest();
    let wire = frame(payload);
    match which % 4 {
        0 => {
            let (call, peak) = meter::measure(|| decode_frame::<ApiCall>(&wire, MAX_REPLY));
            assert!(
                peak <= alloc_bound(payload.len()),
                "{peak} bytes for {}",
                payload.len()
            );
            let Ok(Some((call, _))) = call else { return };
            let direct = round_trip::<ApiCall>(payload).expect("postcard agrees");
            let bytes = postcard::to_allocvec(&call).expect("encodes");
            assert_eq!(bytes, postcard::to_allocvec(&direct).expect("encodes"));
            let (request, by_ref) = match &call {
                ApiCall::Pipeline => {
                    let by_ref = postcard::to_allocvec(&ApiCallRef::Pipeline).expect("encodes");
                    assert_eq!(by_ref, bytes);
                    return;
                }
                ApiCall::Direct(r) => (r, ApiCallRef::Direct(r)),
                ApiCall::Forwarded { role, request } => (
                    request,
                    ApiCallRef::Forwarded {
                        role: *role,
                        request,
                    },
                ),
            };
            assert_eq!(postcard::to_allocvec(&by_ref).expect("encodes"), bytes);
            let needed = request.required_role();
            for have in [
                None,
                Some(Role::Reader),
                Some(Role::Writer),
                Some(Role::Admin),
            ] {
                assert_eq!(request.authorize(have).is_ok(), have >= Some(needed));
            }
        }
        1 => {
            let (result, peak) = meter::measure(|| decode_frame::<ApiResult>(&wire, MAX_REPLY));
            assert!(
                peak <= alloc_bound(payload.len()),
                "{peak} bytes for {}",
                payload.len()
            );
            let Ok(Some((result, _))) = result else {
                return;
            };
            assert_eq!(round_trip::<ApiResult>(payload).as_ref(), Some(&result));
            if let Err(e) = &result {
                let _ = e.to_string();
            }
        }
        2 => {
            let (reply, peak) = meter::measure(|| decode_frame::<PipelinedReply>(&wire, MAX_REPLY));
            assert!(
                peak <= alloc_bound(payload.len()),
                "{peak} bytes for {}",
                payload.len()
            );
            let Ok(Some((reply, _))) = reply else {
                return;
            };
            assert_eq!(round_trip::<PipelinedReply>(payload).as_ref(), Some(&reply));
        }
        _ => {
            let (manifest, peak) = meter::measure(|| round_trip::<BackupManifest>(payload));
            assert!(
                peak <= 2 * alloc_bound(payload.len()),
                "{peak} bytes for {}",
                payload.len()
            );
            if let Some(m) = manifest {
                let again = postcard::to_allocvec(&m).expect("encodes");
                assert_eq!(postcard::from_bytes::<BackupManifest>(&again).ok(), Some(m));
            }
        }
    }
});
