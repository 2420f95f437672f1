//! Civitai client: version metadata, file choice, and download resolution. The API's
//! behaviour this relies on is described in docs/civitai.md (*Version metadata*, *Choosing a
//! file*, *Download redirect*, *Tokens*).
//!
//! Redirects are never followed automatically here: the download endpoint answers 307 to a
//! presigned storage URL, and our `Authorization: Bearer` header must reach Civitai only (R2/B2
//! reject requests that carry it, and it would leak the key). The storage URL is fetched by the
//! downloader with a client that never has credentials.

use std::collections::BTreeMap;

use reqwest::header::LOCATION;
use reqwest::StatusCode;
use serde::Deserialize;

use super::cache::now_unix;
use super::error::EntryError;
use super::http::{self, body_snippet, net_message, Busy, Retry};
use super::manifest::FileChoice;
use super::resolve::{presigned_expiry, ResolvedUrl, Resolver};
use super::{PrefetchOptions, SecretString};

/// The User-Agent sent to Civitai (and every other host); see docs/civitai.md, *User agent*.
pub use super::http::USER_AGENT_VALUE;

/// `GET /api/v1/model-versions/{id}`, tolerant of Civitai's shifting shapes (unknown fields
/// ignored, nulls accepted).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub id: u64,
    pub model_id: u64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub base_model: Option<String>,
    #[serde(default)]
    pub trained_words: Option<Vec<String>>,
    #[serde(default)]
    pub air: Option<String>,
    #[serde(default)]
    pub usage_control: Option<String>,
    #[serde(default)]
    pub model: Option<ModelRef>,
    #[serde(default)]
    pub files: Option<Vec<FileInfo>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelRef {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// One entry of `files[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileInfo {
    pub id: u64,
    #[serde(default, rename = "sizeKB")]
    pub size_kb: Option<f64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub pickle_scan_result: Option<String>,
    #[serde(default)]
    pub virus_scan_result: Option<String>,
    #[serde(default)]
    pub metadata: Option<FileMeta>,
    #[serde(default)]
    pub hashes: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    pub primary: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct FileMeta {
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub fp: Option<String>,
}

impl FileInfo {
    /// Approximate byte count: `sizeKB` is bytes / 1024 as a float (see docs/civitai.md,
    /// *Size fields*).
    pub fn approx_size_bytes(&self) -> Option<u64> {
        self.size_kb
            .filter(|k| k.is_finite() && *k > 0.0)
            .map(|k| (k * 1024.0).round() as u64)
    }

    /// Exact byte count, only when `sizeKB * 1024` is (within float noise) an integer. Some
    /// listed values are rounded to two decimals, and the SHA-256 is the authority anyway, so a
    /// rounded size must not fail a correct download.
    pub fn size_bytes(&self) -> Option<u64> {
        let k = self.size_kb.filter(|k| k.is_finite() && *k > 0.0)?;
        let bytes = k * 1024.0;
        ((bytes - bytes.round()).abs() < 1e-3).then(|| bytes.round() as u64)
    }

    pub fn hashes(&self) -> BTreeMap<String, String> {
        self.hashes
            .iter()
            .flatten()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.to_ascii_uppercase())))
            .collect()
    }

    pub fn sha256(&self) -> Option<String> {
        self.hashes()
            .into_iter()
            .find(|(k, v)| k.eq_ignore_ascii_case("SHA256") && v.len() == 64)
            .map(|(_, v)| v)
    }

    fn meta(&self) -> FileMeta {
        self.metadata.clone().unwrap_or_default()
    }

    fn describe(&self) -> String {
        let m = self.meta();
        let parts: Vec<String> = [m.fp, m.size, m.format, self.kind.clone()]
            .into_iter()
            .flatten()
            .collect();
        format!(
            "file_id {} \"{}\" ({})",
            self.id,
            self.name.as_deref().unwrap_or("?"),
            parts.join(" ")
        )
    }

    fn is_model_type(&self) -> bool {
        matches!(
            self.kind.as_deref(),
            None | Some("Model") | Some("Pruned Model") | Some("Diffusion Model") | Some("UNet")
        )
    }
}

