//! The wasm32 side of the ABI: host imports, the [`Host`] over them and the panic handler.

use alloc::vec::Vec;

use wraft_core::abi::{CONTEXT_LEN, EntryContext};

use crate::Host;

macro_rules! declare_imports {
    ($( $(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?; )*) => {
        /// Raw host imports, generated from `wraft_core::for_each_import!`.
        pub mod imports {
            #[link(wasm_import_module = "wraft")]
            unsafe extern "C" {
                $( $(#[$meta])* pub fn $name($($arg: $ty),*) $(-> $ret)?; )*
            }
        }
    };
}
wraft_core::for_each_import!(declare_imports);

fn ptr(bytes: &[u8]) -> i32 {
    bytes.as_ptr() as i32
}

fn len(bytes: &[u8]) -> i32 {
    bytes.len() as i32
}

/// Copies the host's result buffer (`len` bytes) into a new vector.
fn take_result(len: i32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(len as usize);
    // SAFETY: the host writes exactly `len` bytes (the length it just returned) to the
    // buffer's spare capacity before we set the length.
    unsafe {
        imports::take_result(buf.as_mut_ptr() as i32);
        buf.set_len(len as usize);
    }
    buf
}

/// The host imports as a [`Host`].
#[derive(Debug, Default)]
pub struct WasmHost;

impl Host for WasmHost {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        // SAFETY: pointer and length describe a live slice; the host only reads it.
        let n = unsafe { imports::kv_get(ptr(key), len(key)) };
        (n >= 0).then(|| take_result(n))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        // SAFETY: as above.
        unsafe { imports::kv_put(ptr(key), len(key), ptr(value), len(value)) }
    }

    fn delete(&mut self, key: &[u8]) -> bool {
        // SAFETY: as above.
        unsafe { imports::kv_delete(ptr(key), len(key)) == 1 }
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        let end = end.unwrap_or(&[]);
        // SAFETY: as above.
        let n = unsafe {
            imports::kv_scan(
                ptr(start),
                len(start),
                ptr(end),
                len(end),
                limit.min(i32::MAX as u32) as i32,
            )
        };
        let page = take_result(n);
        // The host encodes pages in the ABI's format: one that does not decode is a broken
        // host or ABI, and reading it as an empty keyspace would lose data silently.
        match postcard::from_bytes(&page) {
            Ok(pairs) => pairs,
            Err(e) => abort(&alloc::format!("a kv_scan page does not decode: {e}")),
        }
    }

    fn entry(&self) -> EntryContext {
        let mut buf = [0u8; CONTEXT_LEN];
        // SAFETY: the host writes CONTEXT_LEN bytes into `buf`.
        unsafe { imports::entry_context(buf.as_mut_ptr() as i32) };
        EntryContext::decode(&buf)
    }

    fn random_u64(&mut self) -> u64 {
        // SAFETY: no arguments.
        unsafe { imports::random_u64() as u64 }
    }

    fn log(&self, level: i32, message: &str) {
        // SAFETY: pointer and length describe a live string.
        unsafe { imports::log_message(level, ptr(message.as_bytes()), len(message.as_bytes())) }
    }
}

/// Hands `output` to the host as the call's result.
pub fn set_output(output: &[u8]) {
    // SAFETY: pointer and length describe a live slice.
    unsafe { imports::set_output(ptr(output), len(output)) }
}

/// Reports the panic message to the host, which ends the call with `ApplyError::Panicked`.
/// Ends the call with `ApplyError::Panicked(message)`: the same on every replica.
pub fn abort(message: &str) -> ! {
    // SAFETY: pointer and length describe a live slice; the import does not return.
    unsafe { imports::abort_call(ptr(message.as_bytes()), len(message.as_bytes())) };
    core::arch::wasm32::unreachable()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    struct Buf {
        bytes: [u8; 512],
        len: usize,
    }
    impl core::fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let n = s.len().min(self.bytes.len() - self.len);
            self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
            self.len += n;
            Ok(())
        }
    }
    let mut buf = Buf {
        bytes: [0; 512],
        len: 0,
    };
    let _ = core::fmt::write(&mut buf, format_args!("{}", info.message()));
    if let Some(loc) = info.location() {
        let _ = core::fmt::write(&mut buf, format_args!(" at {}:{}", loc.file(), loc.line()));
    }
    // SAFETY: pointer and length describe `buf`; the import does not return.
    unsafe { imports::abort_call(buf.bytes.as_ptr() as i32, buf.len as i32) };
    core::arch::wasm32::unreachable()
}
