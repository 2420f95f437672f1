//! Architecture detection from tensor names and shapes alone: the header is enough, no tensor
//! data is read, and file names are never trusted. The order of the checks and the keys they
//! test are listed in docs/formats.md, *Architecture detection*.

use super::error::WeightsError;
use super::shapes::ShapeMap;
use std::path::Path;

const UNET: &str = "model.diffusion_model.";
const UNET_IN: &str = "model.diffusion_model.input_blocks.0.0.weight";
/// The level-0 attention that SD 1.x/2.x have and SDXL does not; its last dim is the
/// context width (768 = SD 1.x, 1024 = SD 2.x).
const SD12_LEVEL0_ATTN: &str =
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight";
const ADM: &str = "model.diffusion_model.label_emb.0.0.weight";
const XL_TE1: &str = "conditioner.embedders.0.transformer.text_model.";
const XL_TE2: &str = "conditioner.embedders.1.model.";
const REFINER_TE: &str = "conditioner.embedders.0.model.";

/// SDXL family members we recognise. Only [`Family::SdxlBase`] runs txt2img; the others are
/// named so that the error message says what the user gave us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SDXL 1.0 base and its fine-tunes (Pony, Illustrious, NoobAI, Juggernaut, …).
    SdxlBase,
    /// The SDXL refiner (OpenCLIP bigG only, 2560-wide ADM input).
    SdxlRefiner,
    /// SDXL inpainting (9 UNet input channels: latents, mask, masked-image latents).
    SdxlInpaint,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Self::SdxlBase => "SDXL base",
            Self::SdxlRefiner => "SDXL refiner",
            Self::SdxlInpaint => "SDXL inpainting",
        }
    }
}

/// What the UNet was trained to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    /// v-prediction, marked in SDXL files by an empty `v_pred` tensor (NoobAI-XL v-pred, …).
    V,
}

/// The detected architecture of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Architecture {
    pub family: Family,
    pub prediction: Prediction,
    /// `ztsnr` marker: the schedule is rescaled to zero terminal SNR.
    pub zero_terminal_snr: bool,
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.family.name())?;
        if self.prediction == Prediction::V {
            f.write_str(" (v-prediction")?;
            if self.zero_terminal_snr {
                f.write_str(", zero terminal SNR")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

fn has_prefix(shapes: &ShapeMap, prefix: &str) -> bool {
    shapes
        .range(prefix.to_string()..)
        .next()
        .is_some_and(|(k, _)| k.starts_with(prefix))
}

fn any_key(shapes: &ShapeMap, pred: impl Fn(&str) -> bool) -> bool {
    shapes.keys().any(|k| pred(k))
}

/// Classifies a checkpoint from its header. `Err(UnsupportedArchitecture)` says what the file
/// is when it is not an SDXL-family checkpoint.
pub fn detect(path: &Path, shapes: &ShapeMap) -> Result<Architecture, WeightsError> {
    let refuse = |what: &str| WeightsError::UnsupportedArchitecture {
        path: path.to_path_buf(),
        what: what.to_string(),
    };

    if any_key(shapes, |k| {
        k.starts_with("lora_unet_")
            || k.starts_with("lora_te")
            || k.contains(".lora_down.")
            || k.contains(".lora_A.")
            || k.contains(".hada_w1_a")
            || k.contains(".lokr_w1")
    }) {
        return Err(refuse(
            "a LoRA / LyCORIS file, not a checkpoint (list it under LoRAs)",
        ));
    }
    if any_key(shapes, |k| k.contains("double_blocks."))
        && any_key(shapes, |k| k.contains("single_blocks."))
    {
        return Err(refuse("a Flux model"));
    }
    if any_key(shapes, |k| k.contains("joint_blocks.")) {
        return Err(refuse("a Stable Diffusion 3 model"));
    }

    let Some(unet_in) = shapes.get(UNET_IN) else {
        let what = if has_prefix(shapes, "encoder.conv_in.")
            || has_prefix(shapes, "decoder.conv_in.")
        {
            "a standalone VAE, not a full checkpoint"
        } else if has_prefix(shapes, "first_stage_model.") && !has_prefix(shapes, UNET) {
            "a VAE without a UNet, not a full checkpoint"
        } else if has_prefix(shapes, "conv_in.") && has_prefix(shapes, "down_blocks.") {
            "a diffusers-layout UNet, not a single-file checkpoint"
        } else if has_prefix(shapes, "text_model.") || has_prefix(shapes, "transformer.resblocks.")
        {
            "a text encoder alone, not a full checkpoint"
        } else {
            "not a recognised Stable Diffusion checkpoint (it has no `model.diffusion_model.input_blocks.0.0.weight`)"
        };
        return Err(refuse(what));
    };
    let in_channels = unet_in.get(1).copied().unwrap_or(0);
    let inpaint = in_channels == 9;

    if let Some(to_k) = shapes.get(SD12_LEVEL0_ATTN) {
        let ctx = to_k.last().copied().unwrap_or(0);
        let what = match (ctx, inpaint) {
            (768, false) => "a Stable Diffusion 1.x checkpoint".to_string(),
            (768, true) => "a Stable Diffusion 1.x inpainting checkpoint".to_string(),
            (1024, false) => "a Stable Diffusion 2.x checkpoint".to_string(),
            (1024, true) => "a Stable Diffusion 2.x inpainting checkpoint".to_string(),
            (c, _) => format!("an SD 1.x/2.x-style checkpoint with context width {c}"),
        };
        return Err(refuse(&what));
    }
    if shapes.contains_key("edm_mean") || shapes.contains_key("edm_std") {
        return Err(refuse("a Playground v2.5 (EDM) checkpoint"));
    }
    if has_prefix(shapes, "edm_vpred.") {
        return Err(refuse("an EDM v-prediction SDXL variant (e.g. CosXL)"));
    }
    if any_key(shapes, |k| {
        k.ends_with(".scale_weight") || k.ends_with("scaled_fp8")
    }) {
        return Err(refuse("a scaled-FP8 checkpoint"));
    }

    let has_adm = shapes.contains_key(ADM);
    let family = if has_adm && has_prefix(shapes, XL_TE1) && has_prefix(shapes, XL_TE2) {
        if inpaint {
            Family::SdxlInpaint
        } else {
            Family::SdxlBase
        }
    } else if has_adm && has_prefix(shapes, REFINER_TE) {
        Family::SdxlRefiner
    } else if has_prefix(shapes, "cond_stage_model.") {
        return Err(refuse(
            "an SD 1.x/2.x-family checkpoint of an unrecognised variant",
        ));
    } else if has_adm {
        return Err(refuse(
            "an SDXL-like UNet without both SDXL text encoders (`conditioner.embedders.0/1`)",
        ));
    } else {
        return Err(refuse("a UNet checkpoint of an unrecognised architecture"));
    };
    if !matches!(in_channels, 4 | 9) {
        return Err(refuse(&format!(
            "an SDXL-like checkpoint with {in_channels} UNet input channels (4 or 9 are supported)"
        )));
    }

    let v_pred = shapes.contains_key("v_pred");
    Ok(Architecture {
        family,
        prediction: if v_pred {
            Prediction::V
        } else {
            Prediction::Epsilon
        },
        // ComfyUI only honours `ztsnr` together with `v_pred`; so do we.
        zero_terminal_snr: v_pred && shapes.contains_key("ztsnr"),
    })
}
