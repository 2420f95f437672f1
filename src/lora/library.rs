//! The LoRAs named in `models.toml`, loaded once at start: each file parsed into per-key
//! patches resolved against the checkpoint, kept in host memory in the file's dtype.

use super::error::LoraError;
pub use super::error::MAX_LORA_WEIGHT;
use super::format::{split_name, Adapter, ModuleTensors};
use super::names::{Component, NameIndex, Target};
use crate::weights::{Checkpoint, ShapeMap};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One resolved patch: an adapter applied to one checkpoint key (or a row block of it).
#[derive(Debug, Clone)]
pub struct Patch {
    /// The LoRA module name as written in the file.
    pub module: String,
    pub target: Target,
    pub adapter: Adapter,
    /// `alpha / rank`, or 1 without alpha or without a rank (docs/formats.md, *Scaling: alpha,
    /// rank and strength*).
    pub alpha_eff: f32,
    pub dora_scale: Option<Tensor>,
}

/// Counts from loading one file.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadStats {
    pub tensors: usize,
    pub modules: usize,
    /// Modules applied to some checkpoint key.
    pub matched: usize,
    /// Modules whose name matched no key of the checkpoint.
    pub unmatched: usize,
    /// Tensors whose suffix no adapter uses (counted, ignored).
    pub unknown_tensors: usize,
    /// A few unmatched names, for the log.
    pub unmatched_examples: Vec<String>,
}

/// A loaded LoRA file.
#[derive(Debug)]
pub struct LoraFile {
    pub name: String,
    pub path: PathBuf,
    /// Weight used when a request names the LoRA without one.
    pub default_weight: f64,
    pub patches: Vec<Patch>,
    /// Checkpoint key → indices into `patches`, in file order.
    pub by_key: BTreeMap<String, Vec<usize>>,
    pub stats: LoadStats,
    pub metadata: BTreeMap<String, String>,
}

/// One entry of `models.toml`'s LoRA list.
#[derive(Debug, Clone)]
pub struct LoraEntry {
    pub name: String,
    pub path: PathBuf,
    pub default_weight: f64,
}

/// A LoRA chosen for a request, with its strengths resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActiveLora {
    /// Index into [`LoraLibrary::loras`].
    pub index: usize,
    /// Strength on UNet keys.
    pub unet_weight: f32,
    /// Strength on text-encoder keys (the references use the same value for both).
    pub clip_weight: f32,
}

/// All LoRAs of the deployment.
#[derive(Debug, Default)]
pub struct LoraLibrary {
    loras: Vec<Arc<LoraFile>>,
}

impl LoraLibrary {
    /// Opens and parses every entry against the checkpoint's keys. Any error (unreadable file,
    /// a LoRA for another architecture, duplicate names) fails the whole load, so a
    /// misconfigured deployment is reported before it takes jobs.
    pub fn load(entries: &[LoraEntry], shapes: &ShapeMap) -> Result<Self, LoraError> {
        let index = NameIndex::build(shapes);
        let mut loras: Vec<Arc<LoraFile>> = Vec::with_capacity(entries.len());
        for e in entries {
            if loras.iter().any(|l| l.name.eq_ignore_ascii_case(&e.name)) {
                return Err(LoraError::DuplicateName(e.name.clone()));
            }
            check_weight(&e.name, "default weight", e.default_weight)?;
            let f = load_file(&e.name, &e.path, e.default_weight, &index, shapes)?;
            loras.push(Arc::new(f));
        }
        Ok(Self { loras })
    }

    pub fn loras(&self) -> &[Arc<LoraFile>] {
        &self.loras
    }

    pub fn is_empty(&self) -> bool {
        self.loras.is_empty()
    }

    pub fn names(&self) -> Vec<&str> {
        self.loras.iter().map(|l| l.name.as_str()).collect()
    }

    /// Looks a LoRA up by name, ignoring ASCII case (as the rest of the worker does).
    pub fn get(&self, name: &str) -> Option<(usize, &LoraFile)> {
        self.loras
            .iter()
            .enumerate()
            .find(|(_, l)| l.name.eq_ignore_ascii_case(name))
            .map(|(i, l)| (i, l.as_ref()))
    }

