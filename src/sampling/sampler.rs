//! The samplers users pick by name, each reproducing one diffusers scheduler exactly:
//!
//! | kind | diffusers class (on the pipeline's scheduler config) |
//! |---|---|
//! | `euler` | `EulerDiscreteScheduler` |
//! | `euler_a` | `EulerAncestralDiscreteScheduler` |
//! | `dpmpp_2m` | `DPMSolverMultistepScheduler` (dpmsolver++, order 2, midpoint, lower_order_final, final σ 0) |
//! | `ddim` | `DDIMScheduler` (η 0, `set_alpha_to_one` false) |
//!
//! All latent math is float32 candle tensor arithmetic on the latents' own device; the
//! per-step scalars (σ, α, h …) are computed on the host in float32 with diffusers' operation
//! order (they are 0-d float32 tensors there), so no latents ever travel to the host.

use candle_core::{DType, Tensor};

use super::rng::{randn_batch, TorchRng};
use super::schedule::{
    check_steps, interp_table, karras_sigmas, sigma_to_t, PredictionType, ScheduleConfig,
    SigmaSchedule, TimestepSpacing,
};
use super::SamplingError;

/// Which update rule runs between UNet calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    Euler,
    EulerAncestral,
    /// DPM++ 2M (multistep, second order); usually combined with [`SigmaSchedule::Karras`].
    DpmPp2m,
    Ddim,
}

/// Accepted sampler names, for error messages and docs.
pub const SAMPLER_NAMES: &str =
    "euler, euler_a, dpmpp_2m, ddim (optionally with the schedule as a suffix: euler_karras, dpmpp_2m_karras)";

impl SamplerKind {
    /// Parses a bare sampler name (`euler`, `euler_a`, `dpmpp_2m`, `ddim`; a few common
    /// spellings such as `euler_ancestral` and `dpm++_2m` too).
    pub fn parse(name: &str) -> Result<Self, SamplingError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "euler" => Ok(Self::Euler),
            "euler_a" | "euler_ancestral" => Ok(Self::EulerAncestral),
            "dpmpp_2m" | "dpm++_2m" | "dpmpp2m" => Ok(Self::DpmPp2m),
            "ddim" => Ok(Self::Ddim),
            _ => Err(SamplingError::UnknownName {
                field: "sampler",
                value: name.to_string(),
                allowed: SAMPLER_NAMES,
            }),
        }
    }

    /// Parses `name` that may carry the schedule as a `_karras` suffix
    /// (`dpmpp_2m_karras` → DPM++ 2M with Karras σs), as the fixtures and most UIs name them.
    pub fn parse_with_schedule(name: &str) -> Result<(Self, SigmaSchedule), SamplingError> {
        let lower = name.trim().to_ascii_lowercase();
        if let Some(base) = lower.strip_suffix("_karras") {
            if let Ok(kind) = Self::parse(base) {
                return Ok((kind, SigmaSchedule::Karras));
            }
        }
        Self::parse(&lower)
            .map(|k| (k, SigmaSchedule::Default))
            .map_err(|_| SamplingError::UnknownName {
                field: "sampler",
                value: name.to_string(),
                allowed: SAMPLER_NAMES,
            })
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Euler => "euler",
            Self::EulerAncestral => "euler_a",
            Self::DpmPp2m => "dpmpp_2m",
            Self::Ddim => "ddim",
        }
    }

    /// Whether [`Sampler::step`] draws noise from the images' generators.
    pub fn is_ancestral(self) -> bool {
        matches!(self, Self::EulerAncestral)
    }
}

/// The per-kind schedule and state.
#[derive(Debug)]
enum State {
    /// Euler and Euler a: σ per step plus a final 0.
    Sigmas { sigmas: Vec<f32> },
    /// DPM++ 2M: σ per step plus the final 0, the previous data prediction and how many
    /// lower-order steps have run (diffusers `lower_order_nums`).
    Dpm {
        sigmas: Vec<f32>,
        prev_x0: Option<Tensor>,
        lower_order_nums: usize,
    },
    /// DDIM: ᾱ table, ᾱ used past t = 0, and the stride between timesteps.
    Ddim {
        alphas_cumprod: Vec<f32>,
        final_alpha_cumprod: f32,
        stride: i64,
    },
}

