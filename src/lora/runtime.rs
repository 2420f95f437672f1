//! What the pipeline holds for LoRAs: the library, the resident weight store its models are
//! built from, and the merged set; one call per request turns the request's LoRA list and
//! the prompt's `<lora:…>` tags into the merged weights.

use super::error::LoraError;
use super::library::LoraLibrary;
use super::prompt::extract_prompt_loras;
use super::state::{LoraState, SwitchStats};
use super::store::WeightStore;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::sync::Arc;

/// A request's LoRA entry: `(name, weight, clip_weight)`; `None` weights take the defaults.
pub type RequestedLora = (String, Option<f64>, Option<f64>);

/// The outcome of [`LoraRuntime::prepare`].
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The prompt with its `<lora:…>` tags removed.
    pub prompt: String,
    /// The merged set: `(name, unet weight, clip weight)`, for logs and image metadata.
    pub active: Vec<(String, f32, f32)>,
    /// Whether any resident weight changed: the models must then be rebuilt from the store.
    pub changed: bool,
    pub stats: SwitchStats,
}

#[derive(Debug)]
pub struct LoraRuntime {
    library: LoraLibrary,
    state: LoraState,
    store: Arc<WeightStore>,
    /// A switch or a model rebuild failed part-way: the models may hold stale tensors, so
    /// the next `prepare` reports a change whatever it switches.
    dirty: bool,
}

impl LoraRuntime {
    /// `base` is a root `VarBuilder` over the checkpoint (full tensor names), in the model
    /// dtype; models must be built from [`var_builder`](Self::var_builder).
    pub fn new(library: LoraLibrary, base: VarBuilder<'static>) -> Self {
        Self::with_store(library, WeightStore::new(base))
    }

    /// With originals kept on the device ([`WeightStore::keeping_originals`]).
    pub fn keeping_originals(library: LoraLibrary, base: VarBuilder<'static>) -> Self {
        Self::with_store(library, WeightStore::keeping_originals(base))
    }

    fn with_store(library: LoraLibrary, store: Arc<WeightStore>) -> Self {
        Self {
            library,
            state: LoraState::new(),
            store,
            dirty: false,
        }
    }

    pub fn library(&self) -> &LoraLibrary {
        &self.library
    }

    pub fn store(&self) -> &Arc<WeightStore> {
        &self.store
    }

    /// Records that rebuilding the models after a switch failed, so the next
    /// [`prepare`](Self::prepare) asks for a rebuild even if its set is unchanged.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// A `VarBuilder` (full tensor names) over the resident weights.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        self.store.var_builder(dtype, device)
    }

    /// Resolves the LoRAs of one request and merges them. Prompt tags come first and the
    /// request's `loras` list after, so an explicit list entry overrides a tag of the same
    /// LoRA. Tags are taken from the positive prompt only (as A1111 before 1.6).
    pub fn prepare(
        &mut self,
        requested: &[RequestedLora],
        prompt: &str,
    ) -> Result<Prepared, LoraError> {
        let (clean, tags) =
            extract_prompt_loras(prompt).map_err(|e| LoraError::Prompt(e.to_string()))?;
        let mut all: Vec<RequestedLora> = tags
            .into_iter()
            .map(|t| (t.name, t.weight, t.clip_weight))
            .collect();
        all.extend(requested.iter().cloned());
        let set = self.library.resolve(&all)?;
        let stats = match self.state.switch(&self.library, &set, &self.store) {
            Ok(s) => s,
            Err(e) => {
                self.dirty = true;
                return Err(e);
            }
        };
        let changed = stats.patched_keys + stats.restored_keys > 0 || self.dirty;
        self.dirty = false;
        let active = set
            .iter()
            .map(|a| {
                (
                    self.library.loras()[a.index].name.clone(),
                    a.unet_weight,
                    a.clip_weight,
                )
            })
            .collect();
        Ok(Prepared {
            prompt: clean,
            active,
            changed,
            stats,
        })
    }
}
