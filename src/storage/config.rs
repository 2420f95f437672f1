//! Where result images go: the `BUCKET_*` settings RunPod workers share, resolved into one
//! endpoint, bucket name, region and addressing style.
//!
//! # How the bucket name is found
//!
//! RunPod's `rp_upload` helper expects `BUCKET_ENDPOINT_URL` to name the bucket itself (its
//! documentation gives `https://<bucket>.s3.<region>.amazonaws.com`), so existing endpoint
//! settings keep working here. The rule, in order:
//!
//! 1. `BUCKET_NAME` set: that is the bucket. If the endpoint URL's last path segment or the
//!    first label of its host equals it, that part is dropped from the endpoint, so the same
//!    URL works with and without `BUCKET_NAME`. Any other path is kept as a prefix (a proxy).
//! 2. Path form, `https://<host>/<bucket>`: the single path segment is the bucket
//!    (path-style requests).
//! 3. Virtual-host form, `https://<bucket>.<host>`: the first host label is the bucket
//!    (virtual-host requests to `<bucket>.<host>`), unless the host is an IP address or
//!    `localhost`, has fewer than three labels, or is a service endpoint that carries no
//!    bucket: a first label of `s3` / `s3-…` (AWS, Backblaze B2, Wasabi, Scaleway, …),
//!    `<region>.digitaloceanspaces.com`, `<region>.linodeobjects.com`,
//!    `<account>.r2.cloudflarestorage.com`, `storage.googleapis.com`.
//! 4. Otherwise configuration fails and asks for `BUCKET_NAME`.
//!
//! Unlike `rp_upload` there is no date-named default bucket (`%m-%y`): a bucket nobody
//! created would only fail later, on the first job.
//!
//! The region is `BUCKET_REGION`, else (as `rp_upload` does) the host label after `s3.`
//! (`…s3.eu-west-1.amazonaws.com`, `s3.us-west-002.backblazeb2.com`) or the region label of
//! DigitalOcean Spaces, else `us-east-1`.

use std::fmt;
use std::time::Duration;

use clap::{Args, ValueEnum};
use url::{Host, Url};

/// The longest a SigV4 presigned URL may live (S3 refuses longer ones): 7 days.
pub const MAX_URL_EXPIRY_SECS: u64 = 7 * 24 * 60 * 60;

/// Region used when neither `BUCKET_REGION` nor the endpoint host names one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// A credential string that never shows in `Debug` output or logs: the same type as the
/// fetcher's Civitai token.
pub use crate::fetch::SecretString as Secret;

/// How request URLs name the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AddressingStyle {
    /// Path-style when the bucket came from the URL path or the host is not on AWS;
    /// virtual-host when the bucket came from the host or the host is `*.amazonaws.com`.
    Auto,
    /// `https://<host>/<bucket>/<key>`: works with MinIO, moto, R2, B2 and IP addresses.
    Path,
    /// `https://<bucket>.<host>/<key>`: AWS's recommended style.
    VirtualHost,
}

