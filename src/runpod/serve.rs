//! The local endpoint API (`--rp_serve_api`): a real job queue in front of the handler that
//! speaks RunPod's public endpoint API under `/v2/{endpoint_id}/` (spec §19.1), so the
//! official clients work against it, plus the SDK dev server's routes (spec §17).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::exec::{execute, log_result, result_body, Outcome};
use super::handler::{ContextReceivers, Handler, HandlerConfig, Job, JobContext};
use super::heartbeat::{Heartbeat, HeldJobs};
use super::{RuntimeArgs, Timings, WorkerIdentity};

/// `/run` body limit (spec §22.1).
pub const RUN_BODY_LIMIT: usize = 10 * 1024 * 1024;
/// `/runsync` body limit.
pub const RUNSYNC_BODY_LIMIT: usize = 20 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    InQueue,
    InProgress,
    Completed,
    Failed,
    Cancelled,
    TimedOut,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::InQueue => "IN_QUEUE",
            Status::InProgress => "IN_PROGRESS",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::Cancelled => "CANCELLED",
            Status::TimedOut => "TIMED_OUT",
        }
    }

    fn is_final(self) -> bool {
        !matches!(self, Status::InQueue | Status::InProgress)
    }
}

/// Which webhook payload a job gets: the cloud's full status object, or the SDK dev
/// server's `{"output": …}` (sent on success only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Cloud,
    Dev,
}

struct Record {
    id: String,
    input: Value,
    extra: Map<String, Value>,
    webhook: Option<String>,
    flavor: Flavor,
    execution_timeout: Option<Duration>,
    retention: Duration,
    status: Status,
    output: Option<Value>,
    error: Option<Value>,
    pending_stream: Vec<Value>,
    all_stream: Vec<Value>,
    submitted: Instant,
    started: Option<Instant>,
    finished: Option<Instant>,
    cancel: CancellationToken,
    done: watch::Sender<bool>,
}

impl Record {
    fn delay_ms(&self) -> Option<u64> {
        self.started
            .map(|s| s.duration_since(self.submitted).as_millis() as u64)
    }

    fn execution_ms(&self) -> Option<u64> {
        match (self.started, self.finished) {
            (Some(s), Some(f)) => Some(f.duration_since(s).as_millis() as u64),
            (Some(s), None) => Some(s.elapsed().as_millis() as u64),
            _ => None,
        }
    }

    /// The `/status` object (spec §19.1).
    fn status_json(&self, worker_id: &str) -> Value {
        let mut m = Map::new();
        if let Some(d) = self.delay_ms() {
            m.insert("delayTime".into(), json!(d));
        }
        if let Some(e) = self.execution_ms() {
            m.insert("executionTime".into(), json!(e));
        }
        m.insert("id".into(), json!(self.id));
        if let Some(o) = &self.output {
            m.insert("output".into(), o.clone());
        }
        if let Some(e) = &self.error {
            m.insert("error".into(), e.clone());
        }
        m.insert("status".into(), json!(self.status.as_str()));
        if self.started.is_some() {
            m.insert("workerId".into(), json!(worker_id));
        }
        Value::Object(m)
    }
}

#[derive(Default)]
struct Store {
    jobs: HashMap<String, Record>,
    queue: VecDeque<String>,
    running: usize,
    completed: u64,
    failed: u64,
    retried: u64,
}

enum WorkerState {
    Initializing,
    Ready,
    Failed,
}

struct Api {
    store: Mutex<Store>,
    work: Notify,
    state: Mutex<WorkerState>,
    handler: OnceLock<(Arc<dyn Handler>, HandlerConfig)>,
    api_key: Option<String>,
    worker_id: String,
    who: WorkerIdentity,
    timings: Timings,
    http: reqwest::Client,
    /// Fires on shutdown; requests that wait for a job give up then, so that the server's
    /// graceful shutdown does not hang on them.
    stop: CancellationToken,
    /// Running jobs, for the heartbeat the SDK's dev server also sends when configured.
    held: HeldJobs,
}

