//! The runtime's flags and environment ([`RuntimeArgs`]), the mode they select ([`Mode`]),
//! and the runtime's delays ([`Timings`]).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::handler::HandlerConfig;
use crate::result::WorkerIdentity;

/// Flags and environment of the RunPod runtime. The `RUNPOD_*` variables are set by the
/// platform; the others are ours or the SDK's local-testing flags (spelled like the SDK's).
#[derive(Clone, Args)]
pub struct RuntimeArgs {
    /// How many jobs this worker holds at once (job-take-batch is used when more than one
    /// is wanted).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Run this job JSON (`{"input": {...}}`) once and exit (local test mode), even when
    /// `RUNPOD_WEBHOOK_GET_JOB` is set. Without it, local mode reads `test_input.json`.
    #[arg(long = "test_input", alias = "test-input", env = "RUNPOD_TEST_INPUT")]
    pub test_input: Option<String>,

    /// Local test mode: also write returned images (base64 or data URLs) into this folder.
    #[arg(long = "output-dir", alias = "output_dir", env = "RUNPOD_OUTPUT_DIR")]
    pub output_dir: Option<PathBuf>,

    /// Serve a local copy of RunPod's endpoint API (`/v2/{endpoint_id}/run`, …) instead of
    /// taking jobs from RunPod.
    #[arg(
        long = "rp_serve_api",
        alias = "rp-serve-api",
        env = "RUNPOD_SERVE_API"
    )]
    pub rp_serve_api: bool,

    /// Address of the local endpoint API.
    #[arg(
        long = "rp_api_host",
        alias = "rp-api-host",
        env = "RUNPOD_API_HOST",
        default_value = "127.0.0.1"
    )]
    pub rp_api_host: IpAddr,

    /// Port of the local endpoint API (0 picks a free one and logs it).
    #[arg(
        long = "rp_api_port",
        alias = "rp-api-port",
        env = "RUNPOD_API_PORT",
        default_value_t = 8000
    )]
    pub rp_api_port: u16,

    /// When set, the local endpoint API answers 401 to requests without this key
    /// (`Authorization: <key>` or `Authorization: Bearer <key>`).
    #[arg(
        long = "rp_api_key",
        alias = "rp-api-key",
        env = "RUNPOD_LOCAL_API_KEY",
        hide_env_values = true
    )]
    pub rp_api_key: Option<String>,

    /// Every result asks RunPod to refresh the worker (`stopPod`), and the worker stops after
    /// its first job (the SDK's `refresh_worker` start option).
    #[arg(
        long = "refresh_worker",
        alias = "refresh-worker",
        env = "RUNPOD_REFRESH_WORKER"
    )]
    pub refresh_worker: bool,

    /// Streaming handlers: the final result carries all chunks instead of `[]`.
    #[arg(
        long = "return_aggregate_stream",
        alias = "return-aggregate-stream",
        env = "RUNPOD_RETURN_AGGREGATE_STREAM"
    )]
    pub return_aggregate_stream: bool,

    /// job-take URL template (set by RunPod; `$ID` = worker id). Selects serverless mode.
    #[arg(long, env = "RUNPOD_WEBHOOK_GET_JOB")]
    pub webhook_get_job: Option<String>,

    /// job-done URL template (`$RUNPOD_POD_ID`, `$ID` = job id).
    #[arg(long, env = "RUNPOD_WEBHOOK_POST_OUTPUT")]
    pub webhook_post_output: Option<String>,

    /// job-stream URL template. `RUNPOD_WEBHOOK_JOB_STREAM` (the SDK simulator's spelling)
    /// is read as a fallback.
    #[arg(long, env = "RUNPOD_WEBHOOK_POST_STREAM")]
    pub webhook_post_stream: Option<String>,

    /// Heartbeat URL template (`$RUNPOD_POD_ID`).
    #[arg(long, env = "RUNPOD_WEBHOOK_PING")]
    pub webhook_ping: Option<String>,

    /// Heartbeat period in milliseconds (whole seconds are used, as the SDK does).
    #[arg(long, env = "RUNPOD_PING_INTERVAL", default_value_t = 10_000)]
    pub ping_interval_ms: u64,

    /// Key for the job API, sent verbatim as `Authorization`.
    #[arg(long, env = "RUNPOD_AI_API_KEY", hide_env_values = true)]
    pub runpod_ai_api_key: Option<String>,

    /// This worker's id (substituted into the URLs; random when unset).
    #[arg(long, env = "RUNPOD_POD_ID")]
    pub pod_id: Option<String>,

    /// Host name reported in error JSON.
    #[arg(long, env = "RUNPOD_POD_HOSTNAME")]
    pub pod_hostname: Option<String>,
}

