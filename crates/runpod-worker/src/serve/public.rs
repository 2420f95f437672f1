//! RunPod's public endpoint API under `/v2/{endpoint_id}/`: run, runsync, status, stream,
//! cancel, retry, purge-queue and health, with the cloud's JSON shapes
//! (docs/runpod-protocol.md, *Local endpoint API*). The endpoint id in the path is ignored.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::request::{error_response, read_submission, RUNSYNC_BODY_LIMIT, RUN_BODY_LIMIT};
use super::store::{Api, Flavor, RetryError, Status, WorkerState};

/// A job id in the cloud's shape (`<uuid>-u1`, `sync-<uuid>-u1`).
fn new_id(prefix: &str) -> String {
    format!("{prefix}{}-u1", uuid::Uuid::new_v4())
}

fn not_found(id: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("job {id} not found (unknown id, or its result expired)"),
    )
}

fn id_status(id: &str, status: Status) -> Response {
    Json(json!({"id": id, "status": status.as_str()})).into_response()
}

pub(super) async fn run(State(api): State<Arc<Api>>, headers: HeaderMap, body: Body) -> Response {
    let sub = match read_submission(&headers, body, RUN_BODY_LIMIT, "/run", false).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let id = new_id("");
    api.enqueue(sub, id.clone(), Flavor::Cloud, api.timings.retention_run);
    id_status(&id, Status::InQueue)
}

#[derive(Deserialize)]
pub(super) struct WaitQuery {
    wait: Option<u64>,
}

/// Waits up to `?wait=` ms (clamped to 1–300 s) for the result; a job still running then
/// is answered with its id and status, as the cloud does.
pub(super) async fn runsync(
    State(api): State<Arc<Api>>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let sub = match read_submission(&headers, body, RUNSYNC_BODY_LIMIT, "/runsync", false).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let wait = q
        .wait
        .map(|ms| Duration::from_millis(ms.clamp(1000, 300_000)))
        .unwrap_or(api.timings.runsync_default_wait);
    let id = new_id("sync-");
    api.enqueue(sub, id.clone(), Flavor::Cloud, api.timings.retention_sync);
    api.wait_final(&id, Some(wait)).await;
    let answer = api.with_job(&id, |rec| {
        if rec.status.is_final() {
            Json(rec.status_json(&api.worker_id)).into_response()
        } else {
            id_status(&id, rec.status)
        }
    });
    answer.unwrap_or_else(|| not_found(&id))
}

pub(super) async fn status(
    State(api): State<Arc<Api>>,
    Path((_ep, id)): Path<(String, String)>,
) -> Response {
    api.with_job(&id, |rec| {
        Json(rec.status_json(&api.worker_id)).into_response()
    })
    .unwrap_or_else(|| not_found(&id))
}

/// Returns the chunks streamed since the last call (the Python client relies on that).
pub(super) async fn stream(
    State(api): State<Arc<Api>>,
    Path((_ep, id)): Path<(String, String)>,
) -> Response {
    api.with_job(&id, |rec| {
        let chunks: Vec<Value> = rec
            .pending_stream
            .drain(..)
            .map(|c| json!({"output": c}))
            .collect();
        Json(json!({"id": id, "status": rec.status.as_str(), "stream": chunks})).into_response()
    })
    .unwrap_or_else(|| not_found(&id))
}

pub(super) async fn cancel(
    State(api): State<Arc<Api>>,
    Path((_ep, id)): Path<(String, String)>,
) -> Response {
    match api.cancel(&id) {
        Some(status) => id_status(&id, status),
        None => not_found(&id),
    }
}

pub(super) async fn retry(
    State(api): State<Arc<Api>>,
    Path((_ep, id)): Path<(String, String)>,
) -> Response {
    match api.retry(&id) {
        Ok(()) => id_status(&id, Status::InQueue),
        Err(RetryError::NotFound) => not_found(&id),
        Err(RetryError::NotFailed(status)) => error_response(
            StatusCode::BAD_REQUEST,
            format!(
                "only FAILED or TIMED_OUT jobs can be retried; job {id} is {}",
                status.as_str()
            ),
        ),
    }
}

pub(super) async fn purge(State(api): State<Arc<Api>>) -> Response {
    let removed = api.purge();
    Json(json!({"removed": removed, "status": "completed"})).into_response()
}

pub(super) async fn health(State(api): State<Arc<Api>>) -> Response {
    let (completed, failed, retried, running, queued) = {
        let s = api.store();
        let queued = s
            .jobs
            .values()
            .filter(|r| r.status == Status::InQueue)
            .count();
        (s.completed, s.failed, s.retried, s.running, queued)
    };
    let (initializing, idle, busy, unhealthy) = match *api.worker_state() {
        WorkerState::Initializing => (1, 0, 0, 0),
        WorkerState::Ready if running > 0 => (0, 0, 1, 0),
        WorkerState::Ready => (0, 1, 0, 0),
        WorkerState::Failed => (0, 0, 0, 1),
    };
    Json(json!({
        "jobs": {
            "completed": completed,
            "failed": failed,
            "inProgress": running,
            "inQueue": queued,
            "retried": retried,
        },
        "workers": {
            "idle": idle,
            "initializing": initializing,
            "ready": idle,
            "running": busy,
            "throttled": 0,
            "unhealthy": unhealthy,
        }
    }))
    .into_response()
}
