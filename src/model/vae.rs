//! The SDXL VAE (`first_stage_model.`) in the LDM layout: encoder, decoder, `quant_conv` and
//! `post_quant_conv`. Every size is read from the tensor shapes ([`VaeConfig::infer`]).
//!
//! The VAE carries its own dtype, independent of the UNet's: the original SDXL VAE overflows in
//! f16 (NaN / black images), so a pipeline typically builds it from `vb.to_dtype(F32)` (or
//! BF16) while the rest runs in f16. Inputs are cast to the VAE dtype and outputs returned in
//! f32.
//!
//! A diffusers-layout VAE file is read through [`super::vae_names`], which renames its tensors
//! into these names.

use candle_core::{DType, Module, Tensor};
use candle_nn::{Conv2d, GroupNorm, VarBuilder};

use super::attention::sdpa;
use super::common_te_vae::{conv2d, group_norm, tensor_any, Linear};
use super::error::{shape_of, ModelError};
use crate::weights::{count_indexed, with_dot, ShapeMap};

/// SDXL's latent scaling factor (diffusers `vae.config.scaling_factor`; not stored in the
/// file). The UNet works on `latents = vae_latents * factor`; decode `latents / factor`.
pub const SDXL_VAE_SCALING_FACTOR: f64 = 0.13025;
/// GroupNorm groups and epsilon used everywhere in the VAE.
pub const VAE_NORM_GROUPS: usize = 32;
pub const VAE_NORM_EPS: f64 = 1e-6;

/// Structure of the VAE, read from tensor shapes only.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    /// Image channels in (encoder) and out (decoder); 3 for RGB.
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    /// Channels per resolution level, highest resolution first (`down.0` / `up.0`).
    pub block_out_channels: Vec<usize>,
    /// Resnets per level: 2 in the encoder, 3 in the decoder for SD/SDXL.
    pub encoder_layers_per_block: usize,
    pub decoder_layers_per_block: usize,
    pub has_quant_conv: bool,
    pub has_post_quant_conv: bool,
    pub norm_groups: usize,
    pub norm_eps: f64,
    pub scaling_factor: f64,
}

impl VaeConfig {
    /// Reads the VAE structure under `prefix` (e.g. `first_stage_model.`, or `""` for a
    /// stand-alone LDM VAE file) from the shape map.
    pub fn infer(shapes: &ShapeMap, prefix: &str) -> Result<Self, ModelError> {
        let p = with_dot(prefix);
        let conv4 = |name: &str| -> Result<[usize; 4], ModelError> {
            let full = format!("{p}{name}");
            match *shape_of(shapes, &full)? {
                [a, b, c, d] => Ok([a, b, c, d]),
                ref s => Err(ModelError::BadShape {
                    name: full,
                    expected: "[out, in, k, k]".into(),
                    found: s.to_vec(),
                }),
            }
        };
        let [_, in_channels, _, _] = conv4("encoder.conv_in.weight")?;
        let levels = count_indexed(shapes, &format!("{p}encoder.down."));
        if levels == 0 {
            return Err(ModelError::MissingTensor {
                name: format!("{p}encoder.down.0.*"),
            });
        }
        let mut block_out_channels = Vec::with_capacity(levels);
        for i in 0..levels {
            block_out_channels.push(conv4(&format!("encoder.down.{i}.block.0.conv1.weight"))?[0]);
        }
        let dec_levels = count_indexed(shapes, &format!("{p}decoder.up."));
        if dec_levels != levels {
            return Err(ModelError::Unsupported(format!(
                "VAE `{p}` has {levels} encoder levels but {dec_levels} decoder levels"
            )));
        }
        for (i, &ch) in block_out_channels.iter().enumerate() {
            let name = format!("decoder.up.{i}.block.0.conv1.weight");
            let found = conv4(&name)?;
            if found[0] != ch {
                return Err(ModelError::BadShape {
                    name: format!("{p}{name}"),
                    expected: format!("[{ch}, _, 3, 3] (encoder level {i} width)"),
                    found: found.to_vec(),
                });
            }
        }
        let encoder_layers_per_block = count_indexed(shapes, &format!("{p}encoder.down.0.block."));
        let decoder_layers_per_block = count_indexed(shapes, &format!("{p}decoder.up.0.block."));
        let [_, latent_channels, _, _] = conv4("decoder.conv_in.weight")?;
        let [out_channels, _, _, _] = conv4("decoder.conv_out.weight")?;
        Ok(Self {
            in_channels,
            out_channels,
            latent_channels,
            block_out_channels,
            encoder_layers_per_block,
            decoder_layers_per_block,
            has_quant_conv: shapes.contains_key(&format!("{p}quant_conv.weight")),
            has_post_quant_conv: shapes.contains_key(&format!("{p}post_quant_conv.weight")),
            norm_groups: VAE_NORM_GROUPS,
            norm_eps: VAE_NORM_EPS,
            scaling_factor: SDXL_VAE_SCALING_FACTOR,
        })
    }
}

