//! Grouping a LoRA file's tensors into modules and recognising the adapter kind of each
//! (docs/formats.md, *Tensor suffixes and adapter kinds*): kohya LoRA/LoCon (+ Tucker `lora_mid`), LoHa (± Tucker), LoKr (factored
//! or full, ± Tucker), full `diff`/`diff_b`, norm `w_norm`/`b_norm`, diffusers/PEFT
//! `lora_A`/`lora_B` and the older diffusers spellings, with optional `alpha` and DoRA scale.

use super::math;
use candle_core::{DType, Device, Result as CResult, Tensor};
use std::collections::BTreeMap;

/// Tensor name suffixes and the role they play. Longest first, so `.lora_down.weight` wins
/// over `.down.weight`.
const SUFFIXES: &[(&str, Role)] = &[
    (".lora_linear_layer.down.weight", Role::Down),
    (".lora_linear_layer.up.weight", Role::Up),
    (".lora_A.default.weight", Role::Down),
    (".lora_B.default.weight", Role::Up),
    (".lora_magnitude_vector.default", Role::Dora),
    (".lora_magnitude_vector", Role::Dora),
    (".lora_down.weight", Role::Down),
    (".lora_up.weight", Role::Up),
    (".lora_mid.weight", Role::Mid),
    (".lora.down.weight", Role::Down),
    (".lora.up.weight", Role::Up),
    ("_lora.down.weight", Role::Down),
    ("_lora.up.weight", Role::Up),
    (".lora_A.weight", Role::Down),
    (".lora_B.weight", Role::Up),
    (".dora_scale", Role::Dora),
    (".hada_w1_a", Role::HadaW1a),
    (".hada_w1_b", Role::HadaW1b),
    (".hada_w2_a", Role::HadaW2a),
    (".hada_w2_b", Role::HadaW2b),
    (".hada_t1", Role::HadaT1),
    (".hada_t2", Role::HadaT2),
    (".lokr_w1_a", Role::LokrW1a),
    (".lokr_w1_b", Role::LokrW1b),
    (".lokr_w2_a", Role::LokrW2a),
    (".lokr_w2_b", Role::LokrW2b),
    (".lokr_w1", Role::LokrW1),
    (".lokr_w2", Role::LokrW2),
    (".lokr_t2", Role::LokrT2),
    (".diff_b", Role::DiffB),
    (".diff", Role::Diff),
    (".w_norm", Role::WNorm),
    (".b_norm", Role::BNorm),
    (".alpha", Role::Alpha),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Role {
    Down,
    Up,
    Mid,
    Alpha,
    Dora,
    HadaW1a,
    HadaW1b,
    HadaW2a,
    HadaW2b,
    HadaT1,
    HadaT2,
    LokrW1,
    LokrW1a,
    LokrW1b,
    LokrW2,
    LokrW2a,
    LokrW2b,
    LokrT2,
    Diff,
    DiffB,
    WNorm,
    BNorm,
}

/// Splits a tensor name into (module, role); `None` for names no adapter uses.
pub(crate) fn split_name(name: &str) -> Option<(&str, Role)> {
    SUFFIXES
        .iter()
        .find_map(|(suf, role)| name.strip_suffix(suf).map(|m| (m, *role)))
}

/// The factors of one module's weight delta, kept on the host in the file's dtype and
/// upcast exactly to f32 on the device when a switch needs them.
#[derive(Debug, Clone)]
pub enum Adapter {
    Lora {
        up: Tensor,
        down: Tensor,
        mid: Option<Tensor>,
    },
    Loha {
        w1a: Tensor,
        w1b: Tensor,
        w2a: Tensor,
        w2b: Tensor,
        t1: Option<Tensor>,
        t2: Option<Tensor>,
    },
    Lokr {
        w1: Option<Tensor>,
        w1ab: Option<(Tensor, Tensor)>,
        w2: Option<Tensor>,
        w2ab: Option<(Tensor, Tensor)>,
        t2: Option<Tensor>,
    },
    /// A full delta (`diff`, `diff_b`, `w_norm`, `b_norm`): added as is, no α.
    Diff(Tensor),
}

fn up32(t: &Tensor, dev: &Device) -> CResult<Tensor> {
    t.to_device(dev)?.to_dtype(DType::F32)
}

impl Adapter {
    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Lora { mid: Some(_), .. } => "locon-tucker",
            Self::Lora { .. } => "lora",
            Self::Loha { .. } => "loha",
            Self::Lokr { .. } => "lokr",
            Self::Diff(_) => "diff",
        }
    }

    /// The rank that divides `alpha`, or `None` when `alpha` does not apply (LoKr with no
    /// factored operand, full deltas): then α_eff = 1.
    pub fn rank(&self) -> Option<usize> {
        match self {
            Self::Lora { down, .. } => down.dims().first().copied(),
            Self::Loha { w1b, .. } => w1b.dims().first().copied(),
            Self::Lokr { w1ab, w2ab, .. } => match (w2ab, w1ab) {
                (Some((_, b)), _) => b.dims().first().copied(),
                (None, Some((_, b))) => b.dims().first().copied(),
                (None, None) => None,
            },
            Self::Diff(_) => None,
        }
    }

    /// The number of elements ΔW has and its leading dimension, from the factor shapes
    /// alone (checked against the target at load, before any math).
    pub fn out_and_numel(&self) -> Option<(usize, usize)> {
        let d = |t: &Tensor| t.dims().to_vec();
        match self {
            Self::Lora { up, down, mid } => {
                let out = *d(up).first()?;
                let inn = *d(down).get(1)?;
                let kernel: usize = match mid {
                    Some(m) => d(m).iter().skip(2).product(),
                    None => d(down).iter().skip(2).product(),
                };
                Some((out, out * inn * kernel))
            }
            Self::Loha { w1a, w1b, t1, .. } => match t1 {
                Some(t) => {
                    let out = *d(w1a).get(1)?;
                    let inn = *d(w1b).get(1)?;
                    let k: usize = d(t).iter().skip(2).product();
                    Some((out, out * inn * k))
                }
                None => {
                    let out = *d(w1a).first()?;
                    let inn: usize = d(w1b).iter().skip(1).product();
                    Some((out, out * inn))
                }
            },
            Self::Lokr { .. } => {
                let (w1, w2) = self.lokr_operands().ok()?;
                let ((a0, a_n), (b0, b_n)) = (w1.out_and_numel()?, w2.out_and_numel()?);
                Some((a0 * b0, a_n * b_n))
            }
            Self::Diff(t) => Some((*d(t).first().unwrap_or(&1), t.elem_count())),
        }
    }

    /// ΔW in f32 on `dev`, reshaped to `shape` (unscaled).
    pub fn delta(&self, dev: &Device, shape: &[usize]) -> CResult<Tensor> {
        match self {
            Self::Lora { up, down, mid } => {
                let mid = mid.as_ref().map(|m| up32(m, dev)).transpose()?;
                math::lora(&up32(up, dev)?, &up32(down, dev)?, mid.as_ref(), shape)
            }
            Self::Loha {
                w1a,
                w1b,
                w2a,
                w2b,
                t1,
                t2,
            } => {
                let t1 = t1.as_ref().map(|t| up32(t, dev)).transpose()?;
                let t2 = t2.as_ref().map(|t| up32(t, dev)).transpose()?;
                math::loha(
                    &up32(w1a, dev)?,
                    &up32(w1b, dev)?,
                    &up32(w2a, dev)?,
                    &up32(w2b, dev)?,
                    t1.as_ref(),
                    t2.as_ref(),
                    shape,
                )
            }
            Self::Lokr { .. } => {
                let (w1, w2) = self
                    .lokr_operands()
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                // A 4-D w2 (conv) takes w1 as [a, b, 1, 1]: `kron` pads the lower rank.
                math::kron(&w1.delta(dev)?, &w2.delta(dev)?)?.reshape(shape)
            }
            Self::Diff(t) => up32(t, dev)?.reshape(shape),
        }
    }
}