/// Picks the file to download: an exact `file_id`, else the best match for `fp`/`size` among
/// safetensors model files, else Civitai's `primary` file. Refuses pickle and flagged files.
pub fn choose_file<'a>(
    v: &'a VersionInfo,
    choice: &FileChoice,
) -> Result<&'a FileInfo, EntryError> {
    let files: &[FileInfo] = v.files.as_deref().unwrap_or(&[]);
    let available = || {
        if files.is_empty() {
            "none (the version has no public files)".to_string()
        } else {
            files
                .iter()
                .map(FileInfo::describe)
                .collect::<Vec<_>>()
                .join("; ")
        }
    };
    let chosen = if let Some(id) = choice.file_id {
        files
            .iter()
            .find(|f| f.id == id)
            .ok_or_else(|| EntryError::NoMatchingFile {
                wanted: format!("file_id {id}"),
                available: available(),
            })?
    } else if choice.fp.is_some() || choice.size.is_some() {
        let matches = |f: &&FileInfo| {
            let m = f.meta();
            f.is_model_type()
                && m.format.as_deref().is_none_or(|x| x == "SafeTensor")
                && choice.fp.as_deref().is_none_or(|want| {
                    m.fp.as_deref()
                        .is_some_and(|x| x.eq_ignore_ascii_case(want))
                })
                && choice.size.as_deref().is_none_or(|want| {
                    m.size
                        .as_deref()
                        .is_some_and(|x| x.eq_ignore_ascii_case(want))
                })
        };
        let mut candidates: Vec<&FileInfo> = files.iter().filter(matches).collect();
        candidates.sort_by_key(|f| !f.primary.unwrap_or(false));
        *candidates
            .first()
            .ok_or_else(|| EntryError::NoMatchingFile {
                wanted: format!(
                    "{}{}safetensors",
                    choice
                        .fp
                        .as_deref()
                        .map(|f| format!("fp = {f}, "))
                        .unwrap_or_default(),
                    choice
                        .size
                        .as_deref()
                        .map(|s| format!("size = {s}, "))
                        .unwrap_or_default()
                ),
                available: available(),
            })?
    } else {
        // Civitai's primary file, unless it is not safetensors and another model file is.
        let safetensors = |f: &&FileInfo| {
            f.is_model_type()
                && (f.meta().format.as_deref() == Some("SafeTensor")
                    || f.name
                        .as_deref()
                        .is_some_and(|n| n.to_ascii_lowercase().ends_with(".safetensors")))
        };
        let primary = files.iter().find(|f| f.primary == Some(true));
        primary
            .filter(safetensors)
            .or_else(|| files.iter().find(safetensors))
            .or(primary)
            .or_else(|| files.iter().find(|f| f.is_model_type()))
            .ok_or_else(|| EntryError::NoMatchingFile {
                wanted: "a primary model file".into(),
                available: available(),
            })?
    };
    let name = chosen.name.clone().unwrap_or_default();
    let format = chosen.meta().format.unwrap_or_default();
    if format == "PickleTensor" || super::manifest::is_pickle_name(&name) {
        return Err(EntryError::Pickle(format!(
            "{}; available: {}",
            super::manifest::pickle_message(if name.is_empty() { "file" } else { &name }),
            available()
        )));
    }
    if !(format == "SafeTensor" || name.to_ascii_lowercase().ends_with(".safetensors")) {
        return Err(EntryError::NoMatchingFile {
            wanted: format!("a SafeTensor file (chosen file is format `{format}`)"),
            available: available(),
        });
    }
    for (scanner, result) in [
        ("pickle", &chosen.pickle_scan_result),
        ("virus", &chosen.virus_scan_result),
    ] {
        if result.as_deref() == Some("Danger") {
            return Err(EntryError::Unsafe {
                file: name.clone(),
                scanner,
                scan: "Danger".into(),
            });
        }
    }
    Ok(chosen)
}

/// Talks to the Civitai API and download endpoint.
#[derive(Clone)]
pub struct CivitaiClient {
    http: reqwest::Client,
    base: url::Url,
    token: Option<SecretString>,
    opts: PrefetchOptions,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    deadline: Option<String>,
}

fn parse_error_body(text: &str) -> ErrorBody {
    serde_json::from_str(text).unwrap_or_else(|_| ErrorBody {
        error: None,
        message: Some(text.chars().take(300).collect()),
        deadline: None,
    })
}

impl ErrorBody {
    fn text(&self) -> String {
        match (&self.error, &self.message) {
            (Some(e), Some(m)) => format!("{e}: {m}"),
            (Some(e), None) => e.clone(),
            (None, Some(m)) => m.clone(),
            (None, None) => "no message".into(),
        }
    }
}

impl CivitaiClient {
    /// `http` must not follow redirects (see module docs).
    pub fn new(
        http: reqwest::Client,
        base: url::Url,
        token: Option<SecretString>,
        opts: PrefetchOptions,
    ) -> Self {
        CivitaiClient {
            http,
            base,
            token,
            opts,
        }
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{}", self.base.as_str().trim_end_matches('/'), path)
    }

