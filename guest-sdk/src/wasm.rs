//! The wasm32 side of the ABI: host imports, the [`Host`] over them, the allocator and the
//! panic handler.

use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;

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

/// A bump allocator. Every call runs in a fresh instance, so memory is reclaimed by throwing
/// the instance away; freeing (or growing) the most recent allocation is done in place.
struct Bump {
    next: Cell<usize>,
    end: Cell<usize>,
}

// SAFETY: wasm32-unknown-unknown guests are single-threaded (threads are disabled by the host).
unsafe impl Sync for Bump {}

const PAGE: usize = 65536;

impl Bump {
    fn grow(&self, need: usize) -> bool {
        if self.end.get() == 0 {
            // Start the heap at the end of the module's initial memory (stack and data below).
            let base = core::arch::wasm32::memory_size(0) * PAGE;
            self.next.set(base);
            self.end.set(base);
        }
        let missing = need.saturating_sub(self.end.get() - self.next.get());
        if missing == 0 {
            return true;
        }
        let pages = missing.div_ceil(PAGE);
        if core::arch::wasm32::memory_grow(0, pages) == usize::MAX {
            return false;
        }
        self.end.set(self.end.get() + pages * PAGE);
        true
    }
}

// SAFETY: returns suitably aligned, non-overlapping blocks inside grown linear memory.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let align = layout.align();
        let pad = |next: usize| (next + align - 1) & !(align - 1);
        if !self.grow(0) {
            return core::ptr::null_mut();
        }
        let start = pad(self.next.get());
        let Some(end) = start.checked_add(layout.size()) else {
            return core::ptr::null_mut();
        };
        if end > self.end.get() && !self.grow(end - self.next.get()) {
            return core::ptr::null_mut();
        }
        self.next.set(end);
        start as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ptr as usize + layout.size() == self.next.get() {
            self.next.set(ptr as usize);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let start = ptr as usize;
        if start + layout.size() == self.next.get() {
            // The latest allocation: grow or shrink it in place.
            let new_end = start + new_size;
            if new_end <= self.end.get() || self.grow(new_end - self.next.get()) {
                self.next.set(new_end);
                return ptr;
            }
            return core::ptr::null_mut();
        }
        // SAFETY: `new_size` is valid for `layout.align()` per GlobalAlloc's contract.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: forwarding GlobalAlloc's contract.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for min(old, new) bytes and do not overlap.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Bump = Bump {
    next: Cell::new(0),
    end: Cell::new(0),
};

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
