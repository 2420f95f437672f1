//! Serverless mode: the job loop against RunPod's worker-facing job API (spec §5–§13, §15b).

use std::collections::HashMap;
use std::future::Future;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::client::{JobApi, StopPoll, Take};
use super::exec::{execute, log_result, result_body, Outcome};
use super::handler::{ContextReceivers, Handler, HandlerConfig, Job, JobContext};
use super::heartbeat::{Heartbeat, HeldJobs};
use super::result::to_python_json;
use super::urls::JobUrls;
use super::{nonempty, RuntimeArgs, Timings, WorkerIdentity};

/// job-done bodies above this size are known to be refused (spec §22.1).
const RESULT_SIZE_WARNING: usize = 20 * 1024 * 1024;

/// Cancellation tokens of the jobs that are running, by id (for job-stop).
type Running = Arc<Mutex<HashMap<String, CancellationToken>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything a job task needs.
struct Shared {
    api: JobApi,
    handler: Arc<dyn Handler>,
    cfg: HandlerConfig,
    who: WorkerIdentity,
    held: HeldJobs,
    running: Running,
    slot_freed: Notify,
    stop_taking: CancellationToken,
}

pub(crate) async fn run(
    args: &RuntimeArgs,
    timings: Timings,
    init: impl Future<Output = anyhow::Result<Arc<dyn Handler>>> + Send + 'static,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let get_job = nonempty(&args.webhook_get_job).context("RUNPOD_WEBHOOK_GET_JOB is empty")?;
    let post_output = nonempty(&args.webhook_post_output).context(
        "RUNPOD_WEBHOOK_POST_OUTPUT is not set: results could not be delivered, so no job is taken",
    )?;
    // The SDK uses a random id when RUNPOD_POD_ID is missing (spec §2).
    let worker_id = nonempty(&args.pod_id)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let urls = JobUrls::new(
        &worker_id,
        get_job,
        post_output,
        args.stream_template().as_deref(),
    );
    reqwest::Url::parse(&urls.take_url(1, false))
        .context("RUNPOD_WEBHOOK_GET_JOB is not a valid URL")?;
    reqwest::Url::parse(&urls.done_url("job", false))
        .context("RUNPOD_WEBHOOK_POST_OUTPUT is not a valid URL")?;
    let api = JobApi::new(urls, args.runpod_ai_api_key.as_deref(), timings.clone())?;

    tracing::info!(worker_id = %worker_id, concurrency = args.concurrency, "starting serverless worker");
    let handler = tokio::select! {
        h = init => h.context("worker initialisation failed")?,
        _ = shutdown.cancelled() => {
            tracing::info!("shutdown requested during initialisation");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let mut cfg = handler.config();
    cfg.refresh_worker |= args.refresh_worker;
    cfg.return_aggregate_stream |= args.return_aggregate_stream;

    let held = HeldJobs::default();
    let heartbeat = match args.heartbeat(&timings) {
        Some(ping) => {
            Some(Heartbeat::start(ping, held.clone()).context("starting the heartbeat thread")?)
        }
        None => {
            tracing::warn!("heartbeat not started: RUNPOD_AI_API_KEY, RUNPOD_POD_ID or RUNPOD_WEBHOOK_PING missing");
            None
        }
    };

    let shared = Arc::new(Shared {
        api,
        handler,
        cfg,
        who: args.identity(),
        held,
        running: Running::default(),
        slot_freed: Notify::new(),
        stop_taking: shutdown.child_token(),
    });

    let monitor_stop = CancellationToken::new();
    let monitor = shared.api.has_stop_channel().then(|| {
        tokio::spawn(stop_monitor(
            shared.clone(),
            monitor_stop.clone(),
            timings.clone(),
        ))
    });

    let tasks = TaskTracker::new();
    take_loop(&shared, &tasks, usize::from(args.concurrency), &timings).await;

    tasks.close();
    if !tasks.is_empty() {
        tracing::info!(
            jobs = shared.held.len(),
            "no longer taking jobs; finishing the running ones"
        );
    }
    tasks.wait().await;
    monitor_stop.cancel();
    if let Some(m) = monitor {
        let _ = m.await;
    }
    if let Some(hb) = heartbeat {
        // Joining the heartbeat thread takes at most one in-flight select; do it off the
        // async threads anyway.
        let _ = tokio::task::spawn_blocking(move || drop(hb)).await;
    }
    tracing::info!("worker stopped");
    Ok(ExitCode::SUCCESS)
}

/// Takes jobs while there is room, until `stop_taking` fires (spec §6).
async fn take_loop(
    shared: &Arc<Shared>,
    tasks: &TaskTracker,
    concurrency: usize,
    timings: &Timings,
) {
    let stop = shared.stop_taking.clone();
    while !stop.is_cancelled() {
        let held = shared.held.len();
        let wanted = concurrency.saturating_sub(held);
        if wanted == 0 {
            tokio::select! {
                _ = shared.slot_freed.notified() => {}
                _ = stop.cancelled() => {}
            }
            continue;
        }
        let started = Instant::now();
        // An in-flight take is not abandoned on shutdown: the server may already have
        // assigned jobs to us, and those are run (SDK behaviour).
        let taken =
            match tokio::time::timeout(timings.take_timeout, shared.api.take(wanted, held > 0))
                .await
            {
                Ok(t) => t,
                Err(_) => {
                    tracing::warn!("job-take timed out after {:?}", timings.take_timeout);
                    continue;
                }
            };
        let pause = match taken {
            Take::Jobs(jobs) => {
                if jobs.len() > wanted {
                    tracing::warn!(
                        asked = wanted,
                        got = jobs.len(),
                        "job-take returned more jobs than asked for; running them all"
                    );
                }
                for job in jobs {
                    start_job(shared, tasks, job);
                }
                Duration::ZERO
            }
            Take::TooManyRequests => timings.too_many_requests_backoff,
            Take::Empty | Take::Failed => timings.take_floor.saturating_sub(started.elapsed()),
        };
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => {}
            }
        }
    }
}

