//! What an image says about itself: the A1111 infotext embedded in every file, with the
//! Civitai resources (checkpoint and LoRAs, by model version id) that let Civitai link an
//! uploaded image to the models that made it.

use serde_json::json;

use super::request::GenerateInput;
use super::{SdxlHandler, VERSION};
use crate::fetch::ModelKind;
use crate::image::infotext::Infotext;
use crate::lora::extract_prompt_loras;
use crate::sampling::{NoiseKind, SdeNoise, SigmaSchedule};

impl SdxlHandler {
    /// The infotext of the image made with `seed` for `input`.
    pub(super) fn infotext(&self, input: &GenerateInput, seed: u64) -> Infotext {
        let model = std::path::Path::new(&self.checkpoint.file_name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned());
        let mut resources = self
            .checkpoint
            .civitai
            .as_ref()
            .map(|c| {
                vec![json!({"type": "checkpoint", "modelVersionId": c.version_id,
                            "modelName": self.checkpoint.name})]
            })
            .unwrap_or_default();
        // LoRAs of the request list and of `<lora:…>` prompt tags (kept in the prompt text,
        // as A1111 writes them), so Civitai recognises the resources.
        let mut lora_hashes = Vec::new();
        let tags = extract_prompt_loras(&input.prompt)
            .map(|(_, t)| t)
            .unwrap_or_default();
        let used = input
            .loras
            .iter()
            .map(|l| (l.name.as_str(), l.weight))
            .chain(tags.iter().map(|t| (t.name.as_str(), t.weight)));
        for (name, weight) in used {
            let Some(m) = self.models.find(ModelKind::Lora, name) else {
                continue;
            };
            if lora_hashes
                .iter()
                .any(|(n, _): &(String, String)| n == &m.name)
            {
                continue;
            }
            if let Some(h) = &m.autov3 {
                lora_hashes.push((m.name.clone(), h.to_ascii_lowercase()));
            }
            if let Some(c) = &m.civitai {
                let w = weight.unwrap_or(f64::from(m.default_weight.unwrap_or(1.0)));
                resources.push(json!({"type": "lora", "weight": w,
                                      "modelVersionId": c.version_id, "modelName": m.name}));
            }
        }
        Infotext {
            prompt: input.prompt.clone(),
            negative_prompt: input.negative_prompt.clone(),
            steps: input.steps,
            sampler: input.sampler.label().to_string(),
            schedule: Some(schedule_label(input.schedule).to_string()),
            cfg_scale: input.guidance_scale,
            seed,
            width: input.width,
            height: input.height,
            model_hash: Some(self.checkpoint.autov2.to_ascii_lowercase()),
            model,
            clip_skip: input.clip_skip,
            variation: input.subseed,
            denoising_strength: input.img2img.as_ref().map(|i| i.strength),
            // Always named: an infotext without `RNG` means A1111's GPU source.
            rng: Some(rng_label(input.noise).to_string()),
            guidance_rescale: (input.guidance_rescale > 0.0).then_some(input.guidance_rescale),
            hires: input.hires.map(|h| (h.scale, h.steps, h.denoise)),
            // Always named: an infotext without `Emphasis` means A1111's "Original".
            emphasis: Some(
                input
                    .prompt_weighting
                    .infotext_label()
                    .unwrap_or("ComfyUI")
                    .to_string(),
            ),
            sde_noise: (input.sde_noise == SdeNoise::Gaussian).then(|| "Gaussian".to_string()),
            zero_negative: input.negative_prompt.is_none(),
            lora_hashes,
            version: VERSION.to_string(),
            civitai_resources: resources,
        }
    }
}

/// The `Schedule type` written for `schedule`. The checkpoint's own diffusers spacing is
/// written `Default`: its label "Automatic" reads back as the sampler's default schedule,
/// which for most samplers is another one.
///
/// A1111's own definitions of Normal, SGM Uniform, Simple and DDIM share their labels with
/// ComfyUI's schedules of the same name, which a request's plain `normal` (and an infotext's
/// `Normal`) means here; they are written by their canonical names (`a1111_normal`, …) so that
/// the text reads back to the same schedule.
fn schedule_label(schedule: SigmaSchedule) -> &'static str {
    match schedule {
        SigmaSchedule::Default => "Default",
        SigmaSchedule::A1111Normal
        | SigmaSchedule::A1111SgmUniform
        | SigmaSchedule::A1111Simple
        | SigmaSchedule::A1111Ddim => schedule.name(),
        other => other.label(),
    }
}

/// A1111's `RNG` value of a noise source.
fn rng_label(noise: NoiseKind) -> &'static str {
    match noise {
        NoiseKind::Cpu => "CPU",
        NoiseKind::Nv => "NV",
    }
}
