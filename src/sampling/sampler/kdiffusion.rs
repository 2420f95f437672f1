//! The k-diffusion samplers that A1111 offers and diffusers has no class for: DPM++ 2S a,
//! DPM fast, DPM adaptive, A1111's Restart and A1111's DDIM CFG++ (docs/sampling.md,
//! *A1111's extra k-diffusion samplers*). A child of [`super`] so that it shares the plan
//! ([`Sampler`]) and the float32 step helpers of the other samplers.
//!
//! Parameters are A1111's effective defaults: η = 1 and s_noise = 1 wherever the sampler takes
//! them (A1111 passes its `eta_ancestral` option, 1, to DPM fast and DPM adaptive too, which
//! makes them ancestral), and k-diffusion's adaptive-step defaults. Fresh noise is drawn from
//! the images' generators, one draw per call of k-diffusion's default noise sampler.

use candle_core::Tensor;

use super::{
    add_scaled, ancestral, euler, exp_step, f32_of, lin, slope, Sampler, SamplerKind, SamplerNoise,
    StepInfo,
};
use crate::sampling::schedule::karras_sigmas;
use crate::sampling::SamplingError;

/// One model evaluation of a guided run: the guided data prediction and, where the run used
/// classifier-free guidance, the unconditional one (which DDIM CFG++ renoises with).
#[derive(Debug, Clone)]
pub struct Prediction {
    pub denoised: Tensor,
    pub uncond: Option<Tensor>,
}

impl From<Tensor> for Prediction {
    fn from(denoised: Tensor) -> Self {
        Self {
            denoised,
            uncond: None,
        }
    }
}

/// The model callback of [`Sampler::sample_cfg`].
pub type CfgModel<'m, E> = dyn FnMut(&Tensor, f32, f64) -> Result<Prediction, E> + 'm;

/// The step callback of the samplers.
type OnStep<'m, E> = dyn FnMut(StepInfo<'_>) -> Result<(), E> + 'm;

impl SamplerKind {
    /// Whether the sampler is one of this module's.
    pub(super) fn is_kdiffusion_extra(self) -> bool {
        matches!(
            self,
            Self::DpmPp2sAncestral
                | Self::DpmFast
                | Self::DpmAdaptive
                | Self::Restart
                | Self::DdimCfgPp
        )
    }

    /// Whether the sampler reads the unconditional prediction of [`Prediction`] (DDIM CFG++).
    pub fn needs_uncond(self) -> bool {
        self == Self::DdimCfgPp
    }

    /// What the request's guidance scale is multiplied by before CFG: A1111's DDIM CFG++ maps
    /// the usual scales 0…12.5 onto 0…1 (a factor of 1/12.5); 1 for every other sampler.
    pub fn guidance_multiplier(self) -> f32 {
        if self == Self::DdimCfgPp {
            1.0 / 12.5
        } else {
            1.0
        }
    }
}

impl Sampler {
    /// [`Sampler::sample`] with a model callback that may also return the unconditional data
    /// prediction (see [`Prediction`]); samplers other than DDIM CFG++ ignore it.
    pub fn sample_cfg<E: From<SamplingError>>(
        &self,
        x: Tensor,
        start: usize,
        noise: &mut SamplerNoise<'_>,
        model: &mut CfgModel<'_, E>,
        on_step: &mut OnStep<'_, E>,
    ) -> Result<Tensor, E> {
        if self.kind.is_kdiffusion_extra() {
            return run(self, x, start, noise, model, on_step);
        }
        self.sample(
            x,
            start,
            noise,
            &mut |x, s, t| Ok(model(x, s, t)?.denoised),
            on_step,
        )
    }
}

