//! Seeded Gaussian noise, documented so that anyone can reproduce our latents.
//!
//! Image `i` of a request with seed `s` draws from ChaCha8 seeded with the 64-bit value `s + i` (wrapping), through
//! `rand_chacha::ChaCha8Rng::seed_from_u64`. Each normal sample takes two uniform `u64` draws, maps them to
//! (0, 1] and [0, 1) at 53-bit precision, and applies Box–Muller, keeping the cosine branch: `sqrt(-2 ln u1) ·
//! cos(2π u2)`, computed in f64 and rounded to f32. The initial latents come first, in NCHW order; noise for
//! stochastic schedulers (Euler ancestral, DDIM with eta > 0, LCM) continues the same stream, step after step,
//! at each step that uses noise (every step but LCM's last).
//! The same seed therefore gives the same latents on every machine; the pixels then depend only on the
//! execution provider's arithmetic.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub struct NoiseSource {
    rng: ChaCha8Rng,
}

impl NoiseSource {
    pub fn new(seed: u64) -> Self {
        NoiseSource {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// One standard normal sample.
    pub fn next_normal(&mut self) -> f32 {
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        // (0, 1]: keeps ln() finite.
        let u1 = ((self.rng.next_u64() >> 11) + 1) as f64 * SCALE;
        let u2 = (self.rng.next_u64() >> 11) as f64 * SCALE;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// Moves past `count` normal samples without computing them: each takes two u64 draws, four ChaCha words.
    pub fn skip_normals(&mut self, count: usize) {
        let position = self.rng.get_word_pos() + 4 * count as u128;
        self.rng.set_word_pos(position);
    }

    pub fn fill_normal(&mut self, out: &mut [f32]) {
        for value in out {
            *value = self.next_normal();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_noise_and_different_seeds_differ() {
        let draw = |seed| {
            let mut values = vec![0.0; 64];
            NoiseSource::new(seed).fill_normal(&mut values);
            values
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn skipping_equals_drawing() {
        let mut drawn = NoiseSource::new(3);
        let mut skipped = NoiseSource::new(3);
        (0..1000).for_each(|_| {
            drawn.next_normal();
        });
        skipped.skip_normals(1000);
        assert_eq!(drawn.next_normal(), skipped.next_normal());
    }

    #[test]
    fn samples_look_standard_normal() {
        let mut source = NoiseSource::new(42);
        let samples: Vec<f64> = (0..200_000).map(|_| source.next_normal() as f64).collect();
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / samples.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        assert!(samples.iter().all(|x| x.is_finite()));
    }
}
