//! Shared pieces of the runtime tests: an in-process mock of RunPod's worker-facing job API
//! that records every request, and helpers to find/start the echo example worker.
#![allow(dead_code)]

pub mod echo;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use runpod_worker::RuntimeArgs;

pub const API_KEY: &str = "rpa_TESTKEY123";
pub const POD_ID: &str = "pod123abc";
pub const POD_HOSTNAME: &str = "pod123abc-64410d87";
pub const GPU_QUERY: &str = "?gpu=NVIDIA+RTX+A5000";

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query exactly as sent.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: String,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `job-take`, `job-take-batch`, `job-stop`, `job-done`, `job-stream` or `ping`.
    pub fn kind(&self) -> &str {
        let path = self.uri.split('?').next().unwrap_or("");
        path.split('/').nth(3).unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("body is JSON")
    }
}

/// A scripted answer to job-take.
#[derive(Debug, Clone)]
pub enum TakeReply {
    Job(Value),
    Batch(Vec<Value>),
    Status(u16),
    Raw {
        status: u16,
        content_type: &'static str,
        body: String,
    },
}

#[derive(Default)]
struct MockState {
    requests: Vec<Recorded>,
    takes: VecDeque<TakeReply>,
    done_statuses: VecDeque<u16>,
    stop_ids: Vec<String>,
}

/// The mock job API. It runs on its own thread and runtime so that a test handler that
/// blocks the worker's runtime cannot stall it.
pub struct MockJobApi {
    pub base: String,
    state: Arc<Mutex<MockState>>,
    _thread: std::thread::JoinHandle<()>,
}

