//! The SDXL UNet in the native single-file layout (`model.diffusion_model.` keys:
//! `time_embed`, `label_emb`, `input_blocks`, `middle_block`, `output_blocks`, `out`).
//!
//! [`UNetConfig::infer`] reads the whole structure (channels per level, resnets per level,
//! where attention sits and how deep it is, context and ADM widths) from the tensor shapes;
//! [`UNet::new`] builds the model from a `VarBuilder` and checks every tensor against that
//! structure; [`UNet::forward`] runs one denoiser call with SDXL's `label_emb` conditioning
//! (pooled text + time ids, see [`time_ids_embedding`]).
//!
//! The only constants not visible in the file are the same for the whole SDXL family: head
//! dim 64 (`heads = channels / 64`, as in ComfyUI's `num_head_channels`), GroupNorm 32 groups,
//! the norm epsilons in [`super::unet_blocks`] and the sinusoid (`flip_sin_to_cos`, shift 0,
//! max period 10000).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Linear, VarBuilder};

use super::error::{shape_of, ModelError};
use super::unet_blocks::{
    conv2d, downsampler, linear, AttentionSpec, GroupNorm, ResBlock, SpatialTransformer, Upsampler,
    RESNET_NORM_EPS,
};
use crate::weights::{count_indexed, with_dot, ShapeMap};

/// Attention head width of every SDXL-family UNet (SDXL base 1.0: 640/10, 1280/20; refiner
/// 384/6 …). A `[C, C]` projection does not reveal the head split, so this is the one
/// attention dimension that cannot be read from the file.
pub const HEAD_DIM: usize = 64;

/// Width of the sinusoid of each SDXL time id (original size, crop, target size).
pub const TIME_ID_DIM: usize = 256;

/// One resolution level on the way down (`input_blocks`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownLevel {
    /// Output channels of every resnet of the level (`in_layers.2.weight` rows).
    pub channels: usize,
    /// Transformer depth after each resnet (`input_blocks.N.1.transformer_blocks.*` count);
    /// 0 = no attention. Its length is the number of resnets of the level.
    pub transformer_depth: Vec<usize>,
    /// Whether the level ends with a stride-2 downsampler (`input_blocks.N.0.op`).
    pub downsample: bool,
}

/// One resolution level on the way up (`output_blocks`), in execution order (lowest
/// resolution first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpLevel {
    /// Output channels of every resnet of the level.
    pub channels: usize,
    /// Transformer depth after each resnet (0 = none); its length is the number of resnets.
    pub transformer_depth: Vec<usize>,
    /// Whether the level's last block ends with an upsampler (`output_blocks.N.{1|2}.conv`).
    pub upsample: bool,
}

/// What the structure says about the model's role, for messages and pipeline defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UNetKind {
    /// Text-to-image UNet with 4 (latent) input channels.
    Base,
    /// Inpainting UNet: 9 input channels (latent + mask + masked-image latent).
    Inpaint,
    /// Refiner-like: the ADM input is `context_dim + 5 × 256` (pooled bigG width equals the
    /// context width and 5 time ids: original size, crop, aesthetic score), as in
    /// `sd_xl_refiner_1.0`.
    RefinerLike,
}

/// The UNet structure, read from tensor shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UNetConfig {
    /// Latent channels in (`input_blocks.0.0.weight` dim 1): 4, or 9 for inpainting.
    pub in_channels: usize,
    /// Channels out (`out.2.weight` dim 0).
    pub out_channels: usize,
    /// Channels of `conv_in` (`input_blocks.0.0.weight` dim 0).
    pub model_channels: usize,
    /// Width of the timestep sinusoid (`time_embed.0.weight` in-features).
    pub timestep_dim: usize,
    /// Width of the time / label embedding MLPs (`time_embed.0.weight` out-features).
    pub time_embed_dim: usize,
    /// `label_emb.0.0.weight` in-features: pooled text width + number of time ids × 256.
    pub adm_in_channels: usize,
    /// Cross-attention context width (`attn2.to_k.weight` in-features).
    pub context_dim: usize,
    /// Attention head width ([`HEAD_DIM`]).
    pub head_dim: usize,
    /// GEGLU inner width as a multiple of the channels (`ff.net.2` in-features / C; 4 in SDXL).
    pub ff_mult: usize,
    /// Down levels, highest resolution first.
    pub down: Vec<DownLevel>,
    /// Transformer depth of `middle_block.1`; 0 when the middle block has no attention
    /// (then it is two resnets).
    pub middle_transformer_depth: usize,
    /// Up levels, lowest resolution first.
    pub up: Vec<UpLevel>,
}

