//! The SDXL pipeline: prompt encoding, sampling loop, VAE decode, and the engine thread that
//! owns the device.

use clap::Args;

/// Flags of the inference engine.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Compute device: `auto` (the GPU when built with CUDA and one is present, else CPU),
    /// `cpu`, or `cuda:N`.
    #[arg(long, env = "DEVICE", default_value = "auto")]
    pub device: String,
}