impl Api {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn worker_state(&self) -> MutexGuard<'_, WorkerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn streaming(&self) -> Option<bool> {
        self.handler.get().map(|(_, cfg)| cfg.streaming)
    }

    fn enqueue(
        &self,
        sub: Submission,
        id: String,
        flavor: Flavor,
        retention: Duration,
    ) -> watch::Receiver<bool> {
        let (done, rx) = watch::channel(false);
        let record = Record {
            id: id.clone(),
            input: sub.input,
            extra: sub.extra,
            webhook: sub.webhook,
            flavor,
            execution_timeout: sub.execution_timeout,
            retention,
            status: Status::InQueue,
            output: None,
            error: None,
            pending_stream: Vec::new(),
            all_stream: Vec::new(),
            submitted: Instant::now(),
            started: None,
            finished: None,
            cancel: CancellationToken::new(),
            done,
        };
        let mut store = self.store();
        store.jobs.insert(id.clone(), record);
        store.queue.push_back(id);
        drop(store);
        self.work.notify_one();
        rx
    }

    /// Takes the next queued job and marks it running.
    fn next_job(&self) -> Option<(Job, CancellationToken, Option<Duration>)> {
        let mut store = self.store();
        while let Some(id) = store.queue.pop_front() {
            let Some(rec) = store.jobs.get_mut(&id) else {
                continue;
            };
            if rec.status != Status::InQueue {
                continue;
            }
            rec.status = Status::InProgress;
            rec.started = Some(Instant::now());
            let mut job = Job::new(rec.id.clone(), rec.input.clone());
            job.webhook = rec.webhook.clone();
            job.extra = rec.extra.clone();
            let out = (job, rec.cancel.clone(), rec.execution_timeout);
            store.running += 1;
            self.held.add(&id);
            return Some(out);
        }
        None
    }

    /// Marks a job finished, wakes its waiters and sends its webhook.
    fn finish(&self, id: &str, status: Status, output: Option<Value>, error: Option<Value>) {
        self.held.remove(id);
        let mut store = self.store();
        store.running = store.running.saturating_sub(1);
        match status {
            Status::Completed => store.completed += 1,
            Status::Failed | Status::TimedOut => store.failed += 1,
            _ => {}
        }
        let Some(rec) = store.jobs.get_mut(id) else {
            return;
        };
        rec.status = status;
        rec.output = output;
        rec.error = error;
        rec.finished = Some(Instant::now());
        rec.done.send_replace(true);
        let hook = rec.webhook.clone().and_then(|url| {
            let payload = match rec.flavor {
                Flavor::Cloud if status != Status::Cancelled => {
                    let mut body = rec.status_json(&self.worker_id);
                    if let Value::Object(m) = &mut body {
                        m.insert("input".into(), rec.input.clone());
                        m.insert("webhook".into(), json!(url));
                    }
                    Some(body)
                }
                Flavor::Dev if status == Status::Completed => {
                    Some(json!({"output": rec.output.clone().unwrap_or(Value::Null)}))
                }
                _ => None,
            };
            payload.map(|p| (url, p))
        });
        drop(store);
        if let Some((url, payload)) = hook {
            tokio::spawn(send_webhook(
                self.http.clone(),
                url,
                payload,
                self.timings.clone(),
            ));
        }
    }
}

/// POSTs a webhook; 3 attempts with a pause, as the platform does (spec §19.1).
async fn send_webhook(http: reqwest::Client, url: String, payload: Value, timings: Timings) {
    for attempt in 1..=3 {
        match http
            .post(&url)
            .timeout(timings.webhook_timeout)
            .json(&payload)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::warn!(%url, status = %r.status(), attempt, "webhook rejected"),
            Err(err) => tracing::warn!(%url, attempt, "webhook failed: {err}"),
        }
        if attempt < 3 {
            tokio::time::sleep(timings.webhook_retry_delay).await;
        }
    }
    tracing::error!(%url, "webhook could not be delivered after 3 attempts");
}

/// A validated `/run` / `/runsync` body.
#[derive(Debug)]
struct Submission {
    input: Value,
    webhook: Option<String>,
    execution_timeout: Option<Duration>,
    extra: Map<String, Value>,
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

fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
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

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}-u1", uuid::Uuid::new_v4())
}

// ---- /v2/{endpoint_id}/... -------------------------------------------------------------

