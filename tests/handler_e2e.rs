//! End to end: a mock RunPod job API hands jobs to the real worker (runtime + SDXL handler +
//! engine on the fixture checkpoint); the posted results are checked against the diffusers
//! reference images, and malformed inputs must fail one by one without stopping the worker.

mod handler_support;
mod runtime_support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use handler_support::{block_on, fixture_handler, fixtures};
use runtime_support::MockJobApi;
use sdxl_worker::runpod::{self, Timings};

/// Runs the serverless worker against `api` on its own thread until `shutdown` is cancelled.
fn spawn_worker(api: &MockJobApi, shutdown: CancellationToken) -> std::thread::JoinHandle<()> {
    let args = api.args(1);
    std::thread::spawn(move || {
        block_on(async move {
            let cache = tempfile::tempdir().unwrap();
            let cache_dir = cache.path().to_path_buf();
            let init = async move { Ok(Arc::new(fixture_handler(&cache_dir).await?)) };
            let code = runpod::run_with_timings(&args, Timings::fast(), init, shutdown)
                .await
                .unwrap();
            assert_eq!(code, std::process::ExitCode::SUCCESS);
        });
    })
}

/// The final job-done body for `id` (progress updates are posted to the same URL first).
fn final_result(api: &MockJobApi, id: &str) -> Value {
    let ok = api.wait_until(Duration::from_secs(120), |_| {
        api.done_for(id).iter().any(|r| {
            let v = r.json();
            v.get("status").and_then(Value::as_str) != Some("IN_PROGRESS")
        })
    });
    assert!(ok, "no result was posted for {id}");
    api.done_for(id)
        .into_iter()
        .map(|r| r.json())
        .find(|v| v.get("status").and_then(Value::as_str) != Some("IN_PROGRESS"))
        .unwrap()
}

fn decode_data_uri(uri: &str) -> image::RgbImage {
    let b64 = uri
        .strip_prefix("data:image/png;base64,")
        .expect("PNG data URI");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    image::load_from_memory(&bytes).unwrap().to_rgb8()
}

/// Share of 8-bit values within 1 of the reference, and PSNR in dB.
fn compare(ours: &image::RgbImage, reference: &image::RgbImage) -> (f64, f64) {
    assert_eq!(ours.dimensions(), reference.dimensions());
    let (mut close, mut se) = (0usize, 0f64);
    for (a, b) in ours.as_raw().iter().zip(reference.as_raw()) {
        let d = (*a as f64 - *b as f64).abs();
        if d <= 1.0 {
            close += 1;
        }
        se += d * d;
    }
    let n = ours.as_raw().len();
    let mse = se / n as f64;
    let psnr = if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    };
    (close as f64 / n as f64, psnr)
}

/// A reference case as a job input, in the field names RunPod SDXL clients send.
fn case_input(id: &str) -> Value {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("reference/manifest.json")).unwrap())
            .unwrap();
    let case = manifest["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap()
        .clone();
    // The references use diffusers' SDXL scheduler config: "leading" timestep spacing, and
    // Karras σs for DPM++ 2M.
    let (scheduler, schedule) = match case["scheduler"].as_str().unwrap() {
        "euler" => ("Euler", "leading"),
        "euler_a" => ("Euler a", "leading"),
        "dpmpp_2m_karras" => ("DPM++ 2M Karras", "Automatic"),
        "ddim" => ("DDIM", "leading"),
        other => panic!("no label for {other}"),
    };
    // The fixture models.toml names the fp16 kohya LoRA the references use "mini-lora".
    let loras = match case["lora"].as_str() {
        Some("m") => json!([{"name": "mini-lora", "weight": case["lora_scale"]}]),
        None => json!([]),
        Some(other) => panic!("no models.toml entry for LoRA {other}"),
    };
    json!({
        "loras": loras,
        "prompt": case["prompt"],
        "negative_prompt": case["negative_prompt"],
        "width": case["width"],
        "height": case["height"],
        "num_inference_steps": case["steps"],
        "guidance_scale": case["guidance_scale"],
        "scheduler": scheduler,
        "schedule": schedule,
        "seed": case["seed"],
    })
}

