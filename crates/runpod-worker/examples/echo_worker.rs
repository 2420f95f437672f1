//! A worker whose handler's behaviour is chosen by the job input (see
//! `tests/runtime_support/echo.rs`). Used by the
//! process-level runtime tests (SIGTERM drain, local test mode, the official Python client)
//! and handy to try the runtime by hand:
//!
//! ```text
//! cargo run -p runpod-worker --example echo_worker -- --test_input '{"input": {"hello": "world"}}'
//! cargo run -p runpod-worker --example echo_worker -- --rp_serve_api --rp_api_port 8000
//! ```
//!
//! Environment: `ECHO_STREAMING=1` makes the handler a streaming one; `ECHO_INIT_MS=n`
//! delays readiness by n ms; `ECHO_INIT_FAIL=1` makes initialisation fail;
//! `ECHO_FAST_TIMINGS=1` uses the runtime's test timings.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use runpod_worker::{self as runpod, HandlerConfig, Timings, WorkerArgs};

#[path = "../tests/runtime_support/echo.rs"]
mod echo;

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

fn main() -> std::process::ExitCode {
    // `runpod_worker::start` would do all of this; the echo worker also picks its timings.
    let cli = WorkerArgs::parse();
    runpod_worker::telemetry::init(&cli.log);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("echo_worker: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let shutdown = runpod::shutdown_token();
        let streaming = flag("ECHO_STREAMING");
        let init_ms: u64 = std::env::var("ECHO_INIT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let fail = flag("ECHO_INIT_FAIL");
        let init = async move {
            tokio::time::sleep(Duration::from_millis(init_ms)).await;
            if fail {
                anyhow::bail!("echo handler initialisation failed (ECHO_INIT_FAIL=1)");
            }
            Ok(Arc::new(echo::EchoHandler::new(HandlerConfig {
                streaming,
                ..HandlerConfig::default()
            })))
        };
        let timings = if flag("ECHO_FAST_TIMINGS") {
            Timings::fast()
        } else {
            Timings::default()
        };
        match runpod::run_with_timings(&cli.runtime, timings, init, shutdown).await {
            Ok(code) => code,
            Err(err) => {
                eprintln!("echo_worker: {err:#}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
