//! The job `input` schema: field names that existing RunPod SDXL clients send (worker-sdxl,
//! A1111-style API clients), with every violation collected and reported at once, before the
//! GPU is touched.

use serde_json::{Map, Value};

use crate::image::OutputFormat;
use crate::prompt::Emphasis;
use crate::sampling::names::{
    self, parse_schedule_label, SAMPLER_LABELS_ALLOWED, SCHEDULE_LABELS_ALLOWED,
};
use crate::sampling::{NoiseKind, SamplerKind, SdeNoise, SigmaSchedule};

/// Largest prompt accepted, in characters. Long prompts are fine (they are chunked), but a
/// megabyte of text is a mistake or an attack, not a prompt.
pub const MAX_PROMPT_CHARS: usize = 20_000;

/// Largest width or height a job may ask for, hires fix included: 2048 × 2048 is 4.2 MP,
/// four times SDXL's native size, which a 24 GB card still holds. The engine's own bound
/// (`pipeline::MAX_SIDE`) is wider, for direct library use.
pub const MAX_REQUEST_SIDE: u32 = 2048;

/// Canonical field names with their accepted aliases. Anything else is rejected.
const FIELDS: &[(&str, &[&str])] = &[
    ("prompt", &[]),
    ("negative_prompt", &[]),
    ("width", &[]),
    ("height", &[]),
    ("num_inference_steps", &["steps"]),
    ("guidance_scale", &["cfg_scale"]),
    ("seed", &[]),
    ("scheduler", &["sampler_name", "sampler"]),
    ("schedule", &["scheduler_type", "schedule_type"]),
    ("num_images", &["batch_size"]),
    ("checkpoint", &[]),
    ("loras", &[]),
    ("clip_skip", &[]),
    ("prompt_weighting", &["emphasis"]),
    ("guidance_rescale", &[]),
    ("output_format", &[]),
    ("output_quality", &[]),
    ("noise", &["rng"]),
    ("sde_noise", &[]),
    ("subseed", &[]),
    ("subseed_strength", &[]),
    ("image", &["init_image"]),
    ("image_url", &[]),
    ("strength", &["denoising_strength"]),
    ("hires_scale", &["hr_scale"]),
    ("hires_steps", &["hr_second_pass_steps"]),
    ("hires_denoise", &[]),
];

/// Every field name the schema accepts: canonical names and their aliases.
pub fn accepted_fields() -> Vec<&'static str> {
    FIELDS
        .iter()
        .flat_map(|(n, a)| std::iter::once(*n).chain(a.iter().copied()))
        .collect()
}

/// Whether `input` sets the canonical field `name` (under its name or an alias) to a value
/// other than `null`.
pub fn is_set(input: &Map<String, Value>, name: &str) -> bool {
    let aliases = FIELDS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a)
        .unwrap_or(&[]);
    std::iter::once(&name)
        .chain(aliases.iter())
        .any(|k| input.get(*k).is_some_and(|v| !v.is_null()))
}

/// Where an img2img input comes from. The image data itself is never echoed back.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageSource {
    /// Base64 or a `data:` URI; serialised as its length only.
    Inline(#[serde(serialize_with = "ser_len")] String),
    /// An http(s) URL; serialised without its query string (it may carry a token).
    Url(#[serde(serialize_with = "ser_url")] String),
}

fn ser_len<S: serde::Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("<{} bytes of image data>", v.len()))
}

fn ser_url<S: serde::Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&shown_url(v))
}

/// `url` as it may appear in errors and the echoed request: the image fetcher's redaction
/// (scheme, host, port and path; no user info, query or fragment, which may carry
/// credentials), or a placeholder for text that is not a URL.
fn shown_url(url: &str) -> String {
    match url::Url::parse(url.trim()) {
        Ok(u) => crate::image::input::redact_url(&u),
        Err(_) => "<not a URL>".to_string(),
    }
}