async fn v2_run(State(api): State<Arc<Api>>, headers: HeaderMap, body: Body) -> Response {
    let value = match read_json(&headers, body, RUN_BODY_LIMIT, "/run").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let sub = match parse_submission(value, false) {
        Ok(s) => s,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e),
    };
    let id = new_id("");
    api.enqueue(sub, id.clone(), Flavor::Cloud, api.timings.retention_run);
    Json(json!({"id": id, "status": "IN_QUEUE"})).into_response()
}

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<u64>,
}

async fn v2_runsync(
    State(api): State<Arc<Api>>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let value = match read_json(&headers, body, RUNSYNC_BODY_LIMIT, "/runsync").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let sub = match parse_submission(value, false) {
        Ok(s) => s,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e),
    };
    let wait = q
        .wait
        .map(|ms| Duration::from_millis(ms.clamp(1000, 300_000)))
        .unwrap_or(api.timings.runsync_default_wait);
    let id = new_id("sync-");
    let mut done = api.enqueue(sub, id.clone(), Flavor::Cloud, api.timings.retention_sync);
    tokio::select! {
        _ = tokio::time::timeout(wait, done.wait_for(|d| *d)) => {}
        _ = api.stop.cancelled() => {}
    }
    let store = api.store();
    match store.jobs.get(&id) {
        Some(rec) if rec.status.is_final() => Json(rec.status_json(&api.worker_id)).into_response(),
        Some(rec) => Json(json!({"id": id, "status": rec.status.as_str()})).into_response(),
        None => error_response(StatusCode::NOT_FOUND, format!("job {id} not found")),
    }
}

fn not_found(id: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("job {id} not found (unknown id, or its result expired)"),
    )
}

async fn v2_status(
    State(api): State<Arc<Api>>,
    Path((_ep, id)): Path<(String, String)>,
) -> Response {
    let store = api.store();
    match store.jobs.get(&id) {
        Some(rec) => Json(rec.status_json(&api.worker_id)).into_response(),
        None => not_found(&id),
    }
}

/// Returns the chunks streamed since the last call (the Python client relies on that).
async fn v2_stream(
    State(api): State<Arc<Api>>,
    Path((_ep, id)): Path<(String, String)>,
) -> Response {
    let mut store = api.store();
    match store.jobs.get_mut(&id) {
        Some(rec) => {
            let chunks: Vec<Value> = rec
                .pending_stream
                .drain(..)
                .map(|c| json!({"output": c}))
                .collect();
            Json(json!({"id": id, "status": rec.status.as_str(), "stream": chunks})).into_response()
        }
        None => not_found(&id),
    }
}

async fn v2_cancel(
    State(api): State<Arc<Api>>,
    Path((_ep, id)): Path<(String, String)>,
) -> Response {
    let mut store = api.store();
    let Some(rec) = store.jobs.get_mut(&id) else {
        return not_found(&id);
    };
    match rec.status {
        Status::InQueue => {
            rec.status = Status::Cancelled;
            rec.finished = Some(Instant::now());
            rec.done.send_replace(true);
            store.queue.retain(|q| q != &id);
        }
        Status::InProgress => {
            // The job's runner sees the token and records CANCELLED.
            rec.cancel.cancel();
            drop(store);
            return Json(json!({"id": id, "status": "CANCELLED"})).into_response();
        }
        _ => {}
    }
    let status = store
        .jobs
        .get(&id)
        .map(|r| r.status.as_str())
        .unwrap_or("CANCELLED");
    Json(json!({"id": id, "status": status})).into_response()
}

async fn v2_retry(
    State(api): State<Arc<Api>>,
    Path((_ep, id)): Path<(String, String)>,
) -> Response {
    let mut store = api.store();
    let Some(rec) = store.jobs.get_mut(&id) else {
        return not_found(&id);
    };
    if !matches!(rec.status, Status::Failed | Status::TimedOut) {
        let msg = format!(
            "only FAILED or TIMED_OUT jobs can be retried; job {id} is {}",
            rec.status.as_str()
        );
        return error_response(StatusCode::BAD_REQUEST, msg);
    }
    rec.status = Status::InQueue;
    rec.output = None;
    rec.error = None;
    rec.started = None;
    rec.finished = None;
    rec.submitted = Instant::now();
    rec.pending_stream.clear();
    rec.all_stream.clear();
    rec.cancel = CancellationToken::new();
    rec.done.send_replace(false);
    store.retried += 1;
    store.queue.push_back(id.clone());
    drop(store);
    api.work.notify_one();
    Json(json!({"id": id, "status": "IN_QUEUE"})).into_response()
}

