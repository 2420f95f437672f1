//! Schedules and sampler updates checked against independently computed values, for what has
//! no diffusers reference (ComfyUI schedules, DPM++ 3M SDE) and as a second check of the
//! σ-space formulas: σ tables from numpy/scipy and sampler chains from a float64 numpy
//! transcription of k-diffusion's `sampling.py`, on a fake denoiser.
//!
//! Provenance of the literals: the pinned reference venv (numpy, scipy, torch CPU) running
//! `tests/fixtures/tools/sampler_sigma_tables.py` (ComfyUI `normal_scheduler`/`simple_scheduler`/
//! `ddim_scheduler`, k-diffusion `get_sigmas_karras`/`get_sigmas_exponential`, diffusers
//! `_convert_to_beta` with `scipy.stats.beta.ppf`, all on diffusers' float32 σ table) and
//! `tests/fixtures/tools/sampler_kdiffusion_chains.py` (the samplers with η = 1, D(x, σ) = x/(1+σ²) + 0.05σ, SDE noise
//! (σ, σ') ↦ [sin(3σ+σ'), cos(σ−2σ')], generator noise from `torch.Generator().manual_seed(7)`).

use candle_core::{Device, Tensor};
use sdxl_worker::sampling::{
    ImageRng, NoiseKind, Sampler, SamplerKind, SamplerNoise, SamplingError, ScheduleConfig,
    SdeNoise, SigmaSchedule, StepInfo,
};

fn sigmas(kind: SamplerKind, schedule: SigmaSchedule, steps: usize) -> Vec<f32> {
    Sampler::new(kind, schedule, &ScheduleConfig::sdxl(), steps)
        .unwrap()
        .sigmas()
        .to_vec()
}

fn assert_close(name: &str, got: &[f32], want: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length {got:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = if *w == 0.0 {
            (*g as f64).abs()
        } else {
            ((*g as f64 - w) / w).abs()
        };
        assert!(err <= rel, "{name}[{i}]: {g} vs {w} (rel {err:e})");
    }
}

/// ComfyUI `sgm_uniform` for 8 steps, which is also `normal` for 9 points without its
/// second-to-last σ (the discard-penultimate rule of DPM2/UniPC).
const SGM_UNIFORM_8: [f64; 9] = [
    1.461464596e+01,
    7.301984310e+00,
    4.086082458e+00,
    2.495968103e+00,
    1.615581036e+00,
    1.071159720e+00,
    6.951500177e-01,
    3.997021019e-01,
    0.0,
];