/// Attention found under `prefix` (`….1.`): its transformer depth, context width and GEGLU
/// inner width, or `None` when there is no `proj_in`.
fn attention_at(
    shapes: &ShapeMap,
    prefix: &str,
    channels: usize,
) -> Result<Option<(usize, usize, usize)>, ModelError> {
    let proj_in = format!("{prefix}proj_in.weight");
    let Some(shape) = shapes.get(&proj_in) else {
        return Ok(None);
    };
    if shape.len() == 4 {
        return Err(ModelError::Unsupported(format!(
            "`{proj_in}` is a 1x1 conv {shape:?} (SD 1.x-style transformer); only the linear \
             projections of SDXL-family UNets are supported"
        )));
    }
    if shape.as_slice() != [channels, channels] {
        return Err(ModelError::BadShape {
            name: proj_in,
            expected: format!("[{channels}, {channels}]"),
            found: shape.clone(),
        });
    }
    let depth = count_indexed(shapes, &format!("{prefix}transformer_blocks."));
    let to_k = format!("{prefix}transformer_blocks.0.attn2.to_k.weight");
    let context = *shape_of(shapes, &to_k)?
        .get(1)
        .ok_or_else(|| ModelError::BadShape {
            name: to_k.clone(),
            expected: format!("[{channels}, context_dim]"),
            found: shapes.get(&to_k).cloned().unwrap_or_default(),
        })?;
    let ff = format!("{prefix}transformer_blocks.0.ff.net.2.weight");
    let ff_shape = shape_of(shapes, &ff)?;
    let ff_inner = match ff_shape {
        [c, inner] if *c == channels => *inner,
        _ => {
            return Err(ModelError::BadShape {
                name: ff,
                expected: format!("[{channels}, inner]"),
                found: ff_shape.to_vec(),
            })
        }
    };
    Ok(Some((depth, context, ff_inner)))
}

/// Shape of a 2-D or 4-D weight, checked for rank.
fn dims<'a>(shapes: &'a ShapeMap, name: &str, rank: usize) -> Result<&'a [usize], ModelError> {
    let s = shape_of(shapes, name)?;
    if s.len() != rank {
        return Err(ModelError::BadShape {
            name: name.to_string(),
            expected: format!("a rank-{rank} tensor"),
            found: s.to_vec(),
        });
    }
    Ok(s)
}

/// The attention widths every block of one UNet must share, collected while the blocks are
/// read: the first attention block sets them, later ones are checked against them.
#[derive(Default)]
struct AttentionDims {
    context_dim: Option<usize>,
    ff_mult: Option<usize>,
}

impl AttentionDims {
    /// Transformer depth of the attention under `prefix` (0 when there is none), after
    /// checking its widths against the blocks read before.
    fn depth_at(
        &mut self,
        shapes: &ShapeMap,
        prefix: &str,
        channels: usize,
    ) -> Result<usize, ModelError> {
        let Some((depth, ctx, inner)) = attention_at(shapes, prefix, channels)? else {
            return Ok(0);
        };
        if *self.context_dim.get_or_insert(ctx) != ctx {
            return Err(ModelError::Unsupported(format!(
                "`{prefix}` attends to a context of width {ctx}, other blocks to {}",
                self.context_dim.unwrap_or_default()
            )));
        }
        if inner % channels != 0
            || *self.ff_mult.get_or_insert(inner / channels) * channels != inner
        {
            return Err(ModelError::Unsupported(format!(
                "`{prefix}` has a feed-forward width {inner} for {channels} channels, \
                 unlike the other blocks"
            )));
        }
        if !channels.is_multiple_of(HEAD_DIM) {
            return Err(ModelError::Unsupported(format!(
                "`{prefix}` has {channels} channels, not a multiple of the head dim {HEAD_DIM}"
            )));
        }
        Ok(depth)
    }

