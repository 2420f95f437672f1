//! The one name table that lets a diffusers-layout VAE file (e.g. `madebyollin/sdxl-vae-fp16-fix`
//! `diffusion_pytorch_model.safetensors`) replace a checkpoint's VAE: its tensors are presented
//! under the LDM names [`super::vae::Vae`] reads, without copying or rewriting the file.
//!
//! Differences handled (diffusers `convert_ldm_vae_checkpoint`, inverted):
//! * `down_blocks.i.resnets.j` ↔ `down.i.block.j`, `downsamplers.0.conv` ↔ `downsample.conv`;
//! * decoder `up_blocks.i` ↔ `up.{n-1-i}`: diffusers counts up blocks from the lowest
//!   resolution, LDM from the highest;
//! * `mid_block.resnets.{0,1}` ↔ `mid.block_{1,2}`, `mid_block.attentions.0` ↔ `mid.attn_1`
//!   with `group_norm` ↔ `norm`, `to_q/to_k/to_v/to_out.0` (older files: `query/key/value/
//!   proj_attn`) ↔ `q/k/v/proj_out`;
//! * attention weights are Linear `[C, C]` in diffusers and 1x1 conv `[C, C, 1, 1]` in LDM
//!   (flagged `reshape_to_conv1x1`; the VAE loader accepts both forms);
//! * `conv_shortcut` ↔ `nin_shortcut`, `conv_norm_out` ↔ `norm_out`.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_nn::VarBuilder;

use super::error::ModelError;
use crate::weights::{count_indexed, ShapeMap};

/// Naming scheme of a VAE's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeLayout {
    /// LDM / single-file names (`decoder.up.3.block.0.conv1`), what the VAE code reads.
    Ldm,
    /// diffusers `AutoencoderKL` names (`decoder.up_blocks.0.resnets.0.conv1`).
    Diffusers,
}

/// Where one LDM-named tensor lives in the source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaeTensorSource {
    /// Full name in the source file (prefix included).
    pub source: String,
    /// Stored as Linear `[C, C]`, needed as 1x1 conv `[C, C, 1, 1]` (mid-block attention).
    pub reshape_to_conv1x1: bool,
}

/// LDM name (without prefix) → source tensor, for one VAE file.
#[derive(Debug, Clone)]
pub struct VaeNameMap {
    pub layout: VaeLayout,
    /// Prefix of the VAE tensors in the source file (`""`, `"vae."`, `"first_stage_model."`).
    pub source_prefix: String,
    entries: Arc<BTreeMap<String, VaeTensorSource>>,
}

const PREFIXES: [&str; 3] = ["first_stage_model.", "", "vae."];

/// Finds the VAE in a shape map: its layout and the prefix its tensors carry.
pub fn detect_vae_layout(shapes: &ShapeMap) -> Option<(VaeLayout, String)> {
    for p in PREFIXES {
        if shapes.contains_key(&format!("{p}decoder.up.0.block.0.conv1.weight")) {
            return Some((VaeLayout::Ldm, p.to_string()));
        }
        if shapes.contains_key(&format!("{p}decoder.up_blocks.0.resnets.0.conv1.weight")) {
            return Some((VaeLayout::Diffusers, p.to_string()));
        }
    }
    None
}

