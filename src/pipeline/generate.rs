//! One request end to end: the LoRA switch, then encode → denoise → decode, with the
//! timings of each stage.

use std::time::Instant;

use candle_core::{Device, Tensor};

use super::load::{TE1_PREFIX, TE2_PREFIX, UNET_PREFIX};
use super::{
    DenoiseFrom, GenerateOutput, GenerateRequest, PipelineError, Progress, SdxlPipeline, Timings,
};
use crate::model::clip::ClipTextModel;
use crate::model::unet::UNet;
use crate::model::ModelError;

impl SdxlPipeline {
    /// Merges the request's LoRA set (its `loras` list and the prompt's `<lora:…>` tags)
    /// into the weights, rebuilding the text encoders and UNet from the resident store when
    /// anything changed, and returns the request with the tags removed from its prompt.
    pub fn apply_loras(&mut self, req: &GenerateRequest) -> Result<GenerateRequest, PipelineError> {
        let Some(rt) = self.loras.as_mut() else {
            if !req.loras.is_empty() {
                return Err(PipelineError::Config(
                    "LoRAs need a checkpoint file, not synthetic weights".into(),
                ));
            }
            return Ok(req.clone());
        };
        let prepared = rt.prepare(&req.loras, &req.prompt)?;
        if prepared.changed {
            let t = Instant::now();
            let model_err = |source: ModelError| PipelineError::Model {
                path: self.info.checkpoint.clone(),
                source,
            };
            let vb = rt.var_builder(self.unet.dtype(), &self.device);
            let rebuilt = (|| {
                Ok::<_, ModelError>((
                    ClipTextModel::load(vb.pp(TE1_PREFIX), &self.te1_cfg)?,
                    ClipTextModel::load(vb.pp(TE2_PREFIX), &self.te2_cfg)?,
                    UNet::new(vb.pp(UNET_PREFIX), &self.unet_cfg)?,
                ))
            })();
            let (te1, te2, unet) = match rebuilt {
                Ok(m) => m,
                Err(e) => {
                    rt.mark_dirty();
                    return Err(model_err(e));
                }
            };
            (self.te1, self.te2, self.unet) = (te1, te2, unet);
            tracing::info!(
                loras = ?prepared.active,
                switch_s = prepared.stats.seconds,
                total_s = t.elapsed().as_secs_f64() + prepared.stats.seconds,
                "LoRA set switched"
            );
        }
        Ok(GenerateRequest {
            prompt: prepared.prompt,
            ..req.clone()
        })
    }

    /// [`apply_loras`](Self::apply_loras), then [`generate`](Self::generate).
    pub fn generate_with_loras(
        &mut self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<GenerateOutput, PipelineError> {
        req.validate()?;
        let req = self.apply_loras(req)?;
        self.generate(&req, progress, cancelled)
    }

    /// Runs one request: encode, denoise each image from its own generator, decode. LoRAs
    /// and prompt tags are not applied here (see [`generate_with_loras`](Self::generate_with_loras)).
    pub fn generate(
        &self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<GenerateOutput, PipelineError> {
        req.validate()?;
        if req.init_image.is_some() || req.hires.is_some() {
            return self.generate_img2img_or_hires(req, progress, cancelled);
        }
        let started = Instant::now();
        let mut timings = Timings::default();

        let t = Instant::now();
        let cond = {
            let _s = tracing::debug_span!("encode").entered();
            self.encode(req)?
        };
        timings.encode_s = t.elapsed().as_secs_f64();

        let n = req.num_images as usize;
        let seeds: Vec<u64> = (0..n as u64).map(|i| req.seed.wrapping_add(i)).collect();
        let t = Instant::now();
        let latents = {
            let _s = tracing::debug_span!("denoise", steps = req.steps).entered();
            self.denoise(
                req,
                &cond,
                &seeds,
                DenoiseFrom::Noise,
                progress,
                cancelled,
                &mut timings,
            )?
        };
        timings.denoise_s = t.elapsed().as_secs_f64();
        self.finish(latents, seeds, started, timings)
    }

    /// The common tail of every request: decode the final latents, convert to 8-bit images,
    /// log the stage timings, and bring the tensors back to the host.
    pub(super) fn finish(
        &self,
        latents: Tensor,
        seeds: Vec<u64>,
        started: Instant,
        mut timings: Timings,
    ) -> Result<GenerateOutput, PipelineError> {
        let t = Instant::now();
        let image_float = {
            let _s = tracing::debug_span!("decode").entered();
            self.decode(&latents, &mut timings)?
        };
        let images = super::image::tensor_to_images(&image_float)?;
        timings.decode_s = t.elapsed().as_secs_f64();
        timings.total_s = started.elapsed().as_secs_f64();
        tracing::info!(
            encode_s = timings.encode_s,
            denoise_s = timings.denoise_s,
            decode_s = timings.decode_s,
            total_s = timings.total_s,
            "generated {} image(s)",
            seeds.len()
        );
        Ok(GenerateOutput {
            images,
            seeds,
            latents: latents.to_device(&Device::Cpu)?,
            image_float: image_float.to_device(&Device::Cpu)?,
            timings,
        })
    }
}
