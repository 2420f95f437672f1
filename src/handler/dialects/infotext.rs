//! The `infotext` input: a pasted A1111 / Civitai generation-parameters text (the
//! `parameters` PNG chunk, the EXIF comment, the text under an image on Civitai) turned into
//! the request fields it names.
//!
//! Two layers:
//!
//! 1. [`parse_generation_parameters`] reads the text exactly as A1111's reader of the same
//!    name does (prompt lines, `Negative prompt:` lines, the last line's `Key: value` pairs
//!    with JSON-quoted values, `WxH` values split into `Key-1`/`Key-2`, A1111's defaults for
//!    absent keys). `tests/infotext.rs` compares it with a Python port of A1111's function
//!    over the corpus in `tests/fixtures/infotext/`.
//! 2. [`parse`] turns what the text says into the worker's request fields. Civitai's raw
//!    JSON blocks (`Civitai resources: [...]`, `Hashes: {...}`, `Civitai metadata: {...}`),
//!    which A1111's pair syntax would cut at their commas, are taken out of the parameters
//!    line first. Every key either becomes a request field, is kept as a named resource
//!    (under [`RESOURCES_KEY`]) for the model resolver, is known to describe the image
//!    without changing it, or is refused: an infotext that asks for something this worker
//!    does not do (an upscaler model, a refiner, face restoration, …) is an error naming the
//!    key, never a silently different image.
//!
//! `docs/infotext.md` lists the keys, what each becomes and the keys this worker adds so that
//! its own infotexts read back to the identical image.

use serde_json::{json, Map, Value};

/// The output key holding the named resources (checkpoint, VAE, LoRA and embedding hashes,
/// Civitai resources). Not a request field: the dialect layer hands it to the resolver and
/// removes it before the request is validated.
pub const RESOURCES_KEY: &str = "infotext_resources";

/// Largest infotext accepted, in bytes: room for two prompts at the request limit and a long
/// parameters line, not for a megabyte of text.
pub const MAX_INFOTEXT_BYTES: usize = 64 * 1024;

/// Key this worker writes when a request had no negative prompt at all, which the engine
/// turns into all-zero negative conditioning (diffusers' SDXL behaviour). A1111 cannot tell
/// "no negative prompt" from an empty one, so without it an infotext means the empty string.
pub const ZERO_NEGATIVE_KEY: &str = "Zero negative prompt";

/// Key this worker writes for the SDE samplers' noise source when it is not A1111's
/// Brownian tree.
pub const SDE_NOISE_KEY: &str = "SDE noise";

/// A1111's infotext reader: the prompt, the negative prompt and every `Key: value` pair of the
/// last line, plus A1111's values for the keys the text leaves out. Values are strings as in
/// A1111 (its few numeric and boolean defaults keep their types).
pub fn parse_generation_parameters(text: &str) -> Map<String, Value> {
    let read = read_text(text);
    let mut res = Map::new();
    res.insert("Prompt".into(), Value::String(read.prompt));
    res.insert(
        "Negative prompt".into(),
        Value::String(read.negative_prompt),
    );
    for (k, v) in read.pairs {
        res.insert(k, Value::String(v));
    }
    let mut default = |k: &str, v: Value| {
        if !res.contains_key(k) {
            res.insert(k.to_string(), v);
        }
    };
    default("Clip skip", json!("1"));
    if let Some(h) = res.get("Hypernet").cloned() {
        let strength = res
            .get("Hypernet strength")
            .cloned()
            .unwrap_or(json!("1.0"));
        let tag = format!("<hypernet:{}:{}>", plain(&h), plain(&strength));
        if let Some(Value::String(p)) = res.get_mut("Prompt") {
            p.push_str(&tag);
        }
    }
    if !res.contains_key("Hires resize-1") {
        res.insert("Hires resize-1".into(), json!(0));
        res.insert("Hires resize-2".into(), json!(0));
    }
    for (k, v) in [
        ("Hires sampler", json!("Use same sampler")),
        ("Hires checkpoint", json!("Use same checkpoint")),
        ("Hires prompt", json!("")),
        ("Hires negative prompt", json!("")),
        ("Mask mode", json!("Inpaint masked")),
        ("Masked content", json!("original")),
        ("Inpaint area", json!("Whole picture")),
        ("Masked area padding", json!(32)),
    ] {
        res.entry(k).or_insert(v);
    }
    restore_old_hires_fix(&mut res);
    for (k, v) in [
        ("RNG", json!("GPU")),
        ("Schedule type", json!("Automatic")),
        ("Schedule max sigma", json!(0)),
        ("Schedule min sigma", json!(0)),
        ("Schedule rho", json!(0)),
        ("VAE Encoder", json!("Full")),
        ("VAE Decoder", json!("Full")),
        ("FP8 weight", json!("Disable")),
    ] {
        res.entry(k).or_insert(v);
    }
    if !res.contains_key("Cache FP16 weight for LoRA") && res["FP8 weight"] != json!("Disable") {
        res.insert("Cache FP16 weight for LoRA".into(), json!(false));
    }
    version_backcompat(&mut res);
    res
}

