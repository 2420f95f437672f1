//! Handlers made from closures, and what [`crate::start`] accepts as a handler.
//!
//! A closure can take the job alone or the job and its [`JobContext`], and can return its
//! result directly (it then runs on a blocking thread, like a Python handler that computes)
//! or return a future. Which of these a closure is shows in its type; the marker parameters
//! (`M`) of [`IntoHandler`] and [`Reply`] only exist so the compiler can tell them apart.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::handler::{Handler, HandlerConfig, HandlerOutput, Job, JobContext, JobError};

/// What a handler function finally produces: `Result<T, JobError>` where `T` is a
/// `serde_json::Value`, a [`HandlerOutput`] or `()` (a streaming handler whose output is
/// its chunks).
pub trait IntoJobResult: Send + 'static {
    fn into_job_result(self) -> Result<HandlerOutput, JobError>;
}

impl<T: Into<HandlerOutput> + Send + 'static> IntoJobResult for Result<T, JobError> {
    fn into_job_result(self) -> Result<HandlerOutput, JobError> {
        self.map(Into::into)
    }
}

/// Marker of a handler function that returns its result directly: it is called on tokio's
/// blocking thread pool, so CPU-bound work does not stall the heartbeat or other jobs.
pub enum Blocking {}

/// How a handler function's return value becomes the job's result. Implemented for
/// [`IntoJobResult`] values (marker [`Blocking`]) and for futures of them.
pub trait Reply<M>: Send + 'static {
    /// Calls `call` (where appropriate for the kind of function) and awaits the result.
    fn run<F>(call: F) -> BoxFuture<'static, Result<HandlerOutput, JobError>>
    where
        F: FnOnce() -> Self + Send + 'static;
}

impl<R: IntoJobResult> Reply<Blocking> for R {
    fn run<F>(call: F) -> BoxFuture<'static, Result<HandlerOutput, JobError>>
    where
        F: FnOnce() -> Self + Send + 'static,
    {
        Box::pin(async move {
            match tokio::task::spawn_blocking(call).await {
                Ok(result) => result.into_job_result(),
                // The job's task turns the panic into a `handler_panic` error.
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                Err(_) => Err(JobError::cancelled()),
            }
        })
    }
}

#[doc(hidden)]
pub enum Async {}

impl<Fut> Reply<Async> for Fut
where
    Fut: Future + Send + 'static,
    Fut::Output: IntoJobResult,
{
    fn run<F>(call: F) -> BoxFuture<'static, Result<HandlerOutput, JobError>>
    where
        F: FnOnce() -> Self + Send + 'static,
    {
        Box::pin(async move { call().await.into_job_result() })
    }
}

/// Marker of a function `Fn(Job) -> R`.
#[doc(hidden)]
pub struct JobOnly<M>(PhantomData<M>);

/// Marker of a function `Fn(Job, JobContext) -> R`.
#[doc(hidden)]
pub struct WithContext<M>(PhantomData<M>);

/// A [`Handler`] made from a function or closure (see [`handler_fn`], [`stream_fn`]).
pub struct FnHandler<F, M> {
    f: Arc<F>,
    config: HandlerConfig,
    marker: PhantomData<fn() -> M>,
}

impl<F, M> FnHandler<F, M> {
    fn new(f: F) -> Self {
        FnHandler {
            f: Arc::new(f),
            config: HandlerConfig::default(),
            marker: PhantomData,
        }
    }

    /// Replaces the [`HandlerConfig`] (e.g. to make it a streaming handler).
    pub fn with_config(mut self, config: HandlerConfig) -> Self {
        self.config = config;
        self
    }
}

/// Wraps `f(job, ctx)` as a [`Handler`] with the default [`HandlerConfig`]. `f` may be async
/// (`|job: Job, ctx: JobContext| async move { … }`) or return its result directly.
pub fn handler_fn<F, R, M>(f: F) -> FnHandler<F, WithContext<M>>
where
    F: Fn(Job, JobContext) -> R + Send + Sync + 'static,
    R: Reply<M>,
{
    FnHandler::new(f)
}

/// A streaming ("generator") handler: `f(job, ctx)` sends chunks with [`JobContext::send`]
/// and returns `Ok(())` when done (or an error). The chunks reach the client through the
/// endpoint's `/stream`; the final result is `[]`, or all chunks with
/// `--return_aggregate_stream`.
pub fn stream_fn<F, R, M>(f: F) -> FnHandler<F, WithContext<M>>
where
    F: Fn(Job, JobContext) -> R + Send + Sync + 'static,
    R: Reply<M>,
{
    handler_fn(f).with_config(HandlerConfig {
        streaming: true,
        ..HandlerConfig::default()
    })
}

