//! The one candle `VarBuilder` backend of this crate's weight sources (a mapped checkpoint, a
//! synthetic layout): every request is checked against the shape the source declares for the
//! name before any tensor is made, so a model asking for the wrong shape fails with the file
//! and the tensor named, not inside a matmul.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

/// Named tensors whose shapes are known before any data is read.
pub(crate) trait TensorSource: Send + Sync + 'static {
    /// The declared shape of `name`, or `None` when the source has no such tensor.
    fn declared_shape(&self, name: &str) -> Option<&[usize]>;
    /// How error messages name the source (e.g. the file path in backticks).
    fn describe(&self) -> String;
    /// Produces `name` as `dtype` on `dev`; the error names the tensor when it is absent.
    fn fetch(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor>;
}

/// Adapts a [`TensorSource`] to candle's backend interface.
struct Checked<S>(S);

impl<S: TensorSource> SimpleBackend for Checked<S> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.0.declared_shape(name) {
            Some(found) if found != s.dims() => Err(candle_core::Error::Msg(format!(
                "{}: tensor `{name}` has shape {found:?}, the model expects {:?}",
                self.0.describe(),
                s.dims()
            ))),
            _ => self.0.fetch(name, dtype, dev),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.fetch(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.declared_shape(name).is_some()
    }
}

/// A `VarBuilder` (full tensor names) over `source`, producing `dtype` tensors on `device`.
pub(crate) fn var_builder<S: TensorSource>(
    source: S,
    dtype: DType,
    device: &Device,
) -> candle_nn::VarBuilder<'static> {
    candle_nn::VarBuilder::from_backend(Box::new(Checked(source)), dtype, device.clone())
}
