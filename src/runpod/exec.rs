//! Running one handler call, shared by all modes: panics become job errors, cancellation
//! abandons the call, and the outcome is mapped to a result body.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::handler::{Handler, HandlerConfig, HandlerOutput, Job, JobContext, JobError};
use super::result::{map_error, map_output, map_stream_error, map_stream_final, ResultBody};
use super::WorkerIdentity;

/// How long a cancelled handler may take to return by itself before it is aborted.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// How a handler call ended.
pub(crate) enum Outcome {
    Finished(Result<HandlerOutput, JobError>),
    /// Stopped by job-stop / `/cancel` / timeout / shutdown; no result is reported.
    Cancelled,
}

/// Runs the handler on its own task so that a panic stays inside this job, and stops
/// waiting for it as soon as `cancel` fires.
pub(crate) async fn execute(
    handler: Arc<dyn Handler>,
    job: Job,
    ctx: JobContext,
    cancel: &CancellationToken,
) -> Outcome {
    let mut task = tokio::spawn(async move { handler.handle(job, ctx).await });
    tokio::select! {
        joined = &mut task => match joined {
            Ok(result) => Outcome::Finished(result),
            Err(err) if err.is_panic() => {
                let payload = err.into_panic();
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Outcome::Finished(Err(JobError::new("Panic", format!("handler panicked: {msg}"))))
            }
            Err(_) => Outcome::Cancelled,
        },
        _ = cancel.cancelled() => {
            // The handler sees the token too; give it a moment to stop on its own (and free
            // what it holds) before its future is dropped.
            if tokio::time::timeout(CANCEL_GRACE, &mut task).await.is_err() {
                task.abort();
            }
            Outcome::Cancelled
        }
    }
}

/// The result body of a finished call (spec §7, §9, §13).
pub(crate) fn result_body(
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
pub(crate) fn log_result(result: &Result<HandlerOutput, JobError>) {
    if let Err(err) = result {
        tracing::warn!(
            error_type = err.error_type(),
            "job failed: {}",
            err.message()
        );
    }
}
