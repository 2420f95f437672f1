//! The SDXL handler on the fixture models, as the handler, dialect and infotext tests build it:
//! the fixture `models.toml` fetched into a temporary cache, CPU f32 (the configuration the
//! diffusers references were made in), the minimum side lowered to the fixture's 64 px.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sdxl_worker::fetch::{self, FetchArgs, ResolvedModels};
use sdxl_worker::handler::request::Defaults;
use sdxl_worker::handler::SdxlHandler;
use sdxl_worker::pipeline::{DTypeArg, EngineArgs};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// CPU, f32.
pub fn engine_args() -> EngineArgs {
    EngineArgs {
        device: "cpu".into(),
        dtype: DTypeArg::F32,
        vae_dtype: DTypeArg::F32,
        lora_keep_originals: None,
    }
}

/// The fixture `models.toml`, fetched into `cache`.
pub async fn fixture_models(cache: &Path) -> anyhow::Result<ResolvedModels> {
    let fetch_args = FetchArgs::new(fixtures().join("models.toml"), cache);
    let manifest = fetch::Manifest::load(&fetch_args.models)?;
    Ok(fetch::prefetch(&fetch_args, &manifest).await?)
}

/// The handler on `models`, with the minimum side lowered to 64 px.
pub async fn handler_from(models: ResolvedModels) -> anyhow::Result<SdxlHandler> {
    let handler = SdxlHandler::load(models, &engine_args(), None).await?;
    Ok(handler.with_defaults(Defaults {
        min_side: 64,
        ..Defaults::default()
    }))
}

/// The handler on the fixture models (`cache` holds what `models.toml` downloads).
pub async fn fixture_handler(cache: &Path) -> anyhow::Result<SdxlHandler> {
    handler_from(fixture_models(cache).await?).await
}

/// Runs `f` on a two-thread runtime (the engine thread reports back through it).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}
