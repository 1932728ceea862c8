//! The FSM ABI, version [`ABI_VERSION`]: the one definition of the contract between the
//! wraft host and a wasm guest. The host's linker and validator and the guest SDK's
//! `extern` block are both generated from [`for_each_import!`] and [`EXPORTS`].
//!
//! Model: state lives in the host (LMDB), never in guest memory. Every call runs in a fresh
//! instance. The host writes the call's input into memory it obtains from the guest's
//! allocator export, calls the entry point, and the guest answers with a status code and
//! (through [`set_output`](for_each_import)) its output bytes. Values the host returns to the
//! guest (a `kv_get` value, a `kv_scan` page) are held in a per-call *result buffer*, whose
//! length the import returns and which the guest copies out with `take_result`.
//!
//! docs/abi.md is the prose version of this module and must change with it.

/// The ABI version this host and SDK implement. A module reports its own version through
/// the `wraft_abi_version` export; the host refuses any other.
pub const ABI_VERSION: u32 = 1;

/// The wasm import module every host import lives in. A module importing anything from
/// another module (WASI included) is refused at deploy.
pub const IMPORT_MODULE: &str = "wraft";

/// Longest key a guest may write, in bytes (LMDB's key limit minus wraft's keyspace prefix).
pub const MAX_KEY_LEN: usize = 480;
/// Largest value a guest may write, in bytes.
pub const MAX_VALUE_LEN: usize = 16 << 20;
/// Most key/value pairs one `kv_scan` call returns.
pub const MAX_SCAN_ITEMS: u32 = 10_000;
/// A `kv_scan` page stops after the pair that takes its encoded size past this many bytes.
pub const MAX_SCAN_BYTES: usize = 4 << 20;
/// Size of the entry context written by `entry_context`.
pub const CONTEXT_LEN: usize = 32;
/// Bytes of log messages one call may write to the node's log; past them a call's messages
/// are dropped (and counted in one line at its end), though still paid for in fuel.
pub const MAX_LOG_BYTES_PER_CALL: usize = 16 << 10;

/// The fuel schedule: what host calls cost beyond the wasm operators a guest runs (one unit
/// each, and one per byte that `memory.fill`, `memory.copy` and `memory.init` touch, as
/// wasmtime charges them), so
/// that fuel bounds a call's work whatever it asks of the host. It applies to entries of
/// format V2 (see `crate::entry::Format`), to queries and to JSON codecs; entries of format V1
/// replay as they first applied, with host calls free. Every replica charges the same units
/// at the same points, whatever its CPU or backend; a call that cannot pay traps with
/// `ApplyError::OutOfFuel`. docs/abi.md prices each import with these constants.
pub mod fuel {
    /// Every host call, whatever it does (a lookup in LMDB's B-tree, crossing the boundary).
    pub const HOST_CALL: u64 = 1_000;
    /// Per byte the host reads for the guest or copies into its memory: a `kv_get` value
    /// (once when found, once more when `take_result` copies it out), a `kv_scan` page.
    pub const READ_BYTE: u64 = 1;
    /// Per byte of key and value a `kv_put` stores, and of key a `kv_delete` names: written
    /// pages stay in memory until the entry commits, then go to disk on every replica.
    pub const WRITE_BYTE: u64 = 4;
    /// Per pair a `kv_scan` page holds.
    pub const SCAN_ITEM: u64 = 500;
    /// Per byte of a call's output (`set_output`).
    pub const OUTPUT_BYTE: u64 = 1;
    /// Per byte of a `log_message`.
    pub const LOG_BYTE: u64 = 16;
}

/// Status codes returned by the guest's entry points (`wraft_apply`, `wraft_query`,
/// `wraft_init`, `wraft_migrate` and the JSON codecs).
pub mod status {
    /// Success: the output set with `set_output` (empty if none) is the result.
    pub const OK: i32 = 0;
    /// The FSM refused the input; the output holds a UTF-8 message. Deterministic, recorded
    /// as the entry's response, and the call's writes are discarded.
    pub const REJECTED: i32 = 1;
    /// The input could not be decoded; the output holds a UTF-8 message.
    pub const BAD_INPUT: i32 = 2;
}

/// Log levels accepted by the `log_message` import.
pub mod log_level {
    /// An error the FSM author wants operators to see.
    pub const ERROR: i32 = 0;
    /// A warning.
    pub const WARN: i32 = 1;
    /// Information.
    pub const INFO: i32 = 2;
    /// Debug output.
    pub const DEBUG: i32 = 3;
}

/// A wasm value type used in the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValType {
    /// `i32`
    I32,
    /// `i64`
    I64,
}

