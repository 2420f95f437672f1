//! HTTP client for the worker-facing job API: job-take(-batch), job-stop, job-done and
//! job-stream, with the SDK's headers and retry rules (docs/runpod-protocol.md, *Job take*,
//! *Result post* and *Job stop*).

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use serde_json::Value;

use crate::args::Timings;
use crate::handler::Job;
use crate::urls::JobUrls;

/// Why the job API client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("RUNPOD_AI_API_KEY contains characters that are not allowed in an HTTP header")]
    BadApiKey,
    #[error("building the HTTP client failed: {0}")]
    Build(#[source] reqwest::Error),
}

/// A result or stream post that did not get through.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("server answered HTTP {status} after {attempts} attempt(s): {body}")]
    Status {
        status: StatusCode,
        attempts: usize,
        body: String,
    },
    #[error("request failed after {attempts} attempt(s): {source}")]
    Transport {
        attempts: usize,
        #[source]
        source: reqwest::Error,
    },
}

/// Outcome of one job-take call.
#[derive(Debug)]
pub(crate) enum Take {
    Jobs(Vec<Job>),
    /// 204, 400, empty body, wrong content type, malformed job (already logged).
    Empty,
    /// 429: back off.
    TooManyRequests,
    /// Any other failure (already logged).
    Failed,
}

/// Outcome of one job-stop poll.
#[derive(Debug)]
pub(crate) enum StopPoll {
    Ids(Vec<String>),
    Empty,
    TooManyRequests,
    Failed,
}

