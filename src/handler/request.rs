//! The job `input` schema: field names that existing RunPod SDXL clients send (worker-sdxl,
//! A1111-style API clients), with every violation collected and reported at once, before the
//! GPU is touched.

use serde_json::{Map, Value};

/// Largest prompt accepted, in characters. Long prompts are fine (they are chunked), but a
/// megabyte of text is a mistake or an attack, not a prompt.
pub const MAX_PROMPT_CHARS: usize = 20_000;

/// Canonical field names with their accepted aliases. Anything else is rejected.
const FIELDS: &[(&str, &[&str])] = &[
    ("prompt", &[]),
    ("negative_prompt", &[]),
    ("width", &[]),
    ("height", &[]),
    ("num_inference_steps", &["steps"]),
    ("guidance_scale", &["cfg_scale"]),
    ("seed", &[]),
    ("scheduler", &["sampler_name"]),
    ("schedule", &["scheduler_type"]),
    ("num_images", &["batch_size"]),
    ("checkpoint", &[]),
    ("loras", &[]),
    ("clip_skip", &[]),
    ("output_format", &[]),
    ("output_quality", &[]),
    ("noise", &[]),
];

/// Sampling algorithms the engine implements, by canonical name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerName {
    Euler,
    EulerA,
    #[serde(rename = "dpmpp_2m")]
    DpmPp2m,
    Ddim,
}

impl SamplerName {
    /// The A1111 label, as written into the infotext (`Sampler: …`).
    pub fn a1111_label(self) -> &'static str {
        match self {
            SamplerName::Euler => "Euler",
            SamplerName::EulerA => "Euler a",
            SamplerName::DpmPp2m => "DPM++ 2M",
            SamplerName::Ddim => "DDIM",
        }
    }

    /// The schedule used when the request names none.
    pub fn default_schedule(self) -> ScheduleName {
        match self {
            SamplerName::DpmPp2m => ScheduleName::Karras,
            _ => ScheduleName::Normal,
        }
    }
}

/// Sigma schedules a request can pick. The timestep spacing itself follows the checkpoint
/// (diffusers' `leading` for SDXL, `trailing` for zero-terminal-SNR v-prediction models).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleName {
    /// The training sigmas at the spaced timesteps (diffusers' default).
    Normal,
    /// Karras et al. (rho 7) between the model's sigma_min and sigma_max.
    Karras,
}

impl ScheduleName {
    /// The A1111 `Schedule type` label.
    pub fn a1111_label(self) -> &'static str {
        match self {
            ScheduleName::Normal => "Normal",
            ScheduleName::Karras => "Karras",
        }
    }
}

/// Sampler labels accepted in `scheduler` / `sampler_name`: A1111 labels (with or without a
/// schedule suffix), worker-sdxl / diffusers class names, and our snake_case names.
const SAMPLER_LABELS: &[(&str, SamplerName, Option<ScheduleName>)] = &[
    ("euler", SamplerName::Euler, None),
    ("k_euler", SamplerName::Euler, None),
    ("eulerdiscretescheduler", SamplerName::Euler, None),
    ("euler a", SamplerName::EulerA, None),
    ("euler_a", SamplerName::EulerA, None),
    ("euler_ancestral", SamplerName::EulerA, None),
    ("k_euler_ancestral", SamplerName::EulerA, None),
    ("eulerancestraldiscretescheduler", SamplerName::EulerA, None),
    ("dpm++ 2m", SamplerName::DpmPp2m, None),
    ("dpmpp_2m", SamplerName::DpmPp2m, None),
    (
        "dpm++ 2m karras",
        SamplerName::DpmPp2m,
        Some(ScheduleName::Karras),
    ),
    (
        "dpmpp_2m_karras",
        SamplerName::DpmPp2m,
        Some(ScheduleName::Karras),
    ),
    ("dpmsolvermultistep", SamplerName::DpmPp2m, None),
    ("dpmsolvermultistepscheduler", SamplerName::DpmPp2m, None),
    ("ddim", SamplerName::Ddim, None),
    ("ddimscheduler", SamplerName::Ddim, None),
];

const SCHEDULE_LABELS: &[(&str, ScheduleName)] = &[
    ("normal", ScheduleName::Normal),
    ("default", ScheduleName::Normal),
    ("automatic", ScheduleName::Normal),
    ("leading", ScheduleName::Normal),
    ("karras", ScheduleName::Karras),
];

/// Image file formats a job can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    Png,
    Jpeg,
    Webp,
}

impl OutputFormat {
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Webp => "webp",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            OutputFormat::Png => "image/png",
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Webp => "image/webp",
        }
    }
}

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
    pub sampler: SamplerName,
    pub schedule: ScheduleName,
    pub num_images: u32,
    pub checkpoint: Option<String>,
    pub loras: Vec<LoraRequest>,
    pub clip_skip: Option<u32>,
    pub output_format: OutputFormat,
    pub output_quality: u8,
}

