//! Shared pieces of the diffusers parity tests (no-LoRA and LoRA cases): the fixture
//! manifest, reading `.npy` references, the tolerances and the comparisons.
#![allow(dead_code)]

use sdxl_worker::pipeline::{
    Conditioning, DenoiseFrom, GenerateOutput, GenerateRequest, PipelineConfig, SdxlPipeline,
    Timings,
};
use sdxl_worker::sampling::{SamplerKind, SdeNoise, SigmaSchedule};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Conditioning: max |a − b| / max |ref|.
pub const EMBED_TOL: f32 = 1e-4;
/// Final latents, same measure.
pub const LATENT_TOL: f32 = 1e-3;
/// PNG: share of channel values within 1/255 of the reference, and PSNR.
pub const PIXEL_SHARE: f64 = 0.999;
pub const MIN_PSNR_DB: f64 = 45.0;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The mini-m fixture pipeline on the CPU in f32, loaded once per test binary.
pub fn pipeline() -> &'static SdxlPipeline {
    static P: OnceLock<SdxlPipeline> = OnceLock::new();
    P.get_or_init(|| {
        SdxlPipeline::load(&PipelineConfig::cpu_f32(
            fixtures().join("mini-m.fp16.safetensors"),
        ))
        .unwrap()
    })
}

/// The final txt2img latents of `req` for `seeds` (one image each), flattened; no cancel.
/// The run must report progress up to at least `req.steps`.
pub fn txt2img_latents(p: &SdxlPipeline, req: &GenerateRequest, seeds: &[u64]) -> Vec<f32> {
    let cond = p.encode(req).unwrap();
    let mut steps = 0;
    let out = p
        .denoise(
            req,
            &cond,
            seeds,
            DenoiseFrom::Noise,
            &mut |pr| steps = pr.step,
            &|| false,
            &mut Timings::default(),
        )
        .unwrap_or_else(|e| panic!("{:?}/{:?}: {e}", req.sampler, req.schedule));
    assert!(
        steps >= req.steps,
        "{:?}/{:?}: progress",
        req.sampler,
        req.schedule
    );
    out.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The small txt2img request the pipeline-wide tests run (64 × 64, 3 steps, CFG 5).
pub fn tiny_request(sampler: SamplerKind, schedule: SigmaSchedule, seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: "a photo of a cat".into(),
        negative_prompt: Some("blurry".into()),
        width: 64,
        height: 64,
        steps: 3,
        guidance: 5.0,
        sampler,
        schedule,
        seed,
        num_images: 1,
        ..GenerateRequest::default()
    }
}

fn read_manifest(dir: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join(dir).join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn find_case<'a>(manifest: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    manifest["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("case {id} not in manifest"))
}

/// `tests/fixtures/reference/manifest.json` (the engine's original diffusers cases).
pub fn manifest() -> &'static serde_json::Value {
    static M: OnceLock<serde_json::Value> = OnceLock::new();
    M.get_or_init(|| read_manifest("reference"))
}

pub fn case(id: &str) -> &'static serde_json::Value {
    find_case(manifest(), id)
}

/// `tests/fixtures/reference-samplers/manifest.json` (samplers, schedules, img2img).
pub fn samplers_manifest() -> &'static serde_json::Value {
    static M: OnceLock<serde_json::Value> = OnceLock::new();
    M.get_or_init(|| read_manifest("reference-samplers"))
}

pub fn samplers_case(id: &str) -> &'static serde_json::Value {
    find_case(samplers_manifest(), id)
}

pub fn npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let f = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = f.shape().iter().map(|&d| d as usize).collect();
    (shape, f.into_vec::<f32>().unwrap())
}

/// Asserts `got` is within `tol` of the `.npy` reference (measured by [`rel_err`]) and logs
/// the error.
pub fn assert_close(id: &str, name: &str, got: &candle_core::Tensor, reference: &Path, tol: f32) {
    let e = rel_err(name, got, reference);
    eprintln!("{id}: {name} rel err {e:.2e}");
    assert!(e <= tol, "{id}: {name} rel err {e:e} > {tol:e}");
}

/// max |a − b| / max |reference|.
pub fn rel_err(name: &str, got: &candle_core::Tensor, reference: &Path) -> f32 {
    let (shape, want) = npy(reference);
    assert_eq!(got.dims(), shape.as_slice(), "{name}: shape");
    let got = got
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{name}: non-finite values"
    );
    // An all-zero reference (no negative prompt) must be matched exactly.
    if max_ref == 0.0 {
        max_diff
    } else {
        max_diff / max_ref
    }
}

