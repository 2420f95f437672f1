//! Random weights in a given layout, created directly on the device (no file). Lets the
//! bench measure a full-size SDXL's speed and memory on a machine that has no checkpoint.

use crate::model::ShapeMap;
use candle_core::{DType, Device, Shape, Tensor};
use std::sync::Arc;

/// candle backend that answers every request from the layout's shape map with random values:
/// weights N(0, 1/fan_in), norm weights 1, biases 0, so activations stay finite.
struct RandomBackend {
    shapes: Arc<ShapeMap>,
}

impl RandomBackend {
    fn make(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let is_norm_weight = shape.len() == 1
            && name.ends_with(".weight")
            && (name.contains("norm") || name.contains("ln_"));
        let t = if is_norm_weight {
            Tensor::ones(shape, DType::F32, dev)?
        } else if shape.len() <= 1 {
            Tensor::zeros(shape, DType::F32, dev)?
        } else {
            let fan_in: usize = shape[1..].iter().product();
            let std = (1.0 / fan_in.max(1) as f64).sqrt();
            Tensor::randn(0f32, std as f32, shape, dev)?
        };
        t.to_dtype(dtype)
    }
}

impl candle_nn::var_builder::SimpleBackend for RandomBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.shapes.get(name) {
            Some(found) if found.as_slice() != s.dims() => Err(candle_core::Error::Msg(format!(
                "synthetic layout: tensor `{name}` has shape {found:?}, the model expects {:?}",
                s.dims()
            ))),
            Some(_) => self.make(name, s.dims(), dtype, dev),
            None => Err(candle_core::Error::Msg(format!(
                "synthetic layout has no tensor `{name}`"
            ))),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let shape = self.shapes.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("synthetic layout has no tensor `{name}`"))
        })?;
        self.make(name, shape, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }
}

/// A `VarBuilder` (full tensor names) producing random weights for `shapes` on `device`.
pub fn var_builder(
    shapes: Arc<ShapeMap>,
    dtype: DType,
    device: &Device,
) -> candle_nn::VarBuilder<'static> {
    candle_nn::VarBuilder::from_backend(Box::new(RandomBackend { shapes }), dtype, device.clone())
}
