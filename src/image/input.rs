//! Input images of img2img requests: the request's `image` (base64 or a `data:` URI) or
//! `image_url` (fetched over http/https) → an 8-bit [`RgbImage`], and [`fit`] to the requested
//! size.
//!
//! `image_url` makes the worker open connections chosen by whoever sends jobs, so the fetch is
//! guarded against server-side request forgery: only http/https; every address the host
//! resolves to must be public (no loopback, private, link-local — e.g. the cloud metadata
//! service at 169.254.169.254 —, unique-local, multicast, unspecified, …) unless
//! `--allow-private-image-urls` is set; the connection is pinned to the addresses that were
//! checked (no second DNS lookup an attacker could answer differently); redirects are followed
//! by hand, at most [`MAX_REDIRECTS`], each hop checked again; the body is streamed and
//! refused beyond the size cap; proxies from the environment are not used (they would resolve
//! the name themselves, past the check).
//!
//! URLs can carry credentials (presigned query strings, `user:password@`), so errors and logs
//! show only `scheme://host[:port]/path` ([`redact_url`]).

use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::fetch::error::net_message;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use tracing::Instrument;
use url::Url;

/// Default cap on the encoded image (downloaded body or decoded base64): 20 MiB.
pub const DEFAULT_MAX_IMAGE_MB: u64 = 20;
/// Default cap on decoded pixels: 40 MP (a 7300 × 5470 photo), far above any SDXL size, while
/// a decompression bomb (a few KB of PNG claiming 100 000²) is refused before allocating.
pub const DEFAULT_MAX_IMAGE_MEGAPIXELS: u64 = 40;
/// Redirects followed for `image_url` before giving up.
pub const MAX_REDIRECTS: usize = 5;

/// Flags for request input images (flatten into the top-level config).
#[derive(Debug, Clone, clap::Args)]
pub struct ImageInputArgs {
    /// Let `image_url` reach loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7),
    /// link-local (incl. the cloud metadata address 169.254.169.254) and other non-public
    /// addresses. Off by default: a job could otherwise make the worker read internal services.
    #[arg(
        long = "allow-private-image-urls",
        env = "ALLOW_PRIVATE_IMAGE_URLS",
        default_value_t = false
    )]
    pub allow_private_image_urls: bool,
    /// Largest accepted input image in MiB (the downloaded file, or the decoded base64).
    #[arg(
        long = "max-input-image-mb",
        env = "MAX_INPUT_IMAGE_MB",
        default_value_t = DEFAULT_MAX_IMAGE_MB
    )]
    pub max_input_image_mb: u64,
    /// Largest accepted input image in decoded megapixels (guards against decompression bombs).
    #[arg(
        long = "max-input-image-megapixels",
        env = "MAX_INPUT_IMAGE_MEGAPIXELS",
        default_value_t = DEFAULT_MAX_IMAGE_MEGAPIXELS
    )]
    pub max_input_image_megapixels: u64,
}

/// Limits and policy for [`load_init_image`].
#[derive(Debug, Clone)]
pub struct ImageFetchOptions {
    /// Allow non-public addresses for `image_url` (see [`ImageInputArgs`]).
    pub allow_private: bool,
    /// Largest encoded image in bytes.
    pub max_bytes: u64,
    /// Largest decoded image in pixels (width × height).
    pub max_pixels: u64,
    pub connect_timeout: Duration,
    /// Longest pause between two reads of the body.
    pub read_timeout: Duration,
    /// Whole fetch, all redirects included.
    pub total_timeout: Duration,
    pub max_redirects: usize,
}

impl Default for ImageFetchOptions {
    fn default() -> Self {
        Self {
            allow_private: false,
            max_bytes: DEFAULT_MAX_IMAGE_MB * 1024 * 1024,
            max_pixels: DEFAULT_MAX_IMAGE_MEGAPIXELS * 1_000_000,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(120),
            max_redirects: MAX_REDIRECTS,
        }
    }
}

impl From<&ImageInputArgs> for ImageFetchOptions {
    fn from(a: &ImageInputArgs) -> Self {
        Self {
            allow_private: a.allow_private_image_urls,
            max_bytes: a.max_input_image_mb.saturating_mul(1024 * 1024),
            max_pixels: a.max_input_image_megapixels.saturating_mul(1_000_000),
            ..Self::default()
        }
    }
}