/// Object storage flags. Upload is on when the endpoint and both keys are set
/// (the variables RunPod's `rp_upload` reads).
#[derive(Clone, Args)]
pub struct StorageArgs {
    /// S3-compatible endpoint; may name the bucket (`https://<bucket>.s3.<region>.amazonaws.com`
    /// or `https://<host>/<bucket>`). With the two keys it turns on uploads: images are
    /// returned as presigned URLs instead of base64.
    #[arg(
        long = "bucket-endpoint-url",
        env = "BUCKET_ENDPOINT_URL",
        value_name = "URL"
    )]
    pub endpoint_url: Option<String>,
    /// Access key id for the bucket.
    #[arg(
        long = "bucket-access-key-id",
        env = "BUCKET_ACCESS_KEY_ID",
        value_name = "KEY_ID",
        hide_env_values = true
    )]
    pub access_key_id: Option<Secret>,
    /// Secret access key for the bucket.
    #[arg(
        long = "bucket-secret-access-key",
        env = "BUCKET_SECRET_ACCESS_KEY",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub secret_access_key: Option<Secret>,
    /// Bucket name, when the endpoint URL does not contain it.
    #[arg(long = "bucket-name", env = "BUCKET_NAME", value_name = "BUCKET")]
    pub name: Option<String>,
    /// Signing region. Default: taken from the endpoint host (`s3.<region>.`), else us-east-1.
    #[arg(long = "bucket-region", env = "BUCKET_REGION", value_name = "REGION")]
    pub region: Option<String>,
    /// Lifetime of the returned presigned GET URLs, in seconds (1 to 604800 = 7 days).
    #[arg(long = "bucket-url-expiry-secs", env = "BUCKET_URL_EXPIRY_SECS", value_name = "SECS",
          default_value_t = MAX_URL_EXPIRY_SECS, value_parser = parse_expiry)]
    pub url_expiry_secs: u64,
    /// Bucket addressing in request URLs.
    #[arg(
        long = "bucket-url-style",
        env = "BUCKET_URL_STYLE",
        value_enum,
        default_value_t = AddressingStyle::Auto
    )]
    pub url_style: AddressingStyle,
}

impl Default for StorageArgs {
    fn default() -> Self {
        StorageArgs {
            endpoint_url: None,
            access_key_id: None,
            secret_access_key: None,
            name: None,
            region: None,
            url_expiry_secs: MAX_URL_EXPIRY_SECS,
            url_style: AddressingStyle::Auto,
        }
    }
}

impl fmt::Debug for StorageArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageArgs")
            .field("endpoint_url", &self.endpoint_url.as_deref().map(safe_url))
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("name", &self.name)
            .field("region", &self.region)
            .field("url_expiry_secs", &self.url_expiry_secs)
            .field("url_style", &self.url_style)
            .finish()
    }
}

fn parse_expiry(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_URL_EXPIRY_SECS).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{s}` is not a number of seconds from 1 to {MAX_URL_EXPIRY_SECS} (7 days, the \
             longest a presigned URL may live)"
        )),
    }
}

/// Bad or incomplete `BUCKET_*` settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "object storage is half configured: {missing} not set (set BUCKET_ENDPOINT_URL, \
         BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY together, or none of them)"
    )]
    Incomplete { missing: String },
    #[error("BUCKET_ENDPOINT_URL {url:?}: {reason}")]
    Endpoint { url: String, reason: String },
    #[error(
        "BUCKET_ENDPOINT_URL {url:?} does not name a bucket ({reason}); set BUCKET_NAME, or use \
         https://<bucket>.<host> or https://<host>/<bucket>"
    )]
    NoBucket { url: String, reason: String },
    #[error("BUCKET_NAME {name:?}: {reason}")]
    BucketName { name: String, reason: String },
    #[error("BUCKET_REGION {region:?}: only letters, digits and `-` are allowed")]
    Region { region: String },
    #[error("BUCKET_URL_EXPIRY_SECS {0}: allowed 1 to {MAX_URL_EXPIRY_SECS} (7 days)")]
    Expiry(u64),
}

/// A resolved bucket: where to send requests and how to sign them.
#[derive(Clone)]
pub struct BucketConfig {
    /// Service endpoint without the bucket (`https://s3.eu-west-1.amazonaws.com`).
    pub endpoint: Url,
    pub bucket: String,
    pub region: String,
    pub style: rusty_s3::UrlStyle,
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    /// Lifetime of returned presigned GET URLs (at most 7 days).
    pub url_expiry: Duration,
}

impl fmt::Debug for BucketConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BucketConfig")
            .field("endpoint", &self.endpoint.as_str())
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("style", &self.style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("url_expiry", &self.url_expiry)
            .finish()
    }
}

