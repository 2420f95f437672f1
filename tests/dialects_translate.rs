//! The client dialects without a model: each dialect's requests translate into the request
//! schema with the intended values, every sampler/scheduler name of each dialect reaches the
//! intended sampler and schedule (or, for samplers the engine does not run yet, the intended
//! label), unsupported features are refused by field name, and the envelope's listings have
//! A1111's shapes.

use std::path::Path;

use serde_json::{json, Value};

use sdxl_worker::handler::dialects::{
    self, a1111, civitai, worker_sdxl, Catalog, CatalogModel, Dialect, DialectArgs, ResponseFormat,
    Routed, Translated,
};
use sdxl_worker::handler::request::{self, Defaults, GenerateInput};
use sdxl_worker::sampling::names;
use sdxl_worker::sampling::{NoiseKind, SamplerKind as S, SigmaSchedule as Sch};

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dialects")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn catalog() -> Catalog {
    Catalog {
        checkpoint: CatalogModel {
            name: "mini-m".into(),
            file_name: "mini-m.fp16.safetensors".into(),
            sha256: "A0EE8945E11FEAF7FAA94083BB12B1207D5E40B070BB3DFE04395B31942BBFA0".into(),
            autov2: "A0EE8945E1".into(),
            civitai_model_id: Some(101055),
            civitai_version_id: Some(128078),
            air: Some("urn:air:sdxl:checkpoint:civitai:101055@128078".into()),
        },
        loras: vec![CatalogModel {
            name: "mini-lora".into(),
            file_name: "mini-m.kohya_ldm.fp16.safetensors".into(),
            sha256: "CA2660BC".into(),
            autov2: "CA2660BC72".into(),
            civitai_model_id: Some(58390),
            civitai_version_id: Some(62833),
            air: None,
        }],
        vae: None,
        unchecked: false,
    }
}

fn route_with(input: &Value, args: &DialectArgs) -> Result<Routed, Vec<String>> {
    dialects::route(input, args, &catalog()).map_err(|e| e.0)
}

fn translate(input: &Value) -> Translated {
    match route_with(input, &DialectArgs::default()) {
        Ok(Routed::Generate(t)) => t,
        other => panic!("not a generation: {other:?}"),
    }
}

/// The request defaults with the fixture model's 64 px minimum side.
fn defaults() -> Defaults {
    Defaults {
        min_side: 64,
        ..Defaults::default()
    }
}

fn parsed(input: &Value) -> (Translated, GenerateInput) {
    let t = translate(input);
    let r = request::parse(&t.input, &defaults()).unwrap_or_else(|e| panic!("{input}: {e}"));
    (t, r)
}

fn errors(input: &Value) -> String {
    match route_with(input, &DialectArgs::default()) {
        Err(e) => e.join("\n"),
        Ok(Routed::Generate(t)) => match request::parse(&t.input, &defaults()) {
            Err(e) => e.0.join("\n"),
            Ok(_) => panic!("accepted: {input}"),
        },
        Ok(Routed::Answer(v)) => panic!("answered: {v}"),
    }
}

/// What a sampler name must become: a sampler the engine runs with its schedule, or (not in
/// the engine yet) the label the translation hands to the name parser.
#[derive(Debug)]
enum Want {
    Runs(S, Sch),
    Label(&'static str, Option<&'static str>),
}

/// A `Label` case: once the engine knows the label, the request runs with the sampler the
/// name parser gives it; until then it is refused naming the client's field.
fn check_label(input: &Value, field: &str, label: &str) {
    match names::parse_sampler_label(label) {
        Ok((kind, _)) => assert_eq!(parsed(input).1.sampler, kind, "{input}"),
        Err(_) => {
            let e = errors(input);
            assert!(e.contains(&format!("field `{field}`")), "{e}");
        }
    }
}