/// Runs one of this module's samplers from step `start` (the caller checked `start`).
pub(super) fn run<E: From<SamplingError>>(
    plan: &Sampler,
    x: Tensor,
    start: usize,
    noise: &mut SamplerNoise<'_>,
    model: &mut CfgModel<'_, E>,
    on_step: &mut OnStep<'_, E>,
) -> Result<Tensor, E> {
    plan.start_sigma(start)?;
    let x = f32_of(&x)?;
    let mut run = Run {
        plan,
        model,
        calls: 0,
    };
    match plan.kind {
        SamplerKind::DpmPp2sAncestral => run.dpmpp_2s_ancestral(x, start, noise, on_step),
        SamplerKind::DpmFast => run.dpm_fast(x, start, noise, on_step),
        SamplerKind::DpmAdaptive => run.dpm_adaptive(x, start, noise, on_step),
        SamplerKind::Restart => run.restart(x, start, noise, on_step),
        SamplerKind::DdimCfgPp => run.ddim_cfgpp(x, start, on_step),
        other => Err(SamplingError::Unsupported(format!(
            "{} is not a k-diffusion extra sampler",
            other.name()
        ))
        .into()),
    }
}

/// k-diffusion `sample_dpm_adaptive` defaults (order 3).
const ADAPTIVE_RTOL: f64 = 0.05;
const ADAPTIVE_ATOL: f64 = 0.0078;
const ADAPTIVE_H_INIT: f64 = 0.05;
const ADAPTIVE_PCOEFF: f64 = 0.0;
const ADAPTIVE_ICOEFF: f64 = 1.0;
const ADAPTIVE_DCOEFF: f64 = 0.0;
const ADAPTIVE_ACCEPT_SAFETY: f64 = 0.81;
/// The controller's order with η > 0 (k-diffusion uses 1.5 for ancestral runs).
const ADAPTIVE_ORDER_ETA: f64 = 1.5;
/// A bound on DPM adaptive's attempts, so that a diverging run ends with an error.
const ADAPTIVE_MAX_ATTEMPTS: usize = 10_000;

/// A1111's Restart: the σ around which the restart segment starts, the σ it jumps back to.
const RESTART_AT: f32 = 0.1;
const RESTART_MAX: f32 = 2.0;

/// σ(t) = e^(−t) in float32 (DPM-Solver's time variable t = −ln σ).
fn sigma_of(t: f64) -> f32 {
    (-t).exp() as f32
}

/// A run in progress: the plan, the model and the number of model calls so far.
struct Run<'p, 'm, 'c, E> {
    plan: &'p Sampler,
    model: &'m mut CfgModel<'c, E>,
    calls: usize,
}

