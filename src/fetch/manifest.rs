//! `models.toml`: which checkpoints, LoRAs and VAE the worker serves, and where each comes from.
//!
//! Every error names the file and line so a user editing the manifest on a RunPod template can
//! find the mistake without reading code.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

use super::air::Air;

/// What a manifest entry is used as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Checkpoint,
    Lora,
    Vae,
}

impl ModelKind {
    /// Table name in `models.toml` and directory name in the cache's human-readable tree.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Checkpoint => "checkpoint",
            ModelKind::Lora => "lora",
            ModelKind::Vae => "vae",
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the bytes of an entry come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A Civitai model version (from `civitai = <id>` or an AIR).
    Civitai {
        version_id: u64,
        /// Known only when given by an AIR; otherwise read from the version metadata.
        model_id: Option<u64>,
    },
    /// A file in a Hugging Face repository.
    HuggingFace {
        repo: String,
        file: String,
        revision: Option<String>,
    },
    /// A plain http(s) URL.
    Url(url::Url),
    /// A file already on local disk (relative paths are relative to the manifest).
    Path(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Civitai { version_id, .. } => write!(f, "civitai version {version_id}"),
            Source::HuggingFace {
                repo,
                file,
                revision,
            } => match revision {
                Some(r) => write!(f, "hf {repo}/{file}@{r}"),
                None => write!(f, "hf {repo}/{file}"),
            },
            Source::Url(u) => write!(f, "url {}", super::names::redact_url(u)),
            Source::Path(p) => write!(f, "path {}", p.display()),
        }
    }
}

/// Which file of a Civitai version to download when it has several.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileChoice {
    /// `fp16`, `fp32`, `bf16`, … (Civitai `metadata.fp`).
    pub fp: Option<String>,
    /// `pruned` or `full` (Civitai `metadata.size`).
    pub size: Option<String>,
    /// An exact Civitai file id (also settable with `+<fileId>` in an AIR).
    pub file_id: Option<u64>,
}

/// One `[[checkpoint]]`, `[[lora]]` or `[vae]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestEntry {
    pub kind: ModelKind,
    /// How requests refer to it; `None` = derived from the downloaded file's name.
    pub name: Option<String>,
    pub source: Source,
    /// Uppercase hex SHA-256 pin.
    pub sha256: Option<String>,
    /// Default LoRA strength (LoRAs only; 1.0 when absent).
    pub weight: Option<f32>,
    pub choice: FileChoice,
    /// 1-based line of the table header (`[[lora]]`) in the manifest, for messages.
    pub line: usize,
}

impl ManifestEntry {
    /// A short description used in progress lines and errors, e.g.
    /// `lora "detail" (civitai version 135867, models.toml:12)`.
    pub fn describe(&self, manifest_name: &str) -> String {
        match &self.name {
            Some(n) => format!(
                "{} \"{n}\" ({}, {manifest_name}:{})",
                self.kind, self.source, self.line
            ),
            None => format!(
                "{} ({}, {manifest_name}:{})",
                self.kind, self.source, self.line
            ),
        }
    }
}

/// A parsed, validated `models.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Where it was read from (relative `path =` sources are resolved against its directory).
    pub path: PathBuf,
    /// Checkpoints first (the first is the default), then LoRAs, then the VAE.
    pub entries: Vec<ManifestEntry>,
}

/// A manifest problem, with the file and line.
#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("cannot read model manifest {path}: {source} (set --models / MODELS_TOML)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: no [[checkpoint]] entry; at least one checkpoint is required")]
    NoCheckpoint { path: PathBuf },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    checkpoint: Vec<Spanned<RawEntry>>,
    #[serde(default)]
    lora: Vec<Spanned<RawEntry>>,
    vae: Option<Spanned<RawEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: Option<Spanned<String>>,
    civitai: Option<Spanned<u64>>,
    air: Option<Spanned<String>>,
    hf: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    revision: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    sha256: Option<Spanned<String>>,
    weight: Option<Spanned<f64>>,
    fp: Option<Spanned<String>>,
    size: Option<Spanned<String>>,
    file_id: Option<Spanned<u64>>,
}

