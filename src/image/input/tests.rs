use super::*;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use image::{ImageEncoder, Rgb, Rgba, RgbaImage};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A 24 × 16 image with a distinct colour per pixel position (so orientation and crops show).
fn sample(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 255 / w.max(2)) as u8, (y * 255 / h.max(2)) as u8, 77])
    })
}

/// `img` as a PNG or (lossless) WebP file.
fn encoded(img: &RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn png_bytes(img: &RgbImage) -> Vec<u8> {
    encoded(img, image::ImageFormat::Png)
}

fn jpeg_bytes(img: &RgbImage, exif: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
    if let Some(e) = exif {
        enc.set_exif_metadata(e).unwrap();
    }
    enc.write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    out
}

fn webp_bytes(img: &RgbImage) -> Vec<u8> {
    encoded(img, image::ImageFormat::WebP)
}

fn opts() -> ImageFetchOptions {
    ImageFetchOptions::default()
}

fn max_abs_diff(a: &RgbImage, b: &RgbImage) -> u8 {
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap()
}

#[tokio::test]
async fn base64_and_data_uris_of_png_jpeg_webp_decode() {
    let img = sample(24, 16);
    let png = png_bytes(&img);
    // Raw base64, with line breaks as pasted from `base64` output.
    let wrapped: String = STANDARD
        .encode(&png)
        .as_bytes()
        .chunks(60)
        .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
        .collect();
    for value in [
        STANDARD.encode(&png),
        wrapped,
        URL_SAFE_NO_PAD.encode(&png),
        format!("data:image/png;base64,{}", STANDARD.encode(&png)),
        format!("DATA:image/PNG;charset=x;BASE64,{}", STANDARD.encode(&png)),
    ] {
        let got = load_init_image(Some(&value), None, &opts()).await.unwrap();
        assert_eq!(got, img, "lossless PNG must round-trip exactly");
    }
    let webp = format!(
        "data:image/webp;base64,{}",
        STANDARD.encode(webp_bytes(&img))
    );
    assert_eq!(
        load_init_image(Some(&webp), None, &opts()).await.unwrap(),
        img
    );
    let jpeg = format!(
        "data:image/jpeg;base64,{}",
        STANDARD.encode(jpeg_bytes(&img, None))
    );
    let got = load_init_image(Some(&jpeg), None, &opts()).await.unwrap();
    assert_eq!(got.dimensions(), (24, 16));
    // Lossy, but close at quality 95 on a smooth gradient.
    assert!(
        max_abs_diff(&got, &img) < 24,
        "{}",
        max_abs_diff(&got, &img)
    );
}

#[tokio::test]
async fn garbage_input_is_a_named_error() {
    let e = load_init_image(Some("not base64 at all!"), None, &opts())
        .await
        .unwrap_err();
    assert!(matches!(e, ImageInputError::Base64 { .. }), "{e}");
    assert!(e.to_string().contains("`image`"), "{e}");
    assert_eq!(e.error_type(), "invalid_input");

    let e = load_init_image(Some("https://example.com/cat.png?sig=abc"), None, &opts())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("`image_url`"), "{e}");
    assert!(!e.to_string().contains("sig=abc"), "{e}");

    let e = load_init_image(Some("   "), None, &opts())
        .await
        .unwrap_err();
    assert!(matches!(e, ImageInputError::Base64 { .. }), "{e}");

    // Valid base64 of bytes that are no image.
    let junk = STANDARD.encode(b"hello, this is plain text and not an image at all");
    let e = load_init_image(Some(&junk), None, &opts())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ImageInputError::UnsupportedFormat { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("PNG, JPEG or WebP"), "{e}");

    // A recognised but unsupported format is named.
    let gif = STANDARD.encode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;");
    let e = load_init_image(Some(&gif), None, &opts())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Gif"), "{e}");

    // A truncated PNG: right signature, broken body.
    let png = png_bytes(&sample(24, 16));
    let cut = STANDARD.encode(&png[..png.len() / 2]);
    let e = load_init_image(Some(&cut), None, &opts())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ImageInputError::Decode { format: "PNG", .. }),
        "{e}"
    );

    for (uri, needle) in [
        ("data:text/plain;base64,aGVsbG8=", "text/plain"),
        ("data:image/png,rawdata", "base64"),
        ("data:image/png;base64", "`,`"),
    ] {
        let e = load_init_image(Some(uri), None, &opts()).await.unwrap_err();
        assert!(matches!(e, ImageInputError::DataUri { .. }), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }

    let e = load_init_image(Some("aGVsbG8="), Some("https://example.com/a.png"), &opts())
        .await
        .unwrap_err();
    assert!(matches!(e, ImageInputError::BothGiven));
    let e = load_init_image(None, None, &opts()).await.unwrap_err();
    assert!(matches!(e, ImageInputError::Missing));
}

