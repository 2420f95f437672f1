//! What one generation request asks for ([`GenerateRequest`] and its img2img, hires and
//! variation parts) and what it returns ([`GenerateOutput`], [`Timings`], [`Progress`]).

use candle_core::Tensor;
use image::RgbImage;

use super::PipelineError;
use crate::lora::RequestedLora;
use crate::prompt::Emphasis;
use crate::sampling::{NoiseKind, SamplerKind, SdeNoise, SigmaSchedule};

/// Largest image side we accept, in pixels.
pub const MAX_SIDE: u32 = 4096;
/// Most sampler steps per image.
pub const MAX_STEPS: u32 = 500;
/// Most images per request.
pub const MAX_IMAGES: u32 = 16;

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
    /// in the prompt add to them. Applied by
    /// [`SdxlPipeline::generate_with_loras`](super::SdxlPipeline::generate_with_loras).
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
