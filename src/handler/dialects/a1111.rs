//! AUTOMATIC1111 web UI API payloads (`/sdapi/v1/txt2img` and `/sdapi/v1/img2img`, the 1.10
//! field set). A payload gets A1111's API defaults (512 × 512, 50 steps, CFG 7, sampler
//! Euler, seed −1 = random), A1111's "Original" prompt emphasis and its default GPU noise
//! (this worker's NV generator, which reproduces it on any device).
//!
//! What the engine can do is translated; what it cannot is refused with the field's name:
//! face restoration, tiling, scripts, inpainting masks, a refiner, hires settings that
//! differ from the first pass (another sampler, prompt or CFG), non-latent upscalers, and
//! sampler options (`eta`, `s_churn`, `s_noise`, …) away from the values at which they
//! change nothing. Save flags and other server-side options are accepted and have no effect.

use crate::sampling::SigmaSchedule;
use serde_json::{json, Map, Value};

use super::{
    check_sampler, merge_infotext, sampler_label_known, schedule_label_known, take_response_format,
    A1111Echo, Catalog, Dialect, DialectArgs, Out, Translated,
};
use crate::handler::request::ValidationErrors;
use crate::sampling::names;
use crate::sampling::SamplerKind;

/// Which endpoint a payload is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Txt2Img,
    Img2Img,
    /// `init_images` decides (a payload sent without the envelope).
    Auto,
}

/// Fields of both endpoints.
pub const COMMON_FIELDS: &[&str] = &[
    "prompt",
    "negative_prompt",
    "styles",
    "seed",
    "subseed",
    "subseed_strength",
    "seed_resize_from_h",
    "seed_resize_from_w",
    "sampler_name",
    "sampler_index",
    "scheduler",
    "batch_size",
    "n_iter",
    "steps",
    "cfg_scale",
    "width",
    "height",
    "restore_faces",
    "tiling",
    "do_not_save_samples",
    "do_not_save_grid",
    "eta",
    "denoising_strength",
    "s_min_uncond",
    "s_churn",
    "s_tmax",
    "s_tmin",
    "s_noise",
    "override_settings",
    "override_settings_restore_afterwards",
    "refiner_checkpoint",
    "refiner_switch_at",
    "disable_extra_networks",
    "firstpass_image",
    "comments",
    "script_name",
    "script_args",
    "send_images",
    "save_images",
    "alwayson_scripts",
    "force_task_id",
    "infotext",
    "response_format",
];

/// Fields of `/sdapi/v1/txt2img` only (the hires fix).
pub const TXT2IMG_FIELDS: &[&str] = &[
    "enable_hr",
    "firstphase_width",
    "firstphase_height",
    "hr_scale",
    "hr_upscaler",
    "hr_second_pass_steps",
    "hr_resize_x",
    "hr_resize_y",
    "hr_checkpoint_name",
    "hr_sampler_name",
    "hr_scheduler",
    "hr_prompt",
    "hr_negative_prompt",
    "hr_cfg",
];

/// Fields of `/sdapi/v1/img2img` only.
pub const IMG2IMG_FIELDS: &[&str] = &[
    "init_images",
    "resize_mode",
    "image_cfg_scale",
    "mask",
    "mask_blur",
    "mask_blur_x",
    "mask_blur_y",
    "mask_round",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "inpainting_mask_invert",
    "initial_noise_multiplier",
    "latent_mask",
    "include_init_images",
];

/// A1111's API defaults for the fields the translation fills in.
const DEFAULT_STEPS: u64 = 50;
const DEFAULT_CFG: f64 = 7.0;
const DEFAULT_SIDE: u64 = 512;
const DEFAULT_SAMPLER: &str = "Euler";
const DEFAULT_HR_SCALE: f64 = 2.0;

/// Latent upscale modes of A1111's hires fix, and whether the engine's hires pass runs it:
/// the engine upscales latents bilinearly without antialiasing, which is A1111's `Latent`.
pub const LATENT_UPSCALERS: &[(&str, bool)] = &[
    ("Latent", true),
    ("Latent (antialiased)", false),
    ("Latent (bicubic)", false),
    ("Latent (bicubic antialiased)", false),
    ("Latent (nearest)", false),
    ("Latent (nearest-exact)", false),
];

/// One `GET /sdapi/v1/samplers` item: name, aliases, options.
pub type SamplerEntry = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

