//! Reading requests of the local endpoint API: body size limits, the `/run` body, the API
//! key (docs/runpod-protocol.md, *Local endpoint API*).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

/// `/run` body limit (docs/runpod-protocol.md, *Endpoint API limits*).
pub const RUN_BODY_LIMIT: usize = 10 * 1024 * 1024;
/// `/runsync` body limit.
pub const RUNSYNC_BODY_LIMIT: usize = 20 * 1024 * 1024;

/// A validated `/run` / `/runsync` body.
#[derive(Debug)]
pub(super) struct Submission {
    pub input: Value,
    pub webhook: Option<String>,
    pub execution_timeout: Option<Duration>,
    pub extra: Map<String, Value>,
}

fn parse_submission(body: Value, dev: bool) -> Result<Submission, String> {
    let Value::Object(mut map) = body else {
        return Err("request body must be a JSON object like {\"input\": {...}}".into());
    };
    let input = match map.remove("input") {
        None | Some(Value::Null) => return Err("request body has no \"input\" field".into()),
        // The SDK dev server types `input` as a dict.
        Some(v) if dev && !v.is_object() => return Err("\"input\" must be a JSON object".into()),
        Some(v) => v,
    };
    let webhook = match map.remove("webhook") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err("\"webhook\" must be a URL string".into()),
    };
    let mut execution_timeout = None;
    if let Some(policy) = map.get("policy") {
        let Value::Object(p) = policy else {
            return Err("\"policy\" must be an object".into());
        };
        if let Some(t) = p.get("executionTimeout") {
            let ms = t
                .as_u64()
                .filter(|ms| *ms > 0)
                .ok_or("\"policy.executionTimeout\" must be a positive number of milliseconds")?;
            execution_timeout = Some(Duration::from_millis(ms));
        }
    }
    Ok(Submission {
        input,
        webhook,
        execution_timeout,
        extra: map,
    })
}

pub(super) fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// Reads a JSON body of at most `limit` bytes; 413 with a JSON error beyond it. An
/// oversized body is still read (and discarded, up to a cap) before answering, so that
/// clients that write the whole body first get to see the 413 instead of a broken pipe.
async fn read_json(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    route: &str,
) -> Result<Value, Response> {
    use futures::StreamExt as _;
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body exceeds the {} MB limit of {route}",
                limit / (1024 * 1024)
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let drain_cap = limit.saturating_mul(4);
    let mut over = declared.is_some_and(|n| n > limit);
    if declared.is_some_and(|n| n > drain_cap) {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    let mut seen = 0usize;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            error_response(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            )
        })?;
        seen += chunk.len();
        if seen > limit {
            over = true;
            buf = Vec::new();
        }
        if over {
            if seen > drain_cap {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&chunk);
    }
    if over {
        return Err(too_large());
    }
    serde_json::from_slice(&buf).map_err(|e| {
        error_response(
            StatusCode::BAD_REQUEST,
            format!("request body is not valid JSON: {e}"),
        )
    })
}

/// Reads and validates a `/run` or `/runsync` body of at most `limit` bytes. The SDK's dev
/// routes (`dev`) want `input` to be an object and answer 422 to a bad body, as FastAPI
/// does; the cloud routes answer 400.
pub(super) async fn read_submission(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    route: &str,
    dev: bool,
) -> Result<Submission, Response> {
    let value = read_json(headers, body, limit, route).await?;
    let status = if dev {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::BAD_REQUEST
    };
    parse_submission(value, dev).map_err(|e| error_response(status, e))
}

/// Compares without an early exit, so response time does not reveal a key prefix.
fn same_key(given: &str, key: &str) -> bool {
    let (a, b) = (given.as_bytes(), key.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, byte) in b.iter().enumerate() {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ byte);
    }
    diff == 0
}

/// Middleware: with a local API key configured, answers 401 to requests that do not carry it
/// (`Authorization: <key>` or `Authorization: Bearer <key>`). The state is the key itself, so
/// request parsing needs nothing from the job store.
pub(super) async fn require_key(
    State(key): State<Option<Arc<str>>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(key) = key.as_deref() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let v = v.trim();
                v.strip_prefix("Bearer ").map(str::trim).unwrap_or(v)
            });
        if !given.is_some_and(|g| same_key(g, key)) {
            return error_response(
                StatusCode::UNAUTHORIZED,
                "401 Unauthorized: missing or wrong API key",
            );
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_comparison() {
        assert!(same_key("abc", "abc"));
        assert!(!same_key("abd", "abc"));
        assert!(!same_key("ab", "abc"));
        assert!(!same_key("abcd", "abc"));
        assert!(!same_key("", "abc"));
    }

    #[test]
    fn submissions_are_validated() {
        assert!(parse_submission(json!({"input": {"a": 1}}), true).is_ok());
        assert!(parse_submission(json!({"input": "text"}), false).is_ok());
        assert!(parse_submission(json!({"input": "text"}), true).is_err());
        assert!(parse_submission(json!({"nope": 1}), false)
            .unwrap_err()
            .contains("\"input\""));
        let s = parse_submission(
            json!({"input": 1, "webhook": "http://h", "policy": {"executionTimeout": 1500}, "s3Config": {}}),
            false,
        )
        .unwrap();
        assert_eq!(s.webhook.as_deref(), Some("http://h"));
        assert_eq!(s.execution_timeout, Some(Duration::from_millis(1500)));
        assert!(s.extra.contains_key("s3Config"));
        assert!(parse_submission(
            json!({"input": 1, "policy": {"executionTimeout": -1}}),
            false
        )
        .is_err());
    }
}