impl StorageArgs {
    /// `Ok(None)` when no `BUCKET_*` credential is set (images stay inline); an error when
    /// only some are, or when they do not describe a bucket.
    pub fn bucket_config(&self) -> Result<Option<BucketConfig>, ConfigError> {
        let endpoint = non_empty(self.endpoint_url.as_deref());
        let key = self
            .access_key_id
            .as_ref()
            .filter(|s| !s.expose().is_empty());
        let secret = self
            .secret_access_key
            .as_ref()
            .filter(|s| !s.expose().is_empty());
        let (endpoint, key, secret) = match (endpoint, key, secret) {
            (None, None, None) => return Ok(None),
            (Some(e), Some(k), Some(s)) => (e, k, s),
            (e, k, s) => {
                let missing: Vec<&str> = [
                    (e.is_none(), "BUCKET_ENDPOINT_URL"),
                    (k.is_none(), "BUCKET_ACCESS_KEY_ID"),
                    (s.is_none(), "BUCKET_SECRET_ACCESS_KEY"),
                ]
                .iter()
                .filter(|(m, _)| *m)
                .map(|(_, n)| *n)
                .collect();
                return Err(ConfigError::Incomplete {
                    missing: missing.join(", "),
                });
            }
        };
        if !(1..=MAX_URL_EXPIRY_SECS).contains(&self.url_expiry_secs) {
            return Err(ConfigError::Expiry(self.url_expiry_secs));
        }
        let resolved = resolve_endpoint(endpoint, non_empty(self.name.as_deref()), self.url_style)?;
        let region = match non_empty(self.region.as_deref()) {
            Some(r) => {
                if !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                    return Err(ConfigError::Region {
                        region: r.to_string(),
                    });
                }
                r.to_string()
            }
            None => resolved
                .region_hint
                .clone()
                .unwrap_or_else(|| DEFAULT_REGION.to_string()),
        };
        Ok(Some(BucketConfig {
            endpoint: resolved.endpoint,
            bucket: resolved.bucket,
            region,
            style: resolved.style,
            access_key_id: key.clone(),
            secret_access_key: secret.clone(),
            url_expiry: Duration::from_secs(self.url_expiry_secs),
        }))
    }
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// The endpoint URL as it may be shown: without user info, query or fragment.
fn safe_url(raw: &str) -> String {
    match Url::parse(raw.trim()) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "<not a URL>".to_string(),
    }
}

/// What [`resolve_endpoint`] found in the endpoint URL.
#[derive(Debug, Clone)]
pub struct ResolvedEndpoint {
    pub endpoint: Url,
    pub bucket: String,
    pub style: rusty_s3::UrlStyle,
    /// Region named by the host, if any (`s3.<region>.`, DigitalOcean Spaces).
    pub region_hint: Option<String>,
}

