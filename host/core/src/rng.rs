//! The entry context's deterministic PRNG.

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::SplitMix64;

/// SplitMix64 (rand_xoshiro's), seeded from the log index and the command's position in its
/// entry.
///
/// Every replica derives the same sequence for the same entry, so FSMs may draw random
/// numbers (ids, jitter, sampling) without breaking determinism. Not for cryptography.
#[derive(Debug, Clone)]
pub struct EntryRng(SplitMix64);

impl EntryRng {
    /// The PRNG for command `position` (0 for a plain `Apply`) of the entry at `index`.
    pub fn new(index: u64, position: u32) -> Self {
        let seed = index ^ ((position as u64) << 40) ^ 0x5752_4146_545f_5247;
        let mut rng = Self(SplitMix64::seed_from_u64(seed));
        // Discard one output so nearby seeds do not start with related values.
        rng.next_u64();
        rng
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sequence is part of the replicated state (FSMs store what they draw): these values
    /// must never change.
    #[test]
    fn the_sequence_is_fixed() {
        let mut r = EntryRng::new(7, 0);
        let got: [u64; 3] = core::array::from_fn(|_| r.next_u64());
        let mut r = EntryRng::new(1 << 40, 3);
        let later: [u64; 3] = core::array::from_fn(|_| r.next_u64());
        assert_eq!(
            got,
            [0x725beb9cee81992c, 0x78f082259ba46ef4, 0x2a1497edb8dc1b6f]
        );
        assert_eq!(
            later,
            [0xf87a0cd24ab1dc63, 0xdad003a85ac14fcf, 0x466c48cac81db3e2]
        );
    }

    #[test]
    fn same_seed_same_sequence_different_seed_different_sequence() {
        let a: [u64; 4] = core::array::from_fn({
            let mut r = EntryRng::new(7, 0);
            move |_| r.next_u64()
        });
        let b: [u64; 4] = core::array::from_fn({
            let mut r = EntryRng::new(7, 0);
            move |_| r.next_u64()
        });
        assert_eq!(a, b);
        assert_ne!(EntryRng::new(7, 1).next_u64(), a[0]);
        assert_ne!(EntryRng::new(8, 0).next_u64(), a[0]);
    }
}
