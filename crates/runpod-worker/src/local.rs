//! Local test mode (docs/runpod-protocol.md, *Local test mode*): run one job from
//! `--test_input` or `./test_input.json`, print the result body as the only thing on stdout,
//! exit 1 when it carries an `error`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use base64::Engine as _;
use serde_json::Value;

use crate::exec::{await_init, program_name, Ended, JobEvents, JobRunner, Launch};
use crate::handler::Job;
use crate::result::to_python_json;

/// Why the test job could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TestInputError {
    #[error("test_input.json not found in {0} and no --test_input given, exiting")]
    NotFound(PathBuf),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} is not valid JSON: {source}")]
    Json {
        origin: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0} must be a JSON object with an \"input\" field, e.g. {{\"input\": {{\"prompt\": \"a cat\"}}}}")]
    NoInput(String),
}

/// The job of a local test run: inline JSON wins over `test_input.json` in `cwd`.
pub fn load_test_job(inline: Option<&str>, cwd: &Path) -> Result<Job, TestInputError> {
    let (text, origin) = match inline {
        Some(text) => (text.to_owned(), "--test_input".to_owned()),
        None => {
            let path = cwd.join("test_input.json");
            match std::fs::read_to_string(&path) {
                Ok(t) => (t, path.display().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(TestInputError::NotFound(cwd.to_path_buf()))
                }
                Err(source) => return Err(TestInputError::Read { path, source }),
            }
        }
    };
    let value: Value = serde_json::from_str(&text).map_err(|source| TestInputError::Json {
        origin: origin.clone(),
        source,
    })?;
    let Value::Object(mut map) = value else {
        return Err(TestInputError::NoInput(origin));
    };
    let input = match map.remove("input") {
        Some(Value::Null) | None => return Err(TestInputError::NoInput(origin)),
        Some(v) => v,
    };
    let id = match map.remove("id") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => "local_test".to_owned(),
    };
    let mut job = Job::new(id, input);
    if let Some(Value::String(w)) = map.remove("webhook") {
        job.webhook = Some(w);
    }
    job.extra = map;
    Ok(job)
}

/// Local mode logs progress; chunks only end up in the printed output.
struct LogProgress;

#[async_trait::async_trait]
impl JobEvents for LogProgress {
    async fn progress(&self, updates: Vec<Value>) {
        for v in updates {
            tracing::info!(progress = %to_python_json(&v, false), "progress");
        }
    }
}