#[derive(Debug, Clone)]
struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn load(
        vb: &VarBuilder<'_>,
        cfg: &VaeConfig,
        cin: usize,
        cout: usize,
    ) -> Result<Self, ModelError> {
        let (g, eps) = (cfg.norm_groups, cfg.norm_eps);
        let shortcut = if cin != cout {
            Some(conv2d(vb, "nin_shortcut", cin, cout, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            norm1: group_norm(vb, "norm1", g, cin, eps)?,
            conv1: conv2d(vb, "conv1", cin, cout, 3, 1, 1)?,
            norm2: group_norm(vb, "norm2", g, cout, eps)?,
            conv2: conv2d(vb, "conv2", cout, cout, 3, 1, 1)?,
            shortcut,
        })
    }

    /// The resnets `block.0` … `block.{n-1}` of one level: the first maps `*cin` channels to
    /// `cout`, the others keep `cout`; `*cin` is left at the level's output width.
    fn load_level(
        lvb: &VarBuilder<'_>,
        cfg: &VaeConfig,
        n: usize,
        cin: &mut usize,
        cout: usize,
    ) -> Result<Vec<Self>, ModelError> {
        let mut blocks = Vec::with_capacity(n);
        for j in 0..n {
            blocks.push(Self::load(&lvb.pp(format!("block.{j}")), cfg, *cin, cout)?);
            *cin = cout;
        }
        Ok(blocks)
    }

    /// Runs the resnets of one level in order.
    fn forward_level(blocks: &[Self], x: Tensor) -> candle_core::Result<Tensor> {
        blocks.iter().try_fold(x, |h, b| b.forward(&h))
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        match &self.shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// Single-head self-attention over all pixels (`mid.attn_1`).
#[derive(Debug, Clone)]
struct AttnBlock {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    proj_out: Linear,
}

impl AttnBlock {
    fn load(vb: &VarBuilder<'_>, cfg: &VaeConfig, c: usize) -> Result<Self, ModelError> {
        // LDM stores 1x1 convs [C, C, 1, 1]; a linear [C, C] (diffusers) is the same map.
        let lin = |name: &str| -> Result<Linear, ModelError> {
            let w = tensor_any(vb, &[&[c, c, 1, 1], &[c, c]], &format!("{name}.weight"))?;
            let b = tensor_any(vb, &[&[c]], &format!("{name}.bias"))?;
            Ok(Linear::new(w.reshape((c, c))?, Some(b)))
        };
        Ok(Self {
            norm: group_norm(vb, "norm", cfg.norm_groups, c, cfg.norm_eps)?,
            q: lin("q")?,
            k: lin("k")?,
            v: lin("v")?,
            proj_out: lin("proj_out")?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let t = self
            .norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.q.forward(&t)?.unsqueeze(1)?;
        let k = self.k.forward(&t)?.unsqueeze(1)?;
        let v = self.v.forward(&t)?.unsqueeze(1)?;
        let o = chunked_attention(&q, &k, &v, 1.0 / (c as f64).sqrt(), MAX_SCORE_ELEMENTS)?
            .squeeze(1)?;
        let o = self.proj_out.forward(&o)?;
        let o = o.transpose(1, 2)?.reshape((b, c, h, w))?;
        x + o
    }
}

/// Upper bound on the elements of one attention score matrix. The VAE attends over every
/// pixel of the latent: 16384 tokens at 1024², 65536 at 2048² (a 16 GiB f32 matrix), so the
/// queries are processed in row blocks; softmax rows are independent, so the result is the same.
const MAX_SCORE_ELEMENTS: usize = 1 << 28;

/// `sdpa` over `q` `[B, 1, N, C]` in blocks of query rows so that no score matrix exceeds
/// `max_scores` elements.
fn chunked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    max_scores: usize,
) -> candle_core::Result<Tensor> {
    let (b, _, n, _) = q.dims4()?;
    let keys = k.dim(2)?;
    let rows = (max_scores / (b * keys).max(1)).clamp(1, n);
    if rows >= n {
        return sdpa(q, k, v, None, scale);
    }
    let mut parts = Vec::with_capacity(n.div_ceil(rows));
    let mut start = 0;
    while start < n {
        let len = rows.min(n - start);
        parts.push(sdpa(&q.narrow(2, start, len)?, k, v, None, scale)?);
        start += len;
    }
    Tensor::cat(&parts, 2)
}

#[derive(Debug, Clone)]
struct Mid {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl Mid {
    fn load(vb: &VarBuilder<'_>, cfg: &VaeConfig, c: usize) -> Result<Self, ModelError> {
        Ok(Self {
            block_1: ResnetBlock::load(&vb.pp("block_1"), cfg, c, c)?,
            attn_1: AttnBlock::load(&vb.pp("attn_1"), cfg, c)?,
            block_2: ResnetBlock::load(&vb.pp("block_2"), cfg, c, c)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.block_2
            .forward(&self.attn_1.forward(&self.block_1.forward(x)?)?)
    }
}

#[derive(Debug, Clone)]
struct Encoder {
    conv_in: Conv2d,
    /// Per level: resnets, then the stride-2 downsample conv (all levels but the last).
    down: Vec<(Vec<ResnetBlock>, Option<Conv2d>)>,
    mid: Mid,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn load(vb: &VarBuilder<'_>, cfg: &VaeConfig) -> Result<Self, ModelError> {
        let ch = &cfg.block_out_channels;
        let last = ch.len() - 1;
        let conv_in = conv2d(vb, "conv_in", cfg.in_channels, ch[0], 3, 1, 1)?;
        let mut down = Vec::with_capacity(ch.len());
        let mut cin = ch[0];
        for (i, &cout) in ch.iter().enumerate() {
            let lvb = vb.pp(format!("down.{i}"));
            let blocks =
                ResnetBlock::load_level(&lvb, cfg, cfg.encoder_layers_per_block, &mut cin, cout)?;
            // Padding is applied by hand (right/bottom only), so the conv itself has none.
            let ds = if i != last {
                Some(conv2d(&lvb, "downsample.conv", cout, cout, 3, 2, 0)?)
            } else {
                None
            };
            down.push((blocks, ds));
        }
        // Mean and log-variance ("double_z"), as in every SD/SDXL VAE.
        let z_out = 2 * cfg.latent_channels;
        Ok(Self {
            conv_in,
            down,
            mid: Mid::load(&vb.pp("mid"), cfg, ch[last])?,
            norm_out: group_norm(vb, "norm_out", cfg.norm_groups, ch[last], cfg.norm_eps)?,
            conv_out: conv2d(vb, "conv_out", ch[last], z_out, 3, 1, 1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for (blocks, ds) in &self.down {
            h = ResnetBlock::forward_level(blocks, h)?;
            if let Some(conv) = ds {
                h = conv.forward(&h.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?)?;
            }
        }
        let h = self.mid.forward(&h)?;
        self.conv_out.forward(&self.norm_out.forward(&h)?.silu()?)
    }
}

#[derive(Debug, Clone)]
struct Decoder {
    conv_in: Conv2d,
    mid: Mid,
    /// Indexed like the file (`up.0` = highest resolution); run from the last to the first.
    up: Vec<(Vec<ResnetBlock>, Option<Conv2d>)>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn load(vb: &VarBuilder<'_>, cfg: &VaeConfig) -> Result<Self, ModelError> {
        let ch = &cfg.block_out_channels;
        let last = ch.len() - 1;
        let conv_in = conv2d(vb, "conv_in", cfg.latent_channels, ch[last], 3, 1, 1)?;
        let mid = Mid::load(&vb.pp("mid"), cfg, ch[last])?;
        let mut up: Vec<(Vec<ResnetBlock>, Option<Conv2d>)> = Vec::with_capacity(ch.len());
        let mut cin = ch[last];
        for i in (0..ch.len()).rev() {
            let cout = ch[i];
            let lvb = vb.pp(format!("up.{i}"));
            let blocks =
                ResnetBlock::load_level(&lvb, cfg, cfg.decoder_layers_per_block, &mut cin, cout)?;
            let us = if i != 0 {
                Some(conv2d(&lvb, "upsample.conv", cout, cout, 3, 1, 1)?)
            } else {
                None
            };
            up.push((blocks, us));
        }
        up.reverse();
        Ok(Self {
            conv_in,
            mid,
            up,
            norm_out: group_norm(vb, "norm_out", cfg.norm_groups, ch[0], cfg.norm_eps)?,
            conv_out: conv2d(vb, "conv_out", ch[0], cfg.out_channels, 3, 1, 1)?,
        })
    }

    fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.mid.forward(&self.conv_in.forward(z)?)?;
        for (blocks, us) in self.up.iter().rev() {
            h = ResnetBlock::forward_level(blocks, h)?;
            if let Some(conv) = us {
                let (_, _, hh, ww) = h.dims4()?;
                h = conv.forward(&h.upsample_nearest2d(2 * hh, 2 * ww)?)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward(&h)?.silu()?)
    }
}

/// The encoder's output: a diagonal Gaussian over latents (before the scaling factor).
#[derive(Debug, Clone)]
pub struct LatentDist {
    /// `[B, latent_channels, H/8, W/8]`, f32.
    pub mean: Tensor,
    /// Log-variance, clamped to [-30, 20] as diffusers does, f32.
    pub logvar: Tensor,
}

impl LatentDist {
    pub fn std(&self) -> candle_core::Result<Tensor> {
        (&self.logvar * 0.5)?.exp()
    }

    /// The distribution's mode (its mean), what deterministic img2img pipelines use.
    pub fn mode(&self) -> &Tensor {
        &self.mean
    }

    /// `mean + std · noise`, with `noise` standard normal of the same shape. Unscaled:
    /// multiply by the scaling factor before handing it to the UNet.
    pub fn sample(&self, noise: &Tensor) -> candle_core::Result<Tensor> {
        self.mean
            .broadcast_add(&self.std()?.broadcast_mul(&noise.to_dtype(DType::F32)?)?)
    }
}

/// A loaded VAE. `vb` decides its dtype and device, independently of the other models.
#[derive(Debug, Clone)]
pub struct Vae {
    cfg: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dtype: DType,
}

impl Vae {
    /// Builds the VAE from `vb`, pointed at the VAE's prefix (e.g. `vb.pp("first_stage_model")`,
    /// or a diffusers file renamed by
    /// [`super::vae_names::VaeNameMap::ldm_view`]).
    pub fn load(vb: VarBuilder<'_>, cfg: &VaeConfig) -> Result<Self, ModelError> {
        let _span = tracing::debug_span!("load_vae", dtype = ?vb.dtype()).entered();
        if cfg.block_out_channels.is_empty() {
            return Err(ModelError::Unsupported(
                "VAE with no resolution levels".into(),
            ));
        }
        let z2 = 2 * cfg.latent_channels;
        let z = cfg.latent_channels;
        let quant_conv = if cfg.has_quant_conv {
            Some(conv2d(&vb, "quant_conv", z2, z2, 1, 1, 0)?)
        } else {
            None
        };
        let post_quant_conv = if cfg.has_post_quant_conv {
            Some(conv2d(&vb, "post_quant_conv", z, z, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            encoder: Encoder::load(&vb.pp("encoder"), cfg)?,
            decoder: Decoder::load(&vb.pp("decoder"), cfg)?,
            quant_conv,
            post_quant_conv,
            dtype: vb.dtype(),
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// The dtype the VAE computes in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The factor between VAE latents and UNet latents (0.13025 for SDXL).
    pub fn scaling_factor(&self) -> f64 {
        self.cfg.scaling_factor
    }

    /// Decodes latents `[B, latent_channels, h, w]` that are **already divided** by the
    /// scaling factor into images `[B, 3, 8h, 8w]`, nominally in [-1, 1] but unclamped, f32.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor, ModelError> {
        let _span = tracing::debug_span!("vae_decode", shape = ?z.dims()).entered();
        self.check_input(z, self.cfg.latent_channels, "latents")?;
        let z = z.to_dtype(self.dtype)?;
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(&z)?,
            None => z,
        };
        Ok(self.decoder.forward(&z)?.to_dtype(DType::F32)?)
    }

    /// Encodes images `[B, 3, H, W]` in [-1, 1] (H, W multiples of 8) into the latent
    /// distribution. Multiply a sample by the scaling factor before giving it to the UNet.
    pub fn encode(&self, image: &Tensor) -> Result<LatentDist, ModelError> {
        let _span = tracing::debug_span!("vae_encode", shape = ?image.dims()).entered();
        self.check_input(image, self.cfg.in_channels, "image")?;
        let factor = 1usize << (self.cfg.block_out_channels.len() - 1);
        let (_, _, h, w) = image.dims4()?;
        if h % factor != 0 || w % factor != 0 {
            return Err(ModelError::Unsupported(format!(
                "image size {w}x{h} is not a multiple of {factor}"
            )));
        }
        let h = self.encoder.forward(&image.to_dtype(self.dtype)?)?;
        let h = match &self.quant_conv {
            Some(c) => c.forward(&h)?,
            None => h,
        };
        let h = h.to_dtype(DType::F32)?;
        let z = self.cfg.latent_channels;
        Ok(LatentDist {
            mean: h.narrow(1, 0, z)?,
            logvar: h.narrow(1, z, z)?.clamp(-30f32, 20f32)?,
        })
    }

    fn check_input(&self, x: &Tensor, channels: usize, what: &str) -> Result<(), ModelError> {
        match x.dims() {
            [_, c, _, _] if *c == channels => Ok(()),
            d => Err(ModelError::Unsupported(format!(
                "VAE {what} must be [batch, {channels}, height, width], got {d:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn chunked_attention_equals_whole() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 1, 37, 8), &dev)?;
        let k = Tensor::randn(0f32, 1., (2, 1, 37, 8), &dev)?;
        let v = Tensor::randn(0f32, 1., (2, 1, 37, 8), &dev)?;
        let whole = chunked_attention(&q, &k, &v, 0.3, usize::MAX)?;
        // 2·37·5 score elements per block: blocks of 5 query rows, the last one of 2.
        let parts = chunked_attention(&q, &k, &v, 0.3, 2 * 37 * 5)?;
        let diff = (whole - parts)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        Ok(())
    }
}
