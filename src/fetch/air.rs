//! AIR (AI Resource Identifier) parsing for Civitai resources:
//! `urn:air:{ecosystem}:{type}:{source}:{id}[@{version}][+{fileId}][.{format}]`.
//!
//! Ecosystem and type are informational (Civitai renamed ecosystems in 2025), so we key on
//! source, model id, version id and file id only.

use thiserror::Error;

/// A parsed Civitai AIR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Air {
    pub ecosystem: Option<String>,
    pub kind: Option<String>,
    pub model_id: u64,
    pub version_id: u64,
    pub file_id: Option<u64>,
}

/// Why an AIR string was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AirError {
    #[error("malformed AIR `{0}`: expected urn:air:<ecosystem>:<type>:civitai:<model id>@<version id>[+<file id>]")]
    Malformed(String),
    #[error("AIR `{air}` has source `{source_name}`; only `civitai` AIRs can be downloaded")]
    UnsupportedSource { air: String, source_name: String },
    #[error("AIR `{0}` names no model version (`@<version id>`); pin a version so the download is reproducible")]
    MissingVersion(String),
    #[error("AIR `{air}`: {what} `{value}` is not a number")]
    NotNumeric {
        air: String,
        what: &'static str,
        value: String,
    },
}

fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/')
}

impl Air {
    /// Parses an AIR. `urn:` and `air:` prefixes are optional, as in Civitai's own parser.
    pub fn parse(text: &str) -> Result<Air, AirError> {
        let malformed = || AirError::Malformed(text.to_string());
        let mut rest = text.trim();
        if rest.len() >= 4 && rest[..4].eq_ignore_ascii_case("urn:") {
            rest = &rest[4..];
        }
        if rest.len() >= 4 && rest[..4].eq_ignore_ascii_case("air:") {
            rest = &rest[4..];
        }
        // The last `:`-separated segment is `id[@version][+file][.format]`.
        let (prefix, tail) = rest.rsplit_once(':').ok_or_else(malformed)?;
        let segments: Vec<&str> = prefix.split(':').collect();
        if segments.is_empty() || segments.len() > 3 {
            return Err(malformed());
        }
        for s in &segments {
            if s.is_empty() || !s.chars().all(is_segment_char) {
                return Err(malformed());
            }
        }
        let (ecosystem, kind, source) = match segments.as_slice() {
            [source] => (None, None, *source),
            [eco, source] => (Some(eco.to_string()), None, *source),
            [eco, kind, source] => (Some(eco.to_string()), Some(kind.to_string()), *source),
            _ => return Err(malformed()),
        };
        if !source.eq_ignore_ascii_case("civitai") {
            return Err(AirError::UnsupportedSource {
                air: text.to_string(),
                source_name: source.to_string(),
            });
        }
        let (id_part, version_part) = match tail.split_once('@') {
            Some((id, v)) => (id, v),
            None => return Err(AirError::MissingVersion(text.to_string())),
        };
        // `+fileId` may be followed by `.format`; without `+`, Civitai's parser folds a
        // `.format` into the version, which is never numeric, so we reject it below.
        let (version_str, file_str) = match version_part.split_once('+') {
            Some((v, f)) => {
                let f = f.split_once('.').map(|(f, _format)| f).unwrap_or(f);
                (v, Some(f))
            }
            None => (version_part, None),
        };
        let number = |what: &'static str, value: &str| {
            if value.is_empty() {
                return Err(malformed());
            }
            value.parse::<u64>().map_err(|_| AirError::NotNumeric {
                air: text.to_string(),
                what,
                value: value.to_string(),
            })
        };
        let model_id = number("model id", id_part)?;
        let version_id = number("version id", version_str)?;
        let file_id = file_str.map(|f| number("file id", f)).transpose()?;
        Ok(Air {
            ecosystem,
            kind,
            model_id,
            version_id,
            file_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_short_forms() {
        let a = Air::parse("urn:air:sdxl:checkpoint:civitai:827184@2514310").unwrap();
        assert_eq!(a.model_id, 827184);
        assert_eq!(a.version_id, 2514310);
        assert_eq!(a.file_id, None);
        assert_eq!(a.ecosystem.as_deref(), Some("sdxl"));
        assert_eq!(a.kind.as_deref(), Some("checkpoint"));
        let b = Air::parse("urn:air:sdxl:checkpoint:civitai:827184@2514310+2402203").unwrap();
        assert_eq!(b.file_id, Some(2402203));
        let c = Air::parse("civitai:1@2").unwrap();
        assert_eq!((c.model_id, c.version_id, c.ecosystem), (1, 2, None));
        let d = Air::parse("urn:air:sdxl:lora:civitai:328553@368189+99.safetensors").unwrap();
        assert_eq!(d.file_id, Some(99));
    }

    #[test]
    fn rejects_bad_airs() {
        assert!(matches!(
            Air::parse("urn:air:sdxl:lora:civitai:328553"),
            Err(AirError::MissingVersion(_))
        ));
        assert!(matches!(
            Air::parse("urn:air:sdxl:lora:civitai:328553@368189.safetensor"),
            Err(AirError::NotNumeric { .. })
        ));
        assert!(matches!(
            Air::parse("urn:air:other:other:civitai-r2:assets@sam.pth"),
            Err(AirError::UnsupportedSource { .. })
        ));
        assert!(matches!(Air::parse("hello"), Err(AirError::Malformed(_))));
        assert!(matches!(
            Air::parse("urn:air:a:b:c:civitai:1@2"),
            Err(AirError::Malformed(_))
        ));
        assert!(matches!(
            Air::parse("urn:air:sd xl:lora:civitai:1@2"),
            Err(AirError::Malformed(_))
        ));
    }
}
