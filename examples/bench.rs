//! The `bench` subcommand as a stand-alone example binary (same code as `sdxl-worker bench`):
//!
//! ```text
//! cargo run --example bench -- --checkpoint model.safetensors --width 1024 --height 1024 --steps 20
//! ```

use clap::Parser;
use sdxl_worker::pipeline::{bench, EngineArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    bench: bench::BenchArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    bench::run(&cli.bench, &cli.engine)
}
