//! Building blocks of the SDXL UNet in the native LDM/sgm layout: resnets (`in_layers`,
//! `emb_layers`, `out_layers`, `skip_connection`), spatial transformers (`norm`, `proj_in`,
//! `transformer_blocks.N`, `proj_out`), down- and upsamplers, and the checked tensor loader
//! they share. Every block is built from dimensions the caller inferred from the file and
//! checks each tensor's shape against them, so a damaged file fails at load with the tensor's
//! full name instead of deep inside a matmul.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder};

use super::attention::sdpa;
use super::common_te_vae::full_name;
use super::error::ModelError;

/// GroupNorm groups of every SDXL UNet norm (not visible in the file; the same in every
/// SD-family UNet).
pub const NORM_GROUPS: usize = 32;
/// Epsilon of the resnet norms and the final `out.0` norm.
pub const RESNET_NORM_EPS: f64 = 1e-5;
/// Epsilon of the transformer input norm (`…1.norm`); diffusers' `Transformer2DModel` uses 1e-6.
pub const TRANSFORMER_NORM_EPS: f64 = 1e-6;
/// Epsilon of the LayerNorms inside transformer blocks.
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// Loads `name` as `dtype`, checking that it exists and has exactly `shape`. Errors name the
/// tensor with its full path (`model.diffusion_model.input_blocks.4.1.proj_in.weight`).
pub(crate) fn load(
    vb: &VarBuilder,
    name: &str,
    shape: &[usize],
    dtype: DType,
) -> Result<Tensor, ModelError> {
    if !vb.contains_tensor(name) {
        return Err(ModelError::MissingTensor {
            name: full_name(vb, name),
        });
    }
    let t = vb.get_unchecked_dtype(name, dtype).map_err(|e| {
        ModelError::Unsupported(format!("cannot load tensor `{}`: {e}", full_name(vb, name)))
    })?;
    if t.dims() != shape {
        return Err(ModelError::BadShape {
            name: full_name(vb, name),
            expected: format!("{shape:?}"),
            found: t.dims().to_vec(),
        });
    }
    Ok(t)
}

/// `Linear` from `{name}.weight` `[out, in]` (and `{name}.bias` `[out]` when `bias`).
pub(crate) fn linear(
    vb: &VarBuilder,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
) -> Result<Linear, ModelError> {
    let dtype = vb.dtype();
    let w = load(vb, "weight", &[out_dim, in_dim], dtype)?;
    let b = if bias {
        Some(load(vb, "bias", &[out_dim], dtype)?)
    } else {
        None
    };
    Ok(Linear::new(w, b))
}

/// Square conv with bias from `{name}.weight` `[out, in, k, k]`.
pub(crate) fn conv2d(
    vb: &VarBuilder,
    in_ch: usize,
    out_ch: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv2d, ModelError> {
    let dtype = vb.dtype();
    let w = load(vb, "weight", &[out_ch, in_ch, kernel, kernel], dtype)?;
    let b = load(vb, "bias", &[out_ch], dtype)?;
    let cfg = Conv2dConfig {
        padding,
        stride,
        dilation: 1,
        groups: 1,
        cudnn_fwd_algo: None,
    };
    Ok(Conv2d::new(w, Some(b), cfg))
}

/// GroupNorm that always normalises in f32 (mean, variance and the affine transform) and can
/// fuse the SiLU that follows every UNet norm but the transformer's. Half-precision variance
/// over thousands of elements is too coarse, and PyTorch's half GroupNorm accumulates in f32 too.
#[derive(Debug, Clone)]
pub(crate) struct GroupNorm {
    /// `[C, 1]` in f32, broadcast over `[B, C, H·W]`.
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub(crate) fn new(vb: &VarBuilder, channels: usize, eps: f64) -> Result<Self, ModelError> {
        if !channels.is_multiple_of(NORM_GROUPS) {
            return Err(ModelError::Unsupported(format!(
                "`{}` normalises {channels} channels, not a multiple of {NORM_GROUPS} groups",
                full_name(vb, "weight")
            )));
        }
        let weight = load(vb, "weight", &[channels], DType::F32)?.reshape((channels, 1))?;
        let bias = load(vb, "bias", &[channels], DType::F32)?.reshape((channels, 1))?;
        Ok(Self {
            weight,
            bias,
            groups: NORM_GROUPS,
            eps,
        })
    }

    /// Normalises `x` `[B, C, H, W]`; applies SiLU after the affine transform when `silu`.
    pub(crate) fn forward(&self, x: &Tensor, silu: bool) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let (b, c, h, w) = x.dims4()?;
        let x = x.to_dtype(DType::F32)?;
        let grouped = x.reshape((b, self.groups, (c / self.groups) * h * w))?;
        let mean = grouped.mean_keepdim(2)?;
        let centred = grouped.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(2)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let y = normed
            .reshape((b, c, h * w))?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?;
        let y = if silu { y.silu()? } else { y };
        y.reshape((b, c, h, w))?.to_dtype(dtype)
    }
}