#[test]
fn serverless_jobs_match_diffusers_and_malformed_inputs_fail_cleanly() {
    let api = MockJobApi::start();
    let cases = [
        "m_euler_a_192x128_nolora_s1234_n8",
        "m_ddim_128x128_lora0.6_s7_n8",
        "m_dpmpp_2m_karras_128x128_nolora_s0_n8",
    ];
    for id in cases {
        api.push_job(id, case_input(id));
    }
    let malformed = malformed_corpus();
    for (n, (input, _)) in malformed.iter().enumerate() {
        api.push_job(&format!("bad-{n}"), input.clone());
    }
    // img2img through the job API: the input PNG as a data URI, the diffusers reference's
    // settings, in the names A1111 clients send.
    let i2i = "img2img_dpmpp_2m_karras_str0.6_s201_n8";
    let i2i_dir = fixtures().join(format!("reference-samplers/cases/{i2i}"));
    let input_png = std::fs::read(i2i_dir.join("input.png")).unwrap();
    use base64::Engine as _;
    let data_uri = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&input_png)
    );
    api.push_job(
        "img2img",
        json!({"prompt": "a photo of a cat", "negative_prompt": "blurry, low quality",
               "width": 128, "height": 128, "steps": 8, "cfg_scale": 5.0,
               "sampler_name": "DPM++ 2M Karras", "seed": 201,
               "init_image": data_uri, "denoising_strength": 0.6}),
    );
    // After all the bad ones, the worker must still serve a valid job.
    api.push_job("after", case_input(cases[2]));

    let shutdown = CancellationToken::new();
    let worker = spawn_worker(&api, shutdown.clone());

    for id in cases.iter().copied().chain(["after"]) {
        let body = final_result(&api, id);
        let out = &body["output"];
        assert!(body.get("error").is_none(), "{id}: {body}");
        let case = if id == "after" { cases[2] } else { id };
        let images = out["images"].as_array().unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(out["image_url"], images[0]);
        let seed = case_input(case)["seed"].clone();
        assert_eq!(out["seed"], seed);
        assert_eq!(out["seeds"], json!([seed]));
        assert!(out["parameters"].as_str().unwrap().contains("Steps: 8"));
        assert_eq!(out["info"]["checkpoint"]["name"], "mini-m");
        let ours = decode_data_uri(images[0].as_str().unwrap());
        let reference = image::open(fixtures().join(format!("reference/cases/{case}/image.png")))
            .unwrap()
            .to_rgb8();
        let (within_one, psnr) = compare(&ours, &reference);
        assert!(
            within_one >= 0.999 && psnr >= 45.0,
            "{id}: {:.4}% of values within 1/255, PSNR {psnr:.1} dB",
            within_one * 100.0
        );
        // Per-step progress went out before the result.
        let progress = api
            .done_for(id)
            .iter()
            .filter(|r| r.json()["status"] == "IN_PROGRESS")
            .count();
        assert_eq!(progress, 8, "{id}: one progress update per step");
    }

    let body = final_result(&api, "img2img");
    assert!(body.get("error").is_none(), "img2img: {body}");
    let out = &body["output"];
    let ours = decode_data_uri(out["images"][0].as_str().unwrap());
    let reference = image::open(i2i_dir.join("image.png")).unwrap().to_rgb8();
    let (within_one, psnr) = compare(&ours, &reference);
    assert!(
        within_one >= 0.999 && psnr >= 45.0,
        "img2img: {:.4}% of values within 1/255, PSNR {psnr:.1} dB",
        within_one * 100.0
    );
    let params = out["parameters"].as_str().unwrap();
    assert!(params.contains("Denoising strength: 0.6"), "{params}");
    // The echoed request carries neither the image data nor anything else large.
    let info = out["info"]["request"].to_string();
    assert!(
        !info.contains(&data_uri[30..80]) && info.len() < 4000,
        "{info}"
    );
    // Strength 0.6 of 8 steps runs the last 4 (diffusers' rule); one update per step run.
    let progress = api
        .done_for("img2img")
        .iter()
        .filter(|r| r.json()["status"] == "IN_PROGRESS")
        .count();
    assert_eq!(progress, 4, "img2img progress updates");

    for (n, (input, needle)) in malformed.iter().enumerate() {
        let body = final_result(&api, &format!("bad-{n}"));
        let error = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("input {input} did not fail: {body}"));
        let error: Value = serde_json::from_str(error).unwrap();
        let message = error["error_message"].as_str().unwrap();
        assert_eq!(error["error_type"], "invalid_input", "{input}: {message}");
        assert!(
            message.contains(needle),
            "input {input}: error {message:?} does not mention {needle:?}"
        );
        assert!(
            !message.contains("token=abc"),
            "query string leaked: {message}"
        );
    }
    shutdown.cancel();
    worker.join().unwrap();
}

