//! The SDXL single-file tensor layout generated from a handful of dimensions, and a streaming
//! safetensors writer. Used to build synthetic checkpoints (random weights in the real shapes)
//! for load-time, memory and speed measurements without downloading a 6.9 GB model. The
//! generator is checked against the `mini-m` fixture (tests/weights.rs): with mini-m's
//! dimensions it must reproduce that file's header exactly.

use super::file::StDtype;
use std::io::Write;
use std::path::Path;

/// The dimensions that determine an SDXL base-family checkpoint's tensor shapes.
#[derive(Debug, Clone)]
pub struct SdxlDims {
    pub model_channels: usize,
    pub channel_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Transformer blocks per attention at each UNet level (0 = no attention there).
    pub transformer_depth: Vec<usize>,
    pub mid_transformer_depth: usize,
    pub in_channels: usize,
    pub te1_width: usize,
    pub te1_layers: usize,
    pub te1_mlp: usize,
    pub te2_width: usize,
    pub te2_layers: usize,
    pub te2_mlp: usize,
    pub te2_proj: usize,
    pub vae_ch: usize,
    pub vae_mult: Vec<usize>,
    pub vae_res_blocks: usize,
    pub latent_channels: usize,
}

impl SdxlDims {
    /// `sd_xl_base_1.0.safetensors`.
    pub fn sdxl_base() -> Self {
        Self {
            model_channels: 320,
            channel_mult: vec![1, 2, 4],
            num_res_blocks: 2,
            transformer_depth: vec![0, 2, 10],
            mid_transformer_depth: 10,
            in_channels: 4,
            te1_width: 768,
            te1_layers: 12,
            te1_mlp: 3072,
            te2_width: 1280,
            te2_layers: 32,
            te2_mlp: 5120,
            te2_proj: 1280,
            vae_ch: 128,
            vae_mult: vec![1, 2, 4, 4],
            vae_res_blocks: 2,
            latent_channels: 4,
        }
    }

    /// The `mini-m` test fixture (tests/fixtures/README.md): SDXL base's topology (three UNet
    /// levels of two resnets, 4 latent channels, four VAE levels) at toy widths and depths.
    pub fn mini_m() -> Self {
        Self {
            model_channels: 32,
            transformer_depth: vec![0, 1, 1],
            mid_transformer_depth: 1,
            te1_width: 64,
            te1_layers: 2,
            te1_mlp: 256,
            te2_width: 128,
            te2_layers: 2,
            te2_mlp: 512,
            te2_proj: 96,
            vae_ch: 32,
            vae_mult: vec![1, 1, 1, 2],
            ..Self::sdxl_base()
        }
    }
}

/// One tensor of a layout: name, shape, stored dtype.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: StDtype,
}

struct Builder {
    out: Vec<Entry>,
    dtype: StDtype,
}

impl Builder {
    fn t(&mut self, name: String, shape: &[usize]) {
        self.out.push(Entry {
            name,
            shape: shape.to_vec(),
            dtype: self.dtype,
        });
    }
    fn wb(&mut self, p: &str, w: &[usize], b: usize) {
        self.t(format!("{p}.weight"), w);
        self.t(format!("{p}.bias"), &[b]);
    }
    fn norm(&mut self, p: &str, c: usize) {
        self.wb(p, &[c], c);
    }
    fn unet_res(&mut self, p: &str, ci: usize, co: usize, temb: usize) {
        self.norm(&format!("{p}.in_layers.0"), ci);
        self.wb(&format!("{p}.in_layers.2"), &[co, ci, 3, 3], co);
        self.wb(&format!("{p}.emb_layers.1"), &[co, temb], co);
        self.norm(&format!("{p}.out_layers.0"), co);
        self.wb(&format!("{p}.out_layers.3"), &[co, co, 3, 3], co);
        if ci != co {
            self.wb(&format!("{p}.skip_connection"), &[co, ci, 1, 1], co);
        }
    }
    fn unet_attn(&mut self, p: &str, c: usize, depth: usize, ctx: usize) {
        self.norm(&format!("{p}.norm"), c);
        self.wb(&format!("{p}.proj_in"), &[c, c], c);
        self.wb(&format!("{p}.proj_out"), &[c, c], c);
        for d in 0..depth {
            let b = format!("{p}.transformer_blocks.{d}");
            for (a, kv) in [("attn1", c), ("attn2", ctx)] {
                self.t(format!("{b}.{a}.to_q.weight"), &[c, c]);
                self.t(format!("{b}.{a}.to_k.weight"), &[c, kv]);
                self.t(format!("{b}.{a}.to_v.weight"), &[c, kv]);
                self.wb(&format!("{b}.{a}.to_out.0"), &[c, c], c);
            }
            self.wb(&format!("{b}.ff.net.0.proj"), &[8 * c, c], 8 * c);
            self.wb(&format!("{b}.ff.net.2"), &[c, 4 * c], c);
            for n in ["norm1", "norm2", "norm3"] {
                self.norm(&format!("{b}.{n}"), c);
            }
        }
    }
    fn vae_res(&mut self, p: &str, ci: usize, co: usize) {
        self.norm(&format!("{p}.norm1"), ci);
        self.wb(&format!("{p}.conv1"), &[co, ci, 3, 3], co);
        self.norm(&format!("{p}.norm2"), co);
        self.wb(&format!("{p}.conv2"), &[co, co, 3, 3], co);
        if ci != co {
            self.wb(&format!("{p}.nin_shortcut"), &[co, ci, 1, 1], co);
        }
    }
    fn vae_mid(&mut self, p: &str, c: usize) {
        self.vae_res(&format!("{p}.mid.block_1"), c, c);
        self.norm(&format!("{p}.mid.attn_1.norm"), c);
        for n in ["q", "k", "v", "proj_out"] {
            self.wb(&format!("{p}.mid.attn_1.{n}"), &[c, c, 1, 1], c);
        }
        self.vae_res(&format!("{p}.mid.block_2"), c, c);
    }
}

