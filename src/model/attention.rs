//! Scaled dot-product attention shared by the text encoders, the UNet and the VAE.
//! One place to swap in a fused kernel on GPUs.

use candle_core::{DType, Tensor};

/// `softmax(q·kᵀ·scale + mask)·v` for `q` `[B, H, Lq, Dh]`, `k`/`v` `[B, H, Lk, Dh]`.
/// `mask` (if any) is added to the scores and must broadcast to `[B, H, Lq, Lk]`.
/// The softmax runs in f32 whatever the input dtype, as PyTorch's SDPA does for half types.
pub fn sdpa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let dtype = q.dtype();
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    let scores = scores.to_dtype(DType::F32)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(&m.to_dtype(DType::F32)?)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    probs.matmul(&v.contiguous()?)
}

/// Additive causal mask `[L, L]`: 0 on and below the diagonal, −∞ above (CLIP text encoders).
pub fn causal_mask(len: usize, device: &candle_core::Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (len, len), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sdpa_matches_hand_computed_values() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        // One head, two queries, two keys, dim 1.
        let q = Tensor::new(&[[[[1f32], [0.]]]], &dev)?;
        let k = Tensor::new(&[[[[1f32], [-1.]]]], &dev)?;
        let v = Tensor::new(&[[[[2f32], [4.]]]], &dev)?;
        let out = sdpa(&q, &k, &v, None, 1.0)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        // Query 0: weights softmax([1, -1]) = [e/(e+1/e), ...].
        let w0 = 1f32.exp() / (1f32.exp() + (-1f32).exp());
        assert!((out[0] - (2.0 * w0 + 4.0 * (1.0 - w0))).abs() < 1e-6);
        assert!((out[1] - 3.0).abs() < 1e-6);
        // Causal: query 0 sees only key 0.
        let m = causal_mask(2, &dev)?;
        let out = sdpa(&q, &k, &v, Some(&m), 1.0)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!((out[0] - 2.0).abs() < 1e-6);
        Ok(())
    }
}
