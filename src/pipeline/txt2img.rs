//! The loaded SDXL models and text-to-image generation, step for step as diffusers'
//! `StableDiffusionXLPipeline` (fixtures README, "What a reference case does").

use super::{device_name, dtype_name, DTypeArg, DeviceSpec, EngineArgs};
use crate::lora::{LoraEntry, LoraError, LoraLibrary, LoraRuntime, RequestedLora};
use crate::model::clip::{ClipKind, ClipTextConfig, ClipTextModel};
use crate::model::unet::{time_ids_embedding, UNet, UNetConfig, TIME_ID_DIM};
use crate::model::vae::{Vae, VaeConfig};
use crate::model::vae_names::vae_name_map;
use crate::model::ModelError;
use crate::model::ShapeMap;
use crate::prompt::{
    Chunk, ClipTokenizers, Emphasis, PromptChunks, PromptError, MAX_CHUNKS, MAX_LENGTH,
};
use crate::sampling::{
    self, ImageRng, NoiseKind, Sampler, SamplerKind, SamplerNoise, SamplingError, ScheduleConfig,
    SdeNoise, SigmaSchedule, StepInfo,
};
use crate::weights::layout::{sdxl_layout, SdxlDims};
use crate::weights::{
    detect, synthetic, Architecture, Checkpoint, Family, Prediction, StDtype, WeightsError,
};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::RgbImage;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const UNET_PREFIX: &str = "model.diffusion_model";
const TE1_PREFIX: &str = "conditioner.embedders.0.transformer";
const TE2_PREFIX: &str = "conditioner.embedders.1.model";
const VAE_PREFIX: &str = "first_stage_model";

/// Largest image side we accept, in pixels.
pub const MAX_SIDE: u32 = 4096;
/// Most sampler steps per image.
pub const MAX_STEPS: u32 = 500;
/// Most images per request.
pub const MAX_IMAGES: u32 = 16;

/// Errors of loading or running the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("`{path}`: {source}")]
    Model {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    /// The checkpoint is a recognised SDXL variant that cannot do text-to-image.
    #[error(
        "`{path}` is an {family} checkpoint; text-to-image needs an SDXL base-family checkpoint"
    )]
    UnsupportedVariant { path: PathBuf, family: &'static str },
    /// Bad engine configuration (device, dtype).
    #[error("{0}")]
    Config(String),
    /// A request field out of range; the message names the field and the allowed values.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("generation was cancelled")]
    Cancelled,
    #[error("tokenizer: {0}")]
    Prompt(String),
    #[error("sampler: {0}")]
    Sampling(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("model computation failed: {0}")]
    Compute(#[from] ModelError),
    /// A LoRA that cannot be loaded, or a request naming an unknown LoRA (boxed: it is
    /// large and rare).
    #[error(transparent)]
    Lora(Box<LoraError>),
    #[error("{0}")]
    Internal(String),
    /// The sampler or the VAE produced NaN/inf: the job fails instead of returning a black
    /// or noise image.
    #[error("{0}")]
    NonFinite(String),
}

impl PipelineError {
    /// A stable machine-readable category for job error responses.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Weights(_) | Self::Model { .. } | Self::UnsupportedVariant { .. } => {
                "model_load_error"
            }
            Self::Config(_) => "config_error",
            Self::Lora(e) => e.error_type(),
            Self::InvalidRequest(_) => "invalid_input",
            Self::Cancelled => "cancelled",
            Self::Prompt(_) => "invalid_prompt",
            Self::NonFinite(_) => "non_finite_output",
            // CUDA reports CUDA_ERROR_OUT_OF_MEMORY through candle; the job's tensors are
            // freed as the error unwinds, so the next job starts with the memory back.
            Self::Candle(e) if is_out_of_memory(&e.to_string()) => "out_of_memory",
            Self::Compute(e) if is_out_of_memory(&e.to_string()) => "out_of_memory",
            Self::Sampling(_) | Self::Candle(_) | Self::Compute(_) | Self::Internal(_) => {
                "generation_error"
            }
        }
    }
}

/// Whether an error message is a device out-of-memory report.
fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("out_of_memory") || m.contains("out of memory")
}

/// Names and combinations a user chose are request errors; the rest is a sampler failure.
impl From<SamplingError> for PipelineError {
    fn from(e: SamplingError) -> Self {
        match e {
            SamplingError::UnknownName { .. }
            | SamplingError::Unsupported(_)
            | SamplingError::InvalidSteps { .. } => Self::InvalidRequest(e.to_string()),
            SamplingError::Candle(e) => Self::Candle(e),
            other => Self::Sampling(other.to_string()),
        }
    }
}

impl From<LoraError> for PipelineError {
    fn from(e: LoraError) -> Self {
        Self::Lora(Box::new(e))
    }
}

/// Where the weights come from.
#[derive(Debug, Clone)]
pub enum WeightsSource {
    /// A single-file SDXL checkpoint (`.safetensors`).
    File(PathBuf),
    /// Random weights in the layout given by these dimensions, made on the device (bench).
    Synthetic(SdxlDims),
}

/// How to load the pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub source: WeightsSource,
    /// A separate VAE file (LDM or diffusers layout, e.g. an fp16-fixed SDXL VAE) that
    /// replaces the checkpoint's own.
    pub vae: Option<PathBuf>,
    pub device: DeviceSpec,
    pub dtype: DTypeArg,
    pub vae_dtype: DTypeArg,
    /// The LoRAs of `models.toml`, loaded with the checkpoint and kept in host memory.
    pub loras: Vec<LoraEntry>,
    /// `--lora-keep-originals`; `None` = keep on a GPU, re-read on the CPU.
    pub lora_keep_originals: Option<bool>,
}

impl PipelineConfig {
    /// A checkpoint file with the engine flags (`--device`, `--dtype`, `--vae-dtype`).
    pub fn new(checkpoint: impl Into<PathBuf>, args: &EngineArgs) -> Result<Self, PipelineError> {
        Ok(Self {
            source: WeightsSource::File(checkpoint.into()),
            vae: None,
            device: args.device.parse()?,
            dtype: args.dtype,
            vae_dtype: args.vae_dtype,
            loras: Vec::new(),
            lora_keep_originals: args.lora_keep_originals,
        })
    }