/// A value as Python's `str()` would print it inside an f-string.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What A1111's reader finds in the text before it adds defaults.
struct ReadText {
    prompt: String,
    negative_prompt: String,
    /// The last line's pairs in order (a later duplicate replaces an earlier one when they go
    /// into a map).
    pairs: Vec<(String, String)>,
}

fn read_text(text: &str) -> ReadText {
    let stripped = py_strip(text);
    let mut lines: Vec<&str> = stripped.split('\n').collect();
    let mut last = lines.pop().unwrap_or("");
    if find_params(last).len() < 3 {
        lines.push(last);
        last = "";
    }
    let mut prompt = String::new();
    let mut negative = String::new();
    let mut in_negative = false;
    for line in lines {
        let mut line = py_strip(line);
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            line = py_strip(rest);
        }
        let target = if in_negative {
            &mut negative
        } else {
            &mut prompt
        };
        if !target.is_empty() {
            target.push('\n');
        }
        target.push_str(line);
    }
    let mut pairs = Vec::new();
    for (k, v) in find_params(last) {
        // A1111 indexes the first character, so an empty value raises and the pair is
        // skipped.
        if v.is_empty() {
            continue;
        }
        let v = unquote(v);
        match image_size(&v) {
            Some((a, b)) => {
                pairs.push((format!("{k}-1"), a.to_string()));
                pairs.push((format!("{k}-2"), b.to_string()));
            }
            None => pairs.push((k.to_string(), v)),
        }
    }
    ReadText {
        prompt,
        negative_prompt: negative,
        pairs,
    }
}

/// Python's `str.strip()`: Unicode white space at both ends.
fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// All `Key: value` pairs of a parameters line, found as A1111's pattern
/// `\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)` finds them: scanning left to right,
/// a pair starts at the first position where one matches and the next search starts after it.
/// Linear in the line's length: a failed attempt skips the positions that would fail for the
/// same reason.
fn find_params(line: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < line.len() {
        match match_param(line, pos) {
            Ok((k, v, end)) => {
                out.push((k, v));
                pos = end;
            }
            Err(skip_to) => {
                let next = line[pos..].chars().next().map_or(1, char::len_utf8);
                pos = skip_to.max(pos + next);
            }
        }
    }
    out
}

