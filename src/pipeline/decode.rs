//! Latents → pixels through the VAE, with a retry in f32 when a half-precision VAE
//! overflows.

use candle_core::{DType, Tensor};

use super::{PipelineError, SdxlPipeline, Timings};

impl SdxlPipeline {
    /// Decodes latents `[N, C, h, w]` into f32 images `[N, 3, H, W]`. A half-precision VAE
    /// that produces NaN/inf is retried in f32 (the SDXL VAE overflows in f16).
    pub fn decode(&self, latents: &Tensor, timings: &mut Timings) -> Result<Tensor, PipelineError> {
        if !all_finite(latents)? {
            return Err(PipelineError::NonFinite(format!(
                "the sampler produced NaN/inf latents (UNet in {}); try --dtype bf16 or f32, or a \
                 lower guidance_scale",
                self.info.dtype
            )));
        }
        let z = (latents / self.vae.scaling_factor())?;
        let out = self.vae.decode(&z)?;
        if all_finite(&out)? {
            return Ok(out);
        }
        if let Some(vae32) = &self.vae_f32 {
            tracing::warn!(
                "VAE produced non-finite values in {}; decoding again in f32",
                self.info.vae_dtype
            );
            timings.vae_f32_retry = true;
            let out = vae32.decode(&z)?;
            if all_finite(&out)? {
                return Ok(out);
            }
        }
        Err(PipelineError::NonFinite(
            "the VAE produced NaN/inf pixels, also in f32".into(),
        ))
    }
}

/// Whether a tensor holds no NaN/inf: any of them makes the sum non-finite, and decoded
/// pixels and latents (|x| of order 10) are far from overflowing an f32 sum.
fn all_finite(t: &Tensor) -> Result<bool, PipelineError> {
    Ok(t.sum_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?
        .is_finite())
}
