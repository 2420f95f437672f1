//! The error type of the weights layer.

use std::path::PathBuf;

/// Errors while opening, validating or classifying a weights file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is a pickle or a PyTorch zip archive (`.ckpt`, `.pt`, `.bin`), or another
    /// non-safetensors format.
    #[error("`{path}` is not a safetensors file: it looks like {what}; only .safetensors checkpoints are loaded (pickle-based files can execute code)")]
    NotSafetensors { path: PathBuf, what: String },
    /// The file ends before the data the header describes (an interrupted download).
    #[error("`{path}` is truncated: its header describes {expected} bytes but the file has {found} bytes")]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    /// The header is malformed or inconsistent with the data section.
    #[error("`{path}` is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// A tensor that is needed has a dtype the model code cannot use.
    #[error("`{path}`: tensor `{name}` has dtype {dtype}; supported: F32, F16, BF16")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    /// A tensor that is needed is absent.
    #[error("`{path}`: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    /// The file is a valid safetensors file, but not a model this worker runs.
    #[error("`{path}` is {what}; this worker runs SDXL base-family checkpoints (SDXL 1.0, Pony, Illustrious, NoobAI, …)")]
    UnsupportedArchitecture { path: PathBuf, what: String },
}