impl std::fmt::Debug for RuntimeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("RuntimeArgs")
            .field("concurrency", &self.concurrency)
            .field("test_input", &self.test_input)
            .field("output_dir", &self.output_dir)
            .field("rp_serve_api", &self.rp_serve_api)
            .field("rp_api_host", &self.rp_api_host)
            .field("rp_api_port", &self.rp_api_port)
            .field("rp_api_key", &redact(&self.rp_api_key))
            .field("refresh_worker", &self.refresh_worker)
            .field("return_aggregate_stream", &self.return_aggregate_stream)
            .field("webhook_get_job", &self.webhook_get_job)
            .field("webhook_post_output", &self.webhook_post_output)
            .field("webhook_post_stream", &self.webhook_post_stream)
            .field("webhook_ping", &self.webhook_ping)
            .field("ping_interval_ms", &self.ping_interval_ms)
            .field("runpod_ai_api_key", &redact(&self.runpod_ai_api_key))
            .field("pod_id", &self.pod_id)
            .field("pod_hostname", &self.pod_hostname)
            .finish()
    }
}

impl Default for RuntimeArgs {
    /// Local test mode with SDK defaults and nothing from the environment.
    fn default() -> Self {
        RuntimeArgs {
            concurrency: 1,
            test_input: None,
            output_dir: None,
            rp_serve_api: false,
            rp_api_host: IpAddr::from([127, 0, 0, 1]),
            rp_api_port: 8000,
            rp_api_key: None,
            refresh_worker: false,
            return_aggregate_stream: false,
            webhook_get_job: None,
            webhook_post_output: None,
            webhook_post_stream: None,
            webhook_ping: None,
            ping_interval_ms: 10_000,
            runpod_ai_api_key: None,
            pod_id: None,
            pod_hostname: None,
        }
    }
}

impl RuntimeArgs {
    /// Which mode these settings select (docs/runpod-protocol.md, *Modes*).
    pub fn mode(&self) -> Mode {
        if self.rp_serve_api {
            Mode::EndpointApi
        } else if self.test_input.is_some() || self.webhook_get_job.is_none() {
            Mode::LocalTest
        } else {
            Mode::Serverless
        }
    }

    /// The handler's own settings with the start options given on the command line added:
    /// the flags can switch `refresh_worker` and `return_aggregate_stream` on, never off.
    pub(crate) fn handler_config(&self, own: HandlerConfig) -> HandlerConfig {
        HandlerConfig {
            refresh_worker: own.refresh_worker || self.refresh_worker,
            return_aggregate_stream: own.return_aggregate_stream || self.return_aggregate_stream,
            ..own
        }
    }

    pub(crate) fn identity(&self) -> WorkerIdentity {
        WorkerIdentity {
            hostname: nonempty(&self.pod_hostname).unwrap_or("unknown").to_owned(),
            worker_id: nonempty(&self.pod_id).unwrap_or("unknown").to_owned(),
        }
    }

    /// The stream template, with the SDK simulator's variable name as fallback.
    pub(crate) fn stream_template(&self) -> Option<String> {
        nonempty(&self.webhook_post_stream)
            .map(str::to_owned)
            .or_else(|| std::env::var("RUNPOD_WEBHOOK_JOB_STREAM").ok())
            .filter(|s| !s.is_empty())
    }
}

pub(crate) fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// The three ways the worker can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Take jobs from RunPod (`RUNPOD_WEBHOOK_GET_JOB` set).
    Serverless,
    /// Run `--test_input` / `test_input.json` once and exit.
    LocalTest,
    /// Serve the local endpoint API (`--rp_serve_api`).
    EndpointApi,
}