async fn v2_purge(State(api): State<Arc<Api>>) -> Response {
    let mut store = api.store();
    let queued: Vec<String> = store.queue.drain(..).collect();
    let mut removed = 0;
    for id in queued {
        if let Some(rec) = store.jobs.get_mut(&id) {
            if rec.status == Status::InQueue {
                rec.status = Status::Cancelled;
                rec.finished = Some(Instant::now());
                rec.done.send_replace(true);
                removed += 1;
            }
        }
    }
    Json(json!({"removed": removed, "status": "completed"})).into_response()
}

async fn v2_health(State(api): State<Arc<Api>>) -> Response {
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

// ---- the SDK dev server's routes ------------------------------------------------------

/// `{"id", "status", "output"|"error"}` with absent fields omitted, like the dev server.
fn dev_result(rec: &Record) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(rec.id));
    m.insert("status".into(), json!(rec.status.as_str()));
    if let Some(o) = &rec.output {
        m.insert("output".into(), o.clone());
    }
    if let Some(e) = &rec.error {
        m.insert("error".into(), e.clone());
    }
    Value::Object(m)
}

fn dev_not_found(id: &str) -> Response {
    Json(json!({"id": id, "status": "FAILED", "error": "Job ID not found"})).into_response()
}

async fn dev_submit(
    api: &Arc<Api>,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    route: &str,
) -> Result<(String, watch::Receiver<bool>), Response> {
    let value = read_json(headers, body, limit, route).await?;
    let sub = parse_submission(value, true)
        .map_err(|e| error_response(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let id = format!("test-{}", uuid::Uuid::new_v4());
    let rx = api.enqueue(sub, id.clone(), Flavor::Dev, api.timings.retention_run);
    Ok((id, rx))
}

async fn dev_run(State(api): State<Arc<Api>>, headers: HeaderMap, body: Body) -> Response {
    match dev_submit(&api, &headers, body, RUN_BODY_LIMIT, "/run").await {
        Ok((id, _)) => Json(json!({"id": id, "status": "IN_PROGRESS"})).into_response(),
        Err(r) => r,
    }
}

async fn dev_runsync(State(api): State<Arc<Api>>, headers: HeaderMap, body: Body) -> Response {
    let (id, mut done) =
        match dev_submit(&api, &headers, body, RUNSYNC_BODY_LIMIT, "/runsync").await {
            Ok(x) => x,
            Err(r) => return r,
        };
    tokio::select! {
        _ = done.wait_for(|d| *d) => {}
        _ = api.stop.cancelled() => {}
    }
    let store = api.store();
    match store.jobs.get(&id) {
        Some(rec) => Json(dev_result(rec)).into_response(),
        None => dev_not_found(&id),
    }
}

/// Waits until the job is final; `None` for unknown ids.
async fn wait_final(api: &Arc<Api>, id: &str) -> Option<()> {
    let mut rx = api.store().jobs.get(id)?.done.subscribe();
    tokio::select! {
        _ = rx.wait_for(|d| *d) => {}
        _ = api.stop.cancelled() => {}
    }
    Some(())
}

async fn dev_status(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    if wait_final(&api, &id).await.is_none() {
        return dev_not_found(&id);
    }
    let store = api.store();
    match store.jobs.get(&id) {
        Some(rec) => Json(dev_result(rec)).into_response(),
        None => dev_not_found(&id),
    }
}

async fn dev_stream(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    if api.streaming() == Some(false) {
        return Json(json!({"id": id, "status": "FAILED",
            "error": "Stream not supported, handler must be a generator."}))
        .into_response();
    }
    if wait_final(&api, &id).await.is_none() {
        return dev_not_found(&id);
    }
    let store = api.store();
    let Some(rec) = store.jobs.get(&id) else {
        return dev_not_found(&id);
    };
    if rec.status != Status::Completed {
        return Json(dev_result(rec)).into_response();
    }
    let chunks: Vec<Value> = rec
        .all_stream
        .iter()
        .map(|c| json!({"output": c}))
        .collect();
    Json(json!({"id": id, "status": "COMPLETED", "stream": chunks})).into_response()
}

// ---- auth, router, workers -------------------------------------------------------------

/// Compares without an early exit, so response time does not reveal a key prefix.
fn same_key(given: &str, key: &str) -> bool {
    let (a, b) = (given.as_bytes(), key.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, byte) in b.iter().enumerate() {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ byte);
    }
    diff == 0
}

async fn require_key(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    if let Some(key) = &api.api_key {
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

fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v2/{endpoint_id}/run", post(v2_run))
        .route("/v2/{endpoint_id}/runsync", post(v2_runsync))
        .route(
            "/v2/{endpoint_id}/status/{id}",
            get(v2_status).post(v2_status),
        )
        .route(
            "/v2/{endpoint_id}/stream/{id}",
            get(v2_stream).post(v2_stream),
        )
        .route("/v2/{endpoint_id}/cancel/{id}", post(v2_cancel))
        .route("/v2/{endpoint_id}/retry/{id}", post(v2_retry))
        .route("/v2/{endpoint_id}/purge-queue", post(v2_purge))
        .route("/v2/{endpoint_id}/health", get(v2_health))
        .route("/run", post(dev_run))
        .route("/runsync", post(dev_runsync))
        .route("/status/{id}", get(dev_status).post(dev_status))
        .route("/stream/{id}", get(dev_stream).post(dev_stream))
        .layer(middleware::from_fn_with_state(api.clone(), require_key))
        .with_state(api)
}

/// One of `concurrency` job runners.
async fn runner(
    api: Arc<Api>,
    handler: Arc<dyn Handler>,
    cfg: HandlerConfig,
    stop: CancellationToken,
) {
    loop {
        let notified = api.work.notified();
        let Some((job, cancel, timeout)) = api.next_job() else {
            tokio::select! {
                _ = notified => continue,
                _ = stop.cancelled() => return,
            }
        };
        run_one(&api, handler.clone(), &cfg, job, cancel, timeout).await;
    }
}

async fn run_one(
    api: &Arc<Api>,
    handler: Arc<dyn Handler>,
    cfg: &HandlerConfig,
    job: Job,
    cancel: CancellationToken,
    timeout: Option<Duration>,
) {
    let id = job.id.clone();
    tracing::info!(job_id = %id, "Started.");
    let (
        ctx,
        ContextReceivers {
            mut progress,
            stream,
        },
    ) = JobContext::with_channels(&id, cancel.clone(), cfg.streaming);
    let done = CancellationToken::new();
    let progress_task = {
        let (api, id, done) = (api.clone(), id.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    v = progress.recv() => v,
                    _ = done.cancelled() => progress.try_recv().ok(),
                };
                let Some(v) = next else { return };
                if let Some(rec) = api.store().jobs.get_mut(&id) {
                    if rec.status == Status::InProgress {
                        rec.output = Some(v);
                    }
                }
            }
        })
    };
    let stream_task = stream.map(|mut rx| {
        let (api, id, done) = (api.clone(), id.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    v = rx.recv() => v,
                    _ = done.cancelled() => rx.try_recv().ok(),
                };
                let Some(v) = next else { return };
                if let Some(rec) = api.store().jobs.get_mut(&id) {
                    rec.pending_stream.push(v.clone());
                    rec.all_stream.push(v);
                }
            }
        })
    });
    let timed_out = Arc::new(AtomicBool::new(false));
    let timer = timeout.map(|t| {
        let (cancel, timed_out) = (cancel.clone(), timed_out.clone());
        tokio::spawn(async move {
            tokio::time::sleep(t).await;
            timed_out.store(true, Ordering::SeqCst);
            cancel.cancel();
        })
    });
    let outcome = execute(handler, job, ctx, &cancel).await;
    if let Some(t) = timer {
        t.abort();
    }
    done.cancel();
    let _ = progress_task.await;
    if let Some(t) = stream_task {
        let _ = t.await;
    }
    match outcome {
        Outcome::Finished(result) if !cancel.is_cancelled() => {
            log_result(&result);
            let chunks = api
                .store()
                .jobs
                .get(&id)
                .map(|r| r.all_stream.clone())
                .unwrap_or_default();
            let body = result_body(result, cfg, chunks, &api.who);
            if body.stop_pod {
                tracing::info!(job_id = %id, "result asks for a worker refresh (stopPod); ignored locally");
            }
            let status = if body.is_error() {
                Status::Failed
            } else {
                Status::Completed
            };
            tracing::info!(job_id = %id, status = status.as_str(), "Finished.");
            api.finish(&id, status, body.output, body.error);
        }
        _ => {
            let status = if timed_out.load(Ordering::SeqCst) {
                Status::TimedOut
            } else {
                Status::Cancelled
            };
            tracing::info!(job_id = %id, status = status.as_str(), "job stopped");
            api.finish(&id, status, None, None);
        }
    }
}