/// Why a request's input image was refused. Messages name the field (`image` / `image_url`)
/// and what is allowed; URLs appear only through [`redact_url`].
#[derive(Debug, thiserror::Error)]
pub enum ImageInputError {
    #[error("give either `image` or `image_url`, not both")]
    BothGiven,
    #[error(
        "no input image: give `image` (base64 or a data:image/…;base64, URI) or `image_url` \
         (http or https)"
    )]
    Missing,
    #[error(
        "`image` is not valid base64 ({reason}); send the base64 of a PNG, JPEG or WebP file, \
         or a data:image/png;base64,… URI"
    )]
    Base64 { reason: String },
    #[error("`image` is a data URI that {reason}; use data:image/png;base64,… (or jpeg, webp)")]
    DataUri { reason: String },
    #[error("`{field}` is larger than the {limit_mb} MiB limit (--max-input-image-mb)")]
    TooLarge { field: &'static str, limit_mb: f64 },
    #[error("`{field}` is not a PNG, JPEG or WebP image{found}")]
    UnsupportedFormat {
        field: &'static str,
        /// " (it is GIF)" when another format was recognised, else empty.
        found: String,
    },
    #[error("`{field}` could not be decoded as {format}: {reason}")]
    Decode {
        field: &'static str,
        format: &'static str,
        reason: String,
    },
    #[error(
        "`{field}` is {width}x{height} pixels, more than the {limit_mp} megapixel limit \
         (--max-input-image-megapixels)"
    )]
    TooManyPixels {
        field: &'static str,
        width: u32,
        height: u32,
        limit_mp: f64,
    },
    #[error("`image_url` is not a valid URL ({reason}); use an http or https URL")]
    InvalidUrl { reason: String },
    #[error("`image_url` scheme `{scheme}` is not allowed; use http or https")]
    Scheme { scheme: String },
    #[error(
        "`image_url` host `{host}` resolves to {addr}, a {kind} address; only public addresses \
         are allowed (the worker's --allow-private-image-urls / ALLOW_PRIVATE_IMAGE_URLS lifts this)"
    )]
    BlockedAddress {
        host: String,
        addr: IpAddr,
        kind: &'static str,
    },
    #[error("`image_url` host `{host}` could not be resolved: {reason}")]
    Resolve { host: String, reason: String },
    #[error("`image_url` {url}: more than {limit} redirects")]
    TooManyRedirects { url: String, limit: usize },
    #[error("`image_url` {url} answered HTTP {status}; it must answer 200 with the image")]
    Http { url: String, status: u16 },
    #[error("`image_url` {url}: {reason}")]
    Network { url: String, reason: String },
    #[error("`image_url` {url}: no complete answer within {seconds} s")]
    Timeout { url: String, seconds: u64 },
}

/// Decodes the request's input image from `image` (base64 / data URI) or `image_url`.
/// Exactly one must be given. Decoding runs on a blocking thread so that a large JPEG does not
/// stall the async runtime (heartbeats).
pub async fn load_init_image(
    image: Option<&str>,
    image_url: Option<&str>,
    opts: &ImageFetchOptions,
) -> Result<RgbImage, ImageInputError> {
    let started = Instant::now();
    let (field, bytes) = match (image, image_url) {
        (Some(_), Some(_)) => return Err(ImageInputError::BothGiven),
        (None, None) => return Err(ImageInputError::Missing),
        (Some(b64), None) => ("image", decode_base64_image(b64, opts.max_bytes)?),
        (None, Some(url)) => ("image_url", fetch_image_bytes(url, opts).await?),
    };
    let fetched_s = started.elapsed().as_secs_f64();
    let n = bytes.len();
    let max_pixels = opts.max_pixels;
    let img = tokio::task::spawn_blocking(move || decode_image(&bytes, field, max_pixels))
        .await
        .map_err(|e| ImageInputError::Decode {
            field,
            format: "an image",
            reason: format!("the decoder failed ({e})"),
        })??;
    tracing::info!(
        field,
        bytes = n,
        width = img.width(),
        height = img.height(),
        fetch_s = fetched_s,
        total_s = started.elapsed().as_secs_f64(),
        "input image loaded"
    );
    Ok(img)
}