/// Defaults that depend on the loaded model rather than on the request.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Native resolution of the default checkpoint (1024 for SDXL).
    pub size: u32,
    pub steps: u32,
    pub guidance_scale: f64,
    pub sampler: SamplerName,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            size: 1024,
            steps: 30,
            guidance_scale: 5.0,
            sampler: SamplerName::DpmPp2m,
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
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(57).collect();
        format!("{cut}...")
    } else {
        s
    }
}

fn label_key(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

fn allowed_samplers() -> String {
    "Euler, Euler a, DPM++ 2M, DPM++ 2M Karras, DDIM, K_EULER, K_EULER_ANCESTRAL, DPMSolverMultistep \
     (or euler, euler_a, dpmpp_2m, ddim)"
        .to_string()
}

fn allowed_schedules() -> String {
    SCHEDULE_LABELS
        .iter()
        .map(|(l, _)| *l)
        .collect::<Vec<_>>()
        .join(", ")
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

    let known: Vec<&str> = FIELDS
        .iter()
        .flat_map(|(n, a)| std::iter::once(*n).chain(a.iter().copied()))
        .collect();
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
    let size = |c: &mut Checker, field: &str| -> Option<u32> {
        let v = c.get(field)?;
        match as_integer(v) {
            Some(n) if (256..=2048).contains(&n) && n % 8 == 0 => Some(n as u32),
            _ => {
                c.fail(field, v, "a multiple of 8 from 256 to 2048");
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

    let mut sampler = defaults.sampler;
    let mut schedule_from_label = None;
    if let Some(v) = c.get("scheduler") {
        match v.as_str().map(label_key) {
            Some(key) => match SAMPLER_LABELS.iter().find(|(l, _, _)| *l == key) {
                Some((_, s, sch)) => {
                    sampler = *s;
                    schedule_from_label = *sch;
                }
                None => c.fail("scheduler", v, &allowed_samplers()),
            },
            None => c.fail("scheduler", v, &allowed_samplers()),
        }
    }
    let mut schedule = schedule_from_label.unwrap_or(sampler.default_schedule());
    if let Some(v) = c.get("schedule") {
        match v
            .as_str()
            .map(label_key)
            .and_then(|k| SCHEDULE_LABELS.iter().find(|(l, _)| *l == k))
        {
            Some((_, s)) => schedule = *s,
            None => c.fail("schedule", v, &allowed_schedules()),
        }
    }
    if schedule == ScheduleName::Karras
        && matches!(sampler, SamplerName::EulerA | SamplerName::Ddim)
    {
        c.errors.push(format!(
            "field `schedule`: \"karras\" is not available with sampler `{}` (allowed: normal)",
            sampler.a1111_label()
        ));
    }

    let num_images = c.integer("num_images", 1, 8);
    let checkpoint = c.string("checkpoint");
    let clip_skip = c.integer("clip_skip", 1, 12).map(|n| n as u32);
    let output_format = match c.get("output_format") {
        None => OutputFormat::Png,
        Some(v) => match v.as_str().map(label_key).as_deref() {
            Some("png") => OutputFormat::Png,
            Some("jpeg") | Some("jpg") => OutputFormat::Jpeg,
            Some("webp") => OutputFormat::Webp,
            _ => {
                c.fail("output_format", v, "png, jpeg, webp");
                OutputFormat::Png
            }
        },
    };
    let output_quality = c.integer("output_quality", 1, 100).unwrap_or(90) as u8;
    if let Some(v) = c.get("noise") {
        if v.as_str().map(label_key).as_deref() != Some("cpu") {
            c.fail("noise", v, "cpu");
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
        output_format,
        output_quality,
    })
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
        assert_eq!(r.sampler, SamplerName::DpmPp2m);
        assert_eq!(r.schedule, ScheduleName::Karras);
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
        assert_eq!(r.sampler, SamplerName::EulerA);
        assert_eq!(r.num_images, 2);
        assert_eq!(r.negative_prompt.as_deref(), Some(""));
        assert_eq!((r.width, r.height, r.seed), (832, 1216, Some(12345)));
        let r = ok(json!({"prompt": "x", "scheduler": "DPM++ 2M Karras"}));
        assert_eq!(
            (r.sampler, r.schedule),
            (SamplerName::DpmPp2m, ScheduleName::Karras)
        );
        let r = ok(json!({"prompt": "x", "scheduler": "K_EULER", "schedule": "Karras"}));
        assert_eq!(
            (r.sampler, r.schedule),
            (SamplerName::Euler, ScheduleName::Karras)
        );
        let e = errs(json!({"prompt": "x", "scheduler": "DDIM", "schedule": "karras"}));
        assert!(e[0].contains("not available"), "{e:?}");
    }

    #[test]
    fn all_violations_are_reported_together() {
        let e = errs(
            json!({"prompt": 5, "width": 1001, "height": 4096, "steps": 0,
            "guidance_scale": "high", "scheduler": "PLMS", "colour": "red"}),
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
            "field `scheduler`: \"PLMS\"",
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