#[test]
fn worker_sdxl_fixtures_translate_with_refiner_fields_noted() {
    for (source, input) in [
        (
            "test_input.json",
            fixture("worker_sdxl_test_input.json")["input"].clone(),
        ),
        (
            ".runpod/tests.json",
            fixture("worker_sdxl_hub_tests.json")["tests"][0]["input"].clone(),
        ),
    ] {
        let (t, r) = parsed(&input);
        assert_eq!(t.meta.dialect, Dialect::WorkerSdxl, "{source}");
        assert_eq!(t.meta.response, ResponseFormat::Runpod);
        assert_eq!(
            (r.sampler, r.schedule),
            (S::Euler, Sch::Default),
            "{source}"
        );
        assert_eq!((r.width, r.height, r.steps), (1024, 1024, 25));
        assert_eq!(r.guidance_scale, 7.5);
        assert_eq!(r.seed, input["seed"].as_u64());
        assert_eq!(
            r.negative_prompt.as_deref(),
            input["negative_prompt"].as_str()
        );
        assert_eq!(r.img2img, None);
        let mut ignored = t.meta.ignored_fields.clone();
        ignored.sort();
        assert_eq!(
            ignored,
            ["high_noise_frac", "refiner_inference_steps", "strength"],
            "{source}"
        );
        assert!(
            t.meta.notes.iter().all(|n| n.contains("refiner")),
            "{:?}",
            t.meta
        );
    }
}

#[test]
fn worker_sdxl_defaults_and_img2img() {
    let (_, r) = parsed(&json!({"prompt": "x", "refiner_inference_steps": 10}));
    assert_eq!((r.sampler, r.schedule), (S::Ddim, Sch::Default));
    assert_eq!((r.steps, r.guidance_scale), (25, 7.5));
    let (t, r) = parsed(
        &json!({"prompt": "x", "image_url": "https://example.com/a.png",
                                "strength": 0.5, "high_noise_frac": 0.8}),
    );
    assert_eq!(t.meta.dialect, Dialect::WorkerSdxl);
    assert_eq!(r.img2img.expect("img2img").strength, 0.5);
    let (_, r) = parsed(
        &json!({"prompt": "x", "image_url": "https://example.com/a.png",
                                "refiner_inference_steps": 10}),
    );
    assert_eq!(
        r.img2img.expect("img2img").strength,
        worker_sdxl::DEFAULT_STRENGTH
    );
    let e = errors(&json!({"prompt": "x", "strength": 0.3, "scheduler": "EulerA"}));
    assert!(
        e.contains("field `scheduler`") && e.contains("K_EULER"),
        "{e}"
    );
}

#[test]
fn worker_sdxl_scheduler_names() {
    let cases = [
        ("PNDM", Want::Label("PLMS", None)),
        ("KLMS", Want::Label("LMS", None)),
        ("DDIM", Want::Runs(S::Ddim, Sch::Default)),
        ("K_EULER", Want::Runs(S::Euler, Sch::Default)),
        (
            "K_EULER_ANCESTRAL",
            Want::Runs(S::EulerAncestral, Sch::Default),
        ),
        ("DPMSolverMultistep", Want::Runs(S::DpmPp2m, Sch::Default)),
        ("DPMSolverSinglestep", Want::Label("DPM++ 2S", None)),
    ];
    assert_eq!(cases.len(), worker_sdxl::SCHEDULERS.len());
    for (name, want) in cases {
        let input = json!({"prompt": "x", "strength": 0.3, "scheduler": name});
        match want {
            Want::Runs(s, sch) => {
                let r = parsed(&input).1;
                assert_eq!((r.sampler, r.schedule), (s, sch), "{name}");
            }
            Want::Label(label, _) => {
                assert_eq!(worker_sdxl::sampler_label(name), Some(label), "{name}");
                check_label(&input, "scheduler", label);
            }
        }
    }
}