/// Inputs a client can get wrong, each with a piece of text its error must contain.
fn malformed_corpus() -> Vec<(Value, &'static str)> {
    let huge = "x".repeat(20_001);
    vec![
        (json!("a cat"), "JSON object"),
        (json!([1, 2]), "JSON object"),
        (json!(42), "JSON object"),
        (json!({}), "`prompt` is required"),
        (json!({"negative_prompt": "x"}), "`prompt` is required"),
        (json!({"prompt": 5}), "field `prompt`"),
        (json!({"prompt": ["a"]}), "field `prompt`"),
        (json!({"prompt": {"text": "a"}}), "field `prompt`"),
        (json!({"prompt": huge}), "too long"),
        (
            json!({"prompt": "a", "negative_prompt": 3}),
            "field `negative_prompt`",
        ),
        (json!({"prompt": "a", "width": 100}), "field `width`"),
        (json!({"prompt": "a", "width": 129}), "field `width`"),
        (json!({"prompt": "a", "width": 4096}), "field `width`"),
        (json!({"prompt": "a", "width": "512"}), "field `width`"),
        (json!({"prompt": "a", "width": -512}), "field `width`"),
        (json!({"prompt": "a", "height": 512.5}), "field `height`"),
        (json!({"prompt": "a", "height": 0}), "field `height`"),
        (
            json!({"prompt": "a", "num_inference_steps": 0}),
            "field `num_inference_steps`",
        ),
        (
            json!({"prompt": "a", "steps": 151}),
            "field `num_inference_steps`",
        ),
        (
            json!({"prompt": "a", "steps": "many"}),
            "field `num_inference_steps`",
        ),
        (
            json!({"prompt": "a", "steps": 20, "num_inference_steps": 20}),
            "aliases",
        ),
        (
            json!({"prompt": "a", "guidance_scale": -1}),
            "field `guidance_scale`",
        ),
        (
            json!({"prompt": "a", "cfg_scale": 31}),
            "field `guidance_scale`",
        ),
        (
            json!({"prompt": "a", "guidance_scale": "7"}),
            "field `guidance_scale`",
        ),
        (json!({"prompt": "a", "seed": -1}), "field `seed`"),
        (json!({"prompt": "a", "seed": "42"}), "field `seed`"),
        (json!({"prompt": "a", "seed": 1.5}), "field `seed`"),
        (
            json!({"prompt": "a", "scheduler": "NoSuchSampler"}),
            "field `scheduler`",
        ),
        (
            json!({"prompt": "a", "sampler_name": 3}),
            "field `scheduler`",
        ),
        (
            json!({"prompt": "a", "schedule": "cosine"}),
            "field `schedule`",
        ),
        (
            json!({"prompt": "a", "scheduler": "DDIM", "schedule": "linear_quadratic"}),
            "field `schedule`",
        ),
        (
            json!({"prompt": "a", "num_images": 0}),
            "field `num_images`",
        ),
        (
            json!({"prompt": "a", "batch_size": 9}),
            "field `num_images`",
        ),
        (
            json!({"prompt": "a", "checkpoint": "juggernaut"}),
            "field `checkpoint`",
        ),
        (
            json!({"prompt": "a", "checkpoint": 7}),
            "field `checkpoint`",
        ),
        (json!({"prompt": "a", "loras": "detail"}), "field `loras`"),
        (
            json!({"prompt": "a", "loras": [{"name": "nope"}]}),
            "not in models.toml",
        ),
        (
            json!({"prompt": "a", "loras": [{"weight": 1}]}),
            "loras[0].name",
        ),
        (
            json!({"prompt": "a", "loras": [{"name": "x", "weight": "high"}]}),
            "loras[0].weight",
        ),
        (
            json!({"prompt": "a", "loras": [{"name": "x", "strength": 1}]}),
            "loras[0].strength",
        ),
        (json!({"prompt": "a", "clip_skip": 0}), "field `clip_skip`"),
        (json!({"prompt": "a", "clip_skip": 14}), "field `clip_skip`"),
        // Within the schema's range but deeper than the test model's 2-layer encoders: the
        // engine refuses it as invalid input, naming the field.
        (
            json!({"prompt": "a", "clip_skip": 4, "width": 64, "height": 64}),
            "clip_skip",
        ),
        (
            json!({"prompt": "a", "output_format": "gif"}),
            "field `output_format`",
        ),
        (
            json!({"prompt": "a", "output_quality": 0}),
            "field `output_quality`",
        ),
        (json!({"prompt": "a", "noise": "cuda"}), "field `noise`"),
        (
            json!({"prompt": "a", "colour": "red"}),
            "unknown field `colour`",
        ),
        (
            json!({"prompt": "a", "image": "not base64!"}),
            "`image` is not valid base64",
        ),
        // The mock job API listens on loopback; image_url must not reach it (SSRF guard),
        // and the refusal must not echo the query string.
        (
            json!({"prompt": "a", "image_url": "http://127.0.0.1:9/x.png?token=abc"}),
            "image_url",
        ),
        (
            json!({"prompt": "a", "scheduler": "LCM", "schedule": "leading", "steps": 60,
                   "width": 64, "height": 64}),
            "lcm",
        ),
    ]
}