/// One match of the pair pattern starting exactly at `start`: key, value and end offset. On
/// failure, the first position after `start` where a match could still begin.
fn match_param(line: &str, start: usize) -> Result<(&str, &str, usize), usize> {
    let s = &line[start..];
    // \s*: every position inside this white space fails like `start` does.
    let ws = s.len() - s.trim_start_matches(is_py_space).len();
    let key_start = start + ws;
    let rest = &line[key_start..];
    // \w[\w \-/]+ — the run is greedy and cannot contain ':', so only the maximal run can be
    // followed by the ':' the pattern needs; a start inside the run ends at the same place.
    let mut chars = rest.char_indices();
    let Some((_, first)) = chars.next() else {
        return Err(line.len());
    };
    if !is_word(first) {
        return Err(key_start);
    }
    let mut key_len = first.len_utf8();
    let mut more = 0;
    for (i, c) in chars {
        if is_word(c) || c == ' ' || c == '-' || c == '/' {
            key_len = i + c.len_utf8();
            more += 1;
        } else {
            break;
        }
    }
    if more == 0 || !rest[key_len..].starts_with(':') {
        return Err(key_start + key_len);
    }
    let key = &rest[..key_len];
    let after_colon = key_start + key_len + 1;
    let v = &line[after_colon..];
    let vs = after_colon + (v.len() - v.trim_start_matches(is_py_space).len());
    let value_text = &line[vs..];
    // First alternative: a double-quoted string with backslash escapes (`.` does not match a
    // newline), then `,` or the end.
    if let Some(qlen) = quoted_len(value_text) {
        let after = &value_text[qlen..];
        if after.is_empty() {
            return Ok((key, &value_text[..qlen], vs + qlen));
        }
        if after.starts_with(',') {
            return Ok((key, &value_text[..qlen], vs + qlen + 1));
        }
    }
    // Second alternative: everything up to the next comma.
    let vlen = value_text.find(',').unwrap_or(value_text.len());
    let end = vs + vlen + usize::from(vlen < value_text.len());
    Ok((key, &value_text[..vlen], end))
}

/// Length of `"(?:\\.|[^\\"])+"` at the start of `s`, if it matches.
fn quoted_len(s: &str) -> Option<usize> {
    let mut it = s.char_indices();
    if it.next()?.1 != '"' {
        return None;
    }
    let mut tokens = 0;
    while let Some((i, c)) = it.next() {
        match c {
            '"' => return (tokens > 0).then_some(i + 1),
            '\\' => match it.next() {
                Some((_, '\n')) | None => return None,
                Some(_) => tokens += 1,
            },
            _ => tokens += 1,
        }
    }
    None
}

/// A1111's `unquote`: a value in double quotes is read as a JSON string when it is one.
fn unquote(v: &str) -> String {
    if !v.is_empty() && v.starts_with('"') && v.ends_with('"') {
        if let Ok(s) = serde_json::from_str::<String>(v) {
            return s;
        }
    }
    v.to_string()
}

/// `^(\d+)x(\d+)$`.
fn image_size(v: &str) -> Option<(&str, &str)> {
    let (a, b) = v.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    (digits(a) && digits(b)).then_some((a, b))
}

/// Infotexts of A1111's old hires fix name the first pass size; A1111 turns them into the
/// first-pass size and a resize target (its `use_old_hires_fix_width_height` option off).
fn restore_old_hires_fix(res: &mut Map<String, Value>) {
    let (Some(fw), Some(fh)) = (res.get("First pass size-1"), res.get("First pass size-2")) else {
        return;
    };
    let int = |v: &Value| -> Option<i64> {
        match v {
            Value::String(s) => py_strip(s).parse().ok(),
            other => other.as_i64(),
        }
    };
    let (Some(mut fw), Some(mut fh)) = (int(fw), int(fh)) else {
        return;
    };
    let width = res.get("Size-1").and_then(int).unwrap_or(512);
    let height = res.get("Size-2").and_then(int).unwrap_or(512);
    if fw == 0 || fh == 0 {
        let scale = ((512.0 * 512.0) / (width as f64 * height as f64)).sqrt();
        fw = (scale * width as f64 / 64.0).ceil() as i64 * 64;
        fh = (scale * height as f64 / 64.0).ceil() as i64 * 64;
    }
    res.insert("Size-1".into(), json!(fw));
    res.insert("Size-2".into(), json!(fh));
    res.insert("Hires resize-1".into(), json!(width));
    res.insert("Hires resize-2".into(), json!(height));
}

