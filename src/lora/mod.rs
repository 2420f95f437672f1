//! LoRAs: every Civitai format, resolved against the checkpoint's own keys, merged into the
//! resident weights per request and switched exactly (formats.md §3, issue 5).
//!
//! - [`LoraLibrary`] (library.rs): the `models.toml` LoRAs, loaded once at start; each file's
//!   modules resolved by a reverse index of checkpoint keys (names.rs), classified
//!   (format.rs) and checked against the checkpoint's shapes.
//! - [`WeightStore`] (store.rs): device tensors the models are built from; a LoRA switch
//!   replaces entries and the models are rebuilt from it (`Arc` clones only).
//! - [`LoraState`] (state.rs): which LoRA set is merged; a switch recomputes only the keys
//!   whose set changed, from the original weights (no drift).
//! - [`extract_prompt_loras`] (prompt.rs): A1111 `<lora:name:weight>` tags.

pub mod format;
pub mod library;
pub mod math;
pub mod names;
pub mod prompt;
pub mod runtime;
pub mod state;
pub mod store;

pub use library::{
    ActiveLora, LoadStats, LoraEntry, LoraFile, LoraLibrary, Patch, MAX_LORA_WEIGHT,
};
pub use names::{Component, NameIndex, Target};
pub use prompt::{extract_prompt_loras, PromptLora, PromptTagError};
pub use runtime::{LoraRuntime, Prepared, RequestedLora};
pub use state::{LoraState, SwitchStats};
pub use store::WeightStore;

use std::path::PathBuf;

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

impl LoraError {
    /// A stable machine-readable category for job error responses.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::UnknownName { .. } | Self::BadWeight { .. } | Self::Prompt(_) => "invalid_input",
            Self::Weights(_)
            | Self::Format { .. }
            | Self::WrongArchitecture { .. }
            | Self::DuplicateName(_) => "lora_load_error",
            Self::Apply { .. } | Self::Internal(_) => "generation_error",
        }
    }
}