/// Raw base64 (standard or URL-safe alphabet, padding optional, line breaks allowed) or a
/// `data:image/…;base64,` URI → the encoded file's bytes, refused beyond `max_bytes`.
pub fn decode_base64_image(value: &str, max_bytes: u64) -> Result<Vec<u8>, ImageInputError> {
    let value = value.trim();
    if strip_prefix_ci(value, "http://").is_some() || strip_prefix_ci(value, "https://").is_some() {
        return Err(ImageInputError::Base64 {
            reason: "it looks like a URL; send URLs in `image_url`".into(),
        });
    }
    let payload = match strip_prefix_ci(value, "data:") {
        Some(rest) => {
            let Some((header, data)) = rest.split_once(',') else {
                return Err(ImageInputError::DataUri {
                    reason: "has no `,` before the data".into(),
                });
            };
            let mut params = header.split(';').map(str::trim);
            let media = params.next().unwrap_or("").to_ascii_lowercase();
            if !media.starts_with("image/") {
                return Err(ImageInputError::DataUri {
                    reason: format!("has media type `{}`, not image/…", truncate(&media, 40)),
                });
            }
            if !params.any(|p| p.eq_ignore_ascii_case("base64")) {
                return Err(ImageInputError::DataUri {
                    reason: "is not base64-encoded (`;base64` missing)".into(),
                });
            }
            data
        }
        None => value,
    };
    let compact: Vec<u8> = payload
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return Err(ImageInputError::Base64 {
            reason: "it is empty".into(),
        });
    }
    // 4 base64 characters carry 3 bytes: refuse before decoding anything too large.
    if (compact.len() as u64 / 4).saturating_mul(3) > max_bytes {
        return Err(too_large("image", max_bytes));
    }
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let standard = GeneralPurpose::new(&base64::alphabet::STANDARD, config);
    let url_safe = GeneralPurpose::new(&base64::alphabet::URL_SAFE, config);
    let bytes = match standard.decode(&compact) {
        Ok(b) => b,
        Err(e) => url_safe
            .decode(&compact)
            .map_err(|_| ImageInputError::Base64 {
                reason: e.to_string(),
            })?,
    };
    if bytes.len() as u64 > max_bytes {
        return Err(too_large("image", max_bytes));
    }
    Ok(bytes)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn too_large(field: &'static str, max_bytes: u64) -> ImageInputError {
    ImageInputError::TooLarge {
        field,
        limit_mb: max_bytes as f64 / (1024.0 * 1024.0),
    }
}

/// Decodes a PNG, JPEG or WebP file into 8-bit RGB. The pixel count is checked from the
/// header before any pixel is allocated, and the decoder runs under `image`'s allocation
/// limit as a second guard. The EXIF orientation is applied (a phone photo comes out upright,
/// as A1111 does with `exif_transpose`), and transparency is flattened onto white (A1111's
/// default img2img background colour) rather than dropped, which would reveal whatever colour
/// the transparent pixels happen to store.
pub fn decode_image(
    bytes: &[u8],
    field: &'static str,
    max_pixels: u64,
) -> Result<RgbImage, ImageInputError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageInputError::Decode {
            field,
            format: "an image",
            reason: e.to_string(),
        })?;
    let format = match reader.format() {
        Some(ImageFormat::Png) => "PNG",
        Some(ImageFormat::Jpeg) => "JPEG",
        Some(ImageFormat::WebP) => "WebP",
        Some(other) => {
            return Err(ImageInputError::UnsupportedFormat {
                field,
                found: format!(" (it is {other:?})"),
            })
        }
        None => {
            return Err(ImageInputError::UnsupportedFormat {
                field,
                found: String::new(),
            })
        }
    };
    let decode_err = |e: image::ImageError| ImageInputError::Decode {
        field,
        format,
        reason: e.to_string(),
    };
    let mut limits = Limits::default();
    // Worst case in memory: 16-bit RGBA (8 bytes per pixel) plus the decoder's own buffers.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    let mut reader = reader;
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageInputError::Decode {
            field,
            format,
            reason: format!("the image is {width}x{height} pixels"),
        });
    }
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ImageInputError::TooManyPixels {
            field,
            width,
            height,
            limit_mp: max_pixels as f64 / 1e6,
        });
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    img.apply_orientation(orientation);
    Ok(flatten_onto_white(img))
}

