//! Prompt handling: the two CLIP tokenizers shipped with the worker, token ids with each
//! tokenizer's padding.
//!
//! SDXL has two text encoders with the same BPE vocabulary but different pad tokens, and the
//! embeddings depend on every pad id (the encoders see all 77 positions; no attention mask).
//! Both tokenizer files are compiled into the binary so a worker never downloads them and can't
//! pick up a different revision. The ids are what diffusers' SDXL pipeline produces with
//! `padding="max_length", max_length=77, truncation=True`:
//! `[BOS, ≤75 tokens, EOS, pad…]`, pad 49407 for the first tokenizer and 0 (`!`) for the second.
//!
//! Longer prompts, emphasis `(word:1.2)` and `BREAK` are handled by [`emphasis`] (the A1111
//! syntax) and [`chunks`] (75-token chunks by ComfyUI's or A1111's rules).

pub mod chunks;
pub mod emphasis;

pub use chunks::{Chunk, PromptChunks, MAX_CHUNKS, MAX_PROMPT_BYTES};
pub use emphasis::{parse_attention, Piece};

use tokenizers::Tokenizer;

/// Sequence length of both CLIP text encoders.
pub const MAX_LENGTH: usize = 77;
/// Tokens that fit between BOS and EOS.
pub const MAX_CONTENT_TOKENS: usize = MAX_LENGTH - 2;
/// `<|startoftext|>`.
pub const BOS_ID: u32 = 49406;
/// `<|endoftext|>`; also the first tokenizer's pad id.
pub const EOS_ID: u32 = 49407;
/// Pad id of the first tokenizer (CLIP ViT-L).
pub const PAD_ID_TE1: u32 = EOS_ID;
/// Pad id of the second tokenizer (OpenCLIP bigG): `!`, id 0.
pub const PAD_ID_TE2: u32 = 0;

static TOKENIZER_1_JSON: &[u8] = include_bytes!("../../assets/tokenizers/tokenizer/tokenizer.json");
static TOKENIZER_2_JSON: &[u8] =
    include_bytes!("../../assets/tokenizers/tokenizer_2/tokenizer.json");

/// How `(word:1.2)` emphasis changes the embeddings, and which program's rules split a long
/// prompt into chunks ([`chunks`]). The syntax itself is A1111's in every mode.
///
/// Serialised as the job API's `prompt_weighting` value ([`Emphasis::LABELS`]'s first name
/// per mode: `comfy`, `a1111`, `a1111_no_norm`, `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Emphasis {
    /// ComfyUI: `z = (z − z_empty)·w + z_empty` per weighted token; ComfyUI's chunking.
    #[default]
    Comfy,
    /// A1111 "Original": `z·w`, then each chunk rescaled to its unweighted mean; A1111's
    /// chunking (comma backtracking).
    A1111,
    /// A1111 "No norm": `z·w` without the rescale; A1111's chunking.
    A1111NoNorm,
    /// A1111 "Ignore": the syntax is parsed (brackets removed) but weights are ignored;
    /// A1111's chunking.
    #[serde(rename = "none")]
    Ignore,
}

impl Emphasis {
    /// The names the job API accepts in `prompt_weighting` (compared case-insensitively),
    /// in the order error messages list them. `none` is A1111's "None" option, [`Ignore`]
    /// here.
    ///
    /// [`Ignore`]: Emphasis::Ignore
    pub const LABELS: &'static [(&'static str, Emphasis)] = &[
        ("comfy", Emphasis::Comfy),
        ("comfyui", Emphasis::Comfy),
        ("a1111", Emphasis::A1111),
        ("a1111_no_norm", Emphasis::A1111NoNorm),
        ("none", Emphasis::Ignore),
    ];

    /// A1111's name of the mode for an infotext's `Emphasis:` field; `None` for ComfyUI's
    /// mode, which A1111 does not have (the field is then left out).
    pub fn infotext_label(self) -> Option<&'static str> {
        match self {
            Emphasis::Comfy => None,
            Emphasis::A1111 => Some("Original"),
            Emphasis::A1111NoNorm => Some("No norm"),
            Emphasis::Ignore => Some("None"),
        }
    }

    /// The mode's request name (its first name in [`Emphasis::LABELS`]).
    pub fn name(self) -> &'static str {
        match self {
            Emphasis::Comfy => "comfy",
            Emphasis::A1111 => "a1111",
            Emphasis::A1111NoNorm => "a1111_no_norm",
            Emphasis::Ignore => "none",
        }
    }
}