impl<E: From<SamplingError>> Run<'_, '_, '_, E> {
    /// The guided data prediction at `x`, σ, with the UNet timestep of σ.
    fn denoised(&mut self, x: &Tensor, sigma: f32) -> Result<Tensor, E> {
        self.denoised_at(x, sigma, self.plan.timestep_for(sigma))
    }

    /// The guided data prediction at `x`, σ, with UNet timestep `t`.
    fn denoised_at(&mut self, x: &Tensor, sigma: f32, t: f64) -> Result<Tensor, E> {
        self.calls += 1;
        Ok((self.model)(x, sigma, t)?.denoised)
    }

    /// The UNet timestep of σ: the schedule's own where σ is one of its σs (so that Restart
    /// below 20 steps is exactly Heun), else the fractional one.
    fn schedule_timestep(&self, sigma: f32) -> f64 {
        self.plan
            .sigmas
            .iter()
            .zip(&self.plan.timesteps)
            .find(|(s, _)| **s == sigma)
            .map_or_else(|| self.plan.timestep_for(sigma), |(_, t)| *t)
    }

    /// DPM-Solver's noise prediction `(x − D)/σ` at time t.
    fn eps(&mut self, x: &Tensor, t: f64) -> Result<Tensor, E> {
        let sigma = sigma_of(t);
        let d = self.denoised(x, sigma)?;
        Ok(slope(x, &d, sigma)?)
    }

    /// k-diffusion `sample_dpmpp_2s_ancestral` (η 1): a DPM-Solver++(2S) step to σ_down
    /// with its second model call at the geometric mean of σ and σ_down, then σ_up of fresh
    /// noise (none on the last step).
    fn dpmpp_2s_ancestral(
        &mut self,
        mut x: Tensor,
        start: usize,
        noise: &mut SamplerNoise<'_>,
        on_step: &mut OnStep<'_, E>,
    ) -> Result<Tensor, E> {
        let s = &self.plan.sigmas[start..];
        let ts = &self.plan.timesteps[start..];
        let n = ts.len();
        for i in 0..n {
            let (sigma, sigma_next) = (s[i], s[i + 1]);
            self.calls += 1;
            let d = (self.model)(&x, sigma, ts[i])?.denoised;
            let (down, up) = ancestral(sigma, sigma_next);
            x = if down == 0.0 {
                euler(&x, &d, sigma, down)?
            } else {
                let mid = (((sigma as f64).ln() + (down as f64).ln()) * 0.5).exp() as f32;
                let x2 = exp_step(&x, &d, sigma, mid)?;
                let d2 = self.denoised(&x2, mid)?;
                exp_step(&x, &d2, sigma, down)?
            };
            if sigma_next > 0.0 {
                let z = noise.gaussian()?;
                x = add_scaled(&x, &z, up)?;
            }
            on_step(StepInfo {
                step: i + 1,
                steps: n,
                x: &x,
                sigma: sigma_next,
            })?;
        }
        Ok(x)
    }

    /// The range DPM fast/adaptive integrate over, in t = −ln σ, and the number of schedule
    /// steps: as A1111 calls them, the model's whole σ range for a run from the start
    /// (txt2img: the schedule only sets the initial noise), and from the run's first σ to its
    /// last positive one for a later start (img2img, hires).
    fn ode_range(&self, start: usize) -> Result<(f64, f64, usize), SamplingError> {
        let n = self.plan.timesteps.len() - start;
        let logs = &self.plan.log_sigmas;
        if let (0, Some(lo), Some(hi)) = (start, logs.first(), logs.last()) {
            return Ok((-(*hi as f64), -(*lo as f64), n));
        }
        let s = &self.plan.sigmas[start..];
        let sigma_min = s
            .iter()
            .copied()
            .filter(|&v| v > 0.0)
            .fold(f32::INFINITY, f32::min);
        let sigma_max = s[0];
        if !(sigma_min.is_finite() && sigma_max > 0.0) {
            return Err(SamplingError::Unsupported(format!(
                "{} needs positive σs to integrate between",
                self.plan.kind.name()
            )));
        }
        Ok((-(sigma_max as f64).ln(), -(sigma_min as f64).ln(), n))
    }

    /// k-diffusion `sample_dpm_fast` (DPM-Solver-fast, η 1 as A1111 calls it): `nfe` model
    /// calls spread over ⌊nfe/3⌋ + 1 equal steps in t = −ln σ, third order but for the last one
    /// or two steps, which use up what remains.
    fn dpm_fast(
        &mut self,
        mut x: Tensor,
        start: usize,
        noise: &mut SamplerNoise<'_>,
        on_step: &mut OnStep<'_, E>,
    ) -> Result<Tensor, E> {
        let (t_start, t_end, nfe) = self.ode_range(start)?;
        let m = nfe / 3 + 1;
        let ts: Vec<f64> = (0..=m)
            .map(|k| t_start + (t_end - t_start) * k as f64 / m as f64)
            .collect();
        let mut orders = Vec::with_capacity(m);
        if nfe % 3 == 0 {
            orders.extend(std::iter::repeat_n(3, m - 2));
            orders.extend([2, 1]);
        } else {
            orders.extend(std::iter::repeat_n(3, m - 1));
            orders.push(nfe % 3);
        }
        for (i, &order) in orders.iter().enumerate() {
            let (t, t_next) = (ts[i], ts[i + 1]);
            let (t_to, su) = ancestral_target(t, t_next, t_end);
            let eps = self.eps(&x, t)?;
            x = match order {
                1 => dpm_first(&x, &eps, t_to - t, sigma_of(t_to))?,
                2 => {
                    let (_, e1) = self.dpm_stage1(&x, &eps, t, t_to - t, 0.5)?;
                    dpm_second(&x, &eps, &e1, t_to - t, sigma_of(t_to), 0.5)?
                }
                _ => {
                    let (_, x3) = self.dpm_third_pair(&x, &eps, t, t_to)?;
                    x3
                }
            };
            let z = noise.gaussian()?;
            x = add_scaled(&x, &z, su)?;
            let calls = self.calls;
            on_step(StepInfo {
                step: calls,
                steps: nfe.max(calls),
                x: &x,
                sigma: sigma_of(t_next),
            })?;
        }
        Ok(x)
    }

    /// k-diffusion `sample_dpm_adaptive` (DPM-Solver-23 with a PID step-size controller,
    /// k-diffusion's default tolerances, η 1 as A1111 calls it). Each attempt costs three
    /// model calls whether or not it is accepted, so the number of calls follows the
    /// tolerances, not the step count. The error norm is over the whole batch, as
    /// k-diffusion computes it, so images of one batch share their step sizes.
    fn dpm_adaptive(
        &mut self,
        mut x: Tensor,
        start: usize,
        noise: &mut SamplerNoise<'_>,
        on_step: &mut OnStep<'_, E>,
    ) -> Result<Tensor, E> {
        let (t_start, t_end, n) = self.ode_range(start)?;
        let mut pid = Pid::new(ADAPTIVE_H_INIT, ADAPTIVE_ORDER_ETA);
        let mut s = t_start;
        let mut x_prev = x.clone();
        let mut attempts = 0;
        while s < t_end - 1e-5 {
            attempts += 1;
            if attempts > ADAPTIVE_MAX_ATTEMPTS {
                return Err(SamplingError::Unsupported(format!(
                    "dpm_adaptive did not reach σ_min in {ADAPTIVE_MAX_ATTEMPTS} steps"
                ))
                .into());
            }
            let t = t_end.min(s + pid.h);
            let (t_to, su) = ancestral_target(s, t, t_end);
            let eps = self.eps(&x, s)?;
            let (x_low, x_high) = self.dpm_third_pair(&x, &eps, s, t_to)?;
            let error = adaptive_error(&x_low, &x_high, &x_prev)?;
            if !error.is_finite() {
                return Err(SamplingError::Unsupported(
                    "dpm_adaptive: the step error is not finite".into(),
                )
                .into());
            }
            if pid.propose(error) {
                x_prev = x_low;
                let z = noise.gaussian()?;
                x = add_scaled(&x_high, &z, su)?;
                s = t;
                let calls = self.calls;
                on_step(StepInfo {
                    step: calls,
                    steps: n.max(calls),
                    x: &x,
                    sigma: sigma_of(s),
                })?;
            }
        }
        Ok(x)
    }

    /// DPM-Solver's first intermediate point at `t + r1·h` and the noise prediction there.
    fn dpm_stage1(
        &mut self,
        x: &Tensor,
        eps: &Tensor,
        t: f64,
        h: f64,
        r1: f64,
    ) -> Result<(f64, Tensor), E> {
        let s1 = t + r1 * h;
        let u1 = dpm_first(x, eps, r1 * h, sigma_of(s1))?;
        Ok((s1, self.eps(&u1, s1)?))
    }

    /// The embedded pair of DPM adaptive from t to `t_next` (three model calls, the first at
    /// `x` given as `eps`): DPM-Solver-2 with r₁ = 1/3 (the lower order) and DPM-Solver-3 with
    /// r₁ = 1/3, r₂ = 2/3, sharing the evaluation at `t + h/3`. DPM fast uses the second.
    fn dpm_third_pair(
        &mut self,
        x: &Tensor,
        eps: &Tensor,
        t: f64,
        t_next: f64,
    ) -> Result<(Tensor, Tensor), E> {
        let (r1, r2) = (1.0 / 3.0, 2.0 / 3.0);
        let h = t_next - t;
        let sigma_next = sigma_of(t_next);
        let (_, e1) = self.dpm_stage1(x, eps, t, h, r1)?;
        let low = dpm_second(x, eps, &e1, h, sigma_next, r1)?;
        let s2 = t + r2 * h;
        let sigma_s2 = sigma_of(s2);
        let rh = r2 * h;
        let u2 = dpm_first(x, eps, rh, sigma_s2)?;
        let diff = (&e1 - eps).map_err(SamplingError::from)?;
        let c = sigma_s2 as f64 * (r2 / r1) * (rh.exp_m1() / rh - 1.0);
        let u2 = add_scaled(&u2, &diff, -c as f32)?;
        let e2 = self.eps(&u2, s2)?;
        let high = dpm_first(x, eps, h, sigma_next)?;
        let diff = (&e2 - eps).map_err(SamplingError::from)?;
        let c = sigma_next as f64 / r2 * (h.exp_m1() / h - 1.0);
        let high = add_scaled(&high, &diff, -c as f32)?;
        Ok((low, high))
    }

    /// A1111's `restart_sampler`: Heun steps; with 20 or more steps the schedule is replaced
    /// by a Karras one with 9 (or, from 36 steps, 2 × steps/4) steps fewer, and after the step
    /// that reaches the σ nearest 0.1 the run jumps back to the σ nearest 2 (adding the noise
    /// that takes it there) and walks down again on a Karras segment, once (twice from 36).
    fn restart(
        &mut self,
        mut x: Tensor,
        start: usize,
        noise: &mut SamplerNoise<'_>,
        on_step: &mut OnStep<'_, E>,
    ) -> Result<Tensor, E> {
        let pairs = restart_steps(&self.plan.sigmas[start..]);
        let total = pairs.len();
        let mut last: Option<f32> = None;
        for (k, &(old, new)) in pairs.iter().enumerate() {
            match last {
                Some(l) if l < old => {
                    let z = noise.gaussian()?;
                    let amp = ((old as f64).powi(2) - (l as f64).powi(2)).sqrt();
                    x = add_scaled(&x, &z, amp as f32)?;
                }
                _ => {}
            }
            let d = self.denoised_at(&x, old, self.schedule_timestep(old))?;
            x = if new == 0.0 {
                euler(&x, &d, old, new)?
            } else {
                let dt = new - old;
                let deriv = slope(&x, &d, old)?;
                let x2 = add_scaled(&x, &deriv, dt)?;
                let d2 = self.denoised_at(&x2, new, self.schedule_timestep(new))?;
                let deriv2 = slope(&x2, &d2, new)?;
                add_scaled(&x, &lin(&deriv, 0.5, &deriv2, 0.5)?, dt)?
            };
            last = Some(new);
            on_step(StepInfo {
                step: k + 1,
                steps: total,
                x: &x,
                sigma: new,
            })?;
        }
        Ok(x)
    }

    /// A1111's `ddim_cfgpp` (η 0): DDIM's step, but the direction back to the next noise level
    /// is the *unconditional* noise prediction, `x_next = D_guided + σ_next·(x − D_uncond)/σ`.
    /// The guidance scale itself is divided by 12.5 by the caller
    /// ([`SamplerKind::guidance_multiplier`]). Without an unconditional prediction (no CFG)
    /// it is plain DDIM. On the checkpoint's diffusers spacing it lands where A1111's (and
    /// diffusers') DDIM does, ᾱ_0 included.
    fn ddim_cfgpp(
        &mut self,
        mut x: Tensor,
        start: usize,
        on_step: &mut OnStep<'_, E>,
    ) -> Result<Tensor, E> {
        let s = &self.plan.sigmas[start..];
        let ts = &self.plan.timesteps[start..];
        let n = ts.len();
        for i in 0..n {
            let (sigma, sigma_next) = (s[i], s[i + 1]);
            self.calls += 1;
            let p = (self.model)(&x, sigma, ts[i])?;
            let uncond = p.uncond.as_ref().unwrap_or(&p.denoised);
            let to = match &self.plan.ddim_targets {
                Some(targets) => targets[start + i],
                None => sigma_next,
            };
            let renoise = slope(&x, uncond, sigma)?;
            let landed = add_scaled(&p.denoised, &renoise, to)?;
            x = self.plan.ddim_reread(landed, to, sigma_next, i + 1 == n)?;
            on_step(StepInfo {
                step: i + 1,
                steps: n,
                x: &x,
                sigma: sigma_next,
            })?;
        }
        Ok(self.plan.ddim_finish(x, s[n])?)
    }
}