/// RGB, with any alpha composited over white: `c·a + 255·(1 − a)`, rounded.
fn flatten_onto_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    for px in rgba.pixels() {
        let a = u32::from(px[3]);
        for &c in &px.0[..3] {
            out.push(((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8);
        }
    }
    RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
}

/// Resizes `image` to exactly `width` × `height` like A1111's "Crop and resize": scale with
/// Lanczos3 (the kernel of PIL's LANCZOS, which A1111 uses) so that the image covers the
/// target, keeping its aspect ratio, then cut the centre. Nothing is stretched and no border
/// is added; what does not fit is cropped equally from both sides. The integer rounding of
/// the covering size and the crop offsets follow A1111's `resize_image(resize_mode=1)`.
///
/// The resize runs with `fast_image_resize` (SIMD): `image`'s generic resize took 1.2 s for a
/// 4000 × 3000 photo → 1024² on one core, this takes a few tens of ms. Its source crop box
/// is the resized-then-cropped region mapped back to source coordinates, so the filter sees
/// the same neighbourhood A1111's resize-then-crop does.
pub fn fit(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (iw, ih) = image.dimensions();
    if (iw, ih) == (width, height) {
        return image.clone();
    }
    if iw == 0 || ih == 0 || width == 0 || height == 0 {
        return RgbImage::new(width, height);
    }
    let (src_w, src_h) = cover_size(iw, ih, width, height);
    let (x0, y0) = (src_w / 2 - width / 2, src_h / 2 - height / 2);
    let _span =
        tracing::debug_span!("fit_image", from = ?(iw, ih), to = ?(width, height)).entered();
    match fast_fit(image, (src_w, src_h), (x0, y0), (width, height)) {
        Some(out) => out,
        // Only reachable if the buffers disagree with their sizes, which `RgbImage` rules out.
        None => reference_fit(image, width, height),
    }
}

/// The size A1111 scales to before cropping: one side equals the target, the other is
/// `floor(other · target / side)`, never smaller than the target.
fn cover_size(iw: u32, ih: u32, width: u32, height: u32) -> (u32, u32) {
    let (w, h, iw, ih) = (
        u64::from(width),
        u64::from(height),
        u64::from(iw),
        u64::from(ih),
    );
    // Target wider than the source (w/h > iw/ih, compared exactly): match widths.
    let (sw, sh) = if w * ih > iw * h {
        (w, ih * w / iw)
    } else {
        (iw * h / ih, h)
    };
    (
        sw.max(w).min(u64::from(u32::MAX)) as u32,
        sh.max(h).min(u64::from(u32::MAX)) as u32,
    )
}

fn fast_fit(
    image: &RgbImage,
    (src_w, src_h): (u32, u32),
    (x0, y0): (u32, u32),
    (width, height): (u32, u32),
) -> Option<RgbImage> {
    use fast_image_resize as fr;
    let (iw, ih) = image.dimensions();
    let src = fr::images::ImageRef::new(iw, ih, image.as_raw(), fr::PixelType::U8x3).ok()?;
    let mut dst = fr::images::Image::new(width, height, fr::PixelType::U8x3);
    let (kx, ky) = (
        f64::from(iw) / f64::from(src_w),
        f64::from(ih) / f64::from(src_h),
    );
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3))
        .crop(
            f64::from(x0) * kx,
            f64::from(y0) * ky,
            f64::from(width) * kx,
            f64::from(height) * ky,
        );
    fr::Resizer::new().resize(&src, &mut dst, &options).ok()?;
    RgbImage::from_raw(width, height, dst.into_vec())
}

