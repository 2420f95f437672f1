//! The A1111 "infotext" (`parameters`) string, the format Civitai's image parser reads to
//! link an image to its checkpoint and LoRAs. The reader of the same text, for requests that
//! paste one, is `handler::dialects::infotext`; docs/infotext.md describes both directions.

use serde_json::Value;

/// Everything written into an infotext. Optional parts are left out when `None`/empty.
#[derive(Debug, Clone, Default)]
pub struct Infotext {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub steps: u32,
    /// A1111 sampler label, e.g. `DPM++ 2M`.
    pub sampler: String,
    /// A1111 `Schedule type`, e.g. `Karras`.
    pub schedule: Option<String>,
    pub cfg_scale: f64,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    /// AutoV2 hash (first 10 hex digits of the file's SHA-256, lowercase).
    pub model_hash: Option<String>,
    /// Checkpoint file name without directory and extension.
    pub model: Option<String>,
    pub clip_skip: Option<u32>,
    /// A1111 variation seed and its strength.
    pub variation: Option<(u64, f64)>,
    /// img2img denoising strength.
    pub denoising_strength: Option<f64>,
    /// `RNG: NV` etc.; `None` for the default CPU source.
    pub rng: Option<String>,
    /// diffusers/A1111-extension guidance rescale φ (`CFG Rescale phi`).
    pub guidance_rescale: Option<f64>,
    /// Hires fix: (scale, second-pass steps (0 = same), denoising strength).
    pub hires: Option<(f64, u32, f64)>,
    /// `Emphasis` mode label when not the default.
    pub emphasis: Option<String>,
    /// `SDE noise` (this worker's key): the SDE samplers' noise source when it is not
    /// A1111's Brownian tree.
    pub sde_noise: Option<String>,
    /// `Zero negative prompt: True` (this worker's key): the request had no negative prompt
    /// and got all-zero negative conditioning, which A1111's empty negative prompt is not.
    pub zero_negative: bool,
    /// `(name, AutoV3 12-hex hash)` per LoRA.
    pub lora_hashes: Vec<(String, String)>,
    pub version: String,
    /// `Civitai resources` entries (`{"type", "modelVersionId", "weight", …}`).
    pub civitai_resources: Vec<Value>,
}

/// A1111's `quote`: values holding `,`, `:` or a newline are written as JSON strings.
fn quote(v: &str) -> String {
    if v.contains([',', ':', '\n']) {
        serde_json::to_string(v).unwrap_or_else(|_| v.to_string())
    } else {
        v.to_string()
    }
}

/// Formats a float the way Python prints it for whole numbers (`7.0` → `7`, `7.5` → `7.5`).
fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