    fn request(&self, url: &str) -> reqwest::RequestBuilder {
        let req = http::get(&self.http, url);
        match &self.token {
            Some(t) => req.bearer_auth(t.expose()),
            None => req,
        }
    }

    /// Sends with backoff on network errors, 5xx and 429 (see [`http::Retry`]). A 429 that
    /// outlasts the retries is Civitai's download quota (see docs/civitai.md, *Rate limits*).
    async fn send(&self, url: &str, what: &str) -> Result<reqwest::Response, EntryError> {
        let mut retry = Retry::new(&self.opts);
        loop {
            match self.request(url).send().await {
                Ok(r) if http::is_busy(r.status()) => match http::on_busy(r, &mut retry).await {
                    Busy::GiveUp {
                        status,
                        message,
                        attempts,
                    } => {
                        let message = parse_error_body(&message).text();
                        if status == StatusCode::TOO_MANY_REQUESTS {
                            return Err(EntryError::Quota { message, attempts });
                        }
                        return Err(EntryError::Unavailable {
                            server: format!("Civitai ({what})"),
                            status: status.as_u16(),
                            message,
                            attempts,
                        });
                    }
                    Busy::Wait { status, wait } => {
                        tracing::warn!(
                            status = status.as_u16(),
                            wait_ms = wait.as_millis() as u64,
                            "Civitai {what}: backing off"
                        );
                        tokio::time::sleep(wait).await;
                    }
                },
                Ok(r) => return Ok(r),
                Err(e) => {
                    let message = net_message(e);
                    if retry.fail() {
                        return Err(EntryError::Network {
                            url: format!("Civitai ({what})"),
                            message,
                        });
                    }
                    tracing::warn!(error = %message, "Civitai {what}: request failed; retrying");
                    retry.pause(None).await;
                }
            }
        }
    }

    /// `GET /api/v1/model-versions/{id}`.
    pub async fn version(&self, id: u64) -> Result<VersionInfo, EntryError> {
        let url = self.endpoint(&format!("/api/v1/model-versions/{id}"));
        let resp = self.send(&url, "version metadata").await?;
        let status = resp.status();
        let ct = http::content_type(&resp).to_ascii_lowercase();
        let body = resp.text().await.map_err(|e| EntryError::Network {
            url: "Civitai (version metadata)".into(),
            message: net_message(e),
        })?;
        match status {
            StatusCode::OK => {
                if !ct.contains("json") && body.trim_start().starts_with('<') {
                    return Err(EntryError::BadMetadata(format!(
                        "version {id}: got an HTML page instead of JSON (Cloudflare challenge or wrong CIVITAI_BASE_URL?)"
                    )));
                }
                serde_json::from_str(&body).map_err(|e| {
                    EntryError::BadMetadata(format!("version {id}: cannot parse metadata: {e}"))
                })
            }
            StatusCode::NOT_FOUND => Err(EntryError::NotFound {
                what: format!(
                    "Civitai model version {id} ({}) — check the id (the number after ?modelVersionId= in the model page URL); unpublished, not-yet-rated and region-restricted versions also answer 404",
                    parse_error_body(&body).text()
                ),
            }),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let message = parse_error_body(&body).text();
                if self.token.is_none() {
                    Err(EntryError::TokenMissing { message })
                } else {
                    Err(EntryError::TokenRejected {
                        status: status.as_u16(),
                        message,
                    })
                }
            }
            s => Err(EntryError::Status {
                url: format!("Civitai /api/v1/model-versions/{id}"),
                status: s.as_u16(),
                message: parse_error_body(&body).text(),
            }),
        }
    }

    /// Asks the download endpoint for the presigned storage URL of one file.
    pub async fn resolve_download(
        &self,
        version_id: u64,
        file_id: u64,
    ) -> Result<ResolvedUrl, EntryError> {
        let url = self.endpoint(&format!(
            "/api/download/models/{version_id}?fileId={file_id}"
        ));
        let resp = self.send(&url, "download").await?;
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if location.contains("/login") || location.contains("reason=download-auth") {
                let message = "redirected to the login page".to_string();
                return Err(if self.token.is_none() {
                    EntryError::TokenMissing { message }
                } else {
                    EntryError::TokenRejected {
                        status: 401,
                        message,
                    }
                });
            }
            if location.starts_with("/model-versions/") {
                return Err(EntryError::EarlyAccess { deadline: None });
            }
            let target = self.base.join(&location).map_err(|_| {
                EntryError::BadMetadata(format!(
                    "download redirect to an invalid location (HTTP {status})"
                ))
            })?;
            if target.scheme() != "https" && target.scheme() != "http" {
                return Err(EntryError::BadMetadata(format!(
                    "download redirect to unsupported scheme `{}`",
                    target.scheme()
                )));
            }
            let now = now_unix();
            tracing::debug!(storage = %super::names::redact_url(&target), "resolved Civitai download");
            return Ok(ResolvedUrl {
                expires_at: presigned_expiry(target.as_str(), now),
                url: target.into(),
            });
        }
        let text = body_snippet(resp, 2000).await;
        let body = parse_error_body(&text);
        Err(match status {
                StatusCode::UNAUTHORIZED => {
                    let msg = body.message.clone().unwrap_or_default().to_ascii_lowercase();
                    if msg.contains("disabled downloads") {
                        EntryError::GenerationOnly {
                            usage: "Generation".into(),
                        }
                    } else if self.token.is_none() {
                        EntryError::TokenMissing { message: body.text() }
                    } else {
                        EntryError::TokenRejected {
                            status: 401,
                            message: body.text(),
                        }
                    }
                }
                StatusCode::FORBIDDEN => {
                    if body.error.as_deref() == Some("Early Access") {
                        EntryError::EarlyAccess {
                            deadline: body.deadline,
                        }
                    } else if self.token.is_none() {
                        EntryError::TokenMissing { message: body.text() }
                    } else {
                        EntryError::Forbidden { message: body.text() }
                    }
                }
                StatusCode::NOT_FOUND => EntryError::NotFound {
                    what: format!(
                        "Civitai file {file_id} of version {version_id} ({}); the file may have been replaced or removed",
                        body.text()
                    ),
                },
                StatusCode::GONE => EntryError::Archived,
                StatusCode::OK => {
                    let what = if text.trim_start().starts_with('<') {
                        "an HTML page"
                    } else if text.trim_start().starts_with('{') {
                        "a JSON document"
                    } else {
                        "a body without a redirect"
                    };
                    EntryError::NotAModel {
                        what: what.into(),
                        snippet: text.chars().take(64).collect(),
                    }
                }
                s => EntryError::Status {
                    url: format!("Civitai /api/download/models/{version_id}"),
                    status: s.as_u16(),
                    message: body.text(),
                },
            })
    }
}