async fn record(State(state): State<Arc<Mutex<MockState>>>, req: Request) -> Response {
    let method = req.method().to_string();
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let rec = Recorded {
        method,
        uri,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
    };
    let kind = rec.kind().to_owned();
    let reply = {
        let mut s = state.lock().unwrap();
        s.requests.push(rec);
        match kind.as_str() {
            "job-take" | "job-take-batch" => Some(s.takes.pop_front()),
            "job-done" | "job-stream" => {
                let code = s.done_statuses.pop_front().unwrap_or(200);
                return (StatusCode::from_u16(code).unwrap(), "ok").into_response();
            }
            "job-stop" => {
                if !s.stop_ids.is_empty() {
                    let ids: Vec<String> = s.stop_ids.drain(..).collect();
                    return axum::Json(json!({"jobsToStop": ids})).into_response();
                }
                None
            }
            _ => return (StatusCode::OK, "pong").into_response(),
        }
    };
    match reply {
        Some(Some(TakeReply::Job(job))) => axum::Json(job).into_response(),
        Some(Some(TakeReply::Batch(jobs))) => axum::Json(Value::Array(jobs)).into_response(),
        Some(Some(TakeReply::Status(code))) => StatusCode::from_u16(code).unwrap().into_response(),
        Some(Some(TakeReply::Raw {
            status,
            content_type,
            body,
        })) => Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap(),
        // Nothing scripted: hold briefly like the real long-poll, then "no job".
        _ => {
            tokio::time::sleep(Duration::from_millis(30)).await;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

impl MockJobApi {
    pub fn start() -> Self {
        let state: Arc<Mutex<MockState>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            two_thread_runtime().block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().fallback(record).with_state(st);
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        MockJobApi {
            base: format!("http://{addr}"),
            state,
            _thread: thread,
        }
    }

    pub fn push_take(&self, reply: TakeReply) {
        self.state.lock().unwrap().takes.push_back(reply);
    }

    pub fn push_job(&self, id: &str, input: Value) {
        self.push_take(TakeReply::Job(json!({"id": id, "input": input})));
    }

    /// Statuses for the next job-done/job-stream posts (200 afterwards).
    pub fn push_done_statuses(&self, codes: &[u16]) {
        self.state.lock().unwrap().done_statuses.extend(codes);
    }

    /// Delivers the id on the next job-stop poll.
    pub fn stop_job(&self, id: &str) {
        self.state.lock().unwrap().stop_ids.push(id.to_owned());
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn of_kind(&self, kind: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.kind() == kind)
            .collect()
    }

    /// job-done posts for one job (progress updates included).
    pub fn done_for(&self, job_id: &str) -> Vec<Recorded> {
        self.of_kind("job-done")
            .into_iter()
            .filter(|r| r.uri.contains(&format!("/{job_id}?")))
            .collect()
    }

    /// Polls until `pred` holds or `timeout` passes.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&[Recorded]) -> bool) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if pred(&self.requests()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        pred(&self.requests())
    }

    pub fn get_job_template(&self) -> String {
        format!("{}/v2/ep/job-take/$ID{GPU_QUERY}", self.base)
    }

    /// Serverless-mode settings pointing at this mock, as RunPod would set them.
    pub fn args(&self, concurrency: u16) -> RuntimeArgs {
        RuntimeArgs {
            concurrency,
            webhook_get_job: Some(self.get_job_template()),
            webhook_post_output: Some(format!(
                "{}/v2/ep/job-done/$RUNPOD_POD_ID/$ID{GPU_QUERY}",
                self.base
            )),
            webhook_post_stream: Some(format!(
                "{}/v2/ep/job-stream/$RUNPOD_POD_ID/$ID{GPU_QUERY}",
                self.base
            )),
            webhook_ping: Some(format!("{}/v2/ep/ping/$RUNPOD_POD_ID", self.base)),
            runpod_ai_api_key: Some(API_KEY.into()),
            pod_id: Some(POD_ID.into()),
            pod_hostname: Some(POD_HOSTNAME.into()),
            ..RuntimeArgs::default()
        }
    }

    /// The same settings as environment variables (for the example worker process).
    pub fn env(&self) -> Vec<(String, String)> {
        let a = self.args(1);
        vec![
            ("RUNPOD_WEBHOOK_GET_JOB".into(), a.webhook_get_job.unwrap()),
            (
                "RUNPOD_WEBHOOK_POST_OUTPUT".into(),
                a.webhook_post_output.unwrap(),
            ),
            (
                "RUNPOD_WEBHOOK_POST_STREAM".into(),
                a.webhook_post_stream.unwrap(),
            ),
            ("RUNPOD_WEBHOOK_PING".into(), a.webhook_ping.unwrap()),
            ("RUNPOD_AI_API_KEY".into(), API_KEY.into()),
            ("RUNPOD_POD_ID".into(), POD_ID.into()),
            ("RUNPOD_POD_HOSTNAME".into(), POD_HOSTNAME.into()),
        ]
    }
}

/// The built example worker `examples/echo_worker`.
pub fn echo_worker() -> PathBuf {
    example("echo_worker")
}

/// A built example of this crate, next to this test executable's profile directory
/// (`target/<profile>/examples/<name>`); built with cargo when missing.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-p", "runpod-worker", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("running cargo build --example {name}: {e}"));
        assert!(status.success(), "building examples/{name} failed");
    }
    path
}

/// A worker process serving the local endpoint API; killed when dropped, pass or fail.
pub struct ServedApi {
    child: std::process::Child,
    pub base: String,
}

impl ServedApi {
    /// Runs `cmd` with `--rp_serve_api --rp_api_port <port>` added and waits until the port
    /// accepts connections.
    pub fn start(mut cmd: std::process::Command, port: u16) -> ServedApi {
        let child = cmd
            .args(["--rp_serve_api", "--rp_api_port", &port.to_string()])
            .env_remove("RUNPOD_WEBHOOK_GET_JOB")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port);
        ServedApi {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Sends SIGTERM and waits for the exit (see [`terminate`]).
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        terminate(&mut self.child, limit).0
    }
}

impl Drop for ServedApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to 20 s) until something accepts connections on the local `port`.
pub fn wait_for_port(port: u16) {
    let end = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "nothing opened port {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGTERM to `child` and waits (up to `limit`) for it to exit; returns its status
/// and when the signal was sent.
pub fn terminate(
    child: &mut std::process::Child,
    limit: Duration,
) -> (std::process::ExitStatus, Instant) {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let signalled = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, signalled);
        }
        assert!(
            signalled.elapsed() < limit,
            "the worker did not exit within {limit:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tokio runtime with two worker threads, for servers and workers run on a test thread.
pub fn two_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
