//! The engine thread: the loaded pipeline lives on one OS thread that owns the device, so a
//! long denoise never blocks the async runtime (heartbeats, HTTP). Jobs arrive over a
//! channel; each carries a one-shot reply, a progress callback and a cancellation token.

use super::txt2img::{
    GenerateOutput, GenerateRequest, LoadInfo, PipelineConfig, PipelineError, Progress,
    SdxlPipeline,
};
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Progress callback, called on the engine thread after every sampler step.
pub type ProgressFn = Box<dyn FnMut(Progress) + Send>;

/// Errors of a job as seen by the caller.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The job panicked inside the engine. The engine keeps serving other jobs.
    #[error("internal error while generating: {0}")]
    Panicked(String),
    /// The engine thread is gone (it is shutting down, or it died).
    #[error("the inference engine is not running")]
    Stopped,
}

impl EngineError {
    /// A stable machine-readable category for job error responses.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Pipeline(e) => e.error_type(),
            Self::Panicked(_) => "internal_error",
            Self::Stopped => "engine_stopped",
        }
    }
}

struct Job {
    request: GenerateRequest,
    progress: ProgressFn,
    cancel: CancellationToken,
    reply: oneshot::Sender<Result<GenerateOutput, EngineError>>,
}

/// Starts the engine.
pub struct Engine;

impl Engine {
    /// Spawns the engine thread, loads the pipeline on it and waits for the result, so load
    /// errors (bad checkpoint, no GPU) are returned here before any job is accepted. Blocks
    /// for the load time: call it from `spawn_blocking` (or before the runtime starts).
    pub fn start(config: PipelineConfig) -> Result<EngineHandle, PipelineError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<LoadInfo, PipelineError>>();
        let thread = std::thread::Builder::new()
            .name("sdxl-engine".into())
            .spawn(move || {
                let loaded =
                    std::panic::catch_unwind(AssertUnwindSafe(|| SdxlPipeline::load(&config)))
                        .unwrap_or_else(|p| {
                            Err(PipelineError::Internal(format!(
                                "panic while loading: {}",
                                panic_message(&*p)
                            )))
                        });
                let mut pipeline = match loaded {
                    Ok(p) => {
                        let _ = ready_tx.send(Ok(p.info().clone()));
                        p
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                drop(ready_tx);
                serve(&mut pipeline, rx);
            })
            .map_err(|e| PipelineError::Internal(format!("cannot spawn the engine thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(info)) => Ok(EngineHandle {
                tx,
                info: Arc::new(info),
                _thread: Arc::new(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(PipelineError::Internal(
                "the engine thread exited while loading".into(),
            )),
        }
    }
}

fn serve(pipeline: &mut SdxlPipeline, rx: mpsc::Receiver<Job>) {
    // Ends when every handle is dropped.
    while let Ok(job) = rx.recv() {
        let Job {
            request,
            mut progress,
            cancel,
            reply,
        } = job;
        if cancel.is_cancelled() || reply.is_closed() {
            let _ = reply.send(Err(PipelineError::Cancelled.into()));
            continue;
        }
        let span = tracing::info_span!(
            "generate",
            width = request.width,
            height = request.height,
            steps = request.steps,
            images = request.num_images
        );
        let _enter = span.enter();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            pipeline.generate(&request, &mut *progress, &|| cancel.is_cancelled())
        }));
        let result = match result {
            Ok(r) => r.map_err(EngineError::from),
            Err(p) => {
                let msg = panic_message(&*p);
                tracing::error!(panic = %msg, "generation panicked; the engine continues");
                Err(EngineError::Panicked(msg))
            }
        };
        let _ = reply.send(result);
    }
    tracing::info!("engine thread stopping");
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// A cheap, cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Job>,
    info: Arc<LoadInfo>,
    _thread: Arc<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("info", &self.info)
            .finish()
    }
}

impl EngineHandle {
    /// What was loaded (architecture, device, dtypes, load time).
    pub fn info(&self) -> &LoadInfo {
        &self.info
    }

    /// Queues a job and waits for its images. Jobs run one at a time in arrival order.
    /// `progress` is called on the engine thread after each step; cancelling `cancel` (or
    /// dropping this future) stops the job at the next step with `PipelineError::Cancelled`.
    pub async fn generate(
        &self,
        request: GenerateRequest,
        progress: impl FnMut(Progress) + Send + 'static,
        cancel: CancellationToken,
    ) -> Result<GenerateOutput, EngineError> {
        let (reply, rx) = oneshot::channel();
        // Cancel the job if the caller stops waiting for it.
        let job_cancel = cancel.child_token();
        let _guard = job_cancel.clone().drop_guard();
        self.tx
            .send(Job {
                request,
                progress: Box::new(progress),
                cancel: job_cancel,
                reply,
            })
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// The blocking form of [`generate`](Self::generate), for non-async callers (bench).
    pub fn generate_blocking(
        &self,
        request: GenerateRequest,
        progress: impl FnMut(Progress) + Send + 'static,
        cancel: CancellationToken,
    ) -> Result<GenerateOutput, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                request,
                progress: Box::new(progress),
                cancel,
                reply,
            })
            .map_err(|_| EngineError::Stopped)?;
        rx.blocking_recv().map_err(|_| EngineError::Stopped)?
    }
}
