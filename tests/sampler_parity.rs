//! End-to-end parity of the new samplers and schedules with diffusers: the cases of
//! `tests/fixtures/reference-samplers/` run through `SdxlPipeline` (mini-m fixture, CPU, f32)
//! and compared at the engine tolerances of the parity tests (final latents and decoded
//! floats ≤ 1e-3 of max |ref|, PNGs within 1/255 on 99.9 % of values).
//!
//! Cases not run here, each for a stated reason:
//! * `clip_skip_*`: tests the text encoders (`tests/prompt_*.rs`), not the sampler.
//! * `vpred_ztsnr_*`: the mini-m checkpoint is ε-prediction and the pipeline takes the
//!   prediction type from the checkpoint; their sampler chains are checked in `sampling.rs`.
//! * `dpmpp_3m_sde_*`: diffusers' 3M SDE is not k-diffusion's, which we follow (`sampling.rs`).
//! * `*_comfy_*`: ComfyUI σ lists run by diffusers' Euler with fractional timesteps and a
//!   σ_max start; we feed ComfyUI's nearest-index timesteps and its `sqrt(1+σ²)` start, so
//!   only the σs and the updates are comparable (`sampling.rs`, `sampler_formulas.rs`).

mod parity_support;

use candle_core::Tensor;
use parity_support::{
    assert_close, check_image, fixtures, npy, pipeline, samplers_case as case,
    samplers_manifest as manifest, samplers_request, txt2img_latents, LATENT_TOL,
};
use sdxl_worker::pipeline::{DenoiseFrom, GenerateRequest, Timings};
use sdxl_worker::sampling::SamplerKind;

fn run_case(id: &str) {
    let c = case(id);
    let dir = fixtures()
        .join("reference-samplers")
        .join(c["dir"].as_str().unwrap());
    let req = samplers_request(c);
    let p = pipeline();
    let mut steps_seen = (0, 0);
    let out = p
        .generate(&req, &mut |pr| steps_seen = (pr.step, pr.steps), &|| false)
        .unwrap();
    assert_eq!(steps_seen, (req.steps, req.steps), "{id}: progress");
    assert_eq!(
        out.timings.unet_steps as u64,
        c["num_unet_calls"].as_u64().unwrap(),
        "{id}: UNet calls"
    );
    let latents = dir.join("final_latents.npy");
    assert_close(id, "final_latents", &out.latents, &latents, LATENT_TOL);
    // The fixtures keep decoded floats for some cases only (size); PNGs for all.
    let floats = dir.join("image_float.npy");
    if floats.exists() {
        assert_close(id, "image_float", &out.image_float, &floats, LATENT_TOL);
    }
    check_image(id, &out.images[0], &dir.join("image.png"));
}

/// img2img from the recorded image latents (`image_latents.npy` = VAE encode × scaling
/// factor): diffusers' strength rule, noise from the image generator's first draw.
fn run_img2img(id: &str) {
    let c = case(id);
    let dir = fixtures()
        .join("reference-samplers")
        .join(c["dir"].as_str().unwrap());
    let req = samplers_request(c);
    let strength = c["strength"].as_f64().unwrap() as f32;
    let (shape, data) = npy(&dir.join("image_latents.npy"));
    let latents = Tensor::from_vec(data, shape, &candle_core::Device::Cpu).unwrap();
    let p = pipeline();
    let cond = p.encode(&req).unwrap();
    let mut progress = Vec::new();
    let mut timings = Timings::default();
    let out = p
        .denoise(
            &req,
            &cond,
            &[req.seed],
            DenoiseFrom::Latents {
                latents: &latents,
                strength,
            },
            &mut |pr| progress.push((pr.step, pr.steps)),
            &|| false,
            &mut timings,
        )
        .unwrap();
    let run = c["num_unet_calls"].as_u64().unwrap() as u32;
    let expected: Vec<(u32, u32)> = (1..=run).map(|s| (s, run)).collect();
    assert_eq!(progress, expected, "{id}: progress over the steps run");
    let latents = dir.join("final_latents.npy");
    assert_close(id, "final_latents", &out, &latents, LATENT_TOL);
}

