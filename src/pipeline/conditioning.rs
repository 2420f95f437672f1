//! Text conditioning: prompts → the embeddings, pooled embedding and size ids the UNet is
//! conditioned on, with long prompts chunked and `(word:1.2)` emphasis applied as ComfyUI or
//! A1111 do (see [`crate::prompt`]).

use candle_core::{DType, Device, Tensor};

use super::{GenerateRequest, PipelineError, SdxlPipeline};
use crate::prompt::{Chunk, Emphasis, PromptChunks, PromptError, MAX_CHUNKS, MAX_LENGTH};

/// Text conditioning of one request, exactly the tensors diffusers hands to the UNet.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// `[1, 77·chunks, te1 + te2 width]` (one chunk per 75 prompt tokens).
    pub prompt_embeds: Tensor,
    /// `[1, te2 projection]`.
    pub pooled: Tensor,
    /// Present when CFG runs: zeros for a `None` negative prompt.
    pub negative_prompt_embeds: Option<Tensor>,
    pub negative_pooled: Option<Tensor>,
    /// `[1, 6]`: original (h, w), crop (0, 0), target (h, w).
    pub time_ids: Tensor,
}

impl SdxlPipeline {
    /// The hidden state `clip_skip` selects, counted from the end as A1111 and Civitai count
    /// it (2 = penultimate = SDXL's default, 1 = the last layer without the final LayerNorm,
    /// as ComfyUI's SDXL `clip_layer(-1)`; `k` = Hugging Face `hidden_states[-k]`, so
    /// diffusers' `clip_skip = n` is `n + 2`). Both encoders use the same count.
    fn clip_layers(&self, clip_skip: u32) -> Result<usize, PipelineError> {
        // `hidden_states` has one entry per layer plus the embeddings.
        let max = self.te1.config().layers.min(self.te2.config().layers) + 1;
        match usize::try_from(clip_skip) {
            Ok(k) if (1..=max).contains(&k) => Ok(k),
            _ => Err(PipelineError::InvalidRequest(format!(
                "clip_skip {clip_skip} is not allowed: use 1 to {max} (2 = penultimate layer, the SDXL default; 1 = last layer)"
            ))),
        }
    }

    /// Tokenizes one prompt field into chunks; an over-long prompt is a request error that
    /// names the field.
    fn tokenize_field(
        &self,
        field: &str,
        text: &str,
        emphasis: Emphasis,
    ) -> Result<PromptChunks, PipelineError> {
        self.tokenizers
            .tokenize_weighted(text, emphasis)
            .map_err(|e| match e {
                PromptError::TooLong { .. } | PromptError::TooManyBytes { .. } => {
                    PipelineError::InvalidRequest(format!("{field} is too long: {e}"))
                }
                other => PipelineError::Prompt(format!("{field}: {other}")),
            })
    }