/// A1111's samplers (1.10, in its order): display name, aliases, options as
/// `GET /sdapi/v1/samplers` lists them.
pub const SAMPLERS: &[SamplerEntry] = &[
    ("DPM++ 2M", &["k_dpmpp_2m"], &[("scheduler", "karras")]),
    (
        "DPM++ SDE",
        &["k_dpmpp_sde"],
        &[
            ("scheduler", "karras"),
            ("second_order", "True"),
            ("brownian_noise", "True"),
        ],
    ),
    (
        "DPM++ 2M SDE",
        &["k_dpmpp_2m_sde"],
        &[("scheduler", "exponential"), ("brownian_noise", "True")],
    ),
    (
        "DPM++ 2M SDE Heun",
        &["k_dpmpp_2m_sde_heun"],
        &[
            ("scheduler", "exponential"),
            ("brownian_noise", "True"),
            ("solver_type", "heun"),
        ],
    ),
    (
        "DPM++ 2S a",
        &["k_dpmpp_2s_a"],
        &[
            ("scheduler", "karras"),
            ("uses_ensd", "True"),
            ("second_order", "True"),
        ],
    ),
    (
        "DPM++ 3M SDE",
        &["k_dpmpp_3m_sde"],
        &[
            ("scheduler", "exponential"),
            ("discard_next_to_last_sigma", "True"),
            ("brownian_noise", "True"),
        ],
    ),
    (
        "Euler a",
        &["k_euler_a", "k_euler_ancestral"],
        &[("uses_ensd", "True")],
    ),
    ("Euler", &["k_euler"], &[]),
    ("LMS", &["k_lms"], &[]),
    ("Heun", &["k_heun"], &[("second_order", "True")]),
    (
        "DPM2",
        &["k_dpm_2"],
        &[
            ("scheduler", "karras"),
            ("discard_next_to_last_sigma", "True"),
            ("second_order", "True"),
        ],
    ),
    (
        "DPM2 a",
        &["k_dpm_2_a"],
        &[
            ("scheduler", "karras"),
            ("discard_next_to_last_sigma", "True"),
            ("uses_ensd", "True"),
            ("second_order", "True"),
        ],
    ),
    ("DPM fast", &["k_dpm_fast"], &[("uses_ensd", "True")]),
    ("DPM adaptive", &["k_dpm_ad"], &[("uses_ensd", "True")]),
    (
        "Restart",
        &["restart"],
        &[("scheduler", "karras"), ("second_order", "True")],
    ),
    ("DDIM", &["ddim"], &[]),
    ("DDIM CFG++", &["ddim_cfgpp"], &[]),
    ("PLMS", &["plms"], &[]),
    ("UniPC", &["unipc"], &[]),
    ("LCM", &["k_lcm"], &[]),
];

/// A1111's schedule types (1.10): name, label, aliases, default rho, needs the inner model.
pub const SCHEDULES: &[(&str, &str, &[&str], f64, bool)] = &[
    ("automatic", "Automatic", &[], -1.0, false),
    ("uniform", "Uniform", &[], -1.0, true),
    ("karras", "Karras", &[], 7.0, false),
    ("exponential", "Exponential", &[], -1.0, false),
    ("polyexponential", "Polyexponential", &[], 1.0, false),
    ("sgm_uniform", "SGM Uniform", &["SGMUniform"], -1.0, true),
    ("kl_optimal", "KL Optimal", &[], -1.0, false),
    ("align_your_steps", "Align Your Steps", &[], -1.0, false),
    ("simple", "Simple", &[], -1.0, true),
    ("normal", "Normal", &[], -1.0, true),
    ("ddim", "DDIM", &[], -1.0, true),
    ("beta", "Beta", &[], -1.0, true),
];

/// The schedule name for an A1111 scheduler name or label, with A1111's meaning
/// (`"SGM Uniform"` → `"a1111_sgm_uniform"`, `"Normal"` → `"a1111_normal"`: A1111's
/// definitions, not ComfyUI's of the same name); other text is passed on as it is.
pub fn schedule_label(name: &str) -> String {
    match SigmaSchedule::parse_a1111(name) {
        Ok(Some(schedule)) => schedule.name().to_string(),
        Ok(None) => "automatic".to_string(),
        Err(_) => name.trim().to_string(),
    }
}