    /// Reads one resnet (+ attention) block under `block` (`….input_blocks.N.` or
    /// `….output_blocks.N.`) into the level being collected, `(channels, depths)`: the first
    /// block sets the level's channels, later ones must match them (`what` names the level,
    /// `sampler` what would have to separate blocks of different widths). Returns the
    /// block's transformer depth.
    fn read_block(
        &mut self,
        shapes: &ShapeMap,
        block: &str,
        (channels, depths): (&mut usize, &mut Vec<usize>),
        what: &str,
        sampler: &str,
    ) -> Result<usize, ModelError> {
        let conv = format!("{block}0.in_layers.2.weight");
        let ch = dims(shapes, &conv, 4)?[0];
        if depths.is_empty() {
            *channels = ch;
        } else if ch != *channels {
            return Err(ModelError::Unsupported(format!(
                "`{conv}` has {ch} channels inside {what} of {channels} channels (no {sampler} \
                 between them)"
            )));
        }
        let depth = self.depth_at(shapes, &format!("{block}1."), ch)?;
        depths.push(depth);
        Ok(depth)
    }
}

impl UNetConfig {
    /// Reads the UNet structure from the tensor shapes under `prefix` (usually
    /// `"model.diffusion_model."`; the trailing dot is optional).
    ///
    /// Levels are delimited by the downsamplers (`input_blocks.N.0.op`) on the way down and by
    /// the upsamplers (`output_blocks.N.{1|2}.conv`) on the way up, so channel multipliers,
    /// resnets per level and attention placement follow the file. SD 1.x-style conv
    /// `proj_in` and UNets without `label_emb` are refused as unsupported.
    pub fn infer(shapes: &ShapeMap, prefix: &str) -> Result<Self, ModelError> {
        let p = with_dot(prefix);
        let key = |rest: &str| format!("{p}{rest}");

        let conv_in = dims(shapes, &key("input_blocks.0.0.weight"), 4)?;
        let (model_channels, in_channels) = (conv_in[0], conv_in[1]);
        let out_channels = dims(shapes, &key("out.2.weight"), 4)?[0];
        let te = dims(shapes, &key("time_embed.0.weight"), 2)?;
        let (time_embed_dim, timestep_dim) = (te[0], te[1]);
        let label = key("label_emb.0.0.weight");
        if !shapes.contains_key(&label) {
            return Err(ModelError::Unsupported(format!(
                "no `{label}`: this UNet has no pooled-text/time-id conditioning, so it is not \
                 an SDXL-family UNet (SD 1.x / 2.x?)"
            )));
        }
        let adm_in_channels = dims(shapes, &label, 2)?[1];

        let mut attention = AttentionDims::default();

        // Down path.
        let n_in = count_indexed(shapes, &key("input_blocks."));
        let mut down = Vec::new();
        let mut level = DownLevel::default();
        for i in 1..n_in {
            let op = key(&format!("input_blocks.{i}.0.op.weight"));
            if shapes.contains_key(&op) {
                if level.transformer_depth.is_empty() {
                    return Err(ModelError::Unsupported(format!(
                        "`{op}`: a downsampler with no resnet before it"
                    )));
                }
                level.downsample = true;
                down.push(std::mem::take(&mut level));
                continue;
            }
            attention.read_block(
                shapes,
                &key(&format!("input_blocks.{i}.")),
                (&mut level.channels, &mut level.transformer_depth),
                "a level",
                "downsampler",
            )?;
        }
        if level.transformer_depth.is_empty() {
            return Err(ModelError::Unsupported(
                "the UNet's down path ends with a downsampler or has no resnet".into(),
            ));
        }
        down.push(level);
        let bottom = down.last().map(|l| l.channels).unwrap_or(model_channels);

        // Middle.
        let n_mid = count_indexed(shapes, &key("middle_block."));
        let mid_attn = key("middle_block.1.");
        let middle_transformer_depth = attention.depth_at(shapes, &mid_attn, bottom)?;
        let expected_mid = if middle_transformer_depth > 0 { 3 } else { 2 };
        if n_mid != expected_mid {
            return Err(ModelError::Unsupported(format!(
                "`{p}middle_block` has {n_mid} parts; expected resnet, attention, resnet or two \
                 resnets"
            )));
        }

        // Up path.
        let n_out = count_indexed(shapes, &key("output_blocks."));
        let mut up = Vec::new();
        let mut level = UpLevel::default();
        for i in 0..n_out {
            let depth = attention.read_block(
                shapes,
                &key(&format!("output_blocks.{i}.")),
                (&mut level.channels, &mut level.transformer_depth),
                "an up level",
                "upsampler",
            )?;
            let up_idx = if depth > 0 { 2 } else { 1 };
            if shapes.contains_key(&key(&format!("output_blocks.{i}.{up_idx}.conv.weight"))) {
                level.upsample = true;
                up.push(std::mem::take(&mut level));
            }
        }
        if !level.transformer_depth.is_empty() {
            up.push(level);
        }

        let context_dim = attention.context_dim.ok_or_else(|| {
            ModelError::Unsupported(
                "the UNet has no cross-attention block, so it cannot take text conditioning".into(),
            )
        })?;
        let cfg = Self {
            in_channels,
            out_channels,
            model_channels,
            timestep_dim,
            time_embed_dim,
            adm_in_channels,
            context_dim,
            head_dim: HEAD_DIM,
            // Set together with `context_dim` by the first attention block.
            ff_mult: attention.ff_mult.unwrap_or_default(),
            down,
            middle_transformer_depth,
            up,
        };
        cfg.check_topology(shapes, &p)?;
        Ok(cfg)
    }

