//! Model fetcher: `models.toml`, Civitai / Hugging Face / URL downloads into a verified,
//! resumable, content-addressed cache.

use clap::Args;

/// Flags of the model fetcher.
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// Path of the model manifest.
    #[arg(long = "models", env = "MODELS_TOML", default_value = "models.toml")]
    pub models: std::path::PathBuf,
}
