//! Prompt parsing and chunking against the reference implementations:
//!
//! * `fixtures/prompt/a1111_parse_cases.json`: 1 200 random strings of syntax characters
//!   and what A1111's own `parse_prompt_attention` returned for them (weights compared
//!   exactly, as their Python `repr`);
//! * `fixtures/prompt/chunk_cases.json`: chunk ids and weights from transcriptions of
//!   ComfyUI's `tokenize_with_weights` and A1111's `tokenize_line` for long prompts (150
//!   and 184 tokens, words across the 75-token boundary, commas near it, BREAK, weights);
//!
//! plus hand-checked cases of the rules themselves.

mod common_sampling;

use common_sampling::u32_list;
use sdxl_worker::prompt::chunks::{COMFY_MAX_WORD_TOKENS, COMMA_ID};
use sdxl_worker::prompt::{
    parse_attention, ClipTokenizers, Emphasis, Piece, PromptError, BOS_ID, EOS_ID, MAX_CHUNKS,
    MAX_LENGTH, MAX_PROMPT_BYTES,
};
use std::sync::OnceLock;

fn fixture(name: &str) -> serde_json::Value {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/prompt")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tokenizers() -> &'static ClipTokenizers {
    static T: OnceLock<ClipTokenizers> = OnceLock::new();
    T.get_or_init(|| ClipTokenizers::load().unwrap())
}

#[test]
fn parser_matches_a1111_on_random_strings() {
    let data = fixture("a1111_parse_cases.json");
    let cases = data["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 1200);
    let mut with_break = 0;
    let mut weighted = 0;
    for case in cases {
        let s = case["s"].as_str().unwrap();
        let want: Vec<(String, f64)> = case["out"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_string(),
                    // repr() strings: parsing them is exact, unlike JSON floats.
                    p[1].as_str().unwrap().parse::<f64>().unwrap(),
                )
            })
            .collect();
        let got: Vec<(String, f64)> = parse_attention(s)
            .into_iter()
            .map(|p| match p {
                Piece::Text { text, weight } => (text, weight),
                Piece::Break => ("BREAK".to_string(), -1.0),
            })
            .collect();
        assert_eq!(got, want, "input {s:?}");
        with_break += usize::from(got.iter().any(|(_, w)| *w == -1.0));
        weighted += usize::from(got.iter().any(|(_, w)| *w != 1.0 && *w != -1.0));
    }
    // The corpus exercises what it is meant to.
    assert!(
        with_break > 100 && weighted > 500,
        "{with_break} {weighted}"
    );
}

#[test]
fn chunks_match_comfyui_and_a1111_rules() {
    let data = fixture("chunk_cases.json");
    let cases = data["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    let t = tokenizers();
    let mut rules_differ = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let prompt = case["prompt"].as_str().unwrap();
        for (mode, emphasis) in [("comfy", Emphasis::Comfy), ("a1111", Emphasis::A1111)] {
            let got = t.tokenize_weighted(prompt, emphasis).unwrap();
            assert!(!got.diffusers_plain, "{name}");
            let want = case[mode].as_array().unwrap();
            assert_eq!(got.chunks.len(), want.len(), "{name} {mode}: chunk count");
            for (i, (g, w)) in got.chunks.iter().zip(want).enumerate() {
                assert_eq!(g.te1, u32_list(&w["te1"]), "{name} {mode} chunk {i} te1");
                assert_eq!(g.te2, u32_list(&w["te2"]), "{name} {mode} chunk {i} te2");
                let weights: Vec<f32> = w["weights"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().parse::<f64>().unwrap() as f32)
                    .collect();
                assert_eq!(g.weights, weights, "{name} {mode} chunk {i} weights");
            }
        }
        rules_differ += usize::from(case["comfy"] != case["a1111"]);
    }
    assert!(
        rules_differ >= 3,
        "the two rule sets differ on only {rules_differ} cases"
    );
}

/// 150 tokens are exactly two full chunks, with ids and framing spelled out.
#[test]
fn a_150_token_prompt_is_two_full_chunks() {
    let t = tokenizers();
    let cat = t.te1.content_ids("cat").unwrap();
    let dog = t.te1.content_ids("dog").unwrap();
    assert_eq!((cat.len(), dog.len()), (1, 1));
    let prompt = ["cat dog"; 75].join(" ");
    for emphasis in [Emphasis::Comfy, Emphasis::A1111] {
        let p = t.tokenize_weighted(&prompt, emphasis).unwrap();
        assert_eq!(p.chunks.len(), 2);
        let mut content = Vec::new();
        for chunk in &p.chunks {
            assert_eq!(chunk.te1.len(), MAX_LENGTH);
            assert_eq!((chunk.te1[0], chunk.te1[76]), (BOS_ID, EOS_ID));
            assert_eq!((chunk.te2[0], chunk.te2[76]), (BOS_ID, EOS_ID));
            assert_eq!(chunk.te1[1..76], chunk.te2[1..76]);
            assert!(chunk.weights.iter().all(|&w| w == 1.0));
            content.extend_from_slice(&chunk.te1[1..76]);
        }
        let want: Vec<u32> = (0..150)
            .map(|i| if i % 2 == 0 { cat[0] } else { dog[0] })
            .collect();
        assert_eq!(content, want);
    }
}

