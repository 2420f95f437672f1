//! A safetensors file, memory-mapped and validated once at open.
//!
//! Layout: 8 bytes little-endian header length `n`, `n` bytes of JSON, then the data section.
//! The JSON maps each tensor name to `{dtype, shape, data_offsets: [begin, end]}` (offsets
//! relative to the data section) plus an optional `__metadata__` string map.
//!
//! We parse the header ourselves instead of calling the `safetensors` crate so that every
//! failure can say which file, which tensor and which sizes disagree (the crate's errors do
//! not name the file, and a truncated download is the common case worth a precise message).
//! Tensor bytes are never copied before upload: a tensor is read from the map straight into
//! the device buffer (CPU: one copy into the tensor; CUDA: one host-to-device transfer).

use super::backend::{self, TensorSource};
use super::error::WeightsError;
use super::shapes::ShapeMap;
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest JSON header we accept (the safetensors crate uses the same bound). A real SDXL
/// checkpoint has a ~200 kB header.
const MAX_HEADER_LEN: u64 = 100_000_000;

/// Element types that may appear in a safetensors header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StDtype {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl StDtype {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BOOL" => Self::Bool,
            "U8" => Self::U8,
            "I8" => Self::I8,
            "F8_E5M2" => Self::F8E5M2,
            "F8_E4M3" => Self::F8E4M3,
            "I16" => Self::I16,
            "U16" => Self::U16,
            "F16" => Self::F16,
            "BF16" => Self::BF16,
            "I32" => Self::I32,
            "U32" => Self::U32,
            "F32" => Self::F32,
            "F64" => Self::F64,
            "I64" => Self::I64,
            "U64" => Self::U64,
            _ => return None,
        })
    }

    /// The name used in safetensors headers.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::U8 => "U8",
            Self::I8 => "I8",
            Self::F8E5M2 => "F8_E5M2",
            Self::F8E4M3 => "F8_E4M3",
            Self::I16 => "I16",
            Self::U16 => "U16",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::I32 => "I32",
            Self::U32 => "U32",
            Self::F32 => "F32",
            Self::F64 => "F64",
            Self::I64 => "I64",
            Self::U64 => "U64",
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            Self::Bool | Self::U8 | Self::I8 | Self::F8E5M2 | Self::F8E4M3 => 1,
            Self::I16 | Self::U16 | Self::F16 | Self::BF16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::F64 | Self::I64 | Self::U64 => 8,
        }
    }

    /// The candle dtype we load this as, for the dtypes the model code uses.
    fn candle(self) -> Option<DType> {
        match self {
            Self::F32 => Some(DType::F32),
            Self::F16 => Some(DType::F16),
            Self::BF16 => Some(DType::BF16),
            Self::I64 => Some(DType::I64),
            _ => None,
        }
    }
}

/// One tensor's header entry. `start..end` is relative to the data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: StDtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// A validated, memory-mapped safetensors file. Cheap to share (`Arc`); the map lives as long
/// as the last `VarBuilder` built over it, so drop those after model construction to unmap.
pub struct Checkpoint {
    path: PathBuf,
    mmap: memmap2::Mmap,
    data_start: usize,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
    shapes: ShapeMap,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .field("bytes", &self.mmap.len())
            .finish()
    }
}

/// Recognises the formats people mistake for safetensors by their first bytes.
fn sniff_other_format(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"PK\x03\x04") {
        Some("a zip archive (a PyTorch .ckpt/.pt/.bin pickle checkpoint)")
    } else if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        Some("a Python pickle (a legacy .ckpt/.pt/.bin checkpoint)")
    } else if head.starts_with(b"GGUF") {
        Some("a GGUF file")
    } else if head.starts_with(b"\x1f\x8b") {
        Some("a gzip archive")
    } else if head.starts_with(b"<!DOCTYPE")
        || head.starts_with(b"<html")
        || head.starts_with(b"{\"")
    {
        Some("an HTML or JSON document (probably an error page saved instead of the model)")
    } else {
        None
    }
}

