//! The guest's allocator: a bump allocator that starts in an arena inside the module's
//! initial memory and grows linear memory only when a call needs more than the arena holds.
//!
//! Every call runs in a fresh instance, so memory is reclaimed by throwing the instance
//! away; freeing (or resizing) the most recent allocation is done in place. The arena is for
//! speed: the host keeps a module's initial memory mapped read-write between calls, while
//! every page a call grows into must be made accessible (an `mprotect`) and inaccessible
//! again before the next call (another). A call whose allocations fit the arena pays
//! neither (an empty call: 8.8 µs when the heap began past the initial memory, 5.0 µs with
//! the arena; docs/benchmarks.md).

use core::alloc::{GlobalAlloc, Layout};
use core::cell::{Cell, UnsafeCell};

const PAGE: usize = 65536;

/// Bytes of the arena: zeroed memory (`.bss`, so no bytes in the module) that adds
/// `ARENA_BYTES / 64 KiB` pages to the module's initial memory, and so to the
/// `memory_pages` an FSM's limits must allow.
pub const ARENA_BYTES: usize = 256 << 10;

#[repr(C, align(16))]
struct Arena(UnsafeCell<[u8; ARENA_BYTES]>);

// SAFETY: wasm32-unknown-unknown guests are single-threaded (threads are disabled by the
// host); the arena is only handed out through the allocator below.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_BYTES]));

/// The allocator's current region is `[next, end)`: first the arena, then the tail of linear
/// memory, which grows.
struct Bump {
    next: Cell<usize>,
    end: Cell<usize>,
}

// SAFETY: single-threaded, as above.
unsafe impl Sync for Bump {}

/// Where linear memory ends now.
fn memory_end() -> usize {
    core::arch::wasm32::memory_size(0) * PAGE
}

impl Bump {
    /// The first allocation starts in the arena.
    fn start(&self) {
        if self.end.get() == 0 {
            let arena = ARENA.0.get() as usize;
            self.next.set(arena);
            self.end.set(arena + ARENA_BYTES);
        }
    }

    /// Makes the current region reach at least `to`: true if it already does, or if it is the
    /// tail of linear memory and the memory grew; false for the arena (it cannot grow in
    /// place) and when the memory cannot grow.
    fn extend(&self, to: usize) -> bool {
        let end = self.end.get();
        if to <= end {
            return true;
        }
        if end != memory_end() {
            return false;
        }
        let pages = (to - end).div_ceil(PAGE);
        if core::arch::wasm32::memory_grow(0, pages) == usize::MAX {
            return false;
        }
        self.end.set(end + pages * PAGE);
        true
    }

    /// Takes `layout` from the current region, extending it if it is the memory's tail.
    fn carve(&self, layout: Layout) -> Option<usize> {
        let align = layout.align();
        let start = self.next.get().checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(layout.size())?;
        if !self.extend(end) {
            return None;
        }
        self.next.set(end);
        Some(start)
    }
}

// SAFETY: returns suitably aligned, non-overlapping blocks inside the arena or inside grown
// linear memory; a block is never handed out twice.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.start();
        if let Some(start) = self.carve(layout) {
            return start as *mut u8;
        }
        let tail = memory_end();
        if self.end.get() != tail {
            // The arena is full: the rest of this call's allocations go past the end of
            // linear memory (what is left of the arena stays unused).
            self.next.set(tail);
            self.end.set(tail);
            if let Some(start) = self.carve(layout) {
                return start as *mut u8;
            }
        }
        core::ptr::null_mut()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ptr as usize + layout.size() == self.next.get() {
            self.next.set(ptr as usize);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let start = ptr as usize;
        if start + layout.size() == self.next.get() {
            // The latest allocation: resize it in place where its region allows.
            let new_end = start + new_size;
            if self.extend(new_end) {
                self.next.set(new_end);
                return ptr;
            }
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
