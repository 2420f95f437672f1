//! Civitai's generator input (the `civitai` Python and JavaScript clients'
//! `image.create` / `image.fromText`): `{"model": "<AIR>", "params": {...},
//! "additionalNetworks": {"<AIR>": {"strength", "type"}}, "quantity"}`. AIRs resolve against
//! the models of `models.toml` (by model version id, or the AIR text itself); an AIR that is
//! not configured is refused by name. Scheduler names are Civitai's enum spellings.

use serde_json::{Map, Value};

use super::{check_sampler, take_response_format, Catalog, Dialect, DialectArgs, Out, Translated};
use crate::handler::request::ValidationErrors;

/// Top-level keys of the clients' input.
pub const FIELDS: &[&str] = &[
    "$type",
    "model",
    "params",
    "additionalNetworks",
    "controlNets",
    "quantity",
    "batchSize",
    "callbackUrl",
    "priority",
    "properties",
    "baseModel",
    "response_format",
];

/// Keys of `params`.
pub const PARAMS: &[&str] = &[
    "prompt",
    "negativePrompt",
    "scheduler",
    "steps",
    "cfgScale",
    "width",
    "height",
    "seed",
    "clipSkip",
];

/// Civitai scheduler names → (sampler label, schedule label). Names without "Karras" whose
/// A1111 sampler defaults to Karras get the plain schedule, as Civitai keeps the two apart;
/// `Undefined` is what civitai.com runs for it (DPM++ 2M Karras).
pub const SCHEDULERS: &[(&str, &str, Option<&str>)] = &[
    ("EulerA", "Euler a", None),
    ("Euler", "Euler", None),
    ("LMS", "LMS", None),
    ("Heun", "Heun", None),
    ("DPM2", "DPM2", Some("normal")),
    ("DPM2A", "DPM2 a", Some("normal")),
    ("DPM2SA", "DPM++ 2S a", Some("normal")),
    ("DPM2M", "DPM++ 2M", Some("normal")),
    ("DPMSDE", "DPM++ SDE", Some("normal")),
    ("DPMFast", "DPM fast", None),
    ("DPMAdaptive", "DPM adaptive", None),
    ("LMSKarras", "LMS", Some("karras")),
    ("DPM2Karras", "DPM2", Some("karras")),
    ("DPM2AKarras", "DPM2 a", Some("karras")),
    ("DPM2SAKarras", "DPM++ 2S a", Some("karras")),
    ("DPM2MKarras", "DPM++ 2M", Some("karras")),
    ("DPMSDEKarras", "DPM++ SDE", Some("karras")),
    ("DDIM", "DDIM", None),
    ("PLMS", "PLMS", None),
    ("UniPC", "UniPC", None),
    ("Undefined", "DPM++ 2M", Some("karras")),
    ("LCM", "LCM", None),
    ("DDPM", "ddpm", None),
    ("DEIS", "deis", None),
    ("DPM3MSDE", "DPM++ 3M SDE", None),
];

/// The (sampler, schedule) labels for a Civitai scheduler name (case-insensitive).
pub fn scheduler_labels(name: &str) -> Option<(&'static str, Option<&'static str>)> {
    SCHEDULERS
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(name.trim()))
        .map(|&(_, s, sch)| (s, sch))
}

/// LoRA-like network types the engine merges.
const LORA_TYPES: &[&str] = &["Lora", "LoCon", "Lycoris"];