/// One sampling run: the schedule for `steps` steps and the sampler's state between steps.
/// Create one per request (it is cheap); `step` must be called with step indices in order.
#[derive(Debug)]
pub struct Sampler {
    kind: SamplerKind,
    prediction: PredictionType,
    timesteps: Vec<f64>,
    init_noise_sigma: f32,
    state: State,
    next_step: usize,
}

impl Sampler {
    /// Builds the schedule as diffusers' `set_timesteps(steps)` does for this kind on `cfg`.
    ///
    /// Karras σs are available for Euler and DPM++ 2M (diffusers has no Karras option for
    /// Euler a or DDIM, so those combinations are refused rather than silently approximated).
    pub fn new(
        kind: SamplerKind,
        schedule: SigmaSchedule,
        cfg: &ScheduleConfig,
        steps: usize,
    ) -> Result<Self, SamplingError> {
        check_steps(steps, cfg.num_train_timesteps)?;
        if schedule == SigmaSchedule::Karras
            && matches!(kind, SamplerKind::EulerAncestral | SamplerKind::Ddim)
        {
            return Err(SamplingError::Unsupported(format!(
                "sampler `{}` has no karras schedule; use euler, dpmpp_2m or the normal schedule",
                kind.name()
            )));
        }
        let (timesteps, init_noise_sigma, state) = match kind {
            SamplerKind::Euler | SamplerKind::EulerAncestral => {
                let (timesteps, sigmas) = euler_schedule(cfg, schedule, steps)?;
                let max = sigmas.iter().copied().fold(0f32, f32::max);
                let init = match cfg.timestep_spacing {
                    TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
                    TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
                };
                (timesteps, init, State::Sigmas { sigmas })
            }
            SamplerKind::DpmPp2m => {
                let (timesteps, sigmas) = dpm_schedule(cfg, schedule, steps)?;
                let state = State::Dpm {
                    sigmas,
                    prev_x0: None,
                    lower_order_nums: 0,
                };
                (timesteps, 1.0, state)
            }
            SamplerKind::Ddim => {
                let alphas_cumprod = cfg.alphas_cumprod_unpatched()?;
                let final_alpha_cumprod = alphas_cumprod[0];
                let timesteps = ddim_timesteps(cfg, steps)?;
                let state = State::Ddim {
                    alphas_cumprod,
                    final_alpha_cumprod,
                    stride: (cfg.num_train_timesteps / steps) as i64,
                };
                (timesteps, 1.0, state)
            }
        };
        Ok(Self {
            kind,
            prediction: cfg.prediction_type,
            timesteps,
            init_noise_sigma,
            state,
            next_step: 0,
        })
    }

    /// The sampler kind.
    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// Number of steps (UNet calls per image per CFG half).
    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// The timestep the UNet gets at each step (fractional for Euler with Karras σs).
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// σ per step plus the final one, where the sampler works in σ (not DDIM).
    pub fn sigmas(&self) -> Option<&[f32]> {
        match &self.state {
            State::Sigmas { sigmas } | State::Dpm { sigmas, .. } => Some(sigmas),
            State::Ddim { .. } => None,
        }
    }

    /// What the unit-variance initial noise is multiplied by (`scheduler.init_noise_sigma`).
    pub fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    /// `noise · init_noise_sigma`: the txt2img starting latents (float32).
    pub fn init_latents(&self, noise: &Tensor) -> Result<Tensor, SamplingError> {
        let noise = noise.to_dtype(DType::F32)?;
        if self.init_noise_sigma == 1.0 {
            return Ok(noise);
        }
        Ok(mul_scalar(&noise, self.init_noise_sigma)?)
    }

    /// The UNet input for step `step_index` (`scheduler.scale_model_input`): `x / sqrt(σ²+1)`
    /// for Euler and Euler a, `x` unchanged for DPM++ and DDIM.
    pub fn scale_model_input(
        &self,
        x: &Tensor,
        step_index: usize,
    ) -> Result<Tensor, SamplingError> {
        self.check_index(step_index)?;
        match &self.state {
            State::Sigmas { sigmas } => {
                let s = sigmas[step_index];
                Ok(div_scalar(x, (s * s + 1.0).sqrt())?)
            }
            State::Dpm { .. } | State::Ddim { .. } => Ok(x.clone()),
        }
    }

