//! The routes of the Python SDK's dev server (`/run`, `/runsync`, `/status/{id}`,
//! `/stream/{id}`), which tools written against `--rp_serve_api` call
//! (docs/runpod-protocol.md, *Local endpoint API*).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::request::{read_submission, RUNSYNC_BODY_LIMIT, RUN_BODY_LIMIT};
use super::store::{Api, Flavor, Status};

fn not_found(id: &str) -> Response {
    Json(json!({"id": id, "status": "FAILED", "error": "Job ID not found"})).into_response()
}

async fn submit(
    api: &Api,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    route: &str,
) -> Result<String, Response> {
    let sub = read_submission(headers, body, limit, route, true).await?;
    let id = format!("test-{}", uuid::Uuid::new_v4());
    api.enqueue(sub, id.clone(), Flavor::Dev, api.timings.retention_run);
    Ok(id)
}

/// Waits until the job is final (or shutdown), then answers like the dev server.
async fn final_answer(api: &Api, id: &str) -> Response {
    if api.wait_final(id, None).await.is_none() {
        return not_found(id);
    }
    api.with_job(id, |rec| Json(rec.dev_json()).into_response())
        .unwrap_or_else(|| not_found(id))
}

pub(super) async fn run(State(api): State<Arc<Api>>, headers: HeaderMap, body: Body) -> Response {
    match submit(&api, &headers, body, RUN_BODY_LIMIT, "/run").await {
        Ok(id) => Json(json!({"id": id, "status": "IN_PROGRESS"})).into_response(),
        Err(r) => r,
    }
}

pub(super) async fn runsync(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match submit(&api, &headers, body, RUNSYNC_BODY_LIMIT, "/runsync").await {
        Ok(id) => final_answer(&api, &id).await,
        Err(r) => r,
    }
}

pub(super) async fn status(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    final_answer(&api, &id).await
}

/// All chunks at once when the job is done; the dev server has no incremental stream.
pub(super) async fn stream(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    if api.streaming() == Some(false) {
        return Json(json!({"id": id, "status": "FAILED",
            "error": "Stream not supported, handler must be a generator."}))
        .into_response();
    }
    if api.wait_final(&id, None).await.is_none() {
        return not_found(&id);
    }
    api.with_job(&id, |rec| {
        if rec.status != Status::Completed {
            return Json(rec.dev_json()).into_response();
        }
        let chunks: Vec<Value> = rec
            .all_stream
            .iter()
            .map(|c| json!({"output": c}))
            .collect();
        Json(json!({"id": id, "status": "COMPLETED", "stream": chunks})).into_response()
    })
    .unwrap_or_else(|| not_found(&id))
}
