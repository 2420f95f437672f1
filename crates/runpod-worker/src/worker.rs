//! Serverless mode: the job loop against RunPod's worker-facing job API
//! (docs/runpod-protocol.md, *Job take* through *Shutdown*).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::args::{nonempty, Timings};
use crate::client::{JobApi, StopPoll, Take};
use crate::exec::{await_init, Ended, JobEvents, JobRunner, Launch};
use crate::handler::Job;
use crate::heartbeat::{Heartbeat, HeldJobs};
use crate::lock;
use crate::result::to_python_json;
use crate::urls::JobUrls;

/// job-done bodies above this size are known to be refused (docs/runpod-protocol.md,
/// *Endpoint API limits*).
const RESULT_SIZE_WARNING: usize = 20 * 1024 * 1024;

/// Cancellation tokens of the jobs that are running, by id (for job-stop).
type Running = Arc<Mutex<HashMap<String, CancellationToken>>>;

/// Everything a job task needs.
struct Shared {
    api: JobApi,
    runner: JobRunner,
    held: HeldJobs,
    running: Running,
    slot_freed: Notify,
    stop_taking: CancellationToken,
}

pub(crate) async fn run(launch: Launch<'_>) -> anyhow::Result<ExitCode> {
    let (args, timings, shutdown) = (launch.args, launch.timings, launch.shutdown);
    let get_job = nonempty(&args.webhook_get_job).context("RUNPOD_WEBHOOK_GET_JOB is empty")?;
    let post_output = nonempty(&args.webhook_post_output).context(
        "RUNPOD_WEBHOOK_POST_OUTPUT is not set: results could not be delivered, so no job is taken",
    )?;
    // The SDK uses a random id when RUNPOD_POD_ID is missing (docs/runpod-protocol.md,
    // *Environment*).
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
    let Some(handler) = await_init(launch.init, &shutdown).await? else {
        tracing::info!("shutdown requested during initialisation");
        return Ok(ExitCode::SUCCESS);
    };
    let cfg = args.handler_config(handler.config());

    let held = HeldJobs::default();
    let heartbeat = match crate::heartbeat::PingConfig::from_args(args, &timings) {
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
        runner: JobRunner {
            handler,
            cfg,
            who: args.identity(),
        },
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

/// Takes jobs while there is room, until `stop_taking` fires (docs/runpod-protocol.md,
/// *Concurrency*).
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
    let events = Arc::new(PostEvents {
        shared: shared.clone(),
        id: id.clone(),
    });
    let body = match shared.runner.run(job, &cancel, events).await {
        Ended::Result(body) => body,
        Ended::Stopped => {
            tracing::info!("job stopped by the platform; no result posted");
            return;
        }
    };
    let failed = body.is_error();
    let text = body.to_json();
    let bytes = text.len();
    if bytes > RESULT_SIZE_WARNING {
        tracing::warn!(
            bytes,
            "result is larger than RunPod's ~20 MB job-done limit and may be rejected; return URLs (S3 upload) instead of inline images"
        );
    }
    let streaming = shared.runner.cfg.streaming;
    match shared.api.post_result(&id, text, streaming).await {
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
    if shared.runner.cfg.refresh_worker {
        tracing::info!("refresh_worker is set; stopping after this job");
        shared.stop_taking.cancel();
    }
}

#[derive(Serialize)]
struct ProgressBody<'a> {
    status: &'static str,
    output: &'a Value,
}

#[derive(Serialize)]
struct ChunkBody<'a> {
    output: &'a Value,
}

/// Progress and chunks of one job, posted to the job API (docs/runpod-protocol.md,
/// *Progress* and *Streaming*).
struct PostEvents {
    shared: Arc<Shared>,
    id: String,
}

#[async_trait::async_trait]
impl JobEvents for PostEvents {
    /// Only the latest of the pending updates is posted: progress is a state, not a log.
    async fn progress(&self, updates: Vec<Value>) {
        let Some(latest) = updates.last() else {
            return;
        };
        let body = to_python_json(
            &ProgressBody {
                status: "IN_PROGRESS",
                output: latest,
            },
            false,
        );
        // Progress is best-effort; it must not hold up the result for long.
        match tokio::time::timeout(
            Duration::from_secs(10),
            self.shared.api.post_progress(&self.id, body),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!("progress update failed: {err}"),
            Err(_) => tracing::warn!("progress update timed out"),
        }
    }

    async fn chunk(&self, chunk: &Value) {
        let body = to_python_json(&ChunkBody { output: chunk }, false);
        if let Err(err) = self.shared.api.post_stream(&self.id, body).await {
            tracing::error!(job_id = %self.id, "a stream chunk could not be delivered: {err}");
        }
    }
}

/// job-stop long-poll: cancels running jobs the platform names (docs/runpod-protocol.md,
/// *Job stop*).
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
