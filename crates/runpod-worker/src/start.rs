//! The one-call entry point: parse the SDK's flags and environment, set up logging, build
//! the tokio runtime, run until done or SIGTERM/SIGINT, and turn the outcome into the
//! process's exit code.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::args::{RuntimeArgs, Timings};
use crate::exec::{program_name, HandlerInit, Launch};
use crate::func::IntoHandler;
use crate::run_mode;
use crate::telemetry::{self, LogArgs};

/// Every flag (and environment variable) [`start`] reads: the runtime's and logging's.
/// Programs with flags of their own can `#[command(flatten)]` this into their parser and
/// call [`crate::run`].
#[derive(Debug, Clone, Parser)]
#[command(about = "A RunPod serverless worker", long_about = None)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs a worker with `handler` and returns the process's exit code; the whole `main` of a
/// worker:
///
/// ```no_run
/// use runpod_worker::{Job, JobError};
/// use serde_json::{json, Value};
///
/// fn main() -> std::process::ExitCode {
///     runpod_worker::start(|job: Job| -> Result<Value, JobError> { Ok(json!({"echo": job.input})) })
/// }
/// ```
///
/// `handler` is a closure `Fn(Job) -> R` or `Fn(Job, JobContext) -> R`, where `R` is a
/// `Result<T, JobError>` (the closure then runs on a blocking thread) or a future of one, and
/// `T` a `serde_json::Value`, a [`crate::HandlerOutput`] or `()`; or any [`crate::Handler`],
/// `Arc<dyn Handler>` included. The mode follows the flags and environment as in the Python
/// SDK (`--test_input`, `--rp_serve_api`, `RUNPOD_WEBHOOK_GET_JOB`; see [`RuntimeArgs`]).
/// Exit code 0 on a clean stop, 1 when the worker cannot start or a local test job fails,
/// 130 when a local test is interrupted.
pub fn start<M>(handler: impl IntoHandler<M>) -> ExitCode {
    let handler = handler.into_handler();
    launch(Box::pin(async move { Ok(handler) }))
}

/// [`start`] for handlers that need time to get ready (downloading and loading a model):
/// `init` runs inside the runtime, after the flags are parsed and logging is set up. The
/// local endpoint API already answers meanwhile (`/health` reports the worker as
/// initializing); serverless mode takes its first job once `init` is done. An error from
/// `init` stops the worker with exit code 1.
///
/// ```no_run
/// use runpod_worker::{Job, JobError};
/// use serde_json::{json, Value};
///
/// fn main() -> std::process::ExitCode {
///     runpod_worker::start_with_init(async {
///         let greeting = String::from("hello"); // e.g. a model loaded from disk
///         Ok(move |job: Job| -> Result<Value, JobError> {
///             Ok(json!({"text": format!("{greeting} {}", job.input)}))
///         })
///     })
/// }
/// ```
pub fn start_with_init<H, M>(
    init: impl Future<Output = anyhow::Result<H>> + Send + 'static,
) -> ExitCode
where
    H: IntoHandler<M>,
{
    launch(Box::pin(async move {
        init.await.map(IntoHandler::into_handler)
    }))
}

fn launch(init: HandlerInit) -> ExitCode {
    let args = WorkerArgs::parse();
    telemetry::init(&args.log);
    let program = program_name();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("{program}: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(async {
        let shutdown = crate::shutdown_token();
        run_mode(Launch {
            args: &args.runtime,
            timings: Timings::default(),
            init,
            shutdown,
        })
        .await
    });
    // A blocking handler call that ignored its cancellation must not keep the process alive.
    rt.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(code) => code,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "worker failed");
            eprintln!("{program}: {err:#}");
            ExitCode::FAILURE
        }
    }
}
