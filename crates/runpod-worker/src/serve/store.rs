//! The local endpoint API's job store: the queue, each job's record and status, webhooks on
//! completion and expiry of old results (docs/runpod-protocol.md, *Local endpoint API*).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::request::Submission;
use crate::args::Timings;
use crate::exec::JobRunner;
use crate::handler::Job;
use crate::heartbeat::HeldJobs;
use crate::lock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    InQueue,
    InProgress,
    Completed,
    Failed,
    Cancelled,
    TimedOut,
}

impl Status {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Status::InQueue => "IN_QUEUE",
            Status::InProgress => "IN_PROGRESS",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::Cancelled => "CANCELLED",
            Status::TimedOut => "TIMED_OUT",
        }
    }

    pub(super) fn is_final(self) -> bool {
        !matches!(self, Status::InQueue | Status::InProgress)
    }
}

/// Which webhook payload a job gets: the cloud's full status object, or the SDK dev
/// server's `{"output": …}` (sent on success only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    Cloud,
    Dev,
}

pub(super) struct Record {
    pub id: String,
    input: Value,
    extra: Map<String, Value>,
    webhook: Option<String>,
    flavor: Flavor,
    execution_timeout: Option<Duration>,
    retention: Duration,
    pub status: Status,
    pub output: Option<Value>,
    pub error: Option<Value>,
    /// Chunks not yet returned by `/v2/…/stream`.
    pub pending_stream: Vec<Value>,
    /// Every chunk (the dev server's `/stream` returns them all at the end).
    pub all_stream: Vec<Value>,
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

    /// The `/status` object (docs/runpod-protocol.md, *Local endpoint API*).
    pub(super) fn status_json(&self, worker_id: &str) -> Value {
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

    /// `{"id", "status", "output"|"error"}` with absent fields omitted, as the SDK's dev
    /// server answers.
    pub(super) fn dev_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("status".into(), json!(self.status.as_str()));
        if let Some(o) = &self.output {
            m.insert("output".into(), o.clone());
        }
        if let Some(e) = &self.error {
            m.insert("error".into(), e.clone());
        }
        Value::Object(m)
    }

    /// A final state reached without running (cancelled or purged from the queue).
    fn end_unrun(&mut self, status: Status) {
        self.status = status;
        self.finished = Some(Instant::now());
        self.done.send_replace(true);
    }
}

#[derive(Default)]
pub(super) struct Store {
    pub jobs: HashMap<String, Record>,
    queue: VecDeque<String>,
    pub running: usize,
    pub completed: u64,
    pub failed: u64,
    pub retried: u64,
}

pub(super) enum WorkerState {
    Initializing,
    Ready,
    Failed,
}

/// Why `/retry` refused.
pub(super) enum RetryError {
    NotFound,
    NotFailed(Status),
}

/// The state behind every route.
pub(super) struct Api {
    store: Mutex<Store>,
    work: Notify,
    state: Mutex<WorkerState>,
    /// Set once the handler is built.
    pub runner: OnceLock<JobRunner>,
    pub api_key: Option<String>,
    pub worker_id: String,
    pub timings: Timings,
    http: reqwest::Client,
    /// Fires on shutdown; requests that wait for a job give up then, so that the server's
    /// graceful shutdown does not hang on them.
    pub stop: CancellationToken,
    /// Running jobs, for the heartbeat the SDK's dev server also sends when configured.
    pub held: HeldJobs,
}

impl Api {
    pub(super) fn new(
        api_key: Option<String>,
        worker_id: String,
        timings: Timings,
        http: reqwest::Client,
        stop: CancellationToken,
    ) -> Self {
        Api {
            store: Mutex::new(Store::default()),
            work: Notify::new(),
            state: Mutex::new(WorkerState::Initializing),
            runner: OnceLock::new(),
            api_key,
            worker_id,
            timings,
            http,
            stop,
            held: HeldJobs::default(),
        }
    }

