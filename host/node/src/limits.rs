//! What one node admits from its callers before anything enters the log or runs: entry and
//! batch sizes, concurrent requests per role, guest calls at once, and the endpoint's bounds.
//! These are settings of one node (flags of `wraft serve`); none decides an entry's outcome,
//! which every replica must reach alike (those bounds are the FSM's limits, in the log).

use wraft_transport_quic::ServerLimits;

/// Largest log entry admitted by default, once its commands are encoded: room for the L2
/// blocks op-conductor replicates (a few MiB, tens of MiB at the extreme).
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 32 << 20;
/// Most commands in one `Batch` by default.
pub const DEFAULT_MAX_BATCH_COMMANDS: usize = 1024;
/// Requests of one role served at once by default; more are answered `Busy`.
pub const DEFAULT_REQUESTS_PER_ROLE: usize = 1024;

/// Queries (and their JSON codecs) running at once by default: one per CPU. Each can burn
/// its whole query fuel, and those threads compete for the cores with the workers that carry
/// raft's heartbeats: a flood of expensive queries with 16 of them at once cut the writes
/// committed beside it from ~130 to ~20 (`bounds::a_flood_of_expensive_queries...`).
pub fn default_guest_threads() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// Writes' JSON codec calls running at once by default. On 64-bit hosts eight per CPU (at
/// most [`crate::runtime::MAX_GUEST_THREADS`]): a codec call spends most of its time waiting
/// for threads to wake, not running, so with one per CPU the HTTP JSON API's writes queued
/// for their codecs with a quarter of the CPU idle (256 clients: 3 768 writes/s with 2,
/// 8 952 with 8, 9 527 with 16; docs/benchmarks.md). Writers are trusted more than readers,
/// and a codec's fuel is bounded by its input. On 32-bit boards one per CPU.
pub fn default_codec_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, usize::from);
    if cfg!(target_pointer_width = "64") {
        (8 * cpus).min(crate::runtime::MAX_GUEST_THREADS)
    } else {
        cpus
    }
}

/// A node's admission bounds.
#[derive(Debug, Clone)]
pub struct NodeLimits {
    /// Largest log entry a write may make, in bytes once encoded (`--max-entry-bytes`).
    pub max_entry_bytes: usize,
    /// Most commands in one `Batch` (`--max-batch-commands`).
    pub max_batch_commands: usize,
    /// Requests of each role (reader, writer, admin, forwarded) in progress at once
    /// (`--max-requests-per-role`); more are answered `Busy` at once.
    pub requests_per_role: usize,
    /// Queries and their JSON codecs running at once (the read lane of the guest pool), on
    /// threads of their own so they never hold the workers that carry raft's heartbeats
    /// (`--guest-threads`; default [`default_guest_threads`], at most
    /// [`crate::runtime::MAX_GUEST_THREADS`]).
    pub guest_threads: usize,
    /// Writes' JSON codec calls running at once (the write lane), likewise
    /// (`--codec-threads`; default [`default_codec_threads`], at most
    /// [`crate::runtime::MAX_GUEST_THREADS`]).
    pub codec_threads: usize,
    /// The endpoint's bounds (bytes per message, in flight, streams, connections).
    pub transport: ServerLimits,
}

impl NodeLimits {
    /// Defaults for a node that admits entries of up to `max_entry_bytes`.
    pub fn new(max_entry_bytes: usize) -> Self {
        Self {
            max_entry_bytes,
            max_batch_commands: DEFAULT_MAX_BATCH_COMMANDS,
            requests_per_role: DEFAULT_REQUESTS_PER_ROLE,
            guest_threads: default_guest_threads(),
            codec_threads: default_codec_threads(),
            transport: ServerLimits::new(max_entry_bytes),
        }
    }
}

impl Default for NodeLimits {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRY_BYTES)
    }
}
