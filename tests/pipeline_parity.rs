//! End-to-end parity with diffusers: every no-LoRA reference case of the mini-m fixture run
//! through `SdxlPipeline` on CPU in f32, compared with the recorded conditioning, final
//! latents and PNG (tolerances from the fixtures README, "Tolerances").

mod parity_support;

use parity_support::*;
use sdxl_worker::pipeline::{PipelineConfig, SdxlPipeline};

fn run_case(id: &str) {
    let c = case(id);
    assert!(c["lora"].is_null(), "{id} uses a LoRA");
    let dir = fixtures()
        .join("reference")
        .join(c["dir"].as_str().unwrap());
    let req = request(c);
    let p = pipeline();

    let cond = p.encode(&req).unwrap();
    check_conditioning(id, &dir, &cond);

    let mut steps_seen = 0;
    let out = p
        .generate(&req, &mut |pr| steps_seen = pr.step, &|| false)
        .unwrap();
    assert_eq!(
        steps_seen, req.steps,
        "{id}: progress reached the last step"
    );
    check_output(id, &dir, &out, req.num_images as usize);
}

/// Cases whose diffusers behaviour the worker deliberately does not copy, checked by
/// another test: diffusers truncates prompts to 77 tokens, the worker encodes long prompts
/// in chunks (tests/prompt_encode.rs `long_prompt_prefix_matches_diffusers_truncation`
/// compares the positions both share).
const CHECKED_ELSEWHERE: &[&str] = &["longprompt_m_euler_a_128x128_nolora_s5_n8"];

