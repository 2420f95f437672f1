//! The error type of LoRA loading and switching, and the weight bound its messages quote.

use std::path::PathBuf;

/// Largest |weight| accepted for a LoRA (sliders go to ±5 in practice).
pub const MAX_LORA_WEIGHT: f64 = 20.0;

/// Errors of loading or applying LoRAs. Every variant names the LoRA or the key.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// The file cannot be opened or is not a valid safetensors file.
    #[error("LoRA file: {0}")]
    Weights(#[from] crate::weights::WeightsError),
    /// The file is readable but a module is malformed.
    #[error("LoRA `{name}` (`{path}`): {reason}")]
    Format {
        name: String,
        path: PathBuf,
        reason: String,
    },
    /// The LoRA was made for another model (SD 1.5, SD 2, Flux, …).
    #[error("LoRA `{name}` (`{path}`) does not fit this SDXL checkpoint: {reason}")]
    WrongArchitecture {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("unknown LoRA `{name}`; available LoRAs: {available}")]
    UnknownName { name: String, available: String },
    #[error("LoRA `{0}` is listed twice in models.toml")]
    DuplicateName(String),
    #[error("LoRA `{name}`: {field} {value} is not allowed: use a number from -{max} to {max}", max = MAX_LORA_WEIGHT)]
    BadWeight {
        name: String,
        field: String,
        value: f64,
    },
    #[error("applying LoRAs to `{key}`: {source}")]
    Apply {
        key: String,
        #[source]
        source: candle_core::Error,
    },
    /// A malformed `<lora:…>` prompt tag.
    #[error("{0}")]
    Prompt(String),
    #[error("{0}")]
    Internal(String),
}
