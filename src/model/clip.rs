//! The two SDXL text encoders in their native single-file layouts:
//!
//! * CLIP ViT-L (`conditioner.embedders.0.transformer.`, SD 1.x `cond_stage_model.transformer.`)
//!   with Hugging Face `text_model.*` names and `quick_gelu`;
//! * OpenCLIP ViT-bigG (`conditioner.embedders.1.model.`, refiner `conditioner.embedders.0.model.`)
//!   with OpenCLIP names: fused `attn.in_proj_weight` (q, k, v rows), exact erf GELU and a
//!   `text_projection` stored `[width, proj]` and applied as `pooled @ text_projection`.
//!
//! Both are the same pre-LN transformer with a causal mask and no padding mask; only names,
//! activation and the projection differ, so one implementation serves both. Every size is read
//! from the tensor shapes ([`ClipTextConfig::infer`]).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::attention::{causal_mask, sdpa};
use super::common_te_vae::{tensor, LayerNorm, Linear};
use super::error::{shape_of, ModelError};
use crate::weights::{count_indexed, with_dot, ShapeMap};

/// Attention head width of every CLIP text encoder SDXL uses (ViT-L 768/12, bigG 1280/20).
pub const CLIP_HEAD_DIM: usize = 64;
/// LayerNorm epsilon of both encoders (not stored in the file).
pub const CLIP_LAYER_NORM_EPS: f64 = 1e-5;
/// SDXL's default: the penultimate layer's output (diffusers `hidden_states[-2]`).
pub const SDXL_LAYERS_FROM_END: usize = 2;

/// Which naming scheme (and therefore which original model family) an encoder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipKind {
    /// OpenAI CLIP (ViT-L/14) with Hugging Face `text_model.*` names; `quick_gelu`.
    OpenAiClip,
    /// OpenCLIP (ViT-bigG/14, ViT-H/14) names; exact GELU; optional `text_projection`.
    OpenClip,
}

/// MLP activation of a text encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x·sigmoid(1.702·x)` (OpenAI CLIP).
    QuickGelu,
    /// Exact erf GELU (OpenCLIP `nn.GELU`). The tanh approximation is measurably different.
    GeluErf,
}

/// Structure of one text encoder, read from tensor shapes only.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    pub kind: ClipKind,
    pub vocab_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_width: usize,
    pub max_positions: usize,
    /// Output width of `text_projection` (OpenCLIP only, when present).
    pub projection_dim: Option<usize>,
    pub activation: ClipActivation,
    pub layer_norm_eps: f64,
}

/// Tensor names of one layout, relative to the encoder's prefix.
struct Names {
    token_embedding: &'static str,
    position_embedding: &'static str,
    layers: &'static str,
    final_norm: &'static str,
    mlp_in: &'static str,
}

impl ClipKind {
    fn names(self) -> Names {
        match self {
            ClipKind::OpenAiClip => Names {
                token_embedding: "text_model.embeddings.token_embedding.weight",
                position_embedding: "text_model.embeddings.position_embedding.weight",
                layers: "text_model.encoder.layers.",
                final_norm: "text_model.final_layer_norm",
                mlp_in: "mlp.fc1.weight",
            },
            ClipKind::OpenClip => Names {
                token_embedding: "token_embedding.weight",
                position_embedding: "positional_embedding",
                layers: "transformer.resblocks.",
                final_norm: "ln_final",
                mlp_in: "mlp.c_fc.weight",
            },
        }
    }
}

