//! The embedded CLIP tokenizers against the ids recorded from the Hugging Face tokenizers /
//! diffusers pipeline: all prompts of `tokenizer_tests.json` (unicode, whitespace, prompt
//! syntax, > 77 tokens, the `!` pad-token quirk of tokenizer_2) and the prompt and negative
//! prompt ids of every reference case.

mod common_sampling;

use common_sampling::{manifest, read_npy, reference_dir, u32_list};
use sdxl_worker::prompt::{ClipTokenizers, MAX_LENGTH};

#[test]
fn tokenizer_tests_json() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizer_tests.json");
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tok = ClipTokenizers::load().unwrap();
    let cases = data["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 15);
    let mut saw_quirk = false;
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text).unwrap();
        assert_eq!(
            got.te1,
            u32_list(&case["tokenizer_input_ids"]),
            "tokenizer: {text:?}"
        );
        assert_eq!(
            got.te2,
            u32_list(&case["tokenizer_2_input_ids"]),
            "tokenizer_2: {text:?}"
        );
        assert_eq!(got.te1.len(), MAX_LENGTH);
        let untrunc = tok.encode_untruncated(text).unwrap();
        assert_eq!(
            untrunc.te1,
            u32_list(&case["ids_untruncated"]),
            "untruncated: {text:?}"
        );
        // Where the texts differ from open_clip it's the `!` quirk, and only for tokenizer_2.
        if got.te2 != u32_list(&case["open_clip_tokenize_ids"]) {
            assert!(text.contains('!'), "{text:?}");
            saw_quirk = true;
        }
    }
    assert!(
        saw_quirk,
        "the `!` cases must reproduce diffusers, not open_clip"
    );
}

#[test]
fn reference_case_input_ids() {
    let tok = ClipTokenizers::load().unwrap();
    let mut checked = 0;
    for case in manifest()["cases"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let dir = reference_dir().join("cases").join(id);
        for (prefix, field) in [("", "prompt"), ("negative_", "negative_prompt")] {
            let Some(text) = case[field].as_str() else {
                // `negative_prompt: null` means zero embeddings, no ids to compare.
                assert!(!dir
                    .join(format!("{prefix}input_ids_tokenizer.npy"))
                    .exists());
                continue;
            };
            let got = tok.encode(text).unwrap();
            for (file, ids) in [
                ("input_ids_tokenizer", &got.te1),
                ("input_ids_tokenizer_2", &got.te2),
            ] {
                let want = read_npy::<i64>(&dir.join(format!("{prefix}{file}.npy")));
                assert_eq!(want.shape, vec![1, MAX_LENGTH], "{id} {prefix}{file}");
                let want: Vec<u32> = want.data.iter().map(|&v| v as u32).collect();
                assert_eq!(ids, &want, "{id} {prefix}{file}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 60, "only {checked} id arrays compared");
}