/// Every tensor of an SDXL base-family single-file checkpoint with dimensions `d`, all stored
/// as `dtype` except te1's int64 `position_ids`, sorted by name.
pub fn sdxl_layout(d: &SdxlDims, dtype: StDtype) -> Vec<Entry> {
    let mut b = Builder {
        out: Vec::new(),
        dtype,
    };
    let ctx = d.te1_width + d.te2_width;
    let mc = d.model_channels;
    let temb = 4 * mc;
    let head_dim = 64;
    let _ = head_dim; // heads = channels / 64 is implied by the shapes, nothing to store.

    // UNet.
    let u = "model.diffusion_model";
    b.wb(&format!("{u}.time_embed.0"), &[temb, mc], temb);
    b.wb(&format!("{u}.time_embed.2"), &[temb, temb], temb);
    let adm = d.te2_proj + 6 * 256;
    b.wb(&format!("{u}.label_emb.0.0"), &[temb, adm], temb);
    b.wb(&format!("{u}.label_emb.0.2"), &[temb, temb], temb);
    b.wb(
        &format!("{u}.input_blocks.0.0"),
        &[mc, d.in_channels, 3, 3],
        mc,
    );
    let mut chans = vec![mc];
    let mut ch = mc;
    let mut idx = 1;
    let levels = d.channel_mult.len();
    for (l, &m) in d.channel_mult.iter().enumerate() {
        let co = mc * m;
        for _ in 0..d.num_res_blocks {
            b.unet_res(&format!("{u}.input_blocks.{idx}.0"), ch, co, temb);
            if d.transformer_depth[l] > 0 {
                b.unet_attn(
                    &format!("{u}.input_blocks.{idx}.1"),
                    co,
                    d.transformer_depth[l],
                    ctx,
                );
            }
            ch = co;
            chans.push(ch);
            idx += 1;
        }
        if l + 1 != levels {
            b.wb(&format!("{u}.input_blocks.{idx}.0.op"), &[ch, ch, 3, 3], ch);
            chans.push(ch);
            idx += 1;
        }
    }
    b.unet_res(&format!("{u}.middle_block.0"), ch, ch, temb);
    if d.mid_transformer_depth > 0 {
        b.unet_attn(
            &format!("{u}.middle_block.1"),
            ch,
            d.mid_transformer_depth,
            ctx,
        );
        b.unet_res(&format!("{u}.middle_block.2"), ch, ch, temb);
    } else {
        b.unet_res(&format!("{u}.middle_block.1"), ch, ch, temb);
    }
    let mut idx = 0;
    for (l, &m) in d.channel_mult.iter().enumerate().rev() {
        let co = mc * m;
        for i in 0..=d.num_res_blocks {
            let skip = chans.pop().unwrap_or(0);
            b.unet_res(&format!("{u}.output_blocks.{idx}.0"), ch + skip, co, temb);
            ch = co;
            let mut sub = 1;
            if d.transformer_depth[l] > 0 {
                b.unet_attn(
                    &format!("{u}.output_blocks.{idx}.1"),
                    co,
                    d.transformer_depth[l],
                    ctx,
                );
                sub = 2;
            }
            if l != 0 && i == d.num_res_blocks {
                b.wb(
                    &format!("{u}.output_blocks.{idx}.{sub}.conv"),
                    &[co, co, 3, 3],
                    co,
                );
            }
            idx += 1;
        }
    }
    b.norm(&format!("{u}.out.0"), mc);
    b.wb(
        &format!("{u}.out.2"),
        &[d.latent_channels, mc, 3, 3],
        d.latent_channels,
    );

    // te1: CLIP ViT-L, Hugging Face names.
    let t1 = "conditioner.embedders.0.transformer.text_model";
    let w = d.te1_width;
    b.out.push(Entry {
        name: format!("{t1}.embeddings.position_ids"),
        shape: vec![1, 77],
        dtype: StDtype::I64,
    });
    b.t(
        format!("{t1}.embeddings.position_embedding.weight"),
        &[77, w],
    );
    b.t(
        format!("{t1}.embeddings.token_embedding.weight"),
        &[49408, w],
    );
    for i in 0..d.te1_layers {
        let p = format!("{t1}.encoder.layers.{i}");
        b.norm(&format!("{p}.layer_norm1"), w);
        b.norm(&format!("{p}.layer_norm2"), w);
        b.wb(&format!("{p}.mlp.fc1"), &[d.te1_mlp, w], d.te1_mlp);
        b.wb(&format!("{p}.mlp.fc2"), &[w, d.te1_mlp], w);
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            b.wb(&format!("{p}.self_attn.{n}"), &[w, w], w);
        }
    }
    b.norm(&format!("{t1}.final_layer_norm"), w);

    // te2: OpenCLIP ViT-bigG, OpenCLIP names.
    let t2 = "conditioner.embedders.1.model";
    let w = d.te2_width;
    b.norm(&format!("{t2}.ln_final"), w);
    b.t(format!("{t2}.logit_scale"), &[]);
    b.t(format!("{t2}.positional_embedding"), &[77, w]);
    b.t(format!("{t2}.text_projection"), &[w, d.te2_proj]);
    b.t(format!("{t2}.token_embedding.weight"), &[49408, w]);
    for i in 0..d.te2_layers {
        let p = format!("{t2}.transformer.resblocks.{i}");
        b.t(format!("{p}.attn.in_proj_weight"), &[3 * w, w]);
        b.t(format!("{p}.attn.in_proj_bias"), &[3 * w]);
        b.wb(&format!("{p}.attn.out_proj"), &[w, w], w);
        b.norm(&format!("{p}.ln_1"), w);
        b.norm(&format!("{p}.ln_2"), w);
        b.wb(&format!("{p}.mlp.c_fc"), &[d.te2_mlp, w], d.te2_mlp);
        b.wb(&format!("{p}.mlp.c_proj"), &[w, d.te2_mlp], w);
    }

    // VAE, LDM names.
    let v = "first_stage_model";
    let z = d.latent_channels;
    let chs: Vec<usize> = d.vae_mult.iter().map(|m| d.vae_ch * m).collect();
    let last = *chs.last().unwrap_or(&d.vae_ch);
    b.wb(
        &format!("{v}.encoder.conv_in"),
        &[d.vae_ch, 3, 3, 3],
        d.vae_ch,
    );
    let mut c = d.vae_ch;
    for (l, &co) in chs.iter().enumerate() {
        for r in 0..d.vae_res_blocks {
            b.vae_res(&format!("{v}.encoder.down.{l}.block.{r}"), c, co);
            c = co;
        }
        if l + 1 != chs.len() {
            b.wb(
                &format!("{v}.encoder.down.{l}.downsample.conv"),
                &[c, c, 3, 3],
                c,
            );
        }
    }
    b.vae_mid(&format!("{v}.encoder"), last);
    b.norm(&format!("{v}.encoder.norm_out"), last);
    b.wb(
        &format!("{v}.encoder.conv_out"),
        &[2 * z, last, 3, 3],
        2 * z,
    );
    b.wb(&format!("{v}.quant_conv"), &[2 * z, 2 * z, 1, 1], 2 * z);
    b.wb(&format!("{v}.post_quant_conv"), &[z, z, 1, 1], z);
    b.wb(&format!("{v}.decoder.conv_in"), &[last, z, 3, 3], last);
    b.vae_mid(&format!("{v}.decoder"), last);
    let mut c = last;
    for (l, &co) in chs.iter().enumerate().rev() {
        for r in 0..=d.vae_res_blocks {
            b.vae_res(&format!("{v}.decoder.up.{l}.block.{r}"), c, co);
            c = co;
        }
        if l != 0 {
            b.wb(
                &format!("{v}.decoder.up.{l}.upsample.conv"),
                &[c, c, 3, 3],
                c,
            );
        }
    }
    b.norm(&format!("{v}.decoder.norm_out"), d.vae_ch);
    b.wb(&format!("{v}.decoder.conv_out"), &[3, d.vae_ch, 3, 3], 3);

    let mut out = b.out;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Writes a safetensors file tensor by tensor: `fill` receives each entry and the buffer of