#[tokio::test]
async fn oversize_bytes_and_pixels_are_refused() {
    let img = sample(300, 200);
    let b64 = STANDARD.encode(png_bytes(&img));
    let small = ImageFetchOptions {
        max_bytes: 1000,
        ..opts()
    };
    let e = load_init_image(Some(&b64), None, &small).await.unwrap_err();
    assert!(
        matches!(e, ImageInputError::TooLarge { field: "image", .. }),
        "{e}"
    );

    let few_pixels = ImageFetchOptions {
        max_pixels: 300 * 200 - 1,
        ..opts()
    };
    let e = load_init_image(Some(&b64), None, &few_pixels)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ImageInputError::TooManyPixels {
                width: 300,
                height: 200,
                ..
            }
        ),
        "{e}"
    );
    // Exactly at the limit is fine.
    let exact = ImageFetchOptions {
        max_pixels: 300 * 200,
        ..opts()
    };
    assert!(load_init_image(Some(&b64), None, &exact).await.is_ok());
}

/// CRC-32 (IEEE) for hand-made PNG chunks.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

#[test]
fn decompression_bomb_header_is_refused_before_allocating() {
    // A 100 000 × 100 000 RGB PNG header (30 GB decoded) with a few bytes of data: the pixel
    // check must fire from the header alone.
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    let e = decode_image(&png, "image", ImageFetchOptions::default().max_pixels).unwrap_err();
    assert!(
        matches!(
            e,
            ImageInputError::TooManyPixels {
                width: 100_000,
                height: 100_000,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn transparency_is_flattened_onto_white() {
    let mut rgba = RgbaImage::new(3, 1);
    rgba.put_pixel(0, 0, Rgba([10, 20, 30, 0]));
    rgba.put_pixel(1, 0, Rgba([10, 20, 30, 255]));
    rgba.put_pixel(2, 0, Rgba([0, 0, 0, 128]));
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(rgba.as_raw(), 3, 1, image::ExtendedColorType::Rgba8)
        .unwrap();
    let got = decode_image(&png, "image", 1000).unwrap();
    assert_eq!(got.get_pixel(0, 0), &Rgb([255, 255, 255]));
    assert_eq!(got.get_pixel(1, 0), &Rgb([10, 20, 30]));
    // 255 · (1 − 128/255) = 127.
    assert_eq!(got.get_pixel(2, 0), &Rgb([127, 127, 127]));
}

/// A minimal little-endian TIFF/EXIF block holding only `Orientation`.
fn exif_orientation(value: u16) -> Vec<u8> {
    let mut e = b"II*\0".to_vec();
    e.extend_from_slice(&8u32.to_le_bytes());
    e.extend_from_slice(&1u16.to_le_bytes());
    e.extend_from_slice(&0x0112u16.to_le_bytes());
    e.extend_from_slice(&3u16.to_le_bytes());
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&value.to_le_bytes());
    e.extend_from_slice(&[0, 0]);
    e.extend_from_slice(&0u32.to_le_bytes());
    e
}

#[test]
fn exif_orientation_is_applied() {
    let img = sample(24, 16);
    // 6 = the camera was turned: display rotated 90° clockwise.
    let jpeg = jpeg_bytes(&img, Some(exif_orientation(6)));
    let got = decode_image(&jpeg, "image", 1_000_000).unwrap();
    assert_eq!(got.dimensions(), (16, 24));
    let want = image::imageops::rotate90(&img);
    assert!(max_abs_diff(&got, &want) < 24);
}

#[test]
fn fit_covers_then_crops_the_centre() {
    // Wide source: left third red, middle green, right third blue.
    let src = RgbImage::from_fn(300, 100, |x, _| match x {
        0..100 => Rgb([255, 0, 0]),
        100..200 => Rgb([0, 255, 0]),
        _ => Rgb([0, 0, 255]),
    });
    let out = fit(&src, 64, 64);
    assert_eq!(out.dimensions(), (64, 64));
    // Scaled to 192 × 64, columns 64..128 kept: only the green third.
    let p = out.get_pixel(32, 32);
    assert!(p[1] > 240 && p[0] < 10 && p[2] < 10, "{p:?}");
    // Upscaling a tall image to a wide target crops top and bottom.
    let tall = RgbImage::from_fn(10, 30, |_, y| {
        if (10..20).contains(&y) {
            Rgb([0, 255, 0])
        } else {
            Rgb([255, 0, 0])
        }
    });
    let out = fit(&tall, 64, 48);
    assert_eq!(out.dimensions(), (64, 48));
    // 64 × 192, rows 72..120 kept = source rows 11.25..18.75: green.
    assert!(
        out.pixels().all(|p| p[1] > 200 && p[0] < 60),
        "{:?}",
        out.get_pixel(0, 0)
    );
    // Same size: untouched. Same aspect: plain resize.
    let s = sample(64, 48);
    assert_eq!(fit(&s, 64, 48), s);
    assert_eq!(fit(&sample(128, 96), 64, 48).dimensions(), (64, 48));
}

#[test]
fn fit_offsets_follow_a1111_integer_rounding() {
    // 101 × 50 → 64 × 64: A1111 scales to (101·64/50 = 129) × 64 and pastes at
    // 64/2 − 129/2 = −32, i.e. keeps columns 32..96 of the resized image.
    assert_eq!(cover_size(101, 50, 64, 64), (129, 64));
    assert_eq!(cover_size(50, 101, 64, 64), (64, 129));
    assert_eq!(cover_size(300, 100, 64, 64), (192, 64));
    assert_eq!(cover_size(10, 30, 64, 48), (64, 192));
    let src = RgbImage::from_fn(101, 50, |x, y| Rgb([(x * 2) as u8, (y * 5) as u8, 9]));
    let out = fit(&src, 64, 64);
    let resized = image::imageops::resize(&src, 129, 64, image::imageops::FilterType::Lanczos3);
    let literal = image::imageops::crop_imm(&resized, 32, 0, 64, 64).to_image();
    assert_eq!(reference_fit(&src, 64, 64), literal);
    // The fast path equals resize-then-crop up to rounding.
    assert!(
        max_abs_diff(&out, &literal) <= 2,
        "{}",
        max_abs_diff(&out, &literal)
    );
}

/// `fit` against A1111's crop-and-resize computed with PIL (tests/fixtures/tools/
/// fit_reference.py): both are Lanczos3 with 8-bit output, but PIL uses fixed-point weights,
/// so values may differ by a few levels next to the hard edge; on average by well under one.
#[test]
fn fit_matches_a1111_crop_and_resize_in_pil() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fit");
    let src = image::open(dir.join("src.png")).unwrap().to_rgb8();
    for (w, h) in [(128, 128), (96, 160), (256, 128), (200, 217), (480, 320)] {
        let pil = image::open(dir.join(format!("fit_{w}x{h}.png")))
            .unwrap()
            .to_rgb8();
        let ours = fit(&src, w, h);
        assert_eq!(ours.dimensions(), pil.dimensions());
        let n = pil.as_raw().len() as f64;
        let mean = ours
            .as_raw()
            .iter()
            .zip(pil.as_raw())
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum::<f64>()
            / n;
        let max = max_abs_diff(&ours, &pil);
        eprintln!("fit {w}x{h} vs PIL: mean abs diff {mean:.3}, max {max}");
        assert!(mean < 0.1, "{w}x{h}: mean abs diff {mean}");
        assert!(max <= 3, "{w}x{h}: max abs diff {max}");
    }
}

#[test]
fn address_classes() {
    let blocked = [
        ("127.0.0.1", "loopback"),
        ("127.9.9.9", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "shared (carrier-grade NAT)"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fd00::1", "unique-local"),
        ("fc00::1", "unique-local"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a00:1", "private"),
        ("2002:c0a8:101::1", "private"),
        ("::7f00:1", "reserved"),
    ];
    for (ip, kind) in blocked {
        assert_eq!(blocked_kind(ip.parse().unwrap()), Some(kind), "{ip}");
    }
    for ip in [
        "8.8.8.8",
        "1.1.1.1",
        "172.32.0.1",
        "100.128.0.1",
        "2606:4700:4700::1111",
        "64:ff9b::808:808",
        "2002:808:808::1",
        "::ffff:8.8.8.8",
    ] {
        assert_eq!(blocked_kind(ip.parse().unwrap()), None, "{ip}");
    }
}

#[test]
fn redacted_urls_have_no_credentials() {
    let u = Url::parse("https://user:pw@host.example:8443/a/b.png?token=SECRET#frag").unwrap();
    assert_eq!(redact_url(&u), "https://host.example:8443/a/b.png");
}

#[test]
fn flags_parse_from_env_style_values() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        input: ImageInputArgs,
    }
    let c = Cli::try_parse_from(["x"]).unwrap();
    assert!(!c.input.allow_private_image_urls);
    let o = ImageFetchOptions::from(&c.input);
    assert_eq!(o.max_bytes, 20 * 1024 * 1024);
    assert_eq!(o.max_pixels, 40_000_000);
    let c = Cli::try_parse_from([
        "x",
        "--allow-private-image-urls",
        "--max-input-image-mb",
        "5",
    ])
    .unwrap();
    assert!(ImageFetchOptions::from(&c.input).allow_private);
    assert_eq!(ImageFetchOptions::from(&c.input).max_bytes, 5 * 1024 * 1024);
}

// ---- image_url against a local server ----

struct Server {
    base: String,
    port: u16,
    hits: Arc<AtomicUsize>,
}

async fn server() -> Server {
    let png = png_bytes(&sample(24, 16));
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let redirect = |to: String| {
        move || async move { (StatusCode::FOUND, [(header::LOCATION, to)]).into_response() }
    };
    let h = hits.clone();
    let png2 = png.clone();
    let app = Router::new()
        .route(
            "/img.png",
            get(move || {
                let h = h.clone();
                let png = png2.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    ([(header::CONTENT_TYPE, "image/png")], png)
                }
            }),
        )
        .route("/to-img", get(redirect("/img.png?sig=SECRET2".into())))
        .route(
            "/to-private",
            get(redirect(format!("http://127.0.0.2:{port}/img.png"))),
        )
        .route("/to-file", get(redirect("file:///etc/passwd".into())))
        .route("/loop", get(redirect("/loop".into())))
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route("/text", get(|| async { "just some text, not an image" }))
        .route("/big", get(|| async { vec![0u8; 3 * 1024 * 1024] }))
        .route(
            "/big-stream",
            get(|| async {
                // No Content-Length: the cap must hold while streaming.
                let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![0u8; 64 * 1024]));
                let mut h = HeaderMap::new();
                h.insert(header::CONTENT_TYPE, "image/png".parse().unwrap());
                (
                    h,
                    axum::body::Body::from_stream(futures::stream::iter(chunks)),
                )
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server {
        base: format!("http://127.0.0.1:{port}"),
        port,
        hits,
    }
}

fn allow_all() -> ImageFetchOptions {
    ImageFetchOptions {
        allow_private: true,
        ..opts()
    }
}

#[tokio::test]
async fn loopback_is_refused_by_default_and_allowed_with_the_flag() {
    let s = server().await;
    let url = format!("{}/img.png", s.base);
    let e = load_init_image(None, Some(&url), &opts())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ImageInputError::BlockedAddress {
                kind: "loopback",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("`image_url`"), "{e}");
    assert_eq!(
        s.hits.load(Ordering::SeqCst),
        0,
        "no request may reach the server"
    );

    // A name is judged by what it resolves to.
    let by_name = format!("http://localhost:{}/img.png", s.port);
    let e = load_init_image(None, Some(&by_name), &opts())
        .await
        .unwrap_err();
    assert!(matches!(e, ImageInputError::BlockedAddress { .. }), "{e}");
    assert_eq!(s.hits.load(Ordering::SeqCst), 0);

    let img = load_init_image(None, Some(&url), &allow_all())
        .await
        .unwrap();
    assert_eq!(img, sample(24, 16));
    // Redirects are followed (relative Location) when every hop is allowed.
    let img = load_init_image(None, Some(&format!("{}/to-img", s.base)), &allow_all())
        .await
        .unwrap();
    assert_eq!(img, sample(24, 16));
    assert_eq!(s.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn schemes_other_than_http_are_refused() {
    for (url, scheme) in [
        ("file:///etc/passwd", "file"),
        ("ftp://example.com/a.png", "ftp"),
        ("gopher://example.com/", "gopher"),
    ] {
        let e = load_init_image(None, Some(url), &allow_all())
            .await
            .unwrap_err();
        match &e {
            ImageInputError::Scheme { scheme: s } => assert_eq!(s, scheme),
            other => panic!("{url}: {other}"),
        }
        assert!(e.to_string().contains("http or https"), "{e}");
    }
    let e = load_init_image(None, Some("not a url"), &opts())
        .await
        .unwrap_err();
    assert!(matches!(e, ImageInputError::InvalidUrl { .. }), "{e}");
}

#[tokio::test]
async fn every_redirect_hop_is_checked() {
    let s = server().await;
    let own: IpAddr = "127.0.0.1".parse().unwrap();
    // Trust only the test server's own address; all else follows the default policy.
    let trust_own = |ip: IpAddr| ip == own || blocked_kind(ip).is_none();
    let e = fetch_checked(&format!("{}/to-private", s.base), &opts(), &trust_own)
        .await
        .unwrap_err();
    match &e {
        ImageInputError::BlockedAddress { addr, kind, .. } => {
            assert_eq!(addr.to_string(), "127.0.0.2");
            assert_eq!(*kind, "loopback");
        }
        other => panic!("{other}"),
    }
    let e = fetch_checked(&format!("{}/to-file", s.base), &opts(), &trust_own)
        .await
        .unwrap_err();
    assert!(matches!(e, ImageInputError::Scheme { .. }), "{e}");
    let e = fetch_checked(&format!("{}/loop", s.base), &opts(), &trust_own)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ImageInputError::TooManyRedirects {
                limit: MAX_REDIRECTS,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(s.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn response_size_is_capped() {
    let s = server().await;
    let capped = ImageFetchOptions {
        max_bytes: 1024 * 1024,
        ..allow_all()
    };
    for path in ["/big", "/big-stream"] {
        let e = load_init_image(None, Some(&format!("{}{path}", s.base)), &capped)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ImageInputError::TooLarge {
                    field: "image_url",
                    ..
                }
            ),
            "{path}: {e}"
        );
    }
    // Below the cap the streamed body arrives whole (and is then no image).
    let e = load_init_image(None, Some(&format!("{}/big-stream", s.base)), &allow_all())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ImageInputError::UnsupportedFormat {
                field: "image_url",
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn http_errors_and_timeouts_are_named() {
    let s = server().await;
    let e = load_init_image(None, Some(&format!("{}/missing", s.base)), &allow_all())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ImageInputError::Http { status: 404, .. }),
        "{e}"
    );
    assert_eq!(e.error_type(), "image_fetch_error");
    let quick = ImageFetchOptions {
        total_timeout: Duration::from_millis(300),
        ..allow_all()
    };
    let e = load_init_image(None, Some(&format!("{}/slow", s.base)), &quick)
        .await
        .unwrap_err();
    assert!(matches!(e, ImageInputError::Timeout { .. }), "{e}");
    // Nothing listens on port 9 of 127.0.0.1: a connection error, not a panic.
    let e = load_init_image(None, Some("http://127.0.0.1:9/x.png"), &allow_all())
        .await
        .unwrap_err();
    assert!(matches!(e, ImageInputError::Network { .. }), "{e}");
}

#[tokio::test]
async fn query_strings_and_credentials_never_appear_in_errors() {
    let s = server().await;
    let secret = "tok3n-SECRET-value";
    let cases = [
        (format!("{}/missing?token={secret}", s.base), allow_all()),
        (format!("{}/text?token={secret}", s.base), allow_all()),
        (format!("{}/img.png?token={secret}", s.base), opts()),
        (
            format!("http://user:{secret}@127.0.0.1:{}/img.png", s.port),
            opts(),
        ),
        (format!("{}/loop?token={secret}", s.base), allow_all()),
        (
            format!("http://127.0.0.1:9/x.png?token={secret}"),
            allow_all(),
        ),
        (
            format!("ftp://example.com/x.png?token={secret}"),
            allow_all(),
        ),
        (
            format!("{}/slow?token={secret}", s.base),
            ImageFetchOptions {
                total_timeout: Duration::from_millis(200),
                ..allow_all()
            },
        ),
    ];
    for (url, o) in cases {
        let e = load_init_image(None, Some(&url), &o).await.unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(!shown.contains("SECRET2"), "{shown}");
    }
}