/// Splits an A1111 ≤1.8 combined name ("DPM++ 2M SDE Karras") into the sampler label and
/// the schedule name, as A1111 1.9+ does; `None` when no schedule suffix is found.
pub fn split_schedule_suffix(name: &str) -> Option<(String, String)> {
    let lower = name.trim().to_ascii_lowercase();
    let mut suffixes: Vec<(String, &str)> = Vec::new();
    for (n, l, a, _, _) in SCHEDULES {
        suffixes.push((n.to_string(), n));
        suffixes.push((l.to_ascii_lowercase(), n));
        for x in *a {
            suffixes.push((x.to_ascii_lowercase(), n));
        }
    }
    suffixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    suffixes.into_iter().find_map(|(suffix, n)| {
        let head = lower.strip_suffix(&suffix)?.strip_suffix(' ')?;
        let head = name.trim()[..head.len()].to_string();
        (!head.is_empty()).then(|| (head, n.to_string()))
    })
}

/// Keys that only A1111 payloads carry (this worker's own schema has none of them).
fn a1111_only(key: &str) -> bool {
    let native = crate::handler::request::accepted_fields();
    (COMMON_FIELDS.contains(&key) || TXT2IMG_FIELDS.contains(&key) || IMG2IMG_FIELDS.contains(&key))
        && !native.contains(&key)
        && !matches!(key, "response_format" | "infotext")
}

/// An A1111 payload: an A1111-only key, or both `sampler_name` and `scheduler` (a schedule
/// type there, a sampler in this worker's schema). A request with only this worker's field
/// names stays in this worker's schema (a `seed` of −1 there is still an error).
pub fn looks_like(obj: &Map<String, Value>) -> bool {
    obj.keys().any(|k| a1111_only(k))
        || (obj.contains_key("sampler_name") && obj.contains_key("scheduler"))
}

fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn is_blank(v: Option<&Value>) -> bool {
    match v {
        None => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(_) => false,
    }
}

/// Translates an A1111 payload for `mode`.
pub fn translate(
    obj: &Map<String, Value>,
    mode: Mode,
    args: &DialectArgs,
    catalog: &Catalog,
) -> Result<Translated, ValidationErrors> {
    let mut obj = obj.clone();
    let mut out = Out::new(args.strict_input);
    let response = take_response_format(&mut obj, super::ResponseFormat::A1111, &mut out.errors);
    let img2img = match mode {
        Mode::Txt2Img => false,
        Mode::Img2Img => true,
        Mode::Auto => obj.contains_key("init_images"),
    };
    let own: &[&str] = if img2img {
        IMG2IMG_FIELDS
    } else {
        TXT2IMG_FIELDS
    };
    let accepted: Vec<&str> = COMMON_FIELDS.iter().chain(own).copied().collect();
    for key in obj.keys() {
        if !accepted.contains(&key.as_str()) {
            out.unknown(key, &accepted);
        }
    }

    // Prompts: A1111 encodes "" when no negative prompt is sent.
    for field in ["prompt", "negative_prompt"] {
        match get(&obj, field) {
            None => out.set(field, Value::from("")),
            Some(v) if v.is_string() => out.set(field, v.clone()),
            Some(v) => out.refuse(field, v, "a string"),
        }
    }
    if !is_blank(get(&obj, "styles")) {
        out.refuse(
            "styles",
            &obj["styles"],
            "[] (saved styles live on an A1111 server; send the prompt text)",
        );
    }

    seeds(&obj, &mut out);
    let sampler = sampler(&obj, &mut out);
    let kind = sampler
        .as_deref()
        .and_then(|l| names::parse_sampler_label(l).ok())
        .map(|(k, _)| k);

    // Sizes, steps, guidance, batch.
    let size = |k: &str| get(&obj, k).cloned().unwrap_or(Value::from(DEFAULT_SIDE));
    out.set("width", size("width"));
    out.set("height", size("height"));
    out.set(
        "num_inference_steps",
        get(&obj, "steps")
            .cloned()
            .unwrap_or(Value::from(DEFAULT_STEPS)),
    );
    out.set(
        "guidance_scale",
        get(&obj, "cfg_scale")
            .cloned()
            .unwrap_or(Value::from(DEFAULT_CFG)),
    );
    let count = |out: &mut Out, k: &str| -> u64 {
        match get(&obj, k) {
            None => 1,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => n,
                _ => {
                    out.refuse(k, v, "an integer of at least 1");
                    1
                }
            },
        }
    };
    let batch_size = count(&mut out, "batch_size");
    let n_iter = count(&mut out, "n_iter");
    if batch_size * n_iter > 8 {
        out.errors.push(format!(
            "fields `batch_size` × `n_iter`: {batch_size} × {n_iter} images is too many \
             (allowed: at most 8 images per job)"
        ));
    }
    out.set("num_images", Value::from(batch_size * n_iter));
    out.set("noise", Value::from("nv"));
    out.set("prompt_weighting", Value::from("a1111"));

    refuse_unsupported(&obj, &mut out);
    sampler_options(&obj, &mut out, kind);
    override_settings(&obj, &mut out, kind, catalog);
    if img2img {
        init_images(&obj, &mut out);
    } else {
        hires(&obj, &mut out, sampler.as_deref());
    }
    if let Some(text) = get(&obj, "infotext") {
        // The infotext fills what the payload did not set; A1111's defaults do not count.
        let payload_sets = |_: &Map<String, Value>, canonical: &str| sets(&obj, canonical);
        merge_infotext(&mut out, "infotext", text, &payload_sets);
    }

    let send_images = get(&obj, "send_images")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let mut parameters = obj.clone();
    for (k, v) in [
        ("prompt", json!("")),
        ("negative_prompt", json!("")),
        ("seed", json!(-1)),
        ("sampler_name", json!(sampler.clone().unwrap_or_default())),
        ("batch_size", json!(1)),
        ("n_iter", json!(1)),
        ("steps", json!(DEFAULT_STEPS)),
        ("cfg_scale", json!(DEFAULT_CFG)),
        ("width", json!(DEFAULT_SIDE)),
        ("height", json!(DEFAULT_SIDE)),
    ] {
        parameters.entry(k).or_insert(v);
    }
    // Image data is not echoed (A1111 also drops it unless `include_init_images`).
    for k in ["init_images", "mask"] {
        if parameters.contains_key(k) {
            parameters.insert(k.to_string(), Value::Null);
        }
    }
    let echo = A1111Echo {
        parameters: Value::Object(parameters),
        batch_size: batch_size as u32,
        send_images,
    };
    out.finish(Dialect::A1111, response, Some(echo))
}

