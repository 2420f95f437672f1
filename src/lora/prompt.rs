//! A1111 prompt tags: `<lora:name>`, `<lora:name:0.8>`, `<lora:name:te:unet>` and the named
//! forms `te=`/`unet=` (A1111's `extensions-builtin/Lora`: the first number is the text-encoder
//! multiplier, the second the UNet one, defaulting to the first). `<lyco:…>` is the older
//! LyCORIS extension's spelling of the same tag.

/// One LoRA named in a prompt tag.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLora {
    pub name: String,
    /// UNet weight; `None` = the `models.toml` default.
    pub weight: Option<f64>,
    /// Text-encoder weight; `None` = same as `weight`.
    pub clip_weight: Option<f64>,
}

/// A malformed tag, with the text of the tag.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("prompt tag `{tag}`: {reason} (use <lora:NAME> or <lora:NAME:WEIGHT>)")]
pub struct PromptTagError {
    pub tag: String,
    pub reason: String,
}

/// Removes every `<lora:…>`/`<lyco:…>` tag from `prompt` (the text between them is kept as
/// it is, as A1111 does) and returns the LoRAs the tags name, in order.
pub fn extract_prompt_loras(prompt: &str) -> Result<(String, Vec<PromptLora>), PromptTagError> {
    let mut clean = String::with_capacity(prompt.len());
    let mut loras = Vec::new();
    let mut rest = prompt;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let bounds = match (after.find('>'), after.find(':')) {
            (Some(e), Some(k))
                if k < e && matches!(after[..k].to_ascii_lowercase().as_str(), "lora" | "lyco") =>
            {
                Some((k, e))
            }
            _ => None,
        };
        let Some((k, e)) = bounds else {
            clean.push_str(&rest[..open + 1]);
            rest = after;
            continue;
        };
        let tag = &rest[open..open + 1 + e + 1];
        loras.push(parse_tag(tag, &after[k + 1..e])?);
        clean.push_str(&rest[..open]);
        rest = &after[e + 1..];
    }
    clean.push_str(rest);
    Ok((clean, loras))
}

fn parse_tag(tag: &str, body: &str) -> Result<PromptLora, PromptTagError> {
    let err = |reason: String| PromptTagError {
        tag: tag.to_string(),
        reason,
    };
    let mut parts = body.split(':');
    let name = parts.next().unwrap_or("").trim().to_string();
    if name.is_empty() {
        return Err(err("the LoRA name is empty".into()));
    }
    let mut positional: Vec<f64> = Vec::new();
    let (mut te, mut unet) = (None, None);
    for p in parts {
        let p = p.trim();
        let num = |s: &str| -> Result<f64, PromptTagError> {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| err(format!("`{s}` is not a number")))
        };
        if let Some(v) = p.strip_prefix("te=") {
            te = Some(num(v)?);
        } else if let Some(v) = p.strip_prefix("unet=") {
            unet = Some(num(v)?);
        } else if p.contains('=') {
            // Other A1111 options (`dyn=`) do not apply here; ignore them as A1111 ignores
            // unknown ones.
            continue;
        } else {
            positional.push(num(p)?);
        }
    }
    if positional.len() > 2 {
        return Err(err("at most two weights (text encoder, UNet)".into()));
    }
    let te = te.or(positional.first().copied());
    let unet = unet.or(positional.get(1).copied()).or(te);
    Ok(PromptLora {
        name,
        weight: unet,
        clip_weight: te,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_removed_and_parsed() {
        let (p, l) =
            extract_prompt_loras("a cat <lora:style:0.8>, <LoRA:detail> 1 < 2 <b>").unwrap();
        assert_eq!(p, "a cat ,  1 < 2 <b>");
        assert_eq!(
            l,
            vec![
                PromptLora {
                    name: "style".into(),
                    weight: Some(0.8),
                    clip_weight: Some(0.8)
                },
                PromptLora {
                    name: "detail".into(),
                    weight: None,
                    clip_weight: None
                }
            ]
        );
        let (_, l) = extract_prompt_loras("<lora:a:0.5:1.2>").unwrap();
        assert_eq!((l[0].clip_weight, l[0].weight), (Some(0.5), Some(1.2)));
        let (_, l) = extract_prompt_loras("<lyco:a:unet=0.3:te=0.1>").unwrap();
        assert_eq!((l[0].clip_weight, l[0].weight), (Some(0.1), Some(0.3)));
        assert!(extract_prompt_loras("<lora:a:big>").is_err());
        assert!(extract_prompt_loras("<lora::1>").is_err());
        let (p, l) = extract_prompt_loras("no tags <lora").unwrap();
        assert_eq!((p.as_str(), l.len()), ("no tags <lora", 0));
    }
}
