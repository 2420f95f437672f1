//! The boundary between the runtime and the code that does the work: [`Job`], [`Handler`],
//! [`JobContext`], [`HandlerOutput`] and [`JobError`]. Larger handlers (the SDXL worker's)
//! implement [`Handler`]; closures become handlers through `func.rs`.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One job as delivered by RunPod (job-take), by `test_input.json` or by the local endpoint API.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Opaque job id (`<uuid>-u1`, `sync-<uuid>-e1`, `local_test`, …).
    pub id: String,
    /// The client's `input`, untouched.
    pub input: Value,
    /// Client webhook, when the platform forwards it.
    pub webhook: Option<String>,
    /// Every other key of the job object (`batchId`, `s3Config`, `policy`, bookkeeping fields).
    /// Kept so a handler can use what the platform forwards without the runtime knowing it.
    pub extra: Map<String, Value>,
}

/// Why a job object from the platform cannot be run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MalformedJob {
    #[error("job is not a JSON object")]
    NotAnObject,
    #[error("job has no string `id`")]
    MissingId,
    #[error("job `{0}` has no `input`")]
    MissingInput(String),
}

impl Job {
    /// A job with the given id and input and nothing else.
    pub fn new(id: impl Into<String>, input: Value) -> Self {
        Job {
            id: id.into(),
            input,
            webhook: None,
            extra: Map::new(),
        }
    }

    /// Parses a job object as the platform sends it. The SDK requires both `id` and `input`
    /// keys (docs/runpod-protocol.md, *Job take*); anything else is kept in `extra`.
    pub fn from_value(value: Value) -> Result<Job, MalformedJob> {
        let Value::Object(mut map) = value else {
            return Err(MalformedJob::NotAnObject);
        };
        let id = match map.remove("id") {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => return Err(MalformedJob::MissingId),
        };
        let input = match map.remove("input") {
            Some(v) => v,
            None => return Err(MalformedJob::MissingInput(id)),
        };
        let webhook = match map.remove("webhook") {
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                map.insert("webhook".into(), other);
                None
            }
            None => None,
        };
        Ok(Job {
            id,
            input,
            webhook,
            extra: map,
        })
    }
}

/// Per-handler settings, the equivalents of the SDK's `start({...})` config keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandlerConfig {
    /// The handler streams its results through [`JobContext::stream`] (a "generator handler"):
    /// chunks go to job-stream and the final job-done carries `isStream=true`.
    pub streaming: bool,
    /// With `streaming`: the final result's `output` is the list of all chunks instead of `[]`.
    pub return_aggregate_stream: bool,
    /// Every result gets `stopPod: true` and the worker stops after its first job.
    pub refresh_worker: bool,
}

/// What a handler returns on success. `value` is mapped to the result body exactly like the
/// SDK maps a Python return value (docs/runpod-protocol.md, *Output mapping*): an object's
/// `error` and `refresh_worker` keys are lifted out, `{}` becomes "no output".
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerOutput {
    pub value: Value,
    /// Ask the platform to refresh (restart) this worker after the job (`stopPod`).
    pub refresh_worker: bool,
}

impl HandlerOutput {
    pub fn new(value: Value) -> Self {
        HandlerOutput {
            value,
            refresh_worker: false,
        }
    }

    /// Marks the result with `stopPod: true`.
    pub fn with_refresh_worker(mut self) -> Self {
        self.refresh_worker = true;
        self
    }
}

impl From<Value> for HandlerOutput {
    fn from(value: Value) -> Self {
        HandlerOutput::new(value)
    }
}

/// `Ok(())` of a streaming handler: the chunks are the output.
impl From<()> for HandlerOutput {
    fn from((): ()) -> Self {
        HandlerOutput::new(Value::Null)
    }
}

