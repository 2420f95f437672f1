//! A runtime for [RunPod](https://www.runpod.io) serverless workers written in Rust.
//!
//! You write a handler (a function from a job's `input` to its output); the runtime does the
//! rest the way a worker built on RunPod's Python SDK (`runpod-python` 1.12) does it: it takes
//! jobs from the platform's job API, runs several at once when asked, posts results with
//! retries, streams chunks and progress, sends the heartbeat, honours job-stop and SIGTERM,
//! and offers the SDK's two local modes (`--test_input` and `--rp_serve_api`, a local copy of
//! the endpoint API at `/v2/<endpoint_id>/…`).
//!
//! ```no_run
//! use runpod_worker::{Job, JobError};
//! use serde_json::{json, Value};
//!
//! fn main() -> std::process::ExitCode {
//!     runpod_worker::start(|job: Job| -> Result<Value, JobError> {
//!         let name = job.input["name"].as_str().unwrap_or("world");
//!         Ok(json!({ "greeting": format!("hello, {name}") }))
//!     })
//! }
//! ```
//!
//! [`start`] parses the SDK's flags and environment ([`WorkerArgs`]), sets up logging,
//! and runs until the work is done or SIGTERM/SIGINT arrives. A handler can be a plain
//! closure `|job: Job| -> Result<_, JobError>` (run on a blocking thread), an async closure,
//! a closure that also takes the [`JobContext`] (progress, stream chunks, cancellation), or
//! any [`Handler`] (also as `Arc<dyn Handler>`). [`start_with_init`] loads models before the
//! first job; [`stream_fn`] makes a streaming ("generator") handler. Programs with flags of
//! their own call [`run`] inside their own tokio runtime instead.
//!
//! What the runtime does on the wire, and why, is written down in `docs/runpod-protocol.md`
//! of the repository; comments cite its sections by name (e.g. *Job take*).

mod args;
mod client;
mod exec;
mod func;
mod handler;
mod heartbeat;
mod local;
mod result;
mod serve;
mod start;
pub mod telemetry;
mod urls;
mod worker;

use std::future::Future;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

pub use args::{Mode, RuntimeArgs, Timings};
/// Re-exported so handlers implement [`Handler`] with the same macro version.
pub use async_trait::async_trait;
pub use client::{ClientError, PostError};
pub use func::{handler_fn, stream_fn, Blocking, FnHandler, IntoHandler, IntoJobResult, Reply};
pub use handler::{
    Handler, HandlerConfig, HandlerOutput, Job, JobContext, JobError, MalformedJob, StreamSender,
};
pub use local::{load_test_job, write_images, TestInputError};
pub use result::{
    error_json, map_error, map_output, to_python_json, truthy, ResultBody, WorkerIdentity,
    SDK_COMPAT_VERSION,
};
pub use serve::{RUNSYNC_BODY_LIMIT, RUN_BODY_LIMIT};
pub use start::{start, start_with_init, WorkerArgs};
pub use urls::{ping_url, JobUrls};

/// Runs the worker in the mode `args` selects until it is done or `shutdown` fires.
///
/// `init` builds the handler (download + load of models); the local endpoint API already
/// answers while it runs (`workers.initializing`), serverless mode starts taking jobs only
/// once it is ready. Exit code: 0 on a clean stop; in local test mode 1 when the result has
/// an `error`.
pub async fn run<H: Handler>(
    args: &RuntimeArgs,
    init: impl Future<Output = anyhow::Result<Arc<H>>> + Send + 'static,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    run_with_timings(args, Timings::default(), init, shutdown).await
}

/// [`run`] with explicit [`Timings`] (tests).
pub async fn run_with_timings<H: Handler>(
    args: &RuntimeArgs,
    timings: Timings,
    init: impl Future<Output = anyhow::Result<Arc<H>>> + Send + 'static,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let init = Box::pin(async move { init.await.map(|h| h as Arc<dyn Handler>) });
    run_mode(exec::Launch {
        args,
        timings,
        init,
        shutdown,
    })
    .await
}

/// Waits for SIGTERM or SIGINT (Ctrl-C elsewhere). RunPod sends SIGTERM when it scales a
/// worker down; the runtime then stops taking jobs, finishes and posts the running ones.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                    _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
                }
                return;
            }
            _ => tracing::warn!("could not install signal handlers; using Ctrl-C only"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("interrupt received; shutting down");
}

/// A token cancelled on SIGTERM/SIGINT (spawns a task on the current runtime).
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        t.cancel();
    });
    token
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical
/// section in this crate is a single insert, remove or field update).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the mode the arguments select (docs/runpod-protocol.md, *Modes*).
pub(crate) async fn run_mode(launch: exec::Launch<'_>) -> anyhow::Result<ExitCode> {
    match launch.args.mode() {
        Mode::LocalTest => local::run(launch).await,
        Mode::EndpointApi => serve::run(launch).await,
        Mode::Serverless => worker::run(launch).await,
    }
}