/// [`fit`] done literally as A1111 does it (resize the whole image, then crop) with `image`'s
/// Lanczos3: slow, kept as the fallback and as the test reference.
pub(crate) fn reference_fit(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (iw, ih) = image.dimensions();
    let (src_w, src_h) = cover_size(iw, ih, width, height);
    let resized = if (src_w, src_h) == (iw, ih) {
        image.clone()
    } else {
        image::imageops::resize(image, src_w, src_h, image::imageops::FilterType::Lanczos3)
    };
    let (x0, y0) = (src_w / 2 - width / 2, src_h / 2 - height / 2);
    image::imageops::crop_imm(&resized, x0, y0, width, height).to_image()
}

/// `scheme://host[:port]/path` of a URL: no user info, query or fragment, which may carry
/// credentials. Long paths are shortened.
pub fn redact_url(url: &Url) -> String {
    let host = match url.host() {
        Some(h) => h.to_string(),
        None => String::new(),
    };
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{host}{port}{}",
        url.scheme(),
        truncate(url.path(), 120)
    )
}

/// Downloads `url` under the SSRF policy and limits of `opts`; see the module docs.
pub async fn fetch_image_bytes(
    url: &str,
    opts: &ImageFetchOptions,
) -> Result<Vec<u8>, ImageInputError> {
    fetch_checked(url, opts, &|ip| {
        opts.allow_private || blocked_kind(ip).is_none()
    })
    .await
}

/// [`fetch_image_bytes`] with the address policy as a predicate (`true` = may connect), so
/// that tests can trust their own loopback server and still see every other hop checked.
async fn fetch_checked(
    url: &str,
    opts: &ImageFetchOptions,
    allowed: &(dyn Fn(IpAddr) -> bool + Sync),
) -> Result<Vec<u8>, ImageInputError> {
    let current = Url::parse(url.trim()).map_err(|e| ImageInputError::InvalidUrl {
        reason: e.to_string(),
    })?;
    let span = tracing::debug_span!("fetch_image", url = %redact_url(&current));
    fetch_hops(current, opts, allowed).instrument(span).await
}

