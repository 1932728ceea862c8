//! The one wasmtime engine configuration every node uses. Anything that could make two
//! replicas compute different results from the same module and input is turned off here.

use wasmtime::{Config, Engine, InstanceAllocationStrategy, WasmFeatures};
#[cfg(target_pointer_width = "64")]
use wasmtime::{Enabled, PoolingAllocationConfig};

use super::RuntimeError;

/// Largest linear memory an FSM may be given, in 64 KiB pages (1 GiB).
pub const MAX_MEMORY_PAGES: u32 = 16_384;

#[cfg(target_pointer_width = "64")]
/// Instances the pooling allocator keeps slots for: applies run one at a time, queries and
/// codec calls run beside them.
pub(super) const POOL_INSTANCES: u32 = 64;

/// Most guest calls made for callers one lane of the guest pool may run at once
/// (`--guest-threads` for queries, `--codec-threads` for writes' JSON codecs). Both lanes together leave 16 of the pool's 64 instance slots
/// to the apply (one call at a time), module validation on deploy and init/migrate calls: an
/// apply that found no free slot would be a fault of the node, not an answer.
pub const MAX_GUEST_THREADS: usize = 24;

#[cfg(target_pointer_width = "64")]
const _: () = assert!(2 * MAX_GUEST_THREADS + 16 <= POOL_INSTANCES as usize);

/// Largest table (function references) an FSM module may declare or grow to, on every host
/// (the pool's slot size on 64-bit hosts, the limiter's bound everywhere), so a table that
/// does not fit fails the same way on every architecture.
pub const TABLE_ELEMENTS: usize = 10_000;

#[cfg(target_pointer_width = "64")]
/// Bytes of each pooled memory slot kept resident between calls.
const KEEP_RESIDENT: usize = 2 << 20;

/// How FSM code runs. Both compile through Cranelift's wasm frontend (same fuel counting,
/// same NaN canonicalization), so a module gives the same outputs and state under either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Machine code for this CPU (x86_64, aarch64, riscv64, s390x).
    Native,
    /// Pulley, wasmtime's portable bytecode interpreter: for CPUs Cranelift does not target
    /// (32-bit ARM), and to check that a module's results do not depend on the backend.
    Pulley,
}

impl Backend {
    /// Native code where Cranelift targets this CPU, Pulley elsewhere.
    pub fn for_this_host() -> Self {
        if cfg!(any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "riscv64",
            target_arch = "s390x"
        )) {
            Self::Native
        } else {
            Self::Pulley
        }
    }
}

/// Builds the deterministic engine for `backend`.
pub fn deterministic_engine(backend: Backend) -> Result<Engine, RuntimeError> {
    let mut config = Config::new();
    if backend == Backend::Pulley {
        let pulley = if cfg!(target_pointer_width = "64") {
            "pulley64"
        } else {
            "pulley32"
        };
        config
            .target(pulley)
            .map_err(|e| RuntimeError::Engine(e.to_string()))?;
    }
    config
        // Determinism.
        .cranelift_nan_canonicalization(true)
        .wasm_features(
            WasmFeatures::THREADS | WasmFeatures::SHARED_EVERYTHING_THREADS,
            false,
        )
        .wasm_relaxed_simd(false)
        .relaxed_simd_deterministic(true)
        .wasm_memory64(false)
        .wasm_gc(false)
        // Bounded execution: fuel is counted per wasm operator, identically on every node.
        .consume_fuel(true)
        .max_wasm_stack(1 << 20)
        // No host-specific text (addresses, frames) may leak into a replicated error.
        .wasm_backtrace_max_frames(None)
        // A fresh instance per call costs microseconds with pooled slots and CoW memory images.
        .memory_init_cow(true);

    config.allocation_strategy(allocation());
    Engine::new(&config).map_err(|e| RuntimeError::Engine(e.to_string()))
}

/// Pooled instance slots on 64-bit hosts: each memory slot reserves address space for the
/// largest memory (plus guard pages), which 64 slots can afford only in a 64-bit space.
#[cfg(target_pointer_width = "64")]
fn allocation() -> InstanceAllocationStrategy {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_core_instances(POOL_INSTANCES)
        .total_memories(POOL_INSTANCES)
        .total_tables(POOL_INSTANCES)
        .max_memory_size(MAX_MEMORY_PAGES as usize * 65536)
        .max_memories_per_module(1)
        .max_tables_per_module(1)
        // Every pooled table slot is kept in memory: 64 slots of 100 000 elements held 25 MiB
        // per node at rest. FSM modules built from Rust use a few hundred entries.
        .table_elements(TABLE_ELEMENTS)
        // Reset a slot's first pages with memset (or only the dirty ones, with PAGEMAP_SCAN on
        // Linux 6.7+) instead of madvise + page faults: most FSM calls touch little memory.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);
    InstanceAllocationStrategy::Pooling(pool)
}

/// On 32-bit hosts (armv7 boards) memories are allocated per instance and grow by moving:
/// a pool of 1 GiB reservations does not fit a 4 GiB address space. The limits an FSM sees
/// (`memory_pages`) are the same as everywhere; a growth the board cannot back is a fault of
/// this node, never a different answer (see `CallState::memory_grow_failed`).
#[cfg(not(target_pointer_width = "64"))]
fn allocation() -> InstanceAllocationStrategy {
    InstanceAllocationStrategy::OnDemand
}
