//! RunPod worker runtime: job API client, worker loop, heartbeat, local test mode and the
//! local endpoint API. Generic over a [`Handler`]; knows nothing about images.

use clap::Args;

/// Flags of the RunPod runtime.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// How many jobs this worker holds at once.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 1)]
    pub concurrency: usize,
}