/// The payload fields behind each canonical field the translation fills.
const SOURCES: &[(&str, &[&str])] = &[
    ("prompt", &["prompt"]),
    ("negative_prompt", &["negative_prompt"]),
    ("width", &["width"]),
    ("height", &["height"]),
    ("num_inference_steps", &["steps"]),
    ("guidance_scale", &["cfg_scale"]),
    ("seed", &["seed"]),
    ("scheduler", &["sampler_name", "sampler_index"]),
    ("schedule", &["scheduler"]),
    ("subseed", &["subseed"]),
    ("subseed_strength", &["subseed_strength"]),
    ("hires_scale", &["hr_scale", "hr_resize_x", "hr_resize_y"]),
    ("hires_steps", &["hr_second_pass_steps"]),
    ("hires_denoise", &["denoising_strength"]),
    ("strength", &["denoising_strength"]),
];

/// Whether the payload itself sets the canonical field `canonical` (−1 seeds and empty
/// strings are A1111's "not set").
fn sets(obj: &Map<String, Value>, canonical: &str) -> bool {
    let keys = SOURCES
        .iter()
        .find(|(c, _)| *c == canonical)
        .map_or(&[][..], |(_, k)| *k);
    keys.iter().any(|k| match get(obj, k) {
        None => false,
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(v) => v.as_i64() != Some(-1),
    })
}

/// `seed`, `subseed`, `subseed_strength`, `seed_resize_from_*`: −1 = random.
fn seeds(obj: &Map<String, Value>, out: &mut Out) {
    let signed = |out: &mut Out, k: &str| -> Option<Option<u64>> {
        let v = get(obj, k)?;
        match v.as_i64() {
            Some(-1) => Some(None),
            Some(n) if n >= 0 => Some(Some(n as u64)),
            _ => match v.as_u64() {
                Some(n) => Some(Some(n)),
                None => {
                    out.refuse(k, v, "-1 (random) or an integer seed");
                    None
                }
            },
        }
    };
    if let Some(Some(seed)) = signed(out, "seed") {
        out.set("seed", Value::from(seed));
    }
    let strength = get(obj, "subseed_strength").and_then(Value::as_f64);
    let subseed = signed(out, "subseed");
    if let Some(x) = strength.filter(|x| *x != 0.0) {
        let subseed = subseed
            .flatten()
            .unwrap_or_else(|| u64::from(rand::random::<u32>()));
        out.set("subseed", Value::from(subseed));
        out.set("subseed_strength", Value::from(x));
    } else if let Some(v) = get(obj, "subseed_strength").filter(|v| !v.is_number()) {
        out.refuse("subseed_strength", v, "a number from 0 to 1");
    }
    for k in ["seed_resize_from_h", "seed_resize_from_w"] {
        if let Some(v) = get(obj, k) {
            if !matches!(v.as_i64(), Some(-1) | Some(0)) {
                out.refuse(k, v, "-1 (seed resizing is not supported)");
            }
        }
    }
}