/// its bytes to fill (little-endian). Memory use is one tensor at a time, so a full-size
/// checkpoint can be written on a small machine.
pub fn write_safetensors(
    path: &Path,
    entries: &[Entry],
    metadata: &[(&str, &str)],
    mut fill: impl FnMut(&Entry, &mut [u8]),
) -> std::io::Result<u64> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut offset = 0usize;
    let mut sizes = Vec::with_capacity(entries.len());
    for e in entries {
        let n = e.shape.iter().product::<usize>() * e.dtype.size_in_bytes();
        header.insert(
            e.name.clone(),
            serde_json::json!({
                "dtype": e.dtype.name(),
                "shape": e.shape,
                "data_offsets": [offset, offset + n],
            }),
        );
        sizes.push(n);
        offset += n;
    }
    let mut json = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
    while (8 + json.len()) % 8 != 0 {
        json.push(b' ');
    }
    let file = std::fs::File::create(path)?;
    let mut w = std::io::BufWriter::with_capacity(8 << 20, file);
    w.write_all(&(json.len() as u64).to_le_bytes())?;
    w.write_all(&json)?;
    let mut buf = Vec::new();
    for (e, n) in entries.iter().zip(sizes) {
        buf.clear();
        buf.resize(n, 0);
        fill(e, &mut buf);
        w.write_all(&buf)?;
    }
    w.flush()?;
    Ok(8 + json.len() as u64 + offset as u64)
}

