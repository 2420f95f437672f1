//! Image-to-image and the hires fix, built on [`SdxlPipeline::denoise`] with
//! [`DenoiseFrom::Latents`].
//!
//! - **img2img** (diffusers' `StableDiffusionXLImg2ImgPipeline`): the input image is fitted to
//!   the request size ([`crate::image::input::fit`], A1111 "Crop and resize"), mapped to
//!   [-1, 1], VAE-encoded, and the latent distribution's **mean** × scaling factor is the
//!   starting point. diffusers samples the distribution with the request's generator; the
//!   mean makes the result independent of that extra draw (as ComfyUI's VAE Encode does), and
//!   the SDXL VAE's posterior std is tiny, so the images barely differ. The denoise noise is
//!   then each image generator's first draw, exactly as in txt2img.
//! - **hires fix** (A1111 txt2img "Hires. fix" with the default "Latent" upscaler): a txt2img
//!   pass at the request size, latents upscaled bilinearly (torch `interpolate(mode="bilinear",
//!   align_corners=False, antialias=False)`), time ids re-made for the new size, then an
//!   img2img pass with fresh generators from the same seeds. As in A1111, `hires.steps` (or
//!   the request's `steps` when 0) is the number of steps the second pass **runs**: the
//!   schedule is laid out for `int(steps / min(denoise, 0.999))` steps and the first ones are
//!   skipped (`sd_samplers_common.setup_img2img_steps`).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use super::{
    DenoiseFrom, GenerateOutput, GenerateRequest, HiresFix, PipelineError, Progress, SdxlPipeline,
    Timings, MAX_SIDE, MAX_STEPS,
};
use crate::image::input::fit;
use crate::model::vae::Vae;
use crate::sampling::{Sampler, SamplerKind, ScheduleConfig, SigmaSchedule};

/// Largest hires scale factor.
pub const MAX_HIRES_SCALE: f32 = 4.0;

/// The size of the hires result: `int(side · scale)` (A1111's `hr_upscale_to_x`) rounded down
/// to a multiple of 8, the VAE's factor. The scale is taken at its decimal value (0.1 + 1.5 is
/// what the user typed, not the nearest f32) so the rounding matches A1111's Python floats.
pub fn hires_size(width: u32, height: u32, scale: f32) -> (u32, u32) {
    let s = decimal_f64(scale);
    let side = |v: u32| (((f64::from(v) * s).floor() as u64 / 8) * 8).min(u64::from(u32::MAX));
    (side(width) as u32, side(height) as u32)
}

