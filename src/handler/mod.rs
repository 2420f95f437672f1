//! The image handler: a job's `input` → validated request → engine → encoded images with
//! metadata → the result body RunPod clients expect (the same top-level keys as RunPod's
//! official SDXL worker: `images`, `image_url`, `seed`, plus `seeds`, `parameters`, `info`).

pub mod request;

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::fetch::{ModelKind, ResolvedModel, ResolvedModels};
use crate::image::infotext::Infotext;
use crate::image::input::ImageFetchOptions;
use crate::lora::{extract_prompt_loras, LoraEntry};
use crate::pipeline::{
    Engine, EngineArgs, EngineError, EngineHandle, GenerateRequest, HiresFix, InitImage,
    PipelineConfig, PipelineError, Variation,
};
use crate::prompt::Emphasis;
use crate::runpod::{async_trait, Handler, HandlerOutput, Job, JobContext, JobError};
use crate::sampling::{NoiseKind, SdeNoise};
use request::{Defaults, GenerateInput, ImageSource, NoiseName, SdeNoiseName, WeightingName};

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
        Ok(Self {
            engine,
            checkpoint,
            models,
            defaults: Defaults::default(),
            bucket,
            image_options: ImageFetchOptions::default(),
        })
    }

    /// Replaces the img2img input limits and address policy (default: public addresses only,
    /// 20 MiB, 40 megapixels).
    pub fn with_image_options(mut self, options: ImageFetchOptions) -> Self {
        self.image_options = options;
        self
    }

    /// Replaces the request defaults and limits (tests use a smaller minimum size).
    pub fn with_defaults(mut self, defaults: Defaults) -> Self {
        self.defaults = defaults;
        self
    }

    /// Validates everything the schema cannot know alone (model names), all at once.
    fn check_names(&self, input: &GenerateInput) -> Result<(), JobError> {
        let mut errors = Vec::new();
        if let Some(name) = &input.checkpoint {
            if !name.eq_ignore_ascii_case(&self.checkpoint.name) {
                errors.push(format!(
                    "field `checkpoint`: {name:?} is not loaded (allowed: {:?})",
                    self.checkpoint.name
                ));
            }
        }
        for (i, l) in input.loras.iter().enumerate() {
            if self.models.find(ModelKind::Lora, &l.name).is_none() {
                let available: Vec<&str> = self.models.loras().map(|m| m.name.as_str()).collect();
                errors.push(format!(
                    "field `loras[{i}].name`: {:?} is not in models.toml (allowed: {available:?})",
                    l.name
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(JobError::invalid_input(errors.join("; ")))
        }
    }

    fn infotext(&self, input: &GenerateInput, seed: u64) -> Infotext {
        let model = std::path::Path::new(&self.checkpoint.file_name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned());
        let resources = self
            .checkpoint
            .civitai
            .as_ref()
            .map(|c| {
                vec![json!({"type": "checkpoint", "modelVersionId": c.version_id,
                            "modelName": self.checkpoint.name})]
            })
            .unwrap_or_default();
        // LoRAs of the request list and of `<lora:…>` prompt tags (kept in the prompt text,
        // as A1111 writes them), so Civitai recognises the resources.
        let mut resources = resources;
        let mut lora_hashes = Vec::new();
        let tags = extract_prompt_loras(&input.prompt)
            .map(|(_, t)| t)
            .unwrap_or_default();
        let used = input
            .loras
            .iter()
            .map(|l| (l.name.as_str(), l.weight))
            .chain(tags.iter().map(|t| (t.name.as_str(), t.weight)));
        for (name, weight) in used {
            let Some(m) = self.models.find(ModelKind::Lora, name) else {
                continue;
            };
            if lora_hashes
                .iter()
                .any(|(n, _): &(String, String)| n == &m.name)
            {
                continue;
            }
            if let Some(h) = &m.autov3 {
                lora_hashes.push((m.name.clone(), h.to_ascii_lowercase()));
            }
            if let Some(c) = &m.civitai {
                let w = weight.unwrap_or(f64::from(m.default_weight.unwrap_or(1.0)));
                resources.push(json!({"type": "lora", "weight": w,
                                      "modelVersionId": c.version_id, "modelName": m.name}));
            }
        }
        Infotext {
            prompt: input.prompt.clone(),
            negative_prompt: input.negative_prompt.clone(),
            steps: input.steps,
            sampler: input.sampler.label().to_string(),
            schedule: Some(input.schedule.label().to_string()),
            cfg_scale: input.guidance_scale,
            seed,
            width: input.width,
            height: input.height,
            model_hash: Some(self.checkpoint.autov2.to_ascii_lowercase()),
            model,
            clip_skip: input.clip_skip,
            variation: input.subseed,
            denoising_strength: input.img2img.as_ref().map(|i| i.strength),
            rng: (input.noise == NoiseName::Nv).then(|| "NV".to_string()),
            guidance_rescale: (input.guidance_rescale > 0.0).then_some(input.guidance_rescale),
            hires: input.hires.map(|h| (h.scale, h.steps, h.denoise)),
            emphasis: match input.prompt_weighting {
                WeightingName::Comfy => None,
                WeightingName::A1111 => Some("Original".to_string()),
                WeightingName::A1111NoNorm => Some("No norm".to_string()),
                WeightingName::None => Some("None".to_string()),
            },
            lora_hashes,
            version: VERSION.to_string(),
            civitai_resources: resources,
        }
    }
}

/// The engine's settings for the request's text and noise options.
fn engine_options(input: &GenerateInput, req: &mut GenerateRequest) {
    req.clip_skip = input.clip_skip.unwrap_or(2);
    req.emphasis = match input.prompt_weighting {
        WeightingName::Comfy => Emphasis::Comfy,
        WeightingName::A1111 => Emphasis::A1111,
        WeightingName::A1111NoNorm => Emphasis::A1111NoNorm,
        WeightingName::None => Emphasis::Ignore,
    };
    req.guidance_rescale = input.guidance_rescale as f32;
    req.noise = match input.noise {
        NoiseName::Cpu => NoiseKind::Cpu,
        NoiseName::Nv => NoiseKind::Nv,
    };
    req.sde_noise = match input.sde_noise {
        SdeNoiseName::Brownian => SdeNoise::Brownian,
        SdeNoiseName::Gaussian => SdeNoise::Gaussian,
    };
    req.variation = input.subseed.map(|(subseed, strength)| Variation {
        subseed,
        strength: strength as f32,
    });
}

/// Maps engine failures to job errors with stable `error_type`s.
fn engine_error(err: EngineError) -> JobError {
    let error_type = err.error_type();
    JobError::from_error(error_type, err)
}

#[async_trait]
impl Handler for SdxlHandler {
    async fn handle(&self, job: Job, ctx: JobContext) -> Result<HandlerOutput, JobError> {
        let started = Instant::now();
        let input = request::parse(&job.input, &self.defaults)
            .map_err(|e| JobError::invalid_input(e.0.join("; ")))?;
        self.check_names(&input)?;
        // torch's generator keeps the low 32 bits of a seed; drawing in that range keeps
        // every returned seed reproducible in A1111/ComfyUI as written.
        let seed = input
            .seed
            .unwrap_or_else(|| u64::from(rand::random::<u32>()));
        let init_image = match &input.img2img {
            None => None,
            Some(i) => {
                let (inline, url) = match &i.source {
                    ImageSource::Inline(data) => (Some(data.as_str()), None),
                    ImageSource::Url(url) => (None, Some(url.as_str())),
                };
                let image = crate::image::input::load_init_image(inline, url, &self.image_options)
                    .await
                    .map_err(|e| JobError::from_error(e.error_type(), e))?;
                Some(InitImage {
                    image,
                    strength: i.strength as f32,
                })
            }
        };
        let mut req = GenerateRequest {
            prompt: input.prompt.clone(),
            negative_prompt: input.negative_prompt.clone(),
            width: input.width,
            height: input.height,
            steps: input.steps,
            guidance: input.guidance_scale as f32,
            sampler: input.sampler,
            schedule: input.schedule,
            seed,
            num_images: input.num_images,
            loras: input
                .loras
                .iter()
                .map(|l| (l.name.clone(), l.weight, l.clip_weight))
                .collect(),
            ..GenerateRequest::default()
        };
        engine_options(&input, &mut req);
        req.init_image = init_image;
        req.hires = input.hires.map(|h| HiresFix {
            scale: h.scale as f32,
            steps: h.steps,
            denoise: h.denoise as f32,
        });
        let progress_ctx = ctx.clone();
        let output = self
            .engine
            .generate(
                req,
                move |p| progress_ctx.progress(json!({"step": p.step, "steps": p.steps})),
                ctx.cancellation_token().clone(),
            )
            .await
            .map_err(engine_error)?;

        let encode_started = Instant::now();
        let texts: Vec<String> = output
            .seeds
            .iter()
            .map(|s| self.infotext(&input, *s).render())
            .collect();
        let format = input.output_format;
        let quality = input.output_quality;
        let images = output.images;
        let texts_for_encode = texts.clone();
        let encoded = tokio::task::spawn_blocking(move || {
            images
                .iter()
                .zip(&texts_for_encode)
                .map(|(img, text)| crate::image::encode(img, format, quality, text))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| JobError::new("internal_error", format!("image encoding thread: {e}")))?
        .map_err(|e| JobError::from_error("encode_error", e))?;
        let image_encode_s = encode_started.elapsed().as_secs_f64();
        let upload_started = Instant::now();
        let uris: Vec<String> = match &self.bucket {
            Some(bucket) => {
                let uploads = encoded.into_iter().enumerate().map(|(n, bytes)| {
                    let key = crate::storage::image_key(&job.id, n, format.extension());
                    async move { bucket.upload(&key, bytes, format.mime()).await }
                });
                futures::future::try_join_all(uploads)
                    .await
                    .map_err(|e| JobError::from_error("upload_error", e))?
            }
            None => {
                let uris: Vec<String> = encoded
                    .iter()
                    .map(|b| crate::image::data_uri(b, format))
                    .collect();
                let inline_bytes: usize = uris.iter().map(String::len).sum();
                if inline_bytes > MAX_INLINE_RESULT_BYTES {
                    return Err(JobError::new(
                        "result_too_large",
                        format!(
                            "the images are {inline_bytes} bytes as base64, over RunPod's ~20 MB \
                             result limit: ask for fewer images, use output_format jpeg, or set \
                             BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID and \
                             BUCKET_SECRET_ACCESS_KEY to upload images to object storage"
                        ),
                    ));
                }
                uris
            }
        };
        let upload_s = upload_started.elapsed().as_secs_f64();
        let t = &output.timings;
        let value = json!({
            "images": uris,
            "image_url": uris.first(),
            "seed": seed,
            "seeds": output.seeds,
            "parameters": texts.first(),
            "info": {
                "request": input,
                "checkpoint": {
                    "name": self.checkpoint.name,
                    "file": self.checkpoint.file_name,
                    "sha256": self.checkpoint.sha256,
                    "autov2": self.checkpoint.autov2,
                    "civitai": self.checkpoint.civitai,
                    "architecture": self.engine.info().architecture,
                },
                "vae": self.models.vae().map(|v| json!({"name": v.name, "sha256": v.sha256})),
                "device": self.engine.info().device,
                "dtype": self.engine.info().dtype,
                "timings": {
                    "encode_prompt_s": t.encode_s,
                    "denoise_s": t.denoise_s,
                    "unet_steps": t.unet_steps,
                    "vae_decode_s": t.decode_s,
                    "vae_f32_retry": t.vae_f32_retry,
                    "image_encode_s": image_encode_s,
                    "upload_s": upload_s,
                    "total_s": started.elapsed().as_secs_f64(),
                },
                "version": VERSION,
            }
        });
        Ok(HandlerOutput::new(value))
    }
}

/// Builds the handler from resolved models (cold-start glue for [`crate::run_blocking`]).
pub async fn build(
    models: ResolvedModels,
    args: &EngineArgs,
    bucket: Option<Arc<crate::storage::Bucket>>,
    image_options: ImageFetchOptions,
) -> Result<Arc<SdxlHandler>, LoadError> {
    SdxlHandler::load(models, args, bucket)
        .await
        .map(|h| Arc::new(h.with_image_options(image_options)))
}
