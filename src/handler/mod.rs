//! The image handler: a job's `input` → validated request → engine → encoded images with
//! metadata → the result body RunPod clients expect (the same top-level keys as RunPod's
//! official SDXL worker: `images`, `image_url`, `seed`, plus `seeds`, `parameters`, `info`).
//!
//! A job runs through five stages, each a public method of [`SdxlHandler`] (stages.rs), so a
//! different handler can reuse four of them and replace one:
//!
//! 1. [`parse`](SdxlHandler::parse): the job's `input` → [`ParsedJob`] (schema, model names,
//!    the seed);
//! 2. [`prepare`](SdxlHandler::prepare): → the engine's `GenerateRequest` (fetches an img2img
//!    input image);
//! 3. [`generate`](SdxlHandler::generate): runs it on the engine thread, with progress and
//!    cancellation;
//! 4. [`encode`](SdxlHandler::encode): → image files with their A1111 infotext;
//! 5. [`deliver`](SdxlHandler::deliver): uploads them or inlines them, and builds the result.
//!
//! - `dialects/`: other clients' request shapes (worker-sdxl, A1111 and its RunPod envelope,
//!   Civitai) translated into the `input` schema before it is validated.
//! - `request.rs`: the `input` schema.
//! - `responses.rs`: A1111's response shape, for jobs that ask for it.
//! - `metadata.rs`: the infotext and Civitai resources of an image.
//! - `errors.rs`: the job API's `error_type` of every engine error (the engine names what went
//!   wrong; the job API's words for it live here).

pub mod dialects;
mod errors;
mod metadata;
pub mod request;
mod responses;
mod stages;

pub use dialects::DialectArgs;
pub use stages::{EncodedImages, ParsedJob, Route};

use std::sync::Arc;
use std::time::Instant;

use crate::fetch::{ResolvedModel, ResolvedModels};
use crate::image::input::ImageFetchOptions;
use crate::lora::LoraEntry;
use crate::pipeline::{Engine, EngineArgs, EngineHandle, PipelineConfig, PipelineError};
use crate::runpod::{async_trait, Handler, HandlerOutput, Job, JobContext, JobError};
use request::Defaults;

/// Largest result body posted without object storage: RunPod refuses job results of about
/// 20 MB, so a bigger one would be lost rather than delivered.
pub const MAX_INLINE_RESULT_BYTES: usize = 20 * 1024 * 1024;

/// Version string written into image metadata (`Version:`).
pub const VERSION: &str = concat!("sdxl-worker ", env!("CARGO_PKG_VERSION"));

/// Failures while building the handler at cold start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("models.toml lists no [[checkpoint]]; add one (see the README)")]
    NoCheckpoint,
    #[error("loading checkpoint `{name}` ({path}): {source}")]
    Pipeline {
        name: String,
        path: String,
        #[source]
        source: PipelineError,
    },
    #[error("the model loading thread failed: {0}")]
    Join(String),
}

/// The SDXL handler: owns the engine thread and what it needs to describe its images.
pub struct SdxlHandler {
    engine: EngineHandle,
    checkpoint: ResolvedModel,
    models: ResolvedModels,
    defaults: Defaults,
    /// Object storage for result images; `None` = inline base64 data URIs.
    bucket: Option<Arc<crate::storage::Bucket>>,
    /// Limits and address policy for img2img inputs (`image`, `image_url`).
    image_options: ImageFetchOptions,
    /// How foreign request shapes are read and which response shape is the default.
    dialects: DialectArgs,
    /// The served models as the dialects name them.
    catalog: dialects::Catalog,
}