#[test]
fn civitai_scheduler_names() {
    use Want::*;
    let cases = [
        ("EulerA", Runs(S::EulerAncestral, Sch::Normal)),
        ("Euler", Runs(S::Euler, Sch::Normal)),
        ("LMS", Label("LMS", None)),
        ("Heun", Runs(S::Heun, Sch::Normal)),
        ("DPM2", Runs(S::Dpm2, Sch::Normal)),
        ("DPM2A", Runs(S::Dpm2Ancestral, Sch::Normal)),
        ("DPM2SA", Label("DPM++ 2S a", Some("normal"))),
        ("DPM2M", Runs(S::DpmPp2m, Sch::Normal)),
        ("DPMSDE", Runs(S::DpmPpSde, Sch::Normal)),
        ("DPMFast", Label("DPM fast", None)),
        ("DPMAdaptive", Label("DPM adaptive", None)),
        ("LMSKarras", Label("LMS", Some("karras"))),
        ("DPM2Karras", Runs(S::Dpm2, Sch::Karras)),
        ("DPM2AKarras", Runs(S::Dpm2Ancestral, Sch::Karras)),
        ("DPM2SAKarras", Label("DPM++ 2S a", Some("karras"))),
        ("DPM2MKarras", Runs(S::DpmPp2m, Sch::Karras)),
        ("DPMSDEKarras", Runs(S::DpmPpSde, Sch::Karras)),
        ("DDIM", Runs(S::Ddim, Sch::Default)),
        ("PLMS", Label("PLMS", None)),
        ("UniPC", Runs(S::UniPc, Sch::Normal)),
        ("Undefined", Runs(S::DpmPp2m, Sch::Karras)),
        ("LCM", Runs(S::Lcm, Sch::SgmUniform)),
        ("DDPM", Label("ddpm", None)),
        ("DEIS", Label("deis", None)),
        ("DPM3MSDE", Runs(S::DpmPp3mSde, Sch::Exponential)),
    ];
    assert_eq!(cases.len(), civitai::SCHEDULERS.len());
    for (name, want) in cases {
        let mut input = fixture("civitai_text_to_image.json");
        input["params"]["scheduler"] = json!(name);
        match want {
            Runs(s, sch) => {
                let r = parsed(&input).1;
                assert_eq!((r.sampler, r.schedule), (s, sch), "{name}");
            }
            Label(label, schedule) => {
                assert_eq!(
                    civitai::scheduler_labels(name),
                    Some((label, schedule)),
                    "{name}"
                );
                check_label(&input, "params.scheduler", label);
            }
        }
    }
}