    /// Encodes one tokenized prompt with both encoders at `layers` from the end: `(hidden
    /// states of both encoders concatenated on the feature axis, chunks concatenated on the
    /// sequence axis [1, 77·chunks, C], te2's pooled projection of the FIRST chunk [1, P])`,
    /// both f32, with the emphasis weights applied (see [`apply_emphasis`]). All chunks go
    /// through each encoder as one batch, with the empty prompt appended when ComfyUI
    /// weighting needs it.
    fn encode_text(
        &self,
        prompt: &PromptChunks,
        layers: usize,
        emphasis: Emphasis,
    ) -> Result<(Tensor, Tensor), PipelineError> {
        let k = prompt.chunks.len();
        let weighted = prompt.is_weighted() && emphasis != Emphasis::Ignore;
        let with_empty = weighted && emphasis == Emphasis::Comfy;
        let _span = tracing::debug_span!("encode_text", chunks = k, weighted, layers).entered();
        let empty = with_empty.then(|| self.tokenizers.empty_chunk());
        let rows: Vec<&Chunk> = prompt.chunks.iter().chain(empty.as_ref()).collect();
        let n = rows.len();
        let ids1: Vec<u32> = rows.iter().flat_map(|c| c.te1.iter().copied()).collect();
        let ids2: Vec<u32> = rows.iter().flat_map(|c| c.te2.iter().copied()).collect();
        let ids1 = Tensor::from_vec(ids1, (n, MAX_LENGTH), &self.device)?;
        let ids2 = Tensor::from_vec(ids2, (n, MAX_LENGTH), &self.device)?;
        let h1 = self.te1.forward(&ids1, layers, false)?;
        let h2 = self.te2.forward(&ids2, layers, true)?;
        let pooled = h2
            .pooled
            .ok_or_else(|| PipelineError::Internal("te2 returned no pooled output".into()))?
            .narrow(0, 0, 1)?
            .to_dtype(DType::F32)?;
        let h1 = h1.hidden.to_dtype(DType::F32)?;
        let h2 = h2.hidden.to_dtype(DType::F32)?;
        let (h1, h2) = if weighted {
            (
                apply_emphasis(&h1, prompt, emphasis)?,
                apply_emphasis(&h2, prompt, emphasis)?,
            )
        } else {
            (h1.narrow(0, 0, k)?, h2.narrow(0, 0, k)?)
        };
        let embeds = Tensor::cat(&[h1, h2], 2)?;
        let width = embeds.dim(2)?;
        Ok((embeds.reshape((1, k * MAX_LENGTH, width))?, pooled))
    }

    /// The conditioning for `req`: diffusers' for plain prompts of ≤ 75 tokens, long and
    /// weighted prompts as ComfyUI/A1111 (see [`crate::prompt::chunks`]). With CFG the
    /// negative side gets the same length as the positive one (the UNet runs both in one
    /// batch): zeros for a `None` negative prompt (diffusers' `force_zeros_for_empty_prompt`);
    /// with different chunk counts both are repeated to the least common multiple of the
    /// counts, as ComfyUI's `CONDCrossAttn.concat` does. Attention over a context repeated
    /// whole equals attention over it once, so each side acts as if run alone, which is
    /// also what A1111 does by default (`pad_cond_uncond` off: separate UNet calls). Only
    /// when that multiple exceeds [`MAX_CHUNKS`] is the shorter side padded with
    /// empty-prompt chunks instead (A1111's opt-in "Pad conds"), which changes its result.
    pub fn encode(&self, req: &GenerateRequest) -> Result<Conditioning, PipelineError> {
        let layers = self.clip_layers(req.clip_skip)?;
        let mut pos = self.tokenize_field("prompt", &req.prompt, req.emphasis)?;
        let mut neg = match (&req.negative_prompt, req.cfg()) {
            (Some(text), true) => {
                Some(self.tokenize_field("negative_prompt", text, req.emphasis)?)
            }
            _ => None,
        };
        // How many times to repeat each side's embeddings to a common length.
        let mut repeat = (1, 1);
        if let Some(neg) = neg.as_mut() {
            let (kp, kn) = (pos.chunks.len(), neg.chunks.len());
            let common = kp / gcd(kp, kn) * kn;
            if kp != kn {
                if common <= MAX_CHUNKS {
                    repeat = (common / kp, common / kn);
                } else {
                    pos.pad_with_empty_chunks(kn, &self.tokenizers);
                    neg.pad_with_empty_chunks(kp, &self.tokenizers);
                }
            }
        }
        let (mut prompt_embeds, pooled) = self.encode_text(&pos, layers, req.emphasis)?;
        let (negative_prompt_embeds, negative_pooled) = if !req.cfg() {
            (None, None)
        } else {
            match &neg {
                None => (
                    Some(prompt_embeds.zeros_like()?),
                    Some(pooled.zeros_like()?),
                ),
                Some(neg) => {
                    let (e, p) = self.encode_text(neg, layers, req.emphasis)?;
                    prompt_embeds = repeat_sequence(&prompt_embeds, repeat.0)?;
                    (Some(repeat_sequence(&e, repeat.1)?), Some(p))
                }
            }
        };
        let time_ids = self.time_ids(req.width, req.height)?;
        Ok(Conditioning {
            prompt_embeds,
            pooled,
            negative_prompt_embeds,
            negative_pooled,
            time_ids,
        })
    }