/// A failed job. `error_type` is a stable machine-readable name (snake_case, e.g. `invalid_input`); the
/// message and the source chain end up in the error JSON (`error_message`,
/// `error_traceback`) the platform shows to the client.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    error_type: Cow<'static, str>,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl JobError {
    pub fn new(error_type: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        JobError {
            error_type: error_type.into(),
            message: message.into(),
            source: None,
        }
    }

    /// Wraps an error; its `Display` becomes the message and its chain the traceback.
    pub fn from_error<E>(error_type: impl Into<Cow<'static, str>>, err: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let message = err.to_string();
        let source = if err.source().is_some() {
            Some(Box::new(err) as Box<dyn std::error::Error + Send + Sync>)
        } else {
            None
        };
        JobError {
            error_type: error_type.into(),
            message,
            source,
        }
    }

    /// Wraps an `anyhow::Error`, keeping its whole context chain.
    pub fn from_anyhow(error_type: impl Into<Cow<'static, str>>, err: anyhow::Error) -> Self {
        let message = err.to_string();
        let has_chain = err.chain().nth(1).is_some();
        JobError {
            error_type: error_type.into(),
            message,
            source: has_chain.then(|| err.into()),
        }
    }

    /// Attaches a cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Bad job input; `message` should name the field and the allowed values.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        JobError::new("invalid_input", message)
    }

    /// The handler noticed [`JobContext::is_cancelled`] and gave up.
    pub fn cancelled() -> Self {
        JobError::new("cancelled", "job was cancelled")
    }

    pub fn error_type(&self) -> &str {
        &self.error_type
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The Rust counterpart of a Python traceback: the message followed by each distinct
    /// cause in the source chain.
    pub fn traceback(&self) -> String {
        let mut out = format!("{}: {}", self.error_type, self.message);
        let mut last = self.message.clone();
        let mut cause = std::error::Error::source(self);
        let mut n = 0;
        while let Some(err) = cause {
            let text = err.to_string();
            if text != last {
                if n == 0 {
                    out.push_str("\n\nCaused by:");
                }
                out.push_str(&format!("\n    {n}: {text}"));
                n += 1;
                last = text;
            }
            cause = err.source();
        }
        out
    }
}

/// Sends stream chunks of a streaming handler. Cheap to clone; usable from any thread
/// (e.g. the engine thread). Chunks are delivered in order.
#[derive(Debug, Clone)]
pub struct StreamSender {
    tx: mpsc::UnboundedSender<Value>,
}

impl StreamSender {
    /// Queues a chunk; returns false when the job is already over (the chunk is dropped).
    pub fn send(&self, chunk: Value) -> bool {
        self.tx.send(chunk).is_ok()
    }
}

/// What a handler may do besides returning: report progress, stream chunks, notice
/// cancellation. Cheap to clone and `Send`, so it can travel to a blocking thread.
#[derive(Debug, Clone)]
pub struct JobContext {
    job_id: Arc<str>,
    cancel: CancellationToken,
    progress: Option<mpsc::UnboundedSender<Value>>,
    stream: Option<StreamSender>,
}

/// The runtime's ends of a [`JobContext`]'s channels.
pub(crate) struct ContextReceivers {
    pub progress: mpsc::UnboundedReceiver<Value>,
    pub stream: Option<mpsc::UnboundedReceiver<Value>>,
}

impl JobContext {
    /// A context whose progress and stream channels lead nowhere; for calling a handler
    /// directly (unit tests, benchmarks).
    pub fn detached(job_id: &str) -> Self {
        JobContext {
            job_id: job_id.into(),
            cancel: CancellationToken::new(),
            progress: None,
            stream: None,
        }
    }