fn start_job(shared: &Arc<Shared>, tasks: &TaskTracker, job: Job) {
    let cancel = CancellationToken::new();
    {
        let mut running = lock(&shared.running);
        if running.contains_key(&job.id) {
            // A re-delivery of a job that is running here: its result will come from the
            // running copy, and two copies would corrupt the held-jobs accounting.
            tracing::warn!(job_id = %job.id, "job-take delivered a job that is already running; ignored");
            return;
        }
        running.insert(job.id.clone(), cancel.clone());
    }
    shared.held.add(&job.id);
    let span = match job.extra.get("batchId").and_then(Value::as_str) {
        Some(batch) => tracing::info_span!("job", job_id = %job.id, batch_id = %batch),
        None => tracing::info_span!("job", job_id = %job.id),
    };
    let shared = shared.clone();
    tasks.spawn(
        async move {
            let id = job.id.clone();
            run_job(&shared, job, cancel).await;
            shared.held.remove(&id);
            lock(&shared.running).remove(&id);
            shared.slot_freed.notify_one();
        }
        .instrument(span),
    );
}

async fn run_job(shared: &Arc<Shared>, job: Job, cancel: CancellationToken) {
    let id = job.id.clone();
    let started = Instant::now();
    tracing::info!("Started.");
    let (ctx, ContextReceivers { progress, stream }) =
        JobContext::with_channels(&id, cancel.clone(), shared.cfg.streaming);
    let handler_done = CancellationToken::new();
    let progress_task = tokio::spawn(post_progress(
        shared.clone(),
        id.clone(),
        progress,
        handler_done.clone(),
        cancel.clone(),
    ));
    let stream_task = stream.map(|rx| {
        tokio::spawn(post_stream(
            shared.clone(),
            id.clone(),
            rx,
            handler_done.clone(),
            cancel.clone(),
        ))
    });

    let outcome = execute(shared.handler.clone(), job, ctx, &cancel).await;
    handler_done.cancel();
    let _ = progress_task.await;
    let chunks = match stream_task {
        Some(t) => t.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let result = match outcome {
        Outcome::Finished(r) if !cancel.is_cancelled() => r,
        _ => {
            tracing::info!("job stopped by the platform; no result posted");
            return;
        }
    };
    log_result(&result);
    let body = result_body(result, &shared.cfg, chunks, &shared.who);
    let failed = body.is_error();
    let text = body.to_json();
    let bytes = text.len();
    if bytes > RESULT_SIZE_WARNING {
        tracing::warn!(
            bytes,
            "result is larger than RunPod's ~20 MB job-done limit and may be rejected; return URLs (S3 upload) instead of inline images"
        );
    }
    match shared
        .api
        .post_result(&id, text, shared.cfg.streaming)
        .await
    {
        Ok(()) => tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            failed,
            bytes,
            "Finished."
        ),
        Err(err) => tracing::error!(
            job_id = %id,
            bytes,
            "result of job {id} could not be delivered: {err}"
        ),
    }
    if shared.cfg.refresh_worker {
        tracing::info!("refresh_worker is set; stopping after this job");
        shared.stop_taking.cancel();
    }
}

