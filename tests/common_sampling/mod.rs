//! Test helpers shared by the noise, Brownian-tree, sampling and tokenizer tests: reading the diffusers
//! reference arrays (`tests/fixtures/reference/`) and comparing tensors relative to their scale.
#![allow(dead_code)]

use std::path::PathBuf;

/// Root of the in-repo reference fixtures.
pub fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

/// A reference array: shape plus flat C-order data.
#[derive(Debug, Clone)]
pub struct Npy<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

/// Reads an `.npy` file as `T` (f32, f64 or i64, matching the file's dtype).
pub fn read_npy<T: npyz::Deserialize>(path: &std::path::Path) -> Npy<T> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    let data = npy.into_vec::<T>().unwrap();
    Npy { shape, data }
}

/// Reads a float32, float64 or int64 `.npy` as f64 (timestep dtypes differ by scheduler
/// class; every value of those files is exact in f64).
pub fn read_npy_f64(path: &std::path::Path) -> Npy<f64> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    let data = match npy.dtype().descr().trim_matches('\'') {
        "<f8" => npy.into_vec::<f64>().unwrap(),
        "<f4" => npy
            .into_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect(),
        "<i8" => npy
            .into_vec::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as f64)
            .collect(),
        other => panic!("{}: unexpected dtype {other}", path.display()),
    };
    Npy { shape, data }
}

/// Reads a case array that is float32 or int64 (timesteps differ by scheduler) as f64.
pub fn case_as_f64(case: &str, file: &str) -> Vec<f64> {
    read_npy_f64(&reference_dir().join("cases").join(case).join(file)).data
}

/// A manifest's list of token ids.
pub fn u32_list(v: &serde_json::Value) -> Vec<u32> {
    usize_list(v).into_iter().map(|n| n as u32).collect()
}

/// A manifest's list of sizes (`shape`, `latent_shape`).
pub fn usize_list(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap() as usize)
        .collect()
}

/// Reads a float32 array of a reference case.
pub fn case_f32(case: &str, file: &str) -> Npy<f32> {
    read_npy(&reference_dir().join("cases").join(case).join(file))
}

/// Reads an int64 array of a reference case.
pub fn case_i64(case: &str, file: &str) -> Npy<i64> {
    read_npy(&reference_dir().join("cases").join(case).join(file))
}

/// The reference manifest (every case with its inputs and scheduler config).
pub fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(reference_dir().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Max abs difference divided by the reference's max abs value (the fixtures README measure).
pub fn rel_max_abs(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let mut diff = 0f64;
    let mut scale = 0f64;
    for (g, w) in got.iter().zip(want) {
        diff = diff.max((*g as f64 - *w as f64).abs());
        scale = scale.max((*w as f64).abs());
    }
    assert!(got.iter().all(|v| v.is_finite()), "non-finite values");
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// Asserts `got` equals `want` bit for bit, naming how many values differ and the first.
pub fn assert_bits_equal(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mismatches: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    assert!(
        mismatches.is_empty(),
        "{what}: {} of {} values differ, first at {}: got {} want {}",
        mismatches.len(),
        got.len(),
        mismatches[0],
        got[mismatches[0]],
        want[mismatches[0]]
    );
}