/// Maps a Rust type in an ABI signature to its [`ValType`].
pub trait AbiType {
    /// The wasm type.
    const VAL_TYPE: ValType;
}
impl AbiType for i32 {
    const VAL_TYPE: ValType = ValType::I32;
}
impl AbiType for i64 {
    const VAL_TYPE: ValType = ValType::I64;
}

/// The signature of one import or export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuncSig {
    /// The function's name.
    pub name: &'static str,
    /// Parameter types.
    pub params: &'static [ValType],
    /// Result types (zero or one).
    pub results: &'static [ValType],
}

/// Calls `$callback! { ... }` with every host import as a Rust function signature.
///
/// The host derives its validation table ([`IMPORTS`]) and checks its linker against it;
/// the SDK derives its `extern "C"` block. Pointers and lengths are `i32` offsets into the
/// guest's exported memory.
#[macro_export]
macro_rules! for_each_import {
    ($callback:ident) => {
        $callback! {
            /// Looks up `key`. Returns the value's length and puts the value in the result
            /// buffer, or returns -1 if the key is absent.
            fn kv_get(key_ptr: i32, key_len: i32) -> i32;
            /// Stores `value` under `key`. Traps during a query (read-only) and when the key or
            /// value exceeds `MAX_KEY_LEN` / `MAX_VALUE_LEN`.
            fn kv_put(key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32);
            /// Removes `key`. Returns 1 if a value was removed, 0 if it was absent.
            fn kv_delete(key_ptr: i32, key_len: i32) -> i32;
            /// Reads pairs with `start <= key < end` in key order (`end_len == 0`: to the end
            /// of the keyspace), at most `limit` (capped at `MAX_SCAN_ITEMS`) and stopping after
            /// `MAX_SCAN_BYTES`. Puts a postcard `Vec<(Vec<u8>, Vec<u8>)>` in the result buffer
            /// and returns its length.
            fn kv_scan(start_ptr: i32, start_len: i32, end_ptr: i32, end_len: i32, limit: i32) -> i32;
            /// Copies the result buffer to `dst_ptr` and empties it.
            fn take_result(dst_ptr: i32);
            /// Sets the call's output bytes (the last call wins). Traps when `len` exceeds the
            /// FSM's output limit.
            fn set_output(ptr: i32, len: i32);
            /// Writes the `CONTEXT_LEN`-byte entry context to `dst_ptr`.
            fn entry_context(dst_ptr: i32);
            /// The next value of the entry's deterministic PRNG.
            fn random_u64() -> i64;
            /// Writes a UTF-8 message to the node's log at `level` (see `log_level`).
            fn log_message(level: i32, ptr: i32, len: i32);
            /// Aborts the call with a UTF-8 message (the SDK's panic handler); the call's
            /// result is `ApplyError::Panicked(message)`.
            fn abort_call(ptr: i32, len: i32);
        }
    };
}

