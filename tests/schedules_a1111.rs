//! A1111 1.10's schedule types ("Schedule type"): σ lists against a NumPy port of A1111's
//! formulas (`tests/fixtures/tools/a1111_schedules.py` → `tests/fixtures/a1111/schedules.json`),
//! A1111's names and labels, and every new schedule once through the real pipeline (mini-m
//! fixture, CPU, f32).

use std::path::Path;

mod parity_support;

use parity_support::{tiny_request, txt2img_latents};
use sdxl_worker::sampling::names::parse_schedule_label;
use sdxl_worker::sampling::{Sampler, SamplerKind, ScheduleConfig, SigmaSchedule};

/// σs are compared relative to the reference (zeros exactly): the port evaluates A1111's
/// formulas in float64 on A1111's float32 table, we hand the sampler float32 σs.
const SIGMA_RTOL: f64 = 1e-6;

fn fixture() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/a1111/schedules.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn a1111(name: &str) -> SigmaSchedule {
    SigmaSchedule::parse_a1111(name)
        .unwrap()
        .unwrap_or_else(|| panic!("{name} is Automatic"))
}

#[test]
fn sigma_lists_match_the_numpy_port() {
    let doc = fixture();
    let cfg = ScheduleConfig::sdxl();
    let table = cfg.a1111_train_sigmas().unwrap();
    // A1111's σmin/σmax are the ends of its table.
    for (got, key) in [(table[0], "sigma_min"), (table[999], "sigma_max")] {
        let want = doc[key].as_f64().unwrap();
        assert!(
            (got as f64 - want).abs() <= SIGMA_RTOL * want,
            "{key}: {got} vs {want}"
        );
    }
    let mut worst = (0f64, String::new());
    let mut checked = std::collections::BTreeSet::new();
    for case in doc["cases"].as_array().unwrap() {
        let name = case["schedule"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let want: Vec<f64> = case["sigmas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let schedule = a1111(name);
        let sampler = Sampler::new(SamplerKind::Euler, schedule, &cfg, steps).unwrap();
        let got = sampler.sigmas();
        assert_eq!(got.len(), want.len(), "{name} {steps}: {got:?} vs {want:?}");
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let err = if w == 0.0 {
                assert_eq!(g, 0.0, "{name} {steps} σ[{i}]");
                0.0
            } else {
                (g as f64 - w).abs() / w.abs()
            };
            assert!(
                err <= SIGMA_RTOL,
                "{name} {steps} σ[{i}]: {g} vs {w} ({err:e} relative)"
            );
            if err > worst.0 {
                worst = (err, format!("{name} {steps} σ[{i}]"));
            }
        }
        checked.insert(name.to_string());
    }
    eprintln!("largest σ error: {:e} relative at {}", worst.0, worst.1);
    // Every A1111 schedule but Automatic is in the fixture.
    assert_eq!(checked.len(), 11, "{checked:?}");
}

#[test]
fn a1111_names_and_labels_round_trip() {
    for s in SigmaSchedule::A1111 {
        assert_eq!(SigmaSchedule::parse(s.name()).unwrap(), s, "{}", s.name());
        assert_eq!(
            parse_schedule_label(s.name()).unwrap(),
            Some(s),
            "{}",
            s.name()
        );
        assert_eq!(SigmaSchedule::parse_a1111(s.label()).unwrap(), Some(s));
        assert_eq!(
            SigmaSchedule::parse_a1111(&s.label().to_uppercase()).unwrap(),
            Some(s)
        );
        assert!(s.is_a1111() && !s.is_comfy(), "{s:?}");
    }
    // A1111's API names, its labels and its one alias.
    let pairs = [
        ("uniform", "Uniform", SigmaSchedule::Uniform),
        ("karras", "Karras", SigmaSchedule::Karras),
        ("exponential", "Exponential", SigmaSchedule::Exponential),
        (
            "polyexponential",
            "Polyexponential",
            SigmaSchedule::Polyexponential,
        ),
        ("sgm_uniform", "SGM Uniform", SigmaSchedule::A1111SgmUniform),
        ("kl_optimal", "KL Optimal", SigmaSchedule::KlOptimal),
        (
            "align_your_steps",
            "Align Your Steps",
            SigmaSchedule::AlignYourSteps,
        ),
        ("simple", "Simple", SigmaSchedule::A1111Simple),
        ("normal", "Normal", SigmaSchedule::A1111Normal),
        ("ddim", "DDIM", SigmaSchedule::A1111Ddim),
        ("beta", "Beta", SigmaSchedule::Beta),
    ];
    for (name, label, s) in pairs {
        assert_eq!(SigmaSchedule::parse_a1111(name).unwrap(), Some(s), "{name}");
        assert_eq!(
            SigmaSchedule::parse_a1111(label).unwrap(),
            Some(s),
            "{label}"
        );
        assert_eq!(s.label(), label);
    }
    assert_eq!(
        SigmaSchedule::parse_a1111("SGMUniform").unwrap(),
        Some(SigmaSchedule::A1111SgmUniform)
    );
    assert_eq!(SigmaSchedule::parse_a1111(" Automatic ").unwrap(), None);
    // The general table keeps ComfyUI's meaning where the names collide; A1111-only
    // spellings get A1111's schedule.
    assert_eq!(
        parse_schedule_label("normal").unwrap(),
        Some(SigmaSchedule::Normal)
    );
    for (label, s) in [
        ("Uniform", SigmaSchedule::Uniform),
        ("Polyexponential", SigmaSchedule::Polyexponential),
        ("KL Optimal", SigmaSchedule::KlOptimal),
        ("Align Your Steps", SigmaSchedule::AlignYourSteps),
    ] {
        assert_eq!(parse_schedule_label(label).unwrap(), Some(s), "{label}");
    }
    let err = SigmaSchedule::parse_a1111("linear_quadratic")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("scheduler") && err.contains("linear_quadratic") && err.contains("kl_optimal"),
        "{err}"
    );
}