    /// One sampler step: from the guided model output at step `step_index` and the current
    /// latents `x` ([batch, C, H, W]) to the next latents (float32).
    ///
    /// `rngs` holds one generator per image of the batch (the generators that made the
    /// initial noise); only Euler a draws from them, one `[C, H, W]` draw per image per step,
    /// including the last step whose noise is scaled by σ_up = 0, as diffusers does. Other
    /// samplers accept an empty slice.
    pub fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        x: &Tensor,
        rngs: &mut [TorchRng],
    ) -> Result<Tensor, SamplingError> {
        self.check_index(step_index)?;
        if step_index != self.next_step && matches!(self.state, State::Dpm { .. }) {
            return Err(SamplingError::StepOutOfOrder {
                got: step_index,
                expected: self.next_step,
                steps: self.num_steps(),
            });
        }
        let out = model_output.to_dtype(DType::F32)?;
        let x = x.to_dtype(DType::F32)?;
        let n = self.num_steps();
        let prediction = self.prediction;
        let next = match &mut self.state {
            State::Sigmas { sigmas } => {
                let (s, s_next) = (sigmas[step_index], sigmas[step_index + 1]);
                let x0 = sigma_data_prediction(prediction, &out, &x, s)?;
                // derivative = (x − x0)/σ, then x + d·dt
                let d = div_scalar(&(&x - &x0)?, s)?;
                if self.kind == SamplerKind::EulerAncestral {
                    let up = ((s_next * s_next) * (s * s - s_next * s_next) / (s * s)).sqrt();
                    let down = (s_next * s_next - up * up).sqrt();
                    let prev = (&x + mul_scalar(&d, down - s)?)?;
                    let (batch, per_image) = x.dims().split_first().unwrap_or((&0, &[]));
                    if rngs.len() != *batch {
                        return Err(SamplingError::GeneratorCount {
                            got: rngs.len(),
                            batch: *batch,
                        });
                    }
                    let noise = randn_batch(rngs, per_image, x.device())?;
                    (prev + mul_scalar(&noise, up)?)?
                } else {
                    (&x + mul_scalar(&d, s_next - s)?)?
                }
            }
            State::Dpm {
                sigmas,
                prev_x0,
                lower_order_nums,
            } => {
                let s0 = sigmas[step_index];
                let (alpha_s0, sigma_s0) = alpha_sigma(s0);
                let x0 = match prediction {
                    PredictionType::Epsilon => {
                        div_scalar(&(&x - mul_scalar(&out, sigma_s0)?)?, alpha_s0)?
                    }
                    PredictionType::VPrediction => {
                        (mul_scalar(&x, alpha_s0)? - mul_scalar(&out, sigma_s0)?)?
                    }
                };
                let (alpha_t, sigma_t) = alpha_sigma(sigmas[step_index + 1]);
                let lambda_t = alpha_t.ln() - sigma_t.ln();
                let lambda_s0 = alpha_s0.ln() - sigma_s0.ln();
                let h = lambda_t - lambda_s0;
                let coef_x = sigma_t / sigma_s0;
                let coef_d = alpha_t * ((-h).exp() - 1.0);
                // First order at the start and at the last step (final σ 0), else midpoint.
                let first_order = *lower_order_nums < 1 || step_index == n - 1;
                let base = (mul_scalar(&x, coef_x)? - mul_scalar(&x0, coef_d)?)?;
                let next = match (first_order, prev_x0.as_ref()) {
                    (false, Some(m1)) => {
                        let (alpha_s1, sigma_s1) = alpha_sigma(sigmas[step_index - 1]);
                        let lambda_s1 = alpha_s1.ln() - sigma_s1.ln();
                        let r0 = (lambda_s0 - lambda_s1) / h;
                        let d1 = mul_scalar(&(&x0 - m1)?, 1.0 / r0)?;
                        (base - mul_scalar(&d1, 0.5 * coef_d)?)?
                    }
                    _ => base,
                };
                *prev_x0 = Some(x0);
                if *lower_order_nums < 2 {
                    *lower_order_nums += 1;
                }
                next
            }
            State::Ddim {
                alphas_cumprod,
                final_alpha_cumprod,
                stride,
            } => {
                let t = self.timesteps[step_index] as i64;
                let prev_t = t - *stride;
                let a_t = table_at(alphas_cumprod, t)?;
                let a_prev = if prev_t >= 0 {
                    table_at(alphas_cumprod, prev_t)?
                } else {
                    *final_alpha_cumprod
                };
                let b_t = 1.0 - a_t;
                let (x0, eps) = match prediction {
                    PredictionType::Epsilon => {
                        let x0 = div_scalar(&(&x - mul_scalar(&out, b_t.sqrt())?)?, a_t.sqrt())?;
                        (x0, out.clone())
                    }
                    PredictionType::VPrediction => {
                        let x0 = (mul_scalar(&x, a_t.sqrt())? - mul_scalar(&out, b_t.sqrt())?)?;
                        let eps = (mul_scalar(&out, a_t.sqrt())? + mul_scalar(&x, b_t.sqrt())?)?;
                        (x0, eps)
                    }
                };
                let direction = mul_scalar(&eps, (1.0 - a_prev).sqrt())?;
                (mul_scalar(&x0, a_prev.sqrt())? + direction)?
            }
        };
        self.next_step = step_index + 1;
        Ok(next)
    }

    fn check_index(&self, step_index: usize) -> Result<(), SamplingError> {
        if step_index >= self.num_steps() {
            return Err(SamplingError::StepOutOfOrder {
                got: step_index,
                expected: self.next_step,
                steps: self.num_steps(),
            });
        }
        Ok(())
    }
}