/// `x` as the f64 its shortest decimal representation denotes (what Python parsed from JSON).
fn decimal_f64(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// Checks the img2img and hires fields of `req`; messages name the field.
pub fn validate(req: &GenerateRequest) -> Result<(), PipelineError> {
    let bad = |m: String| Err(PipelineError::InvalidRequest(m));
    if req.init_image.is_some() && req.hires.is_some() {
        return bad(
            "`hires` and an input image (`image` / `image_url`) cannot be combined: hires fix \
             upscales a text-to-image result; for img2img, send the image at the final size"
                .into(),
        );
    }
    if let Some(init) = &req.init_image {
        if !(0.0..=1.0).contains(&init.strength) {
            return bad(format!(
                "strength {} is not allowed: use a number from 0 to 1",
                init.strength
            ));
        }
        if init.image.width() == 0 || init.image.height() == 0 {
            return bad("the input image (`image` / `image_url`) has no pixels".into());
        }
    }
    if let Some(h) = &req.hires {
        if !h.scale.is_finite() || h.scale <= 1.0 || h.scale > MAX_HIRES_SCALE {
            return bad(format!(
                "hires.scale {} is not allowed: use a number above 1 and at most {MAX_HIRES_SCALE}",
                h.scale
            ));
        }
        if !(0.0..=1.0).contains(&h.denoise) {
            return bad(format!(
                "hires.denoise {} is not allowed: use a number from 0 to 1",
                h.denoise
            ));
        }
        if h.steps > MAX_STEPS {
            return bad(format!(
                "hires.steps {} is not allowed: use 0 (same as steps) to {MAX_STEPS}",
                h.steps
            ));
        }
        let (w, hh) = hires_size(req.width, req.height, h.scale);
        if w > MAX_SIDE || hh > MAX_SIDE {
            return bad(format!(
                "hires.scale {} makes {}x{} → {w}x{hh}; each side may be at most {MAX_SIDE} px",
                h.scale, req.width, req.height
            ));
        }
    }
    Ok(())
}

/// An RGB image → `[1, 3, H, W]` f32 in [-1, 1] as diffusers' image processor makes it
/// (`x / 255 · 2 − 1`, in that order, in f32).
pub fn image_to_tensor(img: &RgbImage, device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let plane = w * h;
    let mut data = vec![0f32; 3 * plane];
    for (p, px) in img.pixels().enumerate() {
        for c in 0..3 {
            data[c * plane + p] = (f32::from(px[c]) / 255.0) * 2.0 - 1.0;
        }
    }
    Tensor::from_vec(data, (1, 3, h, w), device)
}

/// Bilinear resize of `[N, C, h, w]` to `[N, C, out_h, out_w]` as torch's
/// `interpolate(mode="bilinear", align_corners=False, antialias=False)`: source coordinate
/// `(dst + 0.5) · in/out − 0.5`, clamped at 0, weights computed in f32. Runs on the host:
/// latents are small (128² × 4 at 1024²) and candle has no bilinear kernel.
pub fn upscale_latents_bilinear(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if h == 0 || w == 0 || out_h == 0 || out_w == 0 {
        candle_core::bail!("bilinear resize of an empty tensor ({h}x{w} → {out_h}x{out_w})");
    }
    let device = x.device().clone();
    let src = x
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    // (i0, i1, λ0, λ1) per output index along one axis.
    let taps = |inp: usize, out: usize| -> Vec<(usize, usize, f32, f32)> {
        let scale = inp as f32 / out as f32;
        (0..out)
            .map(|o| {
                let s = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (s as usize).min(inp - 1);
                let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
                let l1 = s - i0 as f32;
                (i0, i1, 1.0 - l1, l1)
            })
            .collect()
    };
    let (ty, tx) = (taps(h, out_h), taps(w, out_w));
    let mut out = Vec::with_capacity(n * c * out_h * out_w);
    for plane in src.chunks_exact(h * w) {
        for &(y0, y1, a0, a1) in &ty {
            let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
            for &(x0, x1, b0, b1) in &tx {
                out.push(a0 * (b0 * r0[x0] + b1 * r0[x1]) + a1 * (b0 * r1[x0] + b1 * r1[x1]));
            }
        }
    }
    Tensor::from_vec(out, (n, c, out_h, out_w), &device)
}

/// A1111's second-pass step count: `(schedule length, strength)` so that the diffusers
/// strength rule of [`DenoiseFrom::Latents`] (`min(int(total · strength), total)` steps run)
/// runs exactly `steps` steps at the end of a schedule of `int(steps / min(denoise, 0.999))`
/// (`setup_img2img_steps` with `img2img_fix_steps` semantics, which hires always uses).
/// Returns `None` for denoise 0 (A1111 runs no second sampling then).
///
/// The schedule is made at least `steps + 1` long: the rule treats "all steps" as a fresh
/// txt2img start that ignores the latents, while A1111 still adds them; for denoise ≥ 0.999
/// this starts one step later on a one-step-longer schedule instead.
pub fn hires_schedule(steps: u32, denoise: f32, max_total: u32) -> Option<HiresSchedule> {
    if denoise <= 0.0 || steps == 0 {
        return None;
    }
    let d = decimal_f64(denoise).min(0.999);
    let total = ((f64::from(steps) / d).floor() as u64)
        .max(u64::from(steps) + 1)
        .min(u64::from(max_total)) as u32;
    let steps = steps.min(total.saturating_sub(1)).max(1);
    // Half a step above `steps`: the rule's floor lands on `steps` despite f32 rounding.
    let strength = (steps as f32 + 0.5) / total as f32;
    Some(HiresSchedule {
        total,
        strength,
        run: steps,
    })
}

/// The second hires pass as [`DenoiseFrom::Latents`] takes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HiresSchedule {
    /// Schedule length (`steps` of the second pass's request).
    pub total: u32,
    /// Strength that makes the diffusers rule run `run` steps of `total`.
    pub strength: f32,
    /// Steps actually run.
    pub run: u32,
}

