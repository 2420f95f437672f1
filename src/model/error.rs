//! The error type of the model code, and the shape lookup that produces its most common
//! variant.

use crate::weights::ShapeMap;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_of_names_the_missing_tensor() {
        let mut s = ShapeMap::new();
        s.insert("m.w".into(), vec![2, 3]);
        assert_eq!(shape_of(&s, "m.w").unwrap(), &[2, 3]);
        assert!(matches!(
            shape_of(&s, "m.missing"),
            Err(ModelError::MissingTensor { name }) if name == "m.missing"
        ));
    }
}