pub fn request(c: &serde_json::Value) -> GenerateRequest {
    let (sampler, schedule) =
        SamplerKind::parse_with_schedule(c["scheduler"].as_str().unwrap()).unwrap();
    GenerateRequest {
        sampler,
        schedule,
        num_images: c["num_images_per_prompt"].as_u64().unwrap_or(1) as u32,
        ..case_request(c)
    }
}

/// The fields every reference case spells the same way (prompts, size, steps, guidance,
/// seed); the sampler and its options come from the caller.
fn case_request(c: &serde_json::Value) -> GenerateRequest {
    GenerateRequest {
        prompt: c["prompt"].as_str().unwrap().to_string(),
        negative_prompt: c["negative_prompt"].as_str().map(str::to_string),
        width: c["width"].as_u64().unwrap() as u32,
        height: c["height"].as_u64().unwrap() as u32,
        steps: c["steps"].as_u64().unwrap() as u32,
        guidance: c["guidance_scale"].as_f64().unwrap() as f32,
        seed: c["seed"].as_u64().unwrap(),
        num_images: 1,
        loras: Vec::new(),
        ..GenerateRequest::default()
    }
}

pub fn check_conditioning(id: &str, dir: &Path, cond: &Conditioning) {
    let checks: Vec<(&str, Option<&candle_core::Tensor>)> = vec![
        ("prompt_embeds", Some(&cond.prompt_embeds)),
        ("pooled_prompt_embeds", Some(&cond.pooled)),
        ("add_time_ids", Some(&cond.time_ids)),
        (
            "negative_prompt_embeds",
            cond.negative_prompt_embeds.as_ref(),
        ),
        (
            "negative_pooled_prompt_embeds",
            cond.negative_pooled.as_ref(),
        ),
        // diffusers' negative time ids equal the positive ones for txt2img.
        (
            "negative_add_time_ids",
            cond.negative_prompt_embeds.as_ref().map(|_| &cond.time_ids),
        ),
    ];
    for (name, got) in checks {
        let file = dir.join(format!("{name}.npy"));
        match got {
            Some(t) => {
                assert_close(id, name, t, &file, EMBED_TOL);
            }
            None => assert!(
                !file.exists(),
                "{id}: the reference has {name} but the pipeline built none"
            ),
        }
    }
}

pub fn check_image(id: &str, got: &image::RgbImage, reference: &Path) {
    let want = image::open(reference).unwrap().to_rgb8();
    assert_eq!(got.dimensions(), want.dimensions(), "{id}: image size");
    let (mut close, mut sq) = (0usize, 0f64);
    for (a, b) in got.as_raw().iter().zip(want.as_raw()) {
        let d = (*a as i32 - *b as i32).abs();
        if d <= 1 {
            close += 1;
        }
        sq += (d * d) as f64;
    }
    let n = want.as_raw().len();
    let share = close as f64 / n as f64;
    let mse = sq / n as f64;
    let psnr = if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    };
    eprintln!(
        "{id}: {} within 1/255: {:.4}%, PSNR {psnr:.1} dB",
        reference.file_name().unwrap().to_string_lossy(),
        share * 100.0
    );
    assert!(
        share >= PIXEL_SHARE,
        "{id}: only {share} of values within 1/255"
    );
    assert!(psnr >= MIN_PSNR_DB, "{id}: PSNR {psnr} dB < {MIN_PSNR_DB}");
}

/// Final latents and decoded floats within [`LATENT_TOL`], then every PNG of the case
/// (`image.png`, `image_1.png`, …) against its reference.
pub fn check_output(id: &str, dir: &Path, out: &GenerateOutput, num_images: usize) {
    let latents = dir.join("final_latents.npy");
    assert_close(id, "final_latents", &out.latents, &latents, LATENT_TOL);
    let floats = dir.join("image_float.npy");
    assert_close(id, "image_float", &out.image_float, &floats, LATENT_TOL);
    assert_eq!(out.images.len(), num_images);
    for (i, img) in out.images.iter().enumerate() {
        let name = if i == 0 {
            "image.png".to_string()
        } else {
            format!("image_{i}.png")
        };
        check_image(id, img, &dir.join(name));
    }
}

/// The worker request of a `reference-samplers` case (its `worker` field names the sampler,
/// schedule and options as our API spells them).
pub fn samplers_request(c: &serde_json::Value) -> GenerateRequest {
    let w = &c["worker"];
    GenerateRequest {
        sampler: SamplerKind::parse(w["sampler"].as_str().unwrap()).unwrap(),
        schedule: SigmaSchedule::parse(w["schedule"].as_str().unwrap_or("default")).unwrap(),
        sde_noise: match w["sde_noise"].as_str() {
            Some("gaussian") => SdeNoise::Gaussian,
            _ => SdeNoise::Brownian,
        },
        guidance_rescale: w["guidance_rescale"].as_f64().unwrap_or(0.0) as f32,
        ..case_request(c)
    }
}