impl Adapter {
    /// The two Kronecker operands of a LoKr module, each in the form it is stored in; `Err`
    /// for other kinds, or when an operand is missing (which `parse` rules out).
    fn lokr_operands(&self) -> Result<(LokrOperand<'_>, LokrOperand<'_>), &'static str> {
        let Self::Lokr {
            w1,
            w1ab,
            w2,
            w2ab,
            t2,
        } = self
        else {
            return Err("not a LoKr module");
        };
        let w1 = match (w1, w1ab) {
            (Some(w), _) => LokrOperand::Full(w),
            (None, Some((a, b))) => LokrOperand::Product(a, b),
            _ => return Err("LoKr module without lokr_w1"),
        };
        let w2 = match (w2, w2ab, t2) {
            (Some(w), _, _) => LokrOperand::Full(w),
            (None, Some((a, b)), Some(t)) => LokrOperand::Tucker(t, a, b),
            (None, Some((a, b)), None) => LokrOperand::ProductFlat(a, b),
            _ => return Err("LoKr module without lokr_w2"),
        };
        Ok((w1, w2))
    }
}

/// One operand of a LoKr Kronecker product, as the file stores it.
enum LokrOperand<'a> {
    /// Stored whole (`lokr_w1`, `lokr_w2`).
    Full(&'a Tensor),
    /// `a @ b` (`lokr_w1_a`, `lokr_w1_b`), both 2-D.
    Product(&'a Tensor, &'a Tensor),
    /// `a @ b.flatten(1)` (`lokr_w2_a`, `lokr_w2_b`; `b` may carry a conv kernel).
    ProductFlat(&'a Tensor, &'a Tensor),
    /// The Tucker form with core `lokr_t2` over (`lokr_w2_a`, `lokr_w2_b`).
    Tucker(&'a Tensor, &'a Tensor, &'a Tensor),
}

impl LokrOperand<'_> {
    /// Leading dimension and element count of the operand, from the factor shapes alone.
    fn out_and_numel(&self) -> Option<(usize, usize)> {
        let d = |t: &Tensor| t.dims().to_vec();
        match *self {
            Self::Full(w) => Some((*d(w).first()?, w.elem_count())),
            Self::Product(a, b) => Some((*d(a).first()?, d(a)[0] * *d(b).get(1)?)),
            Self::ProductFlat(a, b) => {
                let rest: usize = d(b).iter().skip(1).product();
                Some((*d(a).first()?, d(a)[0] * rest))
            }
            Self::Tucker(t, a, b) => {
                let k: usize = d(t).iter().skip(2).product();
                Some((*d(a).get(1)?, d(a)[1] * *d(b).get(1)? * k))
            }
        }
    }

    /// The operand in f32 on `dev`.
    fn delta(&self, dev: &Device) -> CResult<Tensor> {
        match *self {
            Self::Full(w) => up32(w, dev),
            Self::Product(a, b) => up32(a, dev)?.matmul(&up32(b, dev)?),
            Self::ProductFlat(a, b) => up32(a, dev)?.matmul(&up32(b, dev)?.flatten_from(1)?),
            Self::Tucker(t, a, b) => math::tucker(&up32(t, dev)?, &up32(b, dev)?, &up32(a, dev)?),
        }
    }
}

