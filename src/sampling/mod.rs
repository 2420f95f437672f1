//! Noise, noise schedules and samplers: k-diffusion's σ-space samplers that also reproduce
//! diffusers' schedulers step for step on diffusers' own spacings.
//!
//! * [`rng`]: torch's CPU `randn` bit for bit, one generator per image.
//! * [`philox`]: A1111's "NV" Philox generator (imitating torch's CUDA `randn`).
//! * [`brownian`]: torchsde's seeded Brownian tree, the noise of the SDE samplers.
//! * [`variation`]: A1111's variation-seed (subseed) slerp of two noises.
//! * [`schedule`]: betas, ᾱ, σ and every σ schedule (diffusers spacings, Karras,
//!   exponential, beta, ComfyUI's normal/sgm_uniform/simple/ddim_uniform).
//! * [`sampler`]: the samplers, driven by a model callback.
//! * [`guidance`]: classifier-free guidance and diffusers' `guidance_rescale`.
//! * [`names`]: the names users give samplers and schedules (A1111, ComfyUI, k-diffusion,
//!   diffusers), and each sampler's default schedule; one reader for the job API and `bench`.
//!
//! docs/sampling.md describes the schedules, samplers and noise sources for readers of the
//! whole picture.
//!
//! Choices where the reference implementations disagree (each documented where it is made):
//! * One σ table for every schedule: diffusers' float32 betas (ComfyUI computes them in
//!   float64; σs differ by ~1e-7 relative). Under zero terminal SNR σ_max is diffusers' 4096
//!   (ᾱ_999 = 2⁻²⁴) for every schedule, not ComfyUI's 4518.8.
//! * `karras`/`exponential`/`beta` span the model's full σ range for every sampler, as
//!   k-diffusion/A1111 (diffusers' Euler-family classes do so only with a `linspace` config).
//! * `beta` is A1111's/diffusers' (linear in σ), not ComfyUI's (spaced training indices).
//! * DPM2, DPM2 a and UniPC drop the penultimate σ only under ComfyUI's own schedules.
//! * DPM++ 3M SDE is k-diffusion's; diffusers' order-3 `sde-dpmsolver++` differs.
//! * Intermediate σs (DPM2, DPM++ SDE midpoints) get fractional timesteps (diffusers, A1111),
//!   also under ComfyUI schedules, where ComfyUI would round to the nearest index.
//! * LCM's boundary condition is diffusers' (`c_skip` on the VP-form sample).
//! * DDIM under zero terminal SNR starts from σ = 4096 where diffusers' DDIM uses ᾱ_999 = 0
//!   (a difference of 2⁻¹² in the first step's x0 weight).

pub mod brownian;
mod brownian_adaptor;
pub mod guidance;
pub mod names;
pub mod philox;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod variation;

pub use names::{default_schedule, SamplerLabel};
pub use rng::{randn_batch, ImageRng, NoiseKind, TorchRng};
pub use sampler::{ModelSampling, Sampler, SamplerKind, SamplerNoise, StepInfo};
pub use schedule::{PredictionType, ScheduleConfig, SigmaSchedule, TimestepSpacing};

/// Where SDE samplers (DPM++ SDE, DPM++ 2M/3M SDE) get their noise. Serialised as its
/// request name (`brownian`, `gaussian`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SdeNoise {
    /// A Brownian tree seeded from the image seed (k-diffusion, ComfyUI, A1111, and diffusers'
    /// `DPMSolverSDEScheduler`).
    #[default]
    Brownian,
    /// Independent draws from the image generator per step (diffusers'
    /// `DPMSolverMultistepScheduler` with `sde-dpmsolver++`).
    Gaussian,
}

impl SdeNoise {
    /// The names requests use (`sde_noise`), compared case-insensitively.
    pub const LABELS: &'static [(&'static str, SdeNoise)] =
        &[("brownian", Self::Brownian), ("gaussian", Self::Gaussian)];
}

/// Errors of the sampling module. Names given by users (sampler, schedule, spacing) come back
/// with the list of allowed values.
#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    /// A name that is not one of the supported values.
    #[error("unknown {field} `{value}`; allowed: {allowed}")]
    UnknownName {
        field: &'static str,
        value: String,
        allowed: &'static str,
    },
    /// A combination the reference implementation does not offer either.
    #[error("unsupported combination: {0}")]
    Unsupported(String),
    /// A scheduler config value out of range.
    #[error("invalid scheduler config: {0}")]
    InvalidConfig(String),
    /// A step count outside 1..=num_train_timesteps.
    #[error("steps must be between 1 and {max}, got {steps}")]
    InvalidSteps { steps: usize, max: usize },
    /// `step` called with an index past the schedule, or out of order for a multistep sampler.
    #[error("sampler step {got} out of order (expected {expected}, schedule has {steps} steps)")]
    StepOutOfOrder {
        got: usize,
        expected: usize,
        steps: usize,
    },
    /// The number of generators does not match the batch of latents.
    #[error("{got} random generators for a batch of {batch} latents (need one per image)")]
    GeneratorCount { got: usize, batch: usize },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
