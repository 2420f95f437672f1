//! SDXL model code in the native single-file (LDM/sgm) layout: CLIP ViT-L, OpenCLIP ViT-bigG,
//! the UNet and the VAE, built on candle-core/candle-nn. Every dimension is read from the
//! tensor shapes of the checkpoint, never hard-coded, so a tiny SDXL-shaped test model loads
//! through the same code as a 6.9 GB one.

pub mod attention;
pub mod clip;
pub mod unet;
pub mod vae;

use std::collections::BTreeMap;

/// Tensor name → shape, as read from a safetensors header. Model configurations are
/// inferred from this map alone.
pub type ShapeMap = BTreeMap<String, Vec<usize>>;

/// Errors while building or running model code.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor the architecture needs is absent from the file.
    #[error("missing tensor `{name}`")]
    MissingTensor { name: String },
    /// A tensor exists but its shape does not fit the architecture read from the other tensors.
    #[error("tensor `{name}` has shape {found:?}, expected {expected}")]
    BadShape {
        name: String,
        expected: String,
        found: Vec<usize>,
    },
    /// The tensors describe a structure this code does not implement.
    #[error("unsupported model structure: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Returns the shape of `name`, or [`ModelError::MissingTensor`].
pub fn shape_of<'a>(shapes: &'a ShapeMap, name: &str) -> Result<&'a [usize], ModelError> {
    shapes
        .get(name)
        .map(Vec::as_slice)
        .ok_or_else(|| ModelError::MissingTensor {
            name: name.to_string(),
        })
}

/// Counts the distinct values of the numeric path segment that follows `prefix` in the
/// keys of `shapes`: `count_indexed(s, "a.layers.")` is 12 when `a.layers.0.` … `a.layers.11.`
/// exist. Used to read depths (layers, blocks, resnets) from the file.
pub fn count_indexed(shapes: &ShapeMap, prefix: &str) -> usize {
    let mut seen = std::collections::BTreeSet::new();
    for key in shapes.range(prefix.to_string()..) {
        let Some(rest) = key.0.strip_prefix(prefix) else {
            break;
        };
        if let Some(idx) = rest.split('.').next().and_then(|s| s.parse::<usize>().ok()) {
            seen.insert(idx);
        }
    }
    seen.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_indexed_reads_depth_from_keys() {
        let mut s = ShapeMap::new();
        for i in [0, 1, 2, 10] {
            s.insert(format!("m.layers.{i}.w"), vec![1]);
            s.insert(format!("m.layers.{i}.b"), vec![1]);
        }
        s.insert("m.layersx.3.w".into(), vec![1]);
        s.insert("m.norm.w".into(), vec![1]);
        assert_eq!(count_indexed(&s, "m.layers."), 4);
        assert_eq!(count_indexed(&s, "m.nothing."), 0);
        assert!(matches!(
            shape_of(&s, "m.missing"),
            Err(ModelError::MissingTensor { .. })
        ));
    }
}

mod common_te_vae;
pub mod unet_blocks;
pub mod vae_names;