#[test]
fn a1111_sampler_and_schedule_names() {
    use Want::*;
    let cases = [
        ("DPM++ 2M", Runs(S::DpmPp2m, Sch::Karras)),
        ("DPM++ SDE", Runs(S::DpmPpSde, Sch::Karras)),
        ("DPM++ 2M SDE", Runs(S::DpmPp2mSde, Sch::Exponential)),
        ("DPM++ 2M SDE Heun", Label("DPM++ 2M SDE Heun", None)),
        ("DPM++ 2S a", Label("DPM++ 2S a", None)),
        ("DPM++ 3M SDE", Runs(S::DpmPp3mSde, Sch::Exponential)),
        ("Euler a", Runs(S::EulerAncestral, Sch::Normal)),
        ("Euler", Runs(S::Euler, Sch::Normal)),
        ("LMS", Label("LMS", None)),
        ("Heun", Runs(S::Heun, Sch::Normal)),
        ("DPM2", Runs(S::Dpm2, Sch::Karras)),
        ("DPM2 a", Runs(S::Dpm2Ancestral, Sch::Karras)),
        ("DPM fast", Label("DPM fast", None)),
        ("DPM adaptive", Label("DPM adaptive", None)),
        ("Restart", Label("Restart", None)),
        ("DDIM", Runs(S::Ddim, Sch::Default)),
        ("DDIM CFG++", Label("DDIM CFG++", None)),
        ("PLMS", Label("PLMS", None)),
        ("UniPC", Runs(S::UniPc, Sch::Normal)),
        ("LCM", Runs(S::Lcm, Sch::SgmUniform)),
        // ≤1.8 names carrying the schedule, split as A1111 1.9+ does.
        ("DPM++ 2M Karras", Runs(S::DpmPp2m, Sch::Karras)),
        (
            "DPM++ 2M SDE Exponential",
            Runs(S::DpmPp2mSde, Sch::Exponential),
        ),
        ("Euler a Karras", Runs(S::EulerAncestral, Sch::Karras)),
        ("DPM2 a Karras", Runs(S::Dpm2Ancestral, Sch::Karras)),
        ("Euler SGM Uniform", Runs(S::Euler, Sch::A1111SgmUniform)),
    ];
    assert_eq!(a1111::SAMPLERS.len() + 5, cases.len());
    for (name, want) in cases {
        let input = json!({"prompt": "x", "sampler_name": name, "n_iter": 1});
        match want {
            Runs(s, sch) => {
                let (t, r) = parsed(&input);
                assert_eq!(t.meta.dialect, Dialect::A1111);
                assert_eq!((r.sampler, r.schedule), (s, sch), "{name}");
            }
            Label(label, _) => {
                assert_eq!(translate_label(&input), label, "{name}");
                check_label(&input, "sampler_name", label);
            }
        }
    }

    // A1111's schedule types with A1111's definitions; "Automatic" is the sampler's default
    // schedule as for every other request.
    let schedules = [
        ("automatic", Some(Sch::Normal)),
        ("Automatic", Some(Sch::Normal)),
        ("uniform", Some(Sch::Uniform)),
        ("karras", Some(Sch::Karras)),
        ("Karras", Some(Sch::Karras)),
        ("exponential", Some(Sch::Exponential)),
        ("polyexponential", Some(Sch::Polyexponential)),
        ("sgm_uniform", Some(Sch::A1111SgmUniform)),
        ("SGM Uniform", Some(Sch::A1111SgmUniform)),
        ("kl_optimal", Some(Sch::KlOptimal)),
        ("align_your_steps", Some(Sch::AlignYourSteps)),
        ("Align Your Steps", Some(Sch::AlignYourSteps)),
        ("simple", Some(Sch::A1111Simple)),
        ("normal", Some(Sch::A1111Normal)),
        ("ddim", Some(Sch::A1111Ddim)),
        ("beta", Some(Sch::Beta)),
    ];
    for (name, want) in schedules {
        let input = json!({"prompt": "x", "sampler_name": "Euler", "scheduler": name});
        let label = a1111::schedule_label(name);
        match (want, names::parse_schedule_label(&label)) {
            (Some(sch), _) => assert_eq!(parsed(&input).1.schedule, sch, "{name}"),
            (None, Ok(_)) => {
                parsed(&input);
            }
            (None, Err(_)) => {
                let e = errors(&input);
                assert!(e.contains("field `scheduler`"), "{name}: {e}");
            }
        }
    }
}

/// The sampler label the A1111 translation hands on, before validation.
fn translate_label(input: &Value) -> String {
    let name = input["sampler_name"].as_str().unwrap();
    match a1111::split_schedule_suffix(name) {
        Some((head, _)) if !dialects::sampler_label_known(name) => head,
        _ => name.to_string(),
    }
}

#[test]
fn a1111_txt2img_payload_without_hires() {
    let input = fixture("a1111_txt2img.json");
    let (t, r) = parsed(&input);
    assert_eq!(t.meta.dialect, Dialect::A1111);
    assert_eq!(t.meta.response, ResponseFormat::A1111);
    assert_eq!((r.sampler, r.schedule), (S::DpmPp2m, Sch::Karras));
    assert_eq!((r.width, r.height, r.steps, r.num_images), (64, 64, 4, 2));
    assert_eq!(
        (r.guidance_scale, r.seed, r.clip_skip),
        (6.5, Some(1234), Some(2))
    );
    assert_eq!(r.noise, NoiseKind::Nv);
    assert_eq!(
        (r.subseed, r.hires, r.img2img.is_none()),
        (None, None, true)
    );
    let echo = t.meta.a1111.expect("A1111 echo");
    assert_eq!(echo.batch_size, 2);
    assert_eq!(echo.parameters["prompt"], input["prompt"]);

    // A1111's API defaults.
    let (t, r) = parsed(&json!({"prompt": "x", "seed": -1, "n_iter": 3}));
    assert_eq!(t.meta.dialect, Dialect::A1111);
    assert_eq!(
        (r.width, r.height, r.steps, r.guidance_scale),
        (512, 512, 50, 7.0)
    );
    assert_eq!((r.sampler, r.seed, r.num_images), (S::Euler, None, 3));
    assert_eq!(r.negative_prompt.as_deref(), Some(""));
    // A variation seed with −1 is drawn; strength 0 is no variation.
    let (_, r) =
        parsed(&json!({"prompt": "x", "n_iter": 1, "subseed": -1, "subseed_strength": 0.3}));
    assert_eq!(r.subseed.map(|s| s.1), Some(0.3));
    let e = errors(&json!({"prompt": "x", "batch_size": 4, "n_iter": 3}));
    assert!(e.contains("`batch_size` × `n_iter`"), "{e}");
}