/// Whether `name` is the scale of a norm layer (GroupNorm, LayerNorm), which synthetic weights
/// set to 1 so that activations keep their size; recognised by name, as every SDXL norm is
/// called `…norm…` or OpenCLIP's `ln_…`.
pub(crate) fn is_norm_weight(name: &str, shape: &[usize]) -> bool {
    shape.len() == 1 && (name.contains("norm") || name.contains("ln_")) && name.ends_with(".weight")
}

/// Fills an entry with deterministic pseudo-random values that keep activations in range:
/// weights uniform with variance 1/fan_in, norm weights 1, biases small, `position_ids` 0..n.
/// Only F32/F16/BF16/I64 entries are produced by [`sdxl_layout`].
pub fn fill_random(seed: u64) -> impl FnMut(&Entry, &mut [u8]) {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    move |e: &Entry, buf: &mut [u8]| {
        if e.dtype == StDtype::I64 {
            for (i, c) in buf.chunks_exact_mut(8).enumerate() {
                c.copy_from_slice(&(i as i64).to_le_bytes());
            }
            return;
        }
        let (scale, offset) = if is_norm_weight(&e.name, &e.shape) {
            (0.0, 1.0)
        } else if e.shape.len() <= 1 {
            (0.02, 0.0)
        } else {
            let fan_in: usize = e.shape[1..].iter().product();
            ((3.0 / fan_in.max(1) as f32).sqrt(), 0.0)
        };
        let mut next = || {
            // xorshift64*: fast, and quality is irrelevant for synthetic weights.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            ((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        match e.dtype {
            StDtype::F32 => {
                for c in buf.chunks_exact_mut(4) {
                    c.copy_from_slice(&(offset + scale * next()).to_le_bytes());
                }
            }
            StDtype::F16 => {
                for c in buf.chunks_exact_mut(2) {
                    c.copy_from_slice(&half::f16::from_f32(offset + scale * next()).to_le_bytes());
                }
            }
            StDtype::BF16 => {
                for c in buf.chunks_exact_mut(2) {
                    c.copy_from_slice(&half::bf16::from_f32(offset + scale * next()).to_le_bytes());
                }
            }
            _ => {}
        }
    }
}
