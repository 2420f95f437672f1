//! Helpers shared by the text-encoder and VAE tests: the fixture checkpoint, its shape map,
//! reference arrays and a relative error measure.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sdxl_worker::weights::ShapeMap;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn checkpoint() -> PathBuf {
    fixtures().join("mini-m.fp16.safetensors")
}

pub fn cases_dir() -> PathBuf {
    fixtures().join("reference/cases")
}

/// All reference case ids, sorted.
pub fn case_ids() -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    ids.sort();
    ids
}

/// Ids of the reference cases run without a LoRA (a LoRA also changes the text encoders).
pub fn no_lora_case_ids() -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join("reference/manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut ids: Vec<String> = manifest["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["lora"].is_null())
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Tensor name → shape, from the safetensors header.
pub fn shape_map(path: &std::path::Path) -> ShapeMap {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.tensors()
        .into_iter()
        .map(|(k, info)| (k, info.shape.clone()))
        .collect()
}

pub fn var_builder(dtype: DType) -> VarBuilder<'static> {
    unsafe { VarBuilder::from_mmaped_safetensors(&[checkpoint()], dtype, &Device::Cpu).unwrap() }
}

/// Reads an .npy file as (shape, values), converting the stored element type to `T`.
fn npy<T: npyz::Deserialize>(path: &std::path::Path) -> (Vec<usize>, Vec<T>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec::<T>().unwrap())
}

/// Reads an .npy file as (shape, f32 values); integer arrays are converted.
pub fn npy_f32(path: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
    npy(path)
}

pub fn npy_i64(path: &std::path::Path) -> (Vec<usize>, Vec<i64>) {
    npy(path)
}

pub fn npy_tensor(path: &std::path::Path) -> Tensor {
    let (shape, v) = npy_f32(path);
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

pub fn ids_tensor(path: &std::path::Path) -> Tensor {
    let (shape, v) = npy_i64(path);
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// max |a - b| / max |b|; infinite when `a` has a NaN or infinity.
pub fn rel_max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let values = |t: &Tensor| {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(scale > 0.0, "reference is all zeros");
    diff / scale
}

/// Whether every element of an f32 tensor is finite (no NaN or ±inf).
pub fn all_finite(t: &Tensor) -> bool {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite())
}
