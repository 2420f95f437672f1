//! Device-resident weights that LoRA switching can replace key by key.
//!
//! Models are built through [`WeightStore::var_builder`]: the first request for a key loads
//! it from the base (the checkpoint's mmap `VarBuilder`) and keeps the device tensor; later
//! builds get the same tensor (an `Arc` clone), so rebuilding the UNet and text encoders after
//! a LoRA switch costs no copies. A switch replaces entries; the base is kept only to re-read
//! originals, so restoring a key gives back exactly the tensor the first load produced.
//!
//! With [`WeightStore::keeping_originals`] the store instead keeps the original device tensor
//! of every key a LoRA has touched: restoring is then a reference swap and merging starts
//! from the device copy, with no host-to-device transfer (what a GPU wants for sub-second
//! switches), at the cost of one extra copy of the touched weights in device memory.

use candle_core::{DType, Device, Result as CResult, Shape, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub struct WeightStore {
    base: VarBuilder<'static>,
    tensors: RwLock<HashMap<String, Tensor>>,
    /// Original resident tensors of replaced keys, when kept on the device.
    originals: Option<RwLock<HashMap<String, Tensor>>>,
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStore")
            .field("resident", &self.len())
            .finish()
    }
}

impl WeightStore {
    /// `base` must be a root `VarBuilder` (full tensor names) over the checkpoint.
    pub fn new(base: VarBuilder<'static>) -> Arc<Self> {
        Arc::new(Self {
            base,
            tensors: RwLock::new(HashMap::new()),
            originals: None,
        })
    }

    /// Like [`new`](Self::new), but keeps the original resident tensor of every key a LoRA
    /// replaces, so originals never have to be re-read from the file.
    pub fn keeping_originals(base: VarBuilder<'static>) -> Arc<Self> {
        Arc::new(Self {
            base,
            tensors: RwLock::new(HashMap::new()),
            originals: Some(RwLock::new(HashMap::new())),
        })
    }

    /// Bytes of the kept originals. A key restored to its original shares that storage
    /// with its resident tensor, so the extra device memory is the share of patched keys.
    pub fn kept_original_bytes(&self) -> usize {
        let Some(o) = &self.originals else { return 0 };
        o.read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// A `VarBuilder` (full names) serving resident tensors first.
    pub fn var_builder(self: &Arc<Self>, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(
            Box::new(StoreBackend(Arc::clone(self))),
            dtype,
            device.clone(),
        )
    }

    pub fn device(&self) -> &Device {
        self.base.device()
    }

    /// The resident tensor of `key`, if a model has requested it.
    pub fn resident(&self, key: &str) -> Option<Tensor> {
        self.read().get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Total bytes of the resident tensors.
    pub fn resident_bytes(&self) -> usize {
        self.read()
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Loads `key` from the base into the store (as a model build would).
    pub fn load(&self, key: &str, shape: &[usize], dtype: DType) -> CResult<Tensor> {
        let s: Shape = shape.into();
        self.get_or_load(s, key, dtype)
    }

    /// The original value of `key` in `dtype`: the kept device copy when there is one,
    /// else re-read from the base (the same path as the first load). Not stored.
    pub fn original(&self, key: &str, shape: &[usize], dtype: DType) -> CResult<Tensor> {
        if let Some(o) = &self.originals {
            let kept = o
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(key)
                .cloned();
            if let Some(t) = kept {
                return if t.dtype() == dtype {
                    Ok(t)
                } else {
                    t.to_dtype(dtype)
                };
            }
        }
        self.base
            .get_with_hints_dtype(shape, key, candle_nn::Init::Const(0.), dtype)
    }

    /// Replaces the resident tensor of `key` (keeping the first one as the original when
    /// the store keeps originals).
    pub fn replace(&self, key: &str, t: Tensor) {
        let mut tensors = self.write();
        if let Some(o) = &self.originals {
            let mut o = o.write().unwrap_or_else(|e| e.into_inner());
            if !o.contains_key(key) {
                if let Some(old) = tensors.get(key) {
                    o.insert(key.to_string(), old.clone());
                }
            }
        }
        tensors.insert(key.to_string(), t);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Tensor>> {
        // A panic while holding the lock leaves the map itself intact.
        self.tensors.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Tensor>> {
        self.tensors.write().unwrap_or_else(|e| e.into_inner())
    }

    fn get_or_load(&self, s: Shape, name: &str, dtype: DType) -> CResult<Tensor> {
        if let Some(t) = self.resident(name) {
            if t.dims() != s.dims() {
                candle_core::bail!(
                    "tensor `{name}` has shape {:?}, the model expects {:?}",
                    t.dims(),
                    s.dims()
                );
            }
            return if t.dtype() == dtype {
                Ok(t)
            } else {
                t.to_dtype(dtype)
            };
        }
        let t = self
            .base
            .get_with_hints_dtype(s, name, candle_nn::Init::Const(0.), dtype)?;
        self.write().insert(name.to_string(), t.clone());
        Ok(t)
    }
}

struct StoreBackend(Arc<WeightStore>);

impl candle_nn::var_builder::SimpleBackend for StoreBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        _dev: &Device,
    ) -> CResult<Tensor> {
        self.0.get_or_load(s, name, dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _dev: &Device) -> CResult<Tensor> {
        if let Some(t) = self.0.resident(name) {
            return t.to_dtype(dtype);
        }
        let t = self.0.base.get_unchecked_dtype(name, dtype)?;
        self.0.replace(name, t.clone());
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.resident(name).is_some() || self.0.base.contains_tensor(name)
    }
}
