//! Reverse index from every LoRA module name found in the wild to the checkpoint key it
//! patches, built from the checkpoint's own keys (docs/formats.md, *Resolving names*).
//!
//! Underscores are ambiguous in kohya names (`transformer_blocks`, `to_q`, `in_layers`), so a
//! LoRA name is never split; instead every checkpoint weight key is turned into each name a
//! trainer could have given it and the LoRA name is looked up.

use crate::weights::ShapeMap;
use std::collections::HashMap;

pub(crate) const UNET_PREFIX: &str = "model.diffusion_model.";
pub(crate) const TE1_PREFIX: &str = "conditioner.embedders.0.transformer.";
pub(crate) const TE2_PREFIX: &str = "conditioner.embedders.1.model.";

/// Which model a patched key belongs to; selects the UNet or the text-encoder strength.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Unet,
    TextEncoder1,
    TextEncoder2,
}

impl Component {
    pub fn is_text_encoder(self) -> bool {
        !matches!(self, Self::Unet)
    }
}

/// Where a LoRA module's delta goes in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Full checkpoint key of the weight (e.g. `model.diffusion_model.….to_q.weight`).
    pub key: String,
    /// Row block `(start, len)` inside a fused weight: OpenCLIP's `in_proj_weight` holds
    /// q, k and v, while LoRAs name the Hugging Face `q_proj`/`k_proj`/`v_proj` separately.
    pub rows: Option<(usize, usize)>,
    /// The checkpoint stores the transpose of what the LoRA names (OpenCLIP
    /// `text_projection` is `[width, proj]`, the Hugging Face linear is `[proj, width]`).
    pub transpose: bool,
    pub component: Component,
}

impl Target {
    /// The matching bias key (for `diff_b` / `b_norm`), if the layout has one.
    pub fn bias_key(&self) -> Option<String> {
        if let Some(stem) = self.key.strip_suffix("in_proj_weight") {
            Some(format!("{stem}in_proj_bias"))
        } else {
            self.key
                .strip_suffix(".weight")
                .map(|stem| format!("{stem}.bias"))
        }
    }
}

/// LoRA module name → target.
#[derive(Debug, Default)]
pub struct NameIndex {
    map: HashMap<String, Target>,
}