const FP_VALUES: &[&str] = &[
    "fp32",
    "fp16",
    "bf16",
    "mxfp8",
    "fp8_mixed",
    "fp8_scaled",
    "fp8",
    "int8",
    "nf4",
    "nvfp4",
    "int4",
];

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: impl AsRef<Path>) -> Result<Manifest, ManifestError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validates manifest text; `path` is used for messages and relative `path =` sources.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let invalid = |offset: usize, message: String| ManifestError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, offset),
            message,
        };
        let raw: RawManifest = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let mut message = e.message().trim().to_string();
            if message.starts_with("unknown field") {
                message.push_str(" (allowed tables: [[checkpoint]], [[lora]], [vae])");
            }
            invalid(offset, message)
        })?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        let mut entries = Vec::new();
        let tables = raw
            .checkpoint
            .into_iter()
            .map(|e| (ModelKind::Checkpoint, e))
            .chain(raw.lora.into_iter().map(|e| (ModelKind::Lora, e)))
            .chain(raw.vae.into_iter().map(|e| (ModelKind::Vae, e)));
        for (kind, spanned) in tables {
            let start = spanned.span().start;
            let line = line_of(text, start);
            let entry = convert(kind, spanned.into_inner(), start, line, base_dir, &invalid)?;
            entries.push(entry);
        }
        if !entries.iter().any(|e| e.kind == ModelKind::Checkpoint) {
            return Err(ManifestError::NoCheckpoint {
                path: path.to_path_buf(),
            });
        }
        let mut seen: HashMap<(ModelKind, String), usize> = HashMap::new();
        for e in &entries {
            if let Some(name) = &e.name {
                if let Some(first) = seen.insert((e.kind, name.to_lowercase()), e.line) {
                    return Err(ManifestError::Invalid {
                        path: path.to_path_buf(),
                        line: e.line,
                        message: format!(
                            "duplicate {} name \"{name}\" (first used on line {first}); names must be unique per kind",
                            e.kind
                        ),
                    });
                }
            }
        }
        Ok(Manifest {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The file name used in messages (`models.toml`).
    pub fn display_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

/// Checks a request name: it becomes a file name in the cache tree and appears in prompts.
pub(crate) fn validate_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("`name` must not be empty".into());
    }
    if name.len() > 100 {
        return Err(format!("`name` \"{name}\" is longer than 100 bytes"));
    }
    if name
        .chars()
        .any(|c| c.is_control() || matches!(c, '/' | '\\' | ':' | '<' | '>'))
        || name.starts_with('.')
    {
        return Err(format!(
            "`name` \"{name}\" may not contain / \\ : < > or control characters, nor start with '.'"
        ));
    }
    Ok(())
}

