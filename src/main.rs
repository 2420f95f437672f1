//! Thin entry point: parse the configuration, set up logging, hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let config = sdxl_worker::config::Config::parse();
    sdxl_worker::telemetry::init(&config.log);
    match sdxl_worker::run_blocking(config) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "worker failed to start");
            eprintln!("sdxl-worker: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
