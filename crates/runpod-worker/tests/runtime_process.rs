//! Process-level runtime tests with `examples/echo_worker`: SIGTERM drain in serverless
//! mode, and local test mode's stdout shape and exit codes.

mod runtime_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use runtime_support::{echo_worker, terminate, wait_for_port, MockJobApi};
use serde_json::{json, Value};

fn local(args: &[&str], cwd: &std::path::Path) -> std::process::Output {
    Command::new(echo_worker())
        .args(args)
        .current_dir(cwd)
        .env_remove("RUNPOD_WEBHOOK_GET_JOB")
        .env_remove("RUNPOD_TEST_INPUT")
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

#[test]
fn sigterm_finishes_and_posts_the_running_job_then_exits_0() {
    let api = MockJobApi::start();
    api.push_job("D1", json!({"sleep_ms": 1500, "return": "drained"}));
    api.push_job("D2", json!({"return": "must not be taken"}));
    let mut child = Command::new(echo_worker())
        .envs(api.env())
        .env("ECHO_FAST_TIMINGS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(api.wait_until(Duration::from_secs(20), |r| r
        .iter()
        .any(|x| x.uri.contains("job_id=D1"))));
    std::thread::sleep(Duration::from_millis(200));
    let (exit, signalled) = terminate(&mut child, Duration::from_secs(15));
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert_eq!(exit.code(), Some(0), "stderr: {stderr}");
    let done = api.done_for("D1");
    assert_eq!(done.len(), 1, "stderr: {stderr}");
    assert_eq!(done[0].body, r#"{"output": "drained"}"#);
    assert!(
        done[0].at > signalled - Duration::from_millis(50),
        "job finished before the signal; test proves nothing"
    );
    assert!(
        api.done_for("D2").is_empty(),
        "took a new job after SIGTERM"
    );
    let takes = api.of_kind("job-take");
    assert_eq!(takes.len(), 1, "job-take after SIGTERM");
    assert!(!stderr.contains("rpa_TESTKEY"), "API key leaked into logs");
}

#[test]
fn local_mode_prints_exactly_one_json_document_and_sets_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let ok = local(
        &["--test_input", r#"{"input": {"return": {"a": [1, 2]}}}"#],
        dir.path(),
    );
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(ok.stdout).unwrap(),
        "{\"output\": {\"a\": [1, 2]}}\n"
    );
    assert!(
        String::from_utf8_lossy(&ok.stderr).contains("local_test"),
        "logs go to stderr"
    );

    let failed = local(
        &["--test-input", r#"{"input": {"fail": "no such sampler"}}"#],
        dir.path(),
    );
    assert_eq!(failed.status.code(), Some(1));
    let out = String::from_utf8(failed.stdout).unwrap();
    assert_eq!(out.lines().count(), 1);
    let body: Value = serde_json::from_str(&out).unwrap();
    let err: Value = serde_json::from_str(body["error"].as_str().unwrap()).unwrap();
    assert_eq!(err["error_message"], "no such sampler");

    // A returned `error` value (no exception) also exits 1.
    let soft = local(
        &[
            "--test_input",
            r#"{"input": {"return": {"error": ["bad"]}}}"#,
        ],
        dir.path(),
    );
    assert_eq!(soft.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(soft.stdout).unwrap(),
        "{\"error\": [\"bad\"]}\n"
    );
}

#[test]
fn local_mode_reads_test_input_json_and_reports_missing_input() {
    let dir = tempfile::tempdir().unwrap();
    let missing = local(&[], dir.path());
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stdout.is_empty());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("test_input.json not found"));

    std::fs::write(
        dir.path().join("test_input.json"),
        r#"{"input": {"return": "from file"}}"#,
    )
    .unwrap();
    let from_file = local(&[], dir.path());
    assert_eq!(from_file.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(from_file.stdout).unwrap(),
        "{\"output\": \"from file\"}\n"
    );

    std::fs::write(dir.path().join("test_input.json"), r#"{"inputs": {}}"#).unwrap();
    let no_input = local(&[], dir.path());
    assert_eq!(no_input.status.code(), Some(1));
    assert!(no_input.stdout.is_empty());
    assert!(String::from_utf8_lossy(&no_input.stderr).contains("\"input\" field"));

    let bad_json = local(&["--test_input", "{oops"], dir.path());
    assert_eq!(bad_json.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_json.stderr).contains("--test_input is not valid JSON"));
}

#[test]
fn test_input_forces_local_mode_and_output_dir_gets_images() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(echo_worker())
        .args([
            "--test_input",
            r#"{"input": {"image": true}}"#,
            "--output-dir",
        ])
        .arg(&out_dir)
        .current_dir(dir.path())
        // Even with the platform's variables set, --test_input runs locally.
        .env(
            "RUNPOD_WEBHOOK_GET_JOB",
            "http://127.0.0.1:9/v2/ep/job-take/$ID?",
        )
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(body["output"]["images"][0]["image"].is_string());
    let png = std::fs::read(out_dir.join("local_test_0.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    // IHDR's width and height (big-endian u32 at bytes 16..24).
    assert_eq!(&png[16..24], &[0, 0, 0, 2, 0, 0, 0, 2]);
}

#[test]
fn init_failure_exits_nonzero_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(echo_worker())
        .args(["--test_input", r#"{"input": {}}"#])
        .current_dir(dir.path())
        .env("ECHO_INIT_FAIL", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ECHO_INIT_FAIL"));
}

#[test]
fn endpoint_api_stops_cleanly_on_sigterm_even_with_a_waiting_request() {
    let port = runtime_support::free_port();
    let mut child = Command::new(echo_worker())
        .args(["--rp_serve_api", "--rp_api_port", &port.to_string()])
        .env_remove("RUNPOD_WEBHOOK_GET_JOB")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    // A /runsync that would wait for a minute-long job.
    let waiting = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = r#"{"input": {"sleep_ms": 60000}}"#;
        write!(
            s,
            "POST /v2/ep/runsync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    });
    std::thread::sleep(Duration::from_millis(300));
    let (exit, _) = terminate(&mut child, Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0));
    let answer = waiting.join().unwrap();
    assert!(
        answer.contains("IN_PROGRESS"),
        "waiting client got: {answer}"
    );
}
