//! `sdxl-worker bench`: load a checkpoint (or synthetic full-size weights), generate a few
//! images through the engine thread and print one JSON object with the timings and memory.

use super::engine::Engine;
use super::EngineArgs;
use super::{GenerateRequest, PipelineConfig, WeightsSource};
use crate::sampling::names::parse_sampler_label;
use crate::sampling::{SamplerKind, SamplingError, SigmaSchedule};
use crate::weights::layout::SdxlDims;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Flags of `sdxl-worker bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Checkpoint to measure (single-file SDXL `.safetensors`).
    #[arg(long, env = "BENCH_CHECKPOINT", required_unless_present = "synthetic")]
    pub checkpoint: Option<PathBuf>,
    /// Use random weights in a built-in layout instead of a file: `sdxl` (full-size SDXL
    /// base 1.0 shapes; ~10 GB in f32) or `mini` (the test fixture's shapes).
    #[arg(
        long,
        env = "BENCH_SYNTHETIC",
        value_enum,
        conflicts_with = "checkpoint"
    )]
    pub synthetic: Option<SyntheticLayout>,
    /// A separate VAE file (LDM or diffusers layout) replacing the checkpoint's.
    #[arg(long, env = "BENCH_VAE")]
    pub vae: Option<PathBuf>,
    #[arg(long, env = "BENCH_WIDTH", default_value_t = 1024)]
    pub width: u32,
    #[arg(long, env = "BENCH_HEIGHT", default_value_t = 1024)]
    pub height: u32,
    #[arg(long, env = "BENCH_STEPS", default_value_t = 20)]
    pub steps: u32,
    /// Sampler, named as in a job's `scheduler` field (`euler`, `euler_a`, `dpmpp_2m`,
    /// `DPM++ 2M Karras`, `ddim`, …); the schedule is the one a job with that name gets.
    #[arg(long, env = "BENCH_SAMPLER", default_value = "euler_a")]
    pub sampler: String,
    /// Images generated one request after another; the first includes warm-up costs.
    #[arg(long, env = "BENCH_IMAGES", default_value_t = 2)]
    pub images: u32,
    #[arg(long, env = "BENCH_GUIDANCE", default_value_t = 5.0)]
    pub guidance: f32,
    #[arg(
        long,
        env = "BENCH_PROMPT",
        default_value = "a photo of an astronaut riding a horse on the moon, highly detailed"
    )]
    pub prompt: String,
}

impl BenchArgs {
    /// The sampler and schedule `--sampler` names, read exactly as a job's `scheduler` field
    /// (so `dpmpp_2m` runs DPM++ 2M Karras in both).
    pub fn sampler_choice(&self) -> Result<(SamplerKind, SigmaSchedule), SamplingError> {
        parse_sampler_label(&self.sampler)
    }
}

/// Built-in layouts for `--synthetic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyntheticLayout {
    Sdxl,
    Mini,
}

/// Peak and current resident set size in MiB, from `/proc/self/status` (Linux; `None`
/// elsewhere).
pub fn rss_mib() -> (Option<f64>, Option<f64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU time (user + system) this process has used, in seconds, from `/proc/self/stat`
/// (Linux; `None` elsewhere). On a shared machine it measures our work, not the wall clock.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // The kernel reports clock ticks; USER_HZ is 100 on every Linux ABI we run on.
    Some((utime + stime) / 100.0)
}

