//! The engine thread: the loaded pipeline lives on one OS thread that owns the device, so a
//! long denoise never blocks the async runtime (heartbeats, HTTP). Jobs arrive over a
//! channel; each carries a one-shot reply, a progress callback and a cancellation token.

use super::{
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

struct Job {
    request: GenerateRequest,
    progress: ProgressFn,
    cancel: CancellationToken,
    reply: oneshot::Sender<Result<GenerateOutput, EngineError>>,
}

/// Starts the engine.
pub struct Engine;

/// What the engine thread runs jobs on: the real pipeline, or a stand-in in tests.
pub(crate) trait Generator {
    fn info(&self) -> &LoadInfo;
    fn generate(
        &mut self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<GenerateOutput, PipelineError>;
}

impl Generator for SdxlPipeline {
    fn info(&self) -> &LoadInfo {
        SdxlPipeline::info(self)
    }
    fn generate(
        &mut self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<GenerateOutput, PipelineError> {
        SdxlPipeline::generate_with_loras(self, req, progress, cancelled)
    }
}

impl Engine {
    /// Spawns the engine thread, loads the pipeline on it and waits for the result, so load
    /// errors (bad checkpoint, no GPU) are returned here before any job is accepted. Blocks
    /// for the load time: call it from `spawn_blocking` (or before the runtime starts).
    pub fn start(config: PipelineConfig) -> Result<EngineHandle, PipelineError> {
        Self::start_with(move || SdxlPipeline::load(&config))
    }

    /// [`start`](Self::start) from async code: the load runs on a blocking thread.
    pub async fn start_async(config: PipelineConfig) -> Result<EngineHandle, PipelineError> {
        tokio::task::spawn_blocking(move || Self::start(config))
            .await
            .map_err(|e| PipelineError::Internal(format!("engine start task failed: {e}")))?
    }

    pub(crate) fn start_with<G: Generator + 'static>(
        load: impl FnOnce() -> Result<G, PipelineError> + Send + 'static,
    ) -> Result<EngineHandle, PipelineError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<LoadInfo, PipelineError>>();
        let thread = std::thread::Builder::new()
            .name("sdxl-engine".into())
            .spawn(move || {
                let loaded = std::panic::catch_unwind(AssertUnwindSafe(load)).unwrap_or_else(|p| {
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

fn serve<G: Generator>(pipeline: &mut G, rx: mpsc::Receiver<Job>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{SamplerKind, SigmaSchedule};
    use candle_core::{DType, Device, Tensor};

    /// Panics on seed 666, fails on seed 1, otherwise reports every step and returns.
    struct Fake(LoadInfo);

    impl Generator for Fake {
        fn info(&self) -> &LoadInfo {
            &self.0
        }
        fn generate(
            &mut self,
            req: &GenerateRequest,
            progress: &mut dyn FnMut(Progress),
            cancelled: &dyn Fn() -> bool,
        ) -> Result<GenerateOutput, PipelineError> {
            match req.seed {
                666 => panic!("boom"),
                1 => return Err(PipelineError::InvalidRequest("bad".into())),
                _ => {}
            }
            for step in 1..=req.steps {
                if cancelled() {
                    return Err(PipelineError::Cancelled);
                }
                progress(Progress {
                    step,
                    steps: req.steps,
                });
            }
            let t = Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu)?;
            Ok(GenerateOutput {
                images: vec![],
                seeds: vec![req.seed],
                latents: t.clone(),
                image_float: t,
                timings: Default::default(),
            })
        }
    }

    fn info() -> LoadInfo {
        LoadInfo {
            checkpoint: "fake".into(),
            architecture: "SDXL base".into(),
            v_prediction: false,
            zero_terminal_snr: false,
            device: "cpu".into(),
            dtype: "f32",
            vae_dtype: "f32",
            load_seconds: 0.0,
        }
    }

    fn req(seed: u64) -> GenerateRequest {
        GenerateRequest {
            prompt: "x".into(),
            negative_prompt: None,
            width: 64,
            height: 64,
            steps: 4,
            guidance: 5.0,
            sampler: SamplerKind::Euler,
            schedule: SigmaSchedule::Default,
            seed,
            num_images: 1,
            loras: Vec::new(),
            ..GenerateRequest::default()
        }
    }

    #[tokio::test]
    async fn panics_become_errors_and_the_engine_goes_on() {
        let engine = Engine::start_with(|| Ok(Fake(info()))).unwrap();
        assert_eq!(engine.info().architecture, "SDXL base");
        let err = engine
            .generate(req(666), |_| {}, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, EngineError::Panicked(m) if m.contains("boom")),
            "{err:?}"
        );
        assert_eq!(err.error_type(), "internal_error");
        let err = engine
            .generate(req(1), |_| {}, CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), "invalid_input");

        let steps = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&steps);
        let out = engine
            .generate(
                req(7),
                move |p| seen.lock().unwrap().push(p.step),
                CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(out.seeds, vec![7]);
        assert_eq!(*steps.lock().unwrap(), vec![1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn cancellation_reaches_the_job() {
        let engine = Engine::start_with(|| Ok(Fake(info()))).unwrap();
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        let err = engine
            .generate(
                req(7),
                move |p| {
                    if p.step == 2 {
                        c2.cancel()
                    }
                },
                cancel,
            )
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), "cancelled");
    }

    #[test]
    fn load_errors_and_load_panics_are_reported_by_start() {
        let err = Engine::start_with(|| -> Result<Fake, _> {
            Err(PipelineError::Config("no gpu".into()))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "no gpu");
        let err = Engine::start_with(|| -> Result<Fake, _> { panic!("bad load") }).unwrap_err();
        assert!(err.to_string().contains("bad load"), "{err}");
    }
}
