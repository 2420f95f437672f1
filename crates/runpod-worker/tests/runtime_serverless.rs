//! Serverless mode against an in-process mock of RunPod's job API: request lines and
//! headers, result mapping, retries, take answers, batch/concurrency, job-stop, progress,
//! streaming, heartbeat cadence, refresh_worker.

mod runtime_support;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use runpod_worker::{self as runpod, HandlerConfig, RuntimeArgs, Timings};
use runtime_support::echo::EchoHandler;
use runtime_support::{MockJobApi, Recorded, TakeReply, API_KEY, GPU_QUERY, POD_HOSTNAME, POD_ID};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

struct Worker {
    shutdown: CancellationToken,
    thread: JoinHandle<anyhow::Result<ExitCode>>,
}

impl Worker {
    /// Runs the worker on its own thread; `current_thread` puts everything (but the
    /// heartbeat) on one runtime thread, the harshest case for a blocking handler.
    fn spawn(
        args: RuntimeArgs,
        handler: Arc<EchoHandler>,
        timings: Timings,
        current_thread: bool,
    ) -> Self {
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let rt = if current_thread {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
            } else {
                runtime_support::two_thread_runtime()
            };
            rt.block_on(runpod::run_with_timings(
                &args,
                timings,
                async move { Ok(handler) },
                token,
            ))
        });
        Worker { shutdown, thread }
    }

    fn start(api: &MockJobApi, concurrency: u16, handler: Arc<EchoHandler>) -> Self {
        Worker::spawn(api.args(concurrency), handler, Timings::fast(), false)
    }

    fn stop(self) -> ExitCode {
        self.shutdown.cancel();
        self.thread.join().unwrap().unwrap()
    }
}

fn echo() -> Arc<EchoHandler> {
    Arc::new(EchoHandler::new(HandlerConfig::default()))
}

fn take_uri(batch: Option<usize>, in_progress: bool) -> String {
    let flag = u8::from(in_progress);
    match batch {
        Some(n) => format!(
            "/v2/ep/job-take-batch/{POD_ID}{GPU_QUERY}&batch_size={n}&job_in_progress={flag}"
        ),
        None => format!("/v2/ep/job-take/{POD_ID}{GPU_QUERY}&job_in_progress={flag}"),
    }
}

fn done_uri(job: &str, is_stream: bool) -> String {
    format!("/v2/ep/job-done/{POD_ID}/{job}{GPU_QUERY}&isStream={is_stream}")
}

/// The final (non-progress) job-done posts of a job.
fn finals(api: &MockJobApi, job: &str) -> Vec<Recorded> {
    api.done_for(job)
        .into_iter()
        .filter(|r| r.json().get("status") != Some(&json!("IN_PROGRESS")))
        .collect()
}

fn has_final(job: &'static str) -> impl Fn(&[Recorded]) -> bool {
    move |reqs| {
        reqs.iter().any(|r| {
            r.kind() == "job-done"
                && r.uri.contains(&format!("/{job}?"))
                && !r.body.contains("\"IN_PROGRESS\"")
        })
    }
}

