//! The sampler loop: initial noise per image (with A1111's variation seed), the img2img
//! start, classifier-free guidance around the UNet, and the sampler stepping through the
//! schedule.

use std::time::Instant;

use candle_core::{DType, Tensor};

use super::{Conditioning, GenerateRequest, PipelineError, Progress, SdxlPipeline, Timings};
use crate::model::unet::{time_ids_embedding, TIME_ID_DIM};
use crate::sampling::sampler::Prediction;
use crate::sampling::{self, ImageRng, Sampler, SamplerNoise, StepInfo};

/// Where [`SdxlPipeline::denoise`] starts.
#[derive(Debug, Clone, Copy)]
pub enum DenoiseFrom<'a> {
    /// txt2img: pure noise scaled to the schedule's first σ.
    Noise,
    /// img2img (diffusers' strength rule): clean image latents `[N, C, h, w]`, already
    /// multiplied by the VAE scaling factor; the latent size comes from them. The schedule
    /// for `req.steps` is laid out in full and its first `steps - min(int(steps·strength),
    /// steps)` steps are skipped; the start is `latents + noise·σ_start`. Strength ≥ 1 is
    /// exactly the txt2img start (latents ignored); 0 steps returns the latents unchanged.
    Latents { latents: &'a Tensor, strength: f32 },
}

