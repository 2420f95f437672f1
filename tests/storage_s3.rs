//! Result-image uploads against a real S3-compatible server (moto, started per test):
//! configuration through the `BUCKET_*` flags, signed PUT, presigned GET serving the same
//! bytes and content type, retries, and errors that never show a credential or signature.

mod pyenv;
mod storage_support;

use std::time::{Duration, Instant};

use clap::Parser;
use sdxl_worker::storage::{image_key, Bucket, RetryPolicy, StorageArgs, StorageError};
use storage_support::{free_port, Moto, S3rver, S3RVER_KEY};

const KEY_ID: &str = "AKIAEXAMPLEKEYID0042";
const SECRET: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYzzSECRET";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    storage: StorageArgs,
}

/// A bucket configured the way the worker is: from flags.
fn bucket_from_flags(extra: &[&str]) -> Bucket {
    bucket_with_keys(KEY_ID, SECRET, extra)
}

fn bucket_with_keys(key_id: &str, secret: &str, extra: &[&str]) -> Bucket {
    let mut argv = vec![
        "sdxl-worker",
        "--bucket-access-key-id",
        key_id,
        "--bucket-secret-access-key",
        secret,
    ];
    argv.extend_from_slice(extra);
    let cli = Cli::try_parse_from(argv).unwrap();
    let config = cli
        .storage
        .bucket_config()
        .unwrap()
        .expect("bucket configured");
    Bucket::new(config).unwrap()
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 13) as u8, ((x ^ y) * 3) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Nothing a user could misuse: no secret, no key id, no signature parameters.
fn assert_no_credentials(text: &str) {
    for needle in [SECRET, KEY_ID, "X-Amz-Signature", "X-Amz-Credential"] {
        assert!(!text.contains(needle), "leaked {needle:?} in: {text}");
    }
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::Client::new().get(url).send().await.unwrap()
}

#[tokio::test]
async fn upload_returns_presigned_url_serving_same_bytes_and_content_type() {
    let moto = Moto::start();
    // Path form: the bucket comes from the endpoint URL, as rp_upload users configure it.
    let endpoint = format!("{}/sdxl-results", moto.url());
    let bucket = bucket_from_flags(&["--bucket-endpoint-url", &endpoint]);
    assert_eq!(bucket.config().bucket, "sdxl-results");
    assert_no_credentials(&format!("{bucket:?}"));
    bucket.create_bucket().await.unwrap();

    let job_id = "3f2a9c1e-7d4b-4c1a-9e0f-1b2c3d4e5f60-u1";
    let png_bytes = png(64, 48);
    let jpeg_bytes: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let png_key = image_key(job_id, 0, "png");
    let jpeg_key = image_key(job_id, 1, "jpeg");
    assert_eq!(png_key, format!("{job_id}/0.png"));

    let (png_url, jpeg_url) = tokio::join!(
        bucket.upload(&png_key, png_bytes.clone(), "image/png"),
        bucket.upload(&jpeg_key, jpeg_bytes.clone(), "image/jpeg"),
    );
    let png_url = png_url.unwrap();
    let jpeg_url = jpeg_url.unwrap();

    let parsed = url::Url::parse(&png_url).unwrap();
    assert_eq!(parsed.path(), format!("/sdxl-results/{job_id}/0.png"));
    let expires: Vec<_> = parsed
        .query_pairs()
        .filter(|(k, _)| k == "X-Amz-Expires")
        .map(|(_, v)| v.into_owned())
        .collect();
    assert_eq!(expires, ["604800"], "default lifetime is 7 days");

    for (url, bytes, mime) in [
        (&png_url, &png_bytes, "image/png"),
        (&jpeg_url, &jpeg_bytes, "image/jpeg"),
    ] {
        let resp = get(url).await;
        assert_eq!(resp.status(), 200, "GET presigned URL: {}", moto.log_text());
        let content_type = resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(content_type, mime);
        assert_eq!(&resp.bytes().await.unwrap()[..], &bytes[..]);
    }
    // The PNG that came back is still a decodable image of the same size.
    let back = image::load_from_memory(&get(&png_url).await.bytes().await.unwrap()).unwrap();
    assert_eq!((back.width(), back.height()), (64, 48));
}

