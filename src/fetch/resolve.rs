//! Where a download's bytes come from: a URL and until when it is valid, produced (and, for a
//! presigned storage URL that expired, produced again) by a [`Resolver`].

use serde::{Deserialize, Serialize};

use super::error::EntryError;

/// A URL to GET the bytes from, and until when it is valid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolvedUrl {
    pub url: String,
    /// Unix seconds; `None` = does not expire.
    pub expires_at: Option<u64>,
}

/// Produces (and re-produces, when a presigned URL expires) the download URL.
#[async_trait::async_trait]
pub(crate) trait Resolver: Send + Sync {
    async fn resolve(&self) -> Result<ResolvedUrl, EntryError>;
    /// Whether a second `resolve` can yield a different, fresh URL.
    fn can_reresolve(&self) -> bool;
}

/// A plain URL: it never expires and cannot be re-resolved.
pub(crate) struct FixedUrl(pub String);

#[async_trait::async_trait]
impl Resolver for FixedUrl {
    async fn resolve(&self) -> Result<ResolvedUrl, EntryError> {
        Ok(ResolvedUrl {
            url: self.0.clone(),
            expires_at: None,
        })
    }
    fn can_reresolve(&self) -> bool {
        false
    }
}

/// Expiry of a presigned URL: S3/R2 `X-Amz-Date` + `X-Amz-Expires`; otherwise (B2 and
/// unknown schemes) one hour after it was resolved, the shortest lifetime Civitai's storage
/// URLs have (see docs/civitai.md, *Download redirect*).
pub(crate) fn presigned_expiry(url: &str, resolved_at: u64) -> Option<u64> {
    let parsed = url::Url::parse(url).ok()?;
    let mut date = None;
    let mut expires = None;
    for (k, v) in parsed.query_pairs() {
        if k.eq_ignore_ascii_case("X-Amz-Date") {
            date = parse_amz_date(&v);
        } else if k.eq_ignore_ascii_case("X-Amz-Expires") {
            expires = v.parse::<u64>().ok();
        }
    }
    match (date, expires) {
        (Some(d), Some(e)) => Some(d + e),
        (None, Some(e)) => Some(resolved_at + e),
        _ => Some(resolved_at + 3600),
    }
}

/// `20240126T001329Z` → unix seconds.
fn parse_amz_date(s: &str) -> Option<u64> {
    if s.len() != 16 || s.as_bytes()[8] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = if y2 >= 0 { y2 } else { y2 - 399 } / 400;
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_expiry() {
        let u = "https://x.r2.cloudflarestorage.com/k?X-Amz-Expires=86400&X-Amz-Date=20240126T001329Z&X-Amz-Signature=a";
        assert_eq!(presigned_expiry(u, 0), Some(1706228009 + 86400));
        assert_eq!(
            presigned_expiry("https://b2.civitai.com/file/x?Authorization=3_x", 100),
            Some(3700)
        );
    }
}
