//! Fault injection for wraft clusters of real `wraft serve` processes.
//!
//! - [`proxy`]: a UDP proxy in front of each node's port that drops, delays, duplicates or
//!   blocks (partitions, one-way or both ways) the raft traffic between nodes.
//! - [`process`]: the node processes: start, kill -9, restart, pause (SIGSTOP), resume.
//! - [`schedule`]: a fault schedule drawn from a seed.
//! - [`history`] and [`checker`]: what clients invoked and saw, and a linearizability
//!   checker (Wing & Gong with Lowe's memoization, as Porcupine does) for a key-value store
//!   of registers.
//! - [`unsynced`]: lost unsynced writes: a preload library journals what each write to a
//!   node's data directory overwrites until the file is synced; after a kill, undoing the
//!   journals leaves the directory as a power loss could.

pub mod checker;
pub mod history;
pub mod process;
pub mod proxy;
pub mod schedule;
pub mod unsynced;

/// SplitMix64: a small, seedable generator (schedules must replay from a seed).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}
