//! S3-compatible object storage for result images: with `BUCKET_*` set, each image is PUT to
//! the bucket and the job returns presigned GET URLs instead of base64 (RunPod results are
//! limited to about 20 MB).
//!
//! Requests are signed with `rusty-s3` (query-string SigV4, no I/O of its own) and sent with
//! our `reqwest` client. Signed URLs carry the access key id and a signature, so they are
//! never logged and never appear in errors: errors name the endpoint host, bucket, key and
//! the server's status and error code only.

pub mod config;

use std::fmt;
use std::time::{Duration, Instant};

use rusty_s3::actions::{CreateBucket, GetObject, PutObject};
use rusty_s3::{Credentials, S3Action};

// Error text without the (signed) request URL, and the worker's User-Agent: the fetcher's.
use crate::fetch::http::{net_message, USER_AGENT_VALUE};

pub use config::{AddressingStyle, BucketConfig, ConfigError, Secret, StorageArgs};

/// How long a signed PUT stays valid: covers the upload and its retries, no more.
const PUT_URL_EXPIRY: Duration = Duration::from_secs(15 * 60);
/// Longest error body text kept in an error message.
const BODY_SNIPPET_CHARS: usize = 200;

/// Upload failures. None of them contains a credential or a signed URL.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("content type {0:?} is not a valid header value (e.g. `image/png`)")]
    InvalidContentType(String),
    #[error("{action} {} at {host}: HTTP {status}: {detail}", target(key, bucket))]
    Status {
        action: &'static str,
        host: String,
        bucket: String,
        key: String,
        status: u16,
        detail: String,
    },
    #[error(
        "{action} {} at {host} failed after {attempts} attempt(s): {message}",
        target(key, bucket)
    )]
    Transport {
        action: &'static str,
        host: String,
        bucket: String,
        key: String,
        attempts: u32,
        message: String,
    },
    #[error("object storage client for {host}: {message}")]
    Client { host: String, message: String },
}

/// "`key` in bucket `b`", or "bucket `b`" for bucket-level requests.
fn target(key: &str, bucket: &str) -> String {
    if key.is_empty() {
        format!("bucket `{bucket}`")
    } else {
        format!("`{key}` in bucket `{bucket}`")
    }
}

/// Retries of one request: attempts in all, and the first pause (doubled each time).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(250),
        }
    }
}

/// A configured bucket that uploads objects and presigns their URLs. Cheap to share
/// (`Arc` it); build it once at start-up.
pub struct Bucket {
    config: BucketConfig,
    s3: rusty_s3::Bucket,
    credentials: Credentials,
    client: reqwest::Client,
    retry: RetryPolicy,
    host: String,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bucket")
            .field("config", &self.config)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Bucket {
    /// A bucket with its own HTTP client (connect timeout 10 s, 120 s per request).
    pub fn new(config: BucketConfig) -> Result<Self, StorageError> {
        let host = host_of(&config.endpoint);
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .user_agent(USER_AGENT_VALUE)
            .build()
            .map_err(|e| StorageError::Client {
                host: host.clone(),
                message: e.without_url().to_string(),
            })?;
        Self::with_client(config, client)
    }

    /// A bucket that sends its requests through `client`.
    pub fn with_client(
        config: BucketConfig,
        client: reqwest::Client,
    ) -> Result<Self, StorageError> {
        let host = host_of(&config.endpoint);
        let s3 = rusty_s3::Bucket::new(
            config.endpoint.clone(),
            config.style,
            config.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|e| StorageError::Client {
            host: host.clone(),
            message: format!("cannot address bucket `{}`: {e:?}", config.bucket),
        })?;
        tracing::info!(
            host = %host,
            bucket = %config.bucket,
            region = %config.region,
            style = ?config.style,
            url_expiry_s = config.url_expiry.as_secs(),
            "result images go to object storage"
        );
        let credentials = Credentials::new(
            config.access_key_id.expose(),
            config.secret_access_key.expose(),
        );
        Ok(Bucket {
            config,
            s3,
            credentials,
            client,
            retry: RetryPolicy::default(),
            host,
        })
    }

    /// Replaces the retry policy (at least one attempt is always made).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn config(&self) -> &BucketConfig {
        &self.config
    }

