//! Keeps the documentation true: every JSON request example in the README, the top-level
//! `test_input.json`, the RunPod Hub test inputs and every TOML example parse against the
//! real request schema and manifest parser.

use std::path::Path;

use sdxl_worker::fetch::Manifest;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Fenced code blocks of one language from a Markdown text.
fn blocks<'a>(markdown: &'a str, lang: &str) -> Vec<&'a str> {
    let fence = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = markdown;
    while let Some(start) = rest.find(&fence) {
        let body = &rest[start + fence.len()..];
        let end = body.find("```").expect("unclosed code block");
        out.push(&body[..end]);
        rest = &body[end + 3..];
    }
    out
}

fn check_job(source: &str, job: &Value) {
    let input = job
        .get("input")
        .unwrap_or_else(|| panic!("{source}: no `input` in {job}"));
    // Examples in other clients' shapes go through the dialect layer first; model names and
    // AIRs are not checked here (no models are loaded).
    if let Err(e) = sdxl_worker::handler::dialects::check_input(input) {
        panic!("{source}: {e}");
    }
}

#[test]
fn readme_json_examples_are_valid_requests() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let examples = blocks(&readme, "json");
    assert!(!examples.is_empty(), "the README shows no JSON request");
    for (n, text) in examples.iter().enumerate() {
        let v: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("README JSON block {n} is not JSON ({e}):\n{text}"));
        check_job(&format!("README JSON block {n}"), &v);
    }
}

#[test]
fn test_input_json_is_a_valid_request() {
    let text = std::fs::read_to_string(root().join("test_input.json")).unwrap();
    check_job("test_input.json", &serde_json::from_str(&text).unwrap());
}

#[test]
fn hub_test_inputs_are_valid_requests() {
    let path = root().join(".runpod/tests.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let tests = v["tests"].as_array().expect("`tests` list");
    assert!(!tests.is_empty());
    for t in tests {
        check_job(&format!(".runpod/tests.json {}", t["name"]), t);
    }
}

#[test]
fn readme_and_shipped_manifests_parse() {
    let shipped = root().join("models.toml");
    let m = Manifest::load(&shipped).unwrap_or_else(|e| panic!("models.toml: {e}"));
    assert!(m
        .entries
        .iter()
        .any(|e| e.kind == sdxl_worker::fetch::ModelKind::Checkpoint));
    Manifest::load(root().join("tests/fixtures/models.toml")).unwrap();
    Manifest::load(root().join(".runpod/models-hub.toml")).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let examples = blocks(&readme, "toml");
    assert!(
        !examples.is_empty(),
        "the README shows no models.toml example"
    );
    for (n, text) in examples.iter().enumerate() {
        if let Err(e) = Manifest::parse(text, &root().join("README-example.toml")) {
            panic!("README TOML block {n}: {e}\n{text}");
        }
    }
}
