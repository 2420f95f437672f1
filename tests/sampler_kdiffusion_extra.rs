//! DPM++ 2S a, DPM fast, DPM adaptive, Restart and DDIM CFG++ against a float64 NumPy
//! re-derivation of k-diffusion's `sampling.py` and A1111's `restart_sampler` / `ddim_cfgpp`
//! (`tests/fixtures/tools/sampler_kdiffusion_extra.py`, run with the pinned reference venv),
//! on the fake denoiser of `sampler_formulas.rs`: guided D(x, σ) = x/(1+σ²) + 0.05σ,
//! unconditional D_u(x, σ) = x/(1+σ²) − 0.03σ, x = [5, −3], generator noise from seed 7 (CPU
//! generator, one draw of two values per noise call, as `torch.randn((1,1,1,2))`).
//!
//! Tolerance: 5e-5 of the largest |value| of each expected pair. The worker runs in float32;
//! the re-derivation in float64 (with the float32 σ table, and torch's float32
//! `get_sigmas_karras` where k-diffusion calls it).

use std::cell::Cell;

use candle_core::{Device, Tensor};
use sdxl_worker::sampling::sampler::Prediction;
use sdxl_worker::sampling::{
    ImageRng, NoiseKind, Sampler, SamplerKind, SamplerNoise, SamplingError, ScheduleConfig,
    SdeNoise, SigmaSchedule, StepInfo,
};

const TOL: f64 = 5e-5;

/// (label, sampler, schedule, steps, expected x, expected model calls, expected step callbacks)
type Case = (
    &'static str,
    SamplerKind,
    SigmaSchedule,
    usize,
    [f64; 2],
    usize,
    usize,
);

struct Outcome {
    x: [f64; 2],
    calls: usize,
    steps: usize,
}

fn run(kind: SamplerKind, schedule: SigmaSchedule, steps: usize) -> Outcome {
    let dev = Device::Cpu;
    let sampler = Sampler::new(kind, schedule, &ScheduleConfig::sdxl(), steps).unwrap();
    let mut rngs = vec![ImageRng::new(NoiseKind::Cpu, 7)];
    let mut noise =
        SamplerNoise::new(&mut rngs, &[7], &[1, 1, 2], &dev, SdeNoise::Brownian).unwrap();
    let x = Tensor::new(&[[[[5f32, -3.0]]]], &dev).unwrap();
    let calls = Cell::new(0usize);
    let mut model = |x: &Tensor, s: f32, _t: f64| -> Result<Prediction, SamplingError> {
        calls.set(calls.get() + 1);
        let s = s as f64;
        Ok(Prediction {
            denoised: x.affine(1.0 / (1.0 + s * s), 0.05 * s)?,
            uncond: Some(x.affine(1.0 / (1.0 + s * s), -0.03 * s)?),
        })
    };
    let mut steps_seen = 0;
    let mut on_step = |i: StepInfo<'_>| -> Result<(), SamplingError> {
        steps_seen += 1;
        assert!(i
            .x
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite()));
        Ok(())
    };
    let out = sampler
        .sample_cfg(x, 0, &mut noise, &mut model, &mut on_step)
        .unwrap();
    let v = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    Outcome {
        x: [v[0] as f64, v[1] as f64],
        calls: calls.get(),
        steps: steps_seen,
    }
}

/// Largest error relative to the largest |expected| value.
fn rel_err(got: [f64; 2], want: [f64; 2]) -> f64 {
    let scale = want[0].abs().max(want[1].abs());
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / scale)
        .fold(0.0, f64::max)
}

#[test]
fn extra_samplers_match_the_numpy_rederivation() {
    use SamplerKind::*;
    use SigmaSchedule::*;
    let cases: [Case; 13] = [
        (
            "dpmpp_2s_a karras 4",
            DpmPp2sAncestral,
            Karras,
            4,
            [5.5133471323e-01, 1.0193250982e-01],
            7,
            4,
        ),
        (
            "dpmpp_2s_a karras 20",
            DpmPp2sAncestral,
            Karras,
            20,
            [4.0814255476e+00, 5.1855994888e-01],
            39,
            20,
        ),
        // DPM fast's own t-spacing: 8 calls = orders [3, 3, 2], 9 = [3, 3, 2, 1], 10 = [3, 3, 3, 1].
        (
            "dpm_fast 8",
            DpmFast,
            Karras,
            8,
            [1.2573844894e+00, 1.1299141387e+00],
            8,
            3,
        ),
        (
            "dpm_fast 9",
            DpmFast,
            Karras,
            9,
            [1.2543381612e+00, 3.4742116866e-01],
            9,
            4,
        ),
        (
            "dpm_fast 10",
            DpmFast,
            Karras,
            10,
            [1.1271434762e+00, 2.9309061632e-01],
            10,
            4,
        ),
        // From the start DPM fast spans the model's σ range whatever the schedule (A1111).
        (
            "dpm_fast 9 on leading spacing",
            DpmFast,
            Default,
            9,
            [1.2543381612e+00, 3.4742116866e-01],
            9,
            4,
        ),
        // 36 model calls: 10 accepted and 2 rejected attempts, whatever the step count.
        (
            "dpm_adaptive",
            DpmAdaptive,
            Karras,
            4,
            [1.2976276918e+00, 6.2939386999e-04],
            36,
            10,
        ),
        (
            "dpm_adaptive 25 steps",
            DpmAdaptive,
            Karras,
            25,
            [1.2976276918e+00, 6.2939386999e-04],
            36,
            10,
        ),
        // Below 20 steps Restart is Heun; from 20 it restarts once, from 36 twice.
        (
            "restart karras 4",
            Restart,
            Karras,
            4,
            [4.8233551954e-01, -4.2425080530e-01],
            7,
            4,
        ),
        (
            "restart karras 20",
            Restart,
            Karras,
            20,
            [1.5538006913e-01, 7.7818208446e-01],
            39,
            20,
        ),
        (
            "restart karras 40",
            Restart,
            Karras,
            40,
            [9.9530658436e-01, -5.8611387384e-01],
            79,
            40,
        ),
        (
            "ddim_cfgpp karras 4",
            DdimCfgPp,
            Karras,
            4,
            [5.2562678374e-01, 1.9998887805e-01],
            4,
            4,
        ),
        (
            "ddim_cfgpp default 4",
            DdimCfgPp,
            Default,
            4,
            [1.0808300198e+00, -3.0795652919e-01],
            4,
            4,
        ),
    ];
    let mut worst: f64 = 0.0;
    for (name, kind, schedule, steps, want, calls, callbacks) in cases {
        let got = run(kind, schedule, steps);
        let err = rel_err(got.x, want);
        worst = worst.max(err);
        assert!(err <= TOL, "{name}: {:?} vs {want:?} (rel {err:e})", got.x);
        assert_eq!(got.calls, calls, "{name}: model calls");
        assert_eq!(got.steps, callbacks, "{name}: step callbacks");
    }
    let got = run(DdimCfgPp, Default, 10);
    let err = rel_err(got.x, [1.1034285666e+00, 2.6996180390e-01]);
    assert!(err <= TOL, "ddim_cfgpp default 10: rel {err:e}");
    eprintln!("worst relative error {:e}", worst.max(err));
}