/// Euler-family data prediction x0 from the model output at σ (diffusers' formulas).
fn sigma_data_prediction(
    prediction: PredictionType,
    out: &Tensor,
    x: &Tensor,
    s: f32,
) -> candle_core::Result<Tensor> {
    match prediction {
        PredictionType::Epsilon => x - mul_scalar(out, s)?,
        PredictionType::VPrediction => {
            let c_out = -s / (s * s + 1.0).sqrt();
            mul_scalar(out, c_out)? + div_scalar(x, s * s + 1.0)?
        }
    }
}

/// VP coefficients of σ: α_t = 1/sqrt(σ²+1), σ_t = σ·α_t (diffusers `_sigma_to_alpha_sigma_t`).
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

fn table_at(table: &[f32], t: i64) -> Result<f32, SamplingError> {
    usize::try_from(t)
        .ok()
        .and_then(|i| table.get(i).copied())
        .ok_or_else(|| {
            SamplingError::InvalidConfig(format!("timestep {t} outside the training table"))
        })
}

/// `x · s` elementwise in float32 (candle's affine is `x·mul + 0`, the same rounding).
fn mul_scalar(x: &Tensor, s: f32) -> candle_core::Result<Tensor> {
    x.affine(s as f64, 0.0)
}

/// `x / s` elementwise in float32: a true division (as torch does), not a multiplication by
/// the reciprocal, which would round differently.
fn div_scalar(x: &Tensor, s: f32) -> candle_core::Result<Tensor> {
    let s = Tensor::new(s, x.device())?;
    x.broadcast_div(&s)
}

/// Euler / Euler a: (timesteps, σs + final 0) as diffusers' `set_timesteps`.
fn euler_schedule(
    cfg: &ScheduleConfig,
    schedule: SigmaSchedule,
    steps: usize,
) -> Result<(Vec<f64>, Vec<f32>), SamplingError> {
    let train = cfg.train_sigmas()?;
    let spaced = cfg.spaced_timesteps(steps)?;
    // np.interp over the float32 table in float64; exact at integer timesteps.
    let sigmas_f64: Vec<f64> = spaced.iter().map(|&t| interp_table(t, &train)).collect();
    let (timesteps, sigmas_f64) = match schedule {
        SigmaSchedule::Default => {
            // The timesteps are float32 in diffusers.
            (
                spaced.iter().map(|&t| t as f32 as f64).collect(),
                sigmas_f64,
            )
        }
        SigmaSchedule::Karras => {
            // Euler passes its *spaced* σs, so the range is σ(first) … σ(last spaced t).
            let (max, min) = (sigmas_f64[0], sigmas_f64[sigmas_f64.len() - 1]);
            let karras = karras_sigmas(min, max, steps);
            let log_sigmas: Vec<f32> = train.iter().map(|s| s.ln()).collect();
            let ts = karras
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas) as f32 as f64)
                .collect();
            (ts, karras)
        }
    };
    let mut sigmas: Vec<f32> = sigmas_f64.iter().map(|&s| s as f32).collect();
    sigmas.push(0.0);
    Ok((timesteps, sigmas))
}