fn convert(
    kind: ModelKind,
    raw: RawEntry,
    table_start: usize,
    line: usize,
    base_dir: &Path,
    invalid: &dyn Fn(usize, String) -> ManifestError,
) -> Result<ManifestEntry, ManifestError> {
    let table_line_err = |m: String| invalid(table_start, m);
    let mut sources: Vec<(&str, usize)> = Vec::new();
    if let Some(v) = &raw.civitai {
        sources.push(("civitai", v.span().start));
    }
    if let Some(v) = &raw.air {
        sources.push(("air", v.span().start));
    }
    if let Some(v) = &raw.hf {
        sources.push(("hf", v.span().start));
    }
    if let Some(v) = &raw.url {
        sources.push(("url", v.span().start));
    }
    if let Some(v) = &raw.path {
        sources.push(("path", v.span().start));
    }
    if sources.len() > 1 {
        let names: Vec<&str> = sources.iter().map(|s| s.0).collect();
        return Err(invalid(
            sources[1].1,
            format!(
                "[[{kind}]] has {} sources ({}); give exactly one of civitai, air, hf, url, path",
                sources.len(),
                names.join(", ")
            ),
        ));
    }
    if sources.is_empty() {
        return Err(table_line_err(format!(
            "[[{kind}]] has no source; give exactly one of civitai = <version id>, air = \"urn:air:…\", hf = \"org/repo\" + file, url = \"https://…\", path = \"…\""
        )));
    }
    let is_civitai = raw.civitai.is_some() || raw.air.is_some();
    for (field, present) in [
        ("fp", raw.fp.as_ref().map(|s| s.span().start)),
        ("size", raw.size.as_ref().map(|s| s.span().start)),
        ("file_id", raw.file_id.as_ref().map(|s| s.span().start)),
    ] {
        if let (Some(at), false) = (present, is_civitai) {
            return Err(invalid(
                at,
                format!("`{field}` only applies to Civitai sources (civitai = … or air = …)"),
            ));
        }
    }
    if raw.hf.is_none() {
        for (field, v) in [("file", &raw.file), ("revision", &raw.revision)] {
            if let Some(v) = v {
                return Err(invalid(
                    v.span().start,
                    format!("`{field}` only applies to Hugging Face sources (hf = \"org/repo\")"),
                ));
            }
        }
    }
    let mut choice = FileChoice::default();
    if let Some(fp) = &raw.fp {
        let v = fp.get_ref().to_ascii_lowercase();
        if !FP_VALUES.contains(&v.as_str()) {
            return Err(invalid(
                fp.span().start,
                format!(
                    "`fp` = \"{}\" is not a Civitai precision; allowed: {}",
                    fp.get_ref(),
                    FP_VALUES.join(", ")
                ),
            ));
        }
        choice.fp = Some(v);
    }
    if let Some(size) = &raw.size {
        let v = size.get_ref().to_ascii_lowercase();
        if v != "pruned" && v != "full" {
            return Err(invalid(
                size.span().start,
                format!(
                    "`size` = \"{}\" is not allowed; use \"pruned\" or \"full\"",
                    size.get_ref()
                ),
            ));
        }
        choice.size = Some(v);
    }
    choice.file_id = raw.file_id.as_ref().map(|f| *f.get_ref());

    let source = if let Some(v) = raw.civitai {
        if *v.get_ref() == 0 {
            return Err(invalid(
                v.span().start,
                "`civitai` must be a model version id > 0 (the number after ?modelVersionId= on civitai.com)".into(),
            ));
        }
        Source::Civitai {
            version_id: *v.get_ref(),
            model_id: None,
        }
    } else if let Some(v) = raw.air {
        let air = Air::parse(v.get_ref()).map_err(|e| invalid(v.span().start, e.to_string()))?;
        if let Some(f) = air.file_id {
            if choice.file_id.is_some_and(|c| c != f) {
                return Err(invalid(
                    v.span().start,
                    format!(
                        "AIR names file {f} but `file_id` = {}; give one",
                        choice.file_id.unwrap_or_default()
                    ),
                ));
            }
            choice.file_id = Some(f);
        }
        Source::Civitai {
            version_id: air.version_id,
            model_id: Some(air.model_id),
        }
    } else if let Some(repo) = raw.hf {
        let r = repo.get_ref();
        let valid = r.split('/').count() <= 2
            && !r.is_empty()
            && r.split('/').all(|p| {
                !p.is_empty() && p != ".." && p != "." && !p.contains(char::is_whitespace)
            });
        if !valid {
            return Err(invalid(
                repo.span().start,
                format!("`hf` = \"{r}\" is not a repository id; expected \"org/repo\""),
            ));
        }
        let Some(file) = raw.file else {
            return Err(invalid(
                repo.span().start,
                "`hf` needs `file` = \"path/in/repo.safetensors\"".into(),
            ));
        };
        let f = file.get_ref();
        if f.is_empty() || f.starts_with('/') || f.split('/').any(|p| p == ".." || p.is_empty()) {
            return Err(invalid(
                file.span().start,
                format!("`file` = \"{f}\" must be a relative path inside the repository"),
            ));
        }
        check_extension(f).map_err(|m| invalid(file.span().start, m))?;
        Source::HuggingFace {
            repo: r.clone(),
            file: f.clone(),
            revision: raw.revision.map(|r| r.into_inner()),
        }
    } else if let Some(u) = raw.url {
        let parsed = url::Url::parse(u.get_ref())
            .map_err(|e| invalid(u.span().start, format!("`url` is not a valid URL: {e}")))?;
        if parsed.scheme() != "https" && parsed.scheme() != "http" {
            return Err(invalid(
                u.span().start,
                format!("`url` must be http(s), got scheme `{}`", parsed.scheme()),
            ));
        }
        if parsed
            .query_pairs()
            .any(|(k, _)| k.eq_ignore_ascii_case("token"))
        {
            return Err(invalid(
                u.span().start,
                "`url` carries a `token=` query parameter; never put API keys in URLs (they end up in logs). Use civitai = <version id> and the CIVITAI_TOKEN environment variable".into(),
            ));
        }
        let host = parsed.host_str().unwrap_or("").to_ascii_lowercase();
        if host == "civitai.com" || host.ends_with(".civitai.com") {
            let version = parsed
                .path()
                .strip_prefix("/api/download/models/")
                .map(|v| v.trim_end_matches('/').to_string());
            let hint = match version {
                Some(v) => format!("civitai = {v}"),
                None => "civitai = <version id>".into(),
            };
            return Err(invalid(
                u.span().start,
                format!("Civitai download URLs need the Civitai client (token handling, file choice, hashes); write `{hint}` instead of `url`"),
            ));
        }
        if let Some(last) = parsed.path_segments().and_then(|mut s| s.next_back()) {
            if is_pickle_name(last) {
                return Err(invalid(u.span().start, pickle_message(last)));
            }
        }
        Source::Url(parsed)
    } else if let Some(p) = raw.path {
        let given = PathBuf::from(p.get_ref());
        check_extension(p.get_ref()).map_err(|m| invalid(p.span().start, m))?;
        let resolved = if given.is_absolute() {
            given
        } else {
            base_dir.join(given)
        };
        Source::Path(resolved)
    } else {
        return Err(table_line_err("no source".into()));
    };

    if let Some(w) = &raw.weight {
        if kind != ModelKind::Lora {
            return Err(invalid(
                w.span().start,
                format!("`weight` only applies to [[lora]] entries, not [[{kind}]]"),
            ));
        }
        if !w.get_ref().is_finite() || w.get_ref().abs() > 20.0 {
            return Err(invalid(
                w.span().start,
                format!(
                    "`weight` = {} must be a finite number in -20..=20",
                    w.get_ref()
                ),
            ));
        }
    }
    let sha256 = match raw.sha256 {
        Some(s) => {
            let v = s.get_ref().trim();
            if v.len() != 64 || !v.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(invalid(
                    s.span().start,
                    format!(
                        "`sha256` = \"{v}\" must be 64 hex digits (the SHA256 Civitai shows under the file's hashes)"
                    ),
                ));
            }
            Some(v.to_ascii_uppercase())
        }
        None => None,
    };
    let name = match raw.name {
        Some(n) => {
            validate_name(n.get_ref()).map_err(|m| invalid(n.span().start, m))?;
            Some(n.into_inner())
        }
        None => None,
    };
    Ok(ManifestEntry {
        kind,
        name,
        source,
        sha256,
        weight: raw.weight.map(|w| *w.get_ref() as f32),
        choice,
        line,
    })
}

