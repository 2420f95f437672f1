//! The local endpoint API (`--rp_serve_api`) driven over HTTP: RunPod's `/v2/{endpoint}/…`
//! operations with their JSON shapes, health during initialisation, limits, API key,
//! webhooks, and the SDK dev server's routes.

mod runtime_support;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use runpod_worker::{self as runpod, HandlerConfig, RuntimeArgs, Timings};
use runtime_support::echo::EchoHandler;
use runtime_support::{free_port, MockJobApi, POD_ID};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct Server {
    base: String,
    shutdown: CancellationToken,
    thread: JoinHandle<anyhow::Result<ExitCode>>,
    release_init: Option<std::sync::mpsc::Sender<()>>,
}

impl Server {
    /// Starts the API; the handler becomes ready only after [`Server::ready`] when
    /// `hold_init` is set.
    fn start(
        cfg: HandlerConfig,
        api_key: Option<&str>,
        hold_init: bool,
        concurrency: u16,
    ) -> Server {
        Server::start_with(cfg, api_key, hold_init, concurrency, Timings::fast())
    }

    fn start_with(
        cfg: HandlerConfig,
        api_key: Option<&str>,
        hold_init: bool,
        concurrency: u16,
        timings: Timings,
    ) -> Server {
        let args = RuntimeArgs {
            rp_api_key: api_key.map(str::to_owned),
            concurrency,
            ..RuntimeArgs::default()
        };
        Server::start_args(args, cfg, hold_init, timings)
    }