impl ClipTextConfig {
    /// Reads the encoder structure under `prefix` (with or without the trailing dot, e.g.
    /// `conditioner.embedders.1.model.`) from the shape map of the file.
    pub fn infer(shapes: &ShapeMap, prefix: &str, kind: ClipKind) -> Result<Self, ModelError> {
        let p = with_dot(prefix);
        let n = kind.names();
        let tok = shape_of(shapes, &format!("{p}{}", n.token_embedding))?;
        let [vocab_size, width] = *tok else {
            return Err(bad_rank(
                &format!("{p}{}", n.token_embedding),
                tok,
                "[vocab, width]",
            ));
        };
        let pos_name = format!("{p}{}", n.position_embedding);
        let pos = shape_of(shapes, &pos_name)?;
        let max_positions = match *pos {
            [positions, w] if w == width => positions,
            _ => return Err(bad_rank(&pos_name, pos, &format!("[positions, {width}]"))),
        };
        let layers_prefix = format!("{p}{}", n.layers);
        let layers = count_indexed(shapes, &layers_prefix);
        if layers == 0 {
            return Err(ModelError::MissingTensor {
                name: format!("{layers_prefix}0.*"),
            });
        }
        let mlp_name = format!("{layers_prefix}0.{}", n.mlp_in);
        let mlp = shape_of(shapes, &mlp_name)?;
        let mlp_width = match *mlp {
            [m, w] if w == width => m,
            _ => return Err(bad_rank(&mlp_name, mlp, &format!("[mlp, {width}]"))),
        };
        if width == 0 || width % CLIP_HEAD_DIM != 0 {
            return Err(ModelError::Unsupported(format!(
                "text encoder `{p}` width {width} is not a multiple of the head width {CLIP_HEAD_DIM}"
            )));
        }
        let (projection_dim, activation) = match kind {
            ClipKind::OpenAiClip => (None, ClipActivation::QuickGelu),
            ClipKind::OpenClip => {
                let name = format!("{p}text_projection");
                let proj = match shapes.get(&name) {
                    None => None,
                    Some(s) => match s.as_slice() {
                        [w, d] if *w == width => Some(*d),
                        _ => return Err(bad_rank(&name, s, &format!("[{width}, proj]"))),
                    },
                };
                (proj, ClipActivation::GeluErf)
            }
        };
        Ok(Self {
            kind,
            vocab_size,
            width,
            layers,
            heads: width / CLIP_HEAD_DIM,
            mlp_width,
            max_positions,
            projection_dim,
            activation,
            layer_norm_eps: CLIP_LAYER_NORM_EPS,
        })
    }
}

fn bad_rank(name: &str, found: &[usize], expected: &str) -> ModelError {
    ModelError::BadShape {
        name: name.to_string(),
        expected: expected.to_string(),
        found: found.to_vec(),
    }
}

#[derive(Debug, Clone)]
struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl SelfAttention {
    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l, w) = x.dims3()?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, l, self.heads, w / self.heads))?
                .transpose(1, 2)
        };
        let q = split(self.q.forward(x)?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let scale = 1.0 / ((w / self.heads) as f64).sqrt();
        let o = sdpa(&q, &k, &v, Some(mask), scale)?;
        let o = o.transpose(1, 2)?.reshape((b, l, w))?;
        self.out.forward(&o)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    ln1: LayerNorm,
    attn: SelfAttention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Layer {
    fn load(vb: &VarBuilder<'_>, cfg: &ClipTextConfig) -> Result<Self, ModelError> {
        let (w, m, eps) = (cfg.width, cfg.mlp_width, cfg.layer_norm_eps);
        match cfg.kind {
            ClipKind::OpenAiClip => Ok(Self {
                ln1: LayerNorm::load(vb, "layer_norm1", w, eps)?,
                attn: SelfAttention {
                    q: Linear::load(vb, "self_attn.q_proj", w, w)?,
                    k: Linear::load(vb, "self_attn.k_proj", w, w)?,
                    v: Linear::load(vb, "self_attn.v_proj", w, w)?,
                    out: Linear::load(vb, "self_attn.out_proj", w, w)?,
                    heads: cfg.heads,
                },
                ln2: LayerNorm::load(vb, "layer_norm2", w, eps)?,
                fc1: Linear::load(vb, "mlp.fc1", w, m)?,
                fc2: Linear::load(vb, "mlp.fc2", m, w)?,
            }),
            ClipKind::OpenClip => {
                // Fused projection: rows [0, W) are q, [W, 2W) k, [2W, 3W) v.
                let in_w = tensor(vb, &[3 * w, w], "attn.in_proj_weight")?;
                let in_b = tensor(vb, &[3 * w], "attn.in_proj_bias")?;
                let part = |i: usize| -> Result<Linear, ModelError> {
                    Ok(Linear::new(
                        in_w.narrow(0, i * w, w)?,
                        Some(in_b.narrow(0, i * w, w)?),
                    ))
                };
                Ok(Self {
                    ln1: LayerNorm::load(vb, "ln_1", w, eps)?,
                    attn: SelfAttention {
                        q: part(0)?,
                        k: part(1)?,
                        v: part(2)?,
                        out: Linear::load(vb, "attn.out_proj", w, w)?,
                        heads: cfg.heads,
                    },
                    ln2: LayerNorm::load(vb, "ln_2", w, eps)?,
                    fc1: Linear::load(vb, "mlp.c_fc", w, m)?,
                    fc2: Linear::load(vb, "mlp.c_proj", m, w)?,
                })
            }
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        act: ClipActivation,
    ) -> candle_core::Result<Tensor> {
        let h = (x + self.attn.forward(&self.ln1.forward(x)?, mask)?)?;
        let m = self.fc1.forward(&self.ln2.forward(&h)?)?;
        let m = match act {
            ClipActivation::QuickGelu => (&m * candle_nn::ops::sigmoid(&(&m * 1.702)?)?)?,
            ClipActivation::GeluErf => m.gelu_erf()?,
        };
        h + self.fc2.forward(&m)?
    }
}

/// Result of one text-encoder pass.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// `[B, L, width]`: the output of the selected layer, without the final LayerNorm.
    pub hidden: Tensor,
    /// `[B, projection_dim]` (or `[B, width]` without a projection): the final-LayerNormed
    /// last layer at the EOS position, projected. `None` unless requested.
    pub pooled: Option<Tensor>,
}

/// A loaded CLIP / OpenCLIP text encoder.
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    cfg: ClipTextConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    text_projection: Option<Tensor>,
    dtype: DType,
    device: Device,
}