    /// CPU, f32 everywhere: the configuration the parity tests use.
    pub fn cpu_f32(checkpoint: impl Into<PathBuf>) -> Self {
        Self {
            source: WeightsSource::File(checkpoint.into()),
            vae: None,
            device: DeviceSpec::Cpu,
            dtype: DTypeArg::F32,
            vae_dtype: DTypeArg::F32,
            loras: Vec::new(),
            lora_keep_originals: None,
        }
    }
}

/// A loaded header plus a way to make `VarBuilder`s over its weights.
enum Source {
    File(Arc<Checkpoint>),
    Synthetic(Arc<ShapeMap>),
}

impl Source {
    fn shapes(&self) -> &ShapeMap {
        match self {
            Self::File(c) => c.shapes(),
            Self::Synthetic(s) => s,
        }
    }
    fn vb(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        match self {
            Self::File(c) => c.var_builder(dtype, device),
            Self::Synthetic(s) => synthetic::var_builder(Arc::clone(s), dtype, device),
        }
    }
}

/// What was loaded, for logs and the worker's status.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadInfo {
    pub checkpoint: PathBuf,
    /// e.g. "SDXL base" or "SDXL base (v-prediction, zero terminal SNR)".
    pub architecture: String,
    pub v_prediction: bool,
    pub zero_terminal_snr: bool,
    pub device: String,
    pub dtype: &'static str,
    pub vae_dtype: &'static str,
    pub load_seconds: f64,
}

/// One text-to-image request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: String,
    /// `None`: no negative prompt, the unconditional branch gets zero embeddings (diffusers'
    /// `force_zeros_for_empty_prompt` for SDXL). `Some("")` encodes the empty string, which
    /// is a different image.
    pub negative_prompt: Option<String>,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    /// Classifier-free guidance scale; ≤ 1 disables CFG (one UNet pass per step).
    pub guidance: f32,
    pub sampler: SamplerKind,
    /// σ schedule (`Karras` for "DPM++ 2M Karras"; Euler a and DDIM take `Default` only).
    pub schedule: SigmaSchedule,
    /// Image `i` uses seed `seed + i` (its own generator), as A1111 does.
    pub seed: u64,
    pub num_images: u32,
    /// LoRAs `(name, weight, clip_weight)` from the request's `loras` list; `<lora:…>` tags
    /// in the prompt add to them. Applied by [`SdxlPipeline::generate_with_loras`].
    pub loras: Vec<RequestedLora>,
    /// CLIP layer counted from the end as A1111/Civitai count it: 2 = penultimate (what SDXL
    /// is trained with, diffusers' default), 1 = last layer, 3 = one further back.
    pub clip_skip: u32,
    /// How prompt emphasis `(word:1.2)` is applied.
    pub emphasis: Emphasis,
    /// diffusers' `guidance_rescale` φ in [0, 1]; 0 = off.
    pub guidance_rescale: f32,
    /// Source of the initial and sampler noise.
    pub noise: NoiseKind,
    /// Noise source of the SDE samplers.
    pub sde_noise: SdeNoise,
    /// A1111 variation seed: the initial noise is blended towards the subseed's noise.
    pub variation: Option<Variation>,
    /// img2img: start from this image instead of pure noise.
    pub init_image: Option<InitImage>,
    /// Hires fix: a second, upscaled img2img pass over the first result.
    pub hires: Option<HiresFix>,
}

/// A1111's variation seed ("subseed"): image `i` blends its noise with that of `subseed + i`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Variation {
    pub subseed: u64,
    /// 0 = the seed's noise, 1 = the subseed's.
    pub strength: f32,
}

/// The input image of an img2img request, already decoded.
#[derive(Debug, Clone)]
pub struct InitImage {
    pub image: RgbImage,
    /// Denoising strength in [0, 1]: 0 returns the input (through the VAE), 1 ignores it.
    pub strength: f32,
}

/// A1111's hires fix with the latent upscaler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HiresFix {
    /// Factor applied to width and height (results rounded to multiples of 8).
    pub scale: f32,
    /// Steps of the second pass; 0 = the request's `steps`.
    pub steps: u32,
    /// Denoising strength of the second pass.
    pub denoise: f32,
}

impl Default for GenerateRequest {
    /// The worker's defaults: 1024², 30 steps, CFG 5, DPM++ 2M Karras, one image.
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: None,
            width: 1024,
            height: 1024,
            steps: 30,
            guidance: 5.0,
            sampler: SamplerKind::DpmPp2m,
            schedule: SigmaSchedule::Karras,
            seed: 0,
            num_images: 1,
            loras: Vec::new(),
            clip_skip: 2,
            emphasis: Emphasis::default(),
            guidance_rescale: 0.0,
            noise: NoiseKind::default(),
            sde_noise: SdeNoise::default(),
            variation: None,
            init_image: None,
            hires: None,
        }
    }
}

impl GenerateRequest {
    /// Checks every field against what the pipeline supports.
    pub fn validate(&self) -> Result<(), PipelineError> {
        let bad = |m: String| Err(PipelineError::InvalidRequest(m));
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if !(64..=MAX_SIDE).contains(&v) || v % 8 != 0 {
                return bad(format!(
                    "{name} {v} is not allowed: use a multiple of 8 from 64 to {MAX_SIDE}"
                ));
            }
        }
        if self.steps == 0 || self.steps > MAX_STEPS {
            return bad(format!(
                "steps {} is not allowed: use 1 to {MAX_STEPS}",
                self.steps
            ));
        }
        if !self.guidance.is_finite() || self.guidance < 0.0 || self.guidance > 100.0 {
            return bad(format!(
                "guidance {} is not allowed: use a number from 0 to 100",
                self.guidance
            ));
        }
        if self.num_images == 0 || self.num_images > MAX_IMAGES {
            return bad(format!(
                "num_images {} is not allowed: use 1 to {MAX_IMAGES}",
                self.num_images
            ));
        }
        Ok(())
    }

    /// Whether this request runs classifier-free guidance (diffusers: `guidance_scale > 1`).
    pub fn cfg(&self) -> bool {
        self.guidance > 1.0
    }
}