impl SdxlHandler {
    /// Starts the engine on the default checkpoint of `models` (and the `[vae]` override,
    /// if any). Loading runs on a blocking thread so the runtime keeps answering meanwhile.
    pub async fn load(
        models: ResolvedModels,
        args: &EngineArgs,
        bucket: Option<Arc<crate::storage::Bucket>>,
    ) -> Result<Self, LoadError> {
        let checkpoint = models
            .default_checkpoint()
            .cloned()
            .ok_or(LoadError::NoCheckpoint)?;
        let load_err = |source| LoadError::Pipeline {
            name: checkpoint.name.clone(),
            path: checkpoint.path.display().to_string(),
            source,
        };
        let mut config = PipelineConfig::new(&checkpoint.path, args).map_err(load_err)?;
        config.vae = models.vae().map(|v| v.path.clone());
        config.loras = models
            .loras()
            .map(|m| LoraEntry {
                name: m.name.clone(),
                path: m.path.clone(),
                default_weight: f64::from(m.default_weight.unwrap_or(1.0)),
            })
            .collect();
        let engine = tokio::task::spawn_blocking(move || Engine::start(config))
            .await
            .map_err(|e| LoadError::Join(e.to_string()))?
            .map_err(load_err)?;
        tracing::info!(
            checkpoint = %checkpoint.name,
            architecture = %engine.info().architecture,
            device = %engine.info().device,
            dtype = engine.info().dtype,
            load_s = engine.info().load_seconds,
            "engine ready"
        );
        let catalog = catalog(&checkpoint, &models);
        Ok(Self {
            engine,
            checkpoint,
            models,
            defaults: Defaults::default(),
            bucket,
            image_options: ImageFetchOptions::default(),
            dialects: DialectArgs::default(),
            catalog,
        })
    }

    /// Replaces the img2img input limits and address policy (default: public addresses only,
    /// 20 MiB, 40 megapixels).
    pub fn with_image_options(mut self, options: ImageFetchOptions) -> Self {
        self.image_options = options;
        self
    }

    /// Replaces the dialect settings (`STRICT_INPUT`, `RESPONSE_FORMAT`).
    pub fn with_dialects(mut self, dialects: DialectArgs) -> Self {
        self.dialects = dialects;
        self
    }

    /// Replaces the request defaults and limits (tests use a smaller minimum size).
    pub fn with_defaults(mut self, defaults: Defaults) -> Self {
        self.defaults = defaults;
        self
    }
}

#[async_trait]
impl Handler for SdxlHandler {
    /// The five stages in order; see the module documentation.
    async fn handle(&self, job: Job, ctx: JobContext) -> Result<HandlerOutput, JobError> {
        let started = Instant::now();
        let parsed = match self.route(&job.input)? {
            Route::Answer(v) => return Ok(HandlerOutput::new(v)),
            Route::Generate(job) => *job,
        };
        let request = self.prepare(&parsed).await?;
        let output = self.generate(request, &ctx).await?;
        let encoded = self.encode(&parsed, output.images, &output.seeds).await?;
        self.deliver(
            &job.id,
            &parsed,
            &output.seeds,
            &output.timings,
            encoded,
            started,
        )
        .await
    }
}

/// Builds the handler from resolved models (cold-start glue for [`crate::run_blocking`]).
pub async fn build(
    models: ResolvedModels,
    args: &EngineArgs,
    bucket: Option<Arc<crate::storage::Bucket>>,
    image_options: ImageFetchOptions,
    dialects: DialectArgs,
) -> Result<Arc<SdxlHandler>, LoadError> {
    SdxlHandler::load(models, args, bucket)
        .await
        .map(|h| Arc::new(h.with_image_options(image_options).with_dialects(dialects)))
}

/// The served models as the dialect translators name them.
fn catalog(checkpoint: &ResolvedModel, models: &ResolvedModels) -> dialects::Catalog {
    let entry = |m: &ResolvedModel| dialects::CatalogModel {
        name: m.name.clone(),
        file_name: m.file_name.clone(),
        sha256: m.sha256.clone(),
        autov2: m.autov2.clone(),
        civitai_model_id: m.civitai.as_ref().map(|c| c.model_id),
        civitai_version_id: m.civitai.as_ref().map(|c| c.version_id),
        air: m.air.clone(),
    };
    dialects::Catalog {
        checkpoint: entry(checkpoint),
        loras: models.loras().map(entry).collect(),
        vae: models.vae().map(entry),
        unchecked: false,
    }
}