/// img2img settings of a request. The engine's `InitImage` holds the decoded image instead;
/// this keeps where it comes from and the strength as sent (f64, for the echoed request and
/// the infotext).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Img2ImgInput {
    pub source: ImageSource,
    /// Denoising strength in [0, 1].
    pub strength: f64,
}

/// Hires-fix settings of a request, in the f64 numbers the client sent (the echoed request
/// and the infotext show them); the engine's `HiresFix` takes them as f32.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct HiresInput {
    pub scale: f64,
    /// 0 = as many steps as the first pass.
    pub steps: u32,
    pub denoise: f64,
}

/// Default img2img strength (A1111's "Denoising strength" default).
pub const DEFAULT_STRENGTH: f64 = 0.75;
/// Default hires-fix denoising strength (A1111's default).
pub const DEFAULT_HIRES_DENOISE: f64 = 0.7;

/// One LoRA of a request, by its `models.toml` name.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LoraRequest {
    pub name: String,
    /// UNet weight; `None` = the default from `models.toml`.
    pub weight: Option<f64>,
    /// Text-encoder weight; `None` = same as `weight`.
    pub clip_weight: Option<f64>,
}

/// A validated generation request. Fields the job left out hold their defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GenerateInput {
    pub prompt: String,
    /// `None` when absent or `null`: diffusers then uses all-zero negative conditioning;
    /// `Some("")` encodes the empty string.
    pub negative_prompt: Option<String>,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub guidance_scale: f64,
    /// `None` = draw a random seed (the one used is always returned).
    pub seed: Option<u64>,
    pub sampler: SamplerKind,
    pub schedule: SigmaSchedule,
    pub num_images: u32,
    pub checkpoint: Option<String>,
    pub loras: Vec<LoraRequest>,
    pub clip_skip: Option<u32>,
    pub prompt_weighting: Emphasis,
    pub guidance_rescale: f64,
    pub output_format: OutputFormat,
    pub output_quality: u8,
    pub noise: NoiseKind,
    pub sde_noise: SdeNoise,
    /// A1111 variation seed and strength.
    pub subseed: Option<(u64, f64)>,
    pub img2img: Option<Img2ImgInput>,
    pub hires: Option<HiresInput>,
}

/// Defaults that depend on the loaded model rather than on the request.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Native resolution of the default checkpoint (1024 for SDXL).
    pub size: u32,
    /// Smallest width/height accepted. SDXL is poor below 256 (the default); the tiny test
    /// model's reference images are 128 px, so tests lower it.
    pub min_side: u32,
    pub steps: u32,
    pub guidance_scale: f64,
    pub sampler: SamplerKind,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            size: 1024,
            min_side: 256,
            steps: 30,
            guidance_scale: 5.0,
            sampler: SamplerKind::DpmPp2m,
        }
    }
}

/// Every problem found in a job's input, in field order. Displayed one per line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid input: {}", .0.join("; "))]
pub struct ValidationErrors(pub Vec<String>);

/// Collects violations while fields are read.
struct Checker<'a> {
    input: &'a Map<String, Value>,
    errors: Vec<String>,
}

impl<'a> Checker<'a> {
    /// The value of a field under its canonical name or one alias (both at once is an error).
    fn get(&mut self, name: &str) -> Option<&'a Value> {
        let aliases = FIELDS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
            .unwrap_or(&[]);
        let mut found: Vec<(&str, &'a Value)> = Vec::new();
        for key in std::iter::once(&name).chain(aliases.iter()) {
            if let Some(v) = self.input.get(*key) {
                found.push((key, v));
            }
        }
        if found.len() > 1 {
            let names: Vec<String> = found.iter().map(|(k, _)| format!("`{k}`")).collect();
            self.errors.push(format!(
                "fields {} are aliases of each other; send only one",
                names.join(" and ")
            ));
        }
        found
            .into_iter()
            .map(|(_, v)| v)
            .find(|v| !v.is_null() || name == "negative_prompt")
    }

