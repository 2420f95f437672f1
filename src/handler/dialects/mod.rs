//! Client dialects: request shapes of other image workers, translated into the one `input`
//! schema that [`super::request::parse`] validates. The engine never sees a dialect.
//!
//! A job's `input` is recognised by its keys:
//!
//! - `{"api": {"method", "endpoint"}, "payload"}`: the A1111 RunPod envelope
//!   ([`envelope`]); POSTs to `/sdapi/v1/txt2img|img2img` run the payload as an A1111
//!   request, GETs of the listing endpoints answer at once with what this worker has;
//! - `{"model": "<AIR>", "params": {...}}`: Civitai's generator input ([`civitai`]);
//! - keys that only worker-sdxl sends (`refiner_inference_steps`, `high_noise_frac`, or a
//!   `strength` with no image) and nothing outside its schema: worker-sdxl ([`worker_sdxl`]);
//! - any A1111-only key (`n_iter`, `enable_hr`, `init_images`, `override_settings`, …), or
//!   `sampler_name` together with `scheduler`: an A1111 `/sdapi/v1/txt2img` or `/img2img`
//!   payload ([`a1111`]);
//! - anything else: this worker's own schema, read exactly as before.
//!
//! Each translator returns the canonical fields plus what it had to leave out: with
//! `STRICT_INPUT=true` (the default) an unknown field is an `invalid_input` error that lists
//! the accepted ones; with `STRICT_INPUT=false` it is dropped and named in
//! `info.ignored_fields`. Fields that are accepted but have no effect here (worker-sdxl's
//! refiner settings, A1111's inert save flags) are named in `info.notes`.
//!
//! Sampler and schedule names are translated into labels that the sampling name parser
//! (`sampling::names`) reads; a label the engine does not know yet is refused with the field
//! the client sent, so the error speaks the client's language.

pub mod a1111;
pub mod civitai;
pub mod envelope;
pub mod infotext;
pub mod worker_sdxl;

use serde_json::{Map, Value};

use super::request::{self, ValidationErrors};
use crate::sampling::names;

/// Which client shape a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    Native,
    WorkerSdxl,
    A1111,
    Civitai,
}

/// The response body a job gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    /// `images` (data URIs or URLs), `image_url`, `seed`, `seeds`, `parameters`, `info`: the
    /// keys of RunPod's SDXL worker.
    #[default]
    Runpod,
    /// A1111's `{"images": [raw base64], "parameters": {...}, "info": "<JSON string>"}`.
    A1111,
}

impl ResponseFormat {
    /// The names `response_format` accepts.
    pub const LABELS: &'static [(&'static str, ResponseFormat)] = &[
        ("runpod", ResponseFormat::Runpod),
        ("default", ResponseFormat::Runpod),
        ("a1111", ResponseFormat::A1111),
    ];
}

/// The dialect layer's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DialectArgs {
    /// Reject unknown request fields (listing the accepted ones). `false` drops them and
    /// names them in the result's `info.ignored_fields`.
    #[arg(long, env = "STRICT_INPUT", default_value_t = true, action = clap::ArgAction::Set)]
    pub strict_input: bool,
    /// Response shape of jobs that do not ask for one (`response_format` in the request):
    /// `runpod` (RunPod's SDXL worker keys) or `a1111`.
    #[arg(long, env = "RESPONSE_FORMAT", value_enum, default_value = "runpod")]
    pub response_format: ResponseFormat,
}

impl Default for DialectArgs {
    fn default() -> Self {
        DialectArgs {
            strict_input: true,
            response_format: ResponseFormat::Runpod,
        }
    }
}

/// One model this worker serves, as the dialects name it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogModel {
    pub name: String,
    pub file_name: String,
    /// Uppercase hex, as the fetcher stores it.
    pub sha256: String,
    /// First 10 hex digits of the SHA-256.
    pub autov2: String,
    pub civitai_model_id: Option<u64>,
    pub civitai_version_id: Option<u64>,
    pub air: Option<String>,
}