impl std::str::FromStr for Emphasis {
    type Err = String;

    /// Looks `name` up in [`Emphasis::LABELS`], case-insensitively; the error lists them.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let key = name.trim().to_ascii_lowercase();
        Self::LABELS
            .iter()
            .find(|(n, _)| *n == key)
            .map(|&(_, e)| e)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::LABELS.iter().map(|(n, _)| *n).collect();
                format!("unknown emphasis {name:?}; allowed: {}", names.join(", "))
            })
    }
}

/// Errors of the prompt module.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// An embedded tokenizer file failed to parse (a build problem, reported rather than
    /// panicking so the worker can say so at startup).
    #[error("loading embedded tokenizer `{name}`: {message}")]
    Load { name: &'static str, message: String },
    /// The tokenizer rejected the text.
    #[error("tokenizing with `{name}`: {message}")]
    Encode { name: &'static str, message: String },
    /// More 75-token chunks than [`MAX_CHUNKS`].
    #[error("{chunks} chunks of 75 tokens is too long: at most {max} are allowed")]
    TooLong { chunks: usize, max: usize },
    /// More text than [`chunks::MAX_PROMPT_BYTES`].
    #[error("{bytes} bytes is too long: at most {max} are allowed")]
    TooManyBytes { bytes: usize, max: usize },
}

/// One CLIP BPE tokenizer and its pad id.
#[derive(Clone)]
pub struct ClipTokenizer {
    name: &'static str,
    inner: Tokenizer,
    pad_id: u32,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("name", &self.name)
            .field("pad_id", &self.pad_id)
            .finish_non_exhaustive()
    }
}

impl ClipTokenizer {
    fn from_json(name: &'static str, json: &[u8], pad_id: u32) -> Result<Self, PromptError> {
        let inner = Tokenizer::from_bytes(json).map_err(|e| PromptError::Load {
            name,
            message: e.to_string(),
        })?;
        Ok(Self {
            name,
            inner,
            pad_id,
        })
    }

    /// The id used after EOS to fill 77 positions.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// All BPE tokens of `text`, without BOS/EOS and without truncation (the input for
    /// long-prompt chunking). Like the Hugging Face tokenizer diffusers uses, the second
    /// tokenizer splits `!` out as its special pad token (id 0) instead of BPE-merging it.
    pub fn content_ids(&self, text: &str) -> Result<Vec<u32>, PromptError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| PromptError::Encode {
                name: self.name,
                message: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// `[BOS, every token, EOS]` with no truncation or padding (`tokenizer(text).input_ids`).
    pub fn encode_untruncated(&self, text: &str) -> Result<Vec<u32>, PromptError> {
        let content = self.content_ids(text)?;
        let mut ids = Vec::with_capacity(content.len() + 2);
        ids.push(BOS_ID);
        ids.extend(content);
        ids.push(EOS_ID);
        Ok(ids)
    }

    /// Exactly 77 ids: BOS, the first 75 tokens, EOS, then pad ids. Longer prompts are cut
    /// (their EOS is kept), as diffusers does; see [`ClipTokenizer::content_ids`] for the rest.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, PromptError> {
        Ok(self.frame(&self.content_ids(text)?))
    }

    /// Frames up to 75 content tokens as one 77-id window (longer input is truncated).
    pub fn frame(&self, content: &[u32]) -> Vec<u32> {
        let take = content.len().min(MAX_CONTENT_TOKENS);
        let mut ids = Vec::with_capacity(MAX_LENGTH);
        ids.push(BOS_ID);
        ids.extend_from_slice(&content[..take]);
        ids.push(EOS_ID);
        ids.resize(MAX_LENGTH, self.pad_id);
        ids
    }
}