    pub(crate) fn with_channels(
        job_id: &str,
        cancel: CancellationToken,
        streaming: bool,
    ) -> (Self, ContextReceivers) {
        let (ptx, prx) = mpsc::unbounded_channel();
        let (stream, srx) = if streaming {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(StreamSender { tx }), Some(rx))
        } else {
            (None, None)
        };
        (
            JobContext {
                job_id: job_id.into(),
                cancel,
                progress: Some(ptx),
                stream,
            },
            ContextReceivers {
                progress: prx,
                stream: srx,
            },
        )
    }

    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// Reports progress (any JSON). In serverless mode it is posted to job-done as
    /// `{"status": "IN_PROGRESS", "output": progress}`; only the latest pending value is sent
    /// when updates come faster than they can be posted. Never blocks.
    pub fn progress(&self, progress: Value) {
        if let Some(tx) = &self.progress {
            let _ = tx.send(progress);
        }
    }

    /// The chunk sender; `Some` only for handlers whose [`HandlerConfig::streaming`] is set.
    pub fn stream(&self) -> Option<&StreamSender> {
        self.stream.as_ref()
    }

    /// Streams one chunk (the `yield` of a Python generator handler). Returns false when the
    /// chunk went nowhere: the job is over, or the handler is not a streaming one (see
    /// [`crate::stream_fn`] and [`HandlerConfig::streaming`]).
    pub fn send(&self, chunk: Value) -> bool {
        match &self.stream {
            Some(sender) => sender.send(chunk),
            None => {
                tracing::warn!(job_id = %self.job_id, "stream chunk dropped: the handler is not a streaming handler");
                false
            }
        }
    }

    /// Cancelled when the platform stops the job (job-stop, `/cancel`, execution timeout)
    /// or the worker gives up on it. Work should stop at the next convenient point.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.cancel
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// The work a worker does. Object safe (`Arc<dyn Handler>` works).
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one job. Return `Err` for failures the client should see as an error JSON string;
    /// return an object with an `error` key for a plain error value (e.g. a list of
    /// validation messages), as the SDK allows.
    async fn handle(&self, job: Job, ctx: JobContext) -> Result<HandlerOutput, JobError>;

    /// Streaming / refresh settings; the defaults suit a plain request→response handler.
    fn config(&self) -> HandlerConfig {
        HandlerConfig::default()
    }
}

/// An `Arc` of a handler is a handler, so `Arc<dyn Handler>` can be passed where a
/// [`Handler`] is expected (e.g. to [`crate::start`]).
#[async_trait::async_trait]
impl<H: Handler + ?Sized> Handler for Arc<H> {
    async fn handle(&self, job: Job, ctx: JobContext) -> Result<HandlerOutput, JobError> {
        (**self).handle(job, ctx).await
    }

    fn config(&self) -> HandlerConfig {
        (**self).config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn job_from_value_requires_id_and_input() {
        let job = Job::from_value(
            json!({"id": "J1", "input": {"a": 1}, "batchId": "b", "webhook": "http://x"}),
        )
        .unwrap();
        assert_eq!(job.id, "J1");
        assert_eq!(job.input, json!({"a": 1}));
        assert_eq!(job.webhook.as_deref(), Some("http://x"));
        assert_eq!(job.extra.get("batchId"), Some(&json!("b")));
        assert_eq!(
            Job::from_value(json!({"input": 1})),
            Err(MalformedJob::MissingId)
        );
        assert_eq!(
            Job::from_value(json!({"id": 5, "input": 1})),
            Err(MalformedJob::MissingId)
        );
        assert_eq!(
            Job::from_value(json!({"id": "J"})),
            Err(MalformedJob::MissingInput("J".into()))
        );
        assert_eq!(Job::from_value(json!([1])), Err(MalformedJob::NotAnObject));
        // `input: null` is present, so the SDK accepts it.
        assert!(Job::from_value(json!({"id": "J", "input": null})).is_ok());
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer failure")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn traceback_lists_the_source_chain() {
        let err = JobError::from_error("Io", Outer(std::io::Error::other("disk gone")));
        assert_eq!(err.error_type(), "Io");
        assert_eq!(err.message(), "outer failure");
        assert_eq!(
            err.traceback(),
            "Io: outer failure\n\nCaused by:\n    0: disk gone"
        );
        let err = JobError::from_anyhow(
            "Load",
            anyhow::anyhow!("root cause").context("loading model"),
        );
        assert_eq!(err.message(), "loading model");
        assert_eq!(
            err.traceback(),
            "Load: loading model\n\nCaused by:\n    0: root cause"
        );
        let plain = JobError::invalid_input("`steps` must be 1..=150");
        assert_eq!(plain.traceback(), "invalid_input: `steps` must be 1..=150");
    }
}