impl CatalogModel {
    /// Whether a Civitai AIR names this model: the same model version id (the id that pins
    /// a file), or the same AIR text.
    pub fn matches_air(&self, air: &str) -> bool {
        if let Ok(a) = crate::fetch::air::Air::parse(air) {
            if self.civitai_version_id == Some(a.version_id) {
                return true;
            }
        }
        self.air
            .as_deref()
            .is_some_and(|own| own.trim().eq_ignore_ascii_case(air.trim()))
    }

    /// A1111's checkpoint title: `file [hash]`.
    pub fn a1111_title(&self) -> String {
        format!("{} [{}]", self.file_name, self.autov2.to_ascii_lowercase())
    }
}

/// What the worker has, for the translators that name models (A1111 checkpoint titles,
/// Civitai AIRs) and for the envelope's listings.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub checkpoint: CatalogModel,
    pub loras: Vec<CatalogModel>,
    pub vae: Option<CatalogModel>,
    /// For schema checks without loaded models (documentation tests): model names and AIRs
    /// are passed through unresolved instead of being checked.
    pub unchecked: bool,
}

/// Fields the translator wants echoed in A1111 responses.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct A1111Echo {
    /// The payload as received (image data left out), with A1111's defaults filled in.
    pub parameters: Value,
    pub batch_size: u32,
    /// `false` = A1111's `send_images: false`: the response lists no images.
    pub send_images: bool,
}

/// What the dialect layer says about a request, kept with the parsed job for the response.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RequestMeta {
    pub dialect: Dialect,
    pub response: ResponseFormat,
    /// Fields dropped (unknown with `STRICT_INPUT=false`, or accepted without effect).
    pub ignored_fields: Vec<String>,
    /// Why fields had no effect, or how they were read.
    pub notes: Vec<String>,
    pub a1111: Option<A1111Echo>,
}

/// A request in the canonical schema, with what the translation noticed.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    /// The canonical `input` object for [`request::parse`].
    pub input: Value,
    pub meta: RequestMeta,
}

/// What the dialect layer makes of a job's `input`.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    /// A generation request.
    Generate(Translated),
    /// A request answered without generating (the envelope's GET listings).
    Answer(Value),
}

/// Collects the canonical fields and everything noticed while translating.
#[derive(Debug, Default)]
pub(crate) struct Out {
    pub map: Map<String, Value>,
    pub ignored: Vec<String>,
    pub notes: Vec<String>,
    pub errors: Vec<String>,
    pub strict: bool,
}

impl Out {
    pub fn new(strict: bool) -> Self {
        Out {
            strict,
            ..Out::default()
        }
    }

    pub fn set(&mut self, key: &str, value: Value) {
        self.map.insert(key.to_string(), value);
    }

    /// An unknown field: an error listing `accepted` when strict, else dropped and named.
    pub fn unknown(&mut self, field: &str, accepted: &[&str]) {
        if self.strict {
            self.errors.push(format!(
                "unknown field `{field}` (accepted fields: {})",
                accepted.join(", ")
            ));
        } else {
            self.ignored.push(field.to_string());
        }
    }

    /// A field accepted but without effect, with the reason.
    pub fn inert(&mut self, field: &str, why: &str) {
        self.ignored.push(field.to_string());
        self.notes.push(format!("`{field}`: {why}"));
    }

    pub fn refuse(&mut self, field: &str, value: &Value, allowed: &str) {
        self.errors.push(format!(
            "field `{field}`: {} is not supported (allowed: {allowed})",
            short(value)
        ));
    }

    pub fn finish(
        self,
        dialect: Dialect,
        response: ResponseFormat,
        a1111: Option<A1111Echo>,
    ) -> Result<Translated, ValidationErrors> {
        if !self.errors.is_empty() {
            return Err(ValidationErrors(self.errors));
        }
        Ok(Translated {
            input: Value::Object(self.map),
            meta: RequestMeta {
                dialect,
                response,
                ignored_fields: self.ignored,
                notes: self.notes,
                a1111,
            },
        })
    }
}

