//! A streaming ("generator") worker: sends one chunk per word of `input.text`, with a
//! progress update before each, the way a model streams tokens.
//!
//! ```text
//! cargo run -p runpod-worker --example stream_handler -- --test_input '{"input": {"text": "a b c"}}'
//! cargo run -p runpod-worker --example stream_handler -- --rp_serve_api --rp_api_port 8000
//! ```
//!
//! Against the local endpoint API, `POST /v2/local/run` returns a job id and
//! `GET /v2/local/stream/<id>` returns the chunks sent since the last call.

use std::process::ExitCode;
use std::time::Duration;

use runpod_worker::{stream_fn, Job, JobContext, JobError};
use serde_json::json;

fn main() -> ExitCode {
    runpod_worker::start(stream_fn(|job: Job, ctx: JobContext| async move {
        let text = job.input["text"]
            .as_str()
            .ok_or_else(|| JobError::invalid_input("`text` must be a string"))?;
        let words: Vec<&str> = text.split_whitespace().collect();
        for (i, word) in words.iter().enumerate() {
            if ctx.is_cancelled() {
                return Err(JobError::cancelled());
            }
            ctx.progress(json!({ "done": i, "total": words.len() }));
            ctx.send(json!({ "index": i, "word": word }));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }))
}