#[test]
fn a1111_txt2img_payload_with_hires() {
    let input = fixture("a1111_txt2img_hr.json");
    let (_, r) = parsed(&input);
    let hr = r.hires.expect("hires");
    assert_eq!((hr.scale, hr.steps, hr.denoise), (2.0, 2, 0.6));
    assert_eq!((r.sampler, r.width), (S::EulerAncestral, 64));

    let with = |extra: Value| {
        let mut v = input.clone();
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    // An absolute target of the same aspect ratio is a scale.
    let (_, r) = parsed(&with(json!({"hr_resize_x": 96, "hr_resize_y": 96})));
    assert_eq!(r.hires.unwrap().scale, 1.5);
    let (_, r) = parsed(&with(json!({"hr_resize_y": 128})));
    assert_eq!(r.hires.unwrap().scale, 2.0);
    for (extra, field) in [
        (
            json!({"hr_upscaler": "R-ESRGAN 4x+"}),
            "field `hr_upscaler`",
        ),
        (
            json!({"hr_upscaler": "Latent (bicubic)"}),
            "field `hr_upscaler`",
        ),
        (
            json!({"hr_resize_x": 128, "hr_resize_y": 96}),
            "`hr_resize_x`/`hr_resize_y`",
        ),
        (
            json!({"hr_sampler_name": "DPM++ 2M"}),
            "field `hr_sampler_name`",
        ),
        (json!({"hr_scheduler": "Karras"}), "field `hr_scheduler`"),
        (json!({"hr_prompt": "another prompt"}), "field `hr_prompt`"),
        (
            json!({"hr_negative_prompt": "ugly"}),
            "field `hr_negative_prompt`",
        ),
        (json!({"hr_cfg": 9}), "field `hr_cfg`"),
        (
            json!({"hr_checkpoint_name": "other.safetensors"}),
            "field `hr_checkpoint_name`",
        ),
        (json!({"firstphase_width": 32}), "field `firstphase_width`"),
    ] {
        let e = errors(&with(extra.clone()));
        assert!(e.contains(field), "{extra}: {e}");
    }
    // The same values as the first pass are accepted.
    let (_, r) = parsed(&with(json!({"hr_sampler_name": "Euler a", "hr_cfg": 5,
                                     "hr_prompt": "a lighthouse at dusk"})));
    assert!(r.hires.is_some());
    // Without enable_hr the hires fields change nothing.
    let (t, r) = parsed(&with(
        json!({"enable_hr": false, "hr_upscaler": "ESRGAN_4x"}),
    ));
    assert_eq!(r.hires, None);
    assert!(t
        .meta
        .ignored_fields
        .contains(&"denoising_strength".to_string()));
}

#[test]
fn a1111_unsupported_features_are_refused_by_name() {
    for (extra, field) in [
        (json!({"restore_faces": true}), "field `restore_faces`"),
        (json!({"tiling": true}), "field `tiling`"),
        (
            json!({"alwayson_scripts": {"ADetailer": {"args": []}}}),
            "field `alwayson_scripts`",
        ),
        (json!({"script_name": "x/y/z plot"}), "field `script_name`"),
        (json!({"styles": ["cinematic"]}), "field `styles`"),
        (json!({"s_churn": 0.5}), "field `s_churn`"),
        (
            json!({"eta": 0.5, "sampler_name": "Euler a"}),
            "field `eta`",
        ),
        (
            json!({"s_noise": 0.9, "sampler_name": "DPM++ 2M SDE"}),
            "field `s_noise`",
        ),
        (
            json!({"override_settings": {"sd_vae": "sdxl_vae.safetensors"}}),
            "override_settings.sd_vae",
        ),
        (
            json!({"override_settings": {"sd_model_checkpoint": "other.safetensors"}}),
            "override_settings.sd_model_checkpoint",
        ),
        (
            json!({"override_settings": {"eta_noise_seed_delta": 31337}, "sampler_name": "Euler a"}),
            "override_settings.eta_noise_seed_delta",
        ),
        (
            json!({"override_settings": {"sd_hypernetwork": "x"}}),
            "override_settings.sd_hypernetwork",
        ),
        (
            json!({"sampler_name": "Nonexistent"}),
            "field `sampler_name`",
        ),
        (
            json!({"hr_upscaler": "Latent", "colour": 1}),
            "unknown field `colour`",
        ),
    ] {
        let mut input = json!({"prompt": "x", "n_iter": 1});
        for (k, v) in extra.as_object().unwrap() {
            input[k] = v.clone();
        }
        let e = errors(&input);
        assert!(e.contains(field), "{extra}: {e}");
    }
    // Inert settings and options at the values where they change nothing are accepted.
    let (t, r) = parsed(&json!({"prompt": "x", "n_iter": 1, "sampler_name": "Euler",
        "eta": 0.3, "s_tmin": 0.5, "s_noise": 0.5, "restore_faces": false, "send_images": true,
        "override_settings": {"sd_model_checkpoint": "mini-m.fp16.safetensors [a0ee8945e1]",
                              "eta_noise_seed_delta": 31337, "randn_source": "CPU",
                              "sd_vae": "Automatic"}}));
    assert_eq!(r.checkpoint.as_deref(), Some("mini-m"));
    assert_eq!(r.noise, NoiseKind::Cpu);
    assert!(
        t.meta.ignored_fields.contains(&"eta".to_string()),
        "{:?}",
        t.meta
    );
    // eta 0 removes Euler a's noise: it runs as Euler.
    let (t, r) = parsed(
        &json!({"prompt": "x", "n_iter": 1, "sampler_name": "Euler a", "eta": 0, "s_noise": 0}),
    );
    assert_eq!(r.sampler, S::Euler);
    assert!(!t.meta.notes.is_empty());
    let (_, r) = parsed(&json!({"prompt": "x", "n_iter": 1, "sampler_name": "DDIM", "eta": 0}));
    assert_eq!(r.sampler, S::Ddim);
}

#[test]
fn a1111_img2img_payload() {
    let payload = json!({"prompt": "x", "init_images": ["iVBORw0KGgo="], "denoising_strength": 0.4,
                         "resize_mode": 1, "width": 64, "height": 64, "include_init_images": false});
    let (t, r) = parsed(&payload);
    let i = r.img2img.expect("img2img");
    assert_eq!(i.strength, 0.4);
    assert_eq!(t.meta.a1111.unwrap().parameters["init_images"], Value::Null);
    let (_, r) = parsed(&json!({"prompt": "x", "init_images": ["https://example.com/a.png"]}));
    assert_eq!(
        r.img2img.expect("img2img").strength,
        request::DEFAULT_STRENGTH
    );
    for (extra, field) in [
        (json!({"mask": "iVBORw0KGgo="}), "field `mask`"),
        (json!({"resize_mode": 2}), "field `resize_mode`"),
        (json!({"init_images": ["a", "b"]}), "field `init_images`"),
        (json!({"enable_hr": true}), "unknown field `enable_hr`"),
    ] {
        let mut input = payload.clone();
        for (k, v) in extra.as_object().unwrap() {
            input[k] = v.clone();
        }
        let e = errors(&input);
        assert!(e.contains(field), "{extra}: {e}");
    }
}

#[test]
fn civitai_request_resolves_airs() {
    let input = fixture("civitai_text_to_image.json");
    let (t, r) = parsed(&input);
    assert_eq!(t.meta.dialect, Dialect::Civitai);
    assert_eq!(r.checkpoint.as_deref(), Some("mini-m"));
    assert_eq!(r.loras.len(), 1);
    assert_eq!(
        (r.loras[0].name.as_str(), r.loras[0].weight),
        ("mini-lora", Some(0.8))
    );
    assert_eq!((r.sampler, r.schedule), (S::EulerAncestral, Sch::Normal));
    assert_eq!(
        (r.steps, r.guidance_scale, r.seed, r.clip_skip),
        (3, 6.0, Some(321), Some(2))
    );
    assert_eq!(r.negative_prompt.as_deref(), Some("blurry"));

    let mut other = input.clone();
    other["model"] = json!("urn:air:sdxl:checkpoint:civitai:1@2");
    let e = errors(&other);
    assert!(e.contains("field `model`") && e.contains("@2"), "{e}");
    let mut other = input.clone();
    other["additionalNetworks"] = json!({"urn:air:sdxl:lora:civitai:9@9": {"strength": 1}});
    let e = errors(&other);
    assert!(e.contains("civitai:9@9"), "{e}");
    let mut other = input.clone();
    other["params"]["seed"] = json!(-1);
    other["quantity"] = json!(2);
    other["batchSize"] = json!(2);
    let (_, r) = parsed(&other);
    assert_eq!((r.seed, r.num_images), (None, 4));
    let mut other = input.clone();
    other["controlNets"] = json!([{"preprocessor": "Canny"}]);
    assert!(errors(&other).contains("field `controlNets`"));
}

#[test]
fn strict_and_lenient_unknown_fields() {
    let lenient = DialectArgs {
        strict_input: false,
        response_format: ResponseFormat::Runpod,
    };
    for (input, field) in [
        (
            json!({"prompt": "x", "n_iter": 1, "hr_distilled_cfg": 3}),
            "hr_distilled_cfg",
        ),
        (
            json!({"prompt": "x", "strength": 0.3, "colour": 1}),
            "colour",
        ),
        (
            json!({"model": "urn:air:sdxl:checkpoint:civitai:101055@128078",
                "params": {"prompt": "x", "style": 1}}),
            "params.style",
        ),
    ] {
        let e = errors(&input);
        assert!(e.contains(&format!("unknown field `{field}`")), "{e}");
        let Ok(Routed::Generate(t)) = route_with(&input, &lenient) else {
            panic!("{input}");
        };
        assert!(
            t.meta.ignored_fields.contains(&field.to_string()),
            "{:?}",
            t.meta
        );
    }
}

#[test]
fn envelope_posts_and_listings() {
    let post = json!({"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"},
                      "payload": fixture("a1111_txt2img_hr.json")});
    let t = translate(&post);
    assert_eq!(
        (t.meta.dialect, t.meta.response),
        (Dialect::A1111, ResponseFormat::A1111)
    );
    let img = json!({"api": {"method": "POST", "endpoint": "sdapi/v1/img2img"},
                     "payload": {"prompt": "x"}});
    assert!(errors(&img).contains("field `init_images` is required"));

    let get = |endpoint: &str| -> Value {
        let v = json!({"api": {"method": "GET", "endpoint": endpoint}, "payload": {}});
        match route_with(&v, &DialectArgs::default()) {
            Ok(Routed::Answer(v)) => v,
            other => panic!("{endpoint}: {other:?}"),
        }
    };
    let models = get("/sdapi/v1/sd-models");
    assert_eq!(models[0]["title"], "mini-m.fp16.safetensors [a0ee8945e1]");
    assert_eq!(models[0]["model_name"], "mini-m.fp16");
    assert_eq!(models[0]["hash"], "a0ee8945e1");
    let samplers = get("/sdapi/v1/samplers");
    let listed: Vec<&str> = samplers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for (name, _, _) in a1111::SAMPLERS {
        assert_eq!(
            listed.contains(name),
            dialects::sampler_label_known(name),
            "{name}"
        );
    }
    assert!(listed.contains(&"DPM++ 2M") && listed.contains(&"Euler a"));
    let euler_a = samplers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "Euler a")
        .unwrap();
    assert_eq!(
        euler_a["aliases"],
        json!(["k_euler_a", "k_euler_ancestral"])
    );
    assert_eq!(euler_a["options"], json!({"uses_ensd": "True"}));
    let schedulers = get("/sdapi/v1/schedulers");
    let karras = schedulers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "karras")
        .unwrap();
    assert_eq!(karras["label"], "Karras");
    assert_eq!(karras["default_rho"], 7.0);
    let sgm = schedulers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "sgm_uniform")
        .unwrap();
    assert_eq!(sgm["aliases"], json!(["SGMUniform"]));
    let loras = get("sdapi/v1/loras");
    assert_eq!(
        loras,
        json!([{"name": "mini-lora", "alias": "mini-lora",
        "path": "mini-m.kohya_ldm.fp16.safetensors", "metadata": {}}])
    );
    assert_eq!(get("sdapi/v1/sd-vae"), json!([]));
    let up = get("sdapi/v1/upscalers");
    assert_eq!(up[0]["name"], "Latent");
    let options = get("sdapi/v1/options");
    assert_eq!(options["sd_model_checkpoint"], models[0]["title"]);
    assert_eq!(options["sd_vae"], "Automatic");

    for (v, needle) in [
        (
            json!({"api": {"method": "GET", "endpoint": "/sdapi/v1/memory"}, "payload": {}}),
            "`api.endpoint`",
        ),
        (
            json!({"api": {"method": "GET", "endpoint": "/sdapi/v1/txt2img"}, "payload": {}}),
            "`api.method`",
        ),
        (
            json!({"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"}, "payload": {}, "x": 1}),
            "unknown field `x`",
        ),
    ] {
        let e = route_with(&v, &DialectArgs::default())
            .unwrap_err()
            .join("\n");
        assert!(e.contains(needle), "{e}");
    }
}

