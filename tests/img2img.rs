//! img2img and hires fix on the mini-m fixture (CPU, f32): the strength end points against
//! the VAE round trip and txt2img, the diffusers img2img references of
//! `tests/fixtures/reference-samplers` (latents = VAE mean × scaling factor, see its
//! manifest), and the hires fix's size, determinism, progress and latent upscale.

mod parity_support;
mod te_vae_common;

use candle_core::Tensor;
use image::RgbImage;
use parity_support::*;
use sdxl_worker::pipeline::img2img::upscale_latents_bilinear;
use sdxl_worker::pipeline::{
    GenerateOutput, GenerateRequest, HiresFix, InitImage, PipelineConfig, PipelineError, Progress,
    SdxlPipeline, Timings,
};
use sdxl_worker::sampling::{SamplerKind, SigmaSchedule};
use std::path::PathBuf;
use te_vae_common::all_finite;

fn refs() -> PathBuf {
    fixtures().join("reference-samplers")
}

/// The 128 × 128 input image of the VAE-encode reference.
fn input_image() -> RgbImage {
    image::open(refs().join("vae_encode/input.png"))
        .unwrap()
        .to_rgb8()
}

fn base_request(seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: "a photo of a cat".into(),
        negative_prompt: Some("blurry, low quality".into()),
        width: 128,
        height: 128,
        steps: 8,
        guidance: 5.0,
        sampler: SamplerKind::Euler,
        schedule: SigmaSchedule::Default,
        seed,
        ..GenerateRequest::default()
    }
}

fn img2img(seed: u64, strength: f32) -> GenerateRequest {
    GenerateRequest {
        init_image: Some(InitImage {
            image: input_image(),
            strength,
        }),
        ..base_request(seed)
    }
}

