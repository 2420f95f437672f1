//! Command-line and environment configuration. Every flag can also be set through an
//! environment variable (RunPod passes settings as env vars). Each module owns the group of
//! flags it reads; this file only assembles them.

use clap::{Parser, Subcommand};

/// `sdxl-worker`: Stable Diffusion XL for RunPod serverless, with Civitai models.
#[derive(Debug, Clone, Parser)]
#[command(name = "sdxl-worker", version, about, long_about = None)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub log: crate::telemetry::LogArgs,
    #[command(flatten)]
    pub runtime: crate::runpod::RuntimeArgs,
    #[command(flatten)]
    pub fetch: crate::fetch::FetchArgs,
    #[command(flatten)]
    pub engine: crate::pipeline::EngineArgs,
    #[command(flatten)]
    pub storage: crate::storage::StorageArgs,
    #[command(flatten)]
    pub images: crate::image::input::ImageInputArgs,
    #[command(flatten)]
    pub dialects: crate::handler::DialectArgs,
}

/// Subcommands besides the default (serve jobs).
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the worker (the default when no subcommand is given).
    Serve,
    /// Measure load time, per-step and VAE time and peak memory for a checkpoint (or
    /// synthetic full-size weights) and print them as JSON.
    Bench(crate::pipeline::bench::BenchArgs),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_flags_work_before_and_after_the_bench_subcommand() {
        for argv in [
            [
                "sdxl-worker",
                "--device",
                "cpu",
                "bench",
                "--synthetic",
                "mini",
            ],
            [
                "sdxl-worker",
                "bench",
                "--synthetic",
                "mini",
                "--device",
                "cpu",
            ],
        ] {
            let c = Config::try_parse_from(argv).unwrap();
            assert_eq!(c.engine.device, "cpu", "{argv:?}");
            assert!(matches!(c.command, Some(Command::Bench(_))));
        }
    }
}