pub(crate) async fn run(launch: Launch<'_>) -> anyhow::Result<ExitCode> {
    let (args, shutdown) = (launch.args, launch.shutdown);
    let program = program_name();
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let job = match load_test_job(args.test_input.as_deref(), &cwd) {
        Ok(job) => job,
        Err(err) => {
            eprintln!("{program}: {err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let Some(handler) = await_init(launch.init, &shutdown).await? else {
        return Ok(ExitCode::from(130));
    };
    let mut cfg = args.handler_config(handler.config());
    // Locally there is no /stream to read chunks from, so they go into the output.
    cfg.return_aggregate_stream = true;
    let runner = JobRunner {
        handler,
        cfg,
        who: args.identity(),
    };

    let id = job.id.clone();
    tracing::info!(job_id = %id, "Started.");
    let body = match runner
        .run(job, &shutdown.child_token(), Arc::new(LogProgress))
        .await
    {
        Ended::Result(body) => body,
        Ended::Stopped => {
            eprintln!("{program}: interrupted");
            return Ok(ExitCode::from(130));
        }
    };
    // The one and only thing this mode writes to stdout.
    println!("{}", body.to_json());
    let mut code = if body.is_error() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    if let (Some(dir), Some(output)) = (&args.output_dir, &body.output) {
        match write_images(output, dir, &id) {
            Ok(files) => {
                for f in &files {
                    tracing::info!(path = %f.display(), "image written");
                }
                if files.is_empty() {
                    tracing::warn!("--output-dir given but the output holds no images");
                }
            }
            Err(err) => {
                eprintln!("{program}: writing images to {}: {err}", dir.display());
                code = ExitCode::FAILURE;
            }
        }
    }
    tracing::info!(job_id = %id, failed = body.is_error(), "Finished.");
    Ok(code)
}

/// Writes every image found in `output` (data URLs or bare base64 of PNG/JPEG/WebP) into
/// `dir` as `<job id>_<n>.<ext>`; returns the paths written.
pub fn write_images(output: &Value, dir: &Path, job_id: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    collect_images(output, &mut images);
    if images.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir)?;
    let stem: String = job_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut paths = Vec::with_capacity(images.len());
    for (n, (bytes, ext)) in images.into_iter().enumerate() {
        let path = dir.join(format!("{stem}_{n}.{ext}"));
        std::fs::write(&path, bytes)?;
        paths.push(path);
    }
    Ok(paths)
}

fn collect_images(v: &Value, out: &mut Vec<(Vec<u8>, &'static str)>) {
    match v {
        Value::String(s) => {
            // The same image often appears twice (`images[0]` and `image_url`): write it once.
            if let Some(img) = decode_image(s) {
                if !out.iter().any(|(bytes, _)| *bytes == img.0) {
                    out.push(img);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_images(i, out)),
        Value::Object(map) => map.values().for_each(|i| collect_images(i, out)),
        _ => {}
    }
}

/// An image in a string: `data:image/...;base64,` or bare base64 whose bytes start with a
/// PNG, JPEG or WebP signature. Short strings are never images.
fn decode_image(s: &str) -> Option<(Vec<u8>, &'static str)> {
    let payload = match s.strip_prefix("data:image/") {
        Some(rest) => rest.split_once(";base64,")?.1,
        None if s.len() >= 64 => s,
        None => return None,
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .ok()?;
    let ext = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        "png"
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "jpg"
    } else if bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "webp"
    } else {
        return None;
    };
    Some((bytes, ext))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inline_input_wins_and_id_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("test_input.json"),
            r#"{"input": {"from": "file"}}"#,
        )
        .unwrap();
        let job = load_test_job(Some(r#"{"input": {"from": "flag"}}"#), dir.path()).unwrap();
        assert_eq!(job.input, json!({"from": "flag"}));
        assert_eq!(job.id, "local_test");
        let job = load_test_job(None, dir.path()).unwrap();
        assert_eq!(job.input, json!({"from": "file"}));
        let job = load_test_job(Some(r#"{"id": "mine", "input": 1}"#), dir.path()).unwrap();
        assert_eq!(job.id, "mine");
    }

    #[test]
    fn bad_test_input_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_test_job(None, dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("test_input.json not found"),
            "{err}"
        );
        let err = load_test_job(Some("{nope"), dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--test_input is not valid JSON"),
            "{err}"
        );
        let err = load_test_job(Some(r#"{"inputs": {}}"#), dir.path()).unwrap_err();
        assert!(err.to_string().contains("\"input\" field"), "{err}");
        let err = load_test_job(Some(r#"{"input": null}"#), dir.path()).unwrap_err();
        assert!(matches!(err, TestInputError::NoInput(_)));
    }

    #[test]
    fn images_are_found_in_data_urls_and_bare_base64() {
        let png =
            b"\x89PNG\r\n\x1a\n0123456789012345678901234567890123456789012345678901234567890123";
        let png2 =
            b"\x89PNG\r\n\x1a\nabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij0123";
        let b64 = base64::engine::general_purpose::STANDARD.encode(png);
        let b64_2 = base64::engine::general_purpose::STANDARD.encode(png2);
        let output = json!({"images": [
            {"image": format!("data:image/png;base64,{b64}"), "seed": 1},
            {"image": b64_2.clone()},
        ], "image_url": format!("data:image/png;base64,{b64}"), "note": "short"});
        let dir = tempfile::tempdir().unwrap();
        let files = write_images(&output, dir.path(), "local/test").unwrap();
        // `image_url` repeats images[0]: written once.
        assert_eq!(files.len(), 2);
        assert!(files[0].ends_with("local_test_0.png"));
        let written: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        assert!(written.contains(&png.to_vec()) && written.contains(&png2.to_vec()));
        assert!(decode_image(&"A".repeat(100)).is_none());
    }
}