impl Infotext {
    /// Renders the three-part text: prompt, `Negative prompt:` line, parameters line.
    pub fn render(&self) -> String {
        let mut params: Vec<(String, String)> = vec![
            ("Steps".into(), self.steps.to_string()),
            ("Sampler".into(), self.sampler.clone()),
        ];
        if let Some(s) = &self.schedule {
            params.push(("Schedule type".into(), s.clone()));
        }
        params.push(("CFG scale".into(), num(self.cfg_scale)));
        params.push(("Seed".into(), self.seed.to_string()));
        params.push(("Size".into(), format!("{}x{}", self.width, self.height)));
        if let Some(h) = &self.model_hash {
            params.push(("Model hash".into(), h.clone()));
        }
        if let Some(m) = &self.model {
            params.push(("Model".into(), m.clone()));
        }
        // A1111's order: variation, denoising strength, clip skip, RNG, hires, LoRAs,
        // emphasis, version.
        if let Some((subseed, strength)) = self.variation {
            params.push(("Variation seed".into(), subseed.to_string()));
            params.push(("Variation seed strength".into(), num(strength)));
        }
        if let Some(d) = self.denoising_strength {
            params.push(("Denoising strength".into(), num(d)));
        }
        if let Some(c) = self.clip_skip {
            params.push(("Clip skip".into(), c.to_string()));
        }
        if let Some(r) = &self.rng {
            params.push(("RNG".into(), r.clone()));
        }
        if let Some(phi) = self.guidance_rescale {
            params.push(("CFG Rescale phi".into(), num(phi)));
        }
        if let Some((scale, steps, denoise)) = self.hires {
            params.push(("Denoising strength".into(), num(denoise)));
            params.push(("Hires upscale".into(), num(scale)));
            if steps > 0 {
                params.push(("Hires steps".into(), steps.to_string()));
            }
            params.push(("Hires upscaler".into(), "Latent".into()));
        }
        if !self.lora_hashes.is_empty() {
            let joined: Vec<String> = self
                .lora_hashes
                .iter()
                .map(|(n, h)| format!("{}: {h}", n.replace([':', ','], "")))
                .collect();
            params.push(("Lora hashes".into(), joined.join(", ")));
        }
        if let Some(e) = &self.emphasis {
            params.push(("Emphasis".into(), e.clone()));
        }
        if let Some(n) = &self.sde_noise {
            params.push(("SDE noise".into(), n.clone()));
        }
        if self.zero_negative {
            params.push(("Zero negative prompt".into(), "True".into()));
        }
        params.push(("Version".into(), self.version.clone()));
        let mut line = params
            .iter()
            .map(|(k, v)| format!("{k}: {}", quote(v)))
            .collect::<Vec<_>>()
            .join(", ");
        if !self.civitai_resources.is_empty() {
            // Civitai's regex needs the leading comma and the array on the details line.
            let arr = Value::Array(self.civitai_resources.clone()).to_string();
            line.push_str(&format!(", Civitai resources: {arr}"));
        }
        let mut out = self.prompt.clone();
        if let Some(n) = self.negative_prompt.as_deref().filter(|n| !n.is_empty()) {
            out.push_str("\nNegative prompt: ");
            out.push_str(n);
        }
        out.push('\n');
        out.push_str(&line);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_a1111_layout_with_quoting() {
        let t = Infotext {
            prompt: "a cat, (masterpiece:1.2)".into(),
            negative_prompt: Some("blurry".into()),
            steps: 25,
            sampler: "DPM++ 2M".into(),
            schedule: Some("Karras".into()),
            cfg_scale: 7.0,
            seed: 1234567890,
            width: 832,
            height: 1216,
            model_hash: Some("31e35c80fc".into()),
            model: Some("sd_xl_base_1.0".into()),
            clip_skip: Some(2),
            lora_hashes: vec![
                ("add:detail".into(), "7c6bad76eb54".into()),
                ("style".into(), "0123456789ab".into()),
            ],
            version: "sdxl-worker 0.1.0".into(),
            civitai_resources: vec![json!({"type": "checkpoint", "modelVersionId": 128078})],
            ..Default::default()
        };
        assert_eq!(
            t.render(),
            "a cat, (masterpiece:1.2)\nNegative prompt: blurry\nSteps: 25, Sampler: DPM++ 2M, \
             Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 832x1216, \
             Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Clip skip: 2, \
             Lora hashes: \"adddetail: 7c6bad76eb54, style: 0123456789ab\", \
             Version: sdxl-worker 0.1.0, \
             Civitai resources: [{\"modelVersionId\":128078,\"type\":\"checkpoint\"}]"
        );
    }

    #[test]
    fn generation_options_in_a1111_order() {
        let t = Infotext {
            prompt: "x".into(),
            steps: 20,
            sampler: "DPM++ SDE".into(),
            schedule: Some("Karras".into()),
            cfg_scale: 6.0,
            seed: 5,
            width: 1024,
            height: 1024,
            clip_skip: Some(1),
            variation: Some((77, 0.25)),
            rng: Some("NV".into()),
            guidance_rescale: Some(0.7),
            hires: Some((1.5, 10, 0.5)),
            emphasis: Some("No norm".into()),
            sde_noise: Some("Gaussian".into()),
            zero_negative: true,
            version: "v".into(),
            ..Default::default()
        };
        assert_eq!(
            t.render(),
            "x\nSteps: 20, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 6, Seed: 5, \
             Size: 1024x1024, Variation seed: 77, Variation seed strength: 0.25, Clip skip: 1, \
             RNG: NV, CFG Rescale phi: 0.7, Denoising strength: 0.5, Hires upscale: 1.5, \
             Hires steps: 10, Hires upscaler: Latent, Emphasis: No norm, SDE noise: Gaussian, \
             Zero negative prompt: True, Version: v"
        );
    }

    #[test]
    fn empty_negative_and_unset_clip_skip_are_omitted() {
        let t = Infotext {
            prompt: "x".into(),
            negative_prompt: Some(String::new()),
            steps: 8,
            sampler: "Euler".into(),
            cfg_scale: 5.5,
            seed: 1,
            width: 128,
            height: 128,
            clip_skip: None,
            version: "v".into(),
            ..Default::default()
        };
        assert_eq!(
            t.render(),
            "x\nSteps: 8, Sampler: Euler, CFG scale: 5.5, Seed: 1, Size: 128x128, Version: v"
        );
    }
}