impl ClipTextModel {
    /// Builds the encoder from `vb`, which must already point at the encoder's prefix
    /// (e.g. `vb.pp("conditioner.embedders.1.model")`). Weights take `vb`'s dtype and device.
    pub fn load(vb: VarBuilder<'_>, cfg: &ClipTextConfig) -> Result<Self, ModelError> {
        let _span =
            tracing::debug_span!("load_clip", kind = ?cfg.kind, layers = cfg.layers).entered();
        let n = cfg.kind.names();
        let token_embedding = tensor(&vb, &[cfg.vocab_size, cfg.width], n.token_embedding)?;
        let position_embedding =
            tensor(&vb, &[cfg.max_positions, cfg.width], n.position_embedding)?;
        let layers = (0..cfg.layers)
            .map(|i| Layer::load(&vb.pp(format!("{}{i}", n.layers)), cfg))
            .collect::<Result<Vec<_>, _>>()?;
        let final_norm = LayerNorm::load(&vb, n.final_norm, cfg.width, cfg.layer_norm_eps)?;
        let text_projection = match cfg.projection_dim {
            Some(p) => Some(tensor(&vb, &[cfg.width, p], "text_projection")?),
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            token_embedding,
            position_embedding,
            layers,
            final_norm,
            text_projection,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Encodes token ids `[B, L]` (u32 or i64, `L ≤ max_positions`).
    ///
    /// `layers_from_end` selects the hidden state returned, as Hugging Face's
    /// `hidden_states[-layers_from_end]`: 1 = the last layer's output, 2 = the penultimate
    /// one (SDXL's default), … up to `layers + 1` = the token and position embeddings before
    /// any layer (what diffusers' `clip_skip` reaches on shallow encoders). The final
    /// LayerNorm is never applied to `hidden`. Layers after the selected one are only run
    /// when `want_pooled` is set (the pooled output needs the last layer).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        layers_from_end: usize,
        want_pooled: bool,
    ) -> Result<ClipTextOutput, ModelError> {
        let n = self.cfg.layers;
        if layers_from_end == 0 || layers_from_end > n + 1 {
            return Err(ModelError::Unsupported(format!(
                "layers_from_end {layers_from_end} is out of range 1..={} for this text encoder",
                n + 1
            )));
        }
        let ids_host = host_ids(input_ids)?;
        let (b, l) = (ids_host.len(), ids_host.first().map_or(0, Vec::len));
        if l == 0 || l > self.cfg.max_positions {
            return Err(ModelError::Unsupported(format!(
                "token sequence length {l} is out of range 1..={}",
                self.cfg.max_positions
            )));
        }
        if let Some(bad) = ids_host
            .iter()
            .flatten()
            .find(|&&t| t >= self.cfg.vocab_size as u64)
        {
            return Err(ModelError::Unsupported(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.cfg.vocab_size
            )));
        }
        let flat: Vec<u32> = ids_host.iter().flatten().map(|&t| t as u32).collect();
        let ids = Tensor::from_vec(flat, b * l, &self.device)?;
        let tok = self.token_embedding.index_select(&ids, 0)?;
        let pos = self.position_embedding.narrow(0, 0, l)?;
        let mut x = tok.reshape((b, l, self.cfg.width))?.broadcast_add(&pos)?;
        let mask = causal_mask(l, &self.device)?;

        let keep_after = n + 1 - layers_from_end; // number of layers whose output is `hidden`
        let run_layers = if want_pooled { n } else { keep_after };
        let mut hidden = (keep_after == 0).then(|| x.clone());
        for (i, layer) in self.layers.iter().take(run_layers).enumerate() {
            x = layer.forward(&x, &mask, self.cfg.activation)?;
            if i + 1 == keep_after {
                hidden = Some(x.clone());
            }
        }
        let hidden = hidden.ok_or_else(|| {
            ModelError::Unsupported(format!("layer {keep_after} of {n} was not computed"))
        })?;
        let pooled = if want_pooled {
            Some(self.pool(&x, &ids_host)?)
        } else {
            None
        };
        Ok(ClipTextOutput { hidden, pooled })
    }