#[tokio::test]
async fn explicit_bucket_name_and_url_lifetime() {
    let moto = Moto::start();
    let bucket = bucket_from_flags(&[
        "--bucket-endpoint-url",
        &moto.url(),
        "--bucket-name",
        "worker-images",
        "--bucket-url-expiry-secs",
        "900",
        "--bucket-region",
        "eu-central-1",
    ]);
    assert_eq!(bucket.config().region, "eu-central-1");
    bucket.create_bucket().await.unwrap();
    // Creating it again is not an error (cold starts may race).
    bucket.create_bucket().await.unwrap();

    // A hostile job id stays inside its own prefix.
    let key = image_key("../../other-job/x", 2, "webp");
    assert_eq!(key, "______other-job_x/2.webp");
    let body = b"RIFF\x10\x00\x00\x00WEBPVP8L".to_vec();
    let url = bucket
        .upload(&key, body.clone(), "image/webp")
        .await
        .unwrap();
    assert!(url.contains("X-Amz-Expires=900"), "{url}");
    assert!(url.contains("eu-central-1"), "{url}");
    let resp = get(&url).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[reqwest::header::CONTENT_TYPE], "image/webp");
    assert_eq!(&resp.bytes().await.unwrap()[..], &body[..]);
}

#[tokio::test]
async fn missing_bucket_fails_with_status_and_code_but_no_credentials() {
    let moto = Moto::start();
    let endpoint = format!("{}/never-created", moto.url());
    let bucket = bucket_from_flags(&["--bucket-endpoint-url", &endpoint]);
    let err = bucket
        .upload("job-1/0.png", png(8, 8), "image/png")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, StorageError::Status { status: 404, .. }),
        "{msg}"
    );
    for part in [
        "`job-1/0.png`",
        "`never-created`",
        &format!("127.0.0.1:{}", moto.port),
        "HTTP 404",
        "NoSuchBucket",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert_no_credentials(&msg);
    assert_no_credentials(&format!("{err:?}"));
}

#[tokio::test]
async fn server_down_fails_after_retries_with_clear_error() {
    let port = free_port(); // nothing listens here
    let endpoint = format!("http://127.0.0.1:{port}/results");
    let bucket = bucket_from_flags(&["--bucket-endpoint-url", &endpoint]).with_retry(RetryPolicy {
        attempts: 3,
        backoff: Duration::from_millis(100),
    });
    let started = Instant::now();
    let err = bucket
        .upload("job-2/0.jpeg", vec![1, 2, 3], "image/jpeg")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, StorageError::Transport { attempts: 3, .. }),
        "{msg}"
    );
    // Two pauses: 100 ms, then 200 ms.
    assert!(started.elapsed() >= Duration::from_millis(300), "{msg}");
    for part in [
        "`job-2/0.jpeg`",
        "`results`",
        &format!("127.0.0.1:{port}"),
        "3 attempt(s)",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert!(
        msg.to_lowercase().contains("connect"),
        "says it could not connect: {msg}"
    );
    assert_no_credentials(&msg);
}

#[tokio::test]
async fn transient_server_errors_are_retried() {
    let moto = Moto::start();
    // A proxy in front of moto that answers the first request with 503, then forwards.
    let proxy = flaky_proxy(moto.port, 1).await;
    let endpoint = format!("http://127.0.0.1:{proxy}/retry-bucket");
    let direct = bucket_from_flags(&[
        "--bucket-endpoint-url",
        &format!("{}/retry-bucket", moto.url()),
    ]);
    direct.create_bucket().await.unwrap();
    let bucket = bucket_from_flags(&["--bucket-endpoint-url", &endpoint]).with_retry(RetryPolicy {
        attempts: 3,
        backoff: Duration::from_millis(50),
    });
    let bytes = png(16, 16);
    let url = bucket
        .upload("job-3/0.png", bytes.clone(), "image/png")
        .await
        .unwrap();
    let resp = get(&url).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(&resp.bytes().await.unwrap()[..], &bytes[..]);

    // With a single attempt the same 503 is the error, named with its status.
    let proxy = flaky_proxy(moto.port, 1).await;
    let endpoint = format!("http://127.0.0.1:{proxy}/retry-bucket");
    let once = bucket_from_flags(&["--bucket-endpoint-url", &endpoint]).with_retry(RetryPolicy {
        attempts: 1,
        backoff: Duration::from_millis(50),
    });
    let err = once
        .upload("job-3/1.png", bytes, "image/png")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::Status { status: 503, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("SlowDown"), "{err}");
    assert_no_credentials(&err.to_string());
}

#[tokio::test]
async fn wrong_access_key_fails_with_clear_error_and_is_not_retried() {
    // moto does not check presigned credentials; s3rver checks the access key id.
    let server = S3rver::start("auth-bucket");
    let endpoint = format!("{}/auth-bucket", server.url());
    let bucket = bucket_from_flags(&["--bucket-endpoint-url", &endpoint]).with_retry(RetryPolicy {
        attempts: 3,
        backoff: Duration::from_secs(3),
    });
    let started = Instant::now();
    let err = bucket
        .upload("job-4/0.png", png(8, 8), "image/png")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, StorageError::Status { status: 403, .. }),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a 403 is final, not retried"
    );
    for part in [
        "`job-4/0.png`",
        "`auth-bucket`",
        &format!("127.0.0.1:{}", server.port),
        "HTTP 403",
        "InvalidAccessKeyId",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    // s3rver echoes the key id in its error body; it must not reach the message.
    assert_no_credentials(&msg);
    assert_no_credentials(&format!("{err:?}"));
}

