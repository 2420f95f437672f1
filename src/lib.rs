//! sdxl-worker: Stable Diffusion XL on RunPod serverless GPUs with Civitai checkpoints and
//! LoRAs. `run_blocking` is the whole program: fetch the models named in `models.toml`, load
//! them on the engine thread, and serve jobs through the RunPod runtime.

pub mod config;
pub mod fetch;
pub mod handler;
pub mod image;
pub mod lora;
pub mod model;
pub mod pipeline;
pub mod prompt;
pub mod sampling;
pub mod storage;
pub mod weights;

// The runtime is the `runpod-worker` crate; these keep the `crate::runpod`/`crate::telemetry` paths.
pub use runpod_worker as runpod;
pub use runpod_worker::telemetry;

use std::process::ExitCode;

use anyhow::Context;

use config::{Command, Config};

/// Builds the tokio runtime and runs the worker (or a subcommand) until it is told to stop.
pub fn run_blocking(config: Config) -> anyhow::Result<ExitCode> {
    if let Some(Command::Bench(args)) = &config.command {
        pipeline::bench::run(args, &config.engine)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(config))
}

/// Cold start and job serving. Model download and load run inside the runtime's `init`
/// future, so the local endpoint API already answers `/health` (initializing) meanwhile.
async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let manifest = fetch::Manifest::load(&config.fetch.models)
        .with_context(|| format!("reading {}", config.fetch.models.display()))?;
    if config.fetch.prefetch_only {
        let models = fetch::prefetch(&config.fetch, &manifest).await?;
        tracing::info!(files = models.models.len(), "prefetch done");
        return Ok(ExitCode::SUCCESS);
    }
    // Bad BUCKET_* settings stop the worker at start, not on the first job.
    let bucket = config
        .storage
        .bucket_config()
        .context("object storage settings (BUCKET_*)")?
        .map(storage::Bucket::new)
        .transpose()
        .context("object storage client")?
        .map(std::sync::Arc::new);
    let shutdown = runpod::shutdown_token();
    let fetch_args = config.fetch.clone();
    let engine_args = config.engine.clone();
    let image_options = image::input::ImageFetchOptions::from(&config.images);
    let dialects = config.dialects.clone();
    let init = async move {
        let models = fetch::prefetch(&fetch_args, &manifest).await?;
        let handler = handler::build(models, &engine_args, bucket, image_options, dialects).await?;
        Ok::<_, anyhow::Error>(handler)
    };
    runpod::run(&config.runtime, init, shutdown).await
}