pub(crate) use request::short;

/// Whether the sampling name parser reads `label` (a sampler label, maybe with a schedule).
pub fn sampler_label_known(label: &str) -> bool {
    names::parse_sampler_label(label).is_ok()
}

/// Whether the sampling name parser reads `label` as a schedule.
pub fn schedule_label_known(label: &str) -> bool {
    names::parse_schedule_label(label).is_ok()
}

/// Records an error when the translated sampler `label` of `field` is not one the engine
/// runs, naming what the client sent.
pub(crate) fn check_sampler(out: &mut Out, field: &str, sent: &str, label: &str) {
    if !sampler_label_known(label) {
        out.errors.push(format!(
            "field `{field}`: {sent:?} (sampler {label:?}) is not available on this worker \
             (available: {})",
            names::SAMPLER_LABELS_ALLOWED
        ));
    }
}

/// Reads `response_format` from a request (removing it), or the endpoint's default.
pub(crate) fn take_response_format(
    obj: &mut Map<String, Value>,
    default: ResponseFormat,
    errors: &mut Vec<String>,
) -> ResponseFormat {
    let Some(v) = obj.remove("response_format") else {
        return default;
    };
    let key = v.as_str().map(|s| s.trim().to_ascii_lowercase());
    match ResponseFormat::LABELS
        .iter()
        .find(|(l, _)| Some(*l) == key.as_deref())
    {
        Some(&(_, f)) => f,
        None => {
            errors.push(format!(
                "field `response_format`: {} is not allowed (allowed: runpod, a1111)",
                short(&v)
            ));
            default
        }
    }
}

/// The canonical fields an A1111/Civitai infotext describes ([`infotext::parse`]), and the
/// resources it names (checkpoint, LoRA and embedding hashes, Civitai resources), which are
/// not fetched by hash: the request's checkpoint and its `<lora:…>` tags are what runs.
pub fn expand_infotext(text: &str) -> Result<(Map<String, Value>, Option<Value>), String> {
    let mut fields = infotext::parse(text)?;
    let resources = fields.remove(infotext::RESOURCES_KEY);
    Ok((fields, resources))
}

/// Fills the canonical fields that `infotext` describes and the request left out;
/// `explicit(map, field)` says whether the request itself set a canonical field (defaults a
/// translator filled in do not count).
pub(crate) fn merge_infotext(
    out: &mut Out,
    field: &str,
    text: &Value,
    explicit: &dyn Fn(&Map<String, Value>, &str) -> bool,
) {
    let Some(text) = text.as_str() else {
        out.refuse(field, text, "an A1111 infotext string");
        return;
    };
    match expand_infotext(text) {
        Ok((fields, resources)) => {
            // A txt2img infotext's `Denoising strength` belongs to its hires pass (already
            // read into `hires_denoise`); without an input image there is nothing to apply
            // an img2img strength to.
            let has_image = ["image", "image_url"]
                .iter()
                .any(|k| out.map.contains_key(*k));
            for (k, v) in fields {
                if k == "strength" && !has_image {
                    continue;
                }
                if !explicit(&out.map, &k) {
                    out.map.insert(k, v);
                }
            }
            if let Some(Value::Object(named)) = resources {
                let keys: Vec<&str> = named.keys().map(String::as_str).collect();
                out.notes.push(format!(
                    "field `{field}`: the resources it names ({}) are not fetched; the \
                     configured checkpoint and the prompt's <lora:…> tags ran",
                    keys.join(", ")
                ));
            }
        }
        Err(e) => out.errors.push(format!("field `{field}`: {e}")),
    }
}