/// Applies the bucket-name rule of the module docs to an endpoint URL.
pub fn resolve_endpoint(
    raw: &str,
    name: Option<&str>,
    style: AddressingStyle,
) -> Result<ResolvedEndpoint, ConfigError> {
    let shown = safe_url(raw);
    let bad = |reason: &str| ConfigError::Endpoint {
        url: shown.clone(),
        reason: reason.to_string(),
    };
    let mut url = Url::parse(raw.trim()).map_err(|e| bad(&format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "must not contain a user name or password; use BUCKET_ACCESS_KEY_ID and \
             BUCKET_SECRET_ACCESS_KEY",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query string or fragment"));
    }
    let host = url.host().ok_or_else(|| bad("has no host"))?.to_owned();
    let domain = match &host {
        Host::Domain(d) => Some(d.to_ascii_lowercase()),
        Host::Ipv4(_) | Host::Ipv6(_) => None,
    };
    let region_hint = domain.as_deref().and_then(region_from_host);
    let segments: Vec<String> = url
        .path_segments()
        .map(|s| s.filter(|p| !p.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();

    // (bucket, where it came from, endpoint without it)
    let (bucket, from, endpoint) = match name {
        Some(n) => {
            if segments.last().map(String::as_str) == Some(n) {
                set_path(&mut url, &segments[..segments.len() - 1]);
                (n.to_string(), Source::Path, url)
            } else if let Some(rest) = domain
                .as_deref()
                .and_then(|d| d.strip_prefix(n).and_then(|r| r.strip_prefix('.')))
                .filter(|rest| rest.contains('.'))
            {
                let rest = rest.to_string();
                url.set_host(Some(&rest))
                    .map_err(|e| bad(&format!("host without the bucket: {e}")))?;
                (n.to_string(), Source::Host, url)
            } else {
                (n.to_string(), Source::Explicit, url)
            }
        }
        None => match segments.len() {
            1 => {
                let b = segments[0].clone();
                set_path(&mut url, &[]);
                (b, Source::Path, url)
            }
            0 => {
                let Some(d) = domain.as_deref() else {
                    return Err(ConfigError::NoBucket {
                        url: shown,
                        reason: "an IP address carries no bucket name".into(),
                    });
                };
                match bucket_from_host(d) {
                    Ok((b, rest)) => {
                        url.set_host(Some(&rest))
                            .map_err(|e| bad(&format!("host without the bucket: {e}")))?;
                        (b, Source::Host, url)
                    }
                    Err(reason) => return Err(ConfigError::NoBucket { url: shown, reason }),
                }
            }
            _ => {
                return Err(ConfigError::NoBucket {
                    url: shown,
                    reason: "the path has several segments".into(),
                })
            }
        },
    };
    check_bucket_name(&bucket)?;
    let style = match style {
        AddressingStyle::Path => rusty_s3::UrlStyle::Path,
        AddressingStyle::VirtualHost => rusty_s3::UrlStyle::VirtualHost,
        AddressingStyle::Auto => match from {
            Source::Path => rusty_s3::UrlStyle::Path,
            Source::Host => rusty_s3::UrlStyle::VirtualHost,
            Source::Explicit
                if domain
                    .as_deref()
                    .is_some_and(|d| d.ends_with(".amazonaws.com"))
                    && !bucket.contains('.') =>
            {
                rusty_s3::UrlStyle::VirtualHost
            }
            Source::Explicit => rusty_s3::UrlStyle::Path,
        },
    };
    // Fail now, not on the first job, when the style cannot express this bucket
    // (virtual-host with an IP address or a name that is not a host label).
    rusty_s3::Bucket::new(endpoint.clone(), style, bucket.clone(), DEFAULT_REGION)
        .map_err(|e| bad(&format!("cannot address bucket `{bucket}` this way: {e:?}")))?;
    Ok(ResolvedEndpoint {
        endpoint,
        bucket,
        style,
        region_hint,
    })
}

#[derive(Clone, Copy)]
enum Source {
    Path,
    Host,
    Explicit,
}

fn set_path(url: &mut Url, segments: &[String]) {
    if segments.is_empty() {
        url.set_path("/");
    } else {
        url.set_path(&format!("/{}", segments.join("/")));
    }
}

/// The bucket named by the first label of a virtual-host endpoint, and the host without it.
fn bucket_from_host(host: &str) -> Result<(String, String), String> {
    let labels: Vec<&str> = host.split('.').collect();
    if host == "localhost" {
        return Err("`localhost` carries no bucket name".into());
    }
    if labels.len() < 3 {
        return Err(format!("host `{host}` has no label before its domain name"));
    }
    let first = labels[0];
    let rest = labels[1..].join(".");
    let service = first == "s3"
        || first.starts_with("s3-")
        || rest == "digitaloceanspaces.com"
        || rest == "linodeobjects.com"
        || rest == "r2.cloudflarestorage.com"
        || host == "storage.googleapis.com";
    if service {
        return Err(format!("host `{host}` is a service endpoint"));
    }
    Ok((first.to_string(), rest))
}

/// `rp_upload`'s region rule: the label after `s3.` (when a domain follows it), or the
/// region label of DigitalOcean Spaces.
fn region_from_host(host: &str) -> Option<String> {
    let labels: Vec<&str> = host.split('.').collect();
    if let Some(i) = labels.iter().position(|l| *l == "s3") {
        // `s3.amazonaws.com`: the next label is the domain itself, not a region.
        if labels.len() >= i + 4 {
            return Some(labels[i + 1].to_string());
        }
    }
    let n = labels.len();
    if n >= 3 && labels[n - 2] == "digitaloceanspaces" {
        return Some(labels[n - 3].to_string());
    }
    None
}

/// S3's bucket naming rules (3–63 characters of lowercase letters, digits, `.` and `-`,
/// starting and ending with a letter or digit), loosened to allow the uppercase and `_`
/// of legacy and non-AWS buckets.
fn check_bucket_name(name: &str) -> Result<(), ConfigError> {
    let err = |reason: &str| ConfigError::BucketName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if !(3..=63).contains(&name.len()) {
        return Err(err("must be 3 to 63 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(err("allowed characters: letters, digits, `.`, `-`, `_`"));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(name.chars().next()) || !edge_ok(name.chars().last()) || name.contains("..") {
        return Err(err(
            "must start and end with a letter or digit and not contain `..`",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusty_s3::UrlStyle;

    fn resolve(url: &str, name: Option<&str>) -> ResolvedEndpoint {
        resolve_endpoint(url, name, AddressingStyle::Auto).unwrap()
    }

    fn base(r: &ResolvedEndpoint) -> String {
        rusty_s3::Bucket::new(r.endpoint.clone(), r.style, r.bucket.clone(), "us-east-1")
            .unwrap()
            .base_url()
            .to_string()
    }

    #[test]
    fn virtual_host_aws_url_names_bucket_and_region() {
        let r = resolve("https://my-images.s3.eu-west-1.amazonaws.com", None);
        assert_eq!(r.bucket, "my-images");
        assert_eq!(r.endpoint.as_str(), "https://s3.eu-west-1.amazonaws.com/");
        assert!(matches!(r.style, UrlStyle::VirtualHost));
        assert_eq!(r.region_hint.as_deref(), Some("eu-west-1"));
        assert_eq!(base(&r), "https://my-images.s3.eu-west-1.amazonaws.com/");
    }

    #[test]
    fn path_form_names_bucket() {
        let r = resolve("http://127.0.0.1:9000/results/", None);
        assert_eq!(r.bucket, "results");
        assert!(matches!(r.style, UrlStyle::Path));
        assert_eq!(base(&r), "http://127.0.0.1:9000/results/");
        assert_eq!(r.region_hint, None);
    }

    #[test]
    fn service_endpoints_need_bucket_name() {
        for url in [
            "https://s3.us-east-1.amazonaws.com",
            "https://s3.amazonaws.com",
            "https://s3.us-west-002.backblazeb2.com",
            "https://nyc3.digitaloceanspaces.com",
            "https://0123abcd.r2.cloudflarestorage.com",
            "https://minio.local",
            "http://127.0.0.1:9000",
            "http://localhost:9000",
        ] {
            let err = resolve_endpoint(url, None, AddressingStyle::Auto).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("BUCKET_NAME"), "{url}: {msg}");
        }
    }

    #[test]
    fn explicit_name_with_service_endpoints() {
        let r = resolve("https://s3.us-west-002.backblazeb2.com", Some("imgs"));
        assert_eq!(r.region_hint.as_deref(), Some("us-west-002"));
        assert!(matches!(r.style, UrlStyle::Path));
        assert_eq!(base(&r), "https://s3.us-west-002.backblazeb2.com/imgs/");

        let r = resolve("https://s3.us-east-2.amazonaws.com", Some("imgs"));
        assert!(matches!(r.style, UrlStyle::VirtualHost));
        assert_eq!(base(&r), "https://imgs.s3.us-east-2.amazonaws.com/");

        let r = resolve("https://nyc3.digitaloceanspaces.com", Some("imgs"));
        assert_eq!(r.region_hint.as_deref(), Some("nyc3"));
    }

    #[test]
    fn explicit_name_already_in_url_is_not_doubled() {
        let r = resolve("https://imgs.s3.eu-west-1.amazonaws.com", Some("imgs"));
        assert_eq!(base(&r), "https://imgs.s3.eu-west-1.amazonaws.com/");
        let r = resolve("http://10.0.0.5:9000/imgs", Some("imgs"));
        assert_eq!(base(&r), "http://10.0.0.5:9000/imgs/");
    }

    #[test]
    fn forced_style_is_checked_up_front() {
        let err = resolve_endpoint(
            "http://127.0.0.1:9000/imgs",
            None,
            AddressingStyle::VirtualHost,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("cannot address bucket `imgs`"),
            "{err}"
        );
        let r = resolve_endpoint(
            "https://imgs.s3.eu-west-1.amazonaws.com",
            None,
            AddressingStyle::Path,
        )
        .unwrap();
        assert_eq!(base(&r), "https://s3.eu-west-1.amazonaws.com/imgs/");
    }

    #[test]
    fn bad_endpoints_are_named_without_credentials() {
        let err = resolve_endpoint(
            "https://user:hunter2@s3.example.com/bk1",
            None,
            AddressingStyle::Auto,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("user name or password"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        for url in [
            "ftp://x.example.com/bk1",
            "not a url",
            "https://h.example.com/bk1?x=1",
        ] {
            assert!(
                resolve_endpoint(url, None, AddressingStyle::Auto).is_err(),
                "{url}"
            );
        }
        assert!(resolve_endpoint("http://h:1/a/b", None, AddressingStyle::Auto).is_err());
        assert!(resolve_endpoint("http://h:1/", Some("x"), AddressingStyle::Auto).is_err());
    }

    fn args(endpoint: Option<&str>, key: Option<&str>, secret: Option<&str>) -> StorageArgs {
        StorageArgs {
            endpoint_url: endpoint.map(str::to_string),
            access_key_id: key.map(Secret::new),
            secret_access_key: secret.map(Secret::new),
            ..StorageArgs::default()
        }
    }

    #[test]
    fn off_without_settings_error_when_half_set() {
        assert!(args(None, None, None).bucket_config().unwrap().is_none());
        assert!(args(Some(""), Some(""), None)
            .bucket_config()
            .unwrap()
            .is_none());
        let err = args(Some("http://127.0.0.1:1/bk1"), Some("AKID"), None)
            .bucket_config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("BUCKET_SECRET_ACCESS_KEY"), "{err}");
        assert!(!err.contains("BUCKET_ACCESS_KEY_ID,"), "{err}");
    }

    #[test]
    fn debug_redacts_both_keys() {
        let a = args(
            Some("http://127.0.0.1:1/bk1"),
            Some("AKIDSECRETLOOKING"),
            Some("wJalrXUtnFEMI"),
        );
        let cfg = a.bucket_config().unwrap().unwrap();
        for text in [format!("{a:?}"), format!("{cfg:?}")] {
            assert!(!text.contains("AKIDSECRETLOOKING"), "{text}");
            assert!(!text.contains("wJalrXUtnFEMI"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
        assert_eq!(cfg.region, DEFAULT_REGION);
        assert_eq!(cfg.url_expiry, Duration::from_secs(MAX_URL_EXPIRY_SECS));
    }

    #[test]
    fn expiry_and_region_are_validated() {
        assert!(parse_expiry("604800").is_ok());
        assert!(parse_expiry("604801").is_err());
        assert!(parse_expiry("0").is_err());
        let mut a = args(Some("http://127.0.0.1:1/bk1"), Some("k"), Some("s"));
        a.url_expiry_secs = 604_801;
        assert!(a.bucket_config().is_err());
        a.url_expiry_secs = 3600;
        a.region = Some("eu west".into());
        assert!(a
            .bucket_config()
            .unwrap_err()
            .to_string()
            .contains("BUCKET_REGION"));
        a.region = Some("eu-west-3".into());
        assert_eq!(a.bucket_config().unwrap().unwrap().region, "eu-west-3");
    }

    #[test]
    fn bucket_names_are_checked() {
        assert!(resolve_endpoint("http://h:1/ab", None, AddressingStyle::Auto).is_err());
        assert!(resolve_endpoint("http://h:1/-abc", None, AddressingStyle::Auto).is_err());
        assert!(resolve_endpoint("http://h:1/a..b", None, AddressingStyle::Auto).is_err());
        assert!(resolve_endpoint("http://h:1/My_Bucket", None, AddressingStyle::Auto).is_ok());
    }
}
