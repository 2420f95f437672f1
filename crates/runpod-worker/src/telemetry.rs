//! Logging setup. Logs always go to stderr so that local test mode can print exactly one
//! JSON document (the job result) on stdout.

use clap::Args;

/// Logging flags.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log filter in `tracing_subscriber::EnvFilter` syntax (e.g. `info`, `runpod_worker=debug`).
    #[arg(long = "log-level", env = "RUST_LOG", default_value = "info")]
    pub level: String,
    /// Emit logs as JSON lines instead of human-readable text.
    #[arg(long = "log-json", env = "LOG_JSON", default_value_t = false)]
    pub json: bool,
}

/// Installs the global subscriber. Safe to call more than once (later calls are ignored),
/// which keeps tests that build several workers in one process simple.
pub fn init(args: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if args.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
