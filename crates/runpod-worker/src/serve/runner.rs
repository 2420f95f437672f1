//! The local endpoint API's job runners: take queued jobs, run them, record the outcome.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::store::{Api, Status};
use crate::exec::{Ended, JobEvents, JobRunner};
use crate::handler::Job;

/// One of `concurrency` runners; ends when `stop` fires.
pub(super) async fn runner(api: Arc<Api>, runner: JobRunner, stop: CancellationToken) {
    while let Some((job, cancel, timeout)) = api.next_job(&stop).await {
        run_one(&api, &runner, job, cancel, timeout).await;
    }
}

/// A job's progress becomes its `output` while it runs; chunks wait for `/stream`.
struct StoreEvents {
    api: Arc<Api>,
    id: String,
}

#[async_trait::async_trait]
impl JobEvents for StoreEvents {
    async fn progress(&self, updates: Vec<Value>) {
        let Some(latest) = updates.into_iter().last() else {
            return;
        };
        self.api.with_job(&self.id, |rec| {
            if rec.status == Status::InProgress {
                rec.output = Some(latest);
            }
        });
    }

    async fn chunk(&self, chunk: &Value) {
        self.api.with_job(&self.id, |rec| {
            rec.pending_stream.push(chunk.clone());
            rec.all_stream.push(chunk.clone());
        });
    }
}

async fn run_one(
    api: &Arc<Api>,
    runner: &JobRunner,
    job: Job,
    cancel: CancellationToken,
    timeout: Option<Duration>,
) {
    let id = job.id.clone();
    tracing::info!(job_id = %id, "Started.");
    // `policy.executionTimeout`: the job is cancelled and recorded as TIMED_OUT.
    let timed_out = Arc::new(AtomicBool::new(false));
    let timer = timeout.map(|t| {
        let (cancel, timed_out) = (cancel.clone(), timed_out.clone());
        tokio::spawn(async move {
            tokio::time::sleep(t).await;
            timed_out.store(true, Ordering::SeqCst);
            cancel.cancel();
        })
    });
    let events = Arc::new(StoreEvents {
        api: api.clone(),
        id: id.clone(),
    });
    let ended = runner.run(job, &cancel, events).await;
    if let Some(t) = timer {
        t.abort();
    }
    match ended {
        Ended::Result(body) => {
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
        Ended::Stopped => {
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