macro_rules! cases {
    ($($name:ident => $id:literal,)*) => {
        $(#[test] fn $name() { run_case($id); })*
        const COVERED: &[&str] = &[$($id),*];
    };
}

cases! {
    euler_trailing => "euler_trailing_s100_n8",
    euler_linspace => "euler_linspace_s101_n8",
    euler_karras => "euler_karras_s102_n8",
    euler_exponential => "euler_exponential_s103_n8",
    euler_beta => "euler_beta_s104_n8",
    euler_a_trailing => "euler_a_trailing_s105_n8",
    euler_a_linspace => "euler_a_linspace_s106_n8",
    heun_leading => "heun_leading_s110_n8",
    heun_karras => "heun_karras_s111_n8",
    dpm_2_leading => "dpm_2_leading_s112_n8",
    dpm_2_karras => "dpm_2_karras_s113_n8",
    dpm_2_a_leading => "dpm_2_a_leading_s114_n8",
    dpm_2_a_karras => "dpm_2_a_karras_s115_n8",
    dpmpp_2m_leading => "dpmpp_2m_leading_s120_n8",
    dpmpp_2m_linspace => "dpmpp_2m_linspace_s121_n8",
    dpmpp_2m_trailing => "dpmpp_2m_trailing_s122_n8",
    dpmpp_2m_exponential => "dpmpp_2m_exponential_s123_n8",
    dpmpp_2m_beta => "dpmpp_2m_beta_s124_n8",
    dpmpp_2m_sde_leading => "dpmpp_2m_sde_leading_s130_n8",
    dpmpp_2m_sde_karras => "dpmpp_2m_sde_karras_s131_n8",
    dpmpp_2m_sde_karras_20 => "dpmpp_2m_sde_karras_s132_n20",
    ddim_trailing => "ddim_trailing_s150_n8",
    ddim_linspace => "ddim_linspace_s151_n8",
    uni_pc_leading => "uni_pc_leading_s160_n8",
    uni_pc_karras => "uni_pc_karras_s161_n8",
    uni_pc_leading_20 => "uni_pc_leading_s162_n20",
    lcm => "lcm_s170_n4",
    guidance_rescale => "guidance_rescale_euler_leading_s180_n8",
    dpmpp_sde_karras => "dpmpp_sde_karras_s140_n8",
    dpmpp_sde_leading => "dpmpp_sde_leading_s141_n8",
    lms_leading => "lms_leading_s220_n8",
    lms_karras => "lms_karras_s221_n8",
    pndm_leading => "pndm_leading_s222_n8",
    pndm_linspace => "pndm_linspace_s223_n8",
    dpmpp_2s_default => "dpmpp_2s_default_s224_n8",
    dpmpp_2s_default_9 => "dpmpp_2s_default_s225_n9",
    dpmpp_2s_karras => "dpmpp_2s_karras_s226_n8",
    dpmpp_2m_sde_heun_leading => "dpmpp_2m_sde_heun_leading_s227_n8",
    dpmpp_2m_sde_heun_karras => "dpmpp_2m_sde_heun_karras_s228_n8",
}

#[test]
fn img2img_euler_leading() {
    run_img2img("img2img_euler_leading_str0.5_s200_n8");
}

#[test]
fn img2img_dpmpp_2m_karras() {
    run_img2img("img2img_dpmpp_2m_karras_str0.6_s201_n8");
}

/// Every case of the manifest is either run above or excluded for a reason in the module
/// docs (none skipped silently).
#[test]
fn every_case_is_covered_or_excluded() {
    let excluded_prefixes = ["clip_skip_", "vpred_ztsnr_", "dpmpp_3m_sde_"];
    let img2img = [
        "img2img_euler_leading_str0.5_s200_n8",
        "img2img_dpmpp_2m_karras_str0.6_s201_n8",
    ];
    let excluded = |id: &str| id.contains("_comfy_");
    for c in manifest()["cases"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap();
        let ok = COVERED.contains(&id)
            || img2img.contains(&id)
            || excluded_prefixes.iter().any(|p| id.starts_with(p))
            || excluded(id);
        assert!(ok, "no test for case {id}");
    }
}

/// The ends of the strength rule: ≥ 1 is exactly the txt2img start (image ignored), a
/// strength that rounds to 0 steps returns the latents unchanged; bad values are refused.
#[test]
fn img2img_strength_edges_and_request_errors() {
    let c = case("img2img_euler_leading_str0.5_s200_n8");
    let dir = fixtures()
        .join("reference-samplers")
        .join(c["dir"].as_str().unwrap());
    let mut req = samplers_request(c);
    req.steps = 2;
    let (shape, data) = npy(&dir.join("image_latents.npy"));
    let latents = Tensor::from_vec(data, shape, &candle_core::Device::Cpu).unwrap();
    let p = pipeline();
    let cond = p.encode(&req).unwrap();
    let run = |req: &GenerateRequest, from: DenoiseFrom<'_>| {
        p.denoise(
            req,
            &cond,
            &[req.seed],
            from,
            &mut |_| {},
            &|| false,
            &mut Timings::default(),
        )
    };
    let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let txt = flat(run(&req, DenoiseFrom::Noise).unwrap());
    let full = flat(
        run(
            &req,
            DenoiseFrom::Latents {
                latents: &latents,
                strength: 1.0,
            },
        )
        .unwrap(),
    );
    assert_eq!(txt, full, "strength 1 must be the txt2img start");
    let none = run(
        &req,
        DenoiseFrom::Latents {
            latents: &latents,
            strength: 0.4, // int(2 · 0.4) = 0 steps
        },
    )
    .unwrap();
    assert_eq!(flat(none), flat(latents.clone()));

    let err = run(
        &req,
        DenoiseFrom::Latents {
            latents: &latents,
            strength: f32::NAN,
        },
    )
    .unwrap_err();
    assert_eq!(err.error_type(), "invalid_input", "{err}");
    let bad = GenerateRequest {
        guidance_rescale: 1.5,
        ..req.clone()
    };
    let err = run(&bad, DenoiseFrom::Noise).unwrap_err();
    assert!(err.to_string().contains("guidance_rescale"), "{err}");
    let lcm = GenerateRequest {
        sampler: SamplerKind::Lcm,
        steps: 60,
        ..req.clone()
    };
    let err = run(&lcm, DenoiseFrom::Noise).unwrap_err();
    assert_eq!(err.error_type(), "invalid_input", "{err}");
    assert!(err.to_string().contains("sgm_uniform"), "{err}");
}