impl NameIndex {
    /// Builds the index for an SDXL single-file checkpoint's keys.
    pub fn build(shapes: &ShapeMap) -> Self {
        let mut ix = Self::default();
        let res_per_level = unet_layers_per_block(shapes);
        for (key, shape) in shapes {
            let Some(module) = key.strip_suffix(".weight") else {
                continue;
            };
            if let Some(k) = module.strip_prefix(UNET_PREFIX) {
                let t = ix.target(key, Component::Unet);
                let flat = k.replace('.', "_");
                ix.add(format!("lora_unet_{flat}"), &t);
                ix.add(format!("lycoris_{flat}"), &t);
                ix.add(module.to_string(), &t);
                if let Some(d) = unet_ldm_to_diffusers(k, res_per_level) {
                    let dflat = d.replace('.', "_");
                    ix.add(format!("lora_unet_{dflat}"), &t);
                    ix.add(format!("lycoris_{dflat}"), &t);
                    ix.add(format!("unet.{d}"), &t);
                    ix.add(d, &t);
                }
            } else if let Some(h) = module.strip_prefix(TE1_PREFIX) {
                let t = ix.target(key, Component::TextEncoder1);
                ix.add(format!("lora_te1_{}", h.replace('.', "_")), &t);
                ix.add(format!("text_encoder.{h}"), &t);
                ix.add(module.to_string(), &t);
            } else if let Some(o) = module.strip_prefix(TE2_PREFIX) {
                let t = ix.target(key, Component::TextEncoder2);
                ix.add(module.to_string(), &t);
                if let Some(hf) = openclip_to_hf(o) {
                    ix.add_te2_hf(&hf, &t);
                }
            }
            let _ = shape;
        }
        // OpenCLIP fuses q, k and v into the rows of one `in_proj_weight` `[3W, W]` (q first)
        // and stores `text_projection` as `[W, proj]`, the transpose of the Hugging Face
        // linear LoRAs name (docs/formats.md, *OpenCLIP names*).
        for (key, shape) in shapes {
            let Some(rest) = key.strip_prefix(TE2_PREFIX) else {
                continue;
            };
            if let Some(n) = rest
                .strip_prefix("transformer.resblocks.")
                .and_then(|r| r.strip_suffix(".attn.in_proj_weight"))
            {
                if shape.len() != 2 || shape[0] % 3 != 0 {
                    continue;
                }
                let w = shape[0] / 3;
                for (i, part) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                    let t = Target {
                        key: key.clone(),
                        rows: Some((i * w, w)),
                        transpose: false,
                        component: Component::TextEncoder2,
                    };
                    ix.add_te2_hf(
                        &format!("text_model.encoder.layers.{n}.self_attn.{part}"),
                        &t,
                    );
                }
            } else if rest == "text_projection" {
                let t = Target {
                    key: key.clone(),
                    rows: None,
                    transpose: true,
                    component: Component::TextEncoder2,
                };
                ix.add_te2_hf("text_projection", &t);
            }
        }
        ix
    }

    fn target(&self, key: &str, component: Component) -> Target {
        Target {
            key: key.to_string(),
            rows: None,
            transpose: false,
            component,
        }
    }

    fn add_te2_hf(&mut self, hf: &str, t: &Target) {
        self.add(format!("lora_te2_{}", hf.replace('.', "_")), t);
        self.add(format!("text_encoder_2.{hf}"), t);
    }

    fn add(&mut self, name: String, t: &Target) {
        self.map.entry(name).or_insert_with(|| t.clone());
    }

    /// Looks up a LoRA module name after normalising the dotted diffusers/PEFT spellings.
    pub fn resolve(&self, module: &str) -> Option<&Target> {
        if let Some(t) = self.map.get(module) {
            return Some(t);
        }
        let n = normalize_dotted(module);
        self.map.get(&n)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Dotted (diffusers/PEFT) spellings → the canonical diffusers module path: strip PEFT's
/// `base_model.model.`, the attention-processor segment and the old `to_out` without `.0`.
fn normalize_dotted(module: &str) -> String {
    let mut m = module
        .strip_prefix("base_model.model.")
        .unwrap_or(module)
        .replace(".processor.", ".");
    if m.ends_with(".to_out") {
        m.push_str(".0");
    }
    m
}

/// `layers_per_block` of the UNet: the first downsampler sits at `input_blocks.{L+1}`.
fn unet_layers_per_block(shapes: &ShapeMap) -> usize {
    (2..12)
        .find(|i| shapes.contains_key(&format!("{UNET_PREFIX}input_blocks.{i}.0.op.weight")))
        .map(|i| i - 1)
        .unwrap_or(2)
}

/// Resnet part names, LDM → diffusers.
fn resnet_part(rest: &str) -> Option<String> {
    const MAP: [(&str, &str); 6] = [
        ("in_layers.0", "norm1"),
        ("in_layers.2", "conv1"),
        ("emb_layers.1", "time_emb_proj"),
        ("out_layers.0", "norm2"),
        ("out_layers.3", "conv2"),
        ("skip_connection", "conv_shortcut"),
    ];
    MAP.iter()
        .find(|(l, _)| *l == rest)
        .map(|(_, d)| d.to_string())
}

/// An LDM UNet module path (without `model.diffusion_model.` and `.weight`) → its diffusers
/// module path (docs/formats.md, *UNet names: single-file and diffusers*), or `None` when the
/// key has no diffusers counterpart. `l` is the number of resnets per level.
pub fn unet_ldm_to_diffusers(k: &str, l: usize) -> Option<String> {
    let fixed = match k {
        "time_embed.0" => Some("time_embedding.linear_1"),
        "time_embed.2" => Some("time_embedding.linear_2"),
        "label_emb.0.0" => Some("add_embedding.linear_1"),
        "label_emb.0.2" => Some("add_embedding.linear_2"),
        "input_blocks.0.0" => Some("conv_in"),
        "out.0" => Some("conv_norm_out"),
        "out.2" => Some("conv_out"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    if let Some(r) = k.strip_prefix("middle_block.") {
        let (j, rest) = r.split_once('.')?;
        return match j.parse::<usize>().ok()? {
            j @ (0 | 2) => Some(format!(
                "mid_block.resnets.{}.{}",
                j / 2,
                resnet_part(rest)?
            )),
            1 => Some(format!("mid_block.attentions.0.{rest}")),
            _ => None,
        };
    }
    let mut parts = k.splitn(4, '.');
    let block = parts.next()?;
    let i: usize = parts.next()?.parse().ok()?;
    let j: usize = parts.next()?.parse().ok()?;
    let rest = parts.next()?;
    match block {
        "input_blocks" if i >= 1 => {
            let (b, li) = ((i - 1) / (l + 1), (i - 1) % (l + 1));
            match j {
                0 => {
                    if let Some(op) = rest.strip_prefix("op") {
                        Some(format!("down_blocks.{b}.downsamplers.0.conv{op}"))
                    } else {
                        Some(format!(
                            "down_blocks.{b}.resnets.{li}.{}",
                            resnet_part(rest)?
                        ))
                    }
                }
                1 => Some(format!("down_blocks.{b}.attentions.{li}.{rest}")),
                _ => None,
            }
        }
        "output_blocks" => {
            let (b, li) = (i / (l + 1), i % (l + 1));
            match j {
                0 => Some(format!("up_blocks.{b}.resnets.{li}.{}", resnet_part(rest)?)),
                1 | 2 if rest == "conv" => Some(format!("up_blocks.{b}.upsamplers.0.conv")),
                1 => Some(format!("up_blocks.{b}.attentions.{li}.{rest}")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// An OpenCLIP module path (under `conditioner.embedders.1.model.`) → the Hugging Face
/// module path LoRA trainers use, for the unfused modules.
fn openclip_to_hf(o: &str) -> Option<String> {
    let r = o.strip_prefix("transformer.resblocks.")?;
    let (n, part) = r.split_once('.')?;
    let hf = match part {
        "attn.out_proj" => "self_attn.out_proj",
        "mlp.c_fc" => "mlp.fc1",
        "mlp.c_proj" => "mlp.fc2",
        "ln_1" => "layer_norm1",
        "ln_2" => "layer_norm2",
        _ => return None,
    };
    Some(format!("text_model.encoder.layers.{n}.{hf}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdxl_unet_table() {
        let cases = [
            (
                "input_blocks.1.0.in_layers.2",
                "down_blocks.0.resnets.0.conv1",
            ),
            ("input_blocks.3.0.op", "down_blocks.0.downsamplers.0.conv"),
            (
                "input_blocks.5.1.transformer_blocks.0.attn1.to_q",
                "down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q",
            ),
            (
                "input_blocks.7.0.skip_connection",
                "down_blocks.2.resnets.0.conv_shortcut",
            ),
            (
                "middle_block.2.emb_layers.1",
                "mid_block.resnets.1.time_emb_proj",
            ),
            ("middle_block.1.proj_in", "mid_block.attentions.0.proj_in"),
            ("output_blocks.2.2.conv", "up_blocks.0.upsamplers.0.conv"),
            ("output_blocks.5.2.conv", "up_blocks.1.upsamplers.0.conv"),
            (
                "output_blocks.8.0.out_layers.3",
                "up_blocks.2.resnets.2.conv2",
            ),
            (
                "output_blocks.4.1.proj_out",
                "up_blocks.1.attentions.1.proj_out",
            ),
            ("label_emb.0.2", "add_embedding.linear_2"),
        ];
        for (ldm, d) in cases {
            assert_eq!(unet_ldm_to_diffusers(ldm, 2).as_deref(), Some(d), "{ldm}");
        }
        assert_eq!(unet_ldm_to_diffusers("input_blocks.1.2.x", 2), None);
    }

    #[test]
    fn dotted_spellings_normalise() {
        assert_eq!(
            normalize_dotted("base_model.model.unet.a.attn1.processor.to_out"),
            "unet.a.attn1.to_out.0"
        );
    }
}
