//! The `infotext` input: A1111's reader on a corpus of real-world-shaped infotexts, compared
//! with a Python port of A1111's own function (`tests/fixtures/tools/infotext_reference.py`
//! wrote the expected files), and the round trip — the infotext the worker writes for an
//! image, read back and run again, gives the identical image, for every sampler and every
//! schedule.

mod handler_support;

use std::path::PathBuf;

use serde_json::{json, Value};

use handler_support::{block_on, fixture_handler, fixtures};

use sdxl_worker::handler::dialects::infotext::{self, RESOURCES_KEY};
use sdxl_worker::handler::request::Defaults;
use sdxl_worker::runpod::JobContext;
use sdxl_worker::sampling::{SamplerKind, SigmaSchedule};

fn corpus() -> Vec<(String, String, Value)> {
    let dir = fixtures().join("infotext");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let expected: Value =
                serde_json::from_str(&std::fs::read_to_string(p.with_extension("json")).unwrap())
                    .unwrap();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, text, expected)
        })
        .collect()
}

#[test]
fn corpus_is_large_enough_and_covers_errors_and_requests() {
    let c = corpus();
    assert!(c.len() >= 30, "{} infotexts", c.len());
    let errors = c
        .iter()
        .filter(|(_, _, e)| e.get("errors").is_some())
        .count();
    assert!(errors >= 8 && errors < c.len() - 20, "{errors} error cases");
}

/// Exact: every key and value of A1111's result dict, including its defaults and the
/// version-dependent compatibility flags.
#[test]
fn a1111_reader_matches_the_python_port_on_the_corpus() {
    for (name, text, expected) in corpus() {
        let ours = Value::Object(infotext::parse_generation_parameters(&text));
        assert_eq!(ours, expected["a1111"], "{name}");
    }
}

/// Exact on the request fields; an infotext the worker must refuse fails with one message
/// part per refused key, each naming it.
#[test]
fn request_fields_match_the_reference_mapping() {
    for (name, text, expected) in corpus() {
        match (infotext::parse(&text), expected.get("errors")) {
            (Ok(fields), None) => assert_eq!(Value::Object(fields), expected["request"], "{name}"),
            (Err(e), Some(keys)) => {
                let keys = keys.as_array().unwrap();
                assert!(e.starts_with("field `infotext`: "), "{name}: {e}");
                assert_eq!(e.matches("; ").count() + 1, keys.len(), "{name}: {e}");
                for k in keys {
                    let k = k.as_str().unwrap();
                    // Keys split from `WxH` values are refused under their written name.
                    let written = k.strip_suffix("-1").or(k.strip_suffix("-2")).unwrap_or(k);
                    assert!(e.contains(&format!("`{written}")), "{name}: {k} not in {e}");
                }
            }
            (got, want) => panic!("{name}: got {got:?}, expected {want:?}"),
        }
    }
}

/// Every request the corpus yields is one the job API accepts as it stands (named resources
/// and an img2img `strength` aside, which the dialect layer hands on or pairs with an image).
#[test]
fn corpus_requests_pass_request_validation() {
    let mut checked = 0;
    for (name, _, expected) in corpus() {
        let Some(request) = expected.get("request") else {
            continue;
        };
        let mut fields = request.as_object().unwrap().clone();
        fields.remove(RESOURCES_KEY);
        fields.remove("strength");
        // The worker-written texts are of the 64 px test model.
        let defaults = Defaults {
            min_side: 64,
            ..Defaults::default()
        };
        let parsed = sdxl_worker::handler::request::parse(&Value::Object(fields), &defaults);
        assert!(parsed.is_ok(), "{name}: {parsed:?}");
        checked += 1;
    }
    assert!(checked >= 20, "{checked}");
}