impl Sampler {
    /// DDIM's latents after a step that landed at σ `to`: under diffusers' DDIM spacing the
    /// same VP latents read at the next step's σ (which can differ from `to`), else as they are.
    pub(super) fn ddim_reread(
        &self,
        landed: Tensor,
        to: f32,
        sigma_next: f32,
        last: bool,
    ) -> Result<Tensor, SamplingError> {
        if self.ddim_targets.is_none() || last || to == sigma_next {
            return Ok(landed);
        }
        let f = ((sigma_next as f64).powi(2) + 1.0).sqrt() / ((to as f64).powi(2) + 1.0).sqrt();
        super::scaled(&landed, f as f32)
    }

    /// The result of a DDIM run ending at σ `last`: diffusers' DDIM returns its VP-form
    /// latents, which at ᾱ_0 are not at σ = 0.
    pub(super) fn ddim_finish(&self, x: Tensor, last: f32) -> Result<Tensor, SamplingError> {
        if self.ddim_targets.is_none() {
            return Ok(x);
        }
        super::scaled(&x, 1.0 / (last * last + 1.0).sqrt())
    }
}

/// DPM-Solver-1 from t over `h` to σ_next: `x − σ_next·expm1(h)·ε`.
fn dpm_first(x: &Tensor, eps: &Tensor, h: f64, sigma_next: f32) -> Result<Tensor, SamplingError> {
    add_scaled(x, eps, (-(sigma_next as f64) * h.exp_m1()) as f32)
}

