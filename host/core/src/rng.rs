//! The entry context's deterministic PRNG.

/// SplitMix64, seeded from the log index and the command's position in its entry.
///
/// Every replica derives the same sequence for the same entry, so FSMs may draw random
/// numbers (ids, jitter, sampling) without breaking determinism. Not for cryptography.
#[derive(Debug, Clone)]
pub struct EntryRng {
    state: u64,
}

impl EntryRng {
    /// The PRNG for command `position` (0 for a plain `Apply`) of the entry at `index`.
    pub fn new(index: u64, position: u32) -> Self {
        let mut rng = Self {
            state: index ^ ((position as u64) << 40) ^ 0x5752_4146_545f_5247,
        };
        // Discard one output so nearby seeds do not start with related values.
        rng.next_u64();
        rng
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
