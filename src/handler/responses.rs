//! Result bodies. The default is the RunPod SDXL worker's shape, built in the deliver stage;
//! this file renders A1111's shape for jobs that ask for it (`response_format: "a1111"`,
//! `RESPONSE_FORMAT=a1111`, or any request that came in the A1111 envelope):
//! `{"images": [raw base64], "parameters": {the request}, "info": "<JSON string>"}`, where
//! `info` carries the keys A1111's `Processed.js()` writes.

use base64::Engine as _;
use serde_json::{json, Value};

use super::stages::{EncodedImages, ParsedJob};
use super::{SdxlHandler, MAX_INLINE_RESULT_BYTES, VERSION};
use crate::runpod::JobError;

impl SdxlHandler {
    /// The A1111 response body of a finished job.
    pub(super) fn a1111_body(
        &self,
        job: &ParsedJob,
        seeds: &[u64],
        encoded: &EncodedImages,
    ) -> Result<Value, JobError> {
        let input = &job.input;
        let echo = job.meta.a1111.as_ref();
        let send = echo.is_none_or(|e| e.send_images);
        let images: Vec<String> = if send {
            encoded
                .files
                .iter()
                .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
                .collect()
        } else {
            Vec::new()
        };
        let bytes: usize = images.iter().map(String::len).sum();
        if bytes > MAX_INLINE_RESULT_BYTES {
            return Err(JobError::new(
                "result_too_large",
                format!(
                    "the images are {bytes} bytes as base64, over RunPod's ~20 MB result \
                     limit: ask for fewer images or a smaller size"
                ),
            ));
        }
        let n = seeds.len();
        let negative = input.negative_prompt.clone().unwrap_or_default();
        let (width, height) = match input.hires {
            Some(h) => {
                crate::pipeline::img2img::hires_size(input.width, input.height, h.scale as f32)
            }
            None => (input.width, input.height),
        };
        let subseed = input.subseed.map(|(s, _)| s);
        let all_subseeds: Vec<Value> = (0..n as u64)
            .map(|i| subseed.map_or(json!(-1), |s| json!(s.wrapping_add(i))))
            .collect();
        let denoise = input
            .img2img
            .as_ref()
            .map(|i| i.strength)
            .or(input.hires.map(|h| h.denoise));
        let model_name = std::path::Path::new(&self.checkpoint.file_name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned());
        let vae = self.models.vae();
        let mut info = json!({
            "prompt": input.prompt,
            "all_prompts": vec![&input.prompt; n],
            "negative_prompt": negative,
            "all_negative_prompts": vec![&negative; n],
            "seed": job.seed,
            "all_seeds": seeds,
            "subseed": subseed.map_or(json!(-1), |s| json!(s)),
            "all_subseeds": all_subseeds,
            "subseed_strength": input.subseed.map_or(0.0, |(_, x)| x),
            "width": width,
            "height": height,
            "sampler_name": input.sampler.label(),
            "cfg_scale": input.guidance_scale,
            "steps": input.steps,
            "batch_size": echo.map_or(input.num_images, |e| e.batch_size),
            "restore_faces": false,
            "face_restoration_model": null,
            "sd_model_name": model_name,
            "sd_model_hash": self.checkpoint.autov2.to_ascii_lowercase(),
            "sd_vae_name": vae.map(|v| v.file_name.clone()),
            "sd_vae_hash": vae.map(|v| v.autov2.to_ascii_lowercase()),
            "seed_resize_from_w": -1,
            "seed_resize_from_h": -1,
            "denoising_strength": denoise,
            "extra_generation_params": {"Schedule type": input.schedule.label()},
            "index_of_first_image": 0,
            "infotexts": encoded.infotexts,
            "styles": [],
            "job_timestamp": job_timestamp(std::time::SystemTime::now()),
            "clip_skip": input.clip_skip.unwrap_or(2),
            "is_using_inpainting_conditioning": false,
            "version": VERSION,
        });
        if !job.meta.ignored_fields.is_empty() || !job.meta.notes.is_empty() {
            info["ignored_fields"] = json!(job.meta.ignored_fields);
            info["notes"] = json!(job.meta.notes);
        }
        let parameters = echo.map_or_else(|| json!(input), |e| e.parameters.clone());
        Ok(json!({
            "images": images,
            "parameters": parameters,
            "info": info.to_string(),
        }))
    }
}

/// A1111's `job_timestamp`: the UTC time as `YYYYmmddHHMMSS`.
pub fn job_timestamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_match_known_dates() {
        // 2024-07-27 12:34:56 UTC and 2000-02-29 00:00:00 UTC (a leap day).
        let t = UNIX_EPOCH + Duration::from_secs(1_722_083_696);
        assert_eq!(job_timestamp(t), "20240727123456");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(job_timestamp(t), "20000229000000");
    }
}