/// Builds the LDM-name view of the VAE in `shapes` (a whole checkpoint or a stand-alone VAE
/// file). Unknown tensors under the VAE's encoder/decoder are an error naming them, so a
/// partly converted file is not silently loaded with holes.
pub fn vae_name_map(shapes: &ShapeMap) -> Result<VaeNameMap, ModelError> {
    let (layout, prefix) = detect_vae_layout(shapes).ok_or_else(|| {
        ModelError::Unsupported(
            "no VAE found: expected `decoder.up.0.block.0.conv1.weight` (LDM) or \
             `decoder.up_blocks.0.resnets.0.conv1.weight` (diffusers), optionally under \
             `first_stage_model.` or `vae.`"
                .into(),
        )
    })?;
    let mut entries = BTreeMap::new();
    let mut unknown = Vec::new();
    let up_levels = count_indexed(shapes, &format!("{prefix}decoder.up_blocks."));
    for (name, shape) in shapes.range(prefix.clone()..) {
        let Some(rel) = name.strip_prefix(&prefix) else {
            break;
        };
        if !is_vae_tensor(rel) {
            continue;
        }
        let ldm = match layout {
            VaeLayout::Ldm => Some(rel.to_string()),
            VaeLayout::Diffusers => diffusers_to_ldm(rel, up_levels),
        };
        match ldm {
            Some(ldm) => {
                let reshape = layout == VaeLayout::Diffusers
                    && rel.contains(".mid_block.attentions.")
                    && rel.ends_with(".weight")
                    && shape.len() == 2;
                entries.insert(
                    ldm,
                    VaeTensorSource {
                        source: name.clone(),
                        reshape_to_conv1x1: reshape,
                    },
                );
            }
            None => unknown.push(name.clone()),
        }
    }
    if !unknown.is_empty() {
        let shown: Vec<_> = unknown.iter().take(5).map(String::as_str).collect();
        return Err(ModelError::Unsupported(format!(
            "{} VAE tensors have no LDM equivalent: {}{}",
            unknown.len(),
            shown.join(", "),
            if unknown.len() > 5 { ", …" } else { "" }
        )));
    }
    Ok(VaeNameMap {
        layout,
        source_prefix: prefix,
        entries: Arc::new(entries),
    })
}

fn is_vae_tensor(rel: &str) -> bool {
    rel.starts_with("encoder.")
        || rel.starts_with("decoder.")
        || rel.starts_with("quant_conv.")
        || rel.starts_with("post_quant_conv.")
}

/// LDM name of one diffusers VAE tensor name (prefix removed); `None` when it has none.
/// `up_levels` is the number of decoder up blocks (to reverse their order).
pub fn diffusers_to_ldm(rel: &str, up_levels: usize) -> Option<String> {
    let (module, param) = rel.rsplit_once('.')?;
    if param != "weight" && param != "bias" {
        return None;
    }
    let parts: Vec<&str> = module.split('.').collect();
    let mapped: String = match parts.as_slice() {
        ["quant_conv"] | ["post_quant_conv"] => module.to_string(),
        [side @ ("encoder" | "decoder"), rest @ ..] => {
            let inner = match rest {
                [c @ ("conv_in" | "conv_out")] => c.to_string(),
                ["conv_norm_out"] => "norm_out".to_string(),
                ["down_blocks", i, "resnets", j, part] if *side == "encoder" => {
                    format!("down.{i}.block.{j}.{}", resnet_part(part)?)
                }
                ["down_blocks", i, "downsamplers", "0", "conv"] if *side == "encoder" => {
                    format!("down.{i}.downsample.conv")
                }
                ["up_blocks", i, "resnets", j, part] if *side == "decoder" => {
                    let l = reverse(i, up_levels)?;
                    format!("up.{l}.block.{j}.{}", resnet_part(part)?)
                }
                ["up_blocks", i, "upsamplers", "0", "conv"] if *side == "decoder" => {
                    format!("up.{}.upsample.conv", reverse(i, up_levels)?)
                }
                ["mid_block", "resnets", n @ ("0" | "1"), part] => {
                    let b = if *n == "0" { 1 } else { 2 };
                    format!("mid.block_{b}.{}", resnet_part(part)?)
                }
                ["mid_block", "attentions", "0", attn @ ..] => {
                    let p = match attn {
                        ["group_norm"] => "norm",
                        ["to_q"] | ["query"] => "q",
                        ["to_k"] | ["key"] => "k",
                        ["to_v"] | ["value"] => "v",
                        ["to_out", "0"] | ["proj_attn"] => "proj_out",
                        _ => return None,
                    };
                    format!("mid.attn_1.{p}")
                }
                _ => return None,
            };
            format!("{side}.{inner}")
        }
        _ => return None,
    };
    Some(format!("{mapped}.{param}"))
}

fn resnet_part(part: &str) -> Option<&'static str> {
    Some(match part {
        "norm1" => "norm1",
        "conv1" => "conv1",
        "norm2" => "norm2",
        "conv2" => "conv2",
        "conv_shortcut" => "nin_shortcut",
        _ => return None,
    })
}