/// For each dialect, the client's name of each canonical field it fills, so that the
/// schema's errors name the field the client sent.
fn client_names(dialect: Dialect) -> &'static [(&'static str, &'static str)] {
    match dialect {
        Dialect::Native | Dialect::WorkerSdxl => &[],
        Dialect::A1111 => &[
            ("num_inference_steps", "steps"),
            ("guidance_scale", "cfg_scale"),
            ("num_images", "batch_size"),
            ("scheduler", "sampler_name"),
            ("schedule", "scheduler"),
            ("hires_scale", "hr_scale"),
            ("hires_steps", "hr_second_pass_steps"),
            ("hires_denoise", "denoising_strength"),
            ("strength", "denoising_strength"),
            ("image", "init_images"),
            ("image_url", "init_images"),
            ("clip_skip", "override_settings.CLIP_stop_at_last_layers"),
            ("checkpoint", "override_settings.sd_model_checkpoint"),
        ],
        Dialect::Civitai => &[
            ("prompt", "params.prompt"),
            ("negative_prompt", "params.negativePrompt"),
            ("num_inference_steps", "params.steps"),
            ("guidance_scale", "params.cfgScale"),
            ("width", "params.width"),
            ("height", "params.height"),
            ("seed", "params.seed"),
            ("clip_skip", "params.clipSkip"),
            ("num_images", "quantity"),
            ("loras", "additionalNetworks"),
            ("checkpoint", "model"),
        ],
    }
}

/// The schema's error messages with the canonical field names replaced by the ones the
/// client of `dialect` sent (one field per message, the first one named).
pub fn client_errors(dialect: Dialect, errors: Vec<String>) -> Vec<String> {
    let names = client_names(dialect);
    errors
        .into_iter()
        .map(|e| {
            let hit = names.iter().find_map(|(canonical, client)| {
                let needle = format!("`{canonical}`");
                e.find(&needle).map(|at| (at, needle, *client))
            });
            match hit {
                Some((at, needle, client)) => {
                    format!("{}`{client}`{}", &e[..at], &e[at + needle.len()..])
                }
                None => e,
            }
        })
        .collect()
}

/// Which dialect a job's `input` object is in (see the module documentation).
pub fn detect(obj: &Map<String, Value>) -> Dialect {
    if obj.contains_key("model") && obj.get("params").is_some_and(Value::is_object) {
        return Dialect::Civitai;
    }
    if worker_sdxl::looks_like(obj) {
        return Dialect::WorkerSdxl;
    }
    if a1111::looks_like(obj) {
        return Dialect::A1111;
    }
    Dialect::Native
}

/// Translates a job's `input` into the canonical schema, or answers it (listings).
pub fn route(
    input: &Value,
    args: &DialectArgs,
    catalog: &Catalog,
) -> Result<Routed, ValidationErrors> {
    let Some(obj) = input.as_object() else {
        // The canonical parser words this error.
        return Ok(Routed::Generate(Translated {
            input: input.clone(),
            meta: RequestMeta {
                dialect: Dialect::Native,
                response: args.response_format,
                ignored_fields: Vec::new(),
                notes: Vec::new(),
                a1111: None,
            },
        }));
    };
    if envelope::looks_like(obj) {
        return envelope::route(obj, args, catalog);
    }
    let translated = match detect(obj) {
        Dialect::Civitai => civitai::translate(obj, args, catalog)?,
        Dialect::WorkerSdxl => worker_sdxl::translate(obj, args)?,
        Dialect::A1111 => a1111::translate(obj, a1111::Mode::Auto, args, catalog)?,
        Dialect::Native => native(obj, args)?,
    };
    Ok(Routed::Generate(translated))
}