/// A1111's compatibility flags for infotexts of older versions (its `auto_backcompat`
/// option, on by default).
fn version_backcompat(res: &mut Map<String, Value>) {
    let Some(ver) = res
        .get("Version")
        .and_then(Value::as_str)
        .and_then(parse_version)
    else {
        return;
    };
    let v160 = PyVersion::release(&[1, 6, 0]);
    let prompt = res.get("Prompt").and_then(Value::as_str).unwrap_or("");
    if ver < v160 && prompt.contains('[') {
        res.insert("Old prompt editing timelines".into(), json!(true));
    }
    let sampler = res.get("Sampler").and_then(Value::as_str).unwrap_or("");
    if ver < v160 && (sampler == "DDIM" || sampler == "PLMS") {
        res.insert("Pad conds v0".into(), json!(true));
    }
    let v170_tsnr = PyVersion {
        release: vec![1, 7, 0],
        post: Some(225),
    };
    if ver < v170_tsnr {
        res.insert("Downcast alphas_cumprod".into(), json!(true));
    }
    let refiner = res
        .get("Refiner")
        .is_some_and(|r| r.as_str().map_or(!r.is_null(), |s| !s.is_empty()));
    if ver < PyVersion::release(&[1, 8, 0]) && refiner {
        res.insert("Refiner switch by sampling steps".into(), json!(true));
    }
}

/// The part of a PEP 440 version that A1111's version tags use: `v1.7.0-225` is release
/// 1.7.0, post-release 225 (`packaging` reads `-N` as a post release). Versions ordered as
/// `packaging` orders them for these shapes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PyVersion {
    release: Vec<u64>,
    post: Option<u64>,
}

impl PyVersion {
    fn release(r: &[u64]) -> Self {
        PyVersion {
            release: r.to_vec(),
            post: None,
        }
    }
}

/// A1111's `parse_version`: `git describe` output `v1.7.0-225-gabcdef` is cut to
/// `v1.7.0-225`, then read by `packaging`; anything it cannot read gives `None` (no flags).
/// Only `[v]N(.N)*[-N]` is accepted here; pre-releases and local versions, which A1111's
/// tags do not use, also give `None`.
fn parse_version(text: &str) -> Option<PyVersion> {
    let mut t = text;
    // `([^-]+-[^-]+)-.*`
    let parts: Vec<&str> = text.splitn(3, '-').collect();
    if parts.len() == 3 && !parts[0].is_empty() && !parts[1].is_empty() {
        t = &text[..parts[0].len() + 1 + parts[1].len()];
    }
    let t = t.trim().to_ascii_lowercase();
    let t = t.strip_prefix('v').unwrap_or(&t);
    let (rel, post) = match t.split_once('-') {
        Some((r, p)) => (r, Some(p.parse::<u64>().ok()?)),
        None => (t, None),
    };
    let mut release: Vec<u64> = rel
        .split('.')
        .map(|p| p.parse::<u64>().ok())
        .collect::<Option<_>>()?;
    // packaging compares releases with trailing zeros removed.
    while release.len() > 1 && release.last() == Some(&0) {
        release.pop();
    }
    Some(PyVersion { release, post })
}

/// Keys that describe an image without changing it; read and dropped.
const DESCRIPTIVE: &[&str] = &[
    "Version",
    "Created Date",
    "Template",
    "Negative Template",
    "User",
    "Cache FP16 weight for LoRA",
];

/// Keys accepted only with the value that means "nothing special" (A1111's defaults).
const DEFAULT_ONLY: &[(&str, &str)] = &[
    ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("FP8 weight", "Disable"),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("Schedule max sigma", "0"),
    ("Schedule min sigma", "0"),
    ("Schedule rho", "0"),
    ("ENSD", "0"),
    ("Eta DDIM", "0"),
    ("Eta", "1"),
    ("NGMS", "0"),
    ("Noise multiplier", "1"),
];

/// Resources: infotext key → key under [`RESOURCES_KEY`]. Hash lists become objects.
const RESOURCE_KEYS: &[(&str, &str)] = &[
    ("Model", "model"),
    ("Model hash", "model_hash"),
    ("VAE", "vae"),
    ("VAE hash", "vae_hash"),
    ("Lora hashes", "lora_hashes"),
    ("TI hashes", "ti_hashes"),
];

