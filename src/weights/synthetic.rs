//! Random weights in a given layout, created directly on the device (no file). Lets the
//! bench measure a full-size SDXL's speed and memory on a machine that has no checkpoint.

use super::backend::{self, TensorSource};
use super::layout::is_norm_weight;
use super::shapes::ShapeMap;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// Answers every request from the layout's shape map with random values: weights
/// N(0, 1/fan_in), norm weights 1, biases 0, so activations stay finite.
struct RandomSource {
    shapes: Arc<ShapeMap>,
}

impl TensorSource for RandomSource {
    fn declared_shape(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(name).map(Vec::as_slice)
    }

    fn describe(&self) -> String {
        "synthetic layout".to_string()
    }

    fn fetch(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let shape = self.shapes.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("synthetic layout has no tensor `{name}`"))
        })?;
        let t = if is_norm_weight(name, shape) {
            Tensor::ones(shape.as_slice(), DType::F32, dev)?
        } else if shape.len() <= 1 {
            Tensor::zeros(shape.as_slice(), DType::F32, dev)?
        } else {
            let fan_in: usize = shape[1..].iter().product();
            let std = (1.0 / fan_in.max(1) as f64).sqrt();
            Tensor::randn(0f32, std as f32, shape.as_slice(), dev)?
        };
        t.to_dtype(dtype)
    }
}

/// A `VarBuilder` (full tensor names) producing random weights for `shapes` on `device`.
pub fn var_builder(
    shapes: Arc<ShapeMap>,
    dtype: DType,
    device: &Device,
) -> candle_nn::VarBuilder<'static> {
    backend::var_builder(RandomSource { shapes }, dtype, device)
}