    /// Resolves a request's LoRA list `(name, weight, clip_weight)`: a missing weight takes
    /// the `models.toml` default, a missing clip weight the UNet weight. Unknown names are an
    /// error listing the available LoRAs. A name given twice keeps its last entry.
    pub fn resolve(
        &self,
        requested: &[(String, Option<f64>, Option<f64>)],
    ) -> Result<Vec<ActiveLora>, LoraError> {
        let mut out: Vec<ActiveLora> = Vec::new();
        for (name, w, cw) in requested {
            let Some((index, lora)) = self.get(name) else {
                let mut available = self.names();
                available.sort_unstable();
                return Err(LoraError::UnknownName {
                    name: name.clone(),
                    available: if available.is_empty() {
                        "none (models.toml lists no LoRAs)".into()
                    } else {
                        available.join(", ")
                    },
                });
            };
            let w = w.unwrap_or(lora.default_weight);
            let cw = cw.unwrap_or(w);
            check_weight(name, "weight", w)?;
            check_weight(name, "clip_weight", cw)?;
            let a = ActiveLora {
                index,
                unet_weight: w as f32,
                clip_weight: cw as f32,
            };
            match out.iter_mut().find(|x| x.index == index) {
                Some(prev) => *prev = a,
                None => out.push(a),
            }
        }
        Ok(out)
    }
}

fn check_weight(name: &str, field: &str, v: f64) -> Result<(), LoraError> {
    if v.is_finite() && v.abs() <= MAX_LORA_WEIGHT {
        Ok(())
    } else {
        Err(LoraError::BadWeight {
            name: name.to_string(),
            field: field.to_string(),
            value: v,
        })
    }
}

/// Metadata that names another model family (kohya `ss_base_model_version`, model-spec
/// `modelspec.architecture`). Only families known to be different are refused: SDXL
/// derivatives carry many spellings, and the shape check catches what metadata misses.
fn foreign_architecture(meta: &BTreeMap<String, String>) -> Option<String> {
    const FOREIGN: [&str; 10] = [
        "stable-diffusion-v1",
        "stable-diffusion-v2",
        "stable-diffusion-3",
        "sd_v1",
        "sd_v2",
        "sd3",
        "flux",
        "stable-cascade",
        "pixart",
        "hunyuan",
    ];
    for field in ["modelspec.architecture", "ss_base_model_version"] {
        if let Some(v) = meta.get(field) {
            let l = v.to_ascii_lowercase();
            if FOREIGN.iter().any(|f| l.starts_with(f)) {
                return Some(format!("its metadata says {field} = `{v}`"));
            }
        }
    }
    None
}

