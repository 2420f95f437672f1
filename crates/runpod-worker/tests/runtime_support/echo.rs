//! A small handler whose behaviour is chosen by the job input; shared by the runtime tests
//! and `examples/echo_worker.rs` (and by the SDXL worker's end-to-end tests).
//!
//! Input keys (all optional, applied in this order):
//! `progress: [..]` report each value (20 ms apart); `chunks: [..]` stream each value;
//! `sleep_ms: n` wait n ms (stops early on cancellation → `Cancelled` error);
//! `block_ms: n` block the calling runtime thread for n ms; `panic: true`; `fail: "msg"`
//! → `EchoFailure` error with a cause; `image: true` → a tiny PNG as base64;
//! `return: v` → return `v` as is. Otherwise `{"echo": input}`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runpod_worker::{Handler, HandlerConfig, HandlerOutput, Job, JobContext, JobError};
use serde_json::{json, Value};

#[derive(Default)]
pub struct EchoHandler {
    pub config: HandlerConfig,
    /// Jobs inside `handle` right now, and the most ever seen at once.
    pub active: Arc<AtomicUsize>,
    pub max_active: Arc<AtomicUsize>,
    /// Jobs that noticed their cancellation.
    pub cancelled: Arc<AtomicUsize>,
}

impl EchoHandler {
    pub fn new(config: HandlerConfig) -> Self {
        EchoHandler {
            config,
            ..Default::default()
        }
    }
}

struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A 2×2 red RGB PNG, base64 (written out so the runtime needs no image crate).
pub const TINY_PNG_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAEElEQVR4nGM4wcUFRAwQCgAbFgNxOExuRAAAAABJRU5ErkJggg==";

#[runpod_worker::async_trait]
impl Handler for EchoHandler {
    async fn handle(&self, job: Job, ctx: JobContext) -> Result<HandlerOutput, JobError> {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_active.fetch_max(now, Ordering::SeqCst);
        let _guard = ActiveGuard(self.active.clone());
        let input = &job.input;
        if let Some(items) = input.get("progress").and_then(Value::as_array) {
            for item in items {
                ctx.progress(item.clone());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if let Some(items) = input.get("chunks").and_then(Value::as_array) {
            let sender = ctx
                .stream()
                .ok_or_else(|| JobError::invalid_input("`chunks` needs a streaming handler"))?;
            for item in items {
                sender.send(item.clone());
            }
        }
        if let Some(ms) = input.get("sleep_ms").and_then(Value::as_u64) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                _ = ctx.cancellation_token().cancelled() => {
                    self.cancelled.fetch_add(1, Ordering::SeqCst);
                    return Err(JobError::cancelled());
                }
            }
        }
        if let Some(ms) = input.get("block_ms").and_then(Value::as_u64) {
            // Deliberately blocks the async runtime thread, like a CPU-bound handler.
            std::thread::sleep(Duration::from_millis(ms));
        }
        if input.get("panic").and_then(Value::as_bool) == Some(true) {
            panic!("echo handler asked to panic");
        }
        if let Some(msg) = input.get("fail").and_then(Value::as_str) {
            return Err(JobError::new("EchoFailure", msg)
                .with_source(std::io::Error::other("the inner cause")));
        }
        if input.get("image").and_then(Value::as_bool) == Some(true) {
            return Ok(json!({"images": [{"image": TINY_PNG_BASE64, "seed": 1}]}).into());
        }
        if let Some(v) = input.get("return") {
            return Ok(v.clone().into());
        }
        Ok(json!({"echo": input}).into())
    }

    fn config(&self) -> HandlerConfig {
        self.config
    }
}
