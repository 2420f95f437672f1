//! Model fetcher: `models.toml`, Civitai / Hugging Face / URL downloads into a verified,
//! resumable, content-addressed cache, and the cold-start prefetch that makes every entry
//! local before the worker loads it.
//!
//! Entry point: [`prefetch`] with [`FetchArgs`] and a [`Manifest`].

pub mod air;
pub mod cache;
pub mod civitai;
pub mod download;
pub mod error;
pub(crate) mod hf;
pub(crate) mod http;
pub mod manifest;
pub mod names;
mod part;
pub mod progress;
pub mod resolve;
pub(crate) mod segmented;
mod sources;
mod verify;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use thiserror::Error;
use tracing::Instrument;

pub use air::{Air, AirError};
pub use cache::{Cache, CivitaiInfo, Sidecar};
pub use civitai::CivitaiClient;
pub use error::EntryError;
pub use manifest::{FileChoice, Manifest, ManifestEntry, ManifestError, ModelKind, Source};
pub use progress::ProgressMode;

use progress::{human_bytes, ProgressHub};
use sources::{fetch_entry, Ctx, Fetched};

/// A secret from the command line or environment. `Debug`/`Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> Self {
        SecretString(s.into())
    }
    /// The raw value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl std::str::FromStr for SecretString {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretString(s.trim().to_string()))
    }
}

/// Flags of the model fetcher.
#[derive(Clone, Args)]
pub struct FetchArgs {
    /// Path of the model manifest (`[[checkpoint]]`, `[[lora]]`, `[vae]`).
    #[arg(long = "models", env = "MODELS_TOML", default_value = "models.toml")]
    pub models: PathBuf,
    /// Model cache directory. Default: `/runpod-volume/sdxl-worker` when a RunPod network
    /// volume is mounted (shared by all workers), else `./.cache/sdxl-worker`.
    #[arg(long = "cache-dir", env = "MODEL_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Download every model in the manifest, then exit (for baking images or volumes).
    #[arg(long = "prefetch-only", env = "PREFETCH_ONLY", default_value_t = false)]
    pub prefetch_only: bool,
    /// Civitai base URL (a mirror or a test server).
    #[arg(
        long = "civitai-base-url",
        env = "CIVITAI_BASE_URL",
        default_value = "https://civitai.com"
    )]
    pub civitai_base_url: url::Url,
    /// Civitai API key, sent as `Authorization: Bearer` to Civitai only.
    #[arg(long = "civitai-token", env = "CIVITAI_TOKEN", hide_env_values = true)]
    pub civitai_token: Option<SecretString>,
    /// How many files download at once.
    #[arg(long = "download-concurrency", env = "DOWNLOAD_CONCURRENCY", default_value_t = 4,
          value_parser = parse_concurrency)]
    pub download_concurrency: usize,
    /// Retries per file for dropped connections, 429 and 5xx (with exponential backoff).
    #[arg(
        long = "download-retries",
        env = "DOWNLOAD_RETRIES",
        default_value_t = 6
    )]
    pub download_retries: u32,
    /// Connections per large file (byte ranges fetched in parallel; 1 = a single stream).
    #[arg(long = "download-connections", env = "DOWNLOAD_CONNECTIONS", default_value_t = 8,
          value_parser = parse_connections)]
    pub download_connections: usize,
}

fn parse_connections(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=32).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a number from 1 to 32")),
    }
}

fn parse_concurrency(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a number from 1 to 64")),
    }
}

impl fmt::Debug for FetchArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchArgs")
            .field("models", &self.models)
            .field("cache_dir", &self.cache_dir)
            .field("prefetch_only", &self.prefetch_only)
            .field("civitai_base_url", &self.civitai_base_url.as_str())
            .field(
                "civitai_token",
                &self.civitai_token.as_ref().map(|_| "<redacted>"),
            )
            .field("download_concurrency", &self.download_concurrency)
            .field("download_connections", &self.download_connections)
            .field("download_retries", &self.download_retries)
            .finish()
    }
}