/// The User-Agent: this crate's, in the SDK's shape (`name/version (os; arch) Language/...`).
pub(crate) fn user_agent() -> String {
    let mut ua = format!(
        "runpod-worker/{} ({}; {}) Language/Rust",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    if let Ok(integration) = std::env::var("RUNPOD_UA_INTEGRATION") {
        if !integration.is_empty() {
            ua.push_str(&format!(" Integration/{integration}"));
        }
    }
    ua
}

/// Header value for the raw `Authorization: <key>` the job API expects (no `Bearer`).
pub(crate) fn auth_header(api_key: Option<&str>) -> Result<Option<HeaderValue>, ClientError> {
    match api_key {
        None | Some("") => Ok(None),
        Some(key) => {
            let mut value = HeaderValue::from_str(key).map_err(|_| ClientError::BadApiKey)?;
            value.set_sensitive(true);
            Ok(Some(value))
        }
    }
}

pub(crate) struct JobApi {
    http: reqwest::Client,
    urls: JobUrls,
    timings: Timings,
}

impl JobApi {
    pub(crate) fn new(
        urls: JobUrls,
        api_key: Option<&str>,
        timings: Timings,
    ) -> Result<Self, ClientError> {
        // Default headers go on every request, GETs included, as the SDK's session does.
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(auth) = auth_header(api_key)? {
            headers.insert(AUTHORIZATION, auth);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(user_agent())
            .timeout(timings.http_timeout)
            .build()
            .map_err(ClientError::Build)?;
        Ok(JobApi {
            http,
            urls,
            timings,
        })
    }

    pub(crate) fn has_stop_channel(&self) -> bool {
        self.urls.stop.is_some()
    }

    /// One job-take (or job-take-batch when `wanted` > 1) call (docs/runpod-protocol.md,
    /// *Job take*).
    pub(crate) async fn take(&self, wanted: usize, job_in_progress: bool) -> Take {
        let url = self.urls.take_url(wanted, job_in_progress);
        let resp = match self.http.get(&url).send().await {
            Ok(r) => r,
            Err(err) => {
                tracing::error!(
                    "Failed to get job. | Error Type: transport | Error Message: {err}"
                );
                return Take::Failed;
            }
        };
        match resp.status() {
            StatusCode::NO_CONTENT | StatusCode::BAD_REQUEST => return Take::Empty,
            StatusCode::TOO_MANY_REQUESTS => return Take::TooManyRequests,
            s if !s.is_success() => {
                tracing::error!("Failed to get job. | Error Type: HTTP {s} | Error Message: job-take answered {s}");
                return Take::Failed;
            }
            _ => {}
        }
        if !is_json(resp.headers()) || resp.content_length() == Some(0) {
            tracing::debug!("job-take answered without a JSON body; no job");
            return Take::Empty;
        }
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(err) => {
                tracing::error!("Failed to get job. | Error Type: body | Error Message: {err}");
                return Take::Failed;
            }
        };
        if body.is_empty() {
            return Take::Empty;
        }
        let value: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(err) => {
                tracing::error!("job-take answered invalid JSON ({err}); no job taken");
                return Take::Empty;
            }
        };
        let items = match value {
            Value::Array(items) => items,
            obj @ Value::Object(_) => vec![obj],
            other => {
                tracing::error!("job-take answered JSON that is not a job: {other}; ignored");
                return Take::Empty;
            }
        };
        let mut jobs = Vec::with_capacity(items.len());
        for item in items {
            match Job::from_value(item) {
                Ok(job) => jobs.push(job),
                Err(err) => tracing::error!("dropping malformed job from job-take: {err}"),
            }
        }
        if jobs.is_empty() {
            Take::Empty
        } else {
            Take::Jobs(jobs)
        }
    }

    /// One job-stop long-poll (docs/runpod-protocol.md, *Job stop*).
    pub(crate) async fn stop_signals(&self) -> StopPoll {
        let Some(url) = &self.urls.stop else {
            return StopPoll::Empty;
        };
        let resp = match self.http.get(url).send().await {
            Ok(r) => r,
            Err(err) => {
                tracing::warn!("job-stop poll failed: {err}");
                return StopPoll::Failed;
            }
        };
        match resp.status() {
            StatusCode::NO_CONTENT => return StopPoll::Empty,
            StatusCode::TOO_MANY_REQUESTS => return StopPoll::TooManyRequests,
            s if !s.is_success() => {
                tracing::warn!("job-stop poll answered HTTP {s}");
                return StopPoll::Failed;
            }
            _ => {}
        }
        if !is_json(resp.headers()) {
            return StopPoll::Empty;
        }
        let Ok(Value::Object(map)) = resp.json::<Value>().await else {
            return StopPoll::Empty;
        };
        let ids: Vec<String> = match map.get("jobsToStop") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        if ids.is_empty() {
            StopPoll::Empty
        } else {
            StopPoll::Ids(ids)
        }
    }

    /// Final result (job-done). Up to 3 attempts, retried on HTTP ≥ 500 after 2 s and 3 s.
    pub(crate) async fn post_result(
        &self,
        job_id: &str,
        body: String,
        is_stream: bool,
    ) -> Result<(), PostError> {
        let url = self.urls.done_url(job_id, is_stream);
        self.post(&url, job_id, body, self.result_attempts()).await
    }

    /// Attempts of a result or chunk post: one more than there are retry delays.
    fn result_attempts(&self) -> usize {
        self.timings.result_retry_delays.len() + 1
    }

    /// One streamed chunk (job-stream, `isStream=false`), same retries as results.
    /// Without a stream URL the chunk is only logged.
    pub(crate) async fn post_stream(&self, job_id: &str, body: String) -> Result<(), PostError> {
        let Some(url) = self.urls.stream_url(job_id) else {
            tracing::warn!(
                job_id,
                "RUNPOD_WEBHOOK_POST_STREAM is not set; stream chunk not sent"
            );
            return Ok(());
        };
        self.post(&url, job_id, body, self.result_attempts()).await
    }

    /// A progress update (job-done, `isStream=false`, body with `"status": "IN_PROGRESS"`);
    /// one attempt, as the SDK's fire-and-forget thread.
    pub(crate) async fn post_progress(&self, job_id: &str, body: String) -> Result<(), PostError> {
        let url = self.urls.done_url(job_id, false);
        self.post(&url, job_id, body, 1).await
    }

    async fn post(
        &self,
        url: &str,
        job_id: &str,
        body: String,
        attempts: usize,
    ) -> Result<(), PostError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .http
                .post(url)
                // The SDK posts JSON text labelled as a form, plus a literal `charset` header.
                .header(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                )
                .header(HeaderName::from_static("charset"), "utf-8")
                .header(HeaderName::from_static("x-request-id"), job_id)
                .body(body.clone())
                .send()
                .await;
            let retry = match sent {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_server_error() && attempt < attempts {
                        tracing::warn!(job_id, %status, attempt, "result post failed; retrying");
                        true
                    } else {
                        let text = resp.text().await.unwrap_or_default();
                        return Err(PostError::Status {
                            status,
                            attempts: attempt,
                            body: text.chars().take(300).collect(),
                        });
                    }
                }
                // A refused connection cannot have delivered anything, so retrying it cannot
                // duplicate a result; other transport errors are final, as in the SDK.
                Err(err) if err.is_connect() && attempt < attempts => {
                    tracing::warn!(
                        job_id,
                        attempt,
                        "result post could not connect ({err}); retrying"
                    );
                    true
                }
                Err(source) => {
                    return Err(PostError::Transport {
                        attempts: attempt,
                        source,
                    })
                }
            };
            if retry {
                let delay = self
                    .timings
                    .result_retry_delays
                    .get(attempt - 1)
                    .copied()
                    .unwrap_or(Duration::from_secs(3));
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// `Content-Type` is `application/json` (parameters like `charset` ignored), as aiohttp's
/// `content_type` check in the SDK.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}
