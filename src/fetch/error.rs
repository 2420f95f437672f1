//! Errors of the fetcher. Messages say what to do next (set a token, pick another file, free
//! disk) because they end up in RunPod's worker log, read by someone who did not write the code.
//! No variant carries a token or a full presigned URL.

use std::path::PathBuf;

use reqwest::{Response, StatusCode};
use thiserror::Error;

use super::http::{body_snippet, content_type};
use super::names::redact_url_str;

const TOKEN_HELP: &str = "create an API key at https://civitai.com/user/account (API Keys) and set it in the CIVITAI_TOKEN environment variable (or --civitai-token)";

/// Why one manifest entry could not be made available.
#[derive(Debug, Error)]
pub enum EntryError {
    #[error(
        "Civitai requires an API token to download this file (HTTP 401: {message}); {TOKEN_HELP}"
    )]
    TokenMissing { message: String },
    #[error("Civitai did not accept CIVITAI_TOKEN (HTTP {status}: {message}); the key may be mistyped, expired or revoked — {TOKEN_HELP}")]
    TokenRejected { status: u16, message: String },
    #[error("this Civitai version is in Early Access{}: buy access on civitai.com with the account that owns CIVITAI_TOKEN, or wait until it is public", .deadline.as_ref().map(|d| format!(" until {d}")).unwrap_or_default())]
    EarlyAccess { deadline: Option<String> },
    #[error("the creator of this Civitai version disabled downloads (usage control `{usage}`); it can only be used in Civitai's generator — pick another version")]
    GenerationOnly { usage: String },
    #[error("Civitai refused the download (HTTP 403: {message})")]
    Forbidden { message: String },
    #[error("not found: {what}")]
    NotFound { what: String },
    #[error("the Civitai model is archived and no longer downloadable (HTTP 410)")]
    Archived,
    #[error("Civitai download quota exceeded (HTTP 429: {message}); gave up after {attempts} attempts — try again later or use a sha256-pinned cache on a network volume")]
    Quota { message: String, attempts: u32 },
    #[error("{server} kept answering HTTP {status} after {attempts} attempts: {message}")]
    Unavailable {
        server: String,
        status: u16,
        message: String,
        attempts: u32,
    },
    #[error("HTTP {status} from {url}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("the server sent {what} instead of a model file (first bytes: {snippet:?}); nothing was saved")]
    NotAModel { what: String, snippet: String },
    #[error("{0}")]
    Pickle(String),
    #[error("Civitai marks file `{file}` as {scan} by its {scanner} scan; refusing to load it")]
    Unsafe {
        file: String,
        scanner: &'static str,
        scan: String,
    },
    #[error("no file of this Civitai version matches {wanted}; available: {available}")]
    NoMatchingFile { wanted: String, available: String },
    #[error("SHA-256 mismatch: expected {expected}, got {actual}; the download was discarded")]
    HashMismatch { expected: String, actual: String },
    #[error("models.toml pins sha256 {pinned} but Civitai lists {listed} for file {file_id}; the version's file was replaced — update the pin after checking the new file")]
    PinMismatch {
        pinned: String,
        listed: String,
        file_id: u64,
    },
    #[error("size mismatch: expected {expected} bytes, got {actual}; the download was discarded")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("disk full at {path}: need {needed} bytes, {available} available; free space or point --cache-dir / MODEL_CACHE_DIR at a larger volume")]
    DiskFull {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("permission denied writing {path}; make the cache directory writable or choose another with --cache-dir / MODEL_CACHE_DIR")]
    Permission { path: PathBuf },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network error talking to {url}: {message}")]
    Network { url: String, message: String },
    #[error(
        "the connection kept dropping ({attempts} attempts, last at byte {offset}): {message}"
    )]
    Interrupted {
        attempts: u32,
        offset: u64,
        message: String,
    },
    #[error("unexpected response from Civitai: {0}")]
    BadMetadata(String),
    #[error("Hugging Face: {0}")]
    HuggingFace(String),
    #[error("local file {path}: {message}")]
    Local { path: PathBuf, message: String },
}

impl EntryError {
    /// Maps an I/O error on a cache path to the clearest variant (disk full, permission).
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if is_disk_full(&source) {
            let available = path
                .parent()
                .and_then(|p| fs4::available_space(p).ok())
                .unwrap_or(0);
            return EntryError::DiskFull {
                path,
                needed: 0,
                available,
            };
        }
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            return EntryError::Permission { path };
        }
        EntryError::Io {
            action,
            path,
            source,
        }
    }

    /// A download answered with a textual document (see `http::is_textual`): its content type
    /// and first bytes, so the log shows what the server said.
    pub(crate) async fn textual_body(resp: Response) -> Self {
        let ct = content_type(&resp).to_string();
        let snippet = body_snippet(resp, 200).await;
        EntryError::NotAModel {
            what: format!("a {ct} document"),
            snippet,
        }
    }

    /// A storage host or plain URL that kept answering 429/5xx.
    pub(crate) fn unavailable(
        url: &str,
        status: StatusCode,
        message: String,
        attempts: u32,
    ) -> Self {
        EntryError::Unavailable {
            server: redact_url_str(url),
            status: status.as_u16(),
            message,
            attempts,
        }
    }

    /// A storage host or plain URL that answered a status the downloaders cannot work with:
    /// 404 names the missing file; anything else carries the body's first bytes.
    pub(crate) async fn rejected(url: &str, resp: Response) -> Self {
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return EntryError::NotFound {
                what: format!("{} (HTTP 404)", redact_url_str(url)),
            };
        }
        EntryError::Status {
            url: redact_url_str(url),
            status: status.as_u16(),
            message: body_snippet(resp, 300).await,
        }
    }

    /// Transient failures worth retrying with backoff.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EntryError::Network { .. } | EntryError::Unavailable { .. }
        )
    }
}

/// ENOSPC / EDQUOT, or the portable `StorageFull` kind.
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28) | Some(122))
}

/// Network error text without the URL; it lives with the rest of the HTTP policy and is
/// re-exported here for the image-input fetcher.
pub(crate) use super::http::net_message;