    pub(super) fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    pub(super) fn worker_state(&self) -> MutexGuard<'_, WorkerState> {
        lock(&self.state)
    }

    /// Whether the handler streams; `None` while it is being built.
    pub(super) fn streaming(&self) -> Option<bool> {
        self.runner.get().map(|r| r.cfg.streaming)
    }

    /// Runs `f` on the job's record; `None` for unknown (or expired) ids.
    pub(super) fn with_job<T>(&self, id: &str, f: impl FnOnce(&mut Record) -> T) -> Option<T> {
        self.store().jobs.get_mut(id).map(f)
    }

    /// Queues a job ([`Api::wait_final`] waits for its end).
    pub(super) fn enqueue(&self, sub: Submission, id: String, flavor: Flavor, retention: Duration) {
        let (done, _) = watch::channel(false);
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
    }

    /// Waits until the job is final (or shutdown); `None` for unknown ids.
    pub(super) async fn wait_final(&self, id: &str, limit: Option<Duration>) -> Option<()> {
        let mut rx = self.store().jobs.get(id)?.done.subscribe();
        let wait = async {
            match limit {
                Some(limit) => {
                    let _ = tokio::time::timeout(limit, rx.wait_for(|d| *d)).await;
                }
                None => {
                    let _ = rx.wait_for(|d| *d).await;
                }
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = self.stop.cancelled() => {}
        }
        Some(())
    }

    /// Waits for work: the next queued job, marked running, with its cancel token and
    /// execution timeout. `None` once `stop` fires.
    pub(super) async fn next_job(
        &self,
        stop: &CancellationToken,
    ) -> Option<(Job, CancellationToken, Option<Duration>)> {
        loop {
            let notified = self.work.notified();
            if let Some(next) = self.take_queued() {
                return Some(next);
            }
            tokio::select! {
                _ = notified => {}
                _ = stop.cancelled() => return None,
            }
        }
    }

    fn take_queued(&self) -> Option<(Job, CancellationToken, Option<Duration>)> {
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
    pub(super) fn finish(
        &self,
        id: &str,
        status: Status,
        output: Option<Value>,
        error: Option<Value>,
    ) {
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

    /// `/cancel`: a queued job ends at once; a running one is told to stop (its runner then
    /// records CANCELLED). Returns the status to report, `None` for unknown ids.
    pub(super) fn cancel(&self, id: &str) -> Option<Status> {
        let mut store = self.store();
        let rec = store.jobs.get_mut(id)?;
        match rec.status {
            Status::InQueue => {
                rec.end_unrun(Status::Cancelled);
                store.queue.retain(|q| q != id);
                Some(Status::Cancelled)
            }
            Status::InProgress => {
                rec.cancel.cancel();
                Some(Status::Cancelled)
            }
            other => Some(other),
        }
    }

    /// `/retry`: a FAILED or TIMED_OUT job goes back into the queue, its results cleared.
    pub(super) fn retry(&self, id: &str) -> Result<(), RetryError> {
        let mut store = self.store();
        let rec = store.jobs.get_mut(id).ok_or(RetryError::NotFound)?;
        if !matches!(rec.status, Status::Failed | Status::TimedOut) {
            return Err(RetryError::NotFailed(rec.status));
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
        store.queue.push_back(id.to_owned());
        drop(store);
        self.work.notify_one();
        Ok(())
    }

    /// `/purge-queue`: cancels every queued job; returns how many.
    pub(super) fn purge(&self) -> usize {
        let mut store = self.store();
        let queued: Vec<String> = store.queue.drain(..).collect();
        let mut removed = 0;
        for id in queued {
            if let Some(rec) = store.jobs.get_mut(&id) {
                if rec.status == Status::InQueue {
                    rec.end_unrun(Status::Cancelled);
                    removed += 1;
                }
            }
        }
        removed
    }
}

/// POSTs a webhook; 3 attempts with a pause, as the platform does (docs/runpod-protocol.md,
/// *Local endpoint API*).
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

/// Drops finished jobs whose retention has passed.
pub(super) async fn janitor(api: Arc<Api>, stop: CancellationToken) {
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