/// Civitai's JSON blocks on the parameters line: infotext key → key under [`RESOURCES_KEY`]
/// (`None`: descriptive, dropped).
const JSON_BLOCKS: &[(&str, Option<&str>)] = &[
    ("Civitai resources", Some("civitai_resources")),
    ("Hashes", Some("hashes")),
    ("Civitai metadata", None),
];

/// The request fields (and [`RESOURCES_KEY`]) that `text` names. Errors name each infotext
/// key that asks for something this worker does not do, or whose value cannot be read.
pub fn parse(text: &str) -> Result<Map<String, Value>, String> {
    if text.len() > MAX_INFOTEXT_BYTES {
        return Err(format!(
            "field `infotext`: {} bytes (allowed: at most {MAX_INFOTEXT_BYTES})",
            text.len()
        ));
    }
    let (text, blocks) = cut_json_blocks(text);
    let read = read_text(&text);
    let mut raw: Map<String, Value> = Map::new();
    for (k, v) in read.pairs {
        raw.insert(k, Value::String(v));
    }
    let mut f = Fields {
        raw,
        out: Map::new(),
        errors: Vec::new(),
    };
    let mut resources = Map::new();
    for (k, v) in blocks {
        if let Some((_, Some(name))) = JSON_BLOCKS.iter().find(|(b, _)| *b == k) {
            resources.insert((*name).to_string(), v);
        }
    }
    let comfy = f
        .raw
        .get("Version")
        .and_then(Value::as_str)
        .is_some_and(|v| v.trim().starts_with("ComfyUI"));

    f.out.insert("prompt".into(), json!(read.prompt));
    match f.take(ZERO_NEGATIVE_KEY).as_deref().map(str::trim) {
        Some("True") if read.negative_prompt.is_empty() => {}
        Some("True") => f.errors.push(format!(
            "`{ZERO_NEGATIVE_KEY}: True` contradicts the negative prompt (allowed: only \
             without a `Negative prompt:` line)"
        )),
        Some(other) => f.bad(ZERO_NEGATIVE_KEY, other, "True"),
        None => {
            f.out
                .insert("negative_prompt".into(), json!(read.negative_prompt));
        }
    }
    f.integer("Steps", "num_inference_steps");
    f.string("Sampler", "scheduler");
    f.string("Schedule type", "schedule");
    f.number("CFG scale", "guidance_scale");
    f.integer("Seed", "seed");
    f.integer("Size-1", "width");
    f.integer("Size-2", "height");
    f.integer("Clip skip", "clip_skip");
    f.integer("Variation seed", "subseed");
    f.number("Variation seed strength", "subseed_strength");
    f.number("CFG Rescale phi", "guidance_rescale");
    match f.take("RNG") {
        Some(v) => match py_strip(&v) {
            "CPU" => f.set("noise", json!("cpu")),
            "GPU" | "NV" => f.set("noise", json!("nv")),
            other => f.bad("RNG", other, "CPU, GPU, NV"),
        },
        // A1111's default source; ComfyUI draws its initial noise on the CPU.
        None => f.set("noise", json!(if comfy { "cpu" } else { "nv" })),
    }
    match f.take("Emphasis") {
        Some(v) => match py_strip(&v) {
            "Original" => f.set("prompt_weighting", json!("a1111")),
            "No norm" => f.set("prompt_weighting", json!("a1111_no_norm")),
            "None" | "Ignore" => f.set("prompt_weighting", json!("none")),
            "ComfyUI" => f.set("prompt_weighting", json!("comfy")),
            other => f.bad("Emphasis", other, "Original, No norm, None, ComfyUI"),
        },
        None => f.set(
            "prompt_weighting",
            json!(if comfy { "comfy" } else { "a1111" }),
        ),
    }
    if let Some(v) = f.take(SDE_NOISE_KEY) {
        match py_strip(&v).to_ascii_lowercase().as_str() {
            n @ ("brownian" | "gaussian") => f.set("sde_noise", json!(n)),
            _ => f.bad(SDE_NOISE_KEY, &v, "Brownian, Gaussian"),
        }
    }
    if f.raw.contains_key("Hires upscale") {
        f.number("Hires upscale", "hires_scale");
        f.integer("Hires steps", "hires_steps");
        f.number("Denoising strength", "hires_denoise");
        if let Some(u) = f.take("Hires upscaler") {
            if py_strip(&u) != "Latent" {
                f.bad(
                    "Hires upscaler",
                    &u,
                    "Latent (the worker upscales latents bilinearly, it has no upscaler models)",
                );
            }
        }
    } else {
        f.number("Denoising strength", "strength");
    }
    for (key, name) in RESOURCE_KEYS {
        if let Some(v) = f.take(key) {
            let value = if key.ends_with("hashes") {
                hash_list(&v)
            } else {
                json!(v)
            };
            resources.insert((*name).to_string(), value);
        }
    }
    for key in DESCRIPTIVE {
        f.take(key);
    }
    for (key, default) in DEFAULT_ONLY {
        if let Some(v) = f.take(key) {
            if !same_value(&v, default) {
                f.bad(
                    key,
                    &v,
                    &format!("{default:?}: this worker has no other setting for it"),
                );
            }
        }
    }
    let left: Vec<String> = f.raw.keys().cloned().collect();
    for key in left {
        let v = f.take(&key).unwrap_or_default();
        f.errors.push(format!(
            "`{key}: {v}` is not supported: this worker cannot do what it asks, so the image \
             would differ"
        ));
    }
    if !resources.is_empty() {
        f.out.insert(RESOURCES_KEY.into(), Value::Object(resources));
    }
    if f.errors.is_empty() {
        Ok(f.out)
    } else {
        Err(format!("field `infotext`: {}", f.errors.join("; ")))
    }
}