/// Request `n` of the round trip: sampler and schedule as given, and the other settings that
/// the infotext must carry (noise source, SDE noise, clip skip, guidance rescale, emphasis
/// mode, negative prompt present / empty / absent, variation seed, hires fix) rotating with
/// `n`, so that each appears with several samplers.
fn round_trip_input(n: usize, sampler: SamplerKind, schedule: SigmaSchedule) -> Value {
    let schedule_name = schedule.name();
    let noise = ["cpu", "nv"][n % 2];
    let sde_noise = ["brownian", "gaussian"][(n / 2) % 2];
    let weighting = ["comfy", "a1111", "a1111_no_norm", "none"][n % 4];
    let mut input = json!({
        "prompt": "a photo of a cat, (soft light:1.3), [grass]",
        "width": 64, "height": 64, "steps": 2 + (n % 2), "seed": 1000 + n,
        "guidance_scale": 4.5,
        "scheduler": sampler.label(), "schedule": schedule_name,
        "noise": noise, "sde_noise": sde_noise, "prompt_weighting": weighting,
    });
    let o = input.as_object_mut().unwrap();
    match n % 3 {
        0 => {}
        1 => {
            o.insert("negative_prompt".into(), json!(""));
        }
        _ => {
            o.insert("negative_prompt".into(), json!("blurry, (dark:1.2)"));
        }
    }
    if n % 5 == 1 {
        o.insert("clip_skip".into(), json!(1));
    }
    if n % 5 == 2 {
        o.insert("guidance_rescale".into(), json!(0.6));
    }
    if n % 7 == 3 {
        o.insert("subseed".into(), json!(77 + n));
        o.insert("subseed_strength".into(), json!(0.25));
    }
    if n % 11 == 4 {
        o.insert("hires_scale".into(), json!(1.5));
        o.insert("hires_steps".into(), json!(2));
        o.insert("hires_denoise".into(), json!(0.6));
    }
    input
}

/// Every sampler with every schedule of `SigmaSchedule::ALL`, and each A1111 schedule type
/// once (with the samplers in turn), at 64 × 64 and 2–3 steps: the infotext of the image,
/// read by `infotext::parse` and sent as a request, is the same request, and running it gives
/// the same pixels (exact; the run is deterministic on the CPU).
#[test]
fn worker_infotexts_read_back_to_the_identical_image() {
    block_on(async {
        let cache = tempfile::tempdir().unwrap();
        let handler = fixture_handler(cache.path()).await.unwrap();
        let ctx = JobContext::detached("infotext");
        let mut n = 0;
        let grid = SamplerKind::ALL
            .iter()
            .flat_map(|&sampler| SigmaSchedule::ALL.iter().map(move |&s| (sampler, s)));
        let a1111 = SigmaSchedule::A1111
            .iter()
            .enumerate()
            .map(|(i, &s)| (SamplerKind::ALL[i % SamplerKind::ALL.len()], s));
        let cases: Vec<_> = grid.chain(a1111).collect();
        for &(sampler, schedule) in &cases {
            let input = round_trip_input(n, sampler, schedule);
            n += 1;
            let case = format!("{} / {:?}: {input}", sampler.label(), schedule);
            let job = handler.parse(&input).unwrap();
            assert_eq!((job.input.sampler, job.input.schedule), (sampler, schedule));
            let request = handler.prepare(&job).await.unwrap();
            let first = handler.generate(request, &ctx).await.unwrap();
            let encoded = handler
                .encode(&job, first.images.clone(), &first.seeds)
                .await
                .unwrap();
            let text = &encoded.infotexts[0];

            let mut fields = infotext::parse(text).unwrap_or_else(|e| panic!("{case}: {e}"));
            let resources = fields.remove(RESOURCES_KEY).unwrap();
            assert_eq!(resources["model"], json!("mini-m.fp16"), "{case}");
            let again = handler
                .parse(&Value::Object(fields))
                .unwrap_or_else(|e| panic!("{case}\n{text}\n{e:?}"));
            assert_eq!(again.input, job.input, "{case}\n{text}");
            assert_eq!(again.seed, job.seed, "{case}");
            let request = handler.prepare(&again).await.unwrap();
            let second = handler.generate(request, &ctx).await.unwrap();
            assert_eq!(second.images.len(), 1);
            assert!(
                second.images[0].as_raw() == first.images[0].as_raw(),
                "{case}: pixels differ\n{text}"
            );
        }
        assert_eq!(
            n,
            SamplerKind::ALL.len() * SigmaSchedule::ALL.len() + SigmaSchedule::A1111.len()
        );
    });
}
