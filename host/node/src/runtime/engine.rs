//! The one wasmtime engine configuration every node uses. Anything that could make two
//! replicas compute different results from the same module and input is turned off here.

use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, WasmFeatures,
};

use super::RuntimeError;

/// Largest linear memory an FSM may be given, in 64 KiB pages (1 GiB).
pub const MAX_MEMORY_PAGES: u32 = 16_384;

/// Instances the pooling allocator keeps slots for: applies run one at a time, queries and
/// codec calls run beside them.
const POOL_INSTANCES: u32 = 64;

/// Largest table (function references) an FSM module may declare.
pub const TABLE_ELEMENTS: usize = 10_000;

/// Bytes of each pooled memory slot kept resident between calls.
const KEEP_RESIDENT: usize = 2 << 20;

/// Builds the deterministic engine.
pub fn deterministic_engine() -> Result<Engine, RuntimeError> {
    let mut config = Config::new();
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
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| RuntimeError::Engine(e.to_string()))
}
