//! Hugging Face source through `hf-hub` (tokio API). `hf-hub` downloads into its own cache
//! (`HF_HOME`, or `<cache-dir>/hf` when unset so it lands on the same volume); we then verify
//! the file and hard-link it into our content-addressed store.

use std::path::PathBuf;

use hf_hub::api::tokio::ApiBuilder;
use hf_hub::{Repo, RepoType};

use super::error::EntryError;

/// Downloads (or finds in the HF cache) one file and returns its path in the HF cache.
pub(crate) async fn fetch_file(
    repo: &str,
    file: &str,
    revision: Option<&str>,
    cache_root: &std::path::Path,
) -> Result<PathBuf, EntryError> {
    let mut builder = if std::env::var_os("HF_HOME").is_some() {
        ApiBuilder::from_env()
    } else {
        let mut b = ApiBuilder::from_cache(hf_hub::Cache::new(cache_root.join("hf")));
        if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
            b = b.with_endpoint(endpoint);
        }
        b
    };
    // hf-hub 0.4 reads the token file under HF_HOME but not the HF_TOKEN variable.
    if let Ok(token) = std::env::var("HF_TOKEN") {
        if !token.trim().is_empty() {
            builder = builder.with_token(Some(token.trim().to_string()));
        }
    }
    let api = builder
        .with_progress(false)
        .with_user_agent("sdxl-worker", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| EntryError::HuggingFace(format!("cannot set up the client: {e}")))?;
    let repo_handle = Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.unwrap_or("main").to_string(),
    );
    api.repo(repo_handle).get(file).await.map_err(|e| {
        let text = e.to_string();
        let hint = if text.contains("401") || text.contains("403") {
            " (gated or private repository: accept its terms on huggingface.co and set HF_TOKEN)"
        } else if text.contains("404") {
            " (check `hf`, `file` and `revision`)"
        } else {
            ""
        };
        EntryError::HuggingFace(format!("{repo}/{file}: {text}{hint}"))
    })
}
