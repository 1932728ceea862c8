//! Fault injection for wraft clusters of real `wraft serve` processes.
//!
//! - [`proxy`]: a UDP proxy in front of each node's port that drops, delays, duplicates or
//!   blocks (partitions, one-way or both ways) the raft traffic between nodes.
//! - [`process`]: the node processes: start, kill -9, restart, pause (SIGSTOP), resume.
//! - [`schedule`]: a fault schedule drawn from a seed.
//! - [`history`] and [`checker`]: what clients invoked and saw, and a linearizability
//!   checker (Wing & Gong with Lowe's memoization, as Porcupine does) for a key-value store
//!   of registers; [`counter`], an exactly-once checker for counters.
//! - [`unsynced`]: lost unsynced writes: a preload library journals what each write to a
//!   node's data directory overwrites until the file is synced; after a kill, undoing the
//!   journals leaves the directory as a power loss could.

pub mod checker;
pub mod counter;
pub mod history;
pub mod process;
pub mod proxy;
pub mod schedule;
pub mod unsynced;

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::SplitMix64;

/// A seedable generator (rand_xoshiro's SplitMix64): a schedule must replay from its seed.
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::seed_from_u64(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `0..n` (`n > 0`), without modulo bias: draws falling in the incomplete last
    /// span of `n` are drawn again. Hand-made rather than rand's `gen_range` (which maps a draw
    /// by multiplication) so that every published seed's schedule (docs/testing.md) stays
    /// the same: a redraw happens with probability below `n / 2^64`, never for the suite's
    /// small `n`s in practice.
    pub fn below(&mut self, n: u64) -> u64 {
        let n = n.max(1);
        // The largest multiple of n that fits in u64's range, as an exclusive bound.
        let zone = u64::MAX - (u64::MAX % n + 1) % n;
        loop {
            let x = self.next_u64();
            if x <= zone {
                return x % n;
            }
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same draws as the SplitMix64-and-modulo generator the published seeds ran on.
    #[test]
    fn small_ranges_draw_what_published_seeds_drew() {
        let mut state = 3009u64;
        let mut old = |n: u64| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % n
        };
        let mut rng = Rng::new(3009);
        for n in (1..2_000).map(|i| i * 7 % 97 + 1) {
            assert_eq!(rng.below(n), old(n));
        }
    }

    /// With n = 3 * 2^62, a modulo maps the top quarter of u64 onto the first third of the
    /// range, drawing it half the time instead of a third.
    #[test]
    fn large_ranges_are_drawn_without_bias() {
        let n = 3u64 << 62;
        let mut rng = Rng::new(1);
        let draws = 30_000;
        let low = (0..draws).filter(|_| rng.below(n) < 1 << 62).count();
        let share = low as f64 / draws as f64;
        assert!(
            (share - 1.0 / 3.0).abs() < 0.02,
            "first third drawn {share}"
        );
    }
}
