//! The samplers that come from diffusers' scheduler classes rather than from k-diffusion:
//! LMS (`LMSDiscreteScheduler`), PLMS (`PNDMScheduler` with `skip_prk_steps`), DPM++ 2S
//! (`DPMSolverSinglestepScheduler`, order 2, `dpmsolver++`), and the second-order weight of
//! DPM++ 2M SDE Heun (`DPMSolverMultistepScheduler`, `sde-dpmsolver++`, `solver_type="heun"`).
//!
//! Each is written in k-space like the other samplers (`x = x0 + σ·ε`, the model callback
//! returns `D`). docs/sampling.md, *Samplers from diffusers*, says where these classes and
//! k-diffusion disagree.

use candle_core::Tensor;

use super::{add_scaled, lin, scaled, slope, Sampler, SamplerKind, SamplingError, TimestepSpacing};

/// The timestep spacing a diffusers class really uses for a configured `spacing`:
/// `DPMSolverSinglestepScheduler` ignores `timestep_spacing` and always spaces
/// `linspace(0, 999, N + 1)` rounded, without its last point (the multistep classes' `linspace`).
pub(super) fn class_spacing(kind: SamplerKind, spacing: TimestepSpacing) -> TimestepSpacing {
    match kind {
        SamplerKind::DpmPp2s => TimestepSpacing::Linspace,
        _ => spacing,
    }
}

/// The weight of `(D − D_prev)/r` in a DPM++ 2M SDE step of log-σ length `h`, with
/// `coef = 1 − e^{−2h}`: ½·coef for the midpoint solver (k-diffusion's and diffusers'
/// default), `1 − coef/(2h)` for `solver_type="heun"` (both libraries agree on it, η = 1).
pub(super) fn sde_second_order_weight(kind: SamplerKind, coef: f64, h: f64) -> f64 {
    match kind {
        SamplerKind::DpmPp2mSdeHeun => 1.0 - coef / (2.0 * h),
        _ => 0.5 * coef,
    }
}

/// The same VP-form latents read at another σ: `x·sqrt(σ_to²+1)/sqrt(σ_from²+1)`.
pub(super) fn reread(x: &Tensor, from: f32, to: f32) -> Result<Tensor, SamplingError> {
    if from == to {
        return Ok(x.clone());
    }
    let f = ((to as f64).powi(2) + 1.0).sqrt() / ((from as f64).powi(2) + 1.0).sqrt();
    scaled(x, f as f32)
}

/// Running state of the samplers of this file across the steps of one run.
#[derive(Default)]
pub(super) struct DiffusersState {
    /// LMS: the last (up to four) derivatives `(x − D)/σ`, newest last.
    derivatives: Vec<Tensor>,
    /// PLMS: the noise predictions of the Adams–Bashforth history, newest last.
    eps: Vec<Tensor>,
    /// DPM++ 2S: the sample and data prediction at the start of the current two-step pair.
    pair_start: Option<(Tensor, Tensor)>,
}

/// LMS order (diffusers' `step(order=4)` default and k-diffusion's `sample_lms`).
const LMS_ORDER: usize = 4;

impl DiffusersState {
    /// One LMS step from `sigmas[i]` to `sigmas[i + 1]` of a run (`i` counted from the run's
    /// start, as k-diffusion does): `x + Σ_j c_j·d_{i−j}` where `c_j` integrates the Lagrange
    /// basis polynomial of node `σ_{i−j}` over the step (diffusers and k-diffusion use
    /// scipy's `quad` on the same polynomial; 4-point Gauss–Legendre is exact for it).
    pub(super) fn lms(
        &mut self,
        x: &Tensor,
        d: &Tensor,
        sigmas: &[f32],
        i: usize,
    ) -> Result<Tensor, SamplingError> {
        self.derivatives.push(slope(x, d, sigmas[i])?);
        if self.derivatives.len() > LMS_ORDER {
            self.derivatives.remove(0);
        }
        let order = (i + 1).min(LMS_ORDER).min(self.derivatives.len());
        let mut next = x.clone();
        for j in 0..order {
            let c = lms_coefficient(sigmas, i, order, j);
            let deriv = &self.derivatives[self.derivatives.len() - 1 - j];
            next = add_scaled(&next, deriv, c as f32)?;
        }
        Ok(next)
    }

