//! The core's randomness.
//!
//! The core never asks the operating system for entropy. Each state machine that needs randomness
//! (transaction ids, peer ids, tie-breaks, shuffles) owns a [`CoreRng`] seeded by its caller: a driver seeds
//! from the OS once at start-up, a test or a simulation from a fixed number, so that the same seed gives the
//! same run.

pub use rand::{Rng, RngExt, SeedableRng};

/// The seeded, fast, non-cryptographic generator used throughout the core.
pub type CoreRng = rand::rngs::SmallRng;

/// A generator seeded from `seed`; equal seeds give equal sequences.
pub fn seeded(seed: u64) -> CoreRng {
    CoreRng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (seeded(7), seeded(7));
        let xs: Vec<u32> = (0..8).map(|_| a.random()).collect();
        let ys: Vec<u32> = (0..8).map(|_| b.random()).collect();
        assert_eq!(xs, ys);
        assert_ne!(
            xs,
            (0..8)
                .map(|_| seeded(8).random::<u32>())
                .collect::<Vec<_>>()
        );
    }
}