/// A1111 variation seed: strength 0 is the plain seed, strength 1 the subseed's noise (with a
/// deterministic sampler that is the subseed's image); in between differs from both.
#[test]
fn variation_seed_blends_initial_noise() {
    use sdxl_worker::pipeline::Variation;
    let mut req = samplers_request(case("euler_trailing_s100_n8"));
    req.steps = 2;
    let p = pipeline();
    let run = |req: &GenerateRequest| txt2img_latents(p, req, &[req.seed]);
    let plain = run(&req);
    let sub = run(&GenerateRequest {
        seed: 77,
        ..req.clone()
    });
    let with = |strength: f32| {
        run(&GenerateRequest {
            variation: Some(Variation {
                subseed: 77,
                strength,
            }),
            ..req.clone()
        })
    };
    let max_diff =
        |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let scale = plain.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_eq!(with(0.0), plain);
    assert!(max_diff(&with(1.0), &sub) <= 1e-5 * scale);
    let half = with(0.5);
    assert!(max_diff(&half, &plain) > 0.01 * scale);
    assert!(max_diff(&half, &sub) > 0.01 * scale);
    let bad = GenerateRequest {
        variation: Some(Variation {
            subseed: 1,
            strength: 2.0,
        }),
        ..req.clone()
    };
    let cond = p.encode(&bad).unwrap();
    let err = p
        .denoise(
            &bad,
            &cond,
            &[1],
            DenoiseFrom::Noise,
            &mut |_| {},
            &|| false,
            &mut Timings::default(),
        )
        .unwrap_err();
    assert_eq!(err.error_type(), "invalid_input");
}

/// Cancellation is checked before every UNet call, also between the two calls of a Heun
/// step: cancelling after the first step's progress stops before the third call.
#[test]
fn cancellation_between_calls_of_a_two_call_step() {
    let mut req = samplers_request(case("heun_leading_s110_n8"));
    req.steps = 4;
    let p = pipeline();
    let cond = p.encode(&req).unwrap();
    let steps = std::cell::Cell::new(0);
    let mut timings = Timings::default();
    let err = p
        .denoise(
            &req,
            &cond,
            &[req.seed],
            DenoiseFrom::Noise,
            &mut |pr| steps.set(pr.step),
            &|| steps.get() >= 1,
            &mut timings,
        )
        .unwrap_err();
    assert!(matches!(
        err,
        sdxl_worker::pipeline::PipelineError::Cancelled
    ));
    assert_eq!(steps.get(), 1);
    assert_eq!(timings.unet_steps, 2, "one Heun step = two UNet calls");
}