    /// SDXL's size conditioning `[1, 6]`: original (h, w), crop (0, 0), target (h, w).
    pub(super) fn time_ids(&self, width: u32, height: u32) -> Result<Tensor, PipelineError> {
        let (h, w) = (height as f32, width as f32);
        Ok(Tensor::new(&[[h, w, 0.0, 0.0, h, w]], &self.device)?)
    }
}

/// Greatest common divisor (chunk counts of the two prompts).
fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `[1, L, C]` repeated `times` along the sequence axis.
fn repeat_sequence(t: &Tensor, times: usize) -> Result<Tensor, PipelineError> {
    if times <= 1 {
        return Ok(t.clone());
    }
    Ok(Tensor::cat(&vec![t; times], 1)?)
}

/// Applies the chunks' token weights to one encoder's hidden states `[n, 77, C]` (rows
/// beyond the prompt's chunks: the empty prompt, for ComfyUI's rule), returning
/// `[chunks, 77, C]`. Done on the host in f32: the tensors are small and the arithmetic
/// then follows the reference formulas operation for operation.
///
/// * `Comfy`: `z = (z − z_empty)·w + z_empty`, only at positions with `w ≠ 1` (ComfyUI
///   `ClipTokenWeightEncoder.encode_token_weights`);
/// * `A1111`: `z·w`, then each chunk scaled so its mean over all positions and features
///   equals the unweighted mean (`EmphasisOriginal`, per encoder since A1111 runs each
///   SDXL embedder separately). A chunk whose weighted mean is 0 is left unscaled instead
///   of dividing by zero;
/// * `A1111NoNorm`: `z·w`;
/// * `Ignore`: unchanged.
pub(crate) fn apply_emphasis(
    hidden: &Tensor,
    prompt: &PromptChunks,
    emphasis: Emphasis,
) -> Result<Tensor, PipelineError> {
    let k = prompt.chunks.len();
    let z = hidden.to_device(&Device::Cpu)?.to_vec3::<f32>()?;
    let empty = z.get(k);
    let mut out = Vec::with_capacity(k);
    for (chunk, rows) in prompt.chunks.iter().zip(z.iter()) {
        let mut rows = rows.clone();
        match emphasis {
            Emphasis::Ignore => {}
            Emphasis::Comfy => {
                let empty = empty.ok_or_else(|| {
                    PipelineError::Internal("ComfyUI weighting without the empty prompt".into())
                })?;
                for ((row, e), &w) in rows.iter_mut().zip(empty).zip(&chunk.weights) {
                    if w != 1.0 {
                        for (v, &ev) in row.iter_mut().zip(e) {
                            *v = (*v - ev) * w + ev;
                        }
                    }
                }
            }
            Emphasis::A1111 | Emphasis::A1111NoNorm => {
                if chunk.is_weighted() {
                    let before = mean(&rows);
                    for (row, &w) in rows.iter_mut().zip(&chunk.weights) {
                        row.iter_mut().for_each(|v| *v *= w);
                    }
                    let after = mean(&rows);
                    let ratio = (before / after) as f32;
                    if emphasis == Emphasis::A1111 && after != 0.0 && ratio.is_finite() {
                        rows.iter_mut()
                            .for_each(|row| row.iter_mut().for_each(|v| *v *= ratio));
                    }
                }
            }
        }
        out.push(rows);
    }
    let (l, c) = (hidden.dim(1)?, hidden.dim(2)?);
    let flat: Vec<f32> = out.into_iter().flatten().flatten().collect();
    Ok(Tensor::from_vec(flat, (k, l, c), hidden.device())?)
}

/// Mean of all values, accumulated in f64.
fn mean(rows: &[Vec<f32>]) -> f64 {
    let n: usize = rows.iter().map(Vec::len).sum();
    let sum: f64 = rows.iter().flatten().map(|&v| f64::from(v)).sum();
    sum / n.max(1) as f64
}