/// Drops finished jobs whose retention has passed.
async fn janitor(api: Arc<Api>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(api.timings.janitor_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let mut store = api.store();
        store.jobs.retain(|_, r| match r.finished {
            Some(f) if r.status.is_final() => f.elapsed() < r.retention,
            _ => true,
        });
    }
}

pub(crate) async fn run(
    args: &RuntimeArgs,
    timings: Timings,
    init: impl Future<Output = anyhow::Result<Arc<dyn Handler>>> + Send + 'static,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let http = reqwest::Client::builder()
        .user_agent(super::client::user_agent())
        .build()
        .context("building the webhook HTTP client")?;
    let stop = shutdown.child_token();
    let api = Arc::new(Api {
        store: Mutex::new(Store::default()),
        work: Notify::new(),
        state: Mutex::new(WorkerState::Initializing),
        handler: OnceLock::new(),
        api_key: args.rp_api_key.clone().filter(|k| !k.is_empty()),
        worker_id: args
            .pod_id
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "local".into()),
        who: args.identity(),
        timings,
        http,
        stop: stop.clone(),
        held: HeldJobs::default(),
    });
    // Like the SDK's dev server: ping RunPod when the heartbeat variables are set.
    let _heartbeat = match args.heartbeat(&api.timings) {
        Some(ping) => Some(
            Heartbeat::start(ping, api.held.clone()).context("starting the heartbeat thread")?,
        ),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind((args.rp_api_host, args.rp_api_port))
        .await
        .with_context(|| {
            format!(
                "binding the local endpoint API to {}:{}",
                args.rp_api_host, args.rp_api_port
            )
        })?;
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    tracing::info!(
        "local endpoint API listening on http://{addr}/v2/<endpoint_id>/ (run, runsync, status, stream, cancel, retry, purge-queue, health); dev routes /run, /runsync, /status, /stream"
    );

    let init_error: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    {
        let (api, stop, init_error) = (api.clone(), stop.clone(), init_error.clone());
        let concurrency = usize::from(args.concurrency);
        let (refresh, aggregate) = (args.refresh_worker, args.return_aggregate_stream);
        tokio::spawn(async move {
            let handler = tokio::select! {
                h = init => h,
                _ = stop.cancelled() => return,
            };
            match handler {
                Ok(handler) => {
                    let mut cfg = handler.config();
                    cfg.refresh_worker |= refresh;
                    cfg.return_aggregate_stream |= aggregate;
                    let _ = api.handler.set((handler.clone(), cfg));
                    *api.worker_state() = WorkerState::Ready;
                    tracing::info!("worker ready");
                    for _ in 0..concurrency {
                        tokio::spawn(runner(api.clone(), handler.clone(), cfg, stop.clone()));
                    }
                }
                Err(err) => {
                    *api.worker_state() = WorkerState::Failed;
                    *init_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(err);
                    stop.cancel();
                }
            }
        });
    }
    tokio::spawn(janitor(api.clone(), stop.clone()));

    axum::serve(listener, router(api))
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .await
        .context("local endpoint API server failed")?;
    stop.cancel();
    let failed = init_error.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(err) = failed {
        return Err(err.context("worker initialisation failed"));
    }
    Ok(ExitCode::SUCCESS)
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
