//! VAE output → 8-bit RGB, exactly as diffusers' image processor does it.

use candle_core::{DType, Tensor};
use image::RgbImage;

/// One channel value: `round_half_even(clamp(x/2 + 0.5, 0, 1) · 255)` in f32. diffusers
/// denormalises in torch (f32) and then rounds with NumPy, whose `round` is half-to-even;
/// `f32::round` (half away from zero) would differ on exact .5 values.
pub fn to_u8(x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    let v = (x / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0;
    v.round_ties_even() as u8
}

/// Converts a decoded batch `[B, 3, H, W]` (any float dtype, any device) into images.
pub fn tensor_to_images(decoded: &Tensor) -> candle_core::Result<Vec<RgbImage>> {
    let (b, c, h, w) = decoded.dims4()?;
    if c != 3 {
        candle_core::bail!("VAE output has {c} channels, expected 3");
    }
    let data = decoded
        .to_dtype(DType::F32)?
        .to_device(&candle_core::Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let plane = h * w;
    let mut out = Vec::with_capacity(b);
    for i in 0..b {
        let base = i * 3 * plane;
        let mut buf = Vec::with_capacity(3 * plane);
        for p in 0..plane {
            for ch in 0..3 {
                buf.push(to_u8(data[base + ch * plane + p]));
            }
        }
        let img = RgbImage::from_raw(w as u32, h as u32, buf)
            .ok_or_else(|| candle_core::Error::Msg("image buffer size mismatch".into()))?;
        out.push(img);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_even_after_clamp() {
        assert_eq!(to_u8(-5.0), 0);
        assert_eq!(to_u8(5.0), 255);
        assert_eq!(to_u8(0.0), 128); // 127.5 → 128 (even)
                                     // x such that (x/2+0.5)*255 == 0.5 exactly → rounds to 0, not 1.
        let x = (0.5f32 / 255.0 - 0.5) * 2.0;
        let v = (x / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0;
        assert_eq!(to_u8(x), v.round_ties_even() as u8);
        assert_eq!(to_u8(f32::NAN), 0);
    }

    #[test]
    fn layout_is_chw_to_hwc() -> candle_core::Result<()> {
        // One 1x2 image: pixel 0 = (-1, 0, 1), pixel 1 = (1, 1, -1).
        let t = Tensor::new(
            &[[[[-1f32, 1.]], [[0., 1.]], [[1., -1.]]]],
            &candle_core::Device::Cpu,
        )?;
        let imgs = tensor_to_images(&t)?;
        assert_eq!(imgs[0].as_raw(), &vec![0, 128, 255, 255, 255, 0]);
        Ok(())
    }
}