/// DPM-Solver multistep: (integer timesteps, σs + final 0).
fn dpm_schedule(
    cfg: &ScheduleConfig,
    schedule: SigmaSchedule,
    steps: usize,
) -> Result<(Vec<f64>, Vec<f32>), SamplingError> {
    let train = cfg.train_sigmas()?;
    let n_train = cfg.num_train_timesteps;
    let (timesteps, sigmas_f64): (Vec<f64>, Vec<f64>) = match schedule {
        SigmaSchedule::Karras => {
            // The full training range σ_max … σ_min (unlike Euler), timesteps rounded.
            let karras = karras_sigmas(train[0] as f64, train[n_train - 1] as f64, steps);
            let log_sigmas: Vec<f32> = train.iter().map(|s| s.ln()).collect();
            let ts = karras
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas).round_ties_even())
                .collect();
            (ts, karras)
        }
        SigmaSchedule::Default => {
            // DPM-Solver lays out N+1 points and drops the last (diffusers), except trailing.
            let ts: Vec<f64> = match cfg.timestep_spacing {
                TimestepSpacing::Leading => {
                    let ratio = n_train / (steps + 1);
                    (1..=steps)
                        .rev()
                        .map(|i| (i * ratio + cfg.steps_offset) as f64)
                        .collect()
                }
                TimestepSpacing::Linspace => {
                    let pts =
                        super::schedule::numpy_linspace_f64(0.0, (n_train - 1) as f64, steps + 1);
                    pts.iter()
                        .rev()
                        .take(steps)
                        .map(|t| t.round_ties_even())
                        .collect()
                }
                TimestepSpacing::Trailing => cfg.spaced_timesteps(steps)?,
            };
            let s = ts.iter().map(|&t| interp_table(t, &train)).collect();
            (ts, s)
        }
    };
    let mut sigmas: Vec<f32> = sigmas_f64.iter().map(|&s| s as f32).collect();
    sigmas.push(0.0);
    Ok((timesteps, sigmas))
}