/// `sampler_name` (else `sampler_index`, else Euler) and `scheduler` → the canonical
/// `scheduler` (a sampler label) and `schedule`. Returns the sampler label.
fn sampler(obj: &Map<String, Value>, out: &mut Out) -> Option<String> {
    let (field, value) = ["sampler_name", "sampler_index"]
        .into_iter()
        .find_map(|k| get(obj, k).filter(|v| !is_blank(Some(v))).map(|v| (k, v)))
        .unwrap_or(("sampler_name", &Value::Null));
    let name = match value {
        Value::Null => DEFAULT_SAMPLER.to_string(),
        Value::String(s) => s.trim().to_string(),
        other => {
            out.refuse(field, other, "an A1111 sampler name");
            return None;
        }
    };
    let (label, split) = if sampler_label_known(&name) {
        (name.clone(), None)
    } else {
        match split_schedule_suffix(&name) {
            Some((head, schedule)) => (head, Some(schedule)),
            None => (name.clone(), None),
        }
    };
    check_sampler(out, field, &name, &label);
    out.set("scheduler", Value::from(label.clone()));
    let schedule = match get(obj, "scheduler") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(schedule_label(s)),
        Some(Value::String(_)) | None => split.map(|schedule| schedule_label(&schedule)),
        Some(other) => {
            out.refuse("scheduler", other, "an A1111 schedule type name or label");
            None
        }
    };
    if let Some(s) = schedule {
        if schedule_label_known(&s) {
            out.set("schedule", Value::from(s));
        } else {
            out.errors.push(format!(
                "field `scheduler`: {s:?} is not available on this worker (available: {})",
                names::SCHEDULE_LABELS_ALLOWED
            ));
        }
    }
    Some(label)
}

/// Features this worker does not have: refused when asked for, accepted when off.
fn refuse_unsupported(obj: &Map<String, Value>, out: &mut Out) {
    for k in ["restore_faces", "tiling"] {
        if let Some(v) = get(obj, k) {
            if v != &Value::Bool(false) {
                out.refuse(k, v, "false (not available on this worker)");
            }
        }
    }
    if !is_blank(get(obj, "alwayson_scripts")) {
        let names: Vec<String> = get(obj, "alwayson_scripts")
            .and_then(Value::as_object)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        out.errors.push(format!(
            "field `alwayson_scripts`: scripts {names:?} are not available on this worker \
             (allowed: {{}})"
        ));
    }
    for k in ["script_name", "refiner_checkpoint", "firstpass_image"] {
        if !is_blank(get(obj, k)) {
            out.refuse(k, &obj[k], "null (not available on this worker)");
        }
    }
    if !is_blank(get(obj, "script_args")) {
        out.refuse("script_args", &obj["script_args"], "[]");
    }
    if let Some(v) = get(obj, "disable_extra_networks") {
        if v != &Value::Bool(false) {
            out.refuse(
                "disable_extra_networks",
                v,
                "false (`<lora:…>` tags are always read)",
            );
        }
    }
    for k in [
        "send_images",
        "save_images",
        "do_not_save_samples",
        "do_not_save_grid",
        "comments",
        "force_task_id",
        "override_settings_restore_afterwards",
        "refiner_switch_at",
    ] {
        if get(obj, k).is_some() {
            out.ignored.push(k.to_string());
        }
    }
}

