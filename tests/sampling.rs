//! Schedules and sampler steps against every diffusers reference case, without a UNet: the
//! recorded guided model output of each step is fed to our sampler, starting from the
//! recorded initial noise (drawn by our generator), and the latents after every step must
//! match diffusers'.

mod common_sampling;

use candle_core::{Device, Tensor};
use common_sampling::{case_as_f64, case_f32, manifest, rel_max_abs, Npy};
use sdxl_worker::sampling::rng::{randn_batch, TorchRng};
use sdxl_worker::sampling::{Sampler, SamplerKind, ScheduleConfig};

/// Latents after every step: max abs diff relative to the reference's max abs value.
const LATENT_TOL: f64 = 1e-5;
/// Schedule σs, relative to each value.
const SIGMA_TOL: f64 = 1e-6;

fn tensor(npy: &Npy<f32>, dev: &Device) -> Tensor {
    Tensor::from_vec(npy.data.clone(), npy.shape.clone(), dev).unwrap()
}

/// Slice `k` of the leading axis of a stacked per-step array.
fn step_slice(npy: &Npy<f32>, k: usize) -> Npy<f32> {
    let per: usize = npy.shape[1..].iter().product();
    Npy {
        shape: npy.shape[1..].to_vec(),
        data: npy.data[k * per..(k + 1) * per].to_vec(),
    }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn sampler_for(case: &serde_json::Value) -> Sampler {
    let name = case["scheduler"].as_str().unwrap();
    let (kind, schedule) = SamplerKind::parse_with_schedule(name).unwrap();
    // The fixtures use the SDXL base config for every scheduler; check that assumption.
    let sc = &case["scheduler_config"];
    assert_eq!(sc["timestep_spacing"], "leading");
    assert_eq!(sc["steps_offset"], 1);
    assert_eq!(sc["prediction_type"], "epsilon");
    assert_eq!(sc["beta_schedule"], "scaled_linear");
    let steps = case["steps"].as_u64().unwrap() as usize;
    Sampler::new(kind, schedule, &ScheduleConfig::sdxl(), steps).unwrap()
}

/// Timesteps (exact) and σs of every case, and `init_noise_sigma`.
#[test]
fn schedules_match_reference() {
    let mut worst_sigma = 0f64;
    let mut inexact = 0usize;
    for case in manifest()["cases"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let sampler = sampler_for(case);
        let want_ts = case_as_f64(id, "timesteps.npy");
        assert_eq!(sampler.timesteps(), &want_ts[..], "{id}: timesteps");

        let want_init = case["init_noise_sigma"].as_f64().unwrap() as f32;
        // torch's value is sometimes 1 ulp above the correctly rounded sqrt(σ_max² + 1)
        // (7.4393635 vs 7.439363 for 8 steps); 1e-6 relative covers it.
        let rel = ((sampler.init_noise_sigma() - want_init) / want_init).abs();
        assert!(
            rel as f64 <= SIGMA_TOL,
            "{id}: init_noise_sigma {} vs {want_init}",
            sampler.init_noise_sigma()
        );

        if case["scheduler"] == "ddim" {
            assert!(sampler.sigmas().is_none());
            continue;
        }
        let want = case_f32(id, "sigmas.npy");
        let got = sampler.sigmas().unwrap();
        assert_eq!(got.len(), want.data.len(), "{id}: sigma count");
        for (g, w) in got.iter().zip(&want.data) {
            let rel = if *w == 0.0 {
                (*g as f64).abs()
            } else {
                ((*g as f64 - *w as f64) / *w as f64).abs()
            };
            worst_sigma = worst_sigma.max(rel);
            if g != w {
                inexact += 1;
            }
            assert!(rel <= SIGMA_TOL, "{id}: sigma {g} vs {w} (rel {rel:e})");
        }
    }
    // torch's float32 `((1 − ᾱ)/ᾱ) ** 0.5` is not always correctly rounded (σ_0 is 0.68 ulp
    // off; its CPU sqrt goes through a vector math library), so a few σs differ from our
    // IEEE sqrt by one float32 ulp.
    eprintln!("worst sigma relative difference: {worst_sigma:e} ({inexact} values not bit-equal)");
}

/// The full sampling chain of every case (all four samplers, 8 and 20 steps, the batch of two
/// with one generator per image), plus the first UNet input and timestep.
#[test]
fn sampler_steps_match_reference() {
    let dev = Device::Cpu;
    let mut worst = 0f64;
    let mut worst_case = String::new();
    for case in manifest()["cases"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let mut sampler = sampler_for(case);
        let shape: Vec<usize> = case["latent_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let batch = shape[0];
        let seed = case["seed"].as_u64().unwrap();
        let seeds: Vec<u64> = match case.get("image_seeds").and_then(|v| v.as_array()) {
            Some(list) => list.iter().map(|v| v.as_u64().unwrap()).collect(),
            None => (0..batch as u64).map(|i| seed + i).collect(),
        };
        assert_eq!(seeds.len(), batch);
        let mut rngs: Vec<TorchRng> = seeds.iter().map(|&s| TorchRng::new(s)).collect();

        let noise = randn_batch(&mut rngs, &shape[1..], &dev).unwrap();
        assert_eq!(
            flat(&noise),
            case_f32(id, "init_noise.npy").data,
            "{id}: init noise"
        );
        let mut x = sampler.init_latents(&noise).unwrap();

        // First UNet call: scale_model_input of the initial latents, [uncond, cond] with CFG.
        let model_in = sampler.scale_model_input(&x, 0).unwrap();
        let cfg = case["guidance_scale"].as_f64().unwrap() > 1.0;
        let want_in = case_f32(id, "unet_step0_sample.npy");
        let expected_in = if cfg {
            Tensor::cat(&[&model_in, &model_in], 0).unwrap()
        } else {
            model_in
        };
        let rel = rel_max_abs(&flat(&expected_in), &want_in.data);
        assert!(rel <= LATENT_TOL, "{id}: unet_step0_sample rel {rel:e}");
        let t0 = case_as_f64(id, "unet_step0_timestep.npy")[0];
        assert_eq!(sampler.timesteps()[0], t0, "{id}: unet_step0_timestep");

        let eps = case_f32(id, "noise_pred_steps.npy");
        let latents = case_f32(id, "latents_steps.npy");
        let steps = sampler.num_steps();
        assert_eq!(eps.shape[0], steps, "{id}");
        for k in 0..steps {
            // scale_model_input is what the UNet would see; the sampler must not depend on it.
            let _ = sampler.scale_model_input(&x, k).unwrap();
            let e = tensor(&step_slice(&eps, k), &dev);
            x = sampler.step(&e, k, &x, &mut rngs).unwrap();
            let rel = rel_max_abs(&flat(&x), &step_slice(&latents, k).data);
            if rel > worst {
                worst = rel;
                worst_case = format!("{id} step {k}");
            }
            assert!(
                rel <= LATENT_TOL,
                "{id}: latents after step {k}: rel {rel:e}"
            );
        }
        let fin = case_f32(id, "final_latents.npy");
        let rel = rel_max_abs(&flat(&x), &fin.data);
        assert!(rel <= LATENT_TOL, "{id}: final latents rel {rel:e}");

        // Euler a must have drawn exactly the recorded stream: the next draw of each generator
        // equals a fresh generator advanced by the recorded number of draws.
        let draws = case["num_rng_draws"].as_u64().unwrap() as usize;
        let per: usize = shape[1..].iter().product();
        for (rng, &s) in rngs.iter_mut().zip(&seeds) {
            let mut fresh = TorchRng::new(s);
            for _ in 0..draws {
                fresh.randn(per);
            }
            assert_eq!(rng.randn(per), fresh.randn(per), "{id}: generator position");
        }
    }
    eprintln!("worst latent relative difference: {worst:e} ({worst_case})");
}