/// Delays and timeouts of the runtime. `Default` is the SDK's values; tests shrink them.
#[derive(Debug, Clone)]
pub struct Timings {
    /// Limit on one job-take long-poll (the SDK's `jobs_fetcher_timeout`).
    pub take_timeout: Duration,
    /// Minimum time between two job-take calls when the server answers at once (204,
    /// errors), so a non-blocking server is not hammered.
    pub take_floor: Duration,
    /// Back-off after a 429 from job-take or job-stop.
    pub too_many_requests_backoff: Duration,
    /// Limit on one job-stop long-poll.
    pub stop_timeout: Duration,
    /// Minimum time between two job-stop polls, and the pause after a failed one.
    pub stop_floor: Duration,
    /// Waits between result-post attempts (attempts = len + 1).
    pub result_retry_delays: Vec<Duration>,
    /// Overall limit of one job API request.
    pub http_timeout: Duration,
    /// Heartbeat period; `None` = from `RUNPOD_PING_INTERVAL`.
    pub ping_interval: Option<Duration>,
    /// Endpoint API: how long `/run` results are kept after completion.
    pub retention_run: Duration,
    /// Endpoint API: how long `/runsync` results are kept after completion.
    pub retention_sync: Duration,
    /// Endpoint API: how often expired jobs are removed.
    pub janitor_interval: Duration,
    /// Endpoint API: `/runsync` wait when `?wait=` is not given.
    pub runsync_default_wait: Duration,
    /// Endpoint API: pause between webhook attempts (3 attempts).
    pub webhook_retry_delay: Duration,
    /// Endpoint API: limit of one webhook request.
    pub webhook_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            take_timeout: Duration::from_secs(90),
            take_floor: Duration::from_millis(500),
            too_many_requests_backoff: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(90),
            stop_floor: Duration::from_secs(1),
            result_retry_delays: vec![Duration::from_secs(2), Duration::from_secs(3)],
            http_timeout: Duration::from_secs(600),
            ping_interval: None,
            retention_run: Duration::from_secs(30 * 60),
            retention_sync: Duration::from_secs(60),
            janitor_interval: Duration::from_secs(10),
            runsync_default_wait: Duration::from_secs(90),
            webhook_retry_delay: Duration::from_secs(10),
            webhook_timeout: Duration::from_secs(10),
        }
    }
}

impl Timings {
    /// Every delay scaled down so that protocol tests run in well under a second per step.
    pub fn fast() -> Self {
        Timings {
            take_timeout: Duration::from_secs(5),
            take_floor: Duration::from_millis(20),
            too_many_requests_backoff: Duration::from_millis(300),
            stop_timeout: Duration::from_secs(5),
            stop_floor: Duration::from_millis(20),
            result_retry_delays: vec![Duration::from_millis(200), Duration::from_millis(300)],
            http_timeout: Duration::from_secs(30),
            ping_interval: Some(Duration::from_millis(100)),
            retention_run: Duration::from_secs(30 * 60),
            retention_sync: Duration::from_secs(60),
            janitor_interval: Duration::from_millis(200),
            runsync_default_wait: Duration::from_secs(90),
            webhook_retry_delay: Duration::from_millis(100),
            webhook_timeout: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        rt: RuntimeArgs,
    }

    #[test]
    fn mode_selection_follows_the_sdk() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().rt;
        let mut a = parse(&["w"]);
        a.webhook_get_job = None;
        assert_eq!(a.mode(), Mode::LocalTest);
        a.webhook_get_job = Some("http://x/job-take/$ID?".into());
        assert_eq!(a.mode(), Mode::Serverless);
        a.test_input = Some("{}".into());
        assert_eq!(a.mode(), Mode::LocalTest);
        a.rp_serve_api = true;
        assert_eq!(a.mode(), Mode::EndpointApi);
        let b = parse(&["w", "--test-input", "{\"input\":1}", "--rp_api_port", "9"]);
        assert_eq!(b.test_input.as_deref(), Some("{\"input\":1}"));
        assert_eq!(b.rp_api_port, 9);
        assert!(Cli::try_parse_from(["w", "--concurrency", "0"]).is_err());
    }

    #[test]
    fn debug_redacts_keys() {
        let a = RuntimeArgs {
            runpod_ai_api_key: Some("rpa_SECRET".into()),
            rp_api_key: Some("local-SECRET".into()),
            ..RuntimeArgs::default()
        };
        let text = format!("{a:?}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("<redacted>"));
    }
}