fn run(req: &GenerateRequest) -> (GenerateOutput, Vec<Progress>) {
    let mut seen = Vec::new();
    let out = pipeline()
        .generate(req, &mut |p| seen.push(p), &|| false)
        .unwrap();
    (out, seen)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn strength_zero_returns_the_vae_round_trip() {
    let p = pipeline();
    let (out, _) = run(&img2img(7, 0.0));
    let clean = p
        .encode_init_image(&input_image(), 128, 128, &mut Timings::default())
        .unwrap();
    assert_eq!(max_abs_diff(&out.latents, &clean), 0.0, "latents unchanged");
    let decoded = p.decode(&clean, &mut Timings::default()).unwrap();
    assert_eq!(max_abs_diff(&out.image_float, &decoded), 0.0);
    assert_eq!(out.images[0].dimensions(), (128, 128));
    // The round trip of a random-weight VAE is not the identity: the check above is not
    // satisfied by returning the input.
    let input =
        sdxl_worker::pipeline::img2img::image_to_tensor(&input_image(), p.device()).unwrap();
    assert!(max_abs_diff(&decoded, &input) > 0.05);
}

#[test]
fn strength_one_equals_txt2img_bit_for_bit() {
    let (img, _) = run(&img2img(11, 1.0));
    let (txt, _) = run(&base_request(11));
    assert_eq!(max_abs_diff(&img.latents, &txt.latents), 0.0);
    assert_eq!(img.images[0], txt.images[0]);
}

#[test]
fn input_of_another_size_is_fitted_and_batches_use_seed_plus_i() {
    // A 256 × 96 input for a 128 × 128 request: cropped and resized, not refused.
    let wide = image::imageops::resize(
        &input_image(),
        256,
        96,
        image::imageops::FilterType::Triangle,
    );
    let req = |seed: u64, n: u32| GenerateRequest {
        init_image: Some(InitImage {
            image: wide.clone(),
            strength: 0.5,
        }),
        num_images: n,
        ..base_request(seed)
    };
    let (two, _) = run(&req(30, 2));
    let (one, _) = run(&req(31, 1));
    assert_eq!(two.images.len(), 2);
    assert_eq!(two.images[1].dimensions(), (128, 128));
    let second = two.latents.narrow(0, 1, 1).unwrap();
    // Batched UNet calls sum in another order than single ones: equal up to f32 rounding,
    // while another seed's latents differ by O(1).
    let d = max_abs_diff(&second, &one.latents);
    assert!(d < 1e-3, "image 1 = seed + 1: max diff {d}");
    let first = two.latents.narrow(0, 0, 1).unwrap();
    assert!(max_abs_diff(&first, &one.latents) > 0.1, "seeds differ");
    // Deterministic.
    let (again, _) = run(&req(31, 1));
    assert_eq!(max_abs_diff(&again.latents, &one.latents), 0.0);
    assert!(all_finite(&one.latents) && all_finite(&one.image_float));
}

/// One diffusers img2img case: clean latents, final latents, decoded floats and PNG.
fn reference_case(id: &str) {
    let c = samplers_case(id);
    assert_eq!(c["pipeline"], "img2img");
    let dir = refs().join(c["dir"].as_str().unwrap());
    let w = &c["worker"];
    let input = image::open(dir.join("input.png")).unwrap().to_rgb8();
    let req = GenerateRequest {
        init_image: Some(InitImage {
            image: input.clone(),
            strength: w["strength"].as_f64().unwrap() as f32,
        }),
        ..samplers_request(c)
    };
    let p = pipeline();
    let clean = p
        .encode_init_image(&input, req.width, req.height, &mut Timings::default())
        .unwrap();
    let reference = dir.join("image_latents.npy");
    assert_close(id, "image_latents", &clean, &reference, 1e-4);
    let (out, seen) = run(&req);
    let ran = c["img2img"]["begin_index"].as_u64().unwrap();
    assert_eq!(
        seen.last().map(|p| p.step),
        Some((req.steps as u64 - ran) as u32),
        "{id}: steps run"
    );
    check_output(id, &dir, &out, 1);
}

#[test]
fn img2img_euler_matches_diffusers() {
    reference_case("img2img_euler_leading_str0.5_s200_n8");
}

#[test]
fn img2img_dpmpp_2m_karras_matches_diffusers() {
    reference_case("img2img_dpmpp_2m_karras_str0.6_s201_n8");
}

/// Every img2img case of the reference manifest has a test above.
#[test]
fn every_img2img_reference_case_is_covered() {
    let covered = [
        "img2img_euler_leading_str0.5_s200_n8",
        "img2img_dpmpp_2m_karras_str0.6_s201_n8",
    ];
    for c in samplers_manifest()["cases"].as_array().unwrap() {
        if c["pipeline"] == "img2img" {
            let id = c["id"].as_str().unwrap();
            assert!(covered.contains(&id), "no test for {id}");
        }
    }
}

fn hires(seed: u64, scale: f32, steps: u32, denoise: f32) -> GenerateRequest {
    GenerateRequest {
        hires: Some(HiresFix {
            scale,
            steps,
            denoise,
        }),
        ..base_request(seed)
    }
}

#[test]
fn hires_fix_makes_the_scaled_size_deterministically() {
    let req = hires(5, 1.5, 4, 0.5);
    let (a, seen) = run(&req);
    assert_eq!(a.images.len(), 1);
    assert_eq!(a.images[0].dimensions(), (192, 192));
    assert_eq!(a.latents.dims(), &[1, 4, 24, 24]);
    assert!(all_finite(&a.latents) && all_finite(&a.image_float));
    // Progress covers both passes: 8 first-pass steps, then the 4 hires steps A1111 runs.
    let steps: Vec<u32> = seen.iter().map(|p| p.step).collect();
    assert_eq!(steps, (1..=12).collect::<Vec<_>>());
    assert!(seen.iter().all(|p| p.steps == 12), "{seen:?}");
    let (b, _) = run(&req);
    assert_eq!(max_abs_diff(&a.latents, &b.latents), 0.0);
    assert_eq!(a.images[0], b.images[0]);
    // The second pass changed the upscaled first pass.
    let (low, _) = run(&base_request(5));
    let up = upscale_latents_bilinear(&low.latents, 24, 24).unwrap();
    assert!(max_abs_diff(&a.latents, &up) > 1e-2);
}

#[test]
fn hires_with_zero_denoise_is_the_upscaled_first_pass() {
    // Two images: the whole batch is upscaled.
    let (out, seen) = run(&GenerateRequest {
        num_images: 2,
        ..hires(9, 2.0, 0, 0.0)
    });
    let (low, _) = run(&GenerateRequest {
        num_images: 2,
        ..base_request(9)
    });
    let up = upscale_latents_bilinear(&low.latents, 32, 32).unwrap();
    assert_eq!(out.latents.dims(), &[2, 4, 32, 32]);
    assert_eq!(max_abs_diff(&out.latents, &up), 0.0);
    assert_eq!(out.images.len(), 2);
    assert_eq!(out.images[1].dimensions(), (256, 256));
    assert_eq!(seen.last().map(|p| (p.step, p.steps)), Some((8, 8)));
}

#[test]
fn invalid_img2img_and_hires_fields_are_named() {
    let p = pipeline();
    let err = |req: GenerateRequest| -> String {
        match p.generate(&req, &mut |_| {}, &|| false) {
            Err(e @ PipelineError::InvalidRequest(_)) => {
                assert_eq!(e.error_type(), "invalid_input");
                e.to_string()
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("accepted"),
        }
    };
    assert!(err(img2img(1, 1.5)).contains("strength"));
    assert!(err(img2img(1, -0.1)).contains("strength"));
    assert!(err(img2img(1, f32::NAN)).contains("strength"));
    assert!(err(hires(1, 1.0, 0, 0.5)).contains("hires.scale"));
    assert!(err(hires(1, 4.5, 0, 0.5)).contains("hires.scale"));
    assert!(err(hires(1, 1.5, 0, 1.2)).contains("hires.denoise"));
    assert!(err(hires(1, 1.5, 100_000, 0.5)).contains("hires.steps"));
    let big = GenerateRequest {
        width: 2048,
        height: 1024,
        ..hires(1, 2.5, 0, 0.5)
    };
    assert!(err(big).contains("4096"));
    let both = GenerateRequest {
        hires: Some(HiresFix {
            scale: 1.5,
            steps: 0,
            denoise: 0.5,
        }),
        ..img2img(1, 0.5)
    };
    assert!(err(both).contains("hires"));
}

/// A half-precision VAE encodes in its own dtype (the NaN retry in f32 exists for the real
/// SDXL VAE, which overflows in f16); the result stays close to the f32 encoding.
#[test]
fn half_precision_vae_encodes_close_to_f32() {
    use sdxl_worker::pipeline::DTypeArg;
    let cfg = PipelineConfig {
        vae_dtype: DTypeArg::F16,
        ..PipelineConfig::cpu_f32(fixtures().join("mini-m.fp16.safetensors"))
    };
    let half = SdxlPipeline::load(&cfg).unwrap();
    let mut t = Timings::default();
    let a = half
        .encode_init_image(&input_image(), 128, 128, &mut t)
        .unwrap();
    let b = pipeline()
        .encode_init_image(&input_image(), 128, 128, &mut Timings::default())
        .unwrap();
    assert_eq!(a.dtype(), candle_core::DType::F32);
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let rel = max_abs_diff(&a, &b) / scale;
    eprintln!("f16 VAE encode rel diff {rel:.3e}");
    assert!(rel < 1e-2, "{rel}");
    assert!(!t.vae_f32_retry, "the mini VAE does not overflow in f16");
}

/// A small denoise asks for a long second-pass schedule (`int(4 / 0.05)` = 80 steps); LCM
/// lays out at most 50 on this spacing, so the schedule is capped and the pass still runs the
/// requested 4 steps instead of failing.
#[test]
fn hires_small_denoise_stays_within_the_sampler_limit() {
    let req = GenerateRequest {
        sampler: SamplerKind::Lcm,
        steps: 4,
        guidance: 1.5,
        ..hires(3, 1.5, 4, 0.05)
    };
    let (out, seen) = run(&req);
    assert_eq!(out.images[0].dimensions(), (192, 192));
    assert!(all_finite(&out.latents));
    assert_eq!(seen.last().map(|p| (p.step, p.steps)), Some((8, 8)));
}
