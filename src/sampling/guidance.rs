//! Classifier-free guidance on the UNet output, with diffusers' optional `guidance_rescale`
//! (from Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed":
//! rescaling the guided prediction back to the conditional one's standard deviation counters
//! the over-exposure strong CFG causes with zero-terminal-SNR v-pred models).

use candle_core::{DType, Tensor};

/// `uncond + scale·(cond − uncond)` on the model outputs ([N, …] each), then, when
/// `rescale > 0`, diffusers' `rescale_noise_cfg`. The combination is done on the raw output
/// (ε or v) as diffusers does; since D is affine in it at fixed σ this equals CFG on D.
pub fn guide(
    uncond: &Tensor,
    cond: &Tensor,
    scale: f32,
    rescale: f32,
) -> candle_core::Result<Tensor> {
    let guided = (uncond + ((cond - uncond)? * scale as f64)?)?;
    if rescale > 0.0 {
        rescale_noise_cfg(&guided, cond, rescale)
    } else {
        Ok(guided)
    }
}

/// diffusers `rescale_noise_cfg`: `φ·cfg·(std(cond)/std(cfg)) + (1−φ)·cfg`, the standard
/// deviations taken per image over all non-batch dims with Bessel's correction
/// (`torch.std`'s default).
pub fn rescale_noise_cfg(cfg: &Tensor, cond: &Tensor, phi: f32) -> candle_core::Result<Tensor> {
    let cfg = cfg.to_dtype(DType::F32)?;
    let cond = cond.to_dtype(DType::F32)?;
    let std_cfg = per_image_std(&cfg)?;
    let std_cond = per_image_std(&cond)?;
    let mut shape = vec![cfg.dim(0)?];
    shape.extend(std::iter::repeat_n(1, cfg.rank() - 1));
    let ratio = (std_cond / std_cfg)?.reshape(shape)?;
    let rescaled = cfg.broadcast_mul(&ratio)?;
    (rescaled * phi as f64)? + (cfg * (1.0 - phi as f64))?
}

/// Unbiased standard deviation of each image: `[N, …]` → `[N]`.
fn per_image_std(x: &Tensor) -> candle_core::Result<Tensor> {
    let n = x.dim(0)?;
    let flat = x.reshape((n, ()))?;
    let m = flat.dim(1)?;
    let mean = flat.mean_keepdim(1)?;
    let centered = flat.broadcast_sub(&mean)?;
    let var = (centered.sqr()?.sum(1)? / (m.saturating_sub(1).max(1)) as f64)?;
    var.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// cfg = arange(8).reshape(2,4), cond = [[0,1,0,1],[2,2,2,3]], φ = 0.7: the unbiased
    /// stds (as `torch.std`) are 1.2909944 for both cfg rows and 0.57735026, 0.5 for cond
    /// (hand-computed: var of [0,1,2,3] = 5/3, of [0,1,0,1] = 1/3, of [2,2,2,3] = 1/4).
    #[test]
    fn rescale_matches_formula() {
        let dev = Device::Cpu;
        let cfg = Tensor::arange(0f32, 8.0, &dev)
            .unwrap()
            .reshape((2, 4))
            .unwrap();
        let cond = Tensor::new(&[[0f32, 1.0, 0.0, 1.0], [2.0, 2.0, 2.0, 3.0]], &dev).unwrap();
        let got = rescale_noise_cfg(&cfg, &cond, 0.7)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let r = [0.577_350_26f64 / 1.290_994_4, 0.5 / 1.290_994_4];
        for (i, (row, ratio)) in got.iter().zip(r).enumerate() {
            for (j, v) in row.iter().enumerate() {
                let c = (i * 4 + j) as f64;
                let want = 0.7 * c * ratio + 0.3 * c;
                assert!((*v as f64 - want).abs() < 1e-5, "{i},{j}: {v}");
            }
        }
    }

    #[test]
    fn zero_rescale_is_plain_cfg() {
        let dev = Device::Cpu;
        let u = Tensor::new(&[[1f32, 2.0]], &dev).unwrap();
        let c = Tensor::new(&[[3f32, 1.0]], &dev).unwrap();
        let g = guide(&u, &c, 2.0, 0.0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(g, vec![vec![5.0, 0.0]]);
    }
}