/// This worker's own schema: unchanged, apart from `response_format`, `infotext` and, with
/// `STRICT_INPUT=false`, unknown fields dropped.
fn native(obj: &Map<String, Value>, args: &DialectArgs) -> Result<Translated, ValidationErrors> {
    let mut map = obj.clone();
    let mut errors = Vec::new();
    let response = take_response_format(&mut map, args.response_format, &mut errors);
    let infotext = map.remove("infotext");
    let mut out = Out::new(args.strict_input);
    out.errors = errors;
    if !args.strict_input {
        let accepted = request::accepted_fields();
        let unknown: Vec<String> = map
            .keys()
            .filter(|k| !accepted.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in unknown {
            map.remove(&k);
            out.ignored.push(k);
        }
    }
    out.map = map;
    if let Some(text) = infotext.filter(|v| !v.is_null()) {
        merge_infotext(&mut out, "infotext", &text, &request::is_set);
    }
    out.finish(Dialect::Native, response, None)
}

/// Translates and validates a job's `input` with no loaded models (model names and AIRs
/// unchecked): what the documentation tests use to check examples of every dialect.
pub fn check_input(input: &Value) -> Result<(), ValidationErrors> {
    let catalog = Catalog {
        unchecked: true,
        ..Catalog::default()
    };
    match route(input, &DialectArgs::default(), &catalog)? {
        Routed::Answer(_) => Ok(()),
        Routed::Generate(t) => request::parse(&t.input, &request::Defaults::default()).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn native_requests_are_untouched() {
        let v = json!({"prompt": "x", "steps": 20, "sampler_name": "Euler a", "batch_size": 2});
        let Routed::Generate(t) = route(&v, &DialectArgs::default(), &Catalog::default()).unwrap()
        else {
            panic!("not a generation");
        };
        assert_eq!(t.input, v);
        assert_eq!(t.meta.dialect, Dialect::Native);
        assert_eq!(t.meta.response, ResponseFormat::Runpod);
    }

    #[test]
    fn lenient_mode_drops_unknown_fields_and_names_them() {
        let v = json!({"prompt": "x", "colour": "red", "response_format": "a1111"});
        let args = DialectArgs {
            strict_input: false,
            ..DialectArgs::default()
        };
        let Routed::Generate(t) = route(&v, &args, &Catalog::default()).unwrap() else {
            panic!("not a generation");
        };
        assert_eq!(t.input, json!({"prompt": "x"}));
        assert_eq!(t.meta.ignored_fields, vec!["colour".to_string()]);
        assert_eq!(t.meta.response, ResponseFormat::A1111);
        let e = route(
            &json!({"prompt": "x", "response_format": "xml"}),
            &args,
            &Catalog::default(),
        )
        .unwrap_err();
        assert!(e.0[0].contains("response_format"), "{e:?}");
    }

    #[test]
    fn infotext_fills_the_fields_the_request_leaves_out() {
        let text = "a cat\nNegative prompt: dog\nSteps: 7, Sampler: Euler, Schedule type: Karras, \
                    CFG scale: 4, Seed: 11, Size: 256x320, Model hash: abcdef1234, RNG: CPU";
        let routed = route(
            &json!({"prompt": "explicit", "infotext": text}),
            &DialectArgs::default(),
            &Catalog::default(),
        )
        .unwrap();
        let Routed::Generate(t) = routed else {
            panic!("an infotext request generates");
        };
        let input = &t.input;
        assert_eq!(input["prompt"], "explicit", "the request's own field wins");
        assert_eq!(input["negative_prompt"], "dog");
        assert_eq!(input["num_inference_steps"], 7);
        assert_eq!(input["seed"], 11);
        assert_eq!(
            (&input["width"], &input["height"]),
            (&json!(256), &json!(320))
        );
        assert!(input.get(infotext::RESOURCES_KEY).is_none());
        assert!(input.get("strength").is_none());
        let parsed = request::parse(input, &request::Defaults::default()).unwrap();
        assert_eq!(parsed.steps, 7);
        let err = route(
            &json!({"prompt": "x", "infotext": "a\nSteps: 20, Hires upscaler: 4x-UltraSharp, Hires upscale: 2, Denoising strength: 0.4"}),
            &DialectArgs::default(),
            &Catalog::default(),
        )
        .expect_err("a model upscaler is refused");
        assert!(err.0.iter().any(|e| e.contains("`infotext`")), "{err:?}");
    }
}
