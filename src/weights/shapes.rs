//! Tensor name → shape maps, the only view of a file that architecture detection and model
//! configuration need.

use std::collections::{BTreeMap, BTreeSet};

/// Tensor name → shape, as read from a safetensors header. Model configurations are
/// inferred from this map alone.
pub type ShapeMap = BTreeMap<String, Vec<usize>>;

/// Counts the distinct values of the numeric path segment that follows `prefix` in the
/// keys of `shapes`: `count_indexed(s, "a.layers.")` is 12 when `a.layers.0.` … `a.layers.11.`
/// exist. Used to read depths (layers, blocks, resnets) from the file.
pub fn count_indexed(shapes: &ShapeMap, prefix: &str) -> usize {
    let mut seen = BTreeSet::new();
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

/// `prefix` as a key prefix: empty, or ending in exactly the dot that separates it from the
/// rest of a key, so callers may pass `model.diffusion_model` or `model.diffusion_model.`.
pub fn with_dot(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('.') {
        prefix.to_string()
    } else {
        format!("{prefix}.")
    }
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
    }

    #[test]
    fn with_dot_adds_one_separator() {
        assert_eq!(with_dot(""), "");
        assert_eq!(with_dot("vae"), "vae.");
        assert_eq!(with_dot("vae."), "vae.");
    }
}