impl SdxlPipeline {
    /// The sampler loop for all images at once (docs/sampling.md).
    ///
    /// Each image has its own generator ([`ImageRng`] of `req.noise`, seeded `seeds[i]`): its
    /// initial noise is drawn first (slerped towards subseed `+ i`'s noise with
    /// `req.variation`, as A1111), then any per-step sampler noise in order, so image `i`
    /// equals a single-image run with its seed. SDE samplers take their noise from
    /// `req.sde_noise` (a Brownian tree per image seeded `seeds[i]`, or the generators).
    /// `from` picks txt2img or img2img (see [`DenoiseFrom`]). Progress is reported after
    /// every sampler step (step i of the steps actually run); `cancelled` is checked before
    /// every UNet call. Returns f32 latents `[N, C, h, w]`.
    #[allow(clippy::too_many_arguments)]
    pub fn denoise(
        &self,
        req: &GenerateRequest,
        cond: &Conditioning,
        seeds: &[u64],
        from: DenoiseFrom<'_>,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
        timings: &mut Timings,
    ) -> Result<Tensor, PipelineError> {
        if let Some(v) = req.variation {
            if !(0.0..=1.0).contains(&v.strength) {
                return Err(PipelineError::InvalidRequest(format!(
                    "variation strength {} is not allowed: use a number from 0 to 1",
                    v.strength
                )));
            }
        }
        let phi = req.guidance_rescale;
        if !(0.0..=1.0).contains(&phi) {
            return Err(PipelineError::InvalidRequest(format!(
                "guidance_rescale {phi} is not allowed: use a number from 0 to 1"
            )));
        }
        let n = seeds.len();
        let ucfg = self.unet.config();
        let sampler = Sampler::new(
            req.sampler,
            req.schedule,
            &self.schedule_config(),
            req.steps as usize,
        )?;

        let (per_image, init): (Vec<usize>, Option<(&Tensor, f32)>) = match from {
            DenoiseFrom::Noise => {
                // Latents are the image size divided by the VAE's factor (8 for SDXL: one ×2
                // per level after the first).
                let factor = 1usize << self.vae.config().block_out_channels.len().saturating_sub(1);
                let (lh, lw) = (req.height as usize / factor, req.width as usize / factor);
                (vec![ucfg.in_channels, lh, lw], None)
            }
            DenoiseFrom::Latents { latents, strength } => {
                let dims = latents.dims();
                if dims.len() != 4 || dims[0] != n || dims[1] != ucfg.in_channels {
                    return Err(PipelineError::Internal(format!(
                        "img2img latents have shape {dims:?}; expected [{n}, {}, h, w]",
                        ucfg.in_channels
                    )));
                }
                if !strength.is_finite() || strength < 0.0 {
                    return Err(PipelineError::InvalidRequest(format!(
                        "strength {strength} is not allowed: use a number from 0 to 1"
                    )));
                }
                (dims[1..].to_vec(), Some((latents, strength)))
            }
        };

        let mut rngs: Vec<ImageRng> = seeds.iter().map(|&s| ImageRng::new(req.noise, s)).collect();
        let numel: usize = per_image.iter().product();
        let mut data = Vec::with_capacity(numel * n);
        for (i, rng) in rngs.iter_mut().enumerate() {
            let noise = rng.randn(numel);
            match req.variation {
                // A1111: image i blends towards the noise of subseed + i; its later sampler
                // noise still comes from its own seed's generator.
                Some(v) => {
                    let sub =
                        ImageRng::new(req.noise, v.subseed.wrapping_add(i as u64)).randn(numel);
                    data.extend(sampling::variation::slerp_noise(
                        v.strength, &noise, &sub, &per_image,
                    ));
                }
                None => data.extend(noise),
            }
        }
        let mut shape = vec![n];
        shape.extend_from_slice(&per_image);
        let noise = Tensor::from_vec(data, shape, &self.device)?;

        let total = sampler.num_steps();
        let (x, start) = match init {
            None => (sampler.init_latents(&noise)?, 0),
            Some((_, strength)) if strength >= 1.0 => (sampler.init_latents(&noise)?, 0),
            Some((latents, strength)) => {
                // diffusers: init_timestep = min(int(steps·strength), steps), run the last
                // init_timestep steps. The f32 strength is widened through its shortest
                // decimal form so that e.g. 0.3 counts as Python's 0.3, not 0.30000001.
                let s64: f64 = strength.to_string().parse().unwrap_or(strength as f64);
                let run = ((total as f64 * s64) as usize).min(total);
                if run == 0 {
                    return Ok(latents.to_dtype(DType::F32)?);
                }
                let start = total - run;
                (sampler.noised_latents(latents, &noise, start)?, start)
            }
        };

        // UNet inputs that do not change between steps: batch [uncond × n, cond × n].
        let cfg = req.cfg();
        let rep = |t: &Tensor| -> candle_core::Result<Tensor> { t.repeat(n) };
        let (context, y) = {
            let time_emb = time_ids_embedding(&cond.time_ids, TIME_ID_DIM)?;
            let y_c = Tensor::cat(&[&cond.pooled, &time_emb], 1)?;
            match (&cond.negative_prompt_embeds, &cond.negative_pooled) {
                (Some(ne), Some(np)) if cfg => {
                    let y_u = Tensor::cat(&[np, &time_emb], 1)?;
                    (
                        Tensor::cat(&[rep(ne)?, rep(&cond.prompt_embeds)?], 0)?,
                        Tensor::cat(&[rep(&y_u)?, rep(&y_c)?], 0)?,
                    )
                }
                _ => (rep(&cond.prompt_embeds)?, rep(&y_c)?),
            }
        };
        let context = context
            .to_dtype(self.unet.dtype())?
            .to_device(&self.device)?;
        let y = y.to_device(&self.device)?;

        let ms = sampler.model_sampling();
        // DDIM CFG++ scales the guidance down (A1111) and renoises with the uncond prediction.
        let guidance = req.guidance * sampler.kind().guidance_multiplier();
        let want_uncond = sampler.kind().needs_uncond();
        let mut unet_calls = 0u32;
        let mut model = |x: &Tensor, sigma: f32, t: f64| -> Result<Prediction, PipelineError> {
            if cancelled() {
                return Err(PipelineError::Cancelled);
            }
            let x_in = ms.scale_input(x, sigma)?;
            let x_in = if cfg {
                Tensor::cat(&[&x_in, &x_in], 0)?
            } else {
                x_in
            };
            let ts = Tensor::new(&[t as f32], &self.device)?;
            let out = self
                .unet
                .forward(&x_in, &ts, &context, &y)?
                .to_dtype(DType::F32)?;
            let (guided, uncond) = if cfg {
                let u = out.narrow(0, 0, n)?;
                let c = out.narrow(0, n, n)?;
                let g = sampling::guidance::guide(&u, &c, guidance, req.guidance_rescale)?;
                (g, want_uncond.then_some(u))
            } else {
                (out, None)
            };
            unet_calls += 1;
            Ok(Prediction {
                denoised: ms.denoised(&guided, x, sigma, t)?,
                uncond: match uncond {
                    Some(u) => Some(ms.denoised(&u, x, sigma, t)?),
                    None => None,
                },
            })
        };
        let mut step_started = Instant::now();
        let mut on_step = |info: StepInfo<'_>| -> Result<(), PipelineError> {
            tracing::debug!(
                step = info.step,
                steps = info.steps,
                sigma = info.sigma,
                seconds = step_started.elapsed().as_secs_f64(),
                "sampler step"
            );
            step_started = Instant::now();
            progress(Progress {
                step: info.step as u32,
                steps: info.steps as u32,
            });
            Ok(())
        };
        let mut noise_src =
            SamplerNoise::new(&mut rngs, seeds, &per_image, &self.device, req.sde_noise)?;
        let out = sampler.sample_cfg(x, start, &mut noise_src, &mut model, &mut on_step);
        timings.unet_steps += unet_calls;
        out
    }
}