/// Runs the benchmark and prints its JSON report on stdout.
pub fn run(args: &BenchArgs, engine: &EngineArgs) -> anyhow::Result<()> {
    let (sampler, schedule) = args.sampler_choice()?;
    let source = match (&args.checkpoint, args.synthetic) {
        (_, Some(SyntheticLayout::Sdxl)) => WeightsSource::Synthetic(SdxlDims::sdxl_base()),
        (_, Some(SyntheticLayout::Mini)) => WeightsSource::Synthetic(SdxlDims::mini_m()),
        (Some(p), None) => WeightsSource::File(p.clone()),
        (None, None) => anyhow::bail!("give --checkpoint PATH or --synthetic sdxl|mini"),
    };
    let mut config = PipelineConfig::new(PathBuf::new(), engine)?;
    config.source = source;
    config.vae = args.vae.clone();
    let request = GenerateRequest {
        prompt: args.prompt.clone(),
        negative_prompt: Some(String::new()),
        width: args.width,
        height: args.height,
        steps: args.steps,
        guidance: args.guidance,
        sampler,
        schedule,
        seed: 0,
        num_images: 1,
        loras: Vec::new(),
        ..GenerateRequest::default()
    };
    request.validate()?;

    let t0 = Instant::now();
    let handle = Engine::start(config)?;
    let load_s = t0.elapsed().as_secs_f64();
    let (hwm_after_load, rss_after_load) = rss_mib();
    let info = handle.info().clone();
    tracing::info!(load_s, "loaded; generating {} image(s)", args.images);

    let mut per_image = Vec::new();
    // Steps after the first of each image (the first includes one-off allocations).
    let (mut step_wall, mut step_cpu) = (Vec::new(), Vec::new());
    let mut first_image_s = None;
    for i in 0..args.images.max(1) {
        let mut req = request.clone();
        req.seed = i as u64;
        let t = Instant::now();
        // Per-step wall and CPU time from the progress callback (called after each step).
        let marks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&marks);
        let out = handle.generate_blocking(
            req,
            move |_| {
                if let Ok(mut m) = sink.lock() {
                    m.push((Instant::now(), process_cpu_seconds()));
                }
            },
            CancellationToken::new(),
        )?;
        if let Ok(m) = marks.lock() {
            for w in m.windows(2) {
                step_wall.push(w[1].0.duration_since(w[0].0).as_secs_f64());
                if let (Some(a), Some(b)) = (w[0].1, w[1].1) {
                    step_cpu.push(b - a);
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        first_image_s.get_or_insert(t0.elapsed().as_secs_f64());
        tracing::info!(image = i, seconds = secs, "image done");
        per_image.push((secs, out.timings));
    }
    let (peak_rss, rss_now) = rss_mib();
    let steady: Vec<_> = if per_image.len() > 1 {
        per_image[1..].iter().collect()
    } else {
        per_image.iter().collect()
    };
    let mean = |f: &dyn Fn(&(f64, super::Timings)) -> f64| {
        steady.iter().map(|x| f(x)).sum::<f64>() / steady.len() as f64
    };
    let seconds_per_image = mean(&|x| x.0);
    let avg = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let denoise_s = mean(&|x| x.1.denoise_s);
    let report = serde_json::json!({
        "checkpoint": info.checkpoint,
        "architecture": info.architecture,
        "device": info.device,
        "dtype": info.dtype,
        "vae_dtype": info.vae_dtype,
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "sampler": args.sampler,
        "guidance": args.guidance,
        "images": per_image.len(),
        "load_s": load_s,
        "time_to_first_image_s": first_image_s,
        "seconds_per_image": seconds_per_image,
        "first_image_s": per_image.first().map(|x| x.0),
        "encode_s": mean(&|x| x.1.encode_s),
        "denoise_s": denoise_s,
        "seconds_per_step": denoise_s / args.steps as f64,
        "unet_it_per_s": args.steps as f64 / denoise_s,
        "vae_decode_s": mean(&|x| x.1.decode_s),
        "steady_step_wall_s": avg(&step_wall),
        "steady_step_cpu_s": avg(&step_cpu),
        "cpu_threads": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "vae_f32_retry": per_image.iter().any(|x| x.1.vae_f32_retry),
        "peak_rss_after_load_mib": hwm_after_load,
        "rss_after_load_mib": rss_after_load,
        "peak_rss_mib": peak_rss,
        "rss_end_mib": rss_now,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    /// `bench --sampler NAME` reads the name with the sampling module's one label parser, the
    /// same one a job's `"scheduler"` goes through (the handler's request tests check that
    /// side), so both run the same sampler on the same schedule.
    #[test]
    fn bench_and_job_pick_the_same_schedule() {
        for name in [
            "dpmpp_2m",
            "euler",
            "DPM++ 2M SDE",
            "ddim",
            "lcm",
            "euler karras",
        ] {
            let cli =
                Cli::try_parse_from(["bench", "--synthetic", "mini", "--sampler", name]).unwrap();
            assert_eq!(
                cli.bench.sampler_choice().unwrap(),
                crate::sampling::names::parse_sampler_label(name).unwrap(),
                "{name}"
            );
        }
        let cli =
            Cli::try_parse_from(["bench", "--synthetic", "mini", "--sampler", "dpmpp_2m"]).unwrap();
        assert_eq!(
            cli.bench.sampler_choice().unwrap(),
            (SamplerKind::DpmPp2m, SigmaSchedule::Karras)
        );
    }
}