impl Checkpoint {
    /// Opens, maps and validates `path`. Reads only the header; tensor data is touched later,
    /// one tensor at a time, when a model asks for it.
    #[tracing::instrument(level = "debug", skip_all, fields(path = %path.as_ref().display()))]
    pub fn open(path: impl AsRef<Path>) -> Result<Arc<Self>, WeightsError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| WeightsError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::open(&path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();

        let mut head = [0u8; 16];
        let got = read_up_to(&mut file, &mut head).map_err(io)?;
        let head = &head[..got];
        // A safetensors header starts with `{` at byte 8; only files that don't are sniffed,
        // since a valid header length can begin with bytes that look like a pickle (0x80 0x02).
        let header_starts = got > 8 && head[8] == b'{';
        if !header_starts {
            if let Some(what) = sniff_other_format(head) {
                return Err(WeightsError::NotSafetensors {
                    path,
                    what: what.to_string(),
                });
            }
        }
        if file_len < 8 {
            return Err(WeightsError::Truncated {
                path,
                expected: 8,
                found: file_len,
            });
        }
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(&head[..8]);
        let header_len = u64::from_le_bytes(len_bytes);
        if !(2..=MAX_HEADER_LEN).contains(&header_len) || (got > 8 && head[8] != b'{') {
            return Err(WeightsError::NotSafetensors {
                path,
                what: format!(
                    "an unknown format (the first 8 bytes give a header length of {header_len}, and a safetensors header is a JSON object of at most {MAX_HEADER_LEN} bytes)"
                ),
            });
        }
        if 8 + header_len > file_len {
            return Err(WeightsError::Truncated {
                path,
                expected: 8 + header_len,
                found: file_len,
            });
        }

        // SAFETY: the map is read-only. Undefined behaviour would need another process to
        // truncate or rewrite the file while it is mapped; the model cache only ever
        // replaces files by atomic rename, which leaves this mapping's inode intact.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let header_end = 8 + header_len as usize;
        let header = &mmap[8..header_end];
        let (tensors, metadata) = parse_header(&path, header)?;
        let data_len = (file_len - header_end as u64) as usize;
        validate_layout(&path, &tensors, header_end as u64, data_len)?;

        let shapes = tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.shape.clone()))
            .collect();
        Ok(Arc::new(Self {
            path,
            mmap,
            data_start: header_end,
            tensors,
            metadata,
            shapes,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` string map (e.g. `modelspec.*`, `format`); empty when absent.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Name → shape of every tensor, for architecture detection and model configuration.
    pub fn shapes(&self) -> &ShapeMap {
        &self.shapes
    }

    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// Total size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, name: &str) -> Result<&[u8], WeightsError> {
        let info = self.info(name).ok_or_else(|| WeightsError::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        Ok(&self.mmap[self.data_start + info.start..self.data_start + info.end])
    }

    /// Loads a tensor onto `device` in its stored dtype (F32, F16, BF16 or I64).
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor, LoadError> {
        let info = self.info(name).ok_or_else(|| WeightsError::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        let dtype = info
            .dtype
            .candle()
            .ok_or_else(|| WeightsError::UnsupportedDtype {
                path: self.path.clone(),
                name: name.to_string(),
                dtype: info.dtype.name().to_string(),
            })?;
        let bytes = self.bytes(name)?;
        Ok(Tensor::from_raw_buffer(bytes, dtype, &info.shape, device)?)
    }

    /// Tells the kernel the pages of tensor `name` are no longer needed by this process.
    /// Called once a tensor has been copied onto its device: without it every byte read
    /// stays resident (file-backed) until the map is dropped, which doubles the peak RSS of
    /// a CPU load (mapped f16 pages + the f32 copies).
    pub fn release(&self, name: &str) {
        #[cfg(unix)]
        if let Some(info) = self.info(name) {
            let (start, len) = (self.data_start + info.start, info.end - info.start);
            if len > 0 {
                // SAFETY: the map is a read-only shared file mapping. MADV_DONTNEED only drops
                // its resident pages; any later read faults them in again from the file with
                // the same content, so no reference into the map can observe a change.
                let _ = unsafe {
                    self.mmap
                        .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
                };
            }
        }
        #[cfg(not(unix))]
        let _ = name;
    }

    /// A `VarBuilder` over the whole file (full tensor names) that loads each requested
    /// tensor from the map onto `device`, converting it to `dtype` there. Shapes requested by
    /// model code are checked against the header before any data is read.
    pub fn var_builder(
        self: &Arc<Self>,
        dtype: DType,
        device: &Device,
    ) -> candle_nn::VarBuilder<'static> {
        backend::var_builder(
            MmapSource {
                ckpt: Arc::clone(self),
            },
            dtype,
            device,
        )
    }
}

/// Failure to turn a header entry into a device tensor.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

type Parsed = (BTreeMap<String, TensorInfo>, BTreeMap<String, String>);

fn parse_header(path: &Path, header: &[u8]) -> Result<Parsed, WeightsError> {
    let corrupt = |reason: String| WeightsError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    // The header may be padded with trailing spaces to align the data section.
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| corrupt(format!("the safetensors header is not a JSON object: {e}")))?;
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, value) in json {
        if name == "__metadata__" {
            let map = value
                .as_object()
                .ok_or_else(|| corrupt("`__metadata__` is not an object".into()))?;
            for (k, v) in map {
                // The format says string → string; keep other values as their JSON text
                // rather than refusing a file over its comments.
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                metadata.insert(k.clone(), text);
            }
            continue;
        }
        let bad = |what: &str| corrupt(format!("tensor `{name}`: {what}"));
        let obj = value
            .as_object()
            .ok_or_else(|| bad("entry is not an object"))?;
        let dtype_name = obj
            .get("dtype")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("no `dtype`"))?;
        let dtype = StDtype::parse(dtype_name)
            .ok_or_else(|| bad(&format!("unknown dtype `{dtype_name}`")))?;
        let shape = obj
            .get("shape")
            .and_then(|v| v.as_array())
            .ok_or_else(|| bad("no `shape` array"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad("`shape` holds something other than non-negative integers"))?;
        let offsets = obj
            .get("data_offsets")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| {
                Some((
                    usize::try_from(a[0].as_u64()?).ok()?,
                    usize::try_from(a[1].as_u64()?).ok()?,
                ))
            })
            .ok_or_else(|| bad("`data_offsets` is not a pair of integers"))?;
        let (start, end) = offsets;
        if end < start {
            return Err(bad(&format!("data_offsets [{start}, {end}] run backwards")));
        }
        let expected = shape
            .iter()
            .try_fold(dtype.size_in_bytes(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad("shape is too large"))?;
        if expected != end - start {
            return Err(bad(&format!(
                "dtype {} × shape {:?} needs {} bytes but data_offsets span {} bytes",
                dtype.name(),
                shape,
                expected,
                end - start
            )));
        }
        tensors.insert(
            name.clone(),
            TensorInfo {
                dtype,
                shape,
                start,
                end,
            },
        );
    }
    Ok((tensors, metadata))
}

/// Checks that the tensors tile the data section exactly: no overlap, no gap, nothing past
/// the end of the file (truncated) and nothing unaccounted for after the last tensor.
fn validate_layout(
    path: &Path,
    tensors: &BTreeMap<String, TensorInfo>,
    header_end: u64,
    data_len: usize,
) -> Result<(), WeightsError> {
    let mut spans: Vec<(usize, usize, &str)> = tensors
        .iter()
        .map(|(k, v)| (v.start, v.end, k.as_str()))
        .collect();
    spans.sort_unstable();
    let described = spans.iter().map(|s| s.1).max().unwrap_or(0);
    if described > data_len {
        return Err(WeightsError::Truncated {
            path: path.to_path_buf(),
            expected: header_end + described as u64,
            found: header_end + data_len as u64,
        });
    }
    let mut cursor = 0usize;
    for (start, end, name) in spans {
        if start != cursor {
            return Err(WeightsError::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "tensor `{name}` starts at data offset {start}, expected {cursor} (tensors must be contiguous and must not overlap)"
                ),
            });
        }
        cursor = end;
    }
    if cursor != data_len {
        return Err(WeightsError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "{} bytes follow the last tensor (the header describes {} bytes of data, the file holds {})",
                data_len - cursor,
                cursor,
                data_len
            ),
        });
    }
    Ok(())
}

/// The [`TensorSource`] of [`Checkpoint::var_builder`]: reads each tensor from the map onto
/// the device, then lets the kernel drop the pages it came from.
struct MmapSource {
    ckpt: Arc<Checkpoint>,
}

impl TensorSource for MmapSource {
    fn declared_shape(&self, name: &str) -> Option<&[usize]> {
        self.ckpt.info(name).map(|info| info.shape.as_slice())
    }

    fn describe(&self) -> String {
        format!("`{}`", self.ckpt.path.display())
    }

    fn fetch(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self
            .ckpt
            .load(name, dev)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        self.ckpt.release(name);
        t.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_st(dir: &Path, header: &str, data: &[u8]) -> PathBuf {
        let p = dir.join("t.safetensors");
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
        f.write_all(header.as_bytes()).unwrap();
        f.write_all(data).unwrap();
        p
    }

    #[test]
    fn reads_tensors_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let h = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[1,1],"data_offsets":[8,10]}}"#;
        let mut data = Vec::new();
        data.extend(1.5f32.to_le_bytes());
        data.extend((-2f32).to_le_bytes());
        data.extend(half::f16::from_f32(3.0).to_le_bytes());
        let p = write_st(dir.path(), h, &data);
        let c = Checkpoint::open(&p).unwrap();
        assert_eq!(c.metadata()["format"], "pt");
        assert_eq!(c.shapes()["b"], vec![1, 1]);
        let a = c.load("a", &Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, vec![1.5, -2.0]);
        let vb = c.var_builder(DType::F32, &Device::Cpu);
        let b = vb.get((1, 1), "b").unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(b, vec![vec![3.0]]);
        assert!(vb.get(2, "b").is_err());
        assert!(vb.get(2, "zzz").is_err());
    }

    #[test]
    fn header_lengths_that_look_like_a_pickle_are_accepted() {
        // 0x0280 = 640: the length's first bytes are 0x80 0x02, a pickle's magic.
        let dir = tempfile::tempdir().unwrap();
        let body = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let h = format!("{body:<640}");
        let p = write_st(dir.path(), &h, &[0; 4]);
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..2], &[0x80, 0x02]);
        let c = Checkpoint::open(&p).unwrap();
        assert_eq!(c.shapes()["a"], vec![1]);
    }

    #[test]
    fn rejects_gaps_and_bad_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,6]}}"#;
        let p = write_st(dir.path(), h, &[0; 6]);
        let e = Checkpoint::open(&p).unwrap_err().to_string();
        assert!(e.contains("needs 8 bytes"), "{e}");
        let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        let p = write_st(dir.path(), h, &[0; 8]);
        let e = Checkpoint::open(&p).unwrap_err().to_string();
        assert!(e.contains("contiguous"), "{e}");
        let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let p = write_st(dir.path(), h, &[0; 2]);
        assert!(matches!(
            Checkpoint::open(&p),
            Err(WeightsError::Truncated { .. })
        ));
    }
}
