//! The fetcher's HTTP policy, shared by Civitai, Hugging Face metadata, plain URLs and the
//! single- and multi-connection downloaders, so they all retry, back off, recognise a wrong body
//! and word network errors the same way.
//!
//! - **Clients**: [`clients`] builds the two `reqwest` clients (name resolution is the system
//!   resolver through `reqwest`'s default connector): one for Civitai's API that never follows
//!   redirects, one for storage and plain URLs that never carries credentials. See
//!   docs/civitai.md, *Download redirect*, for why the bearer token must stop at Civitai.
//! - **Retries**: [`Retry`] counts failures of one request and computes the pause: exponential
//!   from `retry_base`, or the server's `Retry-After`, capped at `retry_max`. 429 and 5xx
//!   ([`is_busy`]) and dropped connections are retried; other 4xx are not.
//! - **Wrong bodies**: storage and Civitai sometimes answer a model download with an HTML login
//!   page or a JSON error. [`is_textual`] is the one test on `Content-Type`
//!   (`EntryError::textual_body` words the error). The byte-level check of the file itself is
//!   `verify::sniff_safetensors`.
//! - **Messages**: [`net_message`] and [`body_snippet`] shape what a failed request says,
//!   without the URL (a presigned URL carries a signature). This module builds no
//!   `EntryError` itself, so `error.rs` can use it without an import loop.

use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_DISPOSITION, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::header::{RETRY_AFTER, USER_AGENT};
use reqwest::{Response, StatusCode};

use super::names::content_disposition_filename;
use super::{FetchError, PrefetchOptions};

/// Non-browser User-Agent sent to every host. Civitai answers browser-like agents with HTML
/// redirects instead of JSON errors, and Cloudflare blocks some default library agents (see
/// docs/civitai.md, *User agent*).
pub const USER_AGENT_VALUE: &str = concat!("sdxl-worker/", env!("CARGO_PKG_VERSION"));

/// Connect and per-read timeouts of both clients.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The two HTTP clients of one prefetch run.
pub(crate) struct Clients {
    /// Civitai's API and download endpoint: never follows redirects, so the bearer token cannot
    /// travel to the storage host the download endpoint redirects to.
    pub api: reqwest::Client,
    /// Storage and plain URLs: follows redirects, never carries credentials. HTTP/1.1 only:
    /// range requests must travel on separate TCP connections to add bandwidth; over HTTP/2
    /// they would share one connection's window.
    pub data: reqwest::Client,
}

/// Builds the [`Clients`].
pub(crate) fn clients() -> Result<Clients, FetchError> {
    let builder = || {
        reqwest::Client::builder()
            .user_agent(USER_AGENT_VALUE)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
    };
    let api = builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| FetchError::Client(e.to_string()))?;
    let data = builder()
        .http1_only()
        .redirect(reqwest::redirect::Policy::limited(10))
        .build()
        .map_err(|e| FetchError::Client(e.to_string()))?;
    Ok(Clients { api, data })
}

/// A `GET` with the fetcher's User-Agent set explicitly (some clients are built elsewhere,
/// e.g. by tests, without it).
pub(crate) fn get(client: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
    client.get(url).header(USER_AGENT, USER_AGENT_VALUE)
}

/// Failure count and pause policy of one request that is retried.
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    base: Duration,
    max: Duration,
    limit: u32,
    failures: u32,
}

impl Retry {
    pub(crate) fn new(opts: &PrefetchOptions) -> Self {
        Retry {
            base: opts.retry_base,
            max: opts.retry_max,
            limit: opts.max_retries,
            failures: 0,
        }
    }

    /// Counts one failure; `true` once more failures than retries allowed have happened, so
    /// the caller gives up.
    pub(crate) fn fail(&mut self) -> bool {
        self.failures += 1;
        self.exhausted()
    }

    /// Whether the failures so far exceed the retries allowed.
    pub(crate) fn exhausted(&self) -> bool {
        self.failures > self.limit
    }

    /// Progress was made: the next failure starts the count (and the backoff) afresh.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// The pause before the next attempt: the server's `Retry-After` when it sent one, else
    /// `base · 2^failures`; never more than `max`.
    pub(crate) fn delay(&self, retry_after: Option<Duration>) -> Duration {
        retry_after
            .unwrap_or_else(|| self.base.saturating_mul(1u32 << self.failures.min(10)))
            .min(self.max)
    }

    /// Sleeps for [`Retry::delay`].
    pub(crate) async fn pause(&self, retry_after: Option<Duration>) {
        tokio::time::sleep(self.delay(retry_after)).await;
    }
}