    /// One PLMS step (`PNDMScheduler` with `skip_prk_steps`), in k-space where its update
    /// is `x + (σ_to − σ_from)·ε'` for the combined noise prediction ε' (the same map as
    /// diffusers' VP formula).
    ///
    /// * Step 0 calls the model twice: an Euler step with ε₀ to `to`, the model at the next
    ///   step's σ, then the step redone from `heun_from` with the mean of the two predictions
    ///   (a Heun step); only ε₀ enters the history.
    /// * Later steps combine the history with Adams–Bashforth weights of order 2, 3, 4.
    ///
    /// `p` holds the σs and timesteps around step `i`; returns the latents at `p.to`.
    pub(super) fn plms<E: From<SamplingError>>(
        &mut self,
        x: &Tensor,
        d: &Tensor,
        p: PlmsStep,
        model: &mut dyn FnMut(&Tensor, f32, f64) -> Result<Tensor, E>,
    ) -> Result<Tensor, E> {
        let eps = slope(x, d, p.sigma)?;
        let Some((next_sigma, next_t, heun_from)) = p.heun else {
            let combined = match self.eps.len() {
                0 => eps.clone(),
                1 => lin(&eps, 1.5, &self.eps[0], -0.5)?,
                2 => {
                    let e = &self.eps;
                    let a = lin(&eps, 23.0 / 12.0, &e[1], -16.0 / 12.0)?;
                    add_scaled(&a, &e[0], 5.0 / 12.0)?
                }
                _ => {
                    let e = &self.eps[self.eps.len() - 3..];
                    let a = lin(&eps, 55.0 / 24.0, &e[2], -59.0 / 24.0)?;
                    let b = lin(&e[1], 37.0 / 24.0, &e[0], -9.0 / 24.0)?;
                    (a + b).map_err(SamplingError::from)?
                }
            };
            self.eps.push(eps);
            if self.eps.len() > 4 {
                self.eps.remove(0);
            }
            return Ok(add_scaled(x, &combined, p.to - p.sigma)?);
        };
        let x1 = add_scaled(x, &eps, p.to - p.sigma)?;
        let x1 = reread(&x1, p.to, next_sigma)?;
        let d1 = model(&x1, next_sigma, next_t)?;
        let eps1 = slope(&x1, &d1, next_sigma)?;
        let mean = lin(&eps, 0.5, &eps1, 0.5)?;
        let start = reread(x, p.sigma, heun_from)?;
        self.eps.push(eps);
        Ok(add_scaled(&start, &mean, next_sigma - heun_from)?)
    }

    /// One DPM++ 2S step (`DPMSolverSinglestepScheduler`, order 2, midpoint): an order-1
    /// step (the DPM++ first-order map) remembers where it started; an order-2 step goes
    /// from that start over both intervals, with the model output at the pair's middle
    /// (`σ_{i−1} → σ_i → σ_{i+1}`).
    pub(super) fn dpmpp_2s(
        &mut self,
        x: &Tensor,
        d: Tensor,
        sigmas: &[f32],
        i: usize,
        order: usize,
    ) -> Result<Tensor, SamplingError> {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let second = match (&self.pair_start, order) {
            (Some((start, d_start)), 2) if i >= 1 && sigma_next > 0.0 => {
                let s1 = sigmas[i - 1] as f64;
                let h = s1.ln() - (sigma_next as f64).ln();
                let r0 = (s1.ln() - (sigma as f64).ln()) / h;
                let coef = -(-h).exp_m1();
                // D0 + D1/2 with D0 = D_start, D1 = (D − D_start)/r0.
                let w = 0.5 / r0;
                let dd = lin(d_start, (1.0 - w) as f32, &d, w as f32)?;
                Some(lin(
                    start,
                    (sigma_next as f64 / s1) as f32,
                    &dd,
                    coef as f32,
                )?)
            }
            _ => None,
        };
        if let Some(next) = second {
            self.pair_start = None;
            return Ok(next);
        }
        let next = if sigma_next == 0.0 {
            d.clone()
        } else {
            let h = (sigma as f64).ln() - (sigma_next as f64).ln();
            let ratio = sigma_next as f64 / sigma as f64;
            lin(x, ratio as f32, &d, (-(-h).exp_m1()) as f32)?
        };
        self.pair_start = Some((x.clone(), d));
        Ok(next)
    }
}

/// Where one PLMS step goes: from `sigma` (the model's σ) to `to`; on the first step of a
/// run `heun` is `(σ of the second model call, its timestep, σ the redone step starts from)`.
#[derive(Debug, Clone, Copy)]
pub(super) struct PlmsStep {
    pub sigma: f32,
    pub to: f32,
    pub heun: Option<(f32, f64, f32)>,
}

impl Sampler {
    /// Step `i` of a PLMS run that began at schedule step `start`, leaving the latents at
    /// the next step's σ (diffusers lands at σ(t − 1000//N), which an uneven spacing can put
    /// elsewhere: the same VP latents are then read at the next σ).
    pub(super) fn plms_step<E: From<SamplingError>>(
        &self,
        state: &mut DiffusersState,
        x: &Tensor,
        d: &Tensor,
        start: usize,
        i: usize,
        model: &mut dyn FnMut(&Tensor, f32, f64) -> Result<Tensor, E>,
    ) -> Result<Tensor, E> {
        let s = &self.sigmas[start..];
        let ts = &self.timesteps[start..];
        let n = ts.len();
        let sigma = s[i];
        let to = self
            .ddim_targets
            .as_ref()
            .map_or(s[i + 1], |t| t[start + i]);
        let heun = (i == 0 && n >= 2).then(|| {
            let from = self.plms_heun_from.as_ref().map_or(sigma, |f| f[start]);
            (s[1], ts[1], from)
        });
        let landed = if heun.is_some() { s[1] } else { to };
        let x = state.plms(x, d, PlmsStep { sigma, to, heun }, model)?;
        if i + 1 < n {
            Ok(reread(&x, landed, s[i + 1])?)
        } else {
            Ok(x)
        }
    }
}