/// The handler's stages compose: run one by one they give the images and infotext that
/// `Handler::handle` gives for the same job, so a handler can replace one stage and keep
/// the others.
#[test]
fn stages_run_one_by_one_match_the_whole_handler() {
    use runpod::{Handler, Job, JobContext};
    block_on(async {
        let cache = tempfile::tempdir().unwrap();
        let handler = fixture_handler(cache.path()).await.unwrap();
        let input = json!({"prompt": "a photo of a cat", "width": 64, "height": 64,
                           "steps": 2, "seed": 7, "scheduler": "euler"});

        let started = std::time::Instant::now();
        let ctx = JobContext::detached("stages");
        let parsed = handler.parse(&input).unwrap();
        assert_eq!(parsed.seed, 7);
        let request = handler.prepare(&parsed).await.unwrap();
        assert_eq!((request.width, request.steps), (64, 2));
        let output = handler.generate(request, &ctx).await.unwrap();
        let encoded = handler
            .encode(&parsed, output.images, &output.seeds)
            .await
            .unwrap();
        assert_eq!(encoded.files.len(), 1);
        let staged = handler
            .deliver(
                "stages",
                &parsed,
                &output.seeds,
                &output.timings,
                encoded,
                started,
            )
            .await
            .unwrap();

        let whole = handler
            .handle(Job::new("whole", input), JobContext::detached("whole"))
            .await
            .unwrap();
        for key in ["images", "seed", "seeds", "parameters"] {
            assert_eq!(staged.value[key], whole.value[key], "{key}");
        }
        assert_eq!(
            staged.value["info"]["request"],
            whole.value["info"]["request"]
        );

        let err = handler.parse(&json!({"prompt": 5})).unwrap_err();
        assert_eq!(err.error_type(), "invalid_input");
    });
}