fn load_file(
    name: &str,
    path: &Path,
    default_weight: f64,
    index: &NameIndex,
    shapes: &ShapeMap,
) -> Result<LoraFile, LoraError> {
    let _span = tracing::info_span!("load_lora", name, path = %path.display()).entered();
    let started = std::time::Instant::now();
    let ckpt = Checkpoint::open(path)?;
    let wrong = |reason: String| LoraError::WrongArchitecture {
        name: name.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    let format_err = |reason: String| LoraError::Format {
        name: name.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    if let Some(reason) = foreign_architecture(ckpt.metadata()) {
        return Err(wrong(reason));
    }

    let mut stats = LoadStats {
        tensors: ckpt.tensors().len(),
        ..LoadStats::default()
    };
    let mut modules: BTreeMap<String, ModuleTensors> = BTreeMap::new();
    for tname in ckpt.tensors().keys() {
        let Some((module, role)) = split_name(tname) else {
            stats.unknown_tensors += 1;
            continue;
        };
        // Host copy in the file's dtype (F32/F16/BF16); the f32 upcast happens on the
        // device at switch time and is exact.
        let t = ckpt
            .load(tname, &Device::Cpu)
            .map_err(|e| format_err(e.to_string()))?;
        modules
            .entry(module.to_string())
            .or_default()
            .parts
            .insert(role, t);
    }
    stats.modules = modules.len();
    let te_single = modules.keys().any(|m| m.starts_with("lora_te_"));
    let te_split = modules
        .keys()
        .any(|m| m.starts_with("lora_te1_") || m.starts_with("lora_te2_"));
    if te_single && !te_split {
        return Err(wrong(
            "it has `lora_te_` text-encoder modules (one text encoder: SD 1.x/2.x) and no `lora_te1_`/`lora_te2_` (SDXL's two encoders)".into(),
        ));
    }

    let mut patches = Vec::new();
    let mut mismatches: Vec<String> = Vec::new();
    for (module, tensors) in modules {
        let Some(target) = index.resolve(&module).cloned() else {
            stats.unmatched += 1;
            if stats.unmatched_examples.len() < 5 {
                stats.unmatched_examples.push(module);
            }
            continue;
        };
        let parsed = tensors
            .parse()
            .map_err(|why| format_err(format!("module `{module}` {why}")))?;
        let mut any = false;
        if let Some(adapter) = parsed.weight {
            let want = target_shape(&target, shapes);
            match (adapter.out_and_numel(), want) {
                (Some((out, numel)), Some(want))
                    if want.first() == Some(&out) && want.iter().product::<usize>() == numel =>
                {
                    let alpha_eff = match (parsed.alpha, adapter.rank()) {
                        (Some(a), Some(r)) if r > 0 => a / r as f32,
                        _ => 1.0,
                    };
                    patches.push(Patch {
                        module: module.clone(),
                        target: target.clone(),
                        adapter,
                        alpha_eff,
                        dora_scale: parsed.dora_scale.clone(),
                    });
                    any = true;
                }
                (got, want) => mismatches.push(format!(
                    "`{module}` gives {} for `{}` of shape {:?}",
                    got.map(|(o, n)| format!("{n} values with {o} rows"))
                        .unwrap_or_else(|| "an unreadable shape".into()),
                    target.key,
                    want.unwrap_or_default()
                )),
            }
        }
        if let Some(b) = parsed.bias {
            let bias_target = target.bias_key().and_then(|k| {
                let shape = shapes.get(&k)?;
                let rows = target.rows;
                let len = rows.map(|r| r.1).unwrap_or(*shape.first()?);
                (b.elem_count() == len).then_some(Target {
                    key: k,
                    rows,
                    transpose: false,
                    component: target.component,
                })
            });
            match bias_target {
                Some(t) => {
                    patches.push(Patch {
                        module: module.clone(),
                        target: t,
                        adapter: Adapter::Diff(b),
                        alpha_eff: 1.0,
                        dora_scale: None,
                    });
                    any = true;
                }
                None => mismatches.push(format!("`{module}` has a bias delta that fits no bias")),
            }
        }
        if any {
            stats.matched += 1;
        }
    }
    if !mismatches.is_empty() {
        return Err(wrong(format!(
            "{} of its modules do not fit this checkpoint's shapes (e.g. {}) — a LoRA for SD 1.5/2.x or another model?",
            mismatches.len(),
            mismatches[0]
        )));
    }
    if patches.is_empty() {
        return Err(wrong(format!(
            "none of its {} modules names a weight of this SDXL checkpoint (e.g. `{}`)",
            stats.modules,
            stats
                .unmatched_examples
                .first()
                .map(String::as_str)
                .unwrap_or("-")
        )));
    }
    if stats.unmatched > 0 || stats.unknown_tensors > 0 {
        tracing::warn!(
            lora = name,
            unmatched_modules = stats.unmatched,
            unknown_tensors = stats.unknown_tensors,
            examples = ?stats.unmatched_examples,
            "LoRA modules that match no weight of the checkpoint are ignored"
        );
    }
    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, p) in patches.iter().enumerate() {
        by_key.entry(p.target.key.clone()).or_default().push(i);
    }
    let kinds: BTreeMap<&str, usize> = patches.iter().fold(BTreeMap::new(), |mut m, p| {
        *m.entry(p.adapter.kind()).or_default() += 1;
        m
    });
    tracing::info!(
        lora = name,
        modules = stats.modules,
        matched = stats.matched,
        keys = by_key.len(),
        kinds = ?kinds,
        seconds = started.elapsed().as_secs_f64(),
        "LoRA loaded"
    );
    Ok(LoraFile {
        name: name.to_string(),
        path: path.to_path_buf(),
        default_weight,
        metadata: ckpt.metadata().clone(),
        patches,
        by_key,
        stats,
    })
}

/// The shape ΔW must have for `target`: the row block of a fused weight, transposed where
/// the checkpoint stores the transpose.
pub(crate) fn target_shape(t: &Target, shapes: &ShapeMap) -> Option<Vec<usize>> {
    let mut s = shapes.get(&t.key)?.clone();
    if let Some((_, len)) = t.rows {
        *s.first_mut()? = len;
    }
    if t.transpose {
        if s.len() != 2 {
            return None;
        }
        s.swap(0, 1);
    }
    Some(s)
}

impl Component {
    /// The strength of `lora` for keys of this component.
    pub fn strength(self, lora: &ActiveLora) -> f32 {
        if self.is_text_encoder() {
            lora.clip_weight
        } else {
            lora.unet_weight
        }
    }
}