/// DDIM integer timesteps (linspace is rounded, unlike Euler's).
fn ddim_timesteps(cfg: &ScheduleConfig, steps: usize) -> Result<Vec<f64>, SamplingError> {
    Ok(match cfg.timestep_spacing {
        TimestepSpacing::Linspace => cfg
            .spaced_timesteps(steps)?
            .into_iter()
            .map(|t| t.round_ties_even())
            .collect(),
        _ => cfg.spaced_timesteps(steps)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names() {
        assert_eq!(
            SamplerKind::parse("euler_a").unwrap(),
            SamplerKind::EulerAncestral
        );
        assert_eq!(
            SamplerKind::parse_with_schedule("dpmpp_2m_karras").unwrap(),
            (SamplerKind::DpmPp2m, SigmaSchedule::Karras)
        );
        assert_eq!(
            SamplerKind::parse_with_schedule("ddim").unwrap(),
            (SamplerKind::Ddim, SigmaSchedule::Default)
        );
        let err = SamplerKind::parse("heun").unwrap_err().to_string();
        assert!(err.contains("heun") && err.contains("euler_a"), "{err}");
    }

    #[test]
    fn karras_refused_where_diffusers_lacks_it() {
        let cfg = ScheduleConfig::sdxl();
        assert!(Sampler::new(SamplerKind::Ddim, SigmaSchedule::Karras, &cfg, 8).is_err());
        assert!(Sampler::new(SamplerKind::EulerAncestral, SigmaSchedule::Karras, &cfg, 8).is_err());
    }

    #[test]
    fn dpm_rejects_out_of_order_steps() {
        let cfg = ScheduleConfig::sdxl();
        let mut s = Sampler::new(SamplerKind::DpmPp2m, SigmaSchedule::Karras, &cfg, 4).unwrap();
        let x = Tensor::zeros((1, 4, 2, 2), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(s.step(&x, 1, &x, &mut []).is_err());
        assert!(s.step(&x, 0, &x, &mut []).is_ok());
        assert!(s.step(&x, 4, &x, &mut []).is_err());
    }

    #[test]
    fn euler_a_needs_one_generator_per_image() {
        let cfg = ScheduleConfig::sdxl();
        let mut s =
            Sampler::new(SamplerKind::EulerAncestral, SigmaSchedule::Default, &cfg, 4).unwrap();
        let x = Tensor::zeros((2, 4, 2, 2), DType::F32, &candle_core::Device::Cpu).unwrap();
        let mut rngs = vec![TorchRng::new(1)];
        assert!(matches!(
            s.step(&x, 0, &x, &mut rngs),
            Err(SamplingError::GeneratorCount { got: 1, batch: 2 })
        ));
    }

    /// v-prediction must give the same step as ε-prediction when v is the v of the same
    /// (x0, ε): checks the v formulas of every sampler without a v-pred reference.
    #[test]
    fn v_prediction_matches_epsilon() {
        let dev = candle_core::Device::Cpu;
        let mut rng = TorchRng::new(3);
        let x0 = rng.randn_tensor(&[1, 4, 4, 4], &dev).unwrap();
        let eps = rng.randn_tensor(&[1, 4, 4, 4], &dev).unwrap();
        for kind in [
            SamplerKind::Euler,
            SamplerKind::EulerAncestral,
            SamplerKind::DpmPp2m,
            SamplerKind::Ddim,
        ] {
            let eps_cfg = ScheduleConfig::sdxl();
            let v_cfg = ScheduleConfig {
                prediction_type: PredictionType::VPrediction,
                ..ScheduleConfig::sdxl()
            };
            let mut se = Sampler::new(kind, SigmaSchedule::Default, &eps_cfg, 6).unwrap();
            let mut sv = Sampler::new(kind, SigmaSchedule::Default, &v_cfg, 6).unwrap();
            // (a, s): x = a·x0 + s·ε in the sampler's own latent scaling.
            let (a, s) = match kind {
                SamplerKind::Ddim => {
                    let ac = eps_cfg.alphas_cumprod().unwrap()[se.timesteps()[0] as usize];
                    (ac.sqrt(), (1.0 - ac).sqrt())
                }
                SamplerKind::DpmPp2m => alpha_sigma(se.sigmas().unwrap()[0]),
                _ => (1.0, se.sigmas().unwrap()[0]),
            };
            // v = α_vp·ε − σ_vp·x0 with the VP coefficients of this noise level.
            let (alpha_vp, sigma_vp) = (a / (a * a + s * s).sqrt(), s / (a * a + s * s).sqrt());
            let x =
                (x0.affine(a as f64, 0.0).unwrap() + eps.affine(s as f64, 0.0).unwrap()).unwrap();
            let v = (eps.affine(alpha_vp as f64, 0.0).unwrap()
                - x0.affine(sigma_vp as f64, 0.0).unwrap())
            .unwrap();
            let mut r1 = vec![TorchRng::new(9)];
            let mut r2 = vec![TorchRng::new(9)];
            let ye = se.step(&eps, 0, &x, &mut r1).unwrap();
            let yv = sv.step(&v, 0, &x, &mut r2).unwrap();
            let diff = (ye - yv).unwrap().abs().unwrap().max_all().unwrap();
            let diff = diff.to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "{kind:?}: eps vs v step differ by {diff}");
        }
    }

    /// Zero-terminal-SNR v-pred with trailing spacing starts at σ = 4096 and stays finite.
    #[test]
    fn ztsnr_v_pred_runs_finite() {
        let dev = candle_core::Device::Cpu;
        let cfg = ScheduleConfig::sdxl_v_pred_ztsnr();
        for kind in [
            SamplerKind::Euler,
            SamplerKind::EulerAncestral,
            SamplerKind::DpmPp2m,
            SamplerKind::Ddim,
        ] {
            let mut s = Sampler::new(kind, SigmaSchedule::Default, &cfg, 5).unwrap();
            assert_eq!(s.timesteps()[0], 999.0);
            let mut rngs = vec![TorchRng::new(0)];
            let noise = rngs[0].randn_tensor(&[1, 4, 4, 4], &dev).unwrap();
            let mut x = s.init_latents(&noise).unwrap();
            for k in 0..s.num_steps() {
                let v = x.affine(0.01, 0.0).unwrap();
                x = s.step(&v, k, &x, &mut rngs).unwrap();
            }
            let m = x
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(m.is_finite(), "{kind:?}");
            if kind == SamplerKind::Euler {
                assert!((s.init_noise_sigma() - 4096.0).abs() < 1.0);
            }
        }
    }
}