/// The tensors of one module, by role, as read from the file.
#[derive(Debug, Default)]
pub(crate) struct ModuleTensors {
    pub parts: BTreeMap<Role, Tensor>,
}

/// What a module provides once its tensors are classified.
pub(crate) struct Parsed {
    /// Weight adapter, if the module has one.
    pub weight: Option<Adapter>,
    /// Bias delta (`diff_b` / `b_norm`).
    pub bias: Option<Tensor>,
    pub alpha: Option<f32>,
    pub dora_scale: Option<Tensor>,
}

impl ModuleTensors {
    /// Classifies the module; `Err` names what is incomplete (e.g. `lora_up` without
    /// `lora_down`).
    pub fn parse(mut self) -> Result<Parsed, String> {
        let mut take = |r: Role| self.parts.remove(&r);
        let alpha = match take(Role::Alpha) {
            Some(a) => Some(scalar(&a).map_err(|e| format!("`alpha` is not a number: {e}"))?),
            None => None,
        };
        let dora_scale = take(Role::Dora);
        let bias = take(Role::DiffB).or_else(|| take(Role::BNorm));
        let (down, up, mid) = (take(Role::Down), take(Role::Up), take(Role::Mid));
        let hada = [
            take(Role::HadaW1a),
            take(Role::HadaW1b),
            take(Role::HadaW2a),
            take(Role::HadaW2b),
        ];
        let (ht1, ht2) = (take(Role::HadaT1), take(Role::HadaT2));
        let lokr = (
            take(Role::LokrW1),
            take(Role::LokrW1a),
            take(Role::LokrW1b),
            take(Role::LokrW2),
            take(Role::LokrW2a),
            take(Role::LokrW2b),
            take(Role::LokrT2),
        );
        let diff = take(Role::Diff).or_else(|| take(Role::WNorm));

        let weight = if up.is_some() || down.is_some() {
            match (up, down) {
                (Some(up), Some(down)) => Some(Adapter::Lora { up, down, mid }),
                (None, _) => return Err("has a LoRA `down` tensor but no `up`".into()),
                (_, None) => return Err("has a LoRA `up` tensor but no `down`".into()),
            }
        } else if hada.iter().any(Option::is_some) {
            let [Some(w1a), Some(w1b), Some(w2a), Some(w2b)] = hada else {
                return Err("is a LoHa module missing one of hada_w1_a/w1_b/w2_a/w2_b".into());
            };
            Some(Adapter::Loha {
                w1a,
                w1b,
                w2a,
                w2b,
                t1: ht1,
                t2: ht2,
            })
        } else if lokr.0.is_some() || lokr.1.is_some() || lokr.3.is_some() || lokr.4.is_some() {
            let (w1, w1a, w1b, w2, w2a, w2b, t2) = lokr;
            let w1ab = match (w1a, w1b) {
                (Some(a), Some(b)) => Some((a, b)),
                (None, None) => None,
                _ => return Err("is a LoKr module with only one of lokr_w1_a/lokr_w1_b".into()),
            };
            let w2ab = match (w2a, w2b) {
                (Some(a), Some(b)) => Some((a, b)),
                (None, None) => None,
                _ => return Err("is a LoKr module with only one of lokr_w2_a/lokr_w2_b".into()),
            };
            if w1.is_none() && w1ab.is_none() {
                return Err("is a LoKr module without lokr_w1 or lokr_w1_a/b".into());
            }
            if w2.is_none() && w2ab.is_none() {
                return Err("is a LoKr module without lokr_w2 or lokr_w2_a/b".into());
            }
            Some(Adapter::Lokr {
                w1,
                w1ab,
                w2,
                w2ab,
                t2,
            })
        } else {
            diff.map(Adapter::Diff)
        };
        if weight.is_none() && bias.is_none() {
            return Err("has no weight tensors (only alpha/scale)".into());
        }
        Ok(Parsed {
            weight,
            bias,
            alpha,
            dora_scale,
        })
    }
}

