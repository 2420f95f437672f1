//! Running jobs, shared by the three modes: picking the mode, waiting for the handler to be
//! built, and running one job from start to result body. A job runs on its own task, so
//! a panic stays inside that job; its progress updates and stream chunks are forwarded in
//! order to a mode-specific [`JobEvents`] while it runs; cancellation abandons it; and how
//! it ended is mapped to the result body the platform expects.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::args::{RuntimeArgs, Timings};
use crate::handler::{
    ContextReceivers, Handler, HandlerConfig, HandlerOutput, Job, JobContext, JobError,
};
use crate::result::{
    map_error, map_output, map_stream_error, map_stream_final, ResultBody, WorkerIdentity,
};

/// How long a cancelled handler may take to return by itself before it is aborted.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Builds the handler (downloads, model loading) while the runtime already runs.
pub(crate) type HandlerInit = BoxFuture<'static, anyhow::Result<Arc<dyn Handler>>>;

/// Everything a mode needs to run.
pub(crate) struct Launch<'a> {
    pub args: &'a RuntimeArgs,
    pub timings: Timings,
    pub init: HandlerInit,
    pub shutdown: CancellationToken,
}

/// Waits for the handler; `Ok(None)` when shutdown comes first.
pub(crate) async fn await_init(
    init: HandlerInit,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Arc<dyn Handler>>> {
    tokio::select! {
        handler = init => handler.map(Some).map_err(|e| e.context("worker initialisation failed")),
        _ = shutdown.cancelled() => Ok(None),
    }
}

/// The program's name for messages on stderr (`<name>: <message>`).
pub(crate) fn program_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|arg0| {
            std::path::Path::new(&arg0)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "worker".into())
}

/// Where a running job's progress updates and stream chunks go. Nothing more is delivered
/// once the job is cancelled: a stopped job reports nothing.
#[async_trait::async_trait]
pub(crate) trait JobEvents: Send + Sync + 'static {
    /// The progress updates that arrived since the last call, oldest first (never empty).
    async fn progress(&self, updates: Vec<Value>);
    /// One stream chunk; chunks come in the order the handler sent them.
    async fn chunk(&self, _chunk: &Value) {}
}

/// How a job ended.
pub(crate) enum Ended {
    /// The handler returned (or failed, or panicked): this is the result to report.
    Result(ResultBody),
    /// Stopped by job-stop, `/cancel`, a timeout or shutdown; no result is reported.
    Stopped,
}

/// Runs jobs with one handler and its effective settings.
#[derive(Clone)]
pub(crate) struct JobRunner {
    pub handler: Arc<dyn Handler>,
    pub cfg: HandlerConfig,
    pub who: WorkerIdentity,
}

impl JobRunner {
    /// Runs `job` until it returns or `cancel` fires.
    pub(crate) async fn run<E: JobEvents>(
        &self,
        job: Job,
        cancel: &CancellationToken,
        events: Arc<E>,
    ) -> Ended {
        let (ctx, ContextReceivers { progress, stream }) =
            JobContext::with_channels(&job.id, cancel.clone(), self.cfg.streaming);
        let done = CancellationToken::new();
        let progress = tokio::spawn(forward_progress(
            progress,
            done.clone(),
            cancel.clone(),
            events.clone(),
        ));
        let stream =
            stream.map(|rx| tokio::spawn(forward_chunks(rx, done.clone(), cancel.clone(), events)));
        let outcome = execute(self.handler.clone(), job, ctx, cancel).await;
        done.cancel();
        let _ = progress.await;
        let chunks = match stream {
            Some(task) => task.await.unwrap_or_default(),
            None => Vec::new(),
        };
        match outcome {
            Some(result) if !cancel.is_cancelled() => {
                log_result(&result);
                Ended::Result(result_body(result, &self.cfg, chunks, &self.who))
            }
            _ => Ended::Stopped,
        }
    }
}

/// Waits for the next values: all that are queued once one arrives; after `done`, only
/// what is still queued; `None` when nothing more will come.
async fn next_batch(
    rx: &mut mpsc::UnboundedReceiver<Value>,
    done: &CancellationToken,
) -> Option<Vec<Value>> {
    let first = tokio::select! {
        v = rx.recv() => v,
        _ = done.cancelled() => rx.try_recv().ok(),
    }?;
    let mut batch = vec![first];
    while let Ok(v) = rx.try_recv() {
        batch.push(v);
    }
    Some(batch)
}

async fn forward_progress<E: JobEvents>(
    mut rx: mpsc::UnboundedReceiver<Value>,
    done: CancellationToken,
    cancel: CancellationToken,
    events: Arc<E>,
) {
    while let Some(batch) = next_batch(&mut rx, &done).await {
        if cancel.is_cancelled() {
            return;
        }
        events.progress(batch).await;
    }
}

/// Forwards chunks one by one and returns them all (for an aggregate result).
async fn forward_chunks<E: JobEvents>(
    mut rx: mpsc::UnboundedReceiver<Value>,
    done: CancellationToken,
    cancel: CancellationToken,
    events: Arc<E>,
) -> Vec<Value> {
    let mut chunks = Vec::new();
    while let Some(batch) = next_batch(&mut rx, &done).await {
        for chunk in batch {
            if cancel.is_cancelled() {
                return chunks;
            }
            events.chunk(&chunk).await;
            chunks.push(chunk);
        }
    }
    chunks
}

/// Runs the handler on its own task so that a panic stays inside this job, and stops
/// waiting for it as soon as `cancel` fires (`None`).
async fn execute(
    handler: Arc<dyn Handler>,
    job: Job,
    ctx: JobContext,
    cancel: &CancellationToken,
) -> Option<Result<HandlerOutput, JobError>> {
    let mut task = tokio::spawn(async move { handler.handle(job, ctx).await });
    tokio::select! {
        joined = &mut task => match joined {
            Ok(result) => Some(result),
            Err(err) if err.is_panic() => {
                let payload = err.into_panic();
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Some(Err(JobError::new("handler_panic", format!("handler panicked: {msg}"))))
            }
            Err(_) => None,
        },
        _ = cancel.cancelled() => {
            // The handler sees the token too; give it a moment to stop on its own (and free
            // what it holds) before its future is dropped.
            if tokio::time::timeout(CANCEL_GRACE, &mut task).await.is_err() {
                task.abort();
            }
            None
        }
    }
}

/// The result body of a finished call (docs/runpod-protocol.md, *Output mapping*,
/// *Streaming* and *Refresh worker*).
fn result_body(
    result: Result<HandlerOutput, JobError>,
    cfg: &HandlerConfig,
    chunks: Vec<Value>,
    who: &WorkerIdentity,
) -> ResultBody {
    let mut body = match (result, cfg.streaming) {
        (Ok(out), false) => map_output(out),
        (Ok(out), true) => map_stream_final(out, chunks, cfg.return_aggregate_stream),
        (Err(err), false) => map_error(&err, who),
        (Err(err), true) => map_stream_error(&err),
    };
    if cfg.refresh_worker {
        body.stop_pod = true;
    }
    body
}

/// Logs how a job ended (never its output: it may be large).
fn log_result(result: &Result<HandlerOutput, JobError>) {
    if let Err(err) = result {
        tracing::warn!(
            error_type = err.error_type(),
            "job failed: {}",
            err.message()
        );
    }
}