/// ComfyUI `normal`, `sgm_uniform`, `simple`, `ddim_uniform` (its 7-step quirk: 8 σs) and
/// the discard-penultimate rule of DPM2/UniPC; k-diffusion Karras and exponential; the beta
/// schedule of A1111/diffusers. 8 steps, SDXL betas.
#[test]
fn sigma_tables_match_independent_values() {
    use SamplerKind::*;
    use SigmaSchedule::*;
    let tables: [(&str, SamplerKind, SigmaSchedule, usize, [f64; 9]); 9] = [
        (
            "normal",
            Euler,
            Normal,
            8,
            [
                1.461464596e+01,
                6.678000927e+00,
                3.522058010e+00,
                2.060642719e+00,
                1.276832819e+00,
                7.912602425e-01,
                4.396663606e-01,
                2.916753665e-02,
                0.0,
            ],
        ),
        ("sgm_uniform", Euler, SgmUniform, 8, SGM_UNIFORM_8),
        (
            "simple",
            Euler,
            Simple,
            8,
            [
                1.461464691e+01,
                7.297353745e+00,
                4.081730843e+00,
                2.492531776e+00,
                1.612887025e+00,
                1.068951845e+00,
                6.932054162e-01,
                3.977463543e-01,
                0.0,
            ],
        ),
        (
            "ddim_uniform",
            Euler,
            DdimUniform,
            8,
            [
                7.371846676e+00,
                4.116698265e+00,
                2.510922432e+00,
                1.623692989e+00,
                1.076031566e+00,
                6.983985901e-01,
                4.022183418e-01,
                4.131447896e-02,
                0.0,
            ],
        ),
        (
            "ddim_uniform 7 steps",
            Euler,
            DdimUniform,
            7,
            [
                1.426511383e+01,
                6.570651531e+00,
                3.485456467e+00,
                2.047312737e+00,
                1.272063494e+00,
                7.900615335e-01,
                4.403095841e-01,
                4.131447896e-02,
                0.0,
            ],
        ),
        (
            "karras",
            Euler,
            Karras,
            8,
            [
                1.461464691e+01,
                7.902944469e+00,
                4.027746208e+00,
                1.910362896e+00,
                8.288717365e-01,
                3.211216842e-01,
                1.071993905e-01,
                2.916753478e-02,
                0.0,
            ],
        ),
        (
            "exponential",
            Euler,
            Exponential,
            8,
            [
                1.461464691e+01,
                6.012982716e+00,
                2.473953792e+00,
                1.017872103e+00,
                4.187885893e-01,
                1.723044398e-01,
                7.089214160e-02,
                2.916753478e-02,
                0.0,
            ],
        ),
        (
            "beta",
            Euler,
            Beta,
            8,
            [
                1.461464691e+01,
                1.357700636e+01,
                1.145176481e+01,
                8.759598612e+00,
                5.884215835e+00,
                3.192049633e+00,
                1.066808090e+00,
                2.916753478e-02,
                0.0,
            ],
        ),
        // normal(9) minus its second-to-last σ (ComfyUI DISCARD_PENULTIMATE_SIGMA_SAMPLERS).
        ("dpm_2 normal", Dpm2, Normal, 8, SGM_UNIFORM_8),
    ];
    for (name, kind, schedule, steps, want) in tables {
        assert_close(name, &sigmas(kind, schedule, steps), &want, 2e-6);
    }
    // UniPC under a ComfyUI schedule discards too; under Karras it does not.
    assert_eq!(
        sigmas(SamplerKind::UniPc, SigmaSchedule::Normal, 8),
        sigmas(SamplerKind::Dpm2, SigmaSchedule::Normal, 8)
    );
    assert_eq!(
        sigmas(SamplerKind::UniPc, SigmaSchedule::Karras, 8),
        sigmas(SamplerKind::Euler, SigmaSchedule::Karras, 8)
    );
}

/// ComfyUI feeds the nearest training index; the initial noise follows its `max_denoise`
/// rule (σ_0 at the model's σ_max → `sqrt(1+σ²)`).
#[test]
fn comfy_schedules_use_nearest_index_timesteps() {
    let cfg = ScheduleConfig::sdxl();
    let cases: [(SigmaSchedule, [f64; 8]); 3] = [
        (
            SigmaSchedule::Normal,
            [999.0, 856.0, 714.0, 571.0, 428.0, 285.0, 143.0, 0.0],
        ),
        (
            SigmaSchedule::Simple,
            [999.0, 874.0, 749.0, 624.0, 499.0, 374.0, 249.0, 124.0],
        ),
        (
            SigmaSchedule::SgmUniform,
            [999.0, 874.0, 749.0, 624.0, 499.0, 375.0, 250.0, 125.0],
        ),
    ];
    for (schedule, want) in cases {
        let s = Sampler::new(SamplerKind::Euler, schedule, &cfg, 8).unwrap();
        for (k, (got, want)) in s.timesteps().iter().zip(want).enumerate() {
            if schedule == SigmaSchedule::SgmUniform && k == 4 {
                // σ(499.5) is the geometric mean of σ(499) and σ(500): a tie that one ulp
                // of float32 `log` decides (numpy says 499, Rust's `ln` 500).
                assert!(*got == 499.0 || *got == 500.0, "{got}");
                continue;
            }
            assert_eq!(*got, want, "{schedule:?} step {k}");
        }
        let s0 = s.sigmas()[0];
        assert!((s.init_noise_sigma() - (s0 * s0 + 1.0).sqrt()).abs() < 1e-5);
    }
    // ddim_uniform starts below σ_max: plain σ_0.
    let s = Sampler::new(SamplerKind::Euler, SigmaSchedule::DdimUniform, &cfg, 8).unwrap();
    assert_eq!(s.init_noise_sigma(), s.sigmas()[0]);
}