    /// Uploads `bytes` as `key` with `content_type`, then returns a presigned GET URL valid
    /// for the configured lifetime. Retries 5xx, 429 and transport failures.
    pub async fn upload(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<String, StorageError> {
        check_key(key)?;
        if content_type.is_empty() || !content_type.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(StorageError::InvalidContentType(content_type.to_string()));
        }
        let started = Instant::now();
        let size = bytes.len();
        let body = bytes::Bytes::from(bytes);
        let mut action = PutObject::new(&self.s3, Some(&self.credentials), key);
        // Signed, so the stored object keeps exactly this type.
        action.headers_mut().insert("content-type", content_type);
        let url = action.sign(PUT_URL_EXPIRY);
        let attempts = self
            .send("uploading", key, || {
                self.client
                    .put(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, content_type)
                    .header(reqwest::header::CONTENT_LENGTH, size)
                    .body(body.clone())
            })
            .await?;
        tracing::info!(
            host = %self.host,
            bucket = %self.config.bucket,
            key,
            bytes = size,
            attempts,
            upload_ms = started.elapsed().as_millis() as u64,
            "uploaded result object"
        );
        self.presign_get(key)
    }

    /// A presigned GET URL for `key`, valid for the configured lifetime.
    pub fn presign_get(&self, key: &str) -> Result<String, StorageError> {
        check_key(key)?;
        let action = GetObject::new(&self.s3, Some(&self.credentials), key);
        Ok(action.sign(self.config.url_expiry).to_string())
    }

    /// Creates the bucket (for first-time setup and tests); an existing bucket owned by
    /// these credentials counts as success.
    pub async fn create_bucket(&self) -> Result<(), StorageError> {
        let action = CreateBucket::new(&self.s3, &self.credentials);
        let url = action.sign(PUT_URL_EXPIRY);
        let body = action.body();
        let result = self
            .send("creating", "", || {
                self.client
                    .put(url.clone())
                    .header(reqwest::header::CONTENT_LENGTH, body.len())
                    .body(body.clone())
            })
            .await;
        match result {
            Err(StorageError::Status { detail, .. })
                if detail.starts_with("BucketAlreadyOwnedByYou") =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Sends a request built by `make` until it succeeds, fails for good, or runs out of
    /// attempts; returns the number of attempts made.
    async fn send(
        &self,
        action: &'static str,
        key: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<u32, StorageError> {
        let attempts = self.retry.attempts.max(1);
        let mut pause = self.retry.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match make().send().await {
                Ok(resp) if resp.status().is_success() => return Ok(attempt),
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    let err = StorageError::Status {
                        action,
                        host: self.host.clone(),
                        bucket: self.config.bucket.clone(),
                        key: key.to_string(),
                        status: status.as_u16(),
                        detail: self.scrub(&error_detail(&text)),
                    };
                    let retryable = status.is_server_error()
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                    if !retryable {
                        return Err(err);
                    }
                    err
                }
                Err(e) => StorageError::Transport {
                    action,
                    host: self.host.clone(),
                    bucket: self.config.bucket.clone(),
                    key: key.to_string(),
                    attempts: attempt,
                    message: self.scrub(&net_message(e)),
                },
            };
            if attempt >= attempts {
                return Err(failure);
            }
            tracing::warn!(
                host = %self.host,
                bucket = %self.config.bucket,
                key,
                attempt,
                error = %failure,
                "object storage request failed; retrying"
            );
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        }
    }

    /// Removes credentials from text a server or the network stack produced.
    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in [
            self.config.secret_access_key.expose(),
            self.config.access_key_id.expose(),
        ] {
            if !secret.is_empty() {
                out = out.replace(secret, "<redacted>");
            }
        }
        out
    }
}

/// `host[:port]` of the endpoint, for messages.
fn host_of(url: &url::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => "<no host>".to_string(),
    }
}