    /// Checks that the up path mirrors the down path: as many skips as output blocks,
    /// matching resampler counts, and each output resnet's input = previous output + skip.
    fn check_topology(&self, shapes: &ShapeMap, p: &str) -> Result<(), ModelError> {
        let downs = self.down.iter().filter(|l| l.downsample).count();
        let ups = self.up.iter().filter(|l| l.upsample).count();
        if downs != ups {
            return Err(ModelError::Unsupported(format!(
                "{downs} downsamplers but {ups} upsamplers in `{p}`"
            )));
        }
        let mut skips = self.skip_channels();
        let outputs: usize = self.up.iter().map(|l| l.transformer_depth.len()).sum();
        if outputs != skips.len() {
            return Err(ModelError::Unsupported(format!(
                "`{p}output_blocks` has {outputs} blocks for {} skip connections",
                skips.len()
            )));
        }
        let mut ch = self.bottom_channels();
        let mut n = 0;
        for level in &self.up {
            for _ in &level.transformer_depth {
                let skip = skips.pop().unwrap_or_default();
                let name = format!("{p}output_blocks.{n}.0.in_layers.2.weight");
                let found = dims(shapes, &name, 4)?;
                if found[1] != ch + skip {
                    return Err(ModelError::BadShape {
                        name,
                        expected: format!(
                            "[{}, {} (= {ch} + skip {skip}), 3, 3]",
                            level.channels,
                            ch + skip
                        ),
                        found: found.to_vec(),
                    });
                }
                ch = level.channels;
                n += 1;
            }
        }
        Ok(())
    }

    /// Channels pushed on the skip stack by each input block, in order.
    fn skip_channels(&self) -> Vec<usize> {
        let mut skips = vec![self.model_channels];
        for level in &self.down {
            skips.extend(level.transformer_depth.iter().map(|_| level.channels));
            if level.downsample {
                skips.push(level.channels);
            }
        }
        skips
    }

    /// Channels at the lowest resolution (middle block).
    pub fn bottom_channels(&self) -> usize {
        self.down
            .last()
            .map(|l| l.channels)
            .unwrap_or(self.model_channels)
    }

    /// Channel multiplier of each down level (`channels / model_channels`): [1, 2, 4] for SDXL.
    pub fn channel_mult(&self) -> Vec<usize> {
        self.down
            .iter()
            .map(|l| l.channels / self.model_channels.max(1))
            .collect()
    }

    /// Resnets of each down level: [2, 2, 2] for SDXL.
    pub fn num_res_blocks(&self) -> Vec<usize> {
        self.down
            .iter()
            .map(|l| l.transformer_depth.len())
            .collect()
    }

    /// Whether each down level has attention: [false, true, true] for SDXL.
    pub fn attention_levels(&self) -> Vec<bool> {
        self.down
            .iter()
            .map(|l| l.transformer_depth.iter().any(|&d| d > 0))
            .collect()
    }