/// The final latents of every sampler (4 Karras steps) on the fake denoiser equal the
/// float64 k-diffusion transcription.
#[test]
fn sampler_updates_match_k_diffusion() {
    let want: [(&str, [f64; 2]); 10] = [
        ("euler", [4.4632832513e-01, 1.2069054136e-01]),
        ("euler_a", [5.9671495284e-01, -1.4504670698e-02]),
        ("heun", [4.8233558572e-01, -4.2425069182e-01]),
        ("dpm_2", [4.5842502125e-01, -2.8079857717e-01]),
        ("dpm_2_a", [-5.8692671134e-01, -1.3462325894e-01]),
        ("dpmpp_2m", [1.9308772922e-01, -3.3135095189e-01]),
        ("dpmpp_sde", [-1.9466831899e-01, 1.8635638927e-01]),
        ("dpmpp_2m_sde", [-4.4371380363e-01, -8.4802031797e-01]),
        ("dpmpp_3m_sde", [-8.8628210711e-01, -1.4172334147e+00]),
        ("lcm", [5.7920027106e-01, -4.3133586259e-02]),
    ];
    let dev = Device::Cpu;
    for (name, expected) in want {
        let kind = SamplerKind::parse(name).unwrap();
        let sampler =
            Sampler::new(kind, SigmaSchedule::Karras, &ScheduleConfig::sdxl(), 4).unwrap();
        let mut rngs = vec![ImageRng::new(NoiseKind::Cpu, 7)];
        let sde = |s: f32, sn: f32| -> Result<Tensor, SamplingError> {
            let (s, sn) = (s as f64, sn as f64);
            let v = [(3.0 * s + sn).sin() as f32, (s - 2.0 * sn).cos() as f32];
            Ok(Tensor::from_vec(v.to_vec(), (1, 1, 1, 2), &Device::Cpu)?)
        };
        let mut noise = SamplerNoise::new(&mut rngs, &[7], &[1, 1, 2], &dev, SdeNoise::Brownian)
            .unwrap()
            .with_sde_source(Box::new(sde));
        let x = Tensor::new(&[[[[5f32, -3.0]]]], &dev).unwrap();
        let mut model = |x: &Tensor, s: f32, _t: f64| -> Result<Tensor, SamplingError> {
            let s = s as f64;
            Ok(x.affine(1.0 / (1.0 + s * s), 0.05 * s)?)
        };
        let mut steps = 0;
        let mut on_step = |i: StepInfo<'_>| -> Result<(), SamplingError> {
            steps = i.step;
            Ok(())
        };
        let out = sampler
            .sample(x, 0, &mut noise, &mut model, &mut on_step)
            .unwrap();
        assert_eq!(steps, 4, "{name}");
        let got = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (g, w) in got.iter().zip(expected) {
            assert!(
                (*g as f64 - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{name}: {got:?} vs {expected:?}"
            );
        }
    }
}