macro_rules! import_table {
    ($( $(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?; )*) => {
        /// Every host import, in the `wraft` import module.
        pub const IMPORTS: &[FuncSig] = &[$(FuncSig {
            name: stringify!($name),
            params: &[$(<$ty as AbiType>::VAL_TYPE),*],
            results: &[$(<$ret as AbiType>::VAL_TYPE)?],
        }),*];
    };
}
for_each_import!(import_table);

/// Export names.
pub mod export {
    /// The guest's linear memory.
    pub const MEMORY: &str = "memory";
    /// `() -> i32`: the ABI version the module was built for.
    pub const ABI_VERSION: &str = "wraft_abi_version";
    /// `() -> i32`: the FSM's own schema version, passed to a successor's `migrate`.
    pub const FSM_VERSION: &str = "wraft_fsm_version";
    /// `(len: i32) -> i32`: a pointer to `len` writable bytes for the host to put input in.
    pub const ALLOC: &str = "wraft_alloc";
    /// `(ptr: i32, len: i32) -> i32`: apply one postcard-encoded command; returns a status.
    pub const APPLY: &str = "wraft_apply";
    /// `(ptr: i32, len: i32) -> i32`: answer one postcard-encoded query; returns a status.
    pub const QUERY: &str = "wraft_query";
    /// `() -> i32`, optional: runs once, in the `CreateFsm` entry's transaction.
    pub const INIT: &str = "wraft_init";
    /// `(from_version: i32) -> i32`, optional: runs in the `UpgradeFsm` entry's transaction.
    pub const MIGRATE: &str = "wraft_migrate";
    /// `(ptr, len) -> i32`, optional: JSON command to postcard command.
    pub const COMMAND_FROM_JSON: &str = "wraft_command_from_json";
    /// `(ptr, len) -> i32`, optional: postcard apply output to JSON.
    pub const OUTPUT_TO_JSON: &str = "wraft_output_to_json";
    /// `(ptr, len) -> i32`, optional: JSON query to postcard query.
    pub const QUERY_FROM_JSON: &str = "wraft_query_from_json";
    /// `(ptr, len) -> i32`, optional: postcard query output to JSON.
    pub const QUERY_OUTPUT_TO_JSON: &str = "wraft_query_output_to_json";
}

const PTR_LEN: &[ValType] = &[ValType::I32, ValType::I32];
const STATUS: &[ValType] = &[ValType::I32];

const fn sig(
    name: &'static str,
    params: &'static [ValType],
    results: &'static [ValType],
) -> FuncSig {
    FuncSig {
        name,
        params,
        results,
    }
}

/// Function exports every module must have (besides `memory`).
pub const REQUIRED_EXPORTS: &[FuncSig] = &[
    sig(export::ABI_VERSION, &[], STATUS),
    sig(export::ALLOC, &[ValType::I32], &[ValType::I32]),
    sig(export::APPLY, PTR_LEN, STATUS),
    sig(export::QUERY, PTR_LEN, STATUS),
];

/// Function exports a module may have; if present they must have these signatures.
pub const OPTIONAL_EXPORTS: &[FuncSig] = &[
    sig(export::FSM_VERSION, &[], STATUS),
    sig(export::INIT, &[], STATUS),
    sig(export::MIGRATE, &[ValType::I32], STATUS),
    sig(export::COMMAND_FROM_JSON, PTR_LEN, STATUS),
    sig(export::OUTPUT_TO_JSON, PTR_LEN, STATUS),
    sig(export::QUERY_FROM_JSON, PTR_LEN, STATUS),
    sig(export::QUERY_OUTPUT_TO_JSON, PTR_LEN, STATUS),
];

/// What the `entry_context` import tells a guest about the call it is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryContext {
    /// Log index of the entry being applied (for a query: the last applied index).
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Milliseconds since the Unix epoch: `max(leader's timestamp, last applied timestamp)`,
    /// so time never runs backwards for an FSM.
    pub timestamp_ms: u64,
    /// Position of the command within its entry: in a `Batch`, or in a group of client writes
    /// (0 for a lone command).
    pub position: u32,
    /// True during a read-only query.
    pub is_query: bool,
}

impl EntryContext {
    /// Little-endian layout: index u64, term u64, timestamp_ms u64, position u32, flags u32
    /// (bit 0: query).
    pub fn encode(&self) -> [u8; CONTEXT_LEN] {
        let mut out = [0u8; CONTEXT_LEN];
        out[0..8].copy_from_slice(&self.index.to_le_bytes());
        out[8..16].copy_from_slice(&self.term.to_le_bytes());
        out[16..24].copy_from_slice(&self.timestamp_ms.to_le_bytes());
        out[24..28].copy_from_slice(&self.position.to_le_bytes());
        out[28..32].copy_from_slice(&u32::from(self.is_query).to_le_bytes());
        out
    }

    /// Inverse of [`encode`](Self::encode).
    pub fn decode(b: &[u8; CONTEXT_LEN]) -> Self {
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |i: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[i..i + 4]);
            u32::from_le_bytes(a)
        };
        Self {
            index: u64_at(0),
            term: u64_at(8),
            timestamp_ms: u64_at(16),
            position: u32_at(24),
            is_query: u32_at(28) & 1 == 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_table_has_every_import_once() {
        assert_eq!(IMPORTS.len(), 10);
        for (i, a) in IMPORTS.iter().enumerate() {
            assert!(
                IMPORTS[i + 1..].iter().all(|b| b.name != a.name),
                "{} twice",
                a.name
            );
        }
        let scan = IMPORTS
            .iter()
            .find(|s| s.name == "kv_scan")
            .expect("kv_scan");
        assert_eq!(scan.params.len(), 5);
        assert_eq!(scan.results, &[ValType::I32]);
        let random = IMPORTS
            .iter()
            .find(|s| s.name == "random_u64")
            .expect("random_u64");
        assert_eq!(random.results, &[ValType::I64]);
    }

    #[test]
    fn context_round_trips() {
        let c = EntryContext {
            index: u64::MAX - 3,
            term: 9,
            timestamp_ms: 1_700_000_000_123,
            position: 40,
            is_query: true,
        };
        assert_eq!(EntryContext::decode(&c.encode()), c);
    }
}