#[tokio::test]
async fn round_trip_on_a_second_server_implementation() {
    let server = S3rver::start("second-impl");
    let endpoint = format!("{}/second-impl", server.url());
    let bucket = bucket_with_keys(
        S3RVER_KEY,
        S3RVER_KEY,
        &["--bucket-endpoint-url", &endpoint],
    );
    let bytes = png(32, 32);
    let url = bucket
        .upload(
            &image_key("sync-abc-e1", 0, "png"),
            bytes.clone(),
            "image/png",
        )
        .await
        .unwrap();
    let resp = get(&url).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[reqwest::header::CONTENT_TYPE], "image/png");
    assert_eq!(&resp.bytes().await.unwrap()[..], &bytes[..]);
}

/// An HTTP/1.1 proxy to `127.0.0.1:<upstream>` whose first `failures` connections get a
/// 503 `SlowDown` error (what S3 answers under load); later connections are piped through.
async fn flaky_proxy(upstream: u16, failures: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut served = 0usize;
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            if served < failures {
                served += 1;
                tokio::spawn(async move {
                    // Read the request head before answering, like a real server.
                    let mut buf = vec![0u8; 64 * 1024];
                    let _ = inbound.read(&mut buf).await;
                    let body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code>\
                                <Message>Please reduce your request rate.</Message></Error>";
                    let head = format!(
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/xml\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = inbound.write_all(head.as_bytes()).await;
                    let _ = inbound.write_all(body.as_bytes()).await;
                    let _ = inbound.shutdown().await;
                });
            } else {
                tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }
    });
    port
}

/// The SDXL handler with a bucket: every image of a job is uploaded as `<job_id>/<n>.<ext>`
/// and the result lists presigned URLs that serve the PNGs (with their metadata) instead of
/// data URIs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_uploads_images_and_returns_presigned_urls() {
    use sdxl_worker::handler::{request::Defaults, SdxlHandler};
    use sdxl_worker::runpod::{Handler, Job, JobContext};
    use std::sync::Arc;

    let moto = Moto::start();
    let bucket = bucket_from_flags(&["--bucket-endpoint-url", &format!("{}/results", moto.url())]);
    bucket.create_bucket().await.unwrap();

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = tempfile::tempdir().unwrap();
    let fetch_args =
        sdxl_worker::fetch::FetchArgs::new(root.join("tests/fixtures/models.toml"), cache.path());
    let manifest = sdxl_worker::fetch::Manifest::load(&fetch_args.models).unwrap();
    let models = sdxl_worker::fetch::prefetch(&fetch_args, &manifest)
        .await
        .unwrap();
    let engine = sdxl_worker::pipeline::EngineArgs {
        device: "cpu".into(),
        dtype: sdxl_worker::pipeline::DTypeArg::F32,
        vae_dtype: sdxl_worker::pipeline::DTypeArg::F32,
        lora_keep_originals: None,
    };
    let handler = SdxlHandler::load(models, &engine, Some(Arc::new(bucket)))
        .await
        .unwrap()
        .with_defaults(Defaults {
            min_side: 64,
            ..Defaults::default()
        });
    let job = Job::new(
        "job-s3",
        serde_json::json!({"prompt": "a cat", "width": 64, "height": 64, "steps": 2,
                           "num_images": 2, "seed": 5}),
    );
    let out = handler
        .handle(job, JobContext::detached("job-s3"))
        .await
        .unwrap()
        .value;
    let images = out["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(out["image_url"], images[0]);
    for (n, url) in images.iter().enumerate() {
        let url = url.as_str().unwrap();
        assert!(url.contains(&format!("/results/job-s3/{n}.png?")), "{url}");
        let resp = get(url).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[reqwest::header::CONTENT_TYPE], "image/png");
        let bytes = resp.bytes().await.unwrap();
        let reader = png::Decoder::new(std::io::Cursor::new(&bytes[..]))
            .read_info()
            .unwrap();
        let text = &reader.info().uncompressed_latin1_text[0].text;
        assert!(text.contains(&format!("Seed: {}", 5 + n)), "{text}");
    }
    // A presigned URL carries the access key id by design (X-Amz-Credential), never the secret.
    assert!(!out.to_string().contains(SECRET));
}