#[derive(Serialize)]
struct ProgressBody<'a> {
    status: &'static str,
    output: &'a Value,
}

/// Posts progress updates in order, coalescing to the latest pending one; ends when the
/// handler is done and nothing is pending, or silently when the job is stopped.
async fn post_progress(
    shared: Arc<Shared>,
    id: String,
    mut rx: mpsc::UnboundedReceiver<Value>,
    done: CancellationToken,
    cancel: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            v = rx.recv() => v,
            _ = done.cancelled() => rx.try_recv().ok(),
        };
        let Some(mut latest) = next else { return };
        while let Ok(v) = rx.try_recv() {
            latest = v;
        }
        if cancel.is_cancelled() {
            return;
        }
        let body = to_python_json(
            &ProgressBody {
                status: "IN_PROGRESS",
                output: &latest,
            },
            false,
        );
        // Progress is best-effort; it must not hold up the result for long.
        match tokio::time::timeout(Duration::from_secs(10), shared.api.post_progress(&id, body))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!("progress update failed: {err}"),
            Err(_) => tracing::warn!("progress update timed out"),
        }
    }
}

#[derive(Serialize)]
struct ChunkBody<'a> {
    output: &'a Value,
}

/// Posts stream chunks one by one, in order, and returns them all (for the aggregate).
async fn post_stream(
    shared: Arc<Shared>,
    id: String,
    mut rx: mpsc::UnboundedReceiver<Value>,
    done: CancellationToken,
    cancel: CancellationToken,
) -> Vec<Value> {
    let mut chunks = Vec::new();
    loop {
        let next = tokio::select! {
            v = rx.recv() => v,
            _ = done.cancelled() => rx.try_recv().ok(),
        };
        let Some(chunk) = next else { return chunks };
        if cancel.is_cancelled() {
            return chunks;
        }
        let body = to_python_json(&ChunkBody { output: &chunk }, false);
        if let Err(err) = shared.api.post_stream(&id, body).await {
            tracing::error!(job_id = %id, "stream chunk {} could not be delivered: {err}", chunks.len());
        }
        chunks.push(chunk);
    }
}

/// job-stop long-poll: cancels running jobs the platform names (spec §12).
async fn stop_monitor(shared: Arc<Shared>, stop: CancellationToken, timings: Timings) {
    loop {
        let started = Instant::now();
        let poll = tokio::select! {
            r = tokio::time::timeout(timings.stop_timeout, shared.api.stop_signals()) => r,
            _ = stop.cancelled() => return,
        };
        let pause = match poll {
            Ok(StopPoll::Ids(ids)) => {
                let running = lock(&shared.running);
                for id in ids {
                    match running.get(&id) {
                        Some(token) => {
                            tracing::info!(job_id = %id, "job-stop received; cancelling the job");
                            token.cancel();
                        }
                        None => {
                            tracing::debug!(job_id = %id, "job-stop for a job not running here")
                        }
                    }
                }
                timings.stop_floor.saturating_sub(started.elapsed())
            }
            Ok(StopPoll::Empty) => timings.stop_floor.saturating_sub(started.elapsed()),
            Ok(StopPoll::TooManyRequests) => timings.too_many_requests_backoff,
            Ok(StopPoll::Failed) => timings.stop_floor,
            Err(_) => Duration::ZERO,
        };
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