fn scalar(t: &Tensor) -> CResult<f32> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    match v.as_slice() {
        [x] if x.is_finite() => Ok(*x),
        _ => candle_core::bail!("expected one finite value, found {} values", v.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_split_the_known_spellings() {
        let cases = [
            (
                "lora_unet_a_to_q.lora_down.weight",
                "lora_unet_a_to_q",
                Role::Down,
            ),
            (
                "unet.a.attn1.processor.to_q_lora.up.weight",
                "unet.a.attn1.processor.to_q",
                Role::Up,
            ),
            ("unet.a.to_q.lora_A.weight", "unet.a.to_q", Role::Down),
            ("unet.a.to_q.lora.up.weight", "unet.a.to_q", Role::Up),
            (
                "text_encoder.x.q_proj.lora_linear_layer.down.weight",
                "text_encoder.x.q_proj",
                Role::Down,
            ),
            ("m.lokr_w1", "m", Role::LokrW1),
            ("m.lokr_w1_a", "m", Role::LokrW1a),
            ("m.diff_b", "m", Role::DiffB),
            ("m.diff", "m", Role::Diff),
            ("m.alpha", "m", Role::Alpha),
        ];
        for (name, module, role) in cases {
            assert_eq!(split_name(name), Some((module, role)), "{name}");
        }
        assert_eq!(split_name("m.something_else"), None);
    }
}
