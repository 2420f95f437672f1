//! The one place the SDE samplers reach the Brownian-tree noise, so the tree implementation
//! can change without touching the samplers.

use super::brownian::BrownianTreeNoise;
use super::SamplingError;

/// The Brownian tree of one image (k-diffusion `BrownianTreeNoiseSampler` with that image's
/// seed, as A1111 builds one per image).
pub(crate) struct Tree(BrownianTreeNoise);

impl Tree {
    /// A tree over [`sigma_min`, `sigma_max`] of `numel` independent Brownian motions.
    pub(crate) fn new(
        seed: u64,
        sigma_min: f64,
        sigma_max: f64,
        numel: usize,
    ) -> Result<Self, SamplingError> {
        if !(sigma_min.is_finite() && sigma_max.is_finite() && sigma_min < sigma_max) {
            return Err(SamplingError::InvalidConfig(format!(
                "Brownian tree needs 0 < σ_min < σ_max, got {sigma_min} and {sigma_max}"
            )));
        }
        Ok(Self(BrownianTreeNoise::new(
            seed, sigma_min, sigma_max, numel,
        )))
    }

    /// Normalised Brownian increment between σ and σ_next.
    pub(crate) fn sample(&mut self, sigma: f64, sigma_next: f64) -> Vec<f32> {
        self.0.sample(sigma, sigma_next)
    }
}