/// DPM-Solver-2 with its intermediate prediction `e1` at `t + r1·h`.
fn dpm_second(
    x: &Tensor,
    eps: &Tensor,
    e1: &Tensor,
    h: f64,
    sigma_next: f32,
    r1: f64,
) -> Result<Tensor, SamplingError> {
    let base = dpm_first(x, eps, h, sigma_next)?;
    let diff = (e1 - eps)?;
    let c = sigma_next as f64 / (2.0 * r1) * h.exp_m1();
    add_scaled(&base, &diff, -c as f32)
}

/// Where an ancestral (η 1) DPM-Solver step from t towards `t_next` really goes, and the
/// noise it adds: σ_down of the step (never past `t_end`) and `sqrt(σ(t_next)² − σ(to)²)`.
fn ancestral_target(t: f64, t_next: f64, t_end: f64) -> (f64, f32) {
    let (down, _) = ancestral(sigma_of(t), sigma_of(t_next));
    let to = t_end.min(-(down as f64).ln());
    let (a, b) = (sigma_of(t_next) as f64, sigma_of(to) as f64);
    (to, (a * a - b * b).max(0.0).sqrt() as f32)
}

/// k-diffusion's adaptive error: `‖(x_low − x_high)/δ‖₂ / sqrt(numel)` with
/// `δ = max(atol, rtol·max(|x_low|, |x_prev|))`, over the whole batch.
fn adaptive_error(x_low: &Tensor, x_high: &Tensor, x_prev: &Tensor) -> Result<f64, SamplingError> {
    let low = x_low.flatten_all()?.to_vec1::<f32>()?;
    let high = x_high.flatten_all()?.to_vec1::<f32>()?;
    let prev = x_prev.flatten_all()?.to_vec1::<f32>()?;
    let mut sum = 0f64;
    for ((l, h), p) in low.iter().zip(&high).zip(&prev) {
        let delta = ADAPTIVE_ATOL.max(ADAPTIVE_RTOL * (l.abs().max(p.abs()) as f64));
        let e = (*l as f64 - *h as f64) / delta;
        sum += e * e;
    }
    Ok(sum.sqrt() / (low.len().max(1) as f64).sqrt())
}