    /// Starts the API with `args` (the port and `rp_serve_api` are set here).
    fn start_args(
        mut args: RuntimeArgs,
        cfg: HandlerConfig,
        hold_init: bool,
        timings: Timings,
    ) -> Server {
        let port = free_port();
        args.rp_serve_api = true;
        args.rp_api_port = port;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        if !hold_init {
            tx.send(()).unwrap();
        }
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let rt = runtime_support::two_thread_runtime();
            let init = async move {
                tokio::task::spawn_blocking(move || rx.recv()).await??;
                Ok(Arc::new(EchoHandler::new(cfg)))
            };
            rt.block_on(runpod::run_with_timings(&args, timings, init, token))
        });
        let base = format!("http://127.0.0.1:{port}");
        runtime_support::wait_for_port(port);
        Server {
            base,
            shutdown,
            thread,
            release_init: hold_init.then_some(tx),
        }
    }

    fn ready(&mut self) {
        if let Some(tx) = self.release_init.take() {
            tx.send(()).unwrap();
        }
    }

    fn stop(self) {
        self.shutdown.cancel();
        assert_eq!(self.thread.join().unwrap().unwrap(), ExitCode::SUCCESS);
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn wait_status(c: &reqwest::Client, base: &str, id: &str, want: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, v) = send(c.get(format!("{base}/v2/ep/status/{id}"))).await;
        assert_eq!(code, 200, "{v}");
        if v["status"] == want {
            return v;
        }
        assert!(Instant::now() < end, "job {id} never reached {want}: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_initializing_then_idle_and_running() {
    let mut s = Server::start(HandlerConfig::default(), None, true, 1);
    let c = client();
    let (_, h) = send(c.get(format!("{}/v2/ep/health", s.base))).await;
    assert_eq!(h["workers"]["initializing"], 1, "{h}");
    assert_eq!(h["workers"]["idle"], 0);
    // A job submitted while loading waits in the queue.
    let (code, run) = send(
        c.post(format!("{}/v2/ep/run", s.base))
            .json(&json!({"input": {"sleep_ms": 400}})),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(run["status"], "IN_QUEUE");
    let id = run["id"].as_str().unwrap().to_owned();
    assert!(id.ends_with("-u1"));
    let (_, st) = send(c.get(format!("{}/v2/ep/status/{id}", s.base))).await;
    assert_eq!(st, json!({"id": id, "status": "IN_QUEUE"}));
    let (_, h) = send(c.get(format!("{}/v2/ep/health", s.base))).await;
    assert_eq!(h["jobs"]["inQueue"], 1);

    s.ready();
    wait_status(&c, &s.base, &id, "IN_PROGRESS").await;
    let (_, h) = send(c.get(format!("{}/v2/ep/health", s.base))).await;
    assert_eq!(
        h["workers"],
        json!({"idle": 0, "initializing": 0, "ready": 0, "running": 1, "throttled": 0, "unhealthy": 0})
    );
    assert_eq!(h["jobs"]["inProgress"], 1);
    let done = wait_status(&c, &s.base, &id, "COMPLETED").await;
    assert_eq!(done["output"], json!({"echo": {"sleep_ms": 400}}));
    assert!(done["executionTime"].as_u64().unwrap() >= 400, "{done}");
    assert!(done["delayTime"].is_u64());
    assert_eq!(done["workerId"], "local");
    let (_, h) = send(c.get(format!("{}/v2/ep/health", s.base))).await;
    assert_eq!(h["workers"]["idle"], 1);
    assert_eq!(
        h["jobs"],
        json!({"completed": 1, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0})
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runsync_cancel_retry_purge_and_timeouts() {
    let s = Server::start(HandlerConfig::default(), None, false, 1);
    let c = client();
    let b = &s.base;
    // runsync: finished within the wait → full status object.
    let (code, v) = send(
        c.post(format!("{b}/v2/ep/runsync"))
            .json(&json!({"input": {"return": [1, 2]}})),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(v["status"], "COMPLETED");
    assert_eq!(v["output"], json!([1, 2]));
    assert!(v["id"].as_str().unwrap().starts_with("sync-"));
    for k in ["delayTime", "executionTime", "workerId"] {
        assert!(v.get(k).is_some(), "{k} missing: {v}");
    }
    // Not finished within ?wait= → id and state only; the client then polls /status.
    let started = Instant::now();
    let (_, v) = send(
        c.post(format!("{b}/v2/ep/runsync?wait=1000"))
            .json(&json!({"input": {"sleep_ms": 1800, "return": "late"}})),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(950));
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    assert_eq!(v["status"], "IN_PROGRESS");
    let late = v["id"].as_str().unwrap().to_owned();

    // Queue two jobs behind it, cancel one while queued, purge the other.
    let (_, q1) = send(
        c.post(format!("{b}/v2/ep/run"))
            .json(&json!({"input": {"return": 1}})),
    )
    .await;
    let (_, q2) = send(
        c.post(format!("{b}/v2/ep/run"))
            .json(&json!({"input": {"return": 2}})),
    )
    .await;
    let (_, cancelled) =
        send(c.post(format!("{b}/v2/ep/cancel/{}", q1["id"].as_str().unwrap()))).await;
    assert_eq!(cancelled, json!({"id": q1["id"], "status": "CANCELLED"}));
    let (_, purged) = send(c.post(format!("{b}/v2/ep/purge-queue"))).await;
    assert_eq!(purged, json!({"removed": 1, "status": "completed"}));
    let (_, st) = send(c.get(format!("{b}/v2/ep/status/{}", q2["id"].as_str().unwrap()))).await;
    assert_eq!(st["status"], "CANCELLED");
    let v = wait_status(&c, b, &late, "COMPLETED").await;
    assert_eq!(v["output"], "late");

    // Cancel a running job.
    let (_, r) = send(
        c.post(format!("{b}/v2/ep/run"))
            .json(&json!({"input": {"sleep_ms": 20000}})),
    )
    .await;
    let id = r["id"].as_str().unwrap().to_owned();
    wait_status(&c, b, &id, "IN_PROGRESS").await;
    let (_, v) = send(c.post(format!("{b}/v2/ep/cancel/{id}"))).await;
    assert_eq!(v["status"], "CANCELLED");
    let v = wait_status(&c, b, &id, "CANCELLED").await;
    assert!(v.get("output").is_none());

    // A failed job can be retried under the same id; others cannot.
    let (_, f) = send(
        c.post(format!("{b}/v2/ep/run"))
            .json(&json!({"input": {"fail": "nope"}})),
    )
    .await;
    let fid = f["id"].as_str().unwrap().to_owned();
    let v = wait_status(&c, b, &fid, "FAILED").await;
    let err: Value = serde_json::from_str(v["error"].as_str().unwrap()).unwrap();
    assert_eq!(err["error_type"], "EchoFailure");
    let (code, v) = send(c.post(format!("{b}/v2/ep/retry/{fid}"))).await;
    assert_eq!((code, v), (200, json!({"id": fid, "status": "IN_QUEUE"})));
    wait_status(&c, b, &fid, "FAILED").await;
    let (code, v) = send(c.post(format!("{b}/v2/ep/retry/{late}"))).await;
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("COMPLETED"));
    let (_, h) = send(c.get(format!("{b}/v2/ep/health"))).await;
    assert_eq!(h["jobs"]["retried"], 1);
    assert_eq!(h["jobs"]["failed"], 2);

    // policy.executionTimeout → TIMED_OUT.
    let (_, t) = send(
        c.post(format!("{b}/v2/ep/run"))
            .json(&json!({"input": {"sleep_ms": 20000}, "policy": {"executionTimeout": 300}})),
    )
    .await;
    wait_status(&c, b, t["id"].as_str().unwrap(), "TIMED_OUT").await;

    // Unknown ids and bad bodies.
    let (code, v) = send(c.get(format!("{b}/v2/ep/status/nope"))).await;
    assert_eq!(code, 404);
    assert!(v["error"].is_string());
    let (code, v) = send(
        c.post(format!("{b}/v2/ep/run"))
            .json(&json!({"prompt": "x"})),
    )
    .await;
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("input"));
    let (code, _) = send(c.post(format!("{b}/v2/ep/run")).body("{not json")).await;
    assert_eq!(code, 400);
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limits_are_10_mb_for_run_and_20_mb_for_runsync() {
    let s = Server::start(HandlerConfig::default(), None, false, 1);
    let c = client();
    let pad = "x".repeat(10 * 1024 * 1024 + 1);
    let big = json!({"input": {"return": "ok", "pad": pad}});
    let (code, v) = send(c.post(format!("{}/v2/ep/run", s.base)).json(&big)).await;
    assert_eq!(code, 413);
    assert!(v["error"].as_str().unwrap().contains("10 MB"), "{v}");
    let (code, v) = send(c.post(format!("{}/v2/ep/runsync", s.base)).json(&big)).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["output"], "ok");
    let huge = json!({"input": {"pad": "y".repeat(20 * 1024 * 1024 + 1)}});
    let (code, v) = send(c.post(format!("{}/v2/ep/runsync", s.base)).json(&huge)).await;
    assert_eq!(code, 413);
    assert!(v["error"].as_str().unwrap().contains("20 MB"), "{v}");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_when_set() {
    let s = Server::start(HandlerConfig::default(), Some("s3cret"), false, 1);
    let c = client();
    let url = format!("{}/v2/ep/health", s.base);
    let (code, v) = send(c.get(&url)).await;
    assert_eq!(code, 401);
    assert!(v["error"].is_string());
    assert_eq!(
        send(c.get(&url).header("authorization", "wrong")).await.0,
        401
    );
    assert_eq!(
        send(c.get(&url).header("authorization", "s3cret")).await.0,
        200
    );
    assert_eq!(send(c.get(&url).bearer_auth("s3cret")).await.0, 200);
    assert_eq!(
        send(
            c.post(format!("{}/runsync", s.base))
                .json(&json!({"input": {}}))
        )
        .await
        .0,
        401
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_get_the_full_status_object() {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let s = Server::start(HandlerConfig::default(), None, false, 1);
    let c = client();
    let (_, r) = send(
        c.post(format!("{}/v2/ep/run", s.base))
            .json(&json!({"input": {"return": "hi"}, "webhook": hook})),
    )
    .await;
    let (_, d) = send(
        c.post(format!("{}/runsync", s.base))
            .json(&json!({"input": {"return": "dev"}, "webhook": hook})),
    )
    .await;
    let end = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().len() < 2 {
        assert!(Instant::now() < end, "webhooks not delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = received.lock().unwrap().clone();
    let cloud = got
        .iter()
        .find(|v| v.get("id") == Some(&r["id"]))
        .expect("cloud webhook");
    assert_eq!(cloud["status"], "COMPLETED");
    assert_eq!(cloud["output"], "hi");
    assert_eq!(cloud["input"], json!({"return": "hi"}));
    assert_eq!(cloud["webhook"], hook);
    assert!(cloud["executionTime"].is_u64());
    // The dev route sends the SDK dev server's payload: just the output.
    assert!(got.contains(&json!({"output": "dev"})), "{got:?} / {d}");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_server_routes_keep_working() {
    let s = Server::start(HandlerConfig::default(), None, false, 1);
    let c = client();
    let b = &s.base;
    let (_, v) = send(
        c.post(format!("{b}/runsync"))
            .json(&json!({"input": {"return": {"k": 1}}})),
    )
    .await;
    let id = v["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("test-"));
    assert_eq!(
        v,
        json!({"id": id, "status": "COMPLETED", "output": {"k": 1}})
    );
    let (_, v) = send(
        c.post(format!("{b}/run"))
            .json(&json!({"input": {"sleep_ms": 100, "return": 5}})),
    )
    .await;
    assert_eq!(v["status"], "IN_PROGRESS");
    let id = v["id"].as_str().unwrap().to_owned();
    // POST (the SDK's method) waits for the result; GET works too.
    let (_, st) = send(c.post(format!("{b}/status/{id}"))).await;
    assert_eq!(st, json!({"id": id, "status": "COMPLETED", "output": 5}));
    let (_, st) = send(c.get(format!("{b}/status/{id}"))).await;
    assert_eq!(st["output"], 5);
    let (code, st) = send(c.post(format!("{b}/status/unknown"))).await;
    assert_eq!(
        (code, st),
        (
            200,
            json!({"id": "unknown", "status": "FAILED", "error": "Job ID not found"})
        )
    );
    let (_, st) = send(c.post(format!("{b}/stream/{id}"))).await;
    assert_eq!(
        st["error"],
        "Stream not supported, handler must be a generator."
    );
    let (_, v) = send(
        c.post(format!("{b}/runsync"))
            .json(&json!({"input": {"fail": "bad"}})),
    )
    .await;
    assert_eq!(v["status"], "FAILED");
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("\"error_message\": \"bad\""));
    // The dev server requires an object input (FastAPI 422).
    let (code, _) = send(c.post(format!("{b}/run")).json(&json!({"input": "text"}))).await;
    assert_eq!(code, 422);
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_returns_new_chunks_per_call() {
    let cfg = HandlerConfig {
        streaming: true,
        return_aggregate_stream: true,
        refresh_worker: false,
    };
    let s = Server::start(cfg, None, false, 2);
    let c = client();
    let b = &s.base;
    let (_, r) = send(
        c.post(format!("{b}/v2/ep/run"))
            .json(&json!({"input": {"chunks": ["a", "b"], "sleep_ms": 300}})),
    )
    .await;
    let id = r["id"].as_str().unwrap().to_owned();
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = send(c.get(format!("{b}/v2/ep/stream/{id}"))).await;
        let chunks = v["stream"].as_array().unwrap().clone();
        seen.extend(chunks.iter().map(|c| c["output"].clone()));
        if v["status"] == "COMPLETED" && chunks.is_empty() {
            break;
        }
        assert!(Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, [json!("a"), json!("b")]);
    let (_, st) = send(c.get(format!("{b}/v2/ep/status/{id}"))).await;
    assert_eq!(st["output"], json!(["a", "b"]), "aggregate output");
    // Dev route: every chunk at once.
    let (_, d) = send(
        c.post(format!("{b}/run"))
            .json(&json!({"input": {"chunks": [1, 2, 3]}})),
    )
    .await;
    let (_, v) = send(c.post(format!("{b}/stream/{}", d["id"].as_str().unwrap()))).await;
    assert_eq!(
        v["stream"],
        json!([{"output": 1}, {"output": 2}, {"output": 3}])
    );
    assert_eq!(v["status"], "COMPLETED");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_expire_after_their_retention() {
    let timings = Timings {
        retention_run: Duration::from_millis(600),
        retention_sync: Duration::from_millis(200),
        janitor_interval: Duration::from_millis(50),
        ..Timings::fast()
    };
    let s = Server::start_with(HandlerConfig::default(), None, false, 1, timings);
    let c = client();
    let b = &s.base;
    let (_, r) = send(
        c.post(format!("{b}/v2/ep/run"))
            .json(&json!({"input": {"return": 1}})),
    )
    .await;
    let id = r["id"].as_str().unwrap().to_owned();
    let (_, sync) = send(
        c.post(format!("{b}/v2/ep/runsync"))
            .json(&json!({"input": {"return": 2}})),
    )
    .await;
    let sync_id = sync["id"].as_str().unwrap().to_owned();
    wait_status(&c, b, &id, "COMPLETED").await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(send(c.get(format!("{b}/v2/ep/status/{id}"))).await.0, 200);
    let (code, v) = send(c.get(format!("{b}/v2/ep/status/{sync_id}"))).await;
    assert_eq!(code, 404, "runsync result kept too long: {v} / {sync}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        send(c.get(format!("{b}/v2/ep/status/{id}"))).await.0,
        404,
        "run result kept too long"
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_runs_in_serve_mode_when_configured() {
    let mock = MockJobApi::start();
    let mut args = mock.args(1);
    args.webhook_get_job = None;
    let s = Server::start_args(args, HandlerConfig::default(), false, Timings::fast());
    let c = client();
    let (_, r) = send(
        c.post(format!("{}/v2/ep/run", s.base))
            .json(&json!({"input": {"sleep_ms": 500}})),
    )
    .await;
    let id = r["id"].as_str().unwrap().to_owned();
    wait_status(&c, &s.base, &id, "COMPLETED").await;
    s.stop();
    let pings = mock.of_kind("ping");
    let busy = format!("/v2/ep/ping/{POD_ID}?job_id={id}&runpod_version=1.12.0");
    assert!(
        pings.iter().any(|p| p.uri == busy),
        "no ping listed the running job"
    );
    assert!(
        mock.of_kind("job-take").is_empty(),
        "serve mode must not take platform jobs"
    );
}