/// `eta`, `s_churn`, `s_tmin`, `s_tmax`, `s_noise`, `s_min_uncond`: accepted where they
/// change nothing for the sampler, refused otherwise. `eta: 0` with Euler a is plain Euler
/// (the ancestral step adds no noise), and runs as such.
fn sampler_options(obj: &Map<String, Value>, out: &mut Out, kind: Option<SamplerKind>) {
    let num = |k: &str| get(obj, k).map(|v| (v, v.as_f64()));
    let label = kind.map_or("this sampler", |k| k.label());
    let mut adds_noise = kind.is_some_and(SamplerKind::is_stochastic);
    if let Some((v, x)) = num("eta") {
        match (kind, x) {
            (Some(SamplerKind::EulerAncestral), Some(0.0)) => {
                out.set("scheduler", Value::from("Euler"));
                out.notes
                    .push("`eta`: 0 makes Euler a add no noise; it runs as Euler".to_string());
                adds_noise = false;
            }
            (Some(k), Some(x)) if k.is_stochastic() && x == 1.0 => {}
            (Some(SamplerKind::Ddim), Some(0.0)) => {}
            (Some(k), Some(_)) if !k.is_stochastic() && k != SamplerKind::Ddim => {
                out.inert("eta", &format!("{label} adds no noise"));
            }
            _ => {
                let allowed = if kind == Some(SamplerKind::Ddim) {
                    "0 for DDIM"
                } else {
                    "1 (the sampler's own noise)"
                };
                out.refuse("eta", v, allowed);
            }
        }
    }
    if let Some((v, x)) = num("s_churn") {
        if x != Some(0.0) {
            out.refuse("s_churn", v, "0");
        }
    }
    for k in ["s_tmin", "s_tmax"] {
        if get(obj, k).is_some() {
            out.inert(k, "only used with s_churn above 0");
        }
    }
    if let Some((v, x)) = num("s_noise") {
        if x != Some(1.0) {
            if adds_noise {
                out.refuse("s_noise", v, "1");
            } else {
                out.inert("s_noise", &format!("{label} adds no noise"));
            }
        }
    }
    if let Some((v, x)) = num("s_min_uncond") {
        if x != Some(0.0) {
            out.refuse("s_min_uncond", v, "0");
        }
    }
}

/// Keys of `override_settings` this worker reads.
pub const OVERRIDE_KEYS: &[&str] = &[
    "sd_model_checkpoint",
    "CLIP_stop_at_last_layers",
    "eta_noise_seed_delta",
    "randn_source",
    "sd_vae",
];

fn override_settings(
    obj: &Map<String, Value>,
    out: &mut Out,
    kind: Option<SamplerKind>,
    catalog: &Catalog,
) {
    let Some(v) = get(obj, "override_settings") else {
        return;
    };
    let Some(settings) = v.as_object() else {
        out.refuse("override_settings", v, "an object {option: value}");
        return;
    };
    for (key, value) in settings {
        let field = format!("override_settings.{key}");
        match key.as_str() {
            "sd_model_checkpoint" => match value.as_str() {
                Some(title) => match checkpoint_name(title, catalog) {
                    Some(name) => out.set("checkpoint", Value::from(name)),
                    None => out.refuse(
                        &field,
                        value,
                        &format!("{:?}", catalog.checkpoint.a1111_title()),
                    ),
                },
                None => out.refuse(&field, value, "a checkpoint title"),
            },
            "CLIP_stop_at_last_layers" => out.set("clip_skip", value.clone()),
            "eta_noise_seed_delta" => {
                let uses = kind.is_some_and(SamplerKind::is_stochastic);
                if value.as_i64() != Some(0) && uses {
                    out.refuse(&field, value, "0 (a noise seed offset is not supported)");
                }
            }
            "randn_source" => match value.as_str().map(str::to_ascii_uppercase).as_deref() {
                Some("GPU") | Some("NV") => out.set("noise", Value::from("nv")),
                Some("CPU") => out.set("noise", Value::from("cpu")),
                _ => out.refuse(&field, value, "GPU, NV, CPU"),
            },
            "sd_vae" => {
                if !value
                    .as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case("automatic"))
                {
                    out.refuse(&field, value, "\"Automatic\" (VAE choice is not supported)");
                }
            }
            _ => out.unknown(&field, OVERRIDE_KEYS),
        }
    }
}

