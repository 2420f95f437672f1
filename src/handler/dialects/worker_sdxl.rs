//! RunPod's official SDXL worker (`runpod-workers/worker-sdxl`): its whole input schema runs
//! unchanged. Most fields are this worker's own names already; what differs:
//!
//! - `scheduler` takes diffusers class nicknames (`K_EULER`, `DPMSolverMultistep`, …). That
//!   worker builds each scheduler from the checkpoint's config with no Karras sigmas, so the
//!   schedule is the checkpoint's own diffusers spacing (`default`).
//! - `refiner_inference_steps`, `high_noise_frac` and a `strength` without an image belong to
//!   its refiner pass. No refiner is configured here, so they are accepted, have no effect,
//!   and the result's `info` says so.
//! - With `image_url`, that worker runs only its refiner as img2img; here the base model runs
//!   the img2img pass with the same `strength` (default 0.3, as there).

use serde_json::{Map, Value};

use super::{check_sampler, take_response_format, Dialect, DialectArgs, Out, Translated};
use crate::handler::request::ValidationErrors;

/// Every field of worker-sdxl's schema.
pub const FIELDS: &[&str] = &[
    "prompt",
    "negative_prompt",
    "height",
    "width",
    "seed",
    "scheduler",
    "num_inference_steps",
    "refiner_inference_steps",
    "guidance_scale",
    "strength",
    "high_noise_frac",
    "image_url",
    "num_images",
];

/// worker-sdxl's `strength` default (its refiner's img2img strength).
pub const DEFAULT_STRENGTH: f64 = 0.3;

/// worker-sdxl scheduler names (exact, case-sensitive there; compared case-insensitively
/// here) → sampler labels of the sampling name parser.
pub const SCHEDULERS: &[(&str, &str)] = &[
    ("PNDM", "PLMS"),
    ("KLMS", "LMS"),
    ("DDIM", "DDIM"),
    ("K_EULER", "Euler"),
    ("K_EULER_ANCESTRAL", "Euler a"),
    ("DPMSolverMultistep", "DPM++ 2M"),
    ("DPMSolverSinglestep", "DPM++ 2S"),
];

/// The sampler label for a worker-sdxl scheduler name.
pub fn sampler_label(name: &str) -> Option<&'static str> {
    SCHEDULERS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
        .map(|&(_, l)| l)
}

/// A request in worker-sdxl's shape: only its fields, and at least one that only it sends
/// (the refiner settings, or `strength` without an image).
pub fn looks_like(obj: &Map<String, Value>) -> bool {
    let set = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
    let only_ours = obj
        .keys()
        .all(|k| FIELDS.contains(&k.as_str()) || k == "response_format");
    only_ours
        && (obj.contains_key("refiner_inference_steps")
            || obj.contains_key("high_noise_frac")
            || (set("strength") && !set("image_url")))
}

/// Translates a worker-sdxl request into the canonical schema.
pub fn translate(
    obj: &Map<String, Value>,
    args: &DialectArgs,
) -> Result<Translated, ValidationErrors> {
    let mut obj = obj.clone();
    let mut out = Out::new(args.strict_input);
    let response = take_response_format(&mut obj, args.response_format, &mut out.errors);
    let has_image = obj.get("image_url").is_some_and(|v| !v.is_null());
    for (key, value) in &obj {
        match key.as_str() {
            "prompt"
            | "negative_prompt"
            | "height"
            | "width"
            | "seed"
            | "num_inference_steps"
            | "guidance_scale"
            | "num_images" => out.set(key, value.clone()),
            "image_url" if value.is_null() => {}
            "image_url" => out.set("image_url", value.clone()),
            "scheduler" if value.is_null() => {}
            "scheduler" => match value.as_str().and_then(sampler_label) {
                Some(label) => {
                    check_sampler(&mut out, "scheduler", value.as_str().unwrap_or(""), label);
                    out.set("scheduler", Value::from(label));
                }
                None => {
                    let names: Vec<&str> = SCHEDULERS.iter().map(|(n, _)| *n).collect();
                    out.refuse("scheduler", value, &names.join(", "));
                }
            },
            "strength" if has_image => out.set("strength", value.clone()),
            "strength" => {
                if !value.is_null() {
                    out.inert(
                        "strength",
                        "the refiner's img2img strength; no refiner is configured on this \
                         worker",
                    );
                }
            }
            "refiner_inference_steps" | "high_noise_frac" => {
                if !value.is_null() {
                    out.inert(
                        key,
                        "a refiner setting; no refiner is configured on this worker",
                    );
                }
            }
            other => out.unknown(other, FIELDS),
        }
    }
    if !out.map.contains_key("scheduler") {
        out.set("scheduler", Value::from("DDIM"));
    }
    // worker-sdxl's schedulers run on the checkpoint's own timestep spacing.
    out.set("schedule", Value::from("default"));
    if !out.map.contains_key("guidance_scale") {
        out.set("guidance_scale", Value::from(7.5));
    }
    if !out.map.contains_key("num_inference_steps") {
        out.set("num_inference_steps", Value::from(25));
    }
    if has_image && !out.map.contains_key("strength") {
        out.set("strength", Value::from(DEFAULT_STRENGTH));
    }
    if has_image {
        out.notes.push(
            "`image_url`: img2img runs on the base model (worker-sdxl runs its refiner there)"
                .to_string(),
        );
    }
    out.finish(Dialect::WorkerSdxl, response, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scheduler_names_compare_case_insensitively() {
        assert_eq!(sampler_label("k_euler"), sampler_label("K_EULER"));
        assert_eq!(sampler_label(" dpmsolvermultistep "), Some("DPM++ 2M"));
        assert_eq!(sampler_label("EulerA"), None);
    }

    #[test]
    fn refiner_fields_are_detected_and_noted() {
        let obj = json!({"prompt": "x", "strength": 0.3, "refiner_inference_steps": 50});
        let obj = obj.as_object().unwrap();
        assert!(looks_like(obj));
        let t = translate(obj, &DialectArgs::default()).unwrap();
        assert!(t.input.get("strength").is_none());
        assert_eq!(t.meta.ignored_fields.len(), 2, "{:?}", t.meta);
        assert!(!looks_like(json!({"prompt": "x"}).as_object().unwrap()));
        assert!(!looks_like(
            json!({"prompt": "x", "high_noise_frac": 0.8, "steps": 3})
                .as_object()
                .unwrap()
        ));
    }
}