/// `Code: Message` of an S3 XML error body, else a short single-line snippet. S3 error
/// bodies may echo the string to sign and the signature, so nothing else is kept.
fn error_detail(body: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&close)? + start;
        Some(body[start..end].trim().to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => {
            let flat: String = body
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(BODY_SNIPPET_CHARS)
                .collect();
            if flat.is_empty() {
                "(empty body)".to_string()
            } else {
                flat
            }
        }
    }
}

/// Rejects keys that `rusty-s3` would resolve like file paths (`a/../b`, `/x`), so a key
/// can only ever name an object in this bucket.
fn check_key(key: &str) -> Result<(), StorageError> {
    let invalid = |reason| StorageError::InvalidKey {
        key: key.to_string(),
        reason,
    };
    if key.is_empty() || key.len() > 1024 {
        return Err(invalid("must be 1 to 1024 bytes"));
    }
    if key.starts_with('/') {
        return Err(invalid("must not start with `/`"));
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(invalid("must not contain empty, `.` or `..` segments"));
    }
    if key.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters"));
    }
    Ok(())
}

/// The object key of image `n` of a job: `<job_id>/<n>.<ext>`. The job id is reduced to
/// `A-Z a-z 0-9 - _` (others become `_`, at most 128 characters) so no id can climb out of
/// its prefix or collide with a path segment like `..`.
pub fn image_key(job_id: &str, n: usize, ext: &str) -> String {
    let mut id: String = job_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    if id.is_empty() {
        id.push_str("job");
    }
    let ext: String = ext
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    let ext = if ext.is_empty() {
        "bin".to_string()
    } else {
        ext
    };
    format!("{id}/{n}.{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_keys_are_sanitised() {
        assert_eq!(image_key("abc-123-u1", 0, "png"), "abc-123-u1/0.png");
        assert_eq!(image_key("sync-x-e1", 3, "jpeg"), "sync-x-e1/3.jpeg");
        assert_eq!(image_key("../../etc", 1, "png"), "______etc/1.png");
        assert_eq!(image_key("a/b", 0, "webp"), "a_b/0.webp");
        assert_eq!(image_key("", 0, ""), "job/0.bin");
        assert_eq!(image_key("x", 0, ".PNG"), "x/0.png");
        assert_eq!(
            image_key(&"z".repeat(500), 0, "png").len(),
            128 + "/0.png".len()
        );
        for id in ["..", ".", "/", "a/../b", "\u{0}"] {
            check_key(&image_key(id, 0, "png")).unwrap();
        }
    }

    #[test]
    fn unsafe_keys_are_rejected() {
        for key in ["", "/a", "a//b", "a/../b", "./a", "a/.", "a\nb"] {
            assert!(check_key(key).is_err(), "{key:?}");
        }
        check_key("job/0.png").unwrap();
    }

    #[tokio::test]
    async fn bad_content_type_is_rejected_before_sending() {
        let cfg = StorageArgs {
            endpoint_url: Some("http://127.0.0.1:9/results".into()),
            access_key_id: Some(Secret::new("k")),
            secret_access_key: Some(Secret::new("s")),
            ..StorageArgs::default()
        }
        .bucket_config()
        .unwrap()
        .unwrap();
        let bucket = Bucket::new(cfg).unwrap();
        for ct in ["", "image/png\r\nx-evil: 1"] {
            let err = bucket.upload("j/0.png", vec![1], ct).await.unwrap_err();
            assert!(matches!(err, StorageError::InvalidContentType(_)), "{err}");
        }
    }

    #[test]
    fn error_detail_keeps_code_and_message_only() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code>\
                    <Message>The request signature we calculated does not match</Message>\
                    <StringToSign>AWS4-HMAC-SHA256 20250101</StringToSign>\
                    <SignatureProvided>abcdef0123</SignatureProvided></Error>";
        let d = error_detail(body);
        assert_eq!(
            d,
            "SignatureDoesNotMatch: The request signature we calculated does not match"
        );
        assert_eq!(error_detail(""), "(empty body)");
        assert_eq!(error_detail(&"x\n".repeat(500)).len(), BODY_SNIPPET_CHARS);
    }
}