/// LayerNorm with weight and bias in the model dtype. Uses candle's fused kernel (f32
/// accumulation) on contiguous input.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub(crate) fn new(vb: &VarBuilder, dim: usize) -> Result<Self, ModelError> {
        let dtype = vb.dtype();
        Ok(Self {
            weight: load(vb, "weight", &[dim], dtype)?,
            bias: load(vb, "bias", &[dim], dtype)?,
            eps: LAYER_NORM_EPS as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps)
    }
}

/// LDM `ResBlock`: `in_layers` (norm, SiLU, 3x3 conv), `emb_layers` (SiLU, linear) added per
/// channel, `out_layers` (norm, SiLU, dropout, 3x3 conv), plus the input (through the 1x1
/// `skip_connection` when the channel count changes).
#[derive(Debug, Clone)]
pub(crate) struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    skip: Option<Conv2d>,
}

impl ResBlock {
    pub(crate) fn new(
        vb: &VarBuilder,
        in_ch: usize,
        out_ch: usize,
        emb_dim: usize,
    ) -> Result<Self, ModelError> {
        let skip = if in_ch != out_ch {
            Some(conv2d(&vb.pp("skip_connection"), in_ch, out_ch, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNorm::new(&vb.pp("in_layers.0"), in_ch, RESNET_NORM_EPS)?,
            conv1: conv2d(&vb.pp("in_layers.2"), in_ch, out_ch, 3, 1, 1)?,
            emb_proj: linear(&vb.pp("emb_layers.1"), emb_dim, out_ch, true)?,
            norm2: GroupNorm::new(&vb.pp("out_layers.0"), out_ch, RESNET_NORM_EPS)?,
            conv2: conv2d(&vb.pp("out_layers.3"), out_ch, out_ch, 3, 1, 1)?,
            skip,
        })
    }

    /// `x` `[B, Cin, H, W]`; `emb_silu` = SiLU(time + label embedding) `[B, E]`, shared by
    /// every resnet of a forward pass.
    pub(crate) fn forward(&self, x: &Tensor, emb_silu: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x, true)?)?;
        let e = self
            .emb_proj
            .forward(emb_silu)?
            .unsqueeze(2)?
            .unsqueeze(3)?;
        let h = h.broadcast_add(&e)?;
        let h = self.conv2.forward(&self.norm2.forward(&h, true)?)?;
        match &self.skip {
            Some(skip) => skip.forward(x)? + h,
            None => x + h,
        }
    }
}

/// Multi-head attention (`to_q`, `to_k`, `to_v` without bias, `to_out.0` with bias).
#[derive(Debug, Clone)]
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(
        vb: &VarBuilder,
        dim: usize,
        kv_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self, ModelError> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: linear(&vb.pp("to_q"), dim, inner, false)?,
            to_k: linear(&vb.pp("to_k"), kv_dim, inner, false)?,
            to_v: linear(&vb.pp("to_v"), kv_dim, inner, false)?,
            to_out: linear(&vb.pp("to_out.0"), inner, dim, true)?,
            heads,
            head_dim,
        })
    }

    /// `x` `[B, L, dim]`, `kv` `[B, Lk, kv_dim]` (= `x` for self-attention).
    fn forward(&self, x: &Tensor, kv: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let lk = kv.dim(1)?;
        let split = |t: Tensor, len: usize| {
            t.reshape((b, len, self.heads, self.head_dim))?
                .transpose(1, 2)
        };
        let q = split(self.to_q.forward(x)?, l)?;
        let k = split(self.to_k.forward(kv)?, lk)?;
        let v = split(self.to_v.forward(kv)?, lk)?;
        let o = sdpa(&q, &k, &v, None, 1.0 / (self.head_dim as f64).sqrt())?;
        let o = o
            .transpose(1, 2)?
            .reshape((b, l, self.heads * self.head_dim))?;
        self.to_out.forward(&o)
    }
}

/// diffusers `BasicTransformerBlock` (pre-norm): self-attention, cross-attention on the text
/// context, GEGLU feed-forward, each with a residual.
#[derive(Debug, Clone)]
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_proj: Linear,
    ff_out: Linear,
    ff_inner: usize,
}