/// The schedule tables recorded by the fixture tools (`reference-samplers/schedules/
/// schedules.json`): diffusers' `set_timesteps` for 1–30 steps on every spacing and σ option
/// of the Euler, DPM-Solver, DDIM and LCM classes (timesteps, σs, `init_noise_sigma`), and
/// ComfyUI's schedule formulas on diffusers' σ table.
#[test]
fn schedule_tables_match_recorded_references() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference-samplers/schedules/schedules.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let f64s = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let mut checked = 0;
    for e in doc["diffusers"].as_array().unwrap() {
        let kw = &e["kwargs"];
        let kind = match e["class"].as_str().unwrap() {
            "EulerDiscreteScheduler" => SamplerKind::Euler,
            "DPMSolverMultistepScheduler" => SamplerKind::DpmPp2m,
            "DDIMScheduler" => SamplerKind::Ddim,
            "LCMScheduler" => SamplerKind::Lcm,
            other => panic!("class {other}"),
        };
        let schedule = if kw["use_karras_sigmas"] == true {
            SigmaSchedule::Karras
        } else if kw["use_exponential_sigmas"] == true {
            SigmaSchedule::Exponential
        } else if kw["use_beta_sigmas"] == true {
            SigmaSchedule::Beta
        } else {
            SigmaSchedule::parse(kw["timestep_spacing"].as_str().unwrap_or("default")).unwrap()
        };
        let mut cfg = ScheduleConfig::sdxl();
        if kw["rescale_betas_zero_snr"] == true {
            cfg = ScheduleConfig::sdxl_v_pred_ztsnr();
        }
        let steps = e["steps"].as_u64().unwrap() as usize;
        // diffusers' Euler takes the Karras/exponential/beta range from its spaced σs, and a
        // 1-step `linspace` spacing is the single point t = 0: a 1-step "schedule" at σ_min.
        // We keep the model's full range (k-diffusion) there too.
        if kind == SamplerKind::Euler
            && steps == 1
            && kw["timestep_spacing"] == "linspace"
            && schedule != SigmaSchedule::Linspace
        {
            continue;
        }
        let s = Sampler::new(kind, schedule, &cfg, steps).unwrap();
        let what = format!("{} {kw} {steps} steps", e["class"]);
        let want_t = f64s(&e["timesteps"]);
        assert_eq!(s.timesteps().len(), want_t.len(), "{what}: timesteps");
        for (g, w) in s.timesteps().iter().zip(&want_t) {
            assert!((g - w).abs() <= 1e-3, "{what}: timestep {g} vs {w}");
        }
        if !e["sigmas"].is_null() && kind != SamplerKind::Ddim {
            // The zero-SNR rescale is float32 arithmetic on √ᾱ; torch's vectorised sqrt and
            // cumprod round a few low σs differently (≤ 2e-6 measured).
            let tol = if kw["rescale_betas_zero_snr"] == true {
                5e-6
            } else {
                1e-6
            };
            assert_close(&what, s.sigmas(), &f64s(&e["sigmas"]), tol);
        }
        // VP-form classes start from unit noise: ours is k-space, sqrt(σ0²+1) times that.
        let s0 = s.sigmas()[0];
        let init = match kind {
            SamplerKind::Euler => s.init_noise_sigma(),
            _ => s.init_noise_sigma() / (s0 * s0 + 1.0).sqrt(),
        };
        let want_init = e["init_noise_sigma"].as_f64().unwrap();
        assert!(
            ((init as f64 - want_init) / want_init).abs() <= 1e-6,
            "{what}: init_noise_sigma {init} vs {want_init}"
        );
        checked += 1;
    }
    for e in doc["comfyui_formulas"].as_array().unwrap() {
        let name = e["schedule"].as_str().unwrap();
        // Our `beta` is A1111's/diffusers' (linear in σ, checked above), not ComfyUI's; and
        // only diffusers' σ table is ours.
        if e["table"] != "diffusers" || name == "beta" {
            continue;
        }
        let steps = e["steps"].as_u64().unwrap() as usize;
        let schedule = SigmaSchedule::parse(name).unwrap();
        let got = sigmas(SamplerKind::Euler, schedule, steps);
        assert_close(&format!("{name} {steps}"), &got, &f64s(&e["sigmas"]), 2e-6);
        checked += 1;
    }
    assert!(checked > 100, "{checked}");
}