/// Resolves (and re-resolves on expiry) one Civitai file's storage URL.
pub(crate) struct CivitaiResolver {
    pub client: CivitaiClient,
    pub version_id: u64,
    pub file_id: u64,
}

#[async_trait::async_trait]
impl Resolver for CivitaiResolver {
    async fn resolve(&self) -> Result<ResolvedUrl, EntryError> {
        self.client
            .resolve_download(self.version_id, self.file_id)
            .await
    }
    fn can_reresolve(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(files: serde_json::Value) -> VersionInfo {
        serde_json::from_value(serde_json::json!({
            "id": 1, "modelId": 2, "trainedWords": null, "stats": {"downloadCount": null},
            "files": files
        }))
        .unwrap()
    }

    #[test]
    fn sizes_are_exact_only_when_integral() {
        let v = version(serde_json::json!([
            {"id": 1, "sizeKB": 2082667.150390625},
            {"id": 2, "sizeKB": 6775430.35}
        ]));
        let files = v.files.unwrap();
        assert_eq!(files[0].size_bytes(), Some(2132651162));
        assert_eq!(files[1].size_bytes(), None);
        assert_eq!(files[1].approx_size_bytes(), Some(6938040678));
    }

    #[test]
    fn default_choice_prefers_safetensors_over_pickle_primary() {
        let v = version(serde_json::json!([
            {"id": 1, "name": "m.ckpt", "type": "Model", "primary": true,
             "metadata": {"format": "PickleTensor", "fp": "fp16"}},
            {"id": 2, "name": "m.safetensors", "type": "Model", "primary": false,
             "metadata": {"format": "SafeTensor", "fp": "fp16"}},
            {"id": 3, "name": "vae.safetensors", "type": "VAE",
             "metadata": {"format": "SafeTensor"}}
        ]));
        assert_eq!(choose_file(&v, &FileChoice::default()).unwrap().id, 2);
        let e = choose_file(
            &v,
            &FileChoice {
                file_id: Some(1),
                ..FileChoice::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, EntryError::Pickle(_)), "{e}");
    }

    #[test]
    fn dangerous_scan_results_are_refused() {
        let v = version(serde_json::json!([
            {"id": 1, "name": "m.safetensors", "type": "Model", "primary": true,
             "pickleScanResult": "Success", "virusScanResult": "Danger",
             "metadata": {"format": "SafeTensor"}}
        ]));
        let e = choose_file(&v, &FileChoice::default()).unwrap_err();
        assert!(matches!(e, EntryError::Unsafe { .. }), "{e}");
    }
}