/// The loaded checkpoint's name for an A1111 checkpoint title (`file [hash]`), file name,
/// file stem, model name or hash.
fn checkpoint_name(title: &str, catalog: &Catalog) -> Option<String> {
    if catalog.unchecked {
        return Some(title.to_string());
    }
    let c = &catalog.checkpoint;
    let t = title.trim();
    let stem = c
        .file_name
        .rsplit_once('.')
        .map_or(c.file_name.as_str(), |(s, _)| s);
    let head = t.split(" [").next().unwrap_or(t).trim();
    let matches = [
        c.a1111_title().as_str(),
        &c.file_name,
        stem,
        &c.name,
        &c.autov2,
    ]
    .iter()
    .any(|x| x.eq_ignore_ascii_case(t) || x.eq_ignore_ascii_case(head));
    matches.then(|| c.name.clone())
}

/// img2img: `init_images` (one image, base64 or URL), `denoising_strength`, `resize_mode`.
fn init_images(obj: &Map<String, Value>, out: &mut Out) {
    match get(obj, "init_images").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            if list.iter().any(|x| x != &list[0]) {
                out.errors.push(format!(
                    "field `init_images`: {} images is not supported (allowed: one image)",
                    list.len()
                ));
            }
            match list[0].as_str() {
                Some(s) if is_url(s) => out.set("image_url", Value::from(s)),
                Some(s) => out.set("image", Value::from(s)),
                None => out.refuse("init_images[0]", &list[0], "base64 image data or a URL"),
            }
        }
        _ => out.errors.push(
            "field `init_images` is required for img2img (a list with one base64 image or URL)"
                .to_string(),
        ),
    }
    if let Some(v) = get(obj, "denoising_strength") {
        out.set("strength", v.clone());
    }
    match get(obj, "resize_mode").map(|v| (v, v.as_u64())) {
        None | Some((_, Some(1))) => {}
        Some((_, Some(0))) => out.notes.push(
            "`resize_mode`: 0 (just resize) runs as 1 (crop and resize): an image of another \
             aspect ratio is cropped, not stretched"
                .to_string(),
        ),
        Some((v, _)) => out.refuse("resize_mode", v, "0 or 1"),
    }
    for k in ["mask", "latent_mask"] {
        if !is_blank(get(obj, k)) {
            out.refuse(k, &obj[k], "null (inpainting is not supported)");
        }
    }
    if let Some(v) = get(obj, "image_cfg_scale") {
        out.refuse("image_cfg_scale", v, "null (instruct-pix2pix models only)");
    }
    if let Some(v) = get(obj, "initial_noise_multiplier") {
        if v.as_f64() != Some(1.0) {
            out.refuse("initial_noise_multiplier", v, "1");
        }
    }
}

