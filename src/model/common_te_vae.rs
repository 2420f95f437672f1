//! Small weight loaders and layers shared by the text encoders and the VAE ([`full_name`] also
//! by the UNet blocks).
//!
//! Every loader checks the tensor's presence and shape itself, so a damaged checkpoint yields a
//! [`ModelError`] that names the full tensor path instead of candle's generic message.

use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;

use super::error::ModelError;

/// Full dotted path of `name` under the builder's prefix, for error messages.
pub(crate) fn full_name(vb: &VarBuilder<'_>, name: &str) -> String {
    let prefix = vb.prefix();
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Loads `name` and checks that its shape is exactly `shape`.
pub(crate) fn tensor(
    vb: &VarBuilder<'_>,
    shape: &[usize],
    name: &str,
) -> Result<Tensor, ModelError> {
    tensor_any(vb, &[shape], name)
}

/// Loads `name`, accepting any of the listed shapes (e.g. a 1x1 conv `[C, C, 1, 1]` or its
/// linear form `[C, C]`); the tensor is returned with its stored shape.
pub(crate) fn tensor_any(
    vb: &VarBuilder<'_>,
    shapes: &[&[usize]],
    name: &str,
) -> Result<Tensor, ModelError> {
    if !vb.contains_tensor(name) {
        return Err(ModelError::MissingTensor {
            name: full_name(vb, name),
        });
    }
    let t = vb.get_unchecked(name)?;
    if !shapes.iter().any(|s| t.dims() == *s) {
        let expected = shapes
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(" or ");
        return Err(ModelError::BadShape {
            name: full_name(vb, name),
            expected,
            found: t.dims().to_vec(),
        });
    }
    Ok(t)
}

/// Loads `{name}.weight` of shape `weight` and `{name}.bias` of shape `[out]`.
fn weight_and_bias(
    vb: &VarBuilder<'_>,
    name: &str,
    weight: &[usize],
    out: usize,
) -> Result<(Tensor, Tensor), ModelError> {
    Ok((
        tensor(vb, weight, &format!("{name}.weight"))?,
        tensor(vb, &[out], &format!("{name}.bias"))?,
    ))
}

/// `x·Wᵀ + b` with `W` stored `[out, in]` (PyTorch `nn.Linear`).
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// Loads `{name}.weight` `[out, in]` and `{name}.bias` `[out]`.
    pub(crate) fn load(
        vb: &VarBuilder<'_>,
        name: &str,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Self, ModelError> {
        let (weight, bias) = weight_and_bias(vb, name, &[out_dim, in_dim], out_dim)?;
        Ok(Self::new(weight, Some(bias)))
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = self.weight.t()?;
        let y = match x.dims() {
            [b, l, d] => x.reshape((b * l, *d))?.matmul(&w)?.reshape((*b, *l, ()))?,
            _ => x.broadcast_matmul(&w)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// LayerNorm over the last dimension, computed in f32 whatever the activation dtype (as
/// PyTorch does for half types), two-pass mean/variance for accuracy.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub(crate) fn load(
        vb: &VarBuilder<'_>,
        name: &str,
        dim: usize,
        eps: f64,
    ) -> Result<Self, ModelError> {
        let (weight, bias) = weight_and_bias(vb, name, &[dim], dim)?;
        Ok(Self {
            weight: weight.to_dtype(DType::F32)?,
            bias: bias.to_dtype(DType::F32)?,
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?
            .to_dtype(dtype)
    }
}

/// Loads a GroupNorm (`{name}.weight`, `{name}.bias`, `[channels]`). candle's GroupNorm
/// normalises in f32 for half inputs.
pub(crate) fn group_norm(
    vb: &VarBuilder<'_>,
    name: &str,
    groups: usize,
    channels: usize,
    eps: f64,
) -> Result<candle_nn::GroupNorm, ModelError> {
    if groups == 0 || !channels.is_multiple_of(groups) {
        return Err(ModelError::Unsupported(format!(
            "`{}`: {channels} channels are not divisible into {groups} groups",
            full_name(vb, name)
        )));
    }
    let (weight, bias) = weight_and_bias(vb, name, &[channels], channels)?;
    Ok(candle_nn::GroupNorm::new(
        weight, bias, channels, groups, eps,
    )?)
}

/// Loads a square-kernel Conv2d with bias (`{name}.weight` `[out, in, k, k]`).
pub(crate) fn conv2d(
    vb: &VarBuilder<'_>,
    name: &str,
    in_ch: usize,
    out_ch: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<candle_nn::Conv2d, ModelError> {
    let (weight, bias) = weight_and_bias(vb, name, &[out_ch, in_ch, kernel, kernel], out_ch)?;
    let cfg = candle_nn::Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    Ok(candle_nn::Conv2d::new(weight, Some(bias), cfg))
}