#[async_trait::async_trait]
impl<F, R, M> Handler for FnHandler<F, WithContext<M>>
where
    F: Fn(Job, JobContext) -> R + Send + Sync + 'static,
    R: Reply<M>,
    M: 'static,
{
    async fn handle(&self, job: Job, ctx: JobContext) -> Result<HandlerOutput, JobError> {
        let f = self.f.clone();
        R::run(move || f(job, ctx)).await
    }

    fn config(&self) -> HandlerConfig {
        self.config
    }
}

#[async_trait::async_trait]
impl<F, R, M> Handler for FnHandler<F, JobOnly<M>>
where
    F: Fn(Job) -> R + Send + Sync + 'static,
    R: Reply<M>,
    M: 'static,
{
    async fn handle(&self, job: Job, _ctx: JobContext) -> Result<HandlerOutput, JobError> {
        let f = self.f.clone();
        R::run(move || f(job)).await
    }

    fn config(&self) -> HandlerConfig {
        self.config
    }
}

/// What [`crate::start`] accepts: any [`Handler`] (`Arc<dyn Handler>` included), or a
/// closure `Fn(Job) -> R` / `Fn(Job, JobContext) -> R` whose `R` is a
/// `Result<T, JobError>` or a future of one.
pub trait IntoHandler<M> {
    fn into_handler(self) -> Arc<dyn Handler>;
}

#[doc(hidden)]
pub enum IsHandler {}

impl<H: Handler> IntoHandler<IsHandler> for H {
    fn into_handler(self) -> Arc<dyn Handler> {
        Arc::new(self)
    }
}

impl<F, R, M> IntoHandler<JobOnly<M>> for F
where
    F: Fn(Job) -> R + Send + Sync + 'static,
    R: Reply<M>,
    M: 'static,
{
    fn into_handler(self) -> Arc<dyn Handler> {
        Arc::new(FnHandler::<F, JobOnly<M>>::new(self))
    }
}

impl<F, R, M> IntoHandler<WithContext<M>> for F
where
    F: Fn(Job, JobContext) -> R + Send + Sync + 'static,
    R: Reply<M>,
    M: 'static,
{
    fn into_handler(self) -> Arc<dyn Handler> {
        Arc::new(handler_fn(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    async fn call<M>(h: impl IntoHandler<M>, input: Value) -> Result<HandlerOutput, JobError> {
        h.into_handler()
            .handle(Job::new("x", input), JobContext::detached("x"))
            .await
    }

    #[tokio::test]
    async fn closures_are_handlers() {
        let h = handler_fn(|job: Job, ctx: JobContext| async move {
            ctx.progress(json!(1));
            Ok(HandlerOutput::new(json!({"id": job.id})))
        });
        let out = h
            .handle(Job::new("x", json!({})), JobContext::detached("x"))
            .await
            .unwrap();
        assert_eq!(out.value, json!({"id": "x"}));
        assert_eq!(h.config(), HandlerConfig::default());
        let dynamic: Arc<dyn Handler> = Arc::new(h);
        assert!(!dynamic.config().streaming);
    }

    #[tokio::test]
    async fn every_kind_of_function_converts() {
        let sync = |job: Job| Ok(json!({"sync": job.input}));
        assert_eq!(
            call(sync, json!(1)).await.unwrap().value,
            json!({"sync": 1})
        );
        let asynchronous = |job: Job| async move { Ok(json!({"async": job.input})) };
        assert_eq!(
            call(asynchronous, json!(2)).await.unwrap().value,
            json!({"async": 2})
        );
        let with_ctx = |job: Job, ctx: JobContext| Ok(json!([job.id, ctx.job_id()]));
        assert_eq!(
            call(with_ctx, json!(0)).await.unwrap().value,
            json!(["x", "x"])
        );
        let failing = |_job: Job| -> Result<Value, JobError> { Err(JobError::invalid_input("no")) };
        assert_eq!(
            call(failing, json!(0)).await.unwrap_err().error_type(),
            "invalid_input"
        );
        let dynamic: Arc<dyn Handler> = Arc::new(handler_fn(|_: Job, _: JobContext| async {
            Ok(HandlerOutput::new(json!("dyn")))
        }));
        assert_eq!(call(dynamic, json!(0)).await.unwrap().value, json!("dyn"));
    }

    #[tokio::test]
    async fn stream_fn_sets_streaming_and_unit_means_no_value() {
        let h = stream_fn(|_job: Job, ctx: JobContext| async move {
            ctx.send(json!("chunk"));
            Ok(())
        });
        assert!(h.config().streaming);
        let out = h
            .handle(Job::new("s", json!({})), JobContext::detached("s"))
            .await
            .unwrap();
        assert_eq!(out.value, Value::Null);
    }

    #[tokio::test]
    async fn a_panicking_blocking_closure_panics_its_task() {
        let h = (|_job: Job| -> Result<Value, JobError> { panic!("boom") }).into_handler();
        let task = tokio::spawn(async move {
            h.handle(Job::new("p", json!({})), JobContext::detached("p"))
                .await
        });
        assert!(task.await.unwrap_err().is_panic());
    }
}