/// 429 and 5xx: the server is busy or failing, worth retrying after a pause.
pub(crate) fn is_busy(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Statuses with which a storage host rejects an expired or otherwise stale presigned URL
/// (400, 401, 403, 410); a fresh URL from the resolver may work (see docs/civitai.md,
/// *Download redirect*).
pub(crate) fn is_stale_url(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_REQUEST
            | StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::GONE
    )
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the hosts we talk to).
pub(crate) fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// What to do with a busy (429/5xx) answer after counting it on `retry`.
pub(crate) enum Busy {
    /// Pause this long, then try again.
    Wait { status: StatusCode, wait: Duration },
    /// Retries are used up; the body's first bytes explain why.
    GiveUp {
        status: StatusCode,
        message: String,
        attempts: u32,
    },
}

/// Counts a busy answer on `retry` and decides between waiting (honouring `Retry-After`) and
/// giving up; the body is read only when giving up, for the error message.
pub(crate) async fn on_busy(resp: Response, retry: &mut Retry) -> Busy {
    let status = resp.status();
    let exhausted = retry.fail();
    let wait = retry.delay(retry_after(resp.headers()));
    if exhausted {
        return Busy::GiveUp {
            status,
            message: body_snippet(resp, 300).await,
            attempts: retry.failures(),
        };
    }
    Busy::Wait { status, wait }
}

/// `Content-Type` of a response, or "".
pub(crate) fn content_type(resp: &Response) -> &str {
    resp.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Whether the response announces a text or JSON document (an HTML login page, a JSON or
/// plain-text error) rather than a binary file.
pub(crate) fn is_textual(resp: &Response) -> bool {
    let ct = content_type(resp).to_ascii_lowercase();
    ct.starts_with("text/") || ct.starts_with("application/json")
}

/// Reads up to `max` bytes of a body for an error message.
pub(crate) async fn body_snippet(resp: Response, max: usize) -> String {
    let mut out = Vec::new();
    let mut resp = resp;
    while out.len() < max {
        match resp.chunk().await {
            Ok(Some(c)) => out.extend_from_slice(&c[..c.len().min(max - out.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).trim().to_string()
}

/// Text of a reqwest error and its causes, without the URL (it may carry a presigned
/// signature or an access key).
pub(crate) fn net_message(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Parses `bytes a-b/total` (or `bytes */total`) into (start, total).
pub(crate) fn parse_content_range(v: &str) -> Option<(Option<u64>, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim();
    let (range, total) = rest.split_once('/')?;
    let total = total.trim().parse().ok();
    let start = if range.trim() == "*" {
        None
    } else {
        Some(range.split_once('-')?.0.trim().parse().ok()?)
    };
    Some((start, total))
}

/// The response's `Content-Range`, parsed by [`parse_content_range`].
pub(crate) fn content_range(resp: &Response) -> Option<(Option<u64>, Option<u64>)> {
    resp.headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_content_range)
}

/// File name from the response's `Content-Disposition`, unsanitised.
pub(crate) fn disposition_name(resp: &Response) -> Option<String> {
    resp.headers()
        .get(CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .and_then(content_disposition_filename)
}

/// Host of a URL, for progress lines (never the path or query, which may be signed).
pub(crate) fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default()
}

/// Learns a file's size (and range support) with a one-byte range request; `None` when the
/// server does not answer 206 with a total.
pub(crate) async fn probe_size(client: &reqwest::Client, url: &str) -> Option<u64> {
    let resp = client
        .get(url)
        .header(RANGE, "bytes=0-0")
        .send()
        .await
        .ok()?;
    if resp.status() != StatusCode::PARTIAL_CONTENT {
        return None;
    }
    content_range(&resp).and_then(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((Some(10), Some(100)))
        );
        assert_eq!(parse_content_range("bytes */100"), Some((None, Some(100))));
        assert_eq!(parse_content_range("bytes 0-9/*"), Some((Some(0), None)));
    }

    #[test]
    fn backoff_doubles_and_honours_retry_after_up_to_the_cap() {
        let opts = PrefetchOptions {
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
            max_retries: 2,
            ..PrefetchOptions::from_args(&super::super::FetchArgs::new("m", "c"))
        };
        let mut r = Retry::new(&opts);
        assert!(!r.fail());
        assert_eq!(r.delay(None), Duration::from_millis(200));
        assert!(!r.fail());
        assert_eq!(r.delay(None), Duration::from_millis(400));
        assert_eq!(
            r.delay(Some(Duration::from_secs(7))),
            Duration::from_secs(1)
        );
        assert!(r.fail());
        r.reset();
        assert!(!r.exhausted());
    }
}