    fn fail(&mut self, field: &str, value: &Value, allowed: &str) {
        self.errors.push(format!(
            "field `{field}`: {} is not allowed (allowed: {allowed})",
            short(value)
        ));
    }

    fn string(&mut self, field: &str) -> Option<String> {
        let v = self.get(field)?;
        match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.fail(field, v, "a string");
                None
            }
        }
    }

    fn integer(&mut self, field: &str, min: u64, max: u64) -> Option<u64> {
        let v = self.get(field)?;
        let allowed = format!("an integer from {min} to {max}");
        match as_integer(v) {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.fail(field, v, &allowed);
                None
            }
        }
    }

    fn number(&mut self, field: &str, min: f64, max: f64) -> Option<f64> {
        let v = self.get(field)?;
        match v.as_f64() {
            Some(x) if x.is_finite() && x >= min && x <= max => Some(x),
            _ => {
                self.fail(field, v, &format!("a number from {min} to {max}"));
                None
            }
        }
    }
}

/// JSON integers, and floats with no fractional part (`1024.0`), as many clients send them.
fn as_integer(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let x = v.as_f64()?;
    (x >= 0.0 && x.fract() == 0.0 && x <= u64::MAX as f64).then_some(x as u64)
}

/// A value as shown in an error: JSON, cut to a readable length.
pub(crate) fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(57).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// How names are compared: surrounding white space and case do not count.
fn label_key(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

/// Reads a name through `parse` or records an error listing `allowed`. Non-string values are
/// errors too.
fn named<T>(
    c: &mut Checker,
    field: &str,
    allowed: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    let v = c.get(field)?;
    let found = v.as_str().and_then(parse);
    if found.is_none() {
        c.fail(field, v, allowed);
    }
    found
}

/// Reads a closed set of names (case-insensitive) or records an error listing them.
fn choice<T: Copy>(c: &mut Checker, field: &str, table: &[(&str, T)]) -> Option<T> {
    let names: Vec<&str> = table.iter().map(|(l, _)| *l).collect();
    named(c, field, &names.join(", "), |s| {
        let key = label_key(s);
        table.iter().find(|(l, _)| *l == key).map(|&(_, t)| t)
    })
}

/// Reads and validates a job's `input`. All problems are returned together.
pub fn parse(input: &Value, defaults: &Defaults) -> Result<GenerateInput, ValidationErrors> {
    let Some(obj) = input.as_object() else {
        return Err(ValidationErrors(vec![format!(
            "`input` must be a JSON object with at least `prompt`, got {}",
            short(input)
        )]));
    };
    let mut c = Checker {
        input: obj,
        errors: Vec::new(),
    };

    let known = accepted_fields();
    for key in obj.keys() {
        if !known.contains(&key.as_str()) {
            c.errors.push(format!(
                "unknown field `{key}` (accepted fields: {})",
                known.join(", ")
            ));
        }
    }

    let prompt = match c.get("prompt") {
        None => {
            c.errors
                .push("field `prompt` is required (a string)".to_string());
            None
        }
        Some(_) => c.string("prompt"),
    };
    let negative_prompt = match c.get("negative_prompt") {
        None | Some(Value::Null) => None,
        Some(_) => c.string("negative_prompt"),
    };
    for (field, text) in [("prompt", &prompt), ("negative_prompt", &negative_prompt)] {
        if let Some(t) = text {
            let n = t.chars().count();
            if n > MAX_PROMPT_CHARS {
                c.errors.push(format!(
                    "field `{field}`: {n} characters is too long (allowed: at most {MAX_PROMPT_CHARS})"
                ));
            }
        }
    }

    // 2048 x 2048 = 4.19 MP, so the per-side bounds also keep every image within 4.2 MP.
    let min = u64::from(defaults.min_side);
    let size = |c: &mut Checker, field: &str| -> Option<u32> {
        let v = c.get(field)?;
        match as_integer(v) {
            Some(n) if (min..=u64::from(MAX_REQUEST_SIDE)).contains(&n) && n % 8 == 0 => {
                Some(n as u32)
            }
            _ => {
                c.fail(
                    field,
                    v,
                    &format!("a multiple of 8 from {min} to {MAX_REQUEST_SIDE}"),
                );
                None
            }
        }
    };
    let width = size(&mut c, "width");
    let height = size(&mut c, "height");
    let (w, h) = (
        width.unwrap_or(defaults.size),
        height.unwrap_or(defaults.size),
    );

    let steps = c.integer("num_inference_steps", 1, 150);
    let guidance = c.number("guidance_scale", 0.0, 30.0);
    let seed = match c.get("seed") {
        None => None,
        Some(v) => match as_integer(v) {
            Some(n) => Some(n),
            None => {
                c.fail("seed", v, "an integer from 0 to 18446744073709551615");
                None
            }
        },
    };

    let sampler = named(&mut c, "scheduler", SAMPLER_LABELS_ALLOWED, |s| {
        s.parse().ok()
    });
    let schedule = named(&mut c, "schedule", SCHEDULE_LABELS_ALLOWED, |s| {
        parse_schedule_label(s).ok()
    });
    let (sampler, schedule) = names::choose(sampler, defaults.sampler, schedule.flatten());

    let num_images = c.integer("num_images", 1, 8);
    let checkpoint = c.string("checkpoint");
    let clip_skip = c.integer("clip_skip", 1, 13).map(|n| n as u32);
    let prompt_weighting = choice(&mut c, "prompt_weighting", Emphasis::LABELS).unwrap_or_default();
    let guidance_rescale = c.number("guidance_rescale", 0.0, 1.0).unwrap_or(0.0);
    let output_format = named(
        &mut c,
        "output_format",
        OutputFormat::ALLOWED,
        OutputFormat::from_name,
    )
    .unwrap_or(OutputFormat::Png);
    let output_quality = c.integer("output_quality", 1, 100).unwrap_or(90) as u8;
    let noise = choice(&mut c, "noise", NoiseKind::LABELS).unwrap_or_default();
    let sde_noise = choice(&mut c, "sde_noise", SdeNoise::LABELS).unwrap_or_default();
    let subseed = c.integer("subseed", 0, u64::MAX);
    let subseed_strength = c.number("subseed_strength", 0.0, 1.0);
    let subseed = match (subseed, subseed_strength) {
        (Some(s), strength) => Some((s, strength.unwrap_or(0.0))),
        (None, Some(x)) if x > 0.0 => {
            c.errors.push(
                "field `subseed_strength` needs `subseed` (an integer seed to blend towards)"
                    .to_string(),
            );
            None
        }
        (None, _) => None,
    };
    let img2img = parse_img2img(&mut c);
    let hires = parse_hires(&mut c);
    if img2img.is_some() && hires.is_some() {
        c.errors.push(
            "fields `image`/`image_url` and `hires_scale` cannot be combined (allowed: img2img \
             or hires fix)"
                .to_string(),
        );
    }
    if let Some(hr) = &hires {
        // The final image obeys the same per-side limit as a plain request.
        let (hw, hh) = crate::pipeline::img2img::hires_size(w, h, hr.scale as f32);
        if hw.max(hh) > MAX_REQUEST_SIDE {
            c.errors.push(format!(
                "field `hires_scale`: {} makes a {hw}x{hh} image (allowed: a scale that keeps both \
                 sides at most {MAX_REQUEST_SIDE})",
                hr.scale
            ));
        }
    }
    let loras = parse_loras(&mut c);

    if !c.errors.is_empty() {
        return Err(ValidationErrors(c.errors));
    }
    Ok(GenerateInput {
        prompt: prompt.unwrap_or_default(),
        negative_prompt,
        width: w,
        height: h,
        steps: steps.map(|s| s as u32).unwrap_or(defaults.steps),
        guidance_scale: guidance.unwrap_or(defaults.guidance_scale),
        seed,
        sampler,
        schedule,
        num_images: num_images.map(|n| n as u32).unwrap_or(1),
        checkpoint,
        loras,
        clip_skip,
        prompt_weighting,
        guidance_rescale,
        output_format,
        output_quality,
        noise,
        sde_noise,
        subseed,
        img2img,
        hires,
    })
}

/// `image` (base64 / data URI) or `image_url` with `strength`.
fn parse_img2img(c: &mut Checker) -> Option<Img2ImgInput> {
    let image = c.string("image");
    let url = c.string("image_url");
    let strength = c.number("strength", 0.0, 1.0);
    let source = match (image, url) {
        (Some(_), Some(_)) => {
            c.errors
                .push("fields `image` and `image_url` are alternatives; send only one".to_string());
            return None;
        }
        (Some(data), None) if data.trim().is_empty() => {
            c.errors
                .push("field `image`: empty (allowed: base64 image data or a data URI)".into());
            return None;
        }
        (Some(data), None) => ImageSource::Inline(data),
        (None, Some(url)) => {
            let lower = url.trim().to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                c.errors.push(format!(
                    "field `image_url`: {:?} is not allowed (allowed: an http:// or https:// URL)",
                    shown_url(&url)
                ));
                return None;
            }
            ImageSource::Url(url)
        }
        (None, None) => {
            if strength.is_some() {
                c.errors.push(
                    "field `strength` needs `image` or `image_url` (the image to start from)"
                        .to_string(),
                );
            }
            return None;
        }
    };
    Some(Img2ImgInput {
        source,
        strength: strength.unwrap_or(DEFAULT_STRENGTH),
    })
}