/// The redirect loop of [`fetch_checked`], inside its span.
async fn fetch_hops(
    mut current: Url,
    opts: &ImageFetchOptions,
    allowed: &(dyn Fn(IpAddr) -> bool + Sync),
) -> Result<Vec<u8>, ImageInputError> {
    let started = Instant::now();
    let deadline = started + opts.total_timeout;
    for _hop in 0..=opts.max_redirects {
        let shown = redact_url(&current);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = || ImageInputError::Timeout {
            url: shown.clone(),
            seconds: opts.total_timeout.as_secs(),
        };
        if remaining.is_zero() {
            return Err(timeout());
        }
        let client = checked_client(&current, opts, remaining, allowed).await?;
        let net = |e: reqwest::Error| {
            if e.is_timeout() {
                timeout()
            } else {
                ImageInputError::Network {
                    url: shown.clone(),
                    reason: net_message(e),
                }
            }
        };
        let mut resp = client.get(current.clone()).send().await.map_err(net)?;
        let status = resp.status();
        if status.is_redirection() {
            let next = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|loc| current.join(loc).ok());
            match next {
                Some(next) => {
                    tracing::debug!(from = %shown, to = %redact_url(&next), "image_url redirect");
                    current = next;
                    continue;
                }
                None => {
                    return Err(ImageInputError::Http {
                        url: shown,
                        status: status.as_u16(),
                    })
                }
            }
        }
        if !status.is_success() {
            return Err(ImageInputError::Http {
                url: shown,
                status: status.as_u16(),
            });
        }
        if resp.content_length().is_some_and(|n| n > opts.max_bytes) {
            return Err(too_large("image_url", opts.max_bytes));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(net)? {
            if (body.len() + chunk.len()) as u64 > opts.max_bytes {
                return Err(too_large("image_url", opts.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        tracing::debug!(
            bytes = body.len(),
            seconds = started.elapsed().as_secs_f64(),
            "image_url downloaded"
        );
        return Ok(body);
    }
    Err(ImageInputError::TooManyRedirects {
        url: redact_url(&current),
        limit: opts.max_redirects,
    })
}

/// Checks one hop (scheme, every resolved address) and returns a client that can only
/// connect to the addresses just checked and follows no redirect by itself.
async fn checked_client(
    url: &Url,
    opts: &ImageFetchOptions,
    remaining: Duration,
    allowed: &(dyn Fn(IpAddr) -> bool + Sync),
) -> Result<reqwest::Client, ImageInputError> {
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(ImageInputError::Scheme {
                scheme: truncate(other, 20),
            })
        }
    }
    let port = url.port_or_known_default().unwrap_or(80);
    let (domain, addrs): (Option<String>, Vec<SocketAddr>) = match url.host() {
        Some(url::Host::Ipv4(ip)) => (None, vec![SocketAddr::new(IpAddr::V4(ip), port)]),
        Some(url::Host::Ipv6(ip)) => (None, vec![SocketAddr::new(IpAddr::V6(ip), port)]),
        Some(url::Host::Domain(d)) => {
            let resolve_err = |reason: String| ImageInputError::Resolve {
                host: d.to_string(),
                reason,
            };
            let lookup = tokio::net::lookup_host((d, port));
            let found = tokio::time::timeout(opts.connect_timeout.min(remaining), lookup)
                .await
                .map_err(|_| resolve_err("timed out".into()))?
                .map_err(|e| resolve_err(e.to_string()))?;
            let mut addrs: Vec<SocketAddr> = found.collect();
            addrs.dedup();
            if addrs.is_empty() {
                return Err(resolve_err("no addresses".into()));
            }
            (Some(d.to_string()), addrs)
        }
        None => {
            return Err(ImageInputError::InvalidUrl {
                reason: "no host".into(),
            })
        }
    };
    let host = url.host_str().unwrap_or_default().to_string();
    // Every address must pass: a name that resolves to a public and a private address
    // could be connected to either.
    for a in &addrs {
        if !allowed(a.ip()) {
            return Err(ImageInputError::BlockedAddress {
                host,
                addr: a.ip(),
                kind: blocked_kind(a.ip()).unwrap_or("disallowed"),
            });
        }
    }
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("sdxl-worker/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(opts.connect_timeout)
        .read_timeout(opts.read_timeout)
        .timeout(remaining);
    if let Some(d) = &domain {
        builder = builder.resolve_to_addrs(d, &addrs);
    }
    builder.build().map_err(|e| ImageInputError::Network {
        url: redact_url(url),
        reason: net_message(e),
    })
}

/// Why an address is not public, or `None` for a globally routable one. Covers the IANA
/// special-purpose registries' non-global ranges, and IPv6 forms that embed an IPv4
/// address (mapped, NAT64, 6to4), which are judged by that address.
pub fn blocked_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_kind_v4(v4),
        IpAddr::V6(v6) => blocked_kind_v6(v6),
    }
}

fn blocked_kind_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "unspecified",
        (127, _, _) => "loopback",
        (10, _, _) | (192, 168, _) => "private",
        (172, 16..=31, _) => "private",
        (100, 64..=127, _) => "shared (carrier-grade NAT)",
        (169, 254, _) => "link-local",
        (192, 0, 0) => "IETF protocol",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved",
        _ => return None,
    })
}

fn blocked_kind_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return blocked_kind_v4(v4);
    }
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    Some(match s[0] {
        _ if s[0] & 0xff00 == 0xff00 => "multicast",
        _ if s[0] & 0xfe00 == 0xfc00 => "unique-local",
        _ if s[0] & 0xffc0 == 0xfe80 => "link-local",
        _ if s[0] & 0xffc0 == 0xfec0 => "site-local",
        // NAT64 well-known prefix 64:ff9b::/96: judged by the IPv4 address it carries.
        0x0064 if s[1] == 0xff9b && s[2..6] == [0; 4] => {
            return blocked_kind_v4(embedded(s[6], s[7]))
        }
        0x0064 if s[1] == 0xff9b && s[2] == 1 => "private (local NAT64)",
        // 6to4 2002::/16 carries an IPv4 address in bits 16..48.
        0x2002 => return blocked_kind_v4(embedded(s[1], s[2])),
        0x2001 if s[1] == 0x0db8 => "documentation",
        // Teredo (2001::/32) tunnels to an obfuscated IPv4 peer that cannot be checked.
        0x2001 if s[1] == 0 => "Teredo",
        0x0100 if s[1..4] == [0; 3] => "discard",
        // IPv4-compatible ::a.b.c.d (deprecated) and the rest of ::/8.
        0 => "reserved",
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
