//! Switching LoRA sets on resident weights.
//!
//! For each checkpoint key the state remembers which LoRAs (and strengths) its resident value
//! contains. A switch touches only keys whose contribution list changes. A touched key is
//! recomputed from the *original* (re-read from the checkpoint map, upcast exactly to f32)
//! plus every delta of the new set in f32, then cast once to the model dtype; a key left with
//! no LoRA gets the original back through the same path as the first load. Nothing is ever
//! subtracted, so there is no drift however many switches happen.

use super::error::LoraError;
use super::library::{ActiveLora, LoraLibrary, Patch};
use super::math;
use super::store::WeightStore;
use candle_core::{DType, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// One LoRA's share in a key: library index and strength bits (exact comparison).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Contribution {
    lora: usize,
    strength: u32,
}

/// What one switch did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SwitchStats {
    /// Keys recomputed with LoRA deltas.
    pub patched_keys: usize,
    /// Keys given their original value back.
    pub restored_keys: usize,
    /// Keys a LoRA targets that no model has loaded (e.g. unused layers): skipped.
    pub not_resident: usize,
    /// Keys whose contributions did not change.
    pub unchanged_keys: usize,
    pub seconds: f64,
}

/// The LoRA set currently merged into a [`WeightStore`].
#[derive(Debug, Default)]
pub struct LoraState {
    applied: BTreeMap<String, Vec<Contribution>>,
    set: Vec<ActiveLora>,
}

impl LoraState {
    pub fn new() -> Self {
        Self::default()
    }

    /// The set last applied.
    pub fn current(&self) -> &[ActiveLora] {
        &self.set
    }

    /// Number of keys that currently hold LoRA deltas.
    pub fn patched_keys(&self) -> usize {
        self.applied.len()
    }

    /// Makes the resident weights equal the original weights plus `set` (in order).
    /// On error the keys already processed are consistent with the state, the others keep
    /// their previous value; a later switch repairs both.
    pub fn switch(
        &mut self,
        lib: &LoraLibrary,
        set: &[ActiveLora],
        store: &WeightStore,
    ) -> Result<SwitchStats, LoraError> {
        let started = Instant::now();
        let _span = tracing::info_span!("lora_switch", loras = set.len()).entered();
        let mut wanted: BTreeMap<String, Vec<Contribution>> = BTreeMap::new();
        for a in set {
            let lora = lib
                .loras()
                .get(a.index)
                .ok_or_else(|| LoraError::Internal(format!("no LoRA #{}", a.index)))?;
            for (key, idx) in &lora.by_key {
                let Some(first) = idx.first() else { continue };
                let s = lora.patches[*first].target.component.strength(a);
                if s == 0.0 {
                    continue;
                }
                wanted.entry(key.clone()).or_default().push(Contribution {
                    lora: a.index,
                    strength: s.to_bits(),
                });
            }
        }
        let keys: BTreeSet<&String> = self.applied.keys().chain(wanted.keys()).collect();
        let mut stats = SwitchStats::default();
        let mut updates: Vec<(String, Option<Vec<Contribution>>)> = Vec::new();
        for key in keys {
            let (old, new) = (self.applied.get(key), wanted.get(key));
            if old == new {
                stats.unchanged_keys += 1;
                continue;
            }
            updates.push((key.clone(), new.cloned()));
        }
        for (key, new) in updates {
            let Some(resident) = store.resident(&key) else {
                stats.not_resident += 1;
                continue;
            };
            let shape = resident.dims().to_vec();
            let dtype = resident.dtype();
            let fail = |source: candle_core::Error| LoraError::Apply {
                key: key.clone(),
                source,
            };
            match new {
                None => {
                    let t = store.original(&key, &shape, dtype).map_err(fail)?;
                    store.replace(&key, t);
                    self.applied.remove(&key);
                    stats.restored_keys += 1;
                }
                Some(contribs) => {
                    let t = merged(lib, &key, &shape, &contribs, store)
                        .and_then(|w| w.to_dtype(dtype))
                        .map_err(fail)?;
                    store.replace(&key, t);
                    self.applied.insert(key, contribs);
                    stats.patched_keys += 1;
                }
            }
        }
        self.set = set.to_vec();
        stats.seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            patched = stats.patched_keys,
            restored = stats.restored_keys,
            unchanged = stats.unchanged_keys,
            not_resident = stats.not_resident,
            seconds = stats.seconds,
            "LoRA set applied"
        );
        Ok(stats)
    }
}

/// Original f32 weight of `key` plus every contribution, in order.
fn merged(
    lib: &LoraLibrary,
    key: &str,
    shape: &[usize],
    contribs: &[Contribution],
    store: &WeightStore,
) -> candle_core::Result<Tensor> {
    let mut w = store.original(key, shape, DType::F32)?;
    for c in contribs {
        let lora = &lib.loras()[c.lora];
        let s = f32::from_bits(c.strength) as f64;
        for &i in lora.by_key.get(key).map(Vec::as_slice).unwrap_or(&[]) {
            w = apply_patch(&w, &lora.patches[i], s)?;
        }
    }
    Ok(w)
}

/// `W + s·α·ΔW` (or DoRA) on the patch's row block / orientation of `w` (f32).
pub fn apply_patch(w: &Tensor, p: &Patch, s: f64) -> candle_core::Result<Tensor> {
    let dev = w.device();
    let block = match p.target.rows {
        Some((start, len)) => w.narrow(0, start, len)?,
        None => w.clone(),
    };
    let block = if p.target.transpose {
        block.t()?.contiguous()?
    } else {
        block
    };
    let shape = block.dims().to_vec();
    let delta = p.adapter.delta(dev, &shape)?;
    let alpha = p.alpha_eff as f64;
    let new = match &p.dora_scale {
        Some(ds) => {
            let ds = ds.to_device(dev)?.to_dtype(DType::F32)?;
            math::dora(&block, &(delta * alpha)?, &ds, s)?
        }
        None => (&block + (delta * (s * alpha))?)?,
    };
    let new = if p.target.transpose {
        new.t()?.contiguous()?
    } else {
        new
    };
    match p.target.rows {
        // One range for a 1-D bias (`in_proj_bias`), not a one-element vector of ranges.
        #[allow(clippy::single_range_in_vec_init)]
        Some((start, len)) if w.rank() == 1 => w.slice_assign(&[start..start + len], &new),
        Some((start, len)) => {
            let cols = w.dim(1)?;
            w.slice_assign(&[start..start + len, 0..cols], &new)
        }
        None => Ok(new),
    }
}