#[test]
fn requests_and_headers_match_the_sdk() {
    let api = MockJobApi::start();
    api.push_job(
        "J1",
        json!({"return": {"a": "é", "n": [1, 2]}, "sleep_ms": 400}),
    );
    let w = Worker::start(&api, 1, echo());
    assert!(api.wait_until(WAIT, has_final("J1")));
    // Let a few more takes and pings happen after the job.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(w.stop(), ExitCode::SUCCESS);

    let reqs = api.requests();
    let takes: Vec<&Recorded> = reqs.iter().filter(|r| r.kind() == "job-take").collect();
    assert_eq!(takes[0].method, "GET");
    assert_eq!(takes[0].uri, take_uri(None, false));
    for t in &takes {
        assert_eq!(
            t.header("authorization"),
            Some(API_KEY),
            "raw key, no Bearer"
        );
        assert_eq!(t.header("content-type"), Some("application/json"));
        assert!(t
            .header("user-agent")
            .unwrap()
            .starts_with("runpod-worker/"));
    }
    // Concurrency 1: no job-take while the job is held.
    let done = &finals(&api, "J1")[0];
    let during = takes
        .iter()
        .filter(|t| t.at > takes[0].at && t.at < done.at)
        .count();
    assert_eq!(during, 0, "took a job while holding one at concurrency 1");
    assert!(takes.iter().skip(1).all(|t| t.uri == take_uri(None, false)));

    assert_eq!(done.method, "POST");
    assert_eq!(done.uri, done_uri("J1", false));
    assert_eq!(
        done.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(done.header("charset"), Some("utf-8"));
    assert_eq!(done.header("x-request-id"), Some("J1"));
    assert_eq!(done.header("authorization"), Some(API_KEY));
    assert_eq!(done.body, r#"{"output": {"a": "é", "n": [1, 2]}}"#);

    // Heartbeat: raw key, job id while held, runpod_version always.
    let pings: Vec<&Recorded> = reqs.iter().filter(|r| r.kind() == "ping").collect();
    assert!(pings
        .iter()
        .all(|p| p.method == "GET" && p.header("authorization") == Some(API_KEY)));
    let busy = format!("/v2/ep/ping/{POD_ID}?job_id=J1&runpod_version=1.12.0");
    let idle = format!("/v2/ep/ping/{POD_ID}?runpod_version=1.12.0");
    assert!(
        pings.iter().any(|p| p.uri == busy),
        "no ping listed J1: {:?}",
        pings.iter().map(|p| &p.uri).collect::<Vec<_>>()
    );
    assert!(pings.iter().any(|p| p.uri == idle && p.at > done.at));
    assert!(pings.iter().all(|p| p.uri == busy || p.uri == idle));
    // job-stop long-poll URL derived from the take template.
    let stop = api.of_kind("job-stop");
    assert!(!stop.is_empty());
    assert!(stop
        .iter()
        .all(|s| s.uri == format!("/v2/ep/job-stop/{POD_ID}{GPU_QUERY}")));
}

#[test]
fn handler_errors_become_the_sdk_error_json_and_the_worker_survives_panics() {
    let api = MockJobApi::start();
    api.push_job("E1", json!({"fail": "width must be a multiple of 8"}));
    api.push_job("P1", json!({"panic": true}));
    api.push_job(
        "V1",
        json!({"return": {"error": ["bad width", "bad height"], "refresh_worker": true}}),
    );
    api.push_job("OK", json!({"return": 7}));
    let w = Worker::start(&api, 1, echo());
    assert!(api.wait_until(WAIT, has_final("OK")));
    assert_eq!(w.stop(), ExitCode::SUCCESS);

    let body = finals(&api, "E1")[0].json();
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    let err: Value = serde_json::from_str(body["error"].as_str().unwrap()).unwrap();
    assert_eq!(err["error_type"], "EchoFailure");
    assert_eq!(err["error_message"], "width must be a multiple of 8");
    assert_eq!(
        err["error_traceback"],
        "EchoFailure: width must be a multiple of 8\n\nCaused by:\n    0: the inner cause"
    );
    assert_eq!(err["hostname"], POD_HOSTNAME);
    assert_eq!(err["worker_id"], POD_ID);
    assert_eq!(err["runpod_version"], "1.12.0");
    // Python json.dumps separators inside the string.
    assert!(body["error"]
        .as_str()
        .unwrap()
        .starts_with("{\"error_type\": \"EchoFailure\", \"error_message\": "));

    let panic: Value =
        serde_json::from_str(finals(&api, "P1")[0].json()["error"].as_str().unwrap()).unwrap();
    assert_eq!(panic["error_type"], "handler_panic");
    assert!(panic["error_message"]
        .as_str()
        .unwrap()
        .contains("asked to panic"));

    assert_eq!(
        finals(&api, "V1")[0].body,
        r#"{"error": ["bad width", "bad height"], "stopPod": true}"#
    );
    assert_eq!(finals(&api, "OK")[0].body, r#"{"output": 7}"#);
}

#[test]
fn result_posts_retry_5xx_twice_and_never_4xx() {
    let api = MockJobApi::start();
    api.push_done_statuses(&[500, 503]);
    api.push_job("R1", json!({"return": 1}));
    let w = Worker::start(&api, 1, echo());
    assert!(api.wait_until(WAIT, |r| r
        .iter()
        .filter(|x| x.kind() == "job-done")
        .count()
        >= 3));
    let posts = api.done_for("R1");
    assert_eq!(posts.len(), 3);
    assert!(posts.iter().all(|p| p.body == r#"{"output": 1}"#));
    // Fast timings: 200 ms then 300 ms between attempts (SDK: 2 s, 3 s).
    assert!(posts[1].at - posts[0].at >= Duration::from_millis(190));
    assert!(posts[2].at - posts[1].at >= Duration::from_millis(290));

    // Three 5xx: given up after 3 attempts, and the worker goes on with the next job.
    api.push_done_statuses(&[500, 500, 500]);
    api.push_job("R2", json!({"return": 2}));
    assert!(api.wait_until(WAIT, |r| r
        .iter()
        .filter(|x| x.uri.contains("/R2?"))
        .count()
        >= 3));
    // 4xx is final.
    api.push_done_statuses(&[400]);
    api.push_job("R3", json!({"return": 3}));
    api.push_job("R4", json!({"return": 4}));
    assert!(api.wait_until(WAIT, has_final("R4")));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(w.stop(), ExitCode::SUCCESS);
    assert_eq!(api.done_for("R2").len(), 3);
    assert_eq!(api.done_for("R3").len(), 1);
    assert_eq!(api.done_for("R4").len(), 1);
}

#[test]
fn take_answers_no_job_back_off_and_floor_delay() {
    let api = MockJobApi::start();
    for reply in [
        TakeReply::Status(204),
        TakeReply::Status(400),
        TakeReply::Status(500),
        TakeReply::Status(429),
        TakeReply::Raw {
            status: 200,
            content_type: "text/plain",
            body: r#"{"id": "T0", "input": {}}"#.into(),
        },
        TakeReply::Raw {
            status: 200,
            content_type: "application/json",
            body: String::new(),
        },
    ] {
        api.push_take(reply);
    }
    api.push_job("T1", json!({"return": "x"}));
    let w = Worker::start(&api, 1, echo());
    assert!(api.wait_until(WAIT, has_final("T1")));
    assert_eq!(w.stop(), ExitCode::SUCCESS);
    let takes = api.of_kind("job-take");
    // Replies 1..=3 answer at once: the next take waits at least the floor (20 ms).
    for i in 0..3 {
        assert!(
            takes[i + 1].at - takes[i].at >= Duration::from_millis(18),
            "take {i}"
        );
    }
    // After 429 the worker backs off (300 ms in fast timings, 5 s in the SDK).
    assert!(takes[4].at - takes[3].at >= Duration::from_millis(290));
    // A text/plain job and an empty body are "no job".
    assert!(api.done_for("T0").is_empty());
    assert_eq!(finals(&api, "T1")[0].body, r#"{"output": "x"}"#);
}

#[test]
fn malformed_jobs_are_dropped_without_crashing() {
    let api = MockJobApi::start();
    let raw = |body: &str| TakeReply::Raw {
        status: 200,
        content_type: "application/json",
        body: body.into(),
    };
    api.push_take(raw(r#"{"input": {"return": 1}}"#));
    api.push_take(raw(r#"{"id": "NOINPUT"}"#));
    api.push_take(raw("this is not json"));
    api.push_take(raw(r#"[1, 2]"#));
    api.push_take(raw(r#"null"#));
    api.push_job("GOOD", json!({"return": "fine"}));
    let w = Worker::start(&api, 1, echo());
    assert!(api.wait_until(WAIT, has_final("GOOD")));
    assert_eq!(w.stop(), ExitCode::SUCCESS);
    assert!(api.done_for("NOINPUT").is_empty());
    assert_eq!(api.of_kind("job-done").len(), 1);
    assert_eq!(finals(&api, "GOOD")[0].body, r#"{"output": "fine"}"#);
}

#[test]
fn batch_take_respects_the_concurrency_bound() {
    let api = MockJobApi::start();
    let job = |id: &str| json!({"id": id, "input": {"sleep_ms": 500, "return": id}});
    api.push_take(TakeReply::Batch(vec![job("B1"), job("B2")]));
    api.push_take(TakeReply::Job(job("B3")));
    let handler = echo();
    let w = Worker::start(&api, 3, handler.clone());
    assert!(api.wait_until(WAIT, |r| ["B1", "B2", "B3"].iter().all(|j| {
        r.iter()
            .any(|x| x.kind() == "job-done" && x.uri.contains(&format!("/{j}?")))
    })));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(w.stop(), ExitCode::SUCCESS);
    assert_eq!(handler.max_active.load(Ordering::SeqCst), 3);

    let reqs = api.requests();
    let takes: Vec<&Recorded> = reqs
        .iter()
        .filter(|r| r.kind().starts_with("job-take"))
        .collect();
    assert_eq!(takes[0].uri, take_uri(Some(3), false));
    assert_eq!(
        takes[1].uri,
        take_uri(None, true),
        "one slot left → plain job-take with job_in_progress=1"
    );
    // With three jobs held nothing is taken until one finishes.
    let first_done = api.of_kind("job-done")[0].at;
    assert!(!takes
        .iter()
        .any(|t| t.at > takes[1].at && t.at < first_done));
    for id in ["B1", "B2", "B3"] {
        assert_eq!(
            finals(&api, id)[0].body,
            format!("{{\"output\": \"{id}\"}}")
        );
    }
    // Later takes ask for as many jobs as there are free slots, never more.
    for t in &takes[2..] {
        let ok = [
            take_uri(Some(3), false),
            take_uri(Some(2), true),
            take_uri(None, true),
        ];
        assert!(ok.contains(&t.uri), "{}", t.uri);
    }
}

#[test]
fn job_stop_cancels_the_job_and_posts_nothing() {
    let api = MockJobApi::start();
    api.push_job("S1", json!({"sleep_ms": 20_000}));
    let handler = echo();
    let w = Worker::start(&api, 1, handler.clone());
    assert!(api.wait_until(WAIT, |r| r.iter().any(|x| x.uri.contains("job_id=S1"))));
    let stop_sent = Instant::now();
    api.stop_job("S1");
    // The slot frees up: the worker takes again with job_in_progress=0.
    assert!(api.wait_until(WAIT, |r| r
        .iter()
        .filter(|x| x.uri == take_uri(None, false))
        .count()
        >= 2));
    assert!(stop_sent.elapsed() < Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(w.stop(), ExitCode::SUCCESS);
    assert!(
        api.done_for("S1").is_empty(),
        "a stopped job must not get a result"
    );
    assert_eq!(handler.cancelled.load(Ordering::SeqCst), 1);
    let last_ping = api.of_kind("ping").pop().unwrap();
    assert!(
        !last_ping.uri.contains("S1"),
        "stopped job still in heartbeat"
    );
}

#[test]
fn progress_updates_precede_the_result() {
    let api = MockJobApi::start();
    api.push_job(
        "G1",
        json!({"progress": [{"step": 1}, {"step": 2}], "return": "done"}),
    );
    let w = Worker::start(&api, 1, echo());
    assert!(api.wait_until(WAIT, has_final("G1")));
    assert_eq!(w.stop(), ExitCode::SUCCESS);
    let posts = api.done_for("G1");
    let last = posts.last().unwrap();
    assert_eq!(last.body, r#"{"output": "done"}"#);
    let progress: Vec<&Recorded> = posts
        .iter()
        .filter(|p| p.body.contains("IN_PROGRESS"))
        .collect();
    assert!(!progress.is_empty());
    for p in &progress {
        assert_eq!(p.uri, done_uri("G1", false));
        assert_eq!(
            p.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert!(p.at < last.at);
    }
    assert_eq!(
        progress.last().unwrap().body,
        r#"{"status": "IN_PROGRESS", "output": {"step": 2}}"#
    );
}

#[test]
fn streaming_posts_chunks_then_a_stream_result() {
    for aggregate in [false, true] {
        let api = MockJobApi::start();
        api.push_job("C1", json!({"chunks": [1, {"b": "two"}, "three"]}));
        let handler = Arc::new(EchoHandler::new(HandlerConfig {
            streaming: true,
            return_aggregate_stream: aggregate,
            refresh_worker: false,
        }));
        let w = Worker::start(&api, 1, handler);
        assert!(api.wait_until(WAIT, has_final("C1")));
        assert_eq!(w.stop(), ExitCode::SUCCESS);
        let chunks = api.of_kind("job-stream");
        let bodies: Vec<&str> = chunks.iter().map(|c| c.body.as_str()).collect();
        assert_eq!(
            bodies,
            [
                r#"{"output": 1}"#,
                r#"{"output": {"b": "two"}}"#,
                r#"{"output": "three"}"#
            ]
        );
        for c in &chunks {
            assert_eq!(
                c.uri,
                format!("/v2/ep/job-stream/{POD_ID}/C1{GPU_QUERY}&isStream=false")
            );
            assert_eq!(c.header("x-request-id"), Some("C1"));
        }
        let fin = &finals(&api, "C1")[0];
        assert_eq!(fin.uri, done_uri("C1", true));
        assert!(chunks.iter().all(|c| c.at < fin.at));
        let expected = if aggregate {
            r#"{"output": [1, {"b": "two"}, "three"]}"#
        } else {
            r#"{"output": []}"#
        };
        assert_eq!(fin.body, expected);
    }
}

#[test]
fn heartbeat_keeps_its_cadence_while_a_handler_blocks_the_runtime() {
    let api = MockJobApi::start();
    api.push_job("H1", json!({"block_ms": 3000, "return": "ok"}));
    // Everything but the heartbeat on ONE runtime thread, which the handler blocks.
    let w = Worker::spawn(api.args(1), echo(), Timings::fast(), true);
    assert!(api.wait_until(WAIT, has_final("H1")));
    assert_eq!(w.stop(), ExitCode::SUCCESS);
    let pings: Vec<Instant> = api
        .of_kind("ping")
        .iter()
        .filter(|p| p.uri.contains("job_id=H1"))
        .map(|p| p.at)
        .collect();
    // 3 s of blocking at a 100 ms period: ~30 pings; allow for a loaded CI machine.
    assert!(
        pings.len() >= 20,
        "only {} pings during a 3 s block",
        pings.len()
    );
    let max_gap = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        max_gap < Duration::from_millis(600),
        "heartbeat stalled for {max_gap:?}"
    );
}

#[test]
fn refresh_worker_option_stops_after_one_job() {
    let api = MockJobApi::start();
    api.push_job("F1", json!({"return": {"x": 1}}));
    api.push_job("F2", json!({"return": {"x": 2}}));
    let mut args = api.args(1);
    args.refresh_worker = true;
    let w = Worker::spawn(args, echo(), Timings::fast(), false);
    let exited = Instant::now();
    let code = w.thread.join().unwrap().unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(exited.elapsed() < WAIT);
    assert_eq!(
        finals(&api, "F1")[0].body,
        r#"{"output": {"x": 1}, "stopPod": true}"#
    );
    assert!(
        api.done_for("F2").is_empty(),
        "took a second job after refresh_worker"
    );
}

#[test]
fn missing_job_done_url_is_a_clear_startup_error() {
    let api = MockJobApi::start();
    let mut args = api.args(1);
    args.webhook_post_output = None;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let start_error = |args: &RuntimeArgs| {
        let run = runpod::run_with_timings(
            args,
            Timings::fast(),
            async { Ok(echo()) },
            CancellationToken::new(),
        );
        format!("{:#}", rt.block_on(run).unwrap_err())
    };
    let err = start_error(&args);
    assert!(err.contains("RUNPOD_WEBHOOK_POST_OUTPUT"), "{err}");
    assert!(api.of_kind("job-take").is_empty());
    let mut args = api.args(1);
    args.runpod_ai_api_key = Some("bad\nkey".into());
    let text = start_error(&args);
    assert!(
        text.contains("RUNPOD_AI_API_KEY") && !text.contains("bad\nkey"),
        "{text}"
    );
}

#[test]
fn a_redelivered_running_job_is_not_run_twice() {
    let api = MockJobApi::start();
    let job = json!({"id": "DUP", "input": {"sleep_ms": 300, "return": "once"}});
    api.push_take(TakeReply::Batch(vec![job.clone(), job]));
    let handler = echo();
    let w = Worker::start(&api, 2, handler.clone());
    assert!(api.wait_until(WAIT, has_final("DUP")));
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(w.stop(), ExitCode::SUCCESS);
    assert_eq!(finals(&api, "DUP").len(), 1);
    assert_eq!(handler.max_active.load(Ordering::SeqCst), 1);
}