/// Translates a Civitai generator input.
pub fn translate(
    obj: &Map<String, Value>,
    args: &DialectArgs,
    catalog: &Catalog,
) -> Result<Translated, ValidationErrors> {
    let mut obj = obj.clone();
    let mut out = Out::new(args.strict_input);
    let response = take_response_format(&mut obj, args.response_format, &mut out.errors);
    for key in obj.keys() {
        if !FIELDS.contains(&key.as_str()) {
            out.unknown(key, FIELDS);
        }
    }
    if let Some(v) = obj.get("$type").filter(|v| !v.is_null()) {
        if v.as_str() != Some("textToImage") {
            out.refuse("$type", v, "\"textToImage\"");
        }
    }
    if let Some(v) = obj.get("baseModel").filter(|v| !v.is_null()) {
        if !v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("sdxl")) {
            out.refuse("baseModel", v, "\"SDXL\"");
        }
    }
    match obj.get("model").and_then(Value::as_str) {
        Some(air) => match resolve(air, catalog, std::slice::from_ref(&catalog.checkpoint)) {
            Some(name) => out.set("checkpoint", Value::from(name)),
            None => out.errors.push(format!(
                "field `model`: AIR {air:?} is not configured on this worker (configured \
                 checkpoint: {})",
                describe(&catalog.checkpoint)
            )),
        },
        None => out
            .errors
            .push("field `model` is required (a checkpoint AIR)".to_string()),
    }

    let empty = Map::new();
    let params = obj
        .get("params")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for key in params.keys() {
        if !PARAMS.contains(&key.as_str()) {
            out.unknown(&format!("params.{key}"), PARAMS);
        }
    }
    let copy = |out: &mut Out, from: &str, to: &str| {
        if let Some(v) = params.get(from).filter(|v| !v.is_null()) {
            out.set(to, v.clone());
        }
    };
    copy(&mut out, "prompt", "prompt");
    copy(&mut out, "negativePrompt", "negative_prompt");
    copy(&mut out, "steps", "num_inference_steps");
    copy(&mut out, "cfgScale", "guidance_scale");
    copy(&mut out, "width", "width");
    copy(&mut out, "height", "height");
    copy(&mut out, "clipSkip", "clip_skip");
    match params.get("seed").filter(|v| !v.is_null()) {
        Some(v) if v.as_i64() == Some(-1) => {}
        Some(v) => out.set("seed", v.clone()),
        None => {}
    }
    if let Some(v) = params.get("scheduler").filter(|v| !v.is_null()) {
        match v.as_str().and_then(scheduler_labels) {
            Some((sampler, schedule)) => {
                check_sampler(
                    &mut out,
                    "params.scheduler",
                    v.as_str().unwrap_or(""),
                    sampler,
                );
                out.set("scheduler", Value::from(sampler));
                if let Some(s) = schedule {
                    out.set("schedule", Value::from(s));
                }
            }
            None => {
                let names: Vec<&str> = SCHEDULERS.iter().map(|(n, _, _)| *n).collect();
                out.refuse("params.scheduler", v, &names.join(", "));
            }
        }
    }

    let count = |out: &mut Out, k: &str| -> u64 {
        match obj.get(k).filter(|v| !v.is_null()) {
            None => 1,
            Some(v) => v.as_u64().filter(|n| *n >= 1).unwrap_or_else(|| {
                out.refuse(k, v, "an integer of at least 1");
                1
            }),
        }
    };
    let images = count(&mut out, "quantity") * count(&mut out, "batchSize");
    out.set("num_images", Value::from(images));

    networks(&obj, &mut out, catalog);
    if obj
        .get("controlNets")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        out.refuse(
            "controlNets",
            &obj["controlNets"],
            "[] (ControlNet is not available on this worker)",
        );
    }
    for k in ["callbackUrl", "priority", "properties"] {
        if obj.get(k).is_some_and(|v| !v.is_null()) {
            out.inert(
                k,
                "an orchestration setting; this worker answers the job itself",
            );
        }
    }
    out.finish(Dialect::Civitai, response, None)
}

/// `additionalNetworks`: LoRA AIRs → `loras` with their strengths.
fn networks(obj: &Map<String, Value>, out: &mut Out, catalog: &Catalog) {
    let Some(v) = obj.get("additionalNetworks").filter(|v| !v.is_null()) else {
        return;
    };
    let Some(nets) = v.as_object() else {
        out.refuse(
            "additionalNetworks",
            v,
            "an object {\"<AIR>\": {\"strength\", \"type\"}}",
        );
        return;
    };
    let mut loras = Vec::new();
    for (air, spec) in nets {
        let field = format!("additionalNetworks.{air}");
        let spec = spec.as_object().cloned().unwrap_or_default();
        for key in spec.keys() {
            if !["strength", "triggerWord", "type"].contains(&key.as_str()) {
                out.unknown(
                    &format!("{field}.{key}"),
                    &["strength", "triggerWord", "type"],
                );
            }
        }
        if let Some(t) = spec.get("type").filter(|v| !v.is_null()) {
            if !t
                .as_str()
                .is_some_and(|s| LORA_TYPES.iter().any(|x| x.eq_ignore_ascii_case(s)))
            {
                out.refuse(&format!("{field}.type"), t, &LORA_TYPES.join(", "));
                continue;
            }
        }
        if spec.get("triggerWord").is_some_and(|v| !v.is_null()) {
            out.inert(
                &format!("{field}.triggerWord"),
                "textual-inversion trigger words are not used; put LoRA trigger words in the prompt",
            );
        }
        match resolve(air, catalog, &catalog.loras) {
            Some(name) => {
                let mut lora = Map::new();
                lora.insert("name".into(), Value::from(name));
                if let Some(s) = spec.get("strength").filter(|v| !v.is_null()) {
                    lora.insert("weight".into(), s.clone());
                }
                loras.push(Value::Object(lora));
            }
            None => {
                let configured: Vec<String> = catalog.loras.iter().map(describe).collect();
                out.errors.push(format!(
                    "field `{field}`: AIR {air:?} is not configured on this worker (configured \
                     LoRAs: {configured:?})"
                ));
            }
        }
    }
    if !loras.is_empty() {
        out.set("loras", Value::Array(loras));
    }
}

/// The `models.toml` name of the model among `models` that `air` names.
fn resolve(air: &str, catalog: &Catalog, models: &[super::CatalogModel]) -> Option<String> {
    if catalog.unchecked {
        return Some(air.to_string());
    }
    models
        .iter()
        .find(|m| m.matches_air(air))
        .map(|m| m.name.clone())
}

fn describe(m: &super::CatalogModel) -> String {
    match (&m.air, m.civitai_version_id) {
        (Some(air), _) => format!("{} ({air})", m.name),
        (None, Some(v)) => format!("{} (model version {v})", m.name),
        (None, None) => format!("{} (no Civitai id)", m.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn karras_names_carry_the_karras_schedule() {
        for (name, sampler, schedule) in SCHEDULERS {
            assert_eq!(scheduler_labels(name), Some((*sampler, *schedule)));
            if name.ends_with("Karras") {
                assert_eq!(*schedule, Some("karras"), "{name}");
            }
        }
        assert_eq!(scheduler_labels("eulera"), Some(("Euler a", None)));
        assert_eq!(scheduler_labels("Euler Ancestral"), None);
    }
}
