//! The runtime's test support (a mock of RunPod's job API, the echo handler) lives with the
//! `runpod-worker` crate; the SDXL worker's end-to-end tests reuse it from there.
#![allow(dead_code)]

#[path = "../../crates/runpod-worker/tests/runtime_support/mod.rs"]
mod support;

pub use support::*;