    /// `final_norm(last)[eos] (@ text_projection)`, EOS = first position of the largest id,
    /// as Hugging Face's legacy argmax (the EOS id 49407 is the largest in the vocabulary).
    fn pool(&self, last: &Tensor, ids: &[Vec<u64>]) -> candle_core::Result<Tensor> {
        let rows = ids
            .iter()
            .enumerate()
            .map(|(bi, row)| {
                let eos = first_argmax(row);
                last.narrow(0, bi, 1)?.narrow(1, eos, 1)?.squeeze(1)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = self.final_norm.forward(&Tensor::cat(&rows, 0)?)?;
        match &self.text_projection {
            Some(p) => pooled.matmul(p),
            None => Ok(pooled),
        }
    }
}

/// SDXL's text conditioning for one batch of prompts, as diffusers' `encode_prompt`:
/// `concat(te1 hidden, te2 hidden)` on the feature axis (`[B, L, w1 + w2]`) with both hidden
/// states taken `layers_from_end` from the end ([`SDXL_LAYERS_FROM_END`] by default), and
/// te2's pooled, projected EOS output (`[B, proj]`). `ids1`/`ids2` come from the two
/// tokenizers (they differ in the pad token).
pub fn sdxl_text_conditioning(
    te1: &ClipTextModel,
    te2: &ClipTextModel,
    ids1: &Tensor,
    ids2: &Tensor,
    layers_from_end: usize,
) -> Result<(Tensor, Tensor), ModelError> {
    let _span = tracing::debug_span!("sdxl_text_conditioning").entered();
    let o1 = te1.forward(ids1, layers_from_end, false)?;
    let o2 = te2.forward(ids2, layers_from_end, true)?;
    let pooled = o2.pooled.ok_or_else(|| {
        ModelError::Unsupported("the second text encoder produced no pooled output".into())
    })?;
    let hidden2 = o2.hidden.to_dtype(o1.hidden.dtype())?;
    let embeds = Tensor::cat(&[&o1.hidden, &hidden2], 2)?;
    Ok((embeds, pooled))
}

fn first_argmax(row: &[u64]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Token ids as host integers; accepts the integer dtypes a tokenizer output may come in.
fn host_ids(ids: &Tensor) -> Result<Vec<Vec<u64>>, ModelError> {
    if ids.rank() != 2 {
        return Err(ModelError::Unsupported(format!(
            "input ids must be [batch, tokens], got shape {:?}",
            ids.dims()
        )));
    }
    let ids = ids.to_device(&Device::Cpu)?;
    let rows: Vec<Vec<u64>> = match ids.dtype() {
        DType::U32 => ids
            .to_vec2::<u32>()?
            .into_iter()
            .map(|r| r.into_iter().map(u64::from).collect())
            .collect(),
        DType::U8 => ids
            .to_vec2::<u8>()?
            .into_iter()
            .map(|r| r.into_iter().map(u64::from).collect())
            .collect(),
        DType::I64 => {
            let v = ids.to_vec2::<i64>()?;
            let mut out = Vec::with_capacity(v.len());
            for r in v {
                let row = r
                    .into_iter()
                    .map(|t| {
                        u64::try_from(t)
                            .map_err(|_| ModelError::Unsupported(format!("negative token id {t}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                out.push(row);
            }
            out
        }
        other => {
            return Err(ModelError::Unsupported(format!(
                "input ids must be u32 or i64, got {other:?}"
            )))
        }
    };
    Ok(rows)
}
