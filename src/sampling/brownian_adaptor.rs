//! The one place the SDE samplers reach the Brownian-tree noise, so the tree implementation
//! can change without touching the samplers.

use super::SamplingError;

/// The Brownian tree of one image (k-diffusion `BrownianTreeNoiseSampler` with one seed).
pub(crate) struct Tree {
    _private: (),
}

impl Tree {
    /// A tree over [`sigma_min`, `sigma_max`] of `numel` independent Brownian motions.
    pub(crate) fn new(
        _seed: u64,
        _sigma_min: f64,
        _sigma_max: f64,
        _numel: usize,
    ) -> Result<Self, SamplingError> {
        Err(SamplingError::Unsupported(
            "Brownian-tree SDE noise is not built into this worker yet; set sde_noise to \
             `gaussian`"
                .into(),
        ))
    }

    /// Normalised Brownian increment between σ and σ_next.
    pub(crate) fn sample(&mut self, _sigma: f64, _sigma_next: f64) -> Vec<f32> {
        Vec::new()
    }
}
