//! What can go wrong while loading or running the pipeline, in the engine's own terms (the
//! job API's `error_type` of each is decided in `handler/`).

use std::path::PathBuf;

use crate::lora::LoraError;
use crate::model::ModelError;
use crate::sampling::SamplingError;
use crate::weights::WeightsError;

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
    /// Whether this is the device running out of memory (CUDA reports
    /// `CUDA_ERROR_OUT_OF_MEMORY` through candle) rather than a fault of the job.
    pub fn is_out_of_memory(&self) -> bool {
        let message = match self {
            Self::Candle(e) => e.to_string(),
            Self::Compute(e) => e.to_string(),
            _ => return false,
        };
        let m = message.to_ascii_lowercase();
        m.contains("out_of_memory") || m.contains("out of memory")
    }
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
