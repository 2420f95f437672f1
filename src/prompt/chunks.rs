//! Long and weighted prompts: token ids in chunks of 75 (framed as 77 with BOS, EOS and
//! padding) with one weight per position, for both SDXL text encoders.
//!
//! Three ways to get there, chosen by [`Emphasis`]:
//!
//! * **Plain prompts** (no emphasis syntax, no `BREAK`, ≤ 75 tokens for both tokenizers)
//!   are tokenized exactly as diffusers does, each tokenizer on the whole text, so such
//!   prompts keep giving diffusers' embeddings bit for bit. (Only here does the second
//!   tokenizer's `!` quirk survive; ComfyUI and A1111 use one CLIP tokenizer for both.)
//! * **ComfyUI rules** (`Emphasis::Comfy`, `comfy/sd1_clip.py` `tokenize_with_weights`):
//!   every weighted text is split into words at spaces (newlines count as spaces) and each
//!   word tokenized on its own (as one token when `word</w>` is in the vocabulary). A word that does not fit in the current chunk moves whole
//!   to the next one, unless it has 8 or more tokens: such a word fills the chunk and
//!   continues in the next.
//! * **A1111 rules** (the A1111 modes and `Ignore`, `modules/sd_hijack_clip.py`
//!   `tokenize_line`): every weighted text is tokenized as a whole. When a chunk is full and
//!   the last comma is at most 20 tokens back, the tokens after that comma move to the next
//!   chunk (`comma_padding_backtrack`, default 20).
//!
//! `BREAK` closes the current chunk in both rule sets (A1111 semantics, including an empty
//! chunk for a leading `BREAK`; ComfyUI has no `BREAK`). Both encoders get the same content
//! ids (the first tokenizer's, as ComfyUI and A1111 use one vocabulary for both), so their
//! chunk counts always agree; only the padding id after EOS differs.
//!
//! The emphasis syntax is A1111's in every mode ([`super::emphasis`]). ComfyUI's own parser
//! differs in three ways users may notice: it has no `[text]`, an explicit `(text:1.3)`
//! inside other brackets replaces their weight instead of multiplying it, and it escapes
//! only `\(` and `\)`.

use super::emphasis::{parse_attention, Piece};
use super::{
    ClipTokenizers, Emphasis, PromptError, BOS_ID, EOS_ID, MAX_CONTENT_TOKENS, MAX_LENGTH,
};

/// A1111's `comma_padding_backtrack` default: how far back a comma may be and still pull
/// the tokens after it into the next chunk.
pub const COMMA_BACKTRACK: usize = 20;
/// ComfyUI's `max_word_length`: words with at least this many tokens may be split across
/// chunks; shorter words move whole.
pub const COMFY_MAX_WORD_TOKENS: usize = 8;
/// Most chunks of 75 tokens a prompt may have (2 400 tokens). Each chunk lengthens the
/// UNet's cross-attention context by 77; the limit keeps one request from taking the
/// worker's memory.
pub const MAX_CHUNKS: usize = 32;
/// Longest prompt text accepted, in bytes: well above what [`MAX_CHUNKS`] chunks of text
/// take, and low enough that the emphasis parser, quadratic in the number of brackets like
/// A1111's, stays in milliseconds.
pub const MAX_PROMPT_BYTES: usize = 32 * 1024;
/// `,</w>` in the CLIP vocabulary.
pub const COMMA_ID: u32 = 267;

/// One 77-position window of a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Ids for the first encoder: BOS, ≤ 75 tokens, EOS, then EOS as padding.
    pub te1: Vec<u32>,
    /// Ids for the second encoder: the same, padded with id 0 after EOS.
    pub te2: Vec<u32>,
    /// Weight of each of the 77 positions (1.0 for BOS, EOS and padding).
    pub weights: Vec<f32>,
}