fn is_url(s: &str) -> bool {
    let l = s.trim().to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

/// txt2img's hires fix: `enable_hr` with what the engine's hires pass expresses (latent
/// bilinear upscale by a factor, its own steps and denoise, same sampler, prompt and CFG).
fn hires(obj: &Map<String, Value>, out: &mut Out, sampler: Option<&str>) {
    let enabled = get(obj, "enable_hr")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if !enabled {
        if get(obj, "denoising_strength").is_some() {
            out.inert("denoising_strength", "only used by txt2img with enable_hr");
        }
        return;
    }
    for k in ["firstphase_width", "firstphase_height"] {
        if let Some(v) = get(obj, k) {
            if v.as_u64() != Some(0) {
                out.refuse(k, v, "0 (use width/height and hr_scale)");
            }
        }
    }
    let upscaler = get(obj, "hr_upscaler")
        .and_then(Value::as_str)
        .unwrap_or("");
    let runs = upscaler.trim().is_empty()
        || LATENT_UPSCALERS
            .iter()
            .any(|(n, ok)| *ok && n.eq_ignore_ascii_case(upscaler.trim()));
    if !runs {
        let ok: Vec<&str> = LATENT_UPSCALERS
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(n, _)| *n)
            .collect();
        out.refuse("hr_upscaler", &obj["hr_upscaler"], &ok.join(", "));
    }
    let side = |k: &str| get(obj, k).and_then(Value::as_u64).unwrap_or(DEFAULT_SIDE);
    let (w, h) = (side("width"), side("height"));
    let rx = get(obj, "hr_resize_x").and_then(Value::as_u64).unwrap_or(0);
    let ry = get(obj, "hr_resize_y").and_then(Value::as_u64).unwrap_or(0);
    let scale = if rx == 0 && ry == 0 {
        get(obj, "hr_scale")
            .and_then(Value::as_f64)
            .unwrap_or(DEFAULT_HR_SCALE)
    } else {
        let scale = if rx > 0 {
            rx as f64 / w as f64
        } else {
            ry as f64 / h as f64
        };
        let (sw, sh) = crate::pipeline::img2img::hires_size(w as u32, h as u32, scale as f32);
        let fits = (rx == 0 || u64::from(sw) == rx) && (ry == 0 || u64::from(sh) == ry);
        if !fits {
            out.errors.push(format!(
                "fields `hr_resize_x`/`hr_resize_y`: {rx}x{ry} is not a scale of {w}x{h} the \
                 hires pass can make (allowed: the same aspect ratio, e.g. {sw}x{sh}; or use \
                 hr_scale)"
            ));
        }
        scale
    };
    out.set("hires_scale", Value::from(scale));
    if let Some(v) = get(obj, "hr_second_pass_steps") {
        out.set("hires_steps", v.clone());
    }
    if let Some(v) = get(obj, "denoising_strength") {
        out.set("hires_denoise", v.clone());
    }
    let same = |k: &str, keep: &[&str], main: Option<&Value>| {
        let v = get(obj, k)?;
        let s = v.as_str().map(str::trim).unwrap_or("");
        let same_as_main = main.is_some_and(|m| m == v);
        let keeps = (s.is_empty() && v.is_string())
            || keep.iter().any(|x| x.eq_ignore_ascii_case(s))
            || same_as_main;
        (!keeps).then(|| v.clone())
    };
    let main_sampler = sampler.map(Value::from);
    if let Some(v) = same(
        "hr_sampler_name",
        &["Use same sampler"],
        main_sampler.as_ref(),
    ) {
        out.refuse(
            "hr_sampler_name",
            &v,
            "the first pass's sampler (\"Use same sampler\")",
        );
    }
    if let Some(v) = same(
        "hr_scheduler",
        &["Use same scheduler"],
        get(obj, "scheduler"),
    ) {
        out.refuse(
            "hr_scheduler",
            &v,
            "the first pass's schedule (\"Use same scheduler\")",
        );
    }
    if let Some(v) = same("hr_checkpoint_name", &["Use same checkpoint"], None) {
        out.refuse("hr_checkpoint_name", &v, "\"Use same checkpoint\"");
    }
    for (k, main) in [
        ("hr_prompt", "prompt"),
        ("hr_negative_prompt", "negative_prompt"),
    ] {
        if let Some(v) = same(k, &[], get(obj, main)) {
            out.refuse(k, &v, &format!("\"\" (the same as `{main}`)"));
        }
    }
    if let Some(v) = get(obj, "hr_cfg") {
        let main = get(obj, "cfg_scale")
            .and_then(Value::as_f64)
            .unwrap_or(DEFAULT_CFG);
        if v.as_f64() != Some(main) {
            out.refuse("hr_cfg", v, &format!("{main} (the same as `cfg_scale`)"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An infotext fills what the payload leaves out, A1111's defaults and "random" included.
    #[test]
    fn only_fields_the_payload_sets_win_over_an_infotext() {
        let payload = serde_json::json!({"steps": 20, "seed": -1, "prompt": " ",
                                         "sampler_name": "Euler", "cfg_scale": null});
        let obj = payload.as_object().unwrap();
        for (field, set) in [
            ("num_inference_steps", true),
            ("scheduler", true),
            ("seed", false),
            ("prompt", false),
            ("guidance_scale", false),
            ("width", false),
        ] {
            assert_eq!(sets(obj, field), set, "{field}");
        }
    }

    #[test]
    fn combined_names_split_like_a1111() {
        assert_eq!(
            split_schedule_suffix("DPM++ 2M SDE Karras"),
            Some(("DPM++ 2M SDE".to_string(), "karras".to_string()))
        );
        assert_eq!(
            split_schedule_suffix("Euler a SGM Uniform"),
            Some(("Euler a".to_string(), "sgm_uniform".to_string()))
        );
        assert_eq!(split_schedule_suffix("Euler"), None);
        assert_eq!(schedule_label("SGM Uniform"), "a1111_sgm_uniform");
        assert_eq!(schedule_label("Normal"), "a1111_normal");
        assert_eq!(schedule_label("Align Your Steps"), "align_your_steps");
        assert_eq!(schedule_label("karras"), "karras");
        assert_eq!(schedule_label("Automatic"), "automatic");
    }
}