/// Requests that use only this worker's field names keep this worker's schema, errors
/// included; the dialects are told apart by fields only they send.
#[test]
fn detection_leaves_our_own_requests_alone() {
    for (input, dialect) in [
        (json!({"prompt": "x", "seed": -1}), Dialect::Native),
        (
            json!({"prompt": "x", "steps": 3, "cfg_scale": 5, "sampler_name": "Euler a"}),
            Dialect::Native,
        ),
        (
            json!({"prompt": "x", "image_url": "https://e.com/a.png", "strength": 0.3}),
            Dialect::Native,
        ),
        (
            json!({"prompt": "x", "sampler_name": "Euler", "scheduler": "Karras"}),
            Dialect::A1111,
        ),
        (json!({"prompt": "x", "n_iter": 2}), Dialect::A1111),
        (
            json!({"prompt": "x", "high_noise_frac": 0.8}),
            Dialect::WorkerSdxl,
        ),
        (
            json!({"model": "urn:air:sdxl:checkpoint:civitai:1@2", "params": {}}),
            Dialect::Civitai,
        ),
    ] {
        assert_eq!(
            dialects::detect(input.as_object().unwrap()),
            dialect,
            "{input}"
        );
    }
    assert!(errors(&json!({"prompt": "x", "seed": -1})).contains("field `seed`"));
}

/// Schema errors of a translated request name the field the client sent.
#[test]
fn schema_errors_name_the_clients_fields() {
    let check = |input: Value, needle: &str| {
        let t = translate(&input);
        let e = request::parse(&t.input, &defaults()).expect_err("invalid");
        let e = dialects::client_errors(t.meta.dialect, e.0).join("\n");
        assert!(e.contains(needle), "{input}: {e}");
    };
    check(
        json!({"prompt": "x", "n_iter": 1, "steps": 0}),
        "field `steps`",
    );
    check(
        json!({"prompt": "x", "n_iter": 1, "cfg_scale": 99}),
        "field `cfg_scale`",
    );
    check(
        json!({"prompt": "x", "n_iter": 1, "width": 100}),
        "field `width`",
    );
    let mut civitai = fixture("civitai_text_to_image.json");
    civitai["params"]["steps"] = json!(0);
    check(civitai, "field `params.steps`");
    // Our own schema's messages are unchanged.
    assert_eq!(
        dialects::client_errors(Dialect::Native, vec!["field `num_images`: 9".into()]),
        ["field `num_images`: 9"]
    );
}