/// Where [`SdxlPipeline::denoise`] starts.
#[derive(Debug, Clone, Copy)]
pub enum DenoiseFrom<'a> {
    /// txt2img: pure noise scaled to the schedule's first σ.
    Noise,
    /// img2img (diffusers' strength rule): clean image latents `[N, C, h, w]`, already
    /// multiplied by the VAE scaling factor; the latent size comes from them. The schedule
    /// for `req.steps` is laid out in full and its first `steps - min(int(steps·strength),
    /// steps)` steps are skipped; the start is `latents + noise·σ_start`. Strength ≥ 1 is
    /// exactly the txt2img start (latents ignored); 0 steps returns the latents unchanged.
    Latents { latents: &'a Tensor, strength: f32 },
}

/// Per-step progress, reported after each sampler step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub step: u32,
    pub steps: u32,
}

/// Wall-clock seconds of each stage of one request.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    pub encode_s: f64,
    pub denoise_s: f64,
    /// UNet evaluations (steps; a CFG step is one batched call).
    pub unet_steps: u32,
    pub decode_s: f64,
    /// Whether any image had to be decoded again in f32 after a half-precision NaN.
    pub vae_f32_retry: bool,
    pub total_s: f64,
}

/// Images and diagnostics of one request.
#[derive(Debug, Clone)]
pub struct GenerateOutput {
    pub images: Vec<RgbImage>,
    /// The seed of each image.
    pub seeds: Vec<u64>,
    /// Final latents `[N, C, h, w]` f32 on the CPU (before `/ scaling_factor`).
    pub latents: Tensor,
    /// Decoded images before 8-bit conversion `[N, 3, H, W]` f32 on the CPU.
    pub image_float: Tensor,
    pub timings: Timings,
}

/// Text conditioning of one request, exactly the tensors diffusers hands to the UNet.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// `[1, 77·chunks, te1 + te2 width]` (one chunk per 75 prompt tokens).
    pub prompt_embeds: Tensor,
    /// `[1, te2 projection]`.
    pub pooled: Tensor,
    /// Present when CFG runs: zeros for a `None` negative prompt.
    pub negative_prompt_embeds: Option<Tensor>,
    pub negative_pooled: Option<Tensor>,
    /// `[1, 6]`: original (h, w), crop (0, 0), target (h, w).
    pub time_ids: Tensor,
}

/// The loaded SDXL models on one device.
pub struct SdxlPipeline {
    tokenizers: ClipTokenizers,
    te1: ClipTextModel,
    te2: ClipTextModel,
    unet: UNet,
    /// Configurations to rebuild the text encoders and UNet after a LoRA switch.
    te1_cfg: ClipTextConfig,
    te2_cfg: ClipTextConfig,
    unet_cfg: UNetConfig,
    /// LoRA library, merged set and the resident weights the models are built from; `None`
    /// for synthetic weights.
    loras: Option<LoraRuntime>,
    pub(super) vae: Vae,
    /// An f32 copy of the VAE when `vae` is half precision, for the NaN retry.
    pub(super) vae_f32: Option<Vae>,
    arch: Architecture,
    device: Device,
    info: LoadInfo,
}