/// Token ids of one text for both SDXL text encoders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIds {
    /// For `conditioner.embedders.0` (CLIP ViT-L), padded with 49407.
    pub te1: Vec<u32>,
    /// For `conditioner.embedders.1` (OpenCLIP bigG), padded with 0.
    pub te2: Vec<u32>,
}

/// Both SDXL tokenizers, loaded from the copies embedded in the binary.
#[derive(Debug, Clone)]
pub struct ClipTokenizers {
    /// The first text encoder's tokenizer.
    pub te1: ClipTokenizer,
    /// The second text encoder's tokenizer.
    pub te2: ClipTokenizer,
}

impl ClipTokenizers {
    /// Parses the embedded tokenizer files, both at once on two threads: each is a 2 MB JSON
    /// vocabulary plus BPE merges, which takes a noticeable part of a second. Do it once at
    /// startup, ideally while the weights load.
    pub fn load() -> Result<Self, PromptError> {
        let (te1, te2) = std::thread::scope(|scope| {
            let second = scope
                .spawn(|| ClipTokenizer::from_json("tokenizer_2", TOKENIZER_2_JSON, PAD_ID_TE2));
            let first = ClipTokenizer::from_json("tokenizer", TOKENIZER_1_JSON, PAD_ID_TE1);
            let second = second.join().unwrap_or_else(|_| {
                Err(PromptError::Load {
                    name: "tokenizer_2",
                    message: "loader thread panicked".to_string(),
                })
            });
            (first, second)
        });
        Ok(Self {
            te1: te1?,
            te2: te2?,
        })
    }

    /// 77 ids per encoder for `text` (truncated to 75 tokens, as diffusers).
    pub fn encode(&self, text: &str) -> Result<TokenIds, PromptError> {
        Ok(TokenIds {
            te1: self.te1.encode(text)?,
            te2: self.te2.encode(text)?,
        })
    }

    /// `[BOS, all tokens, EOS]` per encoder, not truncated or padded.
    pub fn encode_untruncated(&self, text: &str) -> Result<TokenIds, PromptError> {
        Ok(TokenIds {
            te1: self.te1.encode_untruncated(text)?,
            te2: self.te2.encode_untruncated(text)?,
        })
    }

    /// Whether `text` has more than 75 tokens for either encoder and so loses its tail under
    /// truncation (callers may warn). The counts can differ: `!!!` is one token for the first
    /// tokenizer and three for the second.
    pub fn is_truncated(&self, text: &str) -> Result<bool, PromptError> {
        Ok(self.te1.content_ids(text)?.len() > MAX_CONTENT_TOKENS
            || self.te2.content_ids(text)?.len() > MAX_CONTENT_TOKENS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_prompt_is_bos_eos_pad() {
        let t = ClipTokenizers::load().unwrap();
        let ids = t.encode("").unwrap();
        assert_eq!(&ids.te1[..3], &[BOS_ID, EOS_ID, EOS_ID]);
        assert_eq!(&ids.te2[..3], &[BOS_ID, EOS_ID, 0]);
        assert_eq!(ids.te1.len(), MAX_LENGTH);
        assert_eq!(ids.te2.len(), MAX_LENGTH);
    }

    #[test]
    fn emphasis_names_round_trip() {
        for &(name, e) in Emphasis::LABELS {
            assert_eq!(name.to_uppercase().parse::<Emphasis>(), Ok(e));
            assert_eq!(e.name().parse::<Emphasis>(), Ok(e));
        }
        assert_eq!(Emphasis::Ignore.name(), "none");
        assert_eq!(Emphasis::A1111NoNorm.infotext_label(), Some("No norm"));
        assert!("Original".parse::<Emphasis>().is_err());
    }

    #[test]
    fn truncation_keeps_eos() {
        let t = ClipTokenizers::load().unwrap();
        let long = "cat ".repeat(200);
        let ids = t.encode(&long).unwrap();
        assert_eq!(ids.te1[76], EOS_ID);
        assert_eq!(ids.te2[76], EOS_ID);
        assert!(t.is_truncated(&long).unwrap());
        assert!(!t.is_truncated("a cat").unwrap());
    }
}