/// Two values equal as A1111 would compare the setting: numerically when both are numbers.
fn same_value(v: &str, default: &str) -> bool {
    let v = py_strip(v);
    match (v.parse::<f64>(), default.parse::<f64>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => v == default,
    }
}

/// `"name: hash, name: hash"` → `{"name": "hash", …}`. A1111 removes `:` and `,` from the
/// names, so each entry splits at its last colon.
fn hash_list(v: &str) -> Value {
    let mut m = Map::new();
    for entry in v.split(',') {
        let entry = py_strip(entry);
        if let Some((name, hash)) = entry.rsplit_once(':') {
            m.insert(py_strip(name).to_string(), json!(py_strip(hash)));
        }
    }
    Value::Object(m)
}

/// Removes Civitai's raw JSON blocks from the parameters (last) line: `Key: <JSON>` where the
/// key is one of [`JSON_BLOCKS`], at the line start or after `, `. Returns the text without
/// them and the decoded blocks.
fn cut_json_blocks(text: &str) -> (String, Vec<(&'static str, Value)>) {
    let stripped = py_strip(text);
    let (head, last) = match stripped.rfind('\n') {
        Some(i) => (&stripped[..=i], &stripped[i + 1..]),
        None => ("", stripped),
    };
    let mut line = last.to_string();
    let mut blocks = Vec::new();
    for (key, _) in JSON_BLOCKS {
        let marker = format!("{key}:");
        let mut from = 0;
        while let Some(off) = line[from..].find(&marker) {
            let at = from + off;
            let before = &line[..at];
            let boundary = before.trim_end().is_empty() || before.trim_end().ends_with(',');
            let after = &line[at + marker.len()..];
            let json_start = at + marker.len() + (after.len() - after.trim_start().len());
            let mut stream =
                serde_json::Deserializer::from_str(&line[json_start..]).into_iter::<Value>();
            match stream.next() {
                Some(Ok(v)) if boundary && (v.is_array() || v.is_object()) => {
                    let end = json_start + stream.byte_offset();
                    // Drop the block with the comma that joined it to the previous pair.
                    let cut_from = before.trim_end().strip_suffix(',').map_or(0, str::len);
                    let rest = line[end..].trim_start();
                    let rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
                    let head_part = line[..cut_from].to_string();
                    line = match (head_part.is_empty(), rest.is_empty()) {
                        (true, _) => rest.to_string(),
                        (false, true) => head_part,
                        (false, false) => format!("{head_part}, {rest}"),
                    };
                    blocks.push((*key, v));
                    from = cut_from;
                }
                _ => from = at + marker.len(),
            }
        }
    }
    (format!("{head}{line}"), blocks)
}

/// The pairs of one infotext being turned into request fields.
struct Fields {
    /// Pairs not yet used.
    raw: Map<String, Value>,
    out: Map<String, Value>,
    errors: Vec<String>,
}

impl Fields {
    fn take(&mut self, key: &str) -> Option<String> {
        self.raw.remove(key).map(|v| plain(&v))
    }

    fn set(&mut self, field: &str, v: Value) {
        self.out.insert(field.to_string(), v);
    }

    fn bad(&mut self, key: &str, v: &str, allowed: &str) {
        self.errors.push(format!(
            "`{key}: {}` is not supported (allowed: {allowed})",
            py_strip(v)
        ));
    }

    fn string(&mut self, key: &str, field: &str) {
        if let Some(v) = self.take(key) {
            self.set(field, json!(py_strip(&v)));
        }
    }

    fn integer(&mut self, key: &str, field: &str) {
        if let Some(v) = self.take(key) {
            let t = py_strip(&v);
            let n = t.parse::<u64>().ok().or_else(|| {
                t.parse::<f64>()
                    .ok()
                    .filter(|x| x.fract() == 0.0 && *x >= 0.0 && *x < 1.8e19)
                    .map(|x| x as u64)
            });
            match n {
                Some(n) => self.set(field, json!(n)),
                None => self.bad(key, &v, "a whole number"),
            }
        }
    }

    fn number(&mut self, key: &str, field: &str) {
        if let Some(v) = self.take(key) {
            match py_strip(&v).parse::<f64>() {
                Ok(x) if x.is_finite() => self.set(field, json!(x)),
                _ => self.bad(key, &v, "a number"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_pattern_matches_a1111s_regex_on_tricky_lines() {
        // Expected values from Python's `re.findall` with A1111's pattern.
        let line = r#"Steps: 20, Lora hashes: "a: 1, b: 2", Xx: "unterminated, Yy:3, Zz: "q" tail, Ww: """#;
        assert_eq!(
            find_params(line),
            vec![
                ("Steps", "20"),
                ("Lora hashes", "\"a: 1, b: 2\""),
                ("Xx", "\"unterminated"),
                ("Yy", "3"),
                ("Zz", "\"q\" tail"),
                ("Ww", "\"\""),
            ]
        );
        // One-letter keys never match; a key may hold spaces, '-' and '/'.
        assert_eq!(
            find_params("a: 1, Hires-x/y z: 2"),
            vec![("Hires-x/y z", "2")]
        );
    }

    #[test]
    fn long_lines_without_pairs_are_read_in_linear_time() {
        // 60 kB of word characters, spaces and dashes with no colon: each start position
        // would rescan the rest of the line without the skip.
        let line = "word-word and/more ".repeat(3_000);
        let started = std::time::Instant::now();
        assert!(find_params(&line).is_empty());
        assert!(
            started.elapsed().as_secs_f64() < 0.5,
            "{:?}",
            started.elapsed()
        );
        let text = format!("{line}\nSteps: 1, Seed: 2, Size: 64x64");
        assert_eq!(parse(&text).unwrap()["seed"], json!(2));
        let err = parse(&"x".repeat(MAX_INFOTEXT_BYTES + 1)).unwrap_err();
        assert!(err.contains("at most 65536"), "{err}");
    }

    #[test]
    fn versions_order_as_packaging_does() {
        let v = |s| parse_version(s).unwrap();
        assert!(v("v1.5.2") < v("1.6.0"));
        assert!(v("v1.7.0") < v("v1.7.0-225"));
        assert!(v("v1.7.0-225-g1234abc") == v("v1.7.0-225"));
        assert!(v("v1.10.1") > v("1.8.0"));
        assert!(v("1.6") == v("1.6.0"));
        assert!(parse_version("ComfyUI").is_none());
        assert!(parse_version("f2.0.1v1.10.1-previous-669-gdfdcbab6").is_none());
    }
}