/// k-diffusion's `PIDStepSizeController` with DPM adaptive's coefficients.
struct Pid {
    h: f64,
    b: [f64; 3],
    errs: Option<[f64; 3]>,
}

impl Pid {
    fn new(h: f64, order: f64) -> Self {
        let (p, i, d) = (ADAPTIVE_PCOEFF, ADAPTIVE_ICOEFF, ADAPTIVE_DCOEFF);
        Self {
            h,
            b: [(p + i + d) / order, -(p + 2.0 * d) / order, d / order],
            errs: None,
        }
    }

    /// Scales h by the controller's factor (limited by `1 + atan(f − 1)`); whether the step
    /// with this error is accepted.
    fn propose(&mut self, error: f64) -> bool {
        let inv = 1.0 / (error + 1e-8);
        let errs = self.errs.get_or_insert([inv; 3]);
        errs[0] = inv;
        let factor = errs[0].powf(self.b[0]) * errs[1].powf(self.b[1]) * errs[2].powf(self.b[2]);
        let factor = 1.0 + (factor - 1.0).atan();
        let accept = factor >= ADAPTIVE_ACCEPT_SAFETY;
        if accept {
            errs[2] = errs[1];
            errs[1] = errs[0];
        }
        self.h *= factor;
        accept
    }
}