/// Without an unconditional prediction DDIM CFG++ is DDIM, and through `sample` (no
/// unconditional prediction) it is too.
#[test]
fn ddim_cfgpp_without_uncond_is_ddim() {
    let dev = Device::Cpu;
    let cfg = ScheduleConfig::sdxl();
    let go = |kind: SamplerKind| -> Vec<f32> {
        let s = Sampler::new(kind, SigmaSchedule::Default, &cfg, 6).unwrap();
        let mut rngs = vec![ImageRng::new(NoiseKind::Cpu, 1)];
        let mut noise =
            SamplerNoise::new(&mut rngs, &[1], &[1, 1, 2], &dev, SdeNoise::Brownian).unwrap();
        let x = Tensor::new(&[[[[2f32, -1.0]]]], &dev).unwrap();
        let mut model = |x: &Tensor, s: f32, _t: f64| -> Result<Tensor, SamplingError> {
            Ok(x.affine(1.0 / (1.0 + (s * s) as f64), 0.1)?)
        };
        s.sample(x, 0, &mut noise, &mut model, &mut |_| Ok(()))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (a, b) = (go(SamplerKind::DdimCfgPp), go(SamplerKind::Ddim));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{a:?} vs {b:?}");
    }
    assert_eq!(SamplerKind::DdimCfgPp.guidance_multiplier(), 1.0 / 12.5);
    assert_eq!(SamplerKind::Ddim.guidance_multiplier(), 1.0);
}

/// A1111 labels, k-diffusion names, A1111 aliases (also the old combined ones) and Civitai's
/// spellings, with the schedule each implies; the canonical names and labels round-trip.
#[test]
fn extra_sampler_names() {
    use sdxl_worker::sampling::names::parse_sampler_label;
    use SamplerKind::*;
    use SigmaSchedule::*;
    let cases = [
        ("DPM++ 2S a", DpmPp2sAncestral, Karras),
        ("dpmpp_2s_ancestral", DpmPp2sAncestral, Karras),
        ("k_dpmpp_2s_a", DpmPp2sAncestral, Karras),
        ("DPM2SA", DpmPp2sAncestral, Karras),
        ("DPM++ 2S a Karras", DpmPp2sAncestral, Karras),
        ("DPM2SAKarras", DpmPp2sAncestral, Karras),
        ("DPM fast", DpmFast, Normal),
        ("dpm_fast", DpmFast, Normal),
        ("DPMFast", DpmFast, Normal),
        ("k_dpm_fast", DpmFast, Normal),
        ("DPM adaptive", DpmAdaptive, Normal),
        ("dpm_adaptive", DpmAdaptive, Normal),
        ("DPMAdaptive", DpmAdaptive, Normal),
        ("k_dpm_ad", DpmAdaptive, Normal),
        ("Restart", Restart, Karras),
        ("DDIM CFG++", DdimCfgPp, Default),
        ("ddim_cfgpp", DdimCfgPp, Default),
    ];
    for (label, kind, schedule) in cases {
        assert_eq!(
            parse_sampler_label(label).unwrap(),
            (kind, schedule),
            "{label}"
        );
    }
    for kind in [DpmPp2sAncestral, DpmFast, DpmAdaptive, Restart, DdimCfgPp] {
        assert_eq!(SamplerKind::parse(kind.name()).unwrap(), kind);
        assert_eq!(SamplerKind::parse(kind.label()).unwrap(), kind);
        assert_eq!(parse_sampler_label(kind.label()).unwrap().0, kind);
    }
    let e = parse_sampler_label("DPM3SA").unwrap_err().to_string();
    assert!(e.contains("sampler") && e.contains("DPM fast"), "{e}");
}