/// A1111 runs its schedules through k-diffusion: the txt2img noise is scaled by σ_0 and the
/// UNet gets fractional timesteps, for the multistep samplers too (diffusers would scale by
/// sqrt(σ_0² + 1) and round).
#[test]
fn a1111_schedules_use_kdiffusion_noise_and_timesteps() {
    let cfg = ScheduleConfig::sdxl();
    let s = Sampler::new(SamplerKind::DpmPp2m, SigmaSchedule::Uniform, &cfg, 30).unwrap();
    assert_eq!(s.init_noise_sigma(), s.sigmas()[0]);
    let want = 999.0 * 28.0 / 29.0;
    assert!(
        (s.timesteps()[1] - want).abs() < 2e-3,
        "{} vs {want}",
        s.timesteps()[1]
    );
    // ComfyUI's `normal` lays out the same σs but feeds the nearest index.
    let comfy = Sampler::new(SamplerKind::DpmPp2m, SigmaSchedule::Normal, &cfg, 30).unwrap();
    assert_eq!(comfy.timesteps()[1], want.round());
    // KL Optimal ends at σmin, which the last step denoises to.
    let kl = Sampler::new(SamplerKind::Euler, SigmaSchedule::KlOptimal, &cfg, 10).unwrap();
    assert_eq!(kl.num_steps(), 10);
    let last = *kl.sigmas().last().unwrap();
    assert!((last - 0.029_167_5).abs() < 1e-6, "{last}");
}

#[test]
fn every_a1111_schedule_runs_through_the_pipeline() {
    let p = parity_support::pipeline();
    let mut results: Vec<(SigmaSchedule, Vec<f32>)> = Vec::new();
    for schedule in SigmaSchedule::A1111 {
        let req = tiny_request(SamplerKind::DpmPp2m, schedule, 11);
        let a = txt2img_latents(p, &req, &[req.seed]);
        assert!(a.iter().all(|v| v.is_finite()), "{schedule:?}: non-finite");
        assert!(
            a == txt2img_latents(p, &req, &[req.seed]),
            "{schedule:?}: two runs differ"
        );
        results.push((schedule, a));
    }
    // Normal and Uniform are the same σs in A1111; every other pair differs (SGM Uniform and
    // Simple meet at timesteps 999, 666, 333 for 3 steps, but σ(t) = exp(log σ_t) is not
    // always σ_t to the last bit).
    let get = |s: SigmaSchedule| &results.iter().find(|(k, _)| *k == s).unwrap().1;
    assert!(get(SigmaSchedule::Uniform) == get(SigmaSchedule::A1111Normal));
    let mut distinct: Vec<&Vec<f32>> = Vec::new();
    for (_, r) in &results {
        if !distinct.contains(&r) {
            distinct.push(r);
        }
    }
    assert_eq!(distinct.len(), results.len() - 1);
}
