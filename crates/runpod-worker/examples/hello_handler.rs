//! The smallest worker: greets `input.name`.
//!
//! ```text
//! cargo run -p runpod-worker --example hello_handler -- --test_input '{"input": {"name": "x"}}'
//! cargo run -p runpod-worker --example hello_handler -- --rp_serve_api --rp_api_port 8000
//! ```

use std::process::ExitCode;

use runpod_worker::{Job, JobError};
use serde_json::{json, Value};

fn main() -> ExitCode {
    runpod_worker::start(|job: Job| -> Result<Value, JobError> {
        let name = job.input["name"]
            .as_str()
            .ok_or_else(|| JobError::invalid_input("`name` must be a string"))?;
        Ok(json!({ "greeting": format!("Hello, {name}!") }))
    })
}