impl FetchArgs {
    /// Defaults for embedding and tests (what the CLI gives with no flags, minus env vars).
    pub fn new(models: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        FetchArgs {
            models: models.into(),
            cache_dir: Some(cache_dir.into()),
            prefetch_only: false,
            civitai_base_url: url::Url::parse("https://civitai.com").expect("static URL"),
            civitai_token: None,
            download_concurrency: 4,
            download_connections: 8,
            download_retries: 6,
        }
    }

    /// The cache directory in effect.
    pub fn cache_dir(&self) -> PathBuf {
        match &self.cache_dir {
            Some(d) => d.clone(),
            None if Path::new("/runpod-volume").is_dir() => {
                PathBuf::from("/runpod-volume/sdxl-worker")
            }
            None => PathBuf::from("./.cache/sdxl-worker"),
        }
    }
}

/// Knobs that are not user flags: timing of retries, progress display, and a write limit that
/// lets tests simulate a full disk without a small filesystem.
#[derive(Debug, Clone)]
pub struct PrefetchOptions {
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub max_retries: u32,
    pub progress: ProgressMode,
    /// Fail writes with `StorageFull` once a part file would exceed this many bytes.
    pub write_limit: Option<u64>,
    /// Connections per file for files of at least `segment_min_size` bytes.
    pub connections: usize,
    pub segment_min_size: u64,
    /// Ranges are not split below this size.
    pub segment_piece_min: u64,
}

impl PrefetchOptions {
    pub fn from_args(args: &FetchArgs) -> Self {
        PrefetchOptions {
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            max_retries: args.download_retries,
            progress: ProgressMode::Auto,
            write_limit: None,
            connections: args.download_connections,
            segment_min_size: 64 << 20,
            segment_piece_min: 8 << 20,
        }
    }
}

/// Civitai identity of a resolved file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CivitaiIds {
    pub model_id: u64,
    pub version_id: u64,
    pub file_id: u64,
}

/// A model file that is on local disk and verified.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResolvedModel {
    pub kind: ModelKind,
    /// Name requests use (`name` in models.toml, else the file name without extension).
    pub name: String,
    /// File to load (a verified blob in the cache, or the user's own file for `path =`).
    pub path: PathBuf,
    pub file_name: String,
    pub size: u64,
    /// Uppercase hex.
    pub sha256: String,
    /// First 10 hex digits of the SHA-256 (A1111 "Model hash").
    pub autov2: String,
    /// LoRA label hash (first 12 hex of the payload SHA-256): Civitai's value when it lists
    /// one, else computed locally. `None` for checkpoints and VAEs.
    pub autov3: Option<String>,
    pub civitai: Option<CivitaiIds>,
    /// Every hash Civitai lists for the file (empty for other sources).
    pub civitai_hashes: BTreeMap<String, String>,
    pub air: Option<String>,
    pub trigger_words: Vec<String>,
    pub base_model: Option<String>,
    /// LoRA strength when a request does not give one (1.0 unless models.toml says otherwise).
    pub default_weight: Option<f32>,
    /// Where it came from, for logs.
    pub source: String,
    /// 1-based line of the entry in models.toml.
    pub manifest_line: usize,
}

/// Everything the worker serves, in manifest order.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ResolvedModels {
    pub models: Vec<ResolvedModel>,
}

impl ResolvedModels {
    /// The first checkpoint in models.toml.
    pub fn default_checkpoint(&self) -> Option<&ResolvedModel> {
        self.checkpoints().next()
    }
    pub fn checkpoints(&self) -> impl Iterator<Item = &ResolvedModel> {
        self.models
            .iter()
            .filter(|m| m.kind == ModelKind::Checkpoint)
    }
    pub fn loras(&self) -> impl Iterator<Item = &ResolvedModel> {
        self.models.iter().filter(|m| m.kind == ModelKind::Lora)
    }
    pub fn vae(&self) -> Option<&ResolvedModel> {
        self.models.iter().find(|m| m.kind == ModelKind::Vae)
    }
    /// Case-insensitive lookup by request name.
    pub fn find(&self, kind: ModelKind, name: &str) -> Option<&ResolvedModel> {
        self.models
            .iter()
            .find(|m| m.kind == kind && m.name.eq_ignore_ascii_case(name))
    }
}