impl SdxlPipeline {
    /// Entry for requests with `init_image` or `hires` (called by [`SdxlPipeline::generate`]).
    pub(super) fn generate_img2img_or_hires(
        &self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<GenerateOutput, PipelineError> {
        validate(req)?;
        let started = Instant::now();
        let mut timings = Timings::default();
        let n = req.num_images as usize;
        let seeds: Vec<u64> = (0..n as u64).map(|i| req.seed.wrapping_add(i)).collect();

        let t = Instant::now();
        let cond = {
            let _s = tracing::debug_span!("encode").entered();
            self.encode(req)?
        };
        timings.encode_s = t.elapsed().as_secs_f64();

        let latents = if let Some(init) = &req.init_image {
            let t = Instant::now();
            let clean = {
                let _s = tracing::debug_span!("vae_encode").entered();
                self.encode_init_image(&init.image, req.width, req.height, &mut timings)?
            };
            let clean = clean.repeat((n, 1, 1, 1))?;
            let vae_encode_s = t.elapsed().as_secs_f64();
            timings.encode_s += vae_encode_s;
            tracing::debug!(seconds = vae_encode_s, "input image encoded");
            let t = Instant::now();
            let from = DenoiseFrom::Latents {
                latents: &clean,
                strength: init.strength,
            };
            let out = {
                let _s =
                    tracing::debug_span!("denoise", steps = req.steps, strength = init.strength)
                        .entered();
                self.denoise(req, &cond, &seeds, from, progress, cancelled, &mut timings)?
            };
            timings.denoise_s = t.elapsed().as_secs_f64();
            out
        } else if let Some(hires) = &req.hires {
            self.hires_pass(req, hires, &cond, &seeds, progress, cancelled, &mut timings)?
        } else {
            return Err(PipelineError::Internal(
                "img2img entry without init_image or hires".into(),
            ));
        };

        tracing::debug!(
            img2img = req.init_image.is_some(),
            hires = req.hires.is_some(),
            "denoised"
        );
        self.finish(latents, seeds, started, timings)
    }

    /// The clean latents of an input image (`[1, C, h, w]`, × scaling factor, f32): fitted to
    /// `width` × `height`, encoded in the VAE's dtype, retried in f32 when a half-precision
    /// VAE overflows (as decoding does).
    pub fn encode_init_image(
        &self,
        image: &RgbImage,
        width: u32,
        height: u32,
        timings: &mut Timings,
    ) -> Result<Tensor, PipelineError> {
        let fitted;
        let image = if image.dimensions() == (width, height) {
            image
        } else {
            fitted = fit(image, width, height);
            &fitted
        };
        let x = image_to_tensor(image, self.device())?;
        let mean = match encode_mean(&self.vae, &x)? {
            Some(m) => m,
            None => {
                let Some(vae32) = &self.vae_f32 else {
                    return Err(PipelineError::NonFinite(
                        "the VAE encoder produced NaN/inf latents".into(),
                    ));
                };
                tracing::warn!(
                    "VAE encoder produced non-finite values in {}; encoding again in f32",
                    self.info().vae_dtype
                );
                timings.vae_f32_retry = true;
                encode_mean(vae32, &x)?.ok_or_else(|| {
                    PipelineError::NonFinite(
                        "the VAE encoder produced NaN/inf latents, also in f32".into(),
                    )
                })?
            }
        };
        Ok((mean * self.vae.scaling_factor())?)
    }

    /// Hires fix: txt2img at the request size, latent upscale, img2img at the scaled size.
    #[allow(clippy::too_many_arguments)]
    fn hires_pass(
        &self,
        req: &GenerateRequest,
        hires: &HiresFix,
        cond: &super::Conditioning,
        seeds: &[u64],
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
        timings: &mut Timings,
    ) -> Result<Tensor, PipelineError> {
        let (w2, h2) = hires_size(req.width, req.height, hires.scale);
        let second_steps = if hires.steps == 0 {
            req.steps
        } else {
            hires.steps
        };
        let limit = longest_schedule(
            req.sampler,
            req.schedule,
            &self.schedule_config(),
            MAX_SECOND_PASS_SCHEDULE,
        );
        let schedule = hires_schedule(second_steps, hires.denoise, limit);
        let second_run = schedule.map_or(0, |s| s.run);

        let t = Instant::now();
        let first_req = GenerateRequest {
            hires: None,
            init_image: None,
            ..req.clone()
        };
        let mut first_total = 0;
        let low = {
            let _s = tracing::debug_span!("denoise", pass = 1, steps = req.steps).entered();
            let mut report = |p: Progress| {
                first_total = p.steps;
                progress(Progress {
                    step: p.step,
                    steps: p.steps + second_run,
                });
            };
            self.denoise(
                &first_req,
                cond,
                seeds,
                DenoiseFrom::Noise,
                &mut report,
                cancelled,
                timings,
            )?
        };
        if cancelled() {
            return Err(PipelineError::Cancelled);
        }
        let factor = self.latent_factor();
        let up = {
            let _s = tracing::debug_span!("latent_upscale", width = w2, height = h2).entered();
            upscale_latents_bilinear(&low, h2 as usize / factor, w2 as usize / factor)?
        };
        let Some(HiresSchedule {
            total, strength, ..
        }) = schedule
        else {
            timings.denoise_s = t.elapsed().as_secs_f64();
            return Ok(up);
        };
        // The second pass conditions on the new size (A1111 re-encodes its hires prompts with
        // the upscaled width/height); the text embeddings themselves do not change.
        let second_cond = super::Conditioning {
            time_ids: self.time_ids(w2, h2)?,
            ..cond.clone()
        };
        let second_req = GenerateRequest {
            width: w2,
            height: h2,
            steps: total,
            hires: None,
            init_image: None,
            ..req.clone()
        };
        let out = {
            let _s =
                tracing::debug_span!("denoise", pass = 2, steps = second_run, schedule = total)
                    .entered();
            let mut report = |p: Progress| {
                progress(Progress {
                    step: first_total + p.step,
                    steps: first_total + p.steps,
                });
            };
            self.denoise(
                &second_req,
                &second_cond,
                seeds,
                DenoiseFrom::Latents {
                    latents: &up,
                    strength,
                },
                &mut report,
                cancelled,
                timings,
            )?
        };
        timings.denoise_s = t.elapsed().as_secs_f64();
        Ok(out)
    }

    /// Pixels per latent pixel (8 for SDXL: one ×2 per VAE level after the first).
    fn latent_factor(&self) -> usize {
        1usize << self.vae.config().block_out_channels.len().saturating_sub(1)
    }
}

/// Longest schedule the second hires pass lays out: a request's own step limit. Some
/// samplers allow fewer (LCM on a diffusers spacing: 50; see [`longest_schedule`]).
const MAX_SECOND_PASS_SCHEDULE: u32 = MAX_STEPS;

/// The longest schedule, at most `limit` steps, that `kind` on `schedule` can lay out.
/// `int(steps / denoise)` grows without bound as the denoise shrinks, while samplers have
/// their own limits (LCM on a diffusers spacing takes 50 steps, DDIM "leading" runs out of
/// training timesteps near 1000). Schedule building is cheap, so this searches; a sampler
/// that builds with `n` steps builds with fewer.
pub fn longest_schedule(
    kind: SamplerKind,
    schedule: SigmaSchedule,
    cfg: &ScheduleConfig,
    limit: u32,
) -> u32 {
    let builds = |n: u32| Sampler::new(kind, schedule, cfg, n as usize).is_ok();
    if builds(limit) {
        return limit;
    }
    let (mut lo, mut hi) = (1u32, limit);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if builds(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The encoder's mean in f32, or `None` when it is not finite.
fn encode_mean(vae: &Vae, x: &Tensor) -> Result<Option<Tensor>, PipelineError> {
    let dist = vae.encode(x)?;
    let finite = dist
        .mean
        .sum_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?
        .is_finite();
    Ok(finite.then_some(dist.mean))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hires_sizes_round_down_to_multiples_of_8() {
        assert_eq!(hires_size(1024, 1024, 1.5), (1536, 1536));
        assert_eq!(hires_size(832, 1216, 1.5), (1248, 1824));
        // 1000 · 1.3 = 1300 → 1296; 64 · 1.3 = 83.2 → 80.
        assert_eq!(hires_size(1000, 64, 1.3), (1296, 80));
        // 0.1-style decimals: 1.15 · 1000 is 1150 in decimal (1149.99… as the nearest f32).
        assert_eq!(hires_size(1000, 1000, 1.15), (1144, 1144));
        assert_eq!(hires_size(1024, 1024, 4.0), (4096, 4096));
    }

    #[test]
    fn hires_schedule_runs_the_requested_steps() {
        for steps in 1..60u32 {
            for d in [
                0.05f32, 0.2, 0.3, 0.35, 0.5, 0.55, 0.7, 0.75, 0.9, 0.999, 1.0,
            ] {
                let HiresSchedule {
                    total,
                    strength,
                    run,
                } = hires_schedule(steps, d, 1000).unwrap();
                assert_eq!(run, steps, "steps {steps} denoise {d}");
                // The rule as denoise applies it: strength widened through its decimal form.
                let s64: f64 = strength.to_string().parse().unwrap();
                let applied = ((f64::from(total) * s64) as u32).min(total);
                assert_eq!(applied, steps, "steps {steps} denoise {d}");
                assert!(strength < 1.0, "latents must not be ignored");
                let a1111 = (f64::from(steps) / decimal_f64(d)).floor() as u32;
                if d < 0.999 && a1111 > steps {
                    assert_eq!(total, a1111.min(1000));
                }
            }
        }
        // A1111: 20 hires steps at denoise 0.5 lay out 40 and run the last 20.
        assert_eq!(hires_schedule(20, 0.5, 1000).unwrap().total, 40);
        assert_eq!(hires_schedule(20, 0.7, 1000).unwrap().total, 28);
        assert!(hires_schedule(20, 0.0, 1000).is_none());
        // Tiny denoise: the schedule is capped and still runs the requested steps.
        let h = hires_schedule(30, 0.01, MAX_STEPS).unwrap();
        assert_eq!((h.total, h.run), (MAX_STEPS, 30));
        // A limit below the requested steps: one step less than the schedule.
        let h = hires_schedule(60, 0.5, 50).unwrap();
        assert_eq!((h.total, h.run), (50, 49));
    }

    /// The second-pass schedule limit is the longest that builds, for every sampler and
    /// schedule that builds at all, so a small `hires.denoise` cannot make the pass fail.
    #[test]
    fn longest_schedule_is_the_sampler_limit() {
        let cfg = ScheduleConfig::sdxl();
        let mut limited = Vec::new();
        for kind in SamplerKind::ALL {
            for schedule in SigmaSchedule::ALL {
                if Sampler::new(kind, schedule, &cfg, 30).is_err() {
                    continue;
                }
                let n = longest_schedule(kind, schedule, &cfg, MAX_SECOND_PASS_SCHEDULE);
                assert!(Sampler::new(kind, schedule, &cfg, n as usize).is_ok());
                if n < MAX_SECOND_PASS_SCHEDULE {
                    assert!(Sampler::new(kind, schedule, &cfg, n as usize + 1).is_err());
                    limited.push((kind, schedule, n));
                }
            }
        }
        // LCM on diffusers spacings is the known limited one.
        assert!(
            limited.contains(&(SamplerKind::Lcm, SigmaSchedule::Default, 50)),
            "{limited:?}"
        );
    }

    /// torch.nn.functional.interpolate(x, size=(5, 7), mode="bilinear", align_corners=False)
    /// for x = arange(12).reshape(1, 1, 3, 4), printed by torch 2.x (rounded to 4 places).
    #[test]
    fn bilinear_matches_torch_align_corners_false() -> candle_core::Result<()> {
        let x = Tensor::arange(0f32, 12., &Device::Cpu)?.reshape((1, 1, 3, 4))?;
        let y = upscale_latents_bilinear(&x, 5, 7)?;
        let want: [[f32; 7]; 5] = [
            [0.0000, 0.3571, 0.9286, 1.5000, 2.0714, 2.6429, 3.0000],
            [1.6000, 1.9571, 2.5286, 3.1000, 3.6714, 4.2429, 4.6000],
            [4.0000, 4.3571, 4.9286, 5.5000, 6.0714, 6.6429, 7.0000],
            [6.4000, 6.7571, 7.3286, 7.9000, 8.4714, 9.0429, 9.4000],
            [8.0000, 8.3571, 8.9286, 9.5000, 10.0714, 10.6429, 11.0000],
        ];
        let got = y.squeeze(0)?.squeeze(0)?.to_vec2::<f32>()?;
        for (r, wr) in got.iter().zip(want.iter()) {
            for (a, b) in r.iter().zip(wr.iter()) {
                assert!((a - b).abs() < 1e-4, "{got:?}");
            }
        }
        // Same size is the identity; batches and channels are independent planes.
        let z = Tensor::randn(0f32, 1., (2, 4, 6, 5), &Device::Cpu)?;
        let same = upscale_latents_bilinear(&z, 6, 5)?;
        assert_eq!((same - &z)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn image_tensor_is_chw_in_minus_one_to_one() -> candle_core::Result<()> {
        let img = RgbImage::from_raw(2, 1, vec![0, 255, 51, 255, 0, 102]).unwrap();
        let t = image_to_tensor(&img, &Device::Cpu)?;
        assert_eq!(t.dims(), &[1, 3, 1, 2]);
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        let f = |x: f32| (x / 255.0) * 2.0 - 1.0;
        assert_eq!(v, vec![f(0.), f(255.), f(255.), f(0.), f(51.), f(102.)]);
        Ok(())
    }
}
