//! Loading: the checkpoint (or synthetic weights) → text encoders, UNet and VAE on the
//! device, checked against each other so a bad file fails at load rather than on a job.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::{device_name, dtype_name, DTypeArg, DeviceSpec, EngineArgs, PipelineError};
use crate::lora::{LoraEntry, LoraLibrary, LoraRuntime};
use crate::model::clip::{ClipKind, ClipTextConfig, ClipTextModel};
use crate::model::unet::{UNet, UNetConfig, TIME_ID_DIM};
use crate::model::vae::{Vae, VaeConfig};
use crate::model::vae_names::vae_name_map;
use crate::model::{ModelError, ShapeMap};
use crate::prompt::ClipTokenizers;
use crate::sampling::{self, ScheduleConfig};
use crate::weights::layout::{sdxl_layout, SdxlDims};
use crate::weights::{detect, synthetic, Architecture, Checkpoint, Family, Prediction, StDtype};

pub(super) const UNET_PREFIX: &str = "model.diffusion_model";
pub(super) const TE1_PREFIX: &str = "conditioner.embedders.0.transformer";
pub(super) const TE2_PREFIX: &str = "conditioner.embedders.1.model";
pub(super) const VAE_PREFIX: &str = "first_stage_model";

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

/// The loaded SDXL models on one device.
pub struct SdxlPipeline {
    pub(super) tokenizers: ClipTokenizers,
    pub(super) te1: ClipTextModel,
    pub(super) te2: ClipTextModel,
    pub(super) unet: UNet,
    /// Configurations to rebuild the text encoders and UNet after a LoRA switch.
    pub(super) te1_cfg: ClipTextConfig,
    pub(super) te2_cfg: ClipTextConfig,
    pub(super) unet_cfg: UNetConfig,
    /// LoRA library, merged set and the resident weights the models are built from; `None`
    /// for synthetic weights.
    pub(super) loras: Option<LoraRuntime>,
    pub(super) vae: Vae,
    /// An f32 copy of the VAE when `vae` is half precision, for the NaN retry.
    pub(super) vae_f32: Option<Vae>,
    pub(super) arch: Architecture,
    pub(super) device: Device,
    pub(super) info: LoadInfo,
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
    with_f32_copy(dtype, |dt| {
        Vae::load(names.ldm_view(file.var_builder(dt, device)), &vae_cfg)
    })
    .map_err(model_err)
}

/// A VAE loaded in `dtype`, plus an f32 copy for the NaN retry when `dtype` is half
/// precision.
fn with_f32_copy(
    dtype: DType,
    load: impl Fn(DType) -> Result<Vae, ModelError>,
) -> Result<(Vae, Option<Vae>), ModelError> {
    let vae = load(dtype)?;
    let vae_f32 = if dtype == DType::F32 {
        None
    } else {
        Some(load(DType::F32)?)
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
                with_f32_copy(vae_dtype, |dt| {
                    Vae::load(source.vb(dt, &device).pp(VAE_PREFIX), &vae_cfg)
                })
                .map_err(model_err)?
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
}