pub(crate) fn is_pickle_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

pub(crate) fn pickle_message(name: &str) -> String {
    format!(
        "`{name}` is a pickle file; only .safetensors models are loaded (pickle can run code). Pick the SafeTensor variant"
    )
}

fn check_extension(name: &str) -> Result<(), String> {
    if is_pickle_name(name) {
        return Err(pickle_message(name));
    }
    if !name.to_ascii_lowercase().ends_with(".safetensors") {
        return Err(format!(
            "`{name}` is not a .safetensors file; only safetensors models are supported"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("/etc/models.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_every_source_kind() {
        let m = parse(
            r#"
[[checkpoint]]
name = "sdxl"
civitai = 128078
sha256 = "e6bb9ea85bbf7bf6478a7c6d18b71246f22e95d41bcdd80ed40aa212c33cfeff"
fp = "fp16"
size = "pruned"

[[checkpoint]]
air = "urn:air:sdxl:checkpoint:civitai:101055@128078+115238"

[[lora]]
name = "detail"
hf = "org/repo"
file = "loras/detail.safetensors"
revision = "main"
weight = 0.6

[[lora]]
url = "https://example.com/x/y.safetensors?download=1"

[[lora]]
path = "loras/local.safetensors"

[vae]
path = "/abs/vae.safetensors"
"#,
        )
        .unwrap();
        assert_eq!(m.entries.len(), 6);
        let c = &m.entries[0];
        assert_eq!(c.kind, ModelKind::Checkpoint);
        assert_eq!(c.name.as_deref(), Some("sdxl"));
        assert_eq!(
            c.source,
            Source::Civitai {
                version_id: 128078,
                model_id: None
            }
        );
        assert_eq!(
            c.sha256.as_deref(),
            Some("E6BB9EA85BBF7BF6478A7C6D18B71246F22E95D41BCDD80ED40AA212C33CFEFF")
        );
        assert_eq!(c.choice.fp.as_deref(), Some("fp16"));
        assert_eq!(c.line, 2, "line of the [[checkpoint]] header");
        let a = &m.entries[1];
        assert_eq!(
            a.source,
            Source::Civitai {
                version_id: 128078,
                model_id: Some(101055)
            }
        );
        assert_eq!(a.choice.file_id, Some(115238));
        assert_eq!(m.entries[2].weight, Some(0.6));
        assert!(matches!(m.entries[3].source, Source::Url(_)));
        assert_eq!(
            m.entries[4].source,
            Source::Path(PathBuf::from("/etc/loras/local.safetensors"))
        );
        assert_eq!(m.entries[5].kind, ModelKind::Vae);
    }

    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../../models.toml");
        let m = Manifest::parse(text, Path::new("models.toml")).unwrap();
        assert_eq!(m.entries[0].kind, ModelKind::Checkpoint);
        assert_eq!(
            m.entries[0].source,
            Source::Civitai {
                version_id: 128078,
                model_id: None
            }
        );
        assert!(m.entries[0].sha256.is_some());
        assert_eq!(m.entries[1].kind, ModelKind::Lora);
        assert_eq!(m.entries[1].weight, Some(0.8));
    }

    #[test]
    fn unknown_key_names_line() {
        let e = err("[[checkpoint]]\ncivitai = 1\nsampler = \"euler\"\n");
        assert!(e.contains("models.toml:3"), "{e}");
        assert!(e.contains("sampler"), "{e}");
        let e = err("[[checkpoint]]\ncivitai = 1\n[[embedding]]\npath = \"x\"\n");
        assert!(e.contains("embedding"), "{e}");
    }

    #[test]
    fn two_sources_name_line() {
        let e = err("[[checkpoint]]\ncivitai = 1\n\n[[lora]]\ncivitai = 5\nurl = \"https://a/b.safetensors\"\n");
        assert!(e.contains("models.toml:6"), "{e}");
        assert!(e.contains("2 sources"), "{e}");
    }

    #[test]
    fn duplicate_names_name_line() {
        let e = err(
            "[[checkpoint]]\ncivitai = 1\n[[lora]]\nname = \"a\"\ncivitai = 2\n[[lora]]\nname = \"A\"\ncivitai = 3\n",
        );
        assert!(e.contains("models.toml:6"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn malformed_air_names_line() {
        let e = err("[[checkpoint]]\nair = \"urn:air:sdxl:checkpoint:civitai:12\"\n");
        assert!(e.contains("models.toml:2"), "{e}");
        assert!(e.contains("version"), "{e}");
        let e = err("[[checkpoint]]\nair = \"nonsense\"\n");
        assert!(e.contains("malformed AIR"), "{e}");
    }

    #[test]
    fn field_checks() {
        assert!(err("[[lora]]\ncivitai = 1\n").contains("no [[checkpoint]]"));
        assert!(err("[[checkpoint]]\n").contains("no source"));
        assert!(
            err("[[checkpoint]]\ncivitai = 1\nweight = 0.5\n").contains("only applies to [[lora]]")
        );
        assert!(err("[[checkpoint]]\ncivitai = 1\nfp = \"fp12\"\n").contains("allowed: fp32"));
        assert!(err("[[checkpoint]]\ncivitai = 1\nsha256 = \"abc\"\n").contains("64 hex"));
        assert!(err("[[checkpoint]]\npath = \"a.ckpt\"\n").contains("pickle"));
        assert!(err("[[checkpoint]]\nurl = \"https://h/m.pt\"\n").contains("pickle"));
        assert!(err("[[checkpoint]]\nurl = \"ftp://h/m.safetensors\"\n").contains("http"));
        assert!(
            err("[[checkpoint]]\nurl = \"https://h/m.safetensors?token=abc\"\n")
                .contains("never put API keys")
        );
        assert!(
            err("[[checkpoint]]\nurl = \"https://civitai.com/api/download/models/128078\"\n")
                .contains("civitai = 128078")
        );
        assert!(err("[[checkpoint]]\nhf = \"a/b\"\n").contains("needs `file`"));
        assert!(
            err("[[checkpoint]]\nhf = \"a/b\"\nfile = \"../x.safetensors\"\n")
                .contains("relative path")
        );
        assert!(
            err("[[checkpoint]]\npath = \"x.safetensors\"\nfp = \"fp16\"\n")
                .contains("only applies to Civitai")
        );
        assert!(err("[[checkpoint]]\nname = \"../x\"\ncivitai = 1\n").contains("may not contain"));
        assert!(err("[[checkpoint]]\ncivitai = \"abc\"\n").contains("models.toml:2"));
    }
}
