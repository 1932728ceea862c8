//! Entry-point glue used by [`export_fsm!`](crate::export_fsm). Not a public API.
#![cfg(target_arch = "wasm32")]

use alloc::string::ToString;
use alloc::vec::Vec;
use serde::{Serialize, de::DeserializeOwned};
use wraft_core::abi::{ABI_VERSION, status};

use crate::wasm::{WasmHost, abort, set_output};
use crate::{Context, Error, Fsm};

/// `wraft_abi_version`.
pub fn abi_version() -> i32 {
    ABI_VERSION as i32
}

/// `wraft_alloc`: a buffer of `len` bytes for the host to write input into.
pub fn alloc(len: i32) -> i32 {
    let buf: Vec<u8> = Vec::with_capacity(len.max(0) as usize);
    let ptr = buf.as_ptr() as i32;
    core::mem::forget(buf);
    ptr
}

fn input<'a>(ptr: i32, len: i32) -> &'a [u8] {
    if len <= 0 {
        return &[];
    }
    // SAFETY: the host wrote `len` bytes at `ptr`, a block returned by `alloc` above.
    unsafe { core::slice::from_raw_parts(ptr as *const u8, len as usize) }
}

fn finish<T: Serialize>(result: Result<T, Error>) -> i32 {
    match result {
        Ok(out) => match postcard::to_allocvec(&out) {
            Ok(bytes) => {
                set_output(&bytes);
                status::OK
            }
            // Answering OK with no output would pass an FSM's bug off as a result.
            Err(e) => abort(&alloc::format!("the FSM's output does not encode: {e}")),
        },
        Err(e) => {
            set_output(e.message().as_bytes());
            status::REJECTED
        }
    }
}

fn bad_input(e: impl ToString) -> i32 {
    set_output(e.to_string().as_bytes());
    status::BAD_INPUT
}

/// `wraft_apply`.
pub fn apply<F: Fsm>(ptr: i32, len: i32) -> i32 {
    match postcard::from_bytes::<F::Command>(input(ptr, len)) {
        Ok(cmd) => finish(F::apply(&mut Context::new(&mut WasmHost), cmd)),
        Err(e) => bad_input(e),
    }
}

/// `wraft_query`.
pub fn query<F: Fsm>(ptr: i32, len: i32) -> i32 {
    match postcard::from_bytes::<F::Query>(input(ptr, len)) {
        Ok(q) => finish(F::query(&Context::new(&mut WasmHost), q)),
        Err(e) => bad_input(e),
    }
}

/// `wraft_init`.
pub fn init<F: Fsm>() -> i32 {
    finish(F::init(&mut Context::new(&mut WasmHost)))
}

/// `wraft_migrate`.
pub fn migrate<F: Fsm>(from_version: i32) -> i32 {
    finish(F::migrate(
        &mut Context::new(&mut WasmHost),
        from_version as u32,
    ))
}

/// A JSON-to-postcard codec export.
#[cfg(feature = "json")]
pub fn from_json<T: Serialize + DeserializeOwned>(ptr: i32, len: i32) -> i32 {
    match serde_json::from_slice::<T>(input(ptr, len)) {
        Ok(v) => finish::<T>(Ok(v)),
        Err(e) => bad_input(e),
    }
}

/// A postcard-to-JSON codec export.
#[cfg(feature = "json")]
pub fn to_json<T: Serialize + DeserializeOwned>(ptr: i32, len: i32) -> i32 {
    match postcard::from_bytes::<T>(input(ptr, len)) {
        Ok(v) => match serde_json::to_vec(&v) {
            Ok(json) => {
                set_output(&json);
                status::OK
            }
            Err(e) => bad_input(e),
        },
        Err(e) => bad_input(e),
    }
}

/// The raw host, for test guests that deliberately break the SDK's rules.
pub fn raw_host() -> WasmHost {
    WasmHost
}