/// A short word that does not fit moves whole to the next chunk under ComfyUI's rules and
/// is cut under A1111's; a word of ≥ 8 tokens is cut under both.
#[test]
fn words_across_the_chunk_boundary() {
    let t = tokenizers();
    let word = "photorealistic";
    let w = t.te1.content_ids(word).unwrap();
    assert!(w.len() > 1 && w.len() < COMFY_MAX_WORD_TOKENS, "{w:?}");
    let prompt = format!("{} {word} sky", ["blue"; 74].join(" "));
    let comfy = t.tokenize_weighted(&prompt, Emphasis::Comfy).unwrap();
    assert_eq!(comfy.chunks.len(), 2);
    // 74 blues, EOS, EOS padding; the word starts chunk 2.
    assert_eq!(comfy.chunks[0].te1[75], EOS_ID);
    assert_eq!(comfy.chunks[0].te2[75..], [EOS_ID, 0]);
    assert_eq!(comfy.chunks[1].te1[1..1 + w.len()], w[..]);
    let a1111 = t.tokenize_weighted(&prompt, Emphasis::A1111).unwrap();
    assert_eq!(a1111.chunks[0].te1[75], w[0]);
    assert_eq!(a1111.chunks[1].te1[1..w.len()], w[1..]);

    let long = "supercalifragilisticexpialidociously";
    let l = t.te1.content_ids(long).unwrap();
    assert!(l.len() >= COMFY_MAX_WORD_TOKENS, "{l:?}");
    let prompt = format!("{} {long}", ["blue"; 72].join(" "));
    let comfy = t.tokenize_weighted(&prompt, Emphasis::Comfy).unwrap();
    assert_eq!(comfy.chunks[0].te1[73..76], l[..3]);
    assert_eq!(comfy.chunks[1].te1[1..l.len() - 2], l[3..]);
}

/// A1111 moves the text after the last comma to the next chunk when that comma is at most
/// 20 tokens before the boundary; ComfyUI does not look at commas.
#[test]
fn comma_backtracking() {
    let t = tokenizers();
    // 60 single-token words, a comma (token 61), then 20 more words: the boundary falls
    // 14 tokens after the comma.
    let prompt = format!("{}, {}", ["cat"; 60].join(" "), ["dog"; 20].join(" "));
    let a = t.tokenize_weighted(&prompt, Emphasis::A1111).unwrap();
    assert_eq!(a.chunks[0].te1[61], COMMA_ID);
    assert_eq!(a.chunks[0].te1[62], EOS_ID, "text after the comma moved on");
    let dog = t.te1.content_ids("dog").unwrap()[0];
    assert_eq!(a.chunks[1].te1[1..21], [dog; 20]);
    let c = t.tokenize_weighted(&prompt, Emphasis::Comfy).unwrap();
    assert_eq!(c.chunks[0].te1[62..76], [dog; 14]);
    // A comma further back than 20 tokens is ignored.
    let prompt = format!("{}, {}", ["cat"; 50].join(" "), ["dog"; 30].join(" "));
    let a = t.tokenize_weighted(&prompt, Emphasis::A1111).unwrap();
    assert_eq!(a.chunks[0].te1[75], dog);
}

#[test]
fn break_starts_a_new_chunk() {
    let t = tokenizers();
    for emphasis in [Emphasis::Comfy, Emphasis::A1111] {
        let p = t.tokenize_weighted("a cat BREAK a dog", emphasis).unwrap();
        assert!(!p.diffusers_plain);
        assert_eq!(p.chunks.len(), 2);
        let first = t.encode("a cat").unwrap();
        let second = t.encode("a dog").unwrap();
        assert_eq!(p.chunks[0].te1, first.te1);
        assert_eq!(p.chunks[0].te2, first.te2);
        assert_eq!(p.chunks[1].te1, second.te1);
        // A trailing BREAK adds nothing; a leading one gives an empty first chunk.
        assert_eq!(
            t.tokenize_weighted("a cat BREAK", emphasis)
                .unwrap()
                .chunks
                .len(),
            1
        );
        let lead = t.tokenize_weighted("BREAK a cat", emphasis).unwrap();
        assert_eq!(lead.chunks.len(), 2);
        assert_eq!(lead.chunks[0], t.empty_chunk());
        // Lowercase or glued to a word it is text.
        assert!(
            t.tokenize_weighted("a break b", emphasis)
                .unwrap()
                .diffusers_plain
        );
        let glued = t.tokenize_weighted("BREAKING news", emphasis).unwrap();
        assert_eq!(glued.chunks.len(), 1);
    }
}