/// One failed entry.
#[derive(Debug)]
pub struct EntryFailure {
    /// e.g. `lora "detail" (civitai version 135867, models.toml:12)`.
    pub entry: String,
    pub error: EntryError,
}

/// Why the prefetch failed.
#[derive(Debug, Error)]
pub enum FetchError {
    #[error("model cache: {0}")]
    Cache(EntryError),
    #[error("{}", format_failures(.0))]
    Entries(Vec<EntryFailure>),
    #[error("two {kind} entries resolve to the name \"{name}\" (models.toml lines {first} and {second}); give one of them a `name`")]
    DuplicateName {
        kind: ModelKind,
        name: String,
        first: usize,
        second: usize,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

fn format_failures(f: &[EntryFailure]) -> String {
    let mut s = format!("{} model file(s) could not be fetched:", f.len());
    for e in f {
        s.push_str(&format!("\n  - {}: {}", e.entry, e.error));
    }
    s
}

/// Makes every manifest entry available locally; see [`prefetch_with`].
pub async fn prefetch(args: &FetchArgs, manifest: &Manifest) -> Result<ResolvedModels, FetchError> {
    prefetch_with(args, manifest, &PrefetchOptions::from_args(args)).await
}

/// Fetches all entries concurrently (at most `download_concurrency` at once), verifies them and
/// returns them in manifest order. Any failed entry fails the whole prefetch; the error lists
/// every failed entry.
pub async fn prefetch_with(
    args: &FetchArgs,
    manifest: &Manifest,
    opts: &PrefetchOptions,
) -> Result<ResolvedModels, FetchError> {
    let span = tracing::info_span!("prefetch", entries = manifest.entries.len());
    prefetch_inner(args, manifest, opts).instrument(span).await
}

async fn prefetch_inner(
    args: &FetchArgs,
    manifest: &Manifest,
    opts: &PrefetchOptions,
) -> Result<ResolvedModels, FetchError> {
    let started = Instant::now();
    let cache = Cache::open(args.cache_dir()).map_err(FetchError::Cache)?;
    let http::Clients { api, data } = http::clients()?;
    let ctx = Arc::new(Ctx {
        cache,
        civitai: CivitaiClient::new(
            api,
            args.civitai_base_url.clone(),
            // RunPod templates often pass an unset secret as an empty string: treat it as none.
            args.civitai_token
                .clone()
                .filter(|t| !t.expose().trim().is_empty()),
            opts.clone(),
        ),
        data,
        opts: opts.clone(),
        hub: ProgressHub::new(opts.progress),
    });
    tracing::info!(
        cache = %ctx.cache.root().display(),
        entries = manifest.entries.len(),
        "fetching models"
    );
    let semaphore = Arc::new(tokio::sync::Semaphore::new(
        args.download_concurrency.max(1),
    ));
    let manifest_name = manifest.display_name();
    let mut tasks = Vec::new();
    for entry in manifest.entries.iter().cloned() {
        let ctx = ctx.clone();
        let semaphore = semaphore.clone();
        let label = entry.describe(&manifest_name);
        let span = tracing::info_span!("model", kind = %entry.kind, line = entry.line);
        tasks.push(tokio::spawn(
            async move {
                let _permit = semaphore.acquire_owned().await;
                let t0 = Instant::now();
                let result = fetch_entry(&ctx, &entry, &label).await;
                (entry, label, result, t0.elapsed())
            }
            .instrument(span),
        ));
    }
    let mut resolved = Vec::new();
    let mut failures = Vec::new();
    let (mut downloaded_bytes, mut downloaded_files, mut cached_files) = (0u64, 0usize, 0usize);
    for task in tasks {
        let (entry, label, result, elapsed) = match task.await {
            Ok(v) => v,
            Err(e) => {
                failures.push(EntryFailure {
                    entry: "a model entry".into(),
                    error: EntryError::BadMetadata(format!("fetch task panicked: {e}")),
                });
                continue;
            }
        };
        match result {
            Ok(f) => {
                if f.cached {
                    cached_files += 1;
                } else {
                    downloaded_files += 1;
                }
                downloaded_bytes += f.transferred;
                tracing::debug!(entry = %label, ms = elapsed.as_millis() as u64, "entry ready");
                resolved.push(to_resolved(&entry, f));
            }
            Err(error) => {
                tracing::error!(entry = %label, error = %error, "model fetch failed");
                failures.push(EntryFailure {
                    entry: label,
                    error,
                });
            }
        }
    }
    if !failures.is_empty() {
        return Err(FetchError::Entries(failures));
    }
    let mut seen: HashMap<(ModelKind, String), usize> = HashMap::new();
    for m in &resolved {
        if let Some(first) = seen.insert((m.kind, m.name.to_lowercase()), m.manifest_line) {
            return Err(FetchError::DuplicateName {
                kind: m.kind,
                name: m.name.clone(),
                first,
                second: m.manifest_line,
            });
        }
    }
    for m in &resolved {
        if m.path.starts_with(ctx.cache.root()) {
            ctx.cache.link_name(m.kind, &m.name, &m.sha256);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        "models ready: {} file(s) ({} downloaded, {} from cache), {} transferred in {:.1}s ({}/s)",
        resolved.len(),
        downloaded_files,
        cached_files,
        human_bytes(downloaded_bytes),
        secs,
        human_bytes((downloaded_bytes as f64 / secs.max(1e-3)) as u64)
    );
    Ok(ResolvedModels { models: resolved })
}

fn to_resolved(entry: &ManifestEntry, f: Fetched) -> ResolvedModel {
    let s = f.sidecar;
    let civ = s.civitai.clone();
    let name = entry
        .name
        .clone()
        .unwrap_or_else(|| names::stem(&names::sanitize_file_name(&s.file_name)));
    let civitai_hashes = civ.as_ref().map(|c| c.hashes.clone()).unwrap_or_default();
    let autov3 = if entry.kind == ModelKind::Lora {
        civitai_hashes
            .get("AutoV3")
            .cloned()
            .or_else(|| s.autov3.clone())
    } else {
        None
    };
    ResolvedModel {
        kind: entry.kind,
        name,
        path: f.path,
        file_name: s.file_name.clone(),
        size: s.size,
        autov2: s.sha256[..10.min(s.sha256.len())].to_string(),
        sha256: s.sha256.clone(),
        autov3,
        civitai: civ.as_ref().map(|c| CivitaiIds {
            model_id: c.model_id,
            version_id: c.version_id,
            file_id: c.file_id,
        }),
        civitai_hashes,
        air: civ.as_ref().and_then(|c| c.air.clone()),
        trigger_words: civ
            .as_ref()
            .map(|c| c.trained_words.clone())
            .unwrap_or_default(),
        base_model: civ.as_ref().and_then(|c| c.base_model.clone()),
        default_weight: (entry.kind == ModelKind::Lora).then(|| entry.weight.unwrap_or(1.0)),
        source: s.source,
        manifest_line: entry.line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        fetch: FetchArgs,
    }

    #[test]
    fn flags_parse_and_token_is_redacted() {
        let cli = Cli::try_parse_from([
            "x",
            "--civitai-token",
            " 0123456789abcdef0123456789abcdef ",
            "--cache-dir",
            "/tmp/c",
            "--download-concurrency",
            "8",
            "--prefetch-only",
        ])
        .unwrap();
        let f = &cli.fetch;
        assert_eq!(
            f.civitai_token.as_ref().unwrap().expose(),
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(f.cache_dir(), PathBuf::from("/tmp/c"));
        assert_eq!(f.download_concurrency, 8);
        assert!(f.prefetch_only);
        assert_eq!(f.civitai_base_url.as_str(), "https://civitai.com/");
        let debug = format!("{cli:?}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
        assert!(debug.contains("<redacted>"));
        assert!(Cli::try_parse_from(["x", "--download-concurrency", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--civitai-base-url", "not a url"]).is_err());
    }

    #[test]
    fn default_cache_dir_without_a_network_volume() {
        let args = FetchArgs {
            cache_dir: None,
            ..FetchArgs::new("models.toml", "unused")
        };
        let expected = if Path::new("/runpod-volume").is_dir() {
            "/runpod-volume/sdxl-worker"
        } else {
            "./.cache/sdxl-worker"
        };
        assert_eq!(args.cache_dir(), PathBuf::from(expected));
    }
}