fn reverse(i: &str, levels: usize) -> Option<usize> {
    let i: usize = i.parse().ok()?;
    (i < levels).then(|| levels - 1 - i)
}

impl VaeNameMap {
    /// Source of an LDM-named tensor (name relative to the VAE, e.g. `decoder.up.3.block.0.conv1.weight`).
    pub fn source_of(&self, ldm_name: &str) -> Option<&VaeTensorSource> {
        self.entries.get(ldm_name)
    }

    /// All `(ldm name, source)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &VaeTensorSource)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The shapes under LDM names (no prefix), attention weights as `[C, C, 1, 1]`: feed this to
    /// `VaeConfig::infer(&map.ldm_shapes(&shapes), "")`.
    pub fn ldm_shapes(&self, shapes: &ShapeMap) -> ShapeMap {
        self.entries
            .iter()
            .filter_map(|(ldm, src)| {
                let mut s = shapes.get(&src.source)?.clone();
                if src.reshape_to_conv1x1 {
                    s.extend([1, 1]);
                }
                Some((ldm.clone(), s))
            })
            .collect()
    }

    /// A VarBuilder that serves the source file under LDM names: pass the builder of the
    /// whole file (root, no prefix) and give the result, unprefixed, to `Vae::load`. A name
    /// the file lacks stays missing, so the loader reports it by its LDM name.
    pub fn ldm_view<'a>(&self, file: VarBuilder<'a>) -> VarBuilder<'a> {
        let entries = Arc::clone(&self.entries);
        file.rename_f(move |ldm: &str| match entries.get(ldm) {
            Some(src) => src.source.clone(),
            // Not a valid safetensors name in practice: keeps the tensor "missing".
            None => format!("\u{0}missing\u{0}{ldm}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_names_map_to_ldm() {
        let m = |n: &str| diffusers_to_ldm(n, 4);
        // (diffusers name, LDM name), for a VAE with 4 decoder levels.
        let mut cases = vec![
            (
                "decoder.up_blocks.0.resnets.2.conv1.weight".to_string(),
                "decoder.up.3.block.2.conv1.weight".to_string(),
            ),
            (
                "decoder.up_blocks.2.upsamplers.0.conv.bias".into(),
                "decoder.up.1.upsample.conv.bias".into(),
            ),
            (
                "encoder.down_blocks.3.resnets.0.conv_shortcut.weight".into(),
                "encoder.down.3.block.0.nin_shortcut.weight".into(),
            ),
            (
                "encoder.down_blocks.1.downsamplers.0.conv.weight".into(),
                "encoder.down.1.downsample.conv.weight".into(),
            ),
            (
                "encoder.mid_block.resnets.1.norm2.bias".into(),
                "encoder.mid.block_2.norm2.bias".into(),
            ),
            (
                "decoder.conv_norm_out.weight".into(),
                "decoder.norm_out.weight".into(),
            ),
            ("post_quant_conv.bias".into(), "post_quant_conv.bias".into()),
        ];
        // Current and pre-0.14 diffusers attention names.
        for (d, l) in [
            ("to_q", "q"),
            ("query", "q"),
            ("to_k", "k"),
            ("key", "k"),
            ("to_v", "v"),
            ("value", "v"),
            ("to_out.0", "proj_out"),
            ("proj_attn", "proj_out"),
            ("group_norm", "norm"),
        ] {
            cases.push((
                format!("decoder.mid_block.attentions.0.{d}.weight"),
                format!("decoder.mid.attn_1.{l}.weight"),
            ));
        }
        for (diffusers, ldm) in &cases {
            assert_eq!(m(diffusers).as_ref(), Some(ldm), "{diffusers}");
        }
        // Out-of-range level, wrong side, unknown parts.
        for name in [
            "decoder.up_blocks.4.resnets.0.conv1.weight",
            "decoder.down_blocks.0.resnets.0.conv1.weight",
            "encoder.mid_block.attentions.0.to_out.1.weight",
            "decoder.conv_in.scale",
        ] {
            assert_eq!(m(name), None, "{name}");
        }
    }
}