macro_rules! cases {
    ($($name:ident => $id:literal,)*) => {
        $(#[test] fn $name() { run_case($id); })*

        /// Every no-LoRA case of the manifest has a test above (none skipped silently).
        #[test]
        fn every_no_lora_case_is_covered() {
            let covered = [$($id),*];
            for c in manifest()["cases"].as_array().unwrap() {
                if c["lora"].is_null() {
                    let id = c["id"].as_str().unwrap();
                    assert!(
                        covered.contains(&id) || CHECKED_ELSEWHERE.contains(&id),
                        "no test for case {id}"
                    );
                }
            }
        }
    };
}

cases! {
    euler_128 => "m_euler_128x128_nolora_s0_n8",
    euler_192x128 => "m_euler_192x128_nolora_s0_n8",
    euler_a_128 => "m_euler_a_128x128_nolora_s1234_n8",
    euler_a_192x128 => "m_euler_a_192x128_nolora_s1234_n8",
    dpmpp_2m_karras_128 => "m_dpmpp_2m_karras_128x128_nolora_s0_n8",
    dpmpp_2m_karras_192x128 => "m_dpmpp_2m_karras_192x128_nolora_s0_n8",
    ddim_128 => "m_ddim_128x128_nolora_s1234_n8",
    ddim_192x128 => "m_ddim_192x128_nolora_s1234_n8",
    no_negative_prompt_gives_zero_embeddings => "noneg_m_euler_128x128_nolora_s3_n8",
    guidance_one_runs_without_cfg => "nocfg_m_euler_128x128_nolora_s3_n8",
    empty_prompts_are_encoded => "emptyprompt_m_euler_128x128_nolora_s13_n8",
    steps20_dpmpp_2m_karras_128x192 => "steps20_m_dpmpp_2m_karras_128x192_nolora_s11_n20",
    steps20_euler_a_128x192 => "steps20_m_euler_a_128x192_nolora_s12_n20",
    batch_of_two_uses_seed_plus_i => "batch2_m_euler_a_128x128_nolora_s42_n8",
}

#[test]
fn cancellation_stops_generation() {
    let req = request(case("m_euler_128x128_nolora_s0_n8"));
    let last = std::cell::Cell::new(0);
    let err = pipeline()
        .generate(&req, &mut |p| last.set(p.step), &|| last.get() >= 3)
        .unwrap_err();
    assert!(matches!(
        err,
        sdxl_worker::pipeline::PipelineError::Cancelled
    ));
    assert_eq!(last.get(), 3);
}

/// The engine thread runs the same pipeline: same image bits as a direct call, progress for
/// every step, and load errors reported by `Engine::start` before any job.
#[tokio::test]
async fn engine_thread_matches_direct_pipeline() {
    use sdxl_worker::pipeline::Engine;
    use std::sync::{Arc, Mutex};
    let cfg = PipelineConfig::cpu_f32(fixtures().join("mini-m.fp16.safetensors"));
    let engine = Engine::start_async(cfg).await.unwrap();
    assert_eq!(engine.info().architecture, "SDXL base");
    assert_eq!(engine.info().device, "cpu");
    let req = request(case("m_euler_a_128x128_nolora_s1234_n8"));
    let steps = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&steps);
    let out = engine
        .generate(
            req.clone(),
            move |p| seen.lock().unwrap().push((p.step, p.steps)),
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    let expected: Vec<(u32, u32)> = (1..=req.steps).map(|s| (s, req.steps)).collect();
    assert_eq!(*steps.lock().unwrap(), expected);
    let direct = pipeline().generate(&req, &mut |_| {}, &|| false).unwrap();
    assert_eq!(out.images[0].as_raw(), direct.images[0].as_raw());

    let missing = PipelineConfig::cpu_f32(fixtures().join("does-not-exist.safetensors"));
    let err = Engine::start(missing).unwrap_err().to_string();
    assert!(err.contains("does-not-exist.safetensors"), "{err}");
}

/// `--synthetic` weights (random values in a layout, no file) load through the same code and
/// give finite images; here in mini-m's layout, f32 on the CPU.
#[test]
fn synthetic_weights_generate_finite_images() {
    use sdxl_worker::pipeline::WeightsSource;
    use sdxl_worker::weights::layout::SdxlDims;
    let p = SdxlPipeline::load(&PipelineConfig {
        source: WeightsSource::Synthetic(SdxlDims::mini_m()),
        ..PipelineConfig::cpu_f32("")
    })
    .unwrap();
    let mut req = request(case("m_euler_128x128_nolora_s0_n8"));
    req.steps = 2;
    req.width = 64;
    req.height = 64;
    let out = p.generate(&req, &mut |_| {}, &|| false).unwrap();
    assert_eq!(out.images[0].dimensions(), (64, 64));
    let v = out
        .image_float
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
    assert!(v.iter().any(|x| *x != v[0]), "constant image");
}

/// The half-precision paths (weights in f16/bf16, sampler math in f32, VAE in a half type
/// with the f32 retry available) run end to end on the CPU in f16. Values are
/// not comparable with the f32 references at the parity tolerances, so the check is a loose
/// agreement with the f32 image.
#[test]
fn half_precision_pipeline_runs() {
    use sdxl_worker::pipeline::DTypeArg;
    let req = request(case("m_euler_128x128_nolora_s0_n8"));
    let reference = pipeline().generate(&req, &mut |_| {}, &|| false).unwrap();
    // candle's CPU backend has no bf16 matmul, so bf16 can only be exercised on a GPU.
    for (dtype, vae_dtype) in [
        (DTypeArg::F16, DTypeArg::F16),
        (DTypeArg::F16, DTypeArg::F32),
    ] {
        let p = SdxlPipeline::load(&PipelineConfig {
            dtype,
            vae_dtype,
            ..PipelineConfig::cpu_f32(fixtures().join("mini-m.fp16.safetensors"))
        })
        .unwrap();
        let out = p.generate(&req, &mut |_| {}, &|| false).unwrap();
        let a = out
            .image_float
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = reference
            .image_float
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            a.iter().all(|v| v.is_finite()),
            "{dtype:?}: non-finite image"
        );
        let max_ref = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let mean_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
        eprintln!(
            "{dtype:?}/{vae_dtype:?}: mean |diff| / max |ref| = {:.3e}",
            mean_diff / max_ref
        );
        assert!(mean_diff / max_ref < 5e-3, "{dtype:?}: image far from f32");

        // Latents beyond f16's range: a half-precision VAE overflows and the decode is redone
        // in f32, which stays finite.
        let mut timings = Default::default();
        let huge = (&reference.latents * 1e4).unwrap();
        let img = p.decode(&huge, &mut timings).unwrap();
        let v = img.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{vae_dtype:?}: retry left non-finite values"
        );
        assert_eq!(timings.vae_f32_retry, vae_dtype == DTypeArg::F16);
    }
}

/// A job whose latents or pixels go NaN fails with its own error type instead of returning a
/// black image.
#[test]
fn non_finite_latents_fail_the_job() {
    let p = pipeline();
    let mut timings = sdxl_worker::pipeline::Timings::default();
    let nan = candle_core::Tensor::full(f32::NAN, (1, 4, 8, 8), &candle_core::Device::Cpu).unwrap();
    let err = p.decode(&nan, &mut timings).unwrap_err();
    assert_eq!(err.error_type(), "non_finite_output");
    assert!(err.to_string().contains("NaN/inf latents"), "{err}");
    let ok = candle_core::Tensor::zeros(
        (1, 4, 8, 8),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(p.decode(&ok, &mut timings).unwrap().dims(), &[1, 3, 64, 64]);
}
