//! The client dialects end to end on the fixture model: each foreign request runs through
//! the whole SDXL handler, and its images must equal, pixel for pixel (tolerance 0), those of
//! the same request written in this worker's own schema — the translation may change how a
//! request is spelled, never what is generated. The response shapes are checked as the
//! clients read them.

mod handler_support;

use std::path::Path;

use base64::Engine as _;
use serde_json::{json, Value};

use handler_support::{block_on, fixture_models, fixtures, handler_from};

use sdxl_worker::fetch::{CivitaiIds, ModelKind};
use sdxl_worker::handler::{DialectArgs, SdxlHandler};
use sdxl_worker::runpod::{Handler, Job, JobContext};

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join("dialects").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The fixture models as a Civitai-sourced `models.toml` would resolve them (with model and
/// version ids), loaded on the CPU in f32 with the minimum side lowered to 64 px.
async fn handler(cache: &Path, dialects: DialectArgs) -> SdxlHandler {
    let mut models = fixture_models(cache).await.unwrap();
    for m in &mut models.models {
        let (model_id, version_id) = match m.kind {
            ModelKind::Checkpoint => (101055, 128078),
            _ => (58390, 62833),
        };
        m.civitai = Some(CivitaiIds {
            model_id,
            version_id,
            file_id: 1,
        });
    }
    handler_from(models).await.unwrap().with_dialects(dialects)
}

async fn run(h: &SdxlHandler, input: Value) -> Value {
    h.handle(Job::new("job", input.clone()), JobContext::detached("job"))
        .await
        .unwrap_or_else(|e| panic!("{input}: {}", e.message()))
        .value
}

/// Decoded RGB pixels and size of a base64 image (raw, or a `data:` URI).
fn pixels(image: &Value) -> (u32, u32, Vec<u8>) {
    let s = image.as_str().expect("an image string");
    let b64 = s.rsplit_once(',').map_or(s, |(_, b)| b);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
    (img.width(), img.height(), img.into_raw())
}

fn images(body: &Value) -> Vec<(u32, u32, Vec<u8>)> {
    body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(pixels)
        .collect()
}

#[test]
fn dialect_requests_generate_what_their_native_spelling_generates() {
    block_on(async {
        let cache = tempfile::tempdir().unwrap();
        let h = handler(cache.path(), DialectArgs::default()).await;

        // worker-sdxl: its repository's test inputs at a scaled size.
        for (name, input) in [
            (
                "test_input.json",
                fixture("worker_sdxl_test_input.json")["input"].clone(),
            ),
            (
                "tests.json",
                fixture("worker_sdxl_hub_tests.json")["tests"][0]["input"].clone(),
            ),
        ] {
            let mut input = input;
            input["width"] = json!(64);
            input["height"] = json!(64);
            let body = run(&h, input.clone()).await;
            assert_eq!(body["seed"], input["seed"], "{name}");
            assert_eq!(body["image_url"], body["images"][0], "{name}");
            assert!(body["images"][0]
                .as_str()
                .unwrap()
                .starts_with("data:image/png;base64,"));
            assert_eq!(body["info"]["dialect"], "worker_sdxl");
            let ignored = body["info"]["ignored_fields"].as_array().unwrap();
            assert_eq!(ignored.len(), 3, "{name}: {ignored:?}");
            let native = json!({"prompt": input["prompt"], "negative_prompt": input["negative_prompt"],
                "width": 64, "height": 64, "num_inference_steps": 25, "guidance_scale": 7.5,
                "seed": input["seed"], "scheduler": "euler", "schedule": "default"});
            assert_eq!(images(&body), images(&run(&h, native).await), "{name}");
        }

        // A1111 txt2img, batch of two with a LoRA tag, answered in A1111's shape.
        let payload = fixture("a1111_txt2img.json");
        let body = run(&h, payload.clone()).await;
        let got = images(&body);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0, got[0].1), (64, 64));
        assert!(!body["images"][0].as_str().unwrap().starts_with("data:"));
        assert_eq!(body["parameters"]["prompt"], payload["prompt"]);
        let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
        assert_eq!(info["seed"], 1234);
        assert_eq!(info["all_seeds"], json!([1234, 1235]));
        assert_eq!(info["batch_size"], 2);
        assert_eq!(info["sampler_name"], "DPM++ 2M");
        assert_eq!(info["extra_generation_params"]["Schedule type"], "Karras");
        assert_eq!(
            (info["cfg_scale"].as_f64(), info["steps"].as_u64()),
            (Some(6.5), Some(4))
        );
        assert_eq!(info["sd_model_name"], "mini-m.fp16");
        assert_eq!(info["sd_model_hash"], "a0ee8945e1");
        assert_eq!(info["clip_skip"], 2);
        assert_eq!(
            (info["width"].as_u64(), info["height"].as_u64()),
            (Some(64), Some(64))
        );
        assert_eq!(info["infotexts"].as_array().unwrap().len(), 2);
        assert!(info["infotexts"][1]
            .as_str()
            .unwrap()
            .contains("Seed: 1235"));
        assert_eq!(info["job_timestamp"].as_str().unwrap().len(), 14);
        let native = json!({"prompt": payload["prompt"], "negative_prompt": "blurry",
            "seed": 1234, "scheduler": "DPM++ 2M", "schedule": "karras", "num_images": 2,
            "steps": 4, "guidance_scale": 6.5, "width": 64, "height": 64, "clip_skip": 2,
            "noise": "nv", "prompt_weighting": "a1111"});
        assert_eq!(got, images(&run(&h, native).await));

        // A1111 hires fix, through the envelope.
        let payload = fixture("a1111_txt2img_hr.json");
        let post = json!({"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"},
                          "payload": payload});
        let body = run(&h, post).await;
        let got = images(&body);
        assert_eq!((got[0].0, got[0].1), (128, 128));
        let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
        assert_eq!(
            (info["width"].as_u64(), info["denoising_strength"].as_f64()),
            (Some(128), Some(0.6))
        );
        let native = json!({"prompt": "a lighthouse at dusk", "negative_prompt": "", "seed": 99,
            "scheduler": "Euler a", "steps": 3, "guidance_scale": 5, "width": 64, "height": 64,
            "hires_scale": 2, "hires_steps": 2, "hires_denoise": 0.6, "noise": "nv",
            "prompt_weighting": "a1111"});
        assert_eq!(got, images(&run(&h, native).await));

        // A1111 img2img through the envelope, from the first hires image.
        let init = body["images"][0].clone();
        let post = json!({"api": {"method": "POST", "endpoint": "/sdapi/v1/img2img"},
            "payload": {"prompt": "a lighthouse", "init_images": [init], "seed": 5,
                        "sampler_name": "Euler", "steps": 4, "width": 128, "height": 128,
                        "denoising_strength": 0.5, "resize_mode": 1}});
        let got = images(&run(&h, post).await);
        let native = json!({"prompt": "a lighthouse", "negative_prompt": "", "seed": 5,
            "scheduler": "Euler", "steps": 4, "guidance_scale": 7.0, "width": 128,
            "height": 128, "image": init, "strength": 0.5, "noise": "nv",
            "prompt_weighting": "a1111"});
        assert_eq!(got, images(&run(&h, native).await));

        // Civitai generator input: checkpoint and LoRA by AIR.
        let input = fixture("civitai_text_to_image.json");
        let body = run(&h, input).await;
        assert_eq!(body["info"]["dialect"], "civitai");
        let native = json!({"prompt": "a lighthouse at dusk", "negative_prompt": "blurry",
            "checkpoint": "mini-m", "loras": [{"name": "mini-lora", "weight": 0.8}],
            "scheduler": "Euler a", "steps": 3, "guidance_scale": 6, "width": 64,
            "height": 64, "seed": 321, "clip_skip": 2});
        assert_eq!(images(&body), images(&run(&h, native).await));

        // Our own schema, answered in A1111's shape on request.
        let body = run(
            &h,
            json!({"prompt": "x", "width": 64, "height": 64, "steps": 2,
                                  "seed": 3, "response_format": "a1111"}),
        )
        .await;
        assert!(body["info"].is_string() && body["parameters"]["prompt"] == "x");

        // Envelope listings answer without generating.
        let get =
            |endpoint: &str| json!({"api": {"method": "GET", "endpoint": endpoint}, "payload": {}});
        let models = run(&h, get("/sdapi/v1/sd-models")).await;
        assert_eq!(models[0]["title"], "mini-m.fp16.safetensors [a0ee8945e1]");
        let loras = run(&h, get("/sdapi/v1/loras")).await;
        assert_eq!(loras[0]["name"], "mini-lora");
        for endpoint in ["samplers", "schedulers", "sd-vae", "upscalers", "options"] {
            let v = run(&h, get(&format!("/sdapi/v1/{endpoint}"))).await;
            assert!(v.is_array() || v.is_object(), "{endpoint}: {v}");
        }

        // Unknown AIRs and unsupported A1111 features fail as invalid input.
        let mut input = fixture("civitai_text_to_image.json");
        input["model"] = json!("urn:air:sdxl:checkpoint:civitai:1@2");
        let e = h
            .handle(Job::new("bad", input), JobContext::detached("bad"))
            .await
            .unwrap_err();
        assert_eq!(e.error_type(), "invalid_input");
        assert!(e.message().contains("civitai:1@2"), "{}", e.message());
    });
}

/// `RESPONSE_FORMAT=a1111` answers plain requests in A1111's shape; `STRICT_INPUT=false`
/// runs a request with unknown fields and names them.
#[test]
fn endpoint_flags_change_the_default_shape_and_strictness() {
    block_on(async {
        let cache = tempfile::tempdir().unwrap();
        let flags = DialectArgs {
            strict_input: false,
            response_format: sdxl_worker::handler::dialects::ResponseFormat::A1111,
        };
        let h = handler(cache.path(), flags).await;
        let body = run(
            &h,
            json!({"prompt": "x", "width": 64, "height": 64, "steps": 2,
                                  "seed": 3, "colour": "red"}),
        )
        .await;
        let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
        assert_eq!(info["ignored_fields"], json!(["colour"]));
        assert_eq!(images(&body).len(), 1);
    });
}