    /// Attention heads at a level of `channels` channels.
    pub fn heads(&self, channels: usize) -> usize {
        channels / self.head_dim
    }

    /// Total spatial downsampling factor of the latent (4 for SDXL's two downsamplers).
    pub fn downsampling_factor(&self) -> usize {
        1 << self.down.iter().filter(|l| l.downsample).count()
    }

    /// Base, inpainting or refiner-like (see [`UNetKind`]).
    pub fn kind(&self) -> UNetKind {
        if self.in_channels == 9 {
            UNetKind::Inpaint
        } else if self.adm_in_channels == self.context_dim + 5 * TIME_ID_DIM {
            UNetKind::RefinerLike
        } else {
            UNetKind::Base
        }
    }

    fn attention_spec(&self, channels: usize, depth: usize) -> AttentionSpec {
        AttentionSpec {
            channels,
            depth,
            head_dim: self.head_dim,
            context_dim: self.context_dim,
            ff_inner: channels * self.ff_mult,
        }
    }
}

/// `[cos(t·f_i), sin(t·f_i)]` with `f_i = exp(-ln(10000)·i/half)`, `i < half = dim/2`
/// (diffusers `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)`), computed in
/// f32 whatever the dtype of `timesteps` (f32 or integer), because in f16/bf16 a timestep of
/// 999 is not representable. `timesteps` `[N]` → f32 `[N, dim]` (odd `dim`: a zero column
/// is appended, as diffusers does).
pub fn timestep_embedding(timesteps: &Tensor, dim: usize) -> Result<Tensor, ModelError> {
    let half = dim / 2;
    let device = timesteps.device();
    let n = timesteps.elem_count();
    let t = timesteps.to_dtype(DType::F32)?.reshape((n, 1))?;
    let ln_period = -(10000f32.ln());
    let freqs: Vec<f32> = (0..half)
        .map(|i| (ln_period * i as f32 / half as f32).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), device)?;
    let args = t.broadcast_mul(&freqs)?;
    let mut parts = vec![args.cos()?, args.sin()?];
    if dim % 2 == 1 {
        parts.push(Tensor::zeros((n, 1), DType::F32, device)?);
    }
    Ok(Tensor::cat(&parts, 1)?)
}

/// SDXL time-id embedding: each of the `K` ids of `time_ids` `[B, K]` (SDXL base: original
/// height/width, crop top/left, target height/width) through the sinusoid of width `dim`
/// (256), flattened to f32 `[B, K·dim]`. Concatenated after the pooled text embedding it is
/// the `y` input of [`UNet::forward`].
pub fn time_ids_embedding(time_ids: &Tensor, dim: usize) -> Result<Tensor, ModelError> {
    let (b, k) = time_ids.dims2()?;
    Ok(timestep_embedding(&time_ids.flatten_all()?, dim)?.reshape((b, k * dim))?)
}

/// Two linears with SiLU between them (`time_embed`, `label_emb.0`).
#[derive(Debug, Clone)]
struct EmbedMlp {
    linear_1: Linear,
    linear_2: Linear,
}

