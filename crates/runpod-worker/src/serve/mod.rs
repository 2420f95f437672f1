//! The local endpoint API (`--rp_serve_api`): a real job queue in front of the handler that
//! speaks RunPod's public endpoint API under `/v2/{endpoint_id}/`, so the official clients
//! work against it, plus the routes of the Python SDK's dev server
//! (docs/runpod-protocol.md, *Local endpoint API*).
//!
//! `store` holds the jobs, `public` and `dev` are the two route sets, `request` reads
//! bodies and checks the key, `runner` runs the queued jobs.

mod dev;
mod public;
mod request;
mod runner;
mod store;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

use crate::exec::{JobRunner, Launch};
use crate::heartbeat::Heartbeat;
use crate::lock;

pub use request::{RUNSYNC_BODY_LIMIT, RUN_BODY_LIMIT};
use store::{Api, WorkerState};

fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v2/{endpoint_id}/run", post(public::run))
        .route("/v2/{endpoint_id}/runsync", post(public::runsync))
        .route(
            "/v2/{endpoint_id}/status/{id}",
            get(public::status).post(public::status),
        )
        .route(
            "/v2/{endpoint_id}/stream/{id}",
            get(public::stream).post(public::stream),
        )
        .route("/v2/{endpoint_id}/cancel/{id}", post(public::cancel))
        .route("/v2/{endpoint_id}/retry/{id}", post(public::retry))
        .route("/v2/{endpoint_id}/purge-queue", post(public::purge))
        .route("/v2/{endpoint_id}/health", get(public::health))
        .route("/run", post(dev::run))
        .route("/runsync", post(dev::runsync))
        .route("/status/{id}", get(dev::status).post(dev::status))
        .route("/stream/{id}", get(dev::stream).post(dev::stream))
        .layer(middleware::from_fn_with_state(
            api.api_key.as_deref().map(Arc::<str>::from),
            request::require_key,
        ))
        .with_state(api)
}

pub(crate) async fn run(launch: Launch<'_>) -> anyhow::Result<ExitCode> {
    let (args, init) = (launch.args, launch.init);
    let http = reqwest::Client::builder()
        .user_agent(crate::client::user_agent())
        .build()
        .context("building the webhook HTTP client")?;
    let stop = launch.shutdown.child_token();
    let api = Arc::new(Api::new(
        args.rp_api_key.clone().filter(|k| !k.is_empty()),
        args.pod_id
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "local".into()),
        launch.timings,
        http,
        stop.clone(),
    ));
    // Like the SDK's dev server: ping RunPod when the heartbeat variables are set.
    let _heartbeat = match crate::heartbeat::PingConfig::from_args(args, &api.timings) {
        Some(ping) => Some(
            Heartbeat::start(ping, api.held.clone()).context("starting the heartbeat thread")?,
        ),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind((args.rp_api_host, args.rp_api_port))
        .await
        .with_context(|| {
            format!(
                "binding the local endpoint API to {}:{}",
                args.rp_api_host, args.rp_api_port
            )
        })?;
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    tracing::info!(
        "local endpoint API listening on http://{addr}/v2/<endpoint_id>/ (run, runsync, status, stream, cancel, retry, purge-queue, health); dev routes /run, /runsync, /status, /stream"
    );

    let init_error: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    {
        let (api, stop, init_error) = (api.clone(), stop.clone(), init_error.clone());
        let concurrency = usize::from(args.concurrency);
        let who = args.identity();
        let args = args.clone();
        tokio::spawn(async move {
            let handler = tokio::select! {
                h = init => h,
                _ = stop.cancelled() => return,
            };
            match handler {
                Ok(handler) => {
                    let runner = JobRunner {
                        cfg: args.handler_config(handler.config()),
                        handler,
                        who,
                    };
                    let _ = api.runner.set(runner.clone());
                    *api.worker_state() = WorkerState::Ready;
                    tracing::info!("worker ready");
                    for _ in 0..concurrency {
                        tokio::spawn(runner::runner(api.clone(), runner.clone(), stop.clone()));
                    }
                }
                Err(err) => {
                    *api.worker_state() = WorkerState::Failed;
                    *lock(&init_error) = Some(err);
                    stop.cancel();
                }
            }
        });
    }
    tokio::spawn(store::janitor(api.clone(), stop.clone()));

    axum::serve(listener, router(api))
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .await
        .context("local endpoint API server failed")?;
    stop.cancel();
    let failed = lock(&init_error).take();
    if let Some(err) = failed {
        return Err(err.context("worker initialisation failed"));
    }
    Ok(ExitCode::SUCCESS)
}