impl TransformerBlock {
    fn new(vb: &VarBuilder, spec: &AttentionSpec) -> Result<Self, ModelError> {
        let c = spec.channels;
        let heads = spec.heads();
        Ok(Self {
            norm1: LayerNorm::new(&vb.pp("norm1"), c)?,
            attn1: Attention::new(&vb.pp("attn1"), c, c, heads, spec.head_dim)?,
            norm2: LayerNorm::new(&vb.pp("norm2"), c)?,
            attn2: Attention::new(&vb.pp("attn2"), c, spec.context_dim, heads, spec.head_dim)?,
            norm3: LayerNorm::new(&vb.pp("norm3"), c)?,
            ff_proj: linear(&vb.pp("ff.net.0.proj"), c, 2 * spec.ff_inner, true)?,
            ff_out: linear(&vb.pp("ff.net.2"), spec.ff_inner, c, true)?,
            ff_inner: spec.ff_inner,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.norm1.forward(x)?;
        let x = (self.attn1.forward(&h, &h)? + x)?;
        let h = self.norm2.forward(&x)?;
        let x = (self.attn2.forward(&h, context)? + x)?;
        let h = self.ff_proj.forward(&self.norm3.forward(&x)?)?;
        // GEGLU: the first half is the value, the second half goes through exact (erf) GELU.
        let value = h.narrow(D::Minus1, 0, self.ff_inner)?;
        let gate = h
            .narrow(D::Minus1, self.ff_inner, self.ff_inner)?
            .gelu_erf()?;
        self.ff_out.forward(&(value * gate)?)? + x
    }
}

/// Dimensions of one spatial transformer (`input_blocks.N.1`, `middle_block.1`,
/// `output_blocks.N.1`), all read from the file except the head dim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionSpec {
    /// Channels of the feature map and width of the token stream (`proj_in` is `[C, C]`).
    pub channels: usize,
    /// Number of `transformer_blocks.N`.
    pub depth: usize,
    /// Width of each attention head (64 in the SDXL family).
    pub head_dim: usize,
    /// Text context width (`attn2.to_k` in-features).
    pub context_dim: usize,
    /// GEGLU inner width (`ff.net.2` in-features; `ff.net.0.proj` has twice as many outputs).
    pub ff_inner: usize,
}

impl AttentionSpec {
    /// Heads = channels / head dim.
    pub fn heads(&self) -> usize {
        self.channels / self.head_dim
    }
}

/// LDM `SpatialTransformer` with linear `proj_in`/`proj_out` (SD 2.x / SDXL form).
#[derive(Debug, Clone)]
pub(crate) struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<TransformerBlock>,
    proj_out: Linear,
}

impl SpatialTransformer {
    pub(crate) fn new(vb: &VarBuilder, spec: &AttentionSpec) -> Result<Self, ModelError> {
        let c = spec.channels;
        let blocks = (0..spec.depth)
            .map(|i| TransformerBlock::new(&vb.pp(format!("transformer_blocks.{i}")), spec))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            norm: GroupNorm::new(&vb.pp("norm"), c, TRANSFORMER_NORM_EPS)?,
            proj_in: linear(&vb.pp("proj_in"), c, c, true)?,
            blocks,
            proj_out: linear(&vb.pp("proj_out"), c, c, true)?,
        })
    }

    /// `x` `[B, C, H, W]`, `context` `[B, L, ctx]`.
    pub(crate) fn forward(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = self
            .norm
            .forward(x, false)?
            .flatten_from(2)?
            .transpose(1, 2)?
            .contiguous()?;
        let mut t = self.proj_in.forward(&tokens)?;
        for block in &self.blocks {
            t = block.forward(&t, context)?;
        }
        let t = self.proj_out.forward(&t)?;
        let t = t.transpose(1, 2)?.reshape((b, c, h, w))?;
        t + x
    }
}

/// `input_blocks.N.0.op`: 3x3 conv, stride 2, padding 1.
pub(crate) fn downsampler(vb: &VarBuilder, channels: usize) -> Result<Conv2d, ModelError> {
    conv2d(&vb.pp("op"), channels, channels, 3, 2, 1)
}

/// `output_blocks.N.{1,2}.conv`: nearest-neighbour upsampling, then a 3x3 conv.
#[derive(Debug, Clone)]
pub(crate) struct Upsampler {
    conv: Conv2d,
}

impl Upsampler {
    pub(crate) fn new(vb: &VarBuilder, channels: usize) -> Result<Self, ModelError> {
        Ok(Self {
            conv: conv2d(&vb.pp("conv"), channels, channels, 3, 1, 1)?,
        })
    }

    /// Upsamples to `(h, w)`: twice the input size, or the size of the next skip when the
    /// latent size is not a multiple of the total downsampling (diffusers' `upsample_size`).
    pub(crate) fn forward(&self, x: &Tensor, h: usize, w: usize) -> candle_core::Result<Tensor> {
        self.conv.forward(&x.upsample_nearest2d(h, w)?)
    }
}
