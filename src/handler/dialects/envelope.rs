//! The A1111 RunPod workers' envelope: `{"api": {"method", "endpoint"}, "payload": {...}}`.
//! `POST /sdapi/v1/txt2img` and `/img2img` run the payload as an A1111 request and answer in
//! A1111's shape; the GET listings answer at once with what this worker has, in A1111's
//! item shapes.

use serde_json::{json, Map, Value};

use super::a1111::{self, LATENT_UPSCALERS, SAMPLERS, SCHEDULES};
use super::{sampler_label_known, schedule_label_known, short, Catalog, DialectArgs, Routed};
use crate::handler::request::ValidationErrors;

/// Endpoints this worker answers, with their method.
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "sdapi/v1/txt2img"),
    ("POST", "sdapi/v1/img2img"),
    ("GET", "sdapi/v1/sd-models"),
    ("GET", "sdapi/v1/samplers"),
    ("GET", "sdapi/v1/schedulers"),
    ("GET", "sdapi/v1/loras"),
    ("GET", "sdapi/v1/sd-vae"),
    ("GET", "sdapi/v1/upscalers"),
    ("GET", "sdapi/v1/latent-upscale-modes"),
    ("GET", "sdapi/v1/options"),
];

/// An envelope: `api` is an object.
pub fn looks_like(obj: &Map<String, Value>) -> bool {
    obj.get("api").is_some_and(Value::is_object)
}

fn invalid(msg: String) -> ValidationErrors {
    ValidationErrors(vec![msg])
}

/// Refuses a key of `obj` outside `accepted` (the envelope is strict at every level, as the
/// RunPod A1111 workers' validator is).
fn only_keys(
    obj: &Map<String, Value>,
    prefix: &str,
    accepted: &[&str],
) -> Result<(), ValidationErrors> {
    match obj.keys().find(|k| !accepted.contains(&k.as_str())) {
        Some(key) => Err(invalid(format!(
            "unknown field `{prefix}{key}` (accepted fields: {})",
            accepted.join(", ")
        ))),
        None => Ok(()),
    }
}

/// Runs or answers an envelope.
pub fn route(
    obj: &Map<String, Value>,
    args: &DialectArgs,
    catalog: &Catalog,
) -> Result<Routed, ValidationErrors> {
    let allowed = || {
        ENDPOINTS
            .iter()
            .map(|(m, e)| format!("{m} /{e}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    only_keys(obj, "", &["api", "payload"])?;
    let api = obj
        .get("api")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    only_keys(&api, "api.", &["method", "endpoint"])?;
    let method = api
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_ascii_uppercase();
    let endpoint = api.get("endpoint").and_then(Value::as_str).unwrap_or("");
    let endpoint = endpoint
        .trim()
        .trim_start_matches('/')
        .trim_end_matches('/');
    let Some(&(want, ep)) = ENDPOINTS.iter().find(|(_, e)| *e == endpoint) else {
        return Err(invalid(format!(
            "field `api.endpoint`: {} is not available on this worker (allowed: {})",
            short(api.get("endpoint").unwrap_or(&Value::Null)),
            allowed()
        )));
    };
    if method != want {
        return Err(invalid(format!(
            "field `api.method`: {method:?} is not allowed for /{ep} (allowed: {want})"
        )));
    }
    let empty = Value::Object(Map::new());
    let payload = obj
        .get("payload")
        .filter(|v| !v.is_null())
        .unwrap_or(&empty);
    if want == "POST" {
        let Some(p) = payload.as_object() else {
            return Err(invalid(format!(
                "field `payload`: {} is not allowed (allowed: an A1111 request object)",
                short(payload)
            )));
        };
        let mode = if ep.ends_with("img2img") {
            a1111::Mode::Img2Img
        } else {
            a1111::Mode::Txt2Img
        };
        return a1111::translate(p, mode, args, catalog).map(Routed::Generate);
    }
    Ok(Routed::Answer(listing(ep, catalog)))
}

/// The body A1111 answers a GET listing with, for this worker's models and samplers.
pub fn listing(endpoint: &str, catalog: &Catalog) -> Value {
    let c = &catalog.checkpoint;
    match endpoint {
        "sdapi/v1/sd-models" => json!([{
            "title": c.a1111_title(),
            "model_name": c.file_name.rsplit_once('.').map_or(c.file_name.as_str(), |(s, _)| s),
            "hash": c.autov2.to_ascii_lowercase(),
            "sha256": c.sha256.to_ascii_lowercase(),
            "filename": c.file_name,
            "config": null,
        }]),
        "sdapi/v1/samplers" => Value::Array(
            SAMPLERS
                .iter()
                .filter(|(name, _, _)| sampler_label_known(name))
                .map(|(name, aliases, options)| {
                    let options: Map<String, Value> = options
                        .iter()
                        .map(|(k, v)| (k.to_string(), Value::from(*v)))
                        .collect();
                    json!({"name": name, "aliases": aliases, "options": options})
                })
                .collect(),
        ),
        "sdapi/v1/schedulers" => Value::Array(
            SCHEDULES
                .iter()
                .filter(|(name, ..)| schedule_label_known(name))
                .map(|(name, label, aliases, rho, inner)| {
                    let aliases = (!aliases.is_empty()).then_some(aliases);
                    json!({"name": name, "label": label, "aliases": aliases,
                           "default_rho": rho, "need_inner_model": inner})
                })
                .collect(),
        ),
        "sdapi/v1/loras" => Value::Array(
            catalog
                .loras
                .iter()
                .map(|l| json!({"name": l.name, "alias": l.name, "path": l.file_name, "metadata": {}}))
                .collect(),
        ),
        "sdapi/v1/sd-vae" => Value::Array(
            catalog
                .vae
                .iter()
                .map(|v| json!({"model_name": v.file_name, "filename": v.file_name}))
                .collect(),
        ),
        "sdapi/v1/upscalers" => Value::Array(
            LATENT_UPSCALERS
                .iter()
                .filter(|(_, ok)| *ok)
                .map(|(n, _)| {
                    json!({"name": n, "model_name": null, "model_path": null,
                           "model_url": null, "scale": a1111_hr_scale()})
                })
                .collect(),
        ),
        "sdapi/v1/latent-upscale-modes" => Value::Array(
            LATENT_UPSCALERS
                .iter()
                .filter(|(_, ok)| *ok)
                .map(|(n, _)| json!({"name": n}))
                .collect(),
        ),
        _ => json!({
            "sd_model_checkpoint": c.a1111_title(),
            "sd_checkpoint_hash": c.sha256.to_ascii_lowercase(),
            "sd_vae": "Automatic",
            "CLIP_stop_at_last_layers": 1,
            "eta_noise_seed_delta": 0,
            "randn_source": "GPU",
            "samples_format": "png",
        }),
    }
}

/// The `scale` A1111 lists for latent upscalers (its default hires factor).
fn a1111_hr_scale() -> f64 {
    2.0
}