impl Chunk {
    /// Frames ≤ 75 weighted content tokens (shared by both encoders).
    fn frame(content: &[(u32, f32)], pad_te1: u32, pad_te2: u32) -> Self {
        let mut te1 = Vec::with_capacity(MAX_LENGTH);
        let mut weights = Vec::with_capacity(MAX_LENGTH);
        te1.push(BOS_ID);
        weights.push(1.0);
        for &(id, w) in content.iter().take(MAX_CONTENT_TOKENS) {
            te1.push(id);
            weights.push(w);
        }
        te1.push(EOS_ID);
        let mut te2 = te1.clone();
        te1.resize(MAX_LENGTH, pad_te1);
        te2.resize(MAX_LENGTH, pad_te2);
        weights.resize(MAX_LENGTH, 1.0);
        Self { te1, te2, weights }
    }

    /// Whether any position has a weight other than 1.
    pub fn is_weighted(&self) -> bool {
        self.weights.iter().any(|&w| w != 1.0)
    }
}

/// A prompt as chunks for both encoders.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptChunks {
    /// At least one chunk.
    pub chunks: Vec<Chunk>,
    /// Tokenized exactly as diffusers (one chunk, each tokenizer on the whole text, all
    /// weights 1); see the module documentation.
    pub diffusers_plain: bool,
}

impl PromptChunks {
    /// Whether any token has a weight other than 1.
    pub fn is_weighted(&self) -> bool {
        self.chunks.iter().any(Chunk::is_weighted)
    }

    /// Appends empty-prompt chunks up to `n` chunks (A1111's `empty_chunk` padding of the
    /// shorter of prompt and negative prompt).
    pub fn pad_with_empty_chunks(&mut self, n: usize, tokenizers: &ClipTokenizers) {
        while self.chunks.len() < n {
            self.chunks.push(tokenizers.empty_chunk());
        }
    }
}

impl ClipTokenizers {
    /// The empty prompt as one chunk: what ComfyUI subtracts in its weighting and what A1111
    /// pads with.
    pub fn empty_chunk(&self) -> Chunk {
        Chunk::frame(&[], self.te1.pad_id, self.te2.pad_id)
    }

    /// Parses emphasis and `BREAK` in `text` and splits it into chunks by the rules that go
    /// with `emphasis` (module documentation). Fails only on tokenizer errors and on prompts
    /// longer than [`MAX_CHUNKS`] chunks or [`MAX_PROMPT_BYTES`].
    pub fn tokenize_weighted(
        &self,
        text: &str,
        emphasis: Emphasis,
    ) -> Result<PromptChunks, PromptError> {
        if text.len() > MAX_PROMPT_BYTES {
            return Err(PromptError::TooManyBytes {
                bytes: text.len(),
                max: MAX_PROMPT_BYTES,
            });
        }
        let pieces = parse_attention(text);
        if let [Piece::Text { text, weight }] = pieces.as_slice() {
            if *weight == 1.0 {
                let c1 = self.te1.content_ids(text)?;
                let c2 = self.te2.content_ids(text)?;
                if c1.len() <= MAX_CONTENT_TOKENS && c2.len() <= MAX_CONTENT_TOKENS {
                    let chunk = Chunk {
                        te1: self.te1.frame(&c1),
                        te2: self.te2.frame(&c2),
                        weights: vec![1.0; MAX_LENGTH],
                    };
                    return Ok(PromptChunks {
                        chunks: vec![chunk],
                        diffusers_plain: true,
                    });
                }
            }
        }
        let contents = match emphasis {
            Emphasis::Comfy => self.comfy_chunks(&pieces)?,
            Emphasis::A1111 | Emphasis::A1111NoNorm | Emphasis::Ignore => {
                self.a1111_chunks(&pieces)?
            }
        };
        if contents.len() > MAX_CHUNKS {
            return Err(PromptError::TooLong {
                chunks: contents.len(),
                max: MAX_CHUNKS,
            });
        }
        let ignore = emphasis == Emphasis::Ignore;
        let chunks = contents
            .iter()
            .map(|content| {
                let mut chunk = Chunk::frame(content, self.te1.pad_id, self.te2.pad_id);
                if ignore {
                    chunk.weights.fill(1.0);
                }
                chunk
            })
            .collect();
        Ok(PromptChunks {
            chunks,
            diffusers_plain: false,
        })
    }