/// `hires_scale` (> 1 enables the hires fix), `hires_steps`, `hires_denoise`.
fn parse_hires(c: &mut Checker) -> Option<HiresInput> {
    let scale = c.number("hires_scale", 1.0, 4.0);
    let steps = c.integer("hires_steps", 0, 150).map(|n| n as u32);
    let denoise = c.number("hires_denoise", 0.0, 1.0);
    match scale {
        Some(s) if s > 1.0 => Some(HiresInput {
            scale: s,
            steps: steps.unwrap_or(0),
            denoise: denoise.unwrap_or(DEFAULT_HIRES_DENOISE),
        }),
        _ => {
            if steps.is_some() || denoise.is_some() {
                c.errors.push(
                    "fields `hires_steps`/`hires_denoise` need `hires_scale` above 1 (allowed: \
                     1 < hires_scale <= 4)"
                        .to_string(),
                );
            }
            None
        }
    }
}

fn parse_loras(c: &mut Checker) -> Vec<LoraRequest> {
    let Some(v) = c.get("loras") else {
        return Vec::new();
    };
    let Some(items) = v.as_array() else {
        c.fail(
            "loras",
            v,
            "a list of {\"name\": string, \"weight\": number, \"clip_weight\": number}",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("loras[{i}]");
        let Some(obj) = item.as_object() else {
            c.fail(
                &field,
                item,
                "an object {\"name\", \"weight\", \"clip_weight\"}",
            );
            continue;
        };
        for key in obj.keys() {
            if !["name", "weight", "clip_weight"].contains(&key.as_str()) {
                c.errors.push(format!(
                    "unknown field `{field}.{key}` (accepted: name, weight, clip_weight)"
                ));
            }
        }
        let name = match obj.get("name").and_then(Value::as_str) {
            Some(n) if !n.trim().is_empty() => Some(n.to_string()),
            _ => {
                c.errors.push(format!(
                    "field `{field}.name` is required (the name of a LoRA from models.toml)"
                ));
                None
            }
        };
        let mut weight = |key: &str| -> Option<f64> {
            let v = obj.get(key)?;
            match v.as_f64() {
                Some(x) if x.is_finite() && (-10.0..=10.0).contains(&x) => Some(x),
                _ => {
                    c.fail(&format!("{field}.{key}"), v, "a number from -10 to 10");
                    None
                }
            }
        };
        let w = weight("weight");
        let cw = weight("clip_weight");
        if let Some(name) = name {
            out.push(LoraRequest {
                name,
                weight: w,
                clip_weight: cw,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(v: Value) -> GenerateInput {
        parse(&v, &Defaults::default()).expect("valid input")
    }

    fn errs(v: Value) -> Vec<String> {
        parse(&v, &Defaults::default())
            .expect_err("invalid input")
            .0
    }

    #[test]
    fn defaults_fill_missing_fields() {
        let r = ok(json!({"prompt": "a cat"}));
        assert_eq!((r.width, r.height, r.steps), (1024, 1024, 30));
        assert_eq!(r.sampler, SamplerKind::DpmPp2m);
        assert_eq!(r.schedule, SigmaSchedule::Karras);
        assert_eq!(r.negative_prompt, None);
        assert_eq!(r.num_images, 1);
        assert_eq!(r.output_format, OutputFormat::Png);
    }

    #[test]
    fn aliases_and_labels_are_accepted() {
        let r = ok(
            json!({"prompt": "x", "steps": 20, "cfg_scale": 7.5, "sampler_name": "Euler a",
            "batch_size": 2, "negative_prompt": "", "seed": 12345, "width": 832.0, "height": 1216}),
        );
        assert_eq!(r.steps, 20);
        assert_eq!(r.guidance_scale, 7.5);
        assert_eq!(r.sampler, SamplerKind::EulerAncestral);
        assert_eq!(r.num_images, 2);
        assert_eq!(r.negative_prompt.as_deref(), Some(""));
        assert_eq!((r.width, r.height, r.seed), (832, 1216, Some(12345)));
        let r = ok(json!({"prompt": "x", "scheduler": "DPM++ 2M Karras"}));
        assert_eq!(
            (r.sampler, r.schedule),
            (SamplerKind::DpmPp2m, SigmaSchedule::Karras)
        );
        let r = ok(json!({"prompt": "x", "scheduler": "K_EULER", "schedule": "Karras"}));
        assert_eq!(
            (r.sampler, r.schedule),
            (SamplerKind::Euler, SigmaSchedule::Karras)
        );
        let r = ok(json!({"prompt": "x", "sampler": "DPM++ 2M SDE Exponential"}));
        assert_eq!(
            (r.sampler, r.schedule),
            (SamplerKind::DpmPp2mSde, SigmaSchedule::Exponential)
        );
        // "Automatic" keeps the sampler's own default; an explicit schedule wins over the
        // one in a combined label.
        let r = ok(json!({"prompt": "x", "sampler_name": "DPM++ SDE", "schedule": "Automatic"}));
        assert_eq!(r.schedule, SigmaSchedule::Karras);
        let r =
            ok(json!({"prompt": "x", "scheduler": "DPM++ 2M Karras", "schedule": "sgm_uniform"}));
        assert_eq!(r.schedule, SigmaSchedule::SgmUniform);
        let r = ok(json!({"prompt": "x", "scheduler": "euler_ancestral", "schedule": "Beta"}));
        assert_eq!(
            (r.sampler, r.schedule),
            (SamplerKind::EulerAncestral, SigmaSchedule::Beta)
        );
    }

    #[test]
    fn all_violations_are_reported_together() {
        let e = errs(
            json!({"prompt": 5, "width": 1001, "height": 4096, "steps": 0,
            "guidance_scale": "high", "scheduler": "NoSuchSampler", "colour": "red"}),
        );
        assert_eq!(e.len(), 7, "{e:#?}");
        let all = e.join("\n");
        for needle in [
            "unknown field `colour`",
            "field `prompt`",
            "field `width`: 1001",
            "field `height`: 4096",
            "field `num_inference_steps`: 0",
            "field `guidance_scale`",
            "field `scheduler`: \"NoSuchSampler\"",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in {all}");
        }
    }

    #[test]
    fn alias_conflicts_are_errors() {
        let e = errs(json!({"prompt": "x", "steps": 20, "num_inference_steps": 30}));
        assert!(e[0].contains("aliases"), "{e:?}");
        let r = ok(json!({"prompt": "x", "width": 2048, "height": 2048}));
        assert_eq!((r.width, r.height), (2048, 2048));
    }

    use crate::sampling::names::{SAMPLER_LABELS, SCHEDULE_LABELS};

    #[test]
    fn every_sampler_label_maps_and_every_default_schedule_is_listed() {
        for (label, sampler, _) in SAMPLER_LABELS {
            let r = ok(json!({"prompt": "x", "scheduler": label.to_uppercase()}));
            assert_eq!(r.sampler, *sampler, "{label}");
        }
        for (label, schedule) in SCHEDULE_LABELS {
            let r = ok(json!({"prompt": "x", "sampler": "euler", "schedule": label}));
            assert_eq!(
                r.schedule,
                schedule.unwrap_or(SigmaSchedule::Normal),
                "{label}"
            );
        }
    }

    /// `sdxl-worker bench --sampler NAME` reads names with `parse_sampler_label`; a job that
    /// names the same sampler must get the same sampler and schedule.
    #[test]
    fn bench_and_job_read_sampler_names_alike() {
        let bench = |name: &str| crate::sampling::names::parse_sampler_label(name).unwrap();
        let r = ok(json!({"prompt": "x", "scheduler": "dpmpp_2m"}));
        assert_eq!((r.sampler, r.schedule), bench("dpmpp_2m"));
        assert_eq!(
            bench("dpmpp_2m"),
            (SamplerKind::DpmPp2m, SigmaSchedule::Karras)
        );
        for (label, _, _) in SAMPLER_LABELS {
            let r = ok(json!({"prompt": "x", "scheduler": label}));
            assert_eq!((r.sampler, r.schedule), bench(label), "{label}");
        }
    }

    #[test]
    fn generation_options_are_parsed() {
        let r = ok(
            json!({"prompt": "x", "clip_skip": 2, "prompt_weighting": "A1111",
            "guidance_rescale": 0.7, "noise": "NV", "sde_noise": "gaussian",
            "subseed": 77, "subseed_strength": 0.25}),
        );
        assert_eq!(r.clip_skip, Some(2));
        assert_eq!(r.prompt_weighting, Emphasis::A1111);
        assert_eq!(r.guidance_rescale, 0.7);
        assert_eq!((r.noise, r.sde_noise), (NoiseKind::Nv, SdeNoise::Gaussian));
        assert_eq!(r.subseed, Some((77, 0.25)));
        let r = ok(json!({"prompt": "x"}));
        assert_eq!(r.prompt_weighting, Emphasis::Comfy);
        assert_eq!((r.noise, r.sde_noise), (NoiseKind::Cpu, SdeNoise::Brownian));
        assert_eq!((r.subseed, &r.img2img, r.hires), (None, &None, None));
        let e = errs(json!({"prompt": "x", "noise": "gpu0", "sde_noise": 1,
            "guidance_rescale": 1.5, "subseed_strength": 0.5, "prompt_weighting": "strong"}));
        assert_eq!(e.len(), 5, "{e:#?}");
        for needle in [
            "`noise`",
            "`sde_noise`",
            "`guidance_rescale`",
            "`subseed_strength` needs",
            "`prompt_weighting`",
        ] {
            assert!(e.join("\n").contains(needle), "{needle}: {e:#?}");
        }
    }

    #[test]
    fn img2img_and_hires_fields() {
        let r = ok(json!({"prompt": "x", "image": "iVBORw0KGgo=", "strength": 0.4}));
        let i = r.img2img.expect("img2img");
        assert_eq!(i.strength, 0.4);
        assert_eq!(i.source, ImageSource::Inline("iVBORw0KGgo=".into()));
        let r = ok(
            json!({"prompt": "x", "image_url": "https://me:pw0rd@example.com/a.png?token=s3cr3t#f"}),
        );
        let i = r.img2img.expect("img2img");
        assert_eq!(i.strength, DEFAULT_STRENGTH);
        // The echoed request never carries the image bytes, nor the URL's user info or query.
        let echoed = serde_json::to_string(&i).unwrap();
        assert!(
            !echoed.contains("s3cr3t") && !echoed.contains("pw0rd"),
            "{echoed}"
        );
        assert!(echoed.contains("https://example.com/a.png"), "{echoed}");
        let inline = serde_json::to_string(&ImageSource::Inline("QUJD".into())).unwrap();
        assert!(!inline.contains("QUJD"), "{inline}");

        let r = ok(json!({"prompt": "x", "hires_scale": 1.5, "hires_steps": 10}));
        assert_eq!(
            r.hires,
            Some(HiresInput {
                scale: 1.5,
                steps: 10,
                denoise: DEFAULT_HIRES_DENOISE
            })
        );
        assert_eq!(ok(json!({"prompt": "x", "hires_scale": 1.0})).hires, None);

        let e = errs(json!({"prompt": "x", "image": "QUJD", "image_url": "https://a/b.png"}));
        assert!(e[0].contains("only one"), "{e:?}");
        let e = errs(json!({"prompt": "x", "image_url": "file:///etc/passwd?x=secret"}));
        assert!(
            e[0].contains("http://") && !e[0].contains("secret"),
            "{e:?}"
        );
        let e = errs(json!({"prompt": "x", "image_url": "ftp://u:secret@host/a.png"}));
        assert!(
            e[0].contains("ftp://host/a.png") && !e[0].contains("secret"),
            "{e:?}"
        );
        let e = errs(json!({"prompt": "x", "strength": 0.5}));
        assert!(e[0].contains("needs `image`"), "{e:?}");
        let e = errs(json!({"prompt": "x", "hires_denoise": 0.5}));
        assert!(e[0].contains("hires_scale"), "{e:?}");
        let e = errs(json!({"prompt": "x", "hires_scale": 5}));
        assert!(e[0].contains("`hires_scale`"), "{e:?}");
        let e = errs(json!({"prompt": "x", "width": 1024, "height": 1536, "hires_scale": 1.5}));
        assert!(e[0].contains("1536x2304"), "{e:?}");
        assert!(
            ok(json!({"prompt": "x", "width": 1024, "height": 1360, "hires_scale": 1.5}))
                .hires
                .is_some()
        );
        let e = errs(json!({"prompt": "x", "image": "QUJD", "hires_scale": 2}));
        assert!(e[0].contains("cannot be combined"), "{e:?}");
    }

    #[test]
    fn non_object_input_is_rejected() {
        for v in [json!("a cat"), json!([1]), json!(null), json!(3)] {
            let e = errs(v);
            assert!(e[0].contains("JSON object"), "{e:?}");
        }
    }

    #[test]
    fn loras_are_parsed_and_checked() {
        let r = ok(
            json!({"prompt": "x", "loras": [{"name": "detail", "weight": 0.6},
            {"name": "style", "weight": 0.8, "clip_weight": 0.4}, {"name": "plain"}]}),
        );
        assert_eq!(r.loras.len(), 3);
        assert_eq!(r.loras[1].clip_weight, Some(0.4));
        assert_eq!(r.loras[2].weight, None);
        let e = errs(
            json!({"prompt": "x", "loras": [{"weight": 1}, "x", {"name": "a", "weight": "big", "scale": 1}]}),
        );
        assert_eq!(e.len(), 4, "{e:#?}");
    }
}