/// For PLMS on a diffusers spacing (integer timesteps `ts`, `steps` of them): per step `i`,
/// σ(t_{i+1} + 1000//N), where diffusers' Heun redo of a first step at `i` starts.
pub(super) fn plms_heun_from_sigmas(
    ts: &[f64],
    train: &[f32],
    steps: usize,
) -> Result<Vec<f32>, SamplingError> {
    let stride = train.len() / steps;
    (0..ts.len())
        .map(|i| {
            let t = ts
                .get(i + 1)
                .map_or(ts[i] as usize, |&t| t as usize + stride);
            train.get(t).copied().ok_or_else(|| {
                SamplingError::InvalidConfig(format!("timestep {t} outside the training table"))
            })
        })
        .collect()
}

/// `∫_{σ_i}^{σ_{i+1}} ∏_{k≠j} (τ − σ_{i−k})/(σ_{i−j} − σ_{i−k}) dτ` over the nodes
/// `σ_i, …, σ_{i−order+1}`.
fn lms_coefficient(sigmas: &[f32], i: usize, order: usize, j: usize) -> f64 {
    // Gauss–Legendre nodes and weights on [−1, 1], exact for degree ≤ 7.
    const NODES: [(f64, f64); 4] = [
        (-0.861_136_311_594_052_6, 0.347_854_845_137_453_9),
        (-0.339_981_043_584_856_3, 0.652_145_154_862_546_1),
        (0.339_981_043_584_856_3, 0.652_145_154_862_546_1),
        (0.861_136_311_594_052_6, 0.347_854_845_137_453_9),
    ];
    let node = |k: usize| sigmas[i - k] as f64;
    let basis = |tau: f64| {
        (0..order)
            .filter(|&k| k != j)
            .map(|k| (tau - node(k)) / (node(j) - node(k)))
            .product::<f64>()
    };
    let (a, b) = (sigmas[i] as f64, sigmas[i + 1] as f64);
    let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
    NODES
        .iter()
        .map(|&(x, w)| w * basis(mid + half * x))
        .sum::<f64>()
        * half
}

/// diffusers' order per step of `DPMSolverSinglestepScheduler` (order 2, `lower_order_final`,
/// which a `final_sigmas_type` of "zero" forces on): `[1, 2]` pairs, a trailing `[1, 1]` for
/// an even count or `[1]` for an odd one, and the last step first order.
pub(super) fn singlestep_orders(steps: usize) -> Vec<usize> {
    let mut orders: Vec<usize> = if steps.is_multiple_of(2) {
        let mut o: Vec<usize> = [1, 2].repeat((steps / 2).saturating_sub(1));
        o.extend([1, 1]);
        o
    } else {
        let mut o: Vec<usize> = [1, 2].repeat(steps / 2);
        o.push(1);
        o
    };
    orders.truncate(steps);
    if let Some(last) = orders.last_mut() {
        *last = 1;
    }
    orders
}

#[cfg(test)]
mod tests {
    use super::*;

    /// diffusers' `get_order_list` for order 2 with `lower_order_final` (printed by diffusers
    /// 0.42.1 for 1–5 and 8, 9 steps).
    #[test]
    fn singlestep_orders_match_diffusers() {
        assert_eq!(singlestep_orders(1), vec![1]);
        assert_eq!(singlestep_orders(2), vec![1, 1]);
        assert_eq!(singlestep_orders(3), vec![1, 2, 1]);
        assert_eq!(singlestep_orders(4), vec![1, 2, 1, 1]);
        assert_eq!(singlestep_orders(5), vec![1, 2, 1, 2, 1]);
        assert_eq!(singlestep_orders(8), vec![1, 2, 1, 2, 1, 2, 1, 1]);
        assert_eq!(singlestep_orders(9), vec![1, 2, 1, 2, 1, 2, 1, 2, 1]);
    }

    /// LMS coefficients sum to the step length (the Lagrange basis sums to 1), and the
    /// first-order one is Euler's.
    #[test]
    fn lms_coefficients_integrate_the_basis() {
        let sigmas = [14.6f32, 9.0, 5.5, 3.1, 1.2, 0.0];
        for i in 0..5 {
            let order = (i + 1).min(LMS_ORDER);
            let total: f64 = (0..order)
                .map(|j| lms_coefficient(&sigmas, i, order, j))
                .sum();
            let step = sigmas[i + 1] as f64 - sigmas[i] as f64;
            assert!((total - step).abs() < 1e-12, "step {i}: {total} vs {step}");
        }
        let euler = sigmas[1] as f64 - sigmas[0] as f64;
        assert!((lms_coefficient(&sigmas, 0, 1, 0) - euler).abs() < 1e-12);
    }
}
