//! File names from servers and URLs for logs: servers choose `Content-Disposition` names and
//! presigned URLs carry credentials in their query, so neither is used or logged verbatim.

/// Makes a server- or URL-supplied file name safe to use as one path component: keeps only the
/// last component, replaces anything outside a conservative set with `_`, strips leading dots
/// and caps the length. Never returns an empty name.
pub fn sanitize_file_name(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let mut out: String = last
        .chars()
        .map(|c| {
            if c.is_alphanumeric()
                || matches!(c, '.' | '-' | '_' | '+' | '(' | ')' | '[' | ']' | ' ')
            {
                c
            } else {
                '_'
            }
        })
        .collect();
    out = out.trim().trim_start_matches('.').trim().to_string();
    // Cap at 150 bytes on a char boundary, keeping the extension.
    if out.len() > 150 {
        let (stem, ext) = match out.rfind('.') {
            Some(i) if out.len() - i <= 16 => (out[..i].to_string(), out[i..].to_string()),
            _ => (out.clone(), String::new()),
        };
        let mut cut = 150 - ext.len();
        while !stem.is_char_boundary(cut) {
            cut -= 1;
        }
        out = format!("{}{}", &stem[..cut], ext);
    }
    if out.is_empty() || out == "." || out == ".." {
        "model".to_string()
    } else {
        out
    }
}

/// File stem without a `.safetensors` (or any) extension, for default request names.
pub fn stem(name: &str) -> String {
    match name.rfind('.') {
        Some(i) if i > 0 => name[..i].to_string(),
        _ => name.to_string(),
    }
}

/// `scheme://host[:port]/path` — drops the query (signatures, `token=`) and fragment.
pub fn redact_url(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

/// The same for a URL held as text (unparseable text is dropped entirely).
pub fn redact_url_str(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => redact_url(&u),
        Err(_) => "<unparseable url>".to_string(),
    }
}

/// Extracts the file name from a `Content-Disposition` header value
/// (`attachment; filename="x.safetensors"` or RFC 5987 `filename*=UTF-8''x%20y.safetensors`).
pub fn content_disposition_filename(value: &str) -> Option<String> {
    let mut plain = None;
    for part in value.split(';') {
        let part = part.trim();
        if let Some(v) = part
            .strip_prefix("filename*=")
            .or_else(|| part.strip_prefix("FILENAME*="))
        {
            let encoded = v.split_once("''").map(|(_, e)| e).unwrap_or(v);
            let decoded = percent_decode(encoded.trim_matches('"'));
            if !decoded.is_empty() {
                return Some(decoded);
            }
        } else if let Some(v) = part
            .strip_prefix("filename=")
            .or_else(|| part.strip_prefix("FILENAME="))
        {
            let v = v.trim().trim_matches('"');
            if !v.is_empty() {
                plain = Some(v.to_string());
            }
        }
    }
    plain
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes_traversal_and_odd_characters() {
        assert_eq!(sanitize_file_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_file_name("..\\..\\boot.ini"), "boot.ini");
        assert_eq!(sanitize_file_name(".."), "model");
        assert_eq!(sanitize_file_name(""), "model");
        assert_eq!(
            sanitize_file_name(".hidden.safetensors"),
            "hidden.safetensors"
        );
        assert_eq!(
            sanitize_file_name("Mihaila Krea V1.safetensors"),
            "Mihaila Krea V1.safetensors"
        );
        assert_eq!(
            sanitize_file_name("a\u{0}b:c*?.safetensors"),
            "a_b_c__.safetensors"
        );
        let long = format!("{}.safetensors", "x".repeat(400));
        let s = sanitize_file_name(&long);
        assert!(s.len() <= 150 && s.ends_with(".safetensors"));
    }

    #[test]
    fn content_disposition_forms() {
        assert_eq!(
            content_disposition_filename("attachment; filename=\"BodHor-V1.safetensors\"")
                .as_deref(),
            Some("BodHor-V1.safetensors")
        );
        assert_eq!(
            content_disposition_filename(
                "attachment; filename=\"x.safetensors\"; filename*=UTF-8''caf%C3%A9%20v1.safetensors"
            )
            .as_deref(),
            Some("café v1.safetensors")
        );
        assert_eq!(content_disposition_filename("inline"), None);
    }

    #[test]
    fn redacts_queries() {
        let u =
            url::Url::parse("https://u:p@h.example/a/b.safetensors?token=abc&X-Amz-Signature=s#f")
                .unwrap();
        assert_eq!(redact_url(&u), "https://h.example/a/b.safetensors");
    }
}
