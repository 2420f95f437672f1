//! The SDXL pipeline: prompt encoding, sampling loop, VAE decode, and the engine thread that
//! owns the device. Text-to-image follows diffusers' `StableDiffusionXLPipeline` step for step
//! (see docs/parity.md for how that is checked).
//!
//! [`SdxlPipeline`] is the loaded models with one synchronous `generate`; its methods are
//! spread over one file per stage:
//!
//! - `request.rs`: [`GenerateRequest`] and [`GenerateOutput`], the limits of a request;
//! - `error.rs`: [`PipelineError`];
//! - `load.rs`: [`PipelineConfig`] → [`SdxlPipeline::load`];
//! - `conditioning.rs`: prompts → [`Conditioning`] ([`SdxlPipeline::encode`]);
//! - `denoise.rs`: the sampler loop ([`SdxlPipeline::denoise`], [`DenoiseFrom`]);
//! - `decode.rs`: latents → pixels ([`SdxlPipeline::decode`]);
//! - `generate.rs`: one request end to end, LoRA switch included;
//! - `img2img.rs`: img2img and the hires fix; `image.rs`: tensors ↔ 8-bit images.
//!
//! Around it: [`Engine`] / [`EngineHandle`] (engine.rs), the pipeline on its own OS thread,
//! driven from async code over a channel; `bench`, the `sdxl-worker bench` subcommand.

pub mod bench;
mod conditioning;
mod decode;
mod denoise;
pub mod engine;
mod error;
mod generate;
pub mod image;
pub mod img2img;
mod load;
mod request;

pub use conditioning::Conditioning;
pub use denoise::DenoiseFrom;
pub use engine::{Engine, EngineError, EngineHandle};
pub use error::PipelineError;
pub use load::{LoadInfo, PipelineConfig, SdxlPipeline, WeightsSource};
pub use request::{
    GenerateOutput, GenerateRequest, HiresFix, InitImage, Progress, Timings, Variation, MAX_IMAGES,
    MAX_SIDE, MAX_STEPS,
};

use candle_core::{DType, Device};
use clap::{Args, ValueEnum};

/// Flags of the inference engine.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Compute device: `auto` (the GPU when built with CUDA and one is present, else CPU),
    /// `cpu`, or `cuda:N`.
    #[arg(long, env = "DEVICE", default_value = "auto", global = true)]
    pub device: String,
    /// Weight and activation dtype of the text encoders and the UNet: `auto` (f16 on a GPU,
    /// f32 on the CPU), `f32`, `f16` or `bf16`. Sampler math is always f32.
    #[arg(long, env = "DTYPE", value_enum, default_value_t = DTypeArg::Auto, global = true)]
    pub dtype: DTypeArg,
    /// VAE dtype: `auto` (bf16 on a GPU, f32 on the CPU), `f32`, `f16` or `bf16`. The SDXL
    /// VAE overflows in f16; any decode that yields NaN/inf in a half type is redone in f32.
    #[arg(long, env = "VAE_DTYPE", value_enum, default_value_t = DTypeArg::Auto, global = true)]
    pub vae_dtype: DTypeArg,
    /// Keep the original value of every weight a LoRA patches in device memory (`true`), or
    /// re-read it from the checkpoint file at each switch (`false`). Unset: keep on a GPU,
    /// where it saves a host-to-device copy per switch, re-read on the CPU.
    #[arg(long, env = "LORA_KEEP_ORIGINALS", global = true)]
    pub lora_keep_originals: Option<bool>,
}

impl Default for EngineArgs {
    fn default() -> Self {
        Self {
            device: "auto".into(),
            dtype: DTypeArg::Auto,
            vae_dtype: DTypeArg::Auto,
            lora_keep_originals: None,
        }
    }
}

/// A dtype choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    Auto,
    F32,
    F16,
    Bf16,
}

/// Where the models run, parsed from `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = PipelineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" | "" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    PipelineError::Config(format!(
                        "--device/DEVICE `{s}` is not valid; use `auto`, `cpu` or `cuda:N`"
                    ))
                }),
        }
    }
}

impl DeviceSpec {
    /// Opens the device. `auto` falls back to the CPU when no GPU can be opened (or the
    /// binary was built without the `cuda` feature); an explicit `cuda:N` that fails is an error.
    pub fn open(self) -> Result<Device, PipelineError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => Device::new_cuda(n).map_err(|e| {
                PipelineError::Config(format!(
                    "cannot open cuda:{n}: {e}{}",
                    if cfg!(feature = "cuda") {
                        ""
                    } else {
                        " (this binary was built without the `cuda` feature)"
                    }
                ))
            }),
            Self::Auto => {
                if cfg!(feature = "cuda") {
                    match Device::new_cuda(0) {
                        Ok(d) => return Ok(d),
                        Err(e) => tracing::warn!(error = %e, "no usable GPU, running on the CPU"),
                    }
                }
                Ok(Device::Cpu)
            }
        }
    }
}

impl DTypeArg {
    /// The model dtype for `device`.
    pub fn model_dtype(self, device: &Device) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
            Self::Auto if device.is_cpu() => DType::F32,
            Self::Auto => DType::F16,
        }
    }

    /// The VAE dtype for `device`: bf16 by default on a GPU, where f16 overflows in the
    /// SDXL VAE (its activations overflow, giving NaN or black images), and f32 on the CPU.
    pub fn vae_dtype(self, device: &Device) -> DType {
        match self {
            Self::Auto if device.is_cpu() => DType::F32,
            Self::Auto => DType::BF16,
            other => other.model_dtype(device),
        }
    }
}

pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "other",
    }
}

pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => match d.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cuda".into(),
        },
        Device::Metal(_) => "metal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_dtype_parsing() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        let e = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(e.contains("cuda:N"), "{e}");
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        let cpu = Device::Cpu;
        assert_eq!(DTypeArg::Auto.model_dtype(&cpu), DType::F32);
        assert_eq!(DTypeArg::Auto.vae_dtype(&cpu), DType::F32);
        assert_eq!(DTypeArg::Bf16.vae_dtype(&cpu), DType::BF16);
        #[cfg(not(feature = "cuda"))]
        {
            assert!(DeviceSpec::Auto.open().unwrap().is_cpu());
            assert!(DeviceSpec::Cuda(0).open().is_err());
        }
    }
}