/// Loads a separate VAE file (LDM or diffusers names, any prefix) in `dtype`, plus an f32
/// copy for the NaN retry when `dtype` is half precision.
fn load_vae_file(
    path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<(Vae, Option<Vae>), PipelineError> {
    let file = Checkpoint::open(path)?;
    let model_err = |source: ModelError| PipelineError::Model {
        path: path.to_path_buf(),
        source,
    };
    let names = vae_name_map(file.shapes()).map_err(model_err)?;
    let vae_cfg = VaeConfig::infer(&names.ldm_shapes(file.shapes()), "").map_err(model_err)?;
    let load = |dt: DType| Vae::load(names.ldm_view(file.var_builder(dt, device)), &vae_cfg);
    let vae = load(dtype).map_err(model_err)?;
    let vae_f32 = if dtype == DType::F32 {
        None
    } else {
        Some(load(DType::F32).map_err(model_err)?)
    };
    Ok((vae, vae_f32))
}

/// The text encoders must produce what the UNet consumes: context width te1 + te2, and
/// `label_emb` input = te2 projection + 6 time ids × 256. Checked at load so that a file with
/// a missing `text_projection` or mismatched encoders fails now, naming the tensors, instead
/// of on the first job.
fn check_conditioning_widths(
    path: &Path,
    te1: &ClipTextConfig,
    te2: &ClipTextConfig,
    unet: &UNetConfig,
) -> Result<(), PipelineError> {
    let err = |msg: String| PipelineError::Model {
        path: path.to_path_buf(),
        source: ModelError::Unsupported(msg),
    };
    let Some(proj) = te2.projection_dim else {
        return Err(err(format!(
            "missing tensor `{TE2_PREFIX}.text_projection` (SDXL's pooled text embedding)"
        )));
    };
    if te1.width + te2.width != unet.context_dim {
        return Err(err(format!(
            "the text encoders are {} + {} wide but the UNet's cross-attention expects {} (`{UNET_PREFIX}.*.attn2.to_k.weight`)",
            te1.width, te2.width, unet.context_dim
        )));
    }
    let adm = proj + 6 * TIME_ID_DIM;
    if adm != unet.adm_in_channels {
        return Err(err(format!(
            "`{UNET_PREFIX}.label_emb.0.0.weight` takes {} inputs, expected {adm} (te2 projection {proj} + 6 × {TIME_ID_DIM} time ids)",
            unet.adm_in_channels
        )));
    }
    Ok(())
}

impl SdxlPipeline {
    /// Opens, validates and classifies the checkpoint, then builds every model on the device.
    /// The file is unmapped when this returns: weights live on the device only.
    pub fn load(cfg: &PipelineConfig) -> Result<Self, PipelineError> {
        let started = Instant::now();
        let _span = tracing::info_span!("load", source = ?cfg.source).entered();
        let device = cfg.device.open()?;
        let dtype = cfg.dtype.model_dtype(&device);
        let vae_dtype = cfg.vae_dtype.vae_dtype(&device);

        let (source, path) = match &cfg.source {
            WeightsSource::File(p) => (Source::File(Checkpoint::open(p)?), p.clone()),
            WeightsSource::Synthetic(dims) => {
                let shapes: ShapeMap = sdxl_layout(dims, StDtype::F16)
                    .into_iter()
                    .map(|e| (e.name, e.shape))
                    .collect();
                (
                    Source::Synthetic(Arc::new(shapes)),
                    PathBuf::from("<synthetic>"),
                )
            }
        };
        let arch = detect(&path, source.shapes())?;
        if arch.family != Family::SdxlBase {
            return Err(PipelineError::UnsupportedVariant {
                path,
                family: arch.family.name(),
            });
        }
        let model_err = |source: ModelError| PipelineError::Model {
            path: path.clone(),
            source,
        };
        let shapes = source.shapes();
        let te1_cfg =
            ClipTextConfig::infer(shapes, TE1_PREFIX, ClipKind::OpenAiClip).map_err(model_err)?;
        let te2_cfg =
            ClipTextConfig::infer(shapes, TE2_PREFIX, ClipKind::OpenClip).map_err(model_err)?;
        let unet_cfg = UNetConfig::infer(shapes, UNET_PREFIX).map_err(model_err)?;
        check_conditioning_widths(&path, &te1_cfg, &te2_cfg, &unet_cfg)?;

        // With a checkpoint file the text encoders and UNet are built from a resident store,
        // so that LoRA switches can replace single weights and rebuild the models cheaply.
        let loras = match &source {
            Source::File(ckpt) => {
                let library = LoraLibrary::load(&cfg.loras, shapes)?;
                let base = ckpt.var_builder(dtype, &device);
                if cfg.lora_keep_originals.unwrap_or(!device.is_cpu()) {
                    Some(LoraRuntime::keeping_originals(library, base))
                } else {
                    Some(LoraRuntime::new(library, base))
                }
            }
            Source::Synthetic(_) if cfg.loras.is_empty() => None,
            Source::Synthetic(_) => {
                return Err(PipelineError::Config(
                    "LoRAs need a checkpoint file, not synthetic weights".into(),
                ))
            }
        };
        let vb = match &loras {
            Some(rt) => rt.var_builder(dtype, &device),
            None => source.vb(dtype, &device),
        };
        let t = Instant::now();
        let te1 = ClipTextModel::load(vb.pp(TE1_PREFIX), &te1_cfg).map_err(model_err)?;
        let te2 = ClipTextModel::load(vb.pp(TE2_PREFIX), &te2_cfg).map_err(model_err)?;
        tracing::info!(seconds = t.elapsed().as_secs_f64(), "text encoders loaded");
        let t = Instant::now();
        let unet = UNet::new(vb.pp(UNET_PREFIX), &unet_cfg).map_err(model_err)?;
        tracing::info!(seconds = t.elapsed().as_secs_f64(), "UNet loaded");
        let t = Instant::now();
        let (vae, vae_f32) = match &cfg.vae {
            None => {
                let vae_cfg = VaeConfig::infer(shapes, VAE_PREFIX).map_err(model_err)?;
                let load = |dt: DType| Vae::load(source.vb(dt, &device).pp(VAE_PREFIX), &vae_cfg);
                let vae = load(vae_dtype).map_err(model_err)?;
                let vae_f32 = if vae_dtype == DType::F32 {
                    None
                } else {
                    Some(load(DType::F32).map_err(model_err)?)
                };
                (vae, vae_f32)
            }
            Some(vae_path) => load_vae_file(vae_path, vae_dtype, &device)?,
        };
        tracing::info!(seconds = t.elapsed().as_secs_f64(), "VAE loaded");
        let tokenizers =
            ClipTokenizers::load().map_err(|e| PipelineError::Prompt(e.to_string()))?;

        let info = LoadInfo {
            checkpoint: path.clone(),
            architecture: arch.to_string(),
            v_prediction: arch.prediction == Prediction::V,
            zero_terminal_snr: arch.zero_terminal_snr,
            device: device_name(&device),
            dtype: dtype_name(dtype),
            vae_dtype: dtype_name(vae_dtype),
            load_seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            architecture = %info.architecture,
            device = %info.device,
            dtype = info.dtype,
            vae_dtype = info.vae_dtype,
            seconds = info.load_seconds,
            "checkpoint loaded"
        );
        Ok(Self {
            tokenizers,
            te1,
            te2,
            unet,
            te1_cfg,
            te2_cfg,
            unet_cfg,
            loras,
            vae,
            vae_f32,
            arch,
            device,
            info,
        })
    }

    pub fn info(&self) -> &LoadInfo {
        &self.info
    }

    pub fn architecture(&self) -> Architecture {
        self.arch
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The schedule configuration for this checkpoint (SDXL's, with the file's prediction
    /// type and zero-terminal-SNR marker).
    pub fn schedule_config(&self) -> ScheduleConfig {
        match (self.arch.prediction, self.arch.zero_terminal_snr) {
            (Prediction::Epsilon, _) => ScheduleConfig::sdxl(),
            // Zero terminal SNR needs trailing spacing to start at σ = ∞-like t = 999.
            (Prediction::V, true) => ScheduleConfig::sdxl_v_pred_ztsnr(),
            (Prediction::V, false) => ScheduleConfig {
                prediction_type: sampling::PredictionType::VPrediction,
                ..ScheduleConfig::sdxl()
            },
        }
    }

    /// The hidden state `clip_skip` selects, counted from the end as A1111 and Civitai count
    /// it (2 = penultimate = SDXL's default, 1 = the last layer without the final LayerNorm,
    /// as ComfyUI's SDXL `clip_layer(-1)`; `k` = Hugging Face `hidden_states[-k]`, so
    /// diffusers' `clip_skip = n` is `n + 2`). Both encoders use the same count.
    fn clip_layers(&self, clip_skip: u32) -> Result<usize, PipelineError> {
        // `hidden_states` has one entry per layer plus the embeddings.
        let max = self.te1.config().layers.min(self.te2.config().layers) + 1;
        match usize::try_from(clip_skip) {
            Ok(k) if (1..=max).contains(&k) => Ok(k),
            _ => Err(PipelineError::InvalidRequest(format!(
                "clip_skip {clip_skip} is not allowed: use 1 to {max} (2 = penultimate layer, the SDXL default; 1 = last layer)"
            ))),
        }
    }

    /// Tokenizes one prompt field into chunks; an over-long prompt is a request error that
    /// names the field.
    fn tokenize_field(
        &self,
        field: &str,
        text: &str,
        emphasis: Emphasis,
    ) -> Result<PromptChunks, PipelineError> {
        self.tokenizers
            .tokenize_weighted(text, emphasis)
            .map_err(|e| match e {
                PromptError::TooLong { .. } | PromptError::TooManyBytes { .. } => {
                    PipelineError::InvalidRequest(format!("{field} is too long: {e}"))
                }
                other => PipelineError::Prompt(format!("{field}: {other}")),
            })
    }

    /// Encodes one tokenized prompt with both encoders at `layers` from the end: `(hidden
    /// states of both encoders concatenated on the feature axis, chunks concatenated on the
    /// sequence axis [1, 77·chunks, C], te2's pooled projection of the FIRST chunk [1, P])`,
    /// both f32, with the emphasis weights applied (see [`apply_emphasis`]). All chunks go
    /// through each encoder as one batch, with the empty prompt appended when ComfyUI
    /// weighting needs it.
    fn encode_text(
        &self,
        prompt: &PromptChunks,
        layers: usize,
        emphasis: Emphasis,
    ) -> Result<(Tensor, Tensor), PipelineError> {
        let k = prompt.chunks.len();
        let weighted = prompt.is_weighted() && emphasis != Emphasis::Ignore;
        let with_empty = weighted && emphasis == Emphasis::Comfy;
        let _span = tracing::debug_span!("encode_text", chunks = k, weighted, layers).entered();
        let empty = with_empty.then(|| self.tokenizers.empty_chunk());
        let rows: Vec<&Chunk> = prompt.chunks.iter().chain(empty.as_ref()).collect();
        let n = rows.len();
        let ids1: Vec<u32> = rows.iter().flat_map(|c| c.te1.iter().copied()).collect();
        let ids2: Vec<u32> = rows.iter().flat_map(|c| c.te2.iter().copied()).collect();
        let ids1 = Tensor::from_vec(ids1, (n, MAX_LENGTH), &self.device)?;
        let ids2 = Tensor::from_vec(ids2, (n, MAX_LENGTH), &self.device)?;
        let h1 = self.te1.forward(&ids1, layers, false)?;
        let h2 = self.te2.forward(&ids2, layers, true)?;
        let pooled = h2
            .pooled
            .ok_or_else(|| PipelineError::Internal("te2 returned no pooled output".into()))?
            .narrow(0, 0, 1)?
            .to_dtype(DType::F32)?;
        let h1 = h1.hidden.to_dtype(DType::F32)?;
        let h2 = h2.hidden.to_dtype(DType::F32)?;
        let (h1, h2) = if weighted {
            (
                apply_emphasis(&h1, prompt, emphasis)?,
                apply_emphasis(&h2, prompt, emphasis)?,
            )
        } else {
            (h1.narrow(0, 0, k)?, h2.narrow(0, 0, k)?)
        };
        let embeds = Tensor::cat(&[h1, h2], 2)?;
        let width = embeds.dim(2)?;
        Ok((embeds.reshape((1, k * MAX_LENGTH, width))?, pooled))
    }

    /// The conditioning for `req`: diffusers' for plain prompts of ≤ 75 tokens, long and
    /// weighted prompts as ComfyUI/A1111 (see [`crate::prompt::chunks`]). With CFG the
    /// negative side gets the same length as the positive one (the UNet runs both in one
    /// batch): zeros for a `None` negative prompt (diffusers' `force_zeros_for_empty_prompt`);
    /// with different chunk counts both are repeated to the least common multiple of the
    /// counts, as ComfyUI's `CONDCrossAttn.concat` does. Attention over a context repeated
    /// whole equals attention over it once, so each side acts as if run alone, which is
    /// also what A1111 does by default (`pad_cond_uncond` off: separate UNet calls). Only
    /// when that multiple exceeds [`MAX_CHUNKS`] is the shorter side padded with
    /// empty-prompt chunks instead (A1111's opt-in "Pad conds"), which changes its result.
    pub fn encode(&self, req: &GenerateRequest) -> Result<Conditioning, PipelineError> {
        let layers = self.clip_layers(req.clip_skip)?;
        let mut pos = self.tokenize_field("prompt", &req.prompt, req.emphasis)?;
        let mut neg = match (&req.negative_prompt, req.cfg()) {
            (Some(text), true) => {
                Some(self.tokenize_field("negative_prompt", text, req.emphasis)?)
            }
            _ => None,
        };
        // How many times to repeat each side's embeddings to a common length.
        let mut repeat = (1, 1);
        if let Some(neg) = neg.as_mut() {
            let (kp, kn) = (pos.chunks.len(), neg.chunks.len());
            let common = kp / gcd(kp, kn) * kn;
            if kp != kn {
                if common <= MAX_CHUNKS {
                    repeat = (common / kp, common / kn);
                } else {
                    pos.pad_with_empty_chunks(kn, &self.tokenizers);
                    neg.pad_with_empty_chunks(kp, &self.tokenizers);
                }
            }
        }
        let (mut prompt_embeds, pooled) = self.encode_text(&pos, layers, req.emphasis)?;
        let (negative_prompt_embeds, negative_pooled) = if !req.cfg() {
            (None, None)
        } else {
            match &neg {
                None => (
                    Some(prompt_embeds.zeros_like()?),
                    Some(pooled.zeros_like()?),
                ),
                Some(neg) => {
                    let (e, p) = self.encode_text(neg, layers, req.emphasis)?;
                    prompt_embeds = repeat_sequence(&prompt_embeds, repeat.0)?;
                    (Some(repeat_sequence(&e, repeat.1)?), Some(p))
                }
            }
        };
        let time_ids = self.time_ids(req.width, req.height)?;
        Ok(Conditioning {
            prompt_embeds,
            pooled,
            negative_prompt_embeds,
            negative_pooled,
            time_ids,
        })
    }

    /// SDXL's size conditioning `[1, 6]`: original (h, w), crop (0, 0), target (h, w).
    pub(super) fn time_ids(&self, width: u32, height: u32) -> Result<Tensor, PipelineError> {
        let (h, w) = (height as f32, width as f32);
        Ok(Tensor::new(&[[h, w, 0.0, 0.0, h, w]], &self.device)?)
    }

    /// Merges the request's LoRA set (its `loras` list and the prompt's `<lora:…>` tags)
    /// into the weights, rebuilding the text encoders and UNet from the resident store when
    /// anything changed, and returns the request with the tags removed from its prompt.
    pub fn apply_loras(&mut self, req: &GenerateRequest) -> Result<GenerateRequest, PipelineError> {
        let Some(rt) = self.loras.as_mut() else {
            if !req.loras.is_empty() {
                return Err(PipelineError::Config(
                    "LoRAs need a checkpoint file, not synthetic weights".into(),
                ));
            }
            return Ok(req.clone());
        };
        let prepared = rt.prepare(&req.loras, &req.prompt)?;
        if prepared.changed {
            let t = Instant::now();
            let model_err = |source: ModelError| PipelineError::Model {
                path: self.info.checkpoint.clone(),
                source,
            };
            let vb = rt.var_builder(self.unet.dtype(), &self.device);
            let rebuilt = (|| {
                Ok::<_, ModelError>((
                    ClipTextModel::load(vb.pp(TE1_PREFIX), &self.te1_cfg)?,
                    ClipTextModel::load(vb.pp(TE2_PREFIX), &self.te2_cfg)?,
                    UNet::new(vb.pp(UNET_PREFIX), &self.unet_cfg)?,
                ))
            })();
            let (te1, te2, unet) = match rebuilt {
                Ok(m) => m,
                Err(e) => {
                    rt.mark_dirty();
                    return Err(model_err(e));
                }
            };
            (self.te1, self.te2, self.unet) = (te1, te2, unet);
            tracing::info!(
                loras = ?prepared.active,
                switch_s = prepared.stats.seconds,
                total_s = t.elapsed().as_secs_f64() + prepared.stats.seconds,
                "LoRA set switched"
            );
        }
        Ok(GenerateRequest {
            prompt: prepared.prompt,
            ..req.clone()
        })
    }

    /// [`apply_loras`](Self::apply_loras), then [`generate`](Self::generate).
    pub fn generate_with_loras(
        &mut self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<GenerateOutput, PipelineError> {
        req.validate()?;
        let req = self.apply_loras(req)?;
        self.generate(&req, progress, cancelled)
    }

    /// Runs one request: encode, denoise each image from its own generator, decode. LoRAs
    /// and prompt tags are not applied here (see [`generate_with_loras`](Self::generate_with_loras)).
    pub fn generate(
        &self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<GenerateOutput, PipelineError> {
        req.validate()?;
        if req.init_image.is_some() || req.hires.is_some() {
            return self.generate_img2img_or_hires(req, progress, cancelled);
        }
        let started = Instant::now();
        let mut timings = Timings::default();

        let t = Instant::now();
        let cond = {
            let _s = tracing::debug_span!("encode").entered();
            self.encode(req)?
        };
        timings.encode_s = t.elapsed().as_secs_f64();

        let n = req.num_images as usize;
        let seeds: Vec<u64> = (0..n as u64).map(|i| req.seed.wrapping_add(i)).collect();
        let t = Instant::now();
        let latents = {
            let _s = tracing::debug_span!("denoise", steps = req.steps).entered();
            self.denoise(
                req,
                &cond,
                &seeds,
                DenoiseFrom::Noise,
                progress,
                cancelled,
                &mut timings,
            )?
        };
        timings.denoise_s = t.elapsed().as_secs_f64();
        self.finish(latents, seeds, started, timings)
    }

    /// The common tail of every request: decode the final latents, convert to 8-bit images,
    /// log the stage timings, and bring the tensors back to the host.
    pub(super) fn finish(
        &self,
        latents: Tensor,
        seeds: Vec<u64>,
        started: Instant,
        mut timings: Timings,
    ) -> Result<GenerateOutput, PipelineError> {
        let t = Instant::now();
        let image_float = {
            let _s = tracing::debug_span!("decode").entered();
            self.decode(&latents, &mut timings)?
        };
        let images = super::image::tensor_to_images(&image_float)?;
        timings.decode_s = t.elapsed().as_secs_f64();
        timings.total_s = started.elapsed().as_secs_f64();
        tracing::info!(
            encode_s = timings.encode_s,
            denoise_s = timings.denoise_s,
            decode_s = timings.decode_s,
            total_s = timings.total_s,
            "generated {} image(s)",
            seeds.len()
        );
        Ok(GenerateOutput {
            images,
            seeds,
            latents: latents.to_device(&Device::Cpu)?,
            image_float: image_float.to_device(&Device::Cpu)?,
            timings,
        })
    }

    /// The sampler loop for all images at once (formats.md §4).
    ///
    /// Each image has its own generator ([`ImageRng`] of `req.noise`, seeded `seeds[i]`): its
    /// initial noise is drawn first (slerped towards subseed `+ i`'s noise with
    /// `req.variation`, as A1111), then any per-step sampler noise in order, so image `i`
    /// equals a single-image run with its seed. SDE samplers take their noise from
    /// `req.sde_noise` (a Brownian tree per image seeded `seeds[i]`, or the generators).
    /// `from` picks txt2img or img2img (see [`DenoiseFrom`]). Progress is reported after
    /// every sampler step (step i of the steps actually run); `cancelled` is checked before
    /// every UNet call. Returns f32 latents `[N, C, h, w]`.
    #[allow(clippy::too_many_arguments)]
    pub fn denoise(
        &self,
        req: &GenerateRequest,
        cond: &Conditioning,
        seeds: &[u64],
        from: DenoiseFrom<'_>,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
        timings: &mut Timings,
    ) -> Result<Tensor, PipelineError> {
        if let Some(v) = req.variation {
            if !(0.0..=1.0).contains(&v.strength) {
                return Err(PipelineError::InvalidRequest(format!(
                    "variation strength {} is not allowed: use a number from 0 to 1",
                    v.strength
                )));
            }
        }
        let phi = req.guidance_rescale;
        if !(0.0..=1.0).contains(&phi) {
            return Err(PipelineError::InvalidRequest(format!(
                "guidance_rescale {phi} is not allowed: use a number from 0 to 1"
            )));
        }
        let n = seeds.len();
        let ucfg = self.unet.config();
        let sampler = Sampler::new(
            req.sampler,
            req.schedule,
            &self.schedule_config(),
            req.steps as usize,
        )?;

        let (per_image, init): (Vec<usize>, Option<(&Tensor, f32)>) = match from {
            DenoiseFrom::Noise => {
                // Latents are the image size divided by the VAE's factor (8 for SDXL: one ×2
                // per level after the first).
                let factor = 1usize << self.vae.config().block_out_channels.len().saturating_sub(1);
                let (lh, lw) = (req.height as usize / factor, req.width as usize / factor);
                (vec![ucfg.in_channels, lh, lw], None)
            }
            DenoiseFrom::Latents { latents, strength } => {
                let dims = latents.dims();
                if dims.len() != 4 || dims[0] != n || dims[1] != ucfg.in_channels {
                    return Err(PipelineError::Internal(format!(
                        "img2img latents have shape {dims:?}; expected [{n}, {}, h, w]",
                        ucfg.in_channels
                    )));
                }
                if !strength.is_finite() || strength < 0.0 {
                    return Err(PipelineError::InvalidRequest(format!(
                        "strength {strength} is not allowed: use a number from 0 to 1"
                    )));
                }
                (dims[1..].to_vec(), Some((latents, strength)))
            }
        };

        let mut rngs: Vec<ImageRng> = seeds.iter().map(|&s| ImageRng::new(req.noise, s)).collect();
        let numel: usize = per_image.iter().product();
        let mut data = Vec::with_capacity(numel * n);
        for (i, rng) in rngs.iter_mut().enumerate() {
            let noise = rng.randn(numel);
            match req.variation {
                // A1111: image i blends towards the noise of subseed + i; its later sampler
                // noise still comes from its own seed's generator.
                Some(v) => {
                    let sub =
                        ImageRng::new(req.noise, v.subseed.wrapping_add(i as u64)).randn(numel);
                    data.extend(sampling::variation::slerp_noise(
                        v.strength, &noise, &sub, &per_image,
                    ));
                }
                None => data.extend(noise),
            }
        }
        let mut shape = vec![n];
        shape.extend_from_slice(&per_image);
        let noise = Tensor::from_vec(data, shape, &self.device)?;

        let total = sampler.num_steps();
        let (x, start) = match init {
            None => (sampler.init_latents(&noise)?, 0),
            Some((_, strength)) if strength >= 1.0 => (sampler.init_latents(&noise)?, 0),
            Some((latents, strength)) => {
                // diffusers: init_timestep = min(int(steps·strength), steps), run the last
                // init_timestep steps. The f32 strength is widened through its shortest
                // decimal form so that e.g. 0.3 counts as Python's 0.3, not 0.30000001.
                let s64: f64 = strength.to_string().parse().unwrap_or(strength as f64);
                let run = ((total as f64 * s64) as usize).min(total);
                if run == 0 {
                    return Ok(latents.to_dtype(DType::F32)?);
                }
                let start = total - run;
                (sampler.noised_latents(latents, &noise, start)?, start)
            }
        };

        // UNet inputs that do not change between steps: batch [uncond × n, cond × n].
        let cfg = req.cfg();
        let rep = |t: &Tensor| -> candle_core::Result<Tensor> { t.repeat(n) };
        let (context, y) = {
            let time_emb = time_ids_embedding(&cond.time_ids, TIME_ID_DIM)?;
            let y_c = Tensor::cat(&[&cond.pooled, &time_emb], 1)?;
            match (&cond.negative_prompt_embeds, &cond.negative_pooled) {
                (Some(ne), Some(np)) if cfg => {
                    let y_u = Tensor::cat(&[np, &time_emb], 1)?;
                    (
                        Tensor::cat(&[rep(ne)?, rep(&cond.prompt_embeds)?], 0)?,
                        Tensor::cat(&[rep(&y_u)?, rep(&y_c)?], 0)?,
                    )
                }
                _ => (rep(&cond.prompt_embeds)?, rep(&y_c)?),
            }
        };
        let context = context
            .to_dtype(self.unet.dtype())?
            .to_device(&self.device)?;
        let y = y.to_device(&self.device)?;

        let ms = sampler.model_sampling();
        let mut unet_calls = 0u32;
        let mut model = |x: &Tensor, sigma: f32, t: f64| -> Result<Tensor, PipelineError> {
            if cancelled() {
                return Err(PipelineError::Cancelled);
            }
            let x_in = ms.scale_input(x, sigma)?;
            let x_in = if cfg {
                Tensor::cat(&[&x_in, &x_in], 0)?
            } else {
                x_in
            };
            let ts = Tensor::new(&[t as f32], &self.device)?;
            let out = self
                .unet
                .forward(&x_in, &ts, &context, &y)?
                .to_dtype(DType::F32)?;
            let guided = if cfg {
                let u = out.narrow(0, 0, n)?;
                let c = out.narrow(0, n, n)?;
                sampling::guidance::guide(&u, &c, req.guidance, req.guidance_rescale)?
            } else {
                out
            };
            unet_calls += 1;
            Ok(ms.denoised(&guided, x, sigma, t)?)
        };
        let mut step_started = Instant::now();
        let mut on_step = |info: StepInfo<'_>| -> Result<(), PipelineError> {
            tracing::debug!(
                step = info.step,
                steps = info.steps,
                sigma = info.sigma,
                seconds = step_started.elapsed().as_secs_f64(),
                "sampler step"
            );
            step_started = Instant::now();
            progress(Progress {
                step: info.step as u32,
                steps: info.steps as u32,
            });
            Ok(())
        };
        let mut noise_src =
            SamplerNoise::new(&mut rngs, seeds, &per_image, &self.device, req.sde_noise)?;
        let out = sampler.sample(x, start, &mut noise_src, &mut model, &mut on_step);
        timings.unet_steps += unet_calls;
        out
    }

    /// Decodes latents `[N, C, h, w]` into f32 images `[N, 3, H, W]`. A half-precision VAE
    /// that produces NaN/inf is retried in f32 (the SDXL VAE overflows in f16).
    pub fn decode(&self, latents: &Tensor, timings: &mut Timings) -> Result<Tensor, PipelineError> {
        if !all_finite(latents)? {
            return Err(PipelineError::NonFinite(format!(
                "the sampler produced NaN/inf latents (UNet in {}); try --dtype bf16 or f32, or a \
                 lower guidance_scale",
                self.info.dtype
            )));
        }
        let z = (latents / self.vae.scaling_factor())?;
        let out = self.vae.decode(&z)?;
        if all_finite(&out)? {
            return Ok(out);
        }
        if let Some(vae32) = &self.vae_f32 {
            tracing::warn!(
                "VAE produced non-finite values in {}; decoding again in f32",
                self.info.vae_dtype
            );
            timings.vae_f32_retry = true;
            let out = vae32.decode(&z)?;
            if all_finite(&out)? {
                return Ok(out);
            }
        }
        Err(PipelineError::NonFinite(
            "the VAE produced NaN/inf pixels, also in f32".into(),
        ))
    }
}

/// Whether a tensor holds no NaN/inf: any of them makes the sum non-finite, and decoded
/// pixels and latents (|x| of order 10) are far from overflowing an f32 sum.
fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `[1, L, C]` repeated `times` along the sequence axis.
fn repeat_sequence(t: &Tensor, times: usize) -> Result<Tensor, PipelineError> {
    if times <= 1 {
        return Ok(t.clone());
    }
    Ok(Tensor::cat(&vec![t; times], 1)?)
}

/// Applies the chunks' token weights to one encoder's hidden states `[n, 77, C]` (rows
/// beyond the prompt's chunks: the empty prompt, for ComfyUI's rule), returning
/// `[chunks, 77, C]`. Done on the host in f32: the tensors are small and the arithmetic
/// then follows the reference formulas operation for operation.
///
/// * `Comfy`: `z = (z − z_empty)·w + z_empty`, only at positions with `w ≠ 1` (ComfyUI
///   `ClipTokenWeightEncoder.encode_token_weights`);
/// * `A1111`: `z·w`, then each chunk scaled so its mean over all positions and features
///   equals the unweighted mean (`EmphasisOriginal`, per encoder since A1111 runs each
///   SDXL embedder separately). A chunk whose weighted mean is 0 is left unscaled instead
///   of dividing by zero;
/// * `A1111NoNorm`: `z·w`;
/// * `Ignore`: unchanged.
pub(crate) fn apply_emphasis(
    hidden: &Tensor,
    prompt: &PromptChunks,
    emphasis: Emphasis,
) -> Result<Tensor, PipelineError> {
    let k = prompt.chunks.len();
    let z = hidden.to_device(&Device::Cpu)?.to_vec3::<f32>()?;
    let empty = z.get(k);
    let mut out = Vec::with_capacity(k);
    for (chunk, rows) in prompt.chunks.iter().zip(z.iter()) {
        let mut rows = rows.clone();
        match emphasis {
            Emphasis::Ignore => {}
            Emphasis::Comfy => {
                let empty = empty.ok_or_else(|| {
                    PipelineError::Internal("ComfyUI weighting without the empty prompt".into())
                })?;
                for ((row, e), &w) in rows.iter_mut().zip(empty).zip(&chunk.weights) {
                    if w != 1.0 {
                        for (v, &ev) in row.iter_mut().zip(e) {
                            *v = (*v - ev) * w + ev;
                        }
                    }
                }
            }
            Emphasis::A1111 | Emphasis::A1111NoNorm => {
                if chunk.is_weighted() {
                    let before = mean(&rows);
                    for (row, &w) in rows.iter_mut().zip(&chunk.weights) {
                        row.iter_mut().for_each(|v| *v *= w);
                    }
                    let after = mean(&rows);
                    let ratio = (before / after) as f32;
                    if emphasis == Emphasis::A1111 && after != 0.0 && ratio.is_finite() {
                        rows.iter_mut()
                            .for_each(|row| row.iter_mut().for_each(|v| *v *= ratio));
                    }
                }
            }
        }
        out.push(rows);
    }
    let (l, c) = (hidden.dim(1)?, hidden.dim(2)?);
    let flat: Vec<f32> = out.into_iter().flatten().flatten().collect();
    Ok(Tensor::from_vec(flat, (k, l, c), hidden.device())?)
}

/// Mean of all values, accumulated in f64.
fn mean(rows: &[Vec<f32>]) -> f64 {
    let n: usize = rows.iter().map(Vec::len).sum();
    let sum: f64 = rows.iter().flatten().map(|&v| f64::from(v)).sum();
    sum / n.max(1) as f64
}

fn all_finite(t: &Tensor) -> Result<bool, PipelineError> {
    Ok(t.sum_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?
        .is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_out_of_memory_has_its_own_error_type() {
        let oom = PipelineError::Candle(candle_core::Error::Msg(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        ));
        assert_eq!(oom.error_type(), "out_of_memory");
        let other = PipelineError::Candle(candle_core::Error::Msg("shape mismatch".into()));
        assert_eq!(other.error_type(), "generation_error");
    }
}