/// Plain prompts keep diffusers' tokenization, including the second tokenizer's `!` quirk;
/// with emphasis both encoders share the first tokenizer's ids.
#[test]
fn plain_prompts_are_tokenized_as_diffusers() {
    let t = tokenizers();
    for text in [
        "a cat!!! on a mat",
        "",
        "  spaces  and\nnewline ",
        "\\(escaped\\)",
    ] {
        let p = t.tokenize_weighted(text, Emphasis::Comfy).unwrap();
        assert!(p.diffusers_plain, "{text:?}");
        assert_eq!(p.chunks.len(), 1);
        let unescaped = text.replace("\\(", "(").replace("\\)", ")");
        let want = t.encode(&unescaped).unwrap();
        assert_eq!((&p.chunks[0].te1, &p.chunks[0].te2), (&want.te1, &want.te2));
    }
    let quirk = t.encode("cat!!!").unwrap();
    assert_ne!(
        quirk.te1[2], quirk.te2[2],
        "the `!` quirk is in the fixture tokenizers"
    );
    let weighted = t
        .tokenize_weighted("(cat!!!:1.2)", Emphasis::Comfy)
        .unwrap();
    let c = &weighted.chunks[0];
    assert_eq!(c.te1[..4], c.te2[..4]);
    assert_eq!(c.te1[..4], quirk.te1[..4]);
    assert_eq!(c.weights[..4], [1.0, 1.2, 1.2, 1.0]);
}

#[test]
fn weights_follow_the_tokens() {
    let t = tokenizers();
    let p = t
        .tokenize_weighted("a (red:1.5) [fox]", Emphasis::Comfy)
        .unwrap();
    assert!(p.is_weighted());
    let red_fox = t.encode("a red fox").unwrap();
    assert_eq!(p.chunks[0].te1, red_fox.te1);
    let w = &p.chunks[0].weights;
    assert_eq!(w[..5], [1.0, 1.0, 1.5, (1.0 / 1.1f64) as f32, 1.0]);
    assert!(w[5..].iter().all(|&x| x == 1.0));
    // Ignore keeps A1111's tokenization but drops the weights.
    let ignored = t
        .tokenize_weighted("a (red:1.5) [fox]", Emphasis::Ignore)
        .unwrap();
    assert!(!ignored.is_weighted());
    assert_eq!(ignored.chunks[0].te1, red_fox.te1);
}

#[test]
fn both_encoders_always_get_the_same_chunk_count() {
    let t = tokenizers();
    // `!` is one token for the first tokenizer and one per character for the second; a
    // prompt of many `!!!` would chunk differently if each used its own ids.
    let prompt = ["wow!!!"; 60].join(" ");
    for emphasis in [Emphasis::Comfy, Emphasis::A1111] {
        let p = t.tokenize_weighted(&prompt, emphasis).unwrap();
        for c in &p.chunks {
            assert_eq!((c.te1.len(), c.te2.len(), c.weights.len()), (77, 77, 77));
            let eos1 = c.te1.iter().position(|&x| x == EOS_ID).unwrap();
            let eos2 = c.te2.iter().position(|&x| x == EOS_ID).unwrap();
            assert_eq!(eos1, eos2);
            assert!(c.te2[eos2 + 1..].iter().all(|&x| x == 0));
            assert!(c.te1[eos1 + 1..].iter().all(|&x| x == EOS_ID));
        }
    }
}

#[test]
fn overlong_prompts_are_rejected() {
    let t = tokenizers();
    let prompt = ["cat"; 75 * MAX_CHUNKS + 1].join(" ");
    for emphasis in [Emphasis::Comfy, Emphasis::A1111] {
        match t.tokenize_weighted(&prompt, emphasis) {
            Err(PromptError::TooLong { chunks, max }) => {
                assert!(chunks > MAX_CHUNKS);
                assert_eq!(max, MAX_CHUNKS);
            }
            other => panic!("expected TooLong, got {other:?}"),
        }
    }
    let huge = "(".repeat(MAX_PROMPT_BYTES + 1);
    match t.tokenize_weighted(&huge, Emphasis::Comfy) {
        Err(PromptError::TooManyBytes { bytes, max }) => {
            assert_eq!((bytes, max), (MAX_PROMPT_BYTES + 1, MAX_PROMPT_BYTES))
        }
        other => panic!("expected TooManyBytes, got {other:?}"),
    }
    let fits = ["cat"; 75 * MAX_CHUNKS].join(" ");
    assert_eq!(
        t.tokenize_weighted(&fits, Emphasis::A1111)
            .unwrap()
            .chunks
            .len(),
        MAX_CHUNKS
    );
}