impl EmbedMlp {
    fn new(vb: &VarBuilder, in_dim: usize, dim: usize) -> Result<Self, ModelError> {
        Ok(Self {
            linear_1: linear(&vb.pp("0"), in_dim, dim, true)?,
            linear_2: linear(&vb.pp("2"), dim, dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}

#[derive(Debug, Clone)]
enum InputBlock {
    ConvIn(Conv2d),
    Res(Box<ResBlock>, Option<Box<SpatialTransformer>>),
    Down(Conv2d),
}

#[derive(Debug, Clone)]
enum MiddlePart {
    Res(ResBlock),
    Attn(SpatialTransformer),
}

#[derive(Debug, Clone)]
struct OutputBlock {
    res: ResBlock,
    attn: Option<SpatialTransformer>,
    up: Option<Upsampler>,
}

/// The SDXL UNet. Weights live in the dtype of the `VarBuilder` it was built from, except
/// the GroupNorm affine parameters (kept in f32 because the norms run in f32).
#[derive(Debug, Clone)]
pub struct UNet {
    config: UNetConfig,
    dtype: DType,
    device: Device,
    time_embed: EmbedMlp,
    label_emb: EmbedMlp,
    input_blocks: Vec<InputBlock>,
    middle: Vec<MiddlePart>,
    output_blocks: Vec<OutputBlock>,
    out_norm: GroupNorm,
    out_conv: Conv2d,
}

impl UNet {
    /// Builds the UNet from `vb`, already prefixed with `model.diffusion_model` (its tensors are
    /// `time_embed.0.weight`, `input_blocks.0.0.weight`, …). Every tensor is cast to
    /// `vb.dtype()` on `vb.device()`, and checked against `config`: a missing or mis-shaped
    /// tensor gives [`ModelError::MissingTensor`] / [`ModelError::BadShape`] naming it.
    pub fn new(vb: VarBuilder, config: &UNetConfig) -> Result<Self, ModelError> {
        let _span = tracing::info_span!("unet_load", dtype = ?vb.dtype()).entered();
        let started = std::time::Instant::now();
        let c = config;
        let emb = c.time_embed_dim;
        let time_embed = EmbedMlp::new(&vb.pp("time_embed"), c.timestep_dim, emb)?;
        let label_emb = EmbedMlp::new(&vb.pp("label_emb.0"), c.adm_in_channels, emb)?;

        let ib = vb.pp("input_blocks");
        let mut input_blocks = vec![InputBlock::ConvIn(conv2d(
            &ib.pp("0.0"),
            c.in_channels,
            c.model_channels,
            3,
            1,
            1,
        )?)];
        let mut ch = c.model_channels;
        for level in &c.down {
            for &depth in &level.transformer_depth {
                let n = input_blocks.len();
                let res = ResBlock::new(&ib.pp(format!("{n}.0")), ch, level.channels, emb)?;
                ch = level.channels;
                let attn = if depth > 0 {
                    let spec = c.attention_spec(ch, depth);
                    Some(Box::new(SpatialTransformer::new(
                        &ib.pp(format!("{n}.1")),
                        &spec,
                    )?))
                } else {
                    None
                };
                input_blocks.push(InputBlock::Res(Box::new(res), attn));
            }
            if level.downsample {
                let n = input_blocks.len();
                input_blocks.push(InputBlock::Down(downsampler(&ib.pp(format!("{n}.0")), ch)?));
            }
        }

        let mb = vb.pp("middle_block");
        let mut middle = vec![MiddlePart::Res(ResBlock::new(&mb.pp("0"), ch, ch, emb)?)];
        if c.middle_transformer_depth > 0 {
            let spec = c.attention_spec(ch, c.middle_transformer_depth);
            middle.push(MiddlePart::Attn(SpatialTransformer::new(
                &mb.pp("1"),
                &spec,
            )?));
            middle.push(MiddlePart::Res(ResBlock::new(&mb.pp("2"), ch, ch, emb)?));
        } else {
            middle.push(MiddlePart::Res(ResBlock::new(&mb.pp("1"), ch, ch, emb)?));
        }

        let ob = vb.pp("output_blocks");
        let mut skips = c.skip_channels();
        let mut output_blocks = Vec::new();
        for level in &c.up {
            let last = level.transformer_depth.len().saturating_sub(1);
            for (j, &depth) in level.transformer_depth.iter().enumerate() {
                let n = output_blocks.len();
                let skip = skips.pop().ok_or_else(|| {
                    ModelError::Unsupported("more output blocks than skip connections".into())
                })?;
                let block = ob.pp(n);
                let res = ResBlock::new(&block.pp("0"), ch + skip, level.channels, emb)?;
                ch = level.channels;
                let attn = if depth > 0 {
                    let spec = c.attention_spec(ch, depth);
                    Some(SpatialTransformer::new(&block.pp("1"), &spec)?)
                } else {
                    None
                };
                let up = if level.upsample && j == last {
                    let idx = if depth > 0 { 2 } else { 1 };
                    Some(Upsampler::new(&block.pp(idx), ch)?)
                } else {
                    None
                };
                output_blocks.push(OutputBlock { res, attn, up });
            }
        }

        let out_norm = GroupNorm::new(&vb.pp("out.0"), ch, RESNET_NORM_EPS)?;
        let out_conv = conv2d(&vb.pp("out.2"), ch, c.out_channels, 3, 1, 1)?;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "UNet built"
        );
        Ok(Self {
            config: config.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            time_embed,
            label_emb,
            input_blocks,
            middle,
            output_blocks,
            out_norm,
            out_conv,
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// The dtype the weights and activations use.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One denoiser call.
    ///
    /// - `x` `[B, in_channels, h, w]`: the (scaled) latents;
    /// - `timesteps` `[B]` or `[1]` (broadcast), any float or integer dtype; the sinusoid is
    ///   computed in f32;
    /// - `context` `[B, L, context_dim]`: text hidden states;
    /// - `y` `[B, adm_in_channels]`: `concat(pooled text, time_ids_embedding(time_ids, 256))`.
    ///
    /// Inputs are cast to the model dtype; the output `[B, out_channels, h, w]` is in the model
    /// dtype. Latent sizes that are not a multiple of [`UNetConfig::downsampling_factor`] are
    /// handled by upsampling to the size of the matching skip connection.
    pub fn forward(
        &self,
        x: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        y: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let _span = tracing::debug_span!("unet_forward", shape = ?x.dims()).entered();
        let c = &self.config;
        let (b, ch, _, _) = x.dims4()?;
        let check = |name: &str, t: &Tensor, expected: String, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(ModelError::BadShape {
                    name: name.to_string(),
                    expected,
                    found: t.dims().to_vec(),
                })
            }
        };
        check(
            "UNet input x",
            x,
            format!("[B, {}, h, w]", c.in_channels),
            ch == c.in_channels,
        )?;
        let n_t = timesteps.elem_count();
        check(
            "UNet timesteps",
            timesteps,
            format!("[{b}] or [1]"),
            timesteps.rank() <= 1 && (n_t == b || n_t == 1),
        )?;
        check(
            "UNet context",
            context,
            format!("[{b}, L, {}]", c.context_dim),
            context.rank() == 3 && context.dim(0)? == b && context.dim(2)? == c.context_dim,
        )?;
        check(
            "UNet y (pooled + time ids)",
            y,
            format!("[{b}, {}]", c.adm_in_channels),
            y.dims() == [b, c.adm_in_channels],
        )?;

        let t_emb = timestep_embedding(timesteps, c.timestep_dim)?.to_dtype(self.dtype)?;
        let t_emb = self.time_embed.forward(&t_emb)?;
        let l_emb = self.label_emb.forward(&y.to_dtype(self.dtype)?)?;
        let emb_silu = t_emb.broadcast_add(&l_emb)?.silu()?;
        let context = context.to_dtype(self.dtype)?;

        let mut h = x.to_dtype(self.dtype)?;
        let mut skips = Vec::with_capacity(self.input_blocks.len());
        for block in &self.input_blocks {
            h = match block {
                InputBlock::ConvIn(conv) | InputBlock::Down(conv) => conv.forward(&h)?,
                InputBlock::Res(res, attn) => {
                    let h = res.forward(&h, &emb_silu)?;
                    match attn {
                        Some(attn) => attn.forward(&h, &context)?,
                        None => h,
                    }
                }
            };
            skips.push(h.clone());
        }
        for part in &self.middle {
            h = match part {
                MiddlePart::Res(res) => res.forward(&h, &emb_silu)?,
                MiddlePart::Attn(attn) => attn.forward(&h, &context)?,
            };
        }
        for block in &self.output_blocks {
            let skip = skips
                .pop()
                .ok_or_else(|| ModelError::Unsupported("skip stack exhausted".into()))?;
            h = block
                .res
                .forward(&Tensor::cat(&[&h, &skip], 1)?, &emb_silu)?;
            if let Some(attn) = &block.attn {
                h = attn.forward(&h, &context)?;
            }
            if let Some(up) = &block.up {
                let (_, _, hh, ww) = h.dims4()?;
                let (th, tw) = match skips.last() {
                    Some(next) => {
                        let (_, _, sh, sw) = next.dims4()?;
                        (sh, sw)
                    }
                    None => (2 * hh, 2 * ww),
                };
                h = up.forward(&h, th, tw)?;
            }
        }
        let h = self.out_norm.forward(&h, true)?;
        Ok(self.out_conv.forward(&h)?)
    }
}