/// The (σ, σ_next) pairs A1111's Restart walks for the schedule `sigmas` (ending in 0).
pub fn restart_steps(sigmas: &[f32]) -> Vec<(f32, f32)> {
    let steps = sigmas.len().saturating_sub(1);
    let mut sig = sigmas.to_vec();
    let mut restart: Option<(usize, usize)> = None;
    if steps >= 20 {
        let (segment, times) = if steps >= 36 { (steps / 4, 2) } else { (9, 1) };
        let lo = sigmas[sigmas.len() - 2] as f64;
        sig = karras_sigmas(lo, sigmas[0] as f64, steps - segment * times)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        sig.push(0.0);
        restart = Some((segment + 1, times));
    }
    let nearest = |target: f32| -> usize {
        let mut best = 0;
        for (k, v) in sig.iter().enumerate() {
            if (v - target).abs() < (sig[best] - target).abs() {
                best = k;
            }
        }
        best
    };
    let min_idx = nearest(RESTART_AT);
    let max_idx = nearest(RESTART_MAX);
    let mut pairs = Vec::new();
    for i in 0..sig.len().saturating_sub(1) {
        pairs.push((sig[i], sig[i + 1]));
        if let Some((points, times)) = restart {
            if i + 1 == min_idx && max_idx < min_idx {
                let seg: Vec<f32> = karras_sigmas(sig[min_idx] as f64, sig[max_idx] as f64, points)
                    .into_iter()
                    .map(|v| v as f32)
                    .collect();
                for _ in 0..times {
                    pairs.extend(seg.windows(2).map(|w| (w[0], w[1])));
                }
            }
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A1111 keeps plain Heun below 20 steps; at 20 it walks 11 Karras steps, then 9 restart
    /// steps from the σ nearest 2 back down to the σ nearest 0.1; at 40, 20 + 2 × 10.
    #[test]
    fn restart_plan_follows_a1111() {
        let sched = |n: usize| {
            let mut s: Vec<f32> = karras_sigmas(0.0291675, 14.614642, n)
                .into_iter()
                .map(|v| v as f32)
                .collect();
            s.push(0.0);
            s
        };
        let s10 = sched(10);
        let p = restart_steps(&s10);
        assert_eq!(p.len(), 10);
        assert!(p
            .iter()
            .zip(s10.windows(2))
            .all(|(a, w)| a.0 == w[0] && a.1 == w[1]));
        let p = restart_steps(&sched(20));
        assert_eq!(p.len(), 11 + 9);
        let ups: Vec<usize> = (1..p.len()).filter(|&k| p[k].0 > p[k - 1].1).collect();
        assert_eq!(ups.len(), 1);
        let p = restart_steps(&sched(40));
        assert_eq!(p.len(), 20 + 2 * 10);
        let ups = (1..p.len()).filter(|&k| p[k].0 > p[k - 1].1).count();
        assert_eq!(ups, 2);
    }

    /// With an error of exactly 1 the controller keeps h and accepts; a large error shrinks h
    /// and rejects.
    #[test]
    fn pid_controller_accepts_and_rejects() {
        let mut pid = Pid::new(0.05, ADAPTIVE_ORDER_ETA);
        assert!(pid.propose(1.0 - 1e-8));
        assert!((pid.h - 0.05).abs() < 1e-12);
        assert!(!pid.propose(100.0));
        assert!(pid.h < 0.05);
    }
}