    /// Token ids of one space-separated word as ComfyUI makes them: the word's own vocabulary
    /// entry when there is one (`word</w>`), else the BPE tokens of the word.
    fn comfy_word_ids(&self, word: &str) -> Result<Vec<u32>, PromptError> {
        match self.te1.inner.token_to_id(&format!("{word}</w>")) {
            Some(id) => Ok(vec![id]),
            None => self.te1.content_ids(word),
        }
    }

    /// ComfyUI's chunking (content tokens of each chunk, without BOS/EOS).
    fn comfy_chunks(&self, pieces: &[Piece]) -> Result<Vec<Vec<(u32, f32)>>, PromptError> {
        let mut done: Vec<Vec<(u32, f32)>> = Vec::new();
        let mut cur: Vec<(u32, f32)> = Vec::new();
        for piece in pieces {
            let (text, weight) = match piece {
                Piece::Break => {
                    done.push(std::mem::take(&mut cur));
                    continue;
                }
                Piece::Text { text, weight } => (text, *weight as f32),
            };
            let spaced = text.replace('\n', " ");
            for word in spaced.split(' ').filter(|w| !w.is_empty()) {
                let ids = self.comfy_word_ids(word)?;
                let large = ids.len() >= COMFY_MAX_WORD_TOKENS;
                let mut group: &[u32] = &ids;
                while !group.is_empty() {
                    if cur.len() + group.len() > MAX_CONTENT_TOKENS {
                        if large {
                            let take = MAX_CONTENT_TOKENS - cur.len();
                            cur.extend(group[..take].iter().map(|&id| (id, weight)));
                            group = &group[take..];
                        }
                        done.push(std::mem::take(&mut cur));
                    } else {
                        cur.extend(group.iter().map(|&id| (id, weight)));
                        group = &[];
                    }
                }
                if done.len() > MAX_CHUNKS {
                    break; // already too long; the caller reports it
                }
            }
        }
        if !cur.is_empty() || done.is_empty() {
            done.push(cur);
        }
        Ok(done)
    }

    /// A1111's chunking with comma backtracking (content tokens of each chunk).
    fn a1111_chunks(&self, pieces: &[Piece]) -> Result<Vec<Vec<(u32, f32)>>, PromptError> {
        let mut done: Vec<Vec<(u32, f32)>> = Vec::new();
        let mut cur: Vec<(u32, f32)> = Vec::new();
        let mut last_comma: Option<usize> = None;
        for piece in pieces {
            let (text, weight) = match piece {
                Piece::Break => {
                    done.push(std::mem::take(&mut cur));
                    last_comma = None;
                    continue;
                }
                Piece::Text { text, weight } => (text, *weight as f32),
            };
            for id in self.te1.content_ids(text)? {
                if id == COMMA_ID {
                    last_comma = Some(cur.len());
                } else if let Some(comma) = last_comma {
                    if cur.len() == MAX_CONTENT_TOKENS && cur.len() - comma <= COMMA_BACKTRACK {
                        let moved = cur.split_off(comma + 1);
                        done.push(std::mem::replace(&mut cur, moved));
                        last_comma = None;
                    }
                }
                if cur.len() == MAX_CONTENT_TOKENS {
                    done.push(std::mem::take(&mut cur));
                    last_comma = None;
                }
                cur.push((id, weight));
            }
            if done.len() > MAX_CHUNKS {
                break; // already too long; the caller reports it
            }
        }
        if !cur.is_empty() || done.is_empty() {
            done.push(cur);
        }
        Ok(done)
    }
}
