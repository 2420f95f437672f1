//! The worker binary in local test mode on the fixture model: `test_input.json` from the
//! working directory, one JSON document on stdout, the image written with `--output-dir`,
//! and A1111 metadata in the PNG.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The worker binary in local test mode on the fixture `models.toml`, on the CPU, with its
/// model cache and working directory in `dir`.
fn worker(dir: &Path) -> Command {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models.toml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sdxl-worker"));
    cmd.current_dir(dir)
        .arg("--models")
        .arg(manifest)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(["--device", "cpu"])
        .env_remove("RUNPOD_WEBHOOK_GET_JOB");
    cmd
}

#[test]
fn test_input_json_runs_on_the_fixture_model_and_writes_the_image() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("test_input.json"),
        r#"{"input": {"prompt": "a watercolor lighthouse", "negative_prompt": "text",
            "width": 256, "height": 256, "num_inference_steps": 4, "guidance_scale": 5,
            "scheduler": "Euler a", "seed": 7, "num_images": 2, "output_format": "png"}}"#,
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let output = worker(dir.path())
        .arg("--output-dir")
        .arg(&out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\n{stderr}",
        output.status
    );
    let body: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {stderr}"));
    let out = &body["output"];
    assert_eq!(out["seeds"], serde_json::json!([7, 8]));
    assert_eq!(out["images"].as_array().unwrap().len(), 2);
    assert_eq!(out["info"]["request"]["sampler"], "euler_a");

    let mut files: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    for (file, seed) in files.iter().zip([7, 8]) {
        let bytes = std::fs::read(file).unwrap();
        let reader = png::Decoder::new(std::io::Cursor::new(&bytes))
            .read_info()
            .unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), (256, 256));
        let text = &info.uncompressed_latin1_text[0];
        assert_eq!(text.keyword, "parameters");
        assert!(
            text.text.starts_with("a watercolor lighthouse\nNegative prompt: text\nSteps: 4, Sampler: Euler a, Schedule type: Normal, CFG scale: 5, "),
            "{}",
            text.text
        );
        assert!(
            text.text.contains(&format!(
                "Seed: {seed}, Size: 256x256, Model hash: a0ee8945e1, Model: mini-m.fp16"
            )),
            "{}",
            text.text
        );
    }
}

#[test]
fn invalid_test_input_exits_1_with_the_problem_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let output = worker(dir.path())
        .args([
            "--test_input",
            r#"{"input": {"prompt": "x", "width": 300}}"#,
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let body: Value = serde_json::from_slice(&output.stdout).unwrap();
    let err: Value = serde_json::from_str(body["error"].as_str().unwrap()).unwrap();
    assert_eq!(err["error_type"], "invalid_input");
    assert!(err["error_message"]
        .as_str()
        .unwrap()
        .contains("field `width`: 300"));
}

/// Runs one local-mode job in a fresh process with `threads` compute threads and returns its
/// image data URIs.
fn images_with_threads(input: &str, threads: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let output = worker(dir.path())
        .args(["--test_input", input])
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{threads} threads: {stderr}");
    let body: Value = serde_json::from_slice(&output.stdout).unwrap();
    body["output"]["images"].as_array().unwrap().clone()
}

/// Same seed, same bytes: for an ancestral, a Brownian-tree SDE and an NV-noise job, two runs
/// with one compute thread and one with three give identical PNGs.
#[test]
fn same_seed_gives_the_same_bytes_across_runs_and_thread_counts() {
    for input in [
        r#"{"input": {"prompt": "a lighthouse", "width": 256, "height": 256, "steps": 4,
            "sampler_name": "DPM++ SDE Karras", "seed": 11}}"#,
        r#"{"input": {"prompt": "a (lighthouse:1.3)", "width": 256, "height": 320, "steps": 3,
            "sampler_name": "DPM++ 2M SDE", "seed": 12, "noise": "nv"}}"#,
        r#"{"input": {"prompt": "a lighthouse", "width": 256, "height": 256, "steps": 3,
            "sampler_name": "Euler a", "seed": 13, "subseed": 5, "subseed_strength": 0.3}}"#,
    ] {
        let first = images_with_threads(input, "1");
        assert!(!first.is_empty());
        assert_eq!(
            first,
            images_with_threads(input, "1"),
            "{input}: second run"
        );
        assert_eq!(first, images_with_threads(input, "3"), "{input}: 3 threads");
    }
}
