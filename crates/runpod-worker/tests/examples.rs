//! The examples run the way a user runs them: `--test_input '{...}'` prints the result,
//! `--rp_serve_api` serves the local endpoint API that clients call over HTTP, and with the
//! platform's `RUNPOD_*` variables (here pointing at a mock job API) the worker takes jobs.

mod runtime_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runtime_support::{example, free_port, terminate, MockJobApi, ServedApi};
use serde_json::{json, Value};

/// Runs an example in local test mode; returns the exit code and the parsed stdout.
fn test_input(name: &str, input: &str) -> (i32, Value) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(example(name))
        .args(["--test_input", input])
        .current_dir(dir.path())
        .env_remove("RUNPOD_WEBHOOK_GET_JOB")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let body = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{name}: stdout is not one JSON document ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), body)
}

fn serve(name: &str) -> ServedApi {
    ServedApi::start(Command::new(example(name)), free_port())
}

/// POSTs `body` to `/v2/local/<op>` of the served example.
async fn post(api: &ServedApi, op: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{}/v2/local/{op}", api.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.json().await.unwrap()
}

async fn get(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// GETs `url` every 20 ms until `done` holds for the answer (at most 10 s); returns it.
async fn poll(url: String, mut done: impl FnMut(&Value) -> bool) -> Value {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let v = get(url.clone()).await;
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < end, "gave up polling {url}: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn hello_handler_answers_a_test_input() {
    let (code, body) = test_input("hello_handler", r#"{"input": {"name": "x"}}"#);
    assert_eq!(code, 0, "{body}");
    assert_eq!(body, json!({"output": {"greeting": "Hello, x!"}}));

    let (code, body) = test_input("hello_handler", r#"{"input": {}}"#);
    assert_eq!(code, 1, "{body}");
    let error: Value = serde_json::from_str(body["error"].as_str().unwrap()).unwrap();
    assert_eq!(error["error_type"], "invalid_input");
    assert_eq!(error["error_message"], "`name` must be a string");
}

#[tokio::test]
async fn hello_handler_serves_runsync() {
    let api = serve("hello_handler");
    let v = post(&api, "runsync", json!({"input": {"name": "y"}})).await;
    assert_eq!(v["status"], "COMPLETED", "{v}");
    assert_eq!(v["output"], json!({"greeting": "Hello, y!"}));

    let v = post(&api, "run", json!({"input": {"name": 5}})).await;
    let id = v["id"].as_str().unwrap();
    let status = poll(format!("{}/v2/local/status/{id}", api.base), |s| {
        s["status"] != "IN_QUEUE" && s["status"] != "IN_PROGRESS"
    })
    .await;
    assert_eq!(status["status"], "FAILED", "{status}");
}

#[test]
fn hello_handler_takes_a_job_from_the_job_api() {
    let jobs = MockJobApi::start();
    jobs.push_job("H1", json!({"name": "pod"}));
    let mut worker = Command::new(example("hello_handler"))
        .envs(jobs.env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let posted = jobs.wait_until(Duration::from_secs(20), |_| !jobs.done_for("H1").is_empty());
    let (status, _) = terminate(&mut worker, Duration::from_secs(15));
    assert!(posted, "no result for H1");
    assert_eq!(
        jobs.done_for("H1")[0].body,
        r#"{"output": {"greeting": "Hello, pod!"}}"#
    );
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn start_stops_cleanly_on_sigterm() {
    let mut api = serve("hello_handler");
    let v = post(&api, "runsync", json!({"input": {"name": "z"}})).await;
    assert_eq!(v["status"], "COMPLETED", "{v}");
    let status = api.terminate(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn stream_handler_aggregates_its_chunks_locally() {
    let (code, body) = test_input("stream_handler", r#"{"input": {"text": "a b c"}}"#);
    assert_eq!(code, 0, "{body}");
    assert_eq!(
        body,
        json!({"output": [
            {"index": 0, "word": "a"},
            {"index": 1, "word": "b"},
            {"index": 2, "word": "c"},
        ]})
    );
}

#[tokio::test]
async fn stream_handler_streams_chunks_over_the_endpoint_api() {
    let api = serve("stream_handler");
    let v = post(
        &api,
        "run",
        json!({"input": {"text": "one two three four"}}),
    )
    .await;
    let id = v["id"].as_str().unwrap();
    let mut words = Vec::new();
    let mut polls_with_chunks = 0;
    poll(format!("{}/v2/local/stream/{id}", api.base), |s| {
        let chunks = s["stream"].as_array().unwrap();
        if !chunks.is_empty() {
            polls_with_chunks += 1;
        }
        words.extend(chunks.iter().map(|c| c["output"]["word"].clone()));
        s["status"] == "COMPLETED"
    })
    .await;
    assert_eq!(
        words,
        vec![json!("one"), json!("two"), json!("three"), json!("four")]
    );
    // The chunks arrived while the job ran, not all at the end.
    assert!(polls_with_chunks > 1, "{polls_with_chunks}");
    // Without --return_aggregate_stream the final output is [].
    let status = get(format!("{}/v2/local/status/{id}", api.base)).await;
    assert_eq!(status["output"], json!([]), "{status}");
}
