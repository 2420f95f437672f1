//! The discrete noise schedule of SD-family models (betas, ᾱ, σ) and the timestep / σ lists that
//! diffusers' schedulers derive from it for a given number of steps.
//!
//! Every number here is computed with the same float widths and operation order as diffusers
//! 0.42 on torch/numpy (float32 torch tensors, float64 numpy), because "same seed, same image"
//! is judged against diffusers and a schedule off in the last bits shifts every step.

use super::SamplingError;

/// How the 1000 training betas are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end)`.
    Linear,
    /// `linspace(sqrt(beta_start), sqrt(beta_end))²`: SD 1.x, 2.x and SDXL.
    ScaledLinear,
}

/// Where the sampled timesteps fall in the training range (diffusers `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// `arange(N) * (1000 // N)`, reversed, `+ steps_offset`: the SDXL base config.
    Leading,
    /// `round(arange(1000, 0, -1000/N)) - 1`: what zero-terminal-SNR (v-pred) models want.
    Trailing,
    /// `linspace(0, 999, N)`, reversed.
    Linspace,
}

impl TimestepSpacing {
    /// Parses diffusers' names (`leading`, `trailing`, `linspace`).
    pub fn parse(name: &str) -> Result<Self, SamplingError> {
        match name {
            "leading" => Ok(Self::Leading),
            "trailing" => Ok(Self::Trailing),
            "linspace" => Ok(Self::Linspace),
            other => Err(SamplingError::UnknownName {
                field: "timestep_spacing",
                value: other.to_string(),
                allowed: "leading, trailing, linspace",
            }),
        }
    }
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The added noise ε (SDXL base and most Civitai checkpoints).
    Epsilon,
    /// `v = α·ε − σ_t·x0` (NoobAI v-pred and other `v_pred` checkpoints).
    VPrediction,
}

/// How the σs of a run are laid out (the "Schedule type" of A1111, the `scheduler` of
/// ComfyUI, the `timestep_spacing`/`use_*_sigmas` options of diffusers).
///
/// Four groups with different rules (docs/sampling.md, *Schedules*):
/// * `Default`, `Leading`, `Trailing`, `Linspace`: diffusers' own spacing of the sampler's
///   diffusers class (`Default` = the checkpoint's scheduler config, `leading` for SDXL base,
///   `trailing` for zero-terminal-SNR v-pred), so these reproduce diffusers step for step.
/// * `Karras`, `Exponential`, `Beta`: σ formulas over the model's full σ range
///   σ(0)…σ(999), as k-diffusion/A1111 (and diffusers with a `linspace` Euler config).
/// * `Normal`, `SgmUniform`, `Simple`, `DdimUniform`: ComfyUI's definitions, timestep = the
///   nearest training index as ComfyUI feeds it.
/// * `Uniform`, `A1111Normal`, `A1111SgmUniform`, `A1111Simple`, `A1111Ddim`,
///   `Polyexponential`, `KlOptimal`, `AlignYourSteps` (appended at the end): A1111's own
///   definitions ([`SigmaSchedule::A1111`]), on A1111's σ table, run as k-diffusion runs them
///   (docs/sampling.md, *A1111 schedule types*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SigmaSchedule {
    /// The checkpoint's diffusers spacing (its scheduler config's `timestep_spacing`).
    #[default]
    Default,
    Normal,
    Karras,
    Exponential,
    SgmUniform,
    Simple,
    DdimUniform,
    Beta,
    Leading,
    Trailing,
    Linspace,
    /// A1111 "Uniform" (its "Automatic" for samplers without a preferred schedule):
    /// k-diffusion's `get_sigmas` of the discrete model, timesteps `linspace(999, 0, N)`.
    Uniform,
    /// A1111 "Normal": the same σs as [`Uniform`](Self::Uniform) (A1111 builds them from
    /// `t(σmax)`…`t(σmin)`, which are 999 and 0), kept apart so the label is echoed.
    A1111Normal,
    /// A1111 "SGM Uniform": `N + 1` timesteps from 999 to 0 without the last.
    A1111SgmUniform,
    /// A1111 "Simple": every (1000/N)-th training σ from the top.
    A1111Simple,
    /// A1111 "DDIM": every (1000//N)-th training σ from index 1, reversed.
    A1111Ddim,
    /// A1111 "Polyexponential" (k-diffusion `get_sigmas_polyexponential`, ρ = 1).
    Polyexponential,
    /// A1111 "KL Optimal": `N + 1` σs from σmax to σmin, no appended 0.
    KlOptimal,
    /// A1111 "Align Your Steps": NVIDIA's SDXL list, log-linearly resampled to N steps.
    AlignYourSteps,
}

/// Accepted schedule names, for error messages and docs.
pub const SCHEDULE_NAMES: &str = "default, normal, karras, exponential, sgm_uniform, simple, \
     ddim_uniform, beta, leading, trailing, linspace, uniform, a1111_normal, a1111_sgm_uniform, \
     a1111_simple, a1111_ddim, polyexponential, kl_optimal, align_your_steps";

impl SigmaSchedule {
    /// The diffusers, σ-formula and ComfyUI schedules, in the order of [`SCHEDULE_NAMES`];
    /// A1111's own definitions follow in [`A1111`](Self::A1111).
    pub const ALL: [SigmaSchedule; 11] = [
        Self::Default,
        Self::Normal,
        Self::Karras,
        Self::Exponential,
        Self::SgmUniform,
        Self::Simple,
        Self::DdimUniform,
        Self::Beta,
        Self::Leading,
        Self::Trailing,
        Self::Linspace,
    ];

    /// The schedules added for A1111's "Schedule type" (docs/sampling.md, *A1111 schedule
    /// types*), in the order of [`SCHEDULE_NAMES`] after [`ALL`](Self::ALL).
    pub const A1111: [SigmaSchedule; 8] = [
        Self::Uniform,
        Self::A1111Normal,
        Self::A1111SgmUniform,
        Self::A1111Simple,
        Self::A1111Ddim,
        Self::Polyexponential,
        Self::KlOptimal,
        Self::AlignYourSteps,
    ];

    /// Parses our names plus common spellings (A1111 labels such as "SGM Uniform",
    /// "Automatic"/empty for the default), case-insensitively. Where ComfyUI and A1111 share a
    /// name (`normal`, `simple`, `sgm_uniform`) this is ComfyUI's schedule; A1111 requests are
    /// read with [`parse_a1111`](Self::parse_a1111).
    pub fn parse(name: &str) -> Result<Self, SamplingError> {
        let key = name.trim().to_ascii_lowercase().replace([' ', '-'], "_");
        Ok(match key.as_str() {
            "" | "default" | "automatic" => Self::Default,
            "normal" => Self::Normal,
            "karras" => Self::Karras,
            "exponential" => Self::Exponential,
            "sgm_uniform" | "sgmuniform" => Self::SgmUniform,
            "simple" => Self::Simple,
            "ddim_uniform" | "ddim" => Self::DdimUniform,
            "beta" => Self::Beta,
            "leading" => Self::Leading,
            "trailing" => Self::Trailing,
            "linspace" => Self::Linspace,
            "uniform" => Self::Uniform,
            "a1111_normal" => Self::A1111Normal,
            "a1111_sgm_uniform" => Self::A1111SgmUniform,
            "a1111_simple" => Self::A1111Simple,
            "a1111_ddim" => Self::A1111Ddim,
            "polyexponential" => Self::Polyexponential,
            "kl_optimal" => Self::KlOptimal,
            "align_your_steps" => Self::AlignYourSteps,
            _ => {
                return Err(SamplingError::UnknownName {
                    field: "schedule",
                    value: name.to_string(),
                    allowed: SCHEDULE_NAMES,
                })
            }
        })
    }

    /// Our canonical name (what [`parse`](Self::parse) accepts).
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Normal => "normal",
            Self::Karras => "karras",
            Self::Exponential => "exponential",
            Self::SgmUniform => "sgm_uniform",
            Self::Simple => "simple",
            Self::DdimUniform => "ddim_uniform",
            Self::Beta => "beta",
            Self::Leading => "leading",
            Self::Trailing => "trailing",
            Self::Linspace => "linspace",
            Self::Uniform => "uniform",
            Self::A1111Normal => "a1111_normal",
            Self::A1111SgmUniform => "a1111_sgm_uniform",
            Self::A1111Simple => "a1111_simple",
            Self::A1111Ddim => "a1111_ddim",
            Self::Polyexponential => "polyexponential",
            Self::KlOptimal => "kl_optimal",
            Self::AlignYourSteps => "align_your_steps",
        }
    }

    /// The A1111 "Schedule type" label (infotext); diffusers-only spacings keep their name.
    pub fn label(self) -> &'static str {
        match self {
            Self::Default => "Automatic",
            Self::Normal => "Normal",
            Self::Karras => "Karras",
            Self::Exponential => "Exponential",
            Self::SgmUniform => "SGM Uniform",
            Self::Simple => "Simple",
            Self::DdimUniform => "DDIM",
            Self::Beta => "Beta",
            Self::Leading => "Leading",
            Self::Trailing => "Trailing",
            Self::Linspace => "Linspace",
            Self::Uniform => "Uniform",
            Self::A1111Normal => "Normal",
            Self::A1111SgmUniform => "SGM Uniform",
            Self::A1111Simple => "Simple",
            Self::A1111Ddim => "DDIM",
            Self::Polyexponential => "Polyexponential",
            Self::KlOptimal => "KL Optimal",
            Self::AlignYourSteps => "Align Your Steps",
        }
    }

    /// The diffusers spacing this schedule stands for, if it is one.
    pub fn spacing(self, cfg: &ScheduleConfig) -> Option<TimestepSpacing> {
        match self {
            Self::Default => Some(cfg.timestep_spacing),
            Self::Leading => Some(TimestepSpacing::Leading),
            Self::Trailing => Some(TimestepSpacing::Trailing),
            Self::Linspace => Some(TimestepSpacing::Linspace),
            _ => None,
        }
    }

    /// ComfyUI-defined schedules (nearest-index timesteps, ComfyUI's initial noise rule,
    /// the discard-penultimate rule of DPM2/DPM2 a/UniPC).
    pub fn is_comfy(self) -> bool {
        matches!(
            self,
            Self::Normal | Self::SgmUniform | Self::Simple | Self::DdimUniform
        )
    }

    /// The schedules defined by A1111 alone ([`A1111`](Self::A1111)): the sampler runs them
    /// as A1111's k-diffusion samplers do, with the noise scaled by σ_0 and fractional UNet
    /// timesteps for every sampler (no diffusers rounding).
    pub fn is_a1111(self) -> bool {
        Self::A1111.contains(&self)
    }

    /// Reads an A1111 `scheduler` value: the API name (`karras`, `sgm_uniform`,
    /// `align_your_steps`, …) or the "Schedule type" label (`SGM Uniform`, `Align Your Steps`,
    /// …), case-insensitively, always with A1111's meaning (so `normal` is
    /// [`A1111Normal`](Self::A1111Normal), not ComfyUI's). `Ok(None)` is "Automatic" (the
    /// sampler's own default); empty counts as Automatic.
    pub fn parse_a1111(name: &str) -> Result<Option<Self>, SamplingError> {
        let key = name.trim().to_ascii_lowercase();
        Ok(Some(match key.as_str() {
            "" | "automatic" => return Ok(None),
            "uniform" => Self::Uniform,
            "karras" => Self::Karras,
            "exponential" => Self::Exponential,
            "polyexponential" => Self::Polyexponential,
            "sgm_uniform" | "sgm uniform" | "sgmuniform" => Self::A1111SgmUniform,
            "kl_optimal" | "kl optimal" => Self::KlOptimal,
            "align_your_steps" | "align your steps" => Self::AlignYourSteps,
            "simple" => Self::A1111Simple,
            "normal" => Self::A1111Normal,
            "ddim" => Self::A1111Ddim,
            "beta" => Self::Beta,
            _ => {
                return Err(SamplingError::UnknownName {
                    field: "scheduler",
                    value: name.to_string(),
                    allowed: A1111_SCHEDULE_NAMES,
                })
            }
        }))
    }
}

/// A1111 1.10's schedule types as its API names them (labels are accepted too).
pub const A1111_SCHEDULE_NAMES: &str = "automatic, uniform, karras, exponential, \
     polyexponential, sgm_uniform, kl_optimal, align_your_steps, simple, normal, ddim, beta";

/// Serialised as its canonical [`name`](SigmaSchedule::name) (the echoed job request).
impl serde::Serialize for SigmaSchedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A diffusers scheduler configuration (the fields that change the numbers).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub prediction_type: PredictionType,
    /// diffusers `rescale_betas_zero_snr` (checkpoints marked `ztsnr`).
    pub rescale_zero_terminal_snr: bool,
}

impl ScheduleConfig {
    /// The SDXL base 1.0 scheduler config (`scheduler/scheduler_config.json`): scaled-linear
    /// 0.00085–0.012, `leading`, `steps_offset` 1, ε-prediction.
    pub fn sdxl() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 1,
            prediction_type: PredictionType::Epsilon,
            rescale_zero_terminal_snr: false,
        }
    }

    /// SDXL v-prediction with zero terminal SNR, as such checkpoints are usually run:
    /// `trailing` spacing so that the first step starts at t = 999 (σ = 4096).
    pub fn sdxl_v_pred_ztsnr() -> Self {
        Self {
            prediction_type: PredictionType::VPrediction,
            rescale_zero_terminal_snr: true,
            timestep_spacing: TimestepSpacing::Trailing,
            ..Self::sdxl()
        }
    }

    fn validate(&self) -> Result<(), SamplingError> {
        if self.num_train_timesteps < 2 {
            return Err(SamplingError::InvalidConfig(format!(
                "num_train_timesteps must be at least 2, got {}",
                self.num_train_timesteps
            )));
        }
        if !(self.beta_start > 0.0 && self.beta_end > 0.0 && self.beta_end < 1.0) {
            return Err(SamplingError::InvalidConfig(format!(
                "beta_start/beta_end must be in (0, 1), got {} / {}",
                self.beta_start, self.beta_end
            )));
        }
        Ok(())
    }

    /// The training betas, float32 (`torch.linspace(..., dtype=float32)`, squared for
    /// scaled-linear), zero-terminal-SNR rescaled when configured.
    pub fn betas(&self) -> Result<Vec<f32>, SamplingError> {
        self.validate()?;
        let betas = self.betas_by(torch_linspace_f32);
        Ok(if self.rescale_zero_terminal_snr {
            rescale_zero_terminal_snr(&betas)
        } else {
            betas
        })
    }

    /// The betas laid out with `linspace` (diffusers: torch float32; ldm: float64), squared
    /// for scaled-linear.
    fn betas_by<T: Copy + std::ops::Mul<Output = T>>(
        &self,
        linspace: fn(f64, f64, usize) -> Vec<T>,
    ) -> Vec<T> {
        let n = self.num_train_timesteps;
        match self.beta_schedule {
            BetaSchedule::Linear => linspace(self.beta_start, self.beta_end, n),
            BetaSchedule::ScaledLinear => linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
        }
    }

    /// The σ table A1111 samples on (its `sigma_min`/`sigma_max` are the first and last
    /// entries): the ldm/sgm discretization computes betas and ᾱ in float64, A1111 stores ᾱ as
    /// float32 and k-diffusion takes `((1 − ᾱ)/ᾱ)^½` in float32. It differs from
    /// [`train_sigmas`](Self::train_sigmas) by up to 9e-6 relative at small σ (3e-7 at the
    /// ends). Under zero terminal SNR this is `train_sigmas` (σ_max 4096).
    pub fn a1111_train_sigmas(&self) -> Result<Vec<f32>, SamplingError> {
        if self.rescale_zero_terminal_snr {
            return self.train_sigmas();
        }
        self.validate()?;
        let betas = self.betas_by(numpy_linspace_f64);
        let mut acc = 1f64;
        Ok(betas
            .iter()
            .map(|&b| {
                acc *= 1.0 - b;
                let a = acc as f32;
                ((1.0 - a) / a).sqrt()
            })
            .collect())
    }

    /// ᾱ_t = cumprod(1 − β) as float32 tensors give it (torch accumulates the product in
    /// double and rounds each entry). With zero terminal SNR the last entry is set to 2⁻²⁴,
    /// as diffusers' Euler and DPM-Solver schedulers do, so σ_max is finite (4096).
    pub fn alphas_cumprod(&self) -> Result<Vec<f32>, SamplingError> {
        let mut out = alphas_cumprod_raw(&self.betas()?);
        if self.rescale_zero_terminal_snr {
            if let Some(last) = out.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        Ok(out)
    }

    /// ᾱ without the 2⁻²⁴ patch (diffusers' DDIM keeps ᾱ_999 = 0 under zero terminal SNR).
    pub fn alphas_cumprod_unpatched(&self) -> Result<Vec<f32>, SamplingError> {
        Ok(alphas_cumprod_raw(&self.betas()?))
    }

    /// Training σ_t = sqrt((1 − ᾱ_t)/ᾱ_t), float32, ascending in t. IEEE sqrt: torch's CPU
    /// result is off by one ulp for a few t (its vectorised sqrt is not always correctly
    /// rounded), which moves the latents by ~1e-7 relative; not worth imitating.
    pub fn train_sigmas(&self) -> Result<Vec<f32>, SamplingError> {
        Ok(self
            .alphas_cumprod()?
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect())
    }

    /// Spaced timesteps for `steps` steps, descending, as float64 (diffusers computes them in
    /// numpy; Euler casts to float32, DDIM to int64 — both exact for these integer values).
    pub fn spaced_timesteps(&self, steps: usize) -> Result<Vec<f64>, SamplingError> {
        self.validate()?;
        check_steps(steps, self.num_train_timesteps)?;
        let n_train = self.num_train_timesteps;
        Ok(match self.timestep_spacing {
            TimestepSpacing::Leading => {
                let ratio = n_train / steps;
                (0..steps)
                    .rev()
                    .map(|i| (i * ratio + self.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = n_train as f64 / steps as f64;
                numpy_arange_f64(n_train as f64, 0.0, -ratio)
                    .into_iter()
                    .map(|t| t.round_ties_even() - 1.0)
                    .collect()
            }
            TimestepSpacing::Linspace => {
                let mut t = numpy_linspace_f64(0.0, (n_train - 1) as f64, steps);
                t.reverse();
                t
            }
        })
    }
}

/// Rejects step counts the schedulers cannot lay out.
pub(crate) fn check_steps(steps: usize, n_train: usize) -> Result<(), SamplingError> {
    if steps == 0 || steps > n_train {
        return Err(SamplingError::InvalidSteps {
            steps,
            max: n_train,
        });
    }
    Ok(())
}

/// `torch.linspace(start, end, n, dtype=float32)` on CPU: endpoints rounded to float32,
/// float32 step, the first half counted up from `start` and the second half down from `end`.
/// torch's x86-64 kernel is compiled with FMA contraction, so `start + step·i` is one fused
/// operation.
pub(crate) fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let start = start as f32;
    let end = end as f32;
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - i - 1) as f32, end)
            }
        })
        .collect()
}

/// cumprod(1 − β) with torch's double accumulator, each entry rounded to float32.
fn alphas_cumprod_raw(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1f64;
    betas
        .iter()
        .map(|&b| {
            acc *= (1.0 - b) as f64;
            acc as f32
        })
        .collect()
}

/// diffusers `rescale_zero_terminal_snr` (Lin et al. 2023, "Common Diffusion Noise Schedules
/// and Sample Steps are Flawed"): shift and scale sqrt(ᾱ) so the last one is exactly 0 while
/// the first is unchanged, then recover betas. float32 like the torch original.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut s: Vec<f32> = alphas_cumprod_raw(betas).iter().map(|a| a.sqrt()).collect();
    let (Some(&s0), Some(&s_t)) = (s.first(), s.last()) else {
        return betas.to_vec();
    };
    let scale = s0 / (s0 - s_t);
    for v in s.iter_mut() {
        *v -= s_t;
        *v *= scale;
    }
    let bar: Vec<f32> = s.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

/// `np.arange(start, stop, step)` for float64: numpy fills `start + i·delta` where `delta` is
/// recomputed as `(start + step) − start`.
fn numpy_arange_f64(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let mut out = Vec::with_capacity(len);
    out.push(start);
    if len > 1 {
        let second = start + step;
        let delta = second - start;
        out.push(second);
        for i in 2..len {
            out.push(start + i as f64 * delta);
        }
    }
    out
}

/// `np.linspace(start, stop, n)` (float64, endpoint included).
pub fn numpy_linspace_f64(start: f64, stop: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (n - 1) as f64;
            let mut out: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
            out[n - 1] = stop;
            out
        }
    }
}

/// `np.interp(x, arange(len(fp)), fp)` for `x` inside the table (float64).
pub(crate) fn interp_table(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    let (lo, hi) = (fp[j] as f64, fp[j + 1] as f64);
    let slope = hi - lo; // xp[j+1] - xp[j] = 1
    slope * (x - j as f64) + lo
}

/// diffusers `_convert_to_karras`: ρ = 7 between `sigma_min` and `sigma_max`, float64.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let min_inv = sigma_min.powf(1.0 / RHO);
    let max_inv = sigma_max.powf(1.0 / RHO);
    numpy_linspace_f64(0.0, 1.0, steps)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(RHO))
        .collect()
}

/// diffusers `_sigma_to_t`: the (fractional) training timestep whose log σ matches, by linear
/// interpolation of `log_sigmas` (float32 logs of the training σs, ascending).
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // Index of the last table entry not above log σ (0 if none), capped so `high` exists.
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let low = log_sigmas[low_idx];
    let high = log_sigmas[low_idx + 1];
    // numpy: float64 numerator over a float32 difference.
    let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * (low_idx + 1) as f64
}

/// diffusers `_convert_to_exponential` (and k-diffusion `get_sigmas_exponential`): σ evenly
/// spaced in log σ from `sigma_max` down to `sigma_min`, float64.
pub fn exponential_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    numpy_linspace_f64(sigma_max.ln(), sigma_min.ln(), steps)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// Shape parameters of the beta schedule (arXiv 2407.12173; A1111's and diffusers' default).
pub const BETA_SCHEDULE_ALPHA: f64 = 0.6;
/// See [`BETA_SCHEDULE_ALPHA`].
pub const BETA_SCHEDULE_BETA: f64 = 0.6;

/// diffusers `_convert_to_beta` = A1111 `beta_scheduler`: `σ_min + ppf(1 − i/(N−1))·(σ_max −
/// σ_min)` with the Beta(0.6, 0.6) quantile, i.e. linear in σ (ComfyUI's `beta` instead
/// spaces training indices; we follow A1111/diffusers).
pub fn beta_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    numpy_linspace_f64(0.0, 1.0, steps)
        .into_iter()
        .map(|x| {
            let ppf = beta_ppf(1.0 - x, BETA_SCHEDULE_ALPHA, BETA_SCHEDULE_BETA);
            sigma_min + ppf * (sigma_max - sigma_min)
        })
        .collect()
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection keeps the series in its accurate range.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..500 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function I_x(a, b).
fn beta_cdf(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(x, a, b) / a
    } else {
        1.0 - front * beta_cf(1.0 - x, b, a) / b
    }
}

/// The Beta(a, b) quantile (`scipy.stats.beta.ppf`) by bisection on the CDF to float64
/// resolution: the schedule needs ~1e-12, and bisection cannot diverge.
fn beta_ppf(q: f64, a: f64, b: f64) -> f64 {
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if beta_cdf(mid, a, b) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// ComfyUI `ModelSamplingDiscrete.sigma(t)`: log σ linearly interpolated between the
/// neighbouring training indices, in float32 as ComfyUI's tensors.
pub fn comfy_sigma(t: f32, log_sigmas: &[f32]) -> f32 {
    let last = (log_sigmas.len() - 1) as f32;
    let t = t.clamp(0.0, last);
    let low = t.floor();
    let w = t - low;
    let lo = log_sigmas[low as usize];
    let hi = log_sigmas[t.ceil() as usize];
    ((1.0 - w) * lo + w * hi).exp()
}

/// ComfyUI `ModelSamplingDiscrete.timestep(σ)`: the training index with the nearest log σ
/// (the first one on ties, as `argmin`).
pub fn nearest_index(sigma: f64, log_sigmas: &[f32]) -> usize {
    let ls = (sigma as f32).ln();
    let mut best = 0;
    let mut best_d = f32::INFINITY;
    for (i, &l) in log_sigmas.iter().enumerate() {
        let d = (ls - l).abs();
        if d < best_d {
            best_d = d;
            best = i;
        }
    }
    best
}

/// ComfyUI `normal` (`sgm = false`) and `sgm_uniform` (`sgm = true`): timesteps evenly spaced
/// from t(σ_max) to t(σ_min) (`torch.linspace`, float32), σ(t), then 0. `sgm_uniform` lays
/// out N+1 points and drops the last.
pub fn comfy_normal_sigmas(train: &[f32], steps: usize, sgm: bool) -> Vec<f32> {
    let logs: Vec<f32> = train.iter().map(|s| s.ln()).collect();
    let start = nearest_index(train[train.len() - 1] as f64, &logs) as f64;
    let end = nearest_index(train[0] as f64, &logs) as f64;
    let ts = if sgm {
        let mut t = torch_linspace_f32(start, end, steps + 1);
        t.pop();
        t
    } else {
        torch_linspace_f32(start, end, steps)
    };
    let mut out: Vec<f32> = ts.iter().map(|&t| comfy_sigma(t, &logs)).collect();
    out.push(0.0);
    out
}

/// ComfyUI `simple`: every (1000/N)-th training σ from the top, then 0.
pub fn comfy_simple_sigmas(train: &[f32], steps: usize) -> Vec<f32> {
    let ss = train.len() as f64 / steps as f64;
    let mut out: Vec<f32> = (0..steps)
        .map(|x| train[train.len() - 1 - (x as f64 * ss) as usize])
        .collect();
    out.push(0.0);
    out
}

/// ComfyUI `ddim_uniform`: training σs at indices 1, 1+k, 1+2k, … (k = 1000 // N) below
/// 1000, reversed, then 0. Like ComfyUI this can give one step more than asked (e.g. 8 for
/// N = 7, since 1 + 7·142 < 1000).
pub fn comfy_ddim_uniform_sigmas(train: &[f32], steps: usize) -> Vec<f32> {
    let ss = (train.len() / steps).max(1);
    let mut out: Vec<f32> = (1..train.len()).step_by(ss).map(|i| train[i]).collect();
    out.reverse();
    out.push(0.0);
    out
}

/// The σs of every schedule that is neither a diffusers spacing nor a ComfyUI schedule, as
/// k-diffusion/A1111 lay them out: each σ a step starts from, then the last one (0, or σmin
/// for [`KlOptimal`](SigmaSchedule::KlOptimal), to which A1111 appends no 0). `train` is
/// [`ScheduleConfig::train_sigmas`]: Karras, exponential and beta keep its range (diffusers'
/// `_convert_to_*`); A1111's own schedules use [`ScheduleConfig::a1111_train_sigmas`].
pub fn kdiffusion_sigmas(
    schedule: SigmaSchedule,
    cfg: &ScheduleConfig,
    train: &[f32],
    steps: usize,
) -> Result<Vec<f64>, SamplingError> {
    use SigmaSchedule as S;
    check_steps(steps, cfg.num_train_timesteps)?;
    let range = |t: &[f32]| (t[0] as f64, t[t.len() - 1] as f64);
    let (min, max) = range(train);
    let a1111 = if schedule.is_a1111() {
        cfg.a1111_train_sigmas()?
    } else {
        Vec::new()
    };
    let mut out = match schedule {
        S::Karras => karras_sigmas(min, max, steps),
        S::Exponential => exponential_sigmas(min, max, steps),
        S::Beta => beta_sigmas(min, max, steps),
        S::Polyexponential => {
            let (min, max) = range(&a1111);
            polyexponential_sigmas(min, max, steps, 1.0)
        }
        S::KlOptimal => {
            let (min, max) = range(&a1111);
            return Ok(kl_optimal_sigmas(min, max, steps));
        }
        S::AlignYourSteps => align_your_steps_sigmas(steps),
        S::Uniform | S::A1111Normal | S::A1111SgmUniform | S::A1111Simple | S::A1111Ddim => {
            // k-diffusion's σ(t) on A1111's table is ComfyUI's on the same table, and
            // t(σmax), t(σmin) are exactly 999 and 0 under either rule.
            let sigmas = match schedule {
                S::A1111SgmUniform => comfy_normal_sigmas(&a1111, steps, true),
                S::A1111Simple => comfy_simple_sigmas(&a1111, steps),
                S::A1111Ddim => comfy_ddim_uniform_sigmas(&a1111, steps),
                _ => comfy_normal_sigmas(&a1111, steps, false),
            };
            return Ok(sigmas.into_iter().map(f64::from).collect());
        }
        other => {
            return Err(SamplingError::InvalidConfig(format!(
                "schedule {} is not laid out by a σ formula",
                other.name()
            )))
        }
    };
    out.push(0.0);
    Ok(out)
}

/// k-diffusion `get_sigmas_polyexponential`: `exp(ramp^ρ·(ln σmax − ln σmin) + ln σmin)` with
/// `ramp = linspace(1, 0, N)` (A1111 uses ρ = 1, the exponential schedule written otherwise).
pub fn polyexponential_sigmas(sigma_min: f64, sigma_max: f64, steps: usize, rho: f64) -> Vec<f64> {
    let (lmin, lmax) = (sigma_min.ln(), sigma_max.ln());
    numpy_linspace_f64(1.0, 0.0, steps)
        .into_iter()
        .map(|r| (r.powf(rho) * (lmax - lmin) + lmin).exp())
        .collect()
}

/// A1111 `kl_optimal` (arXiv 2404.14507, "KL-optimal" schedule): `tan` of the arctangents of
/// σmax and σmin blended linearly, at i/N for i = 0…N, so N + 1 σs ending at σmin.
pub fn kl_optimal_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let (a_min, a_max) = (sigma_min.atan(), sigma_max.atan());
    (0..=steps)
        .map(|i| {
            let f = i as f64 / steps as f64;
            (f * a_min + (1.0 - f) * a_max).tan()
        })
        .collect()
}

/// NVIDIA's "Align Your Steps" σs for SDXL (10 steps, 11 values), as A1111 ships them.
pub const AYS_SDXL_SIGMAS: [f64; 11] = [
    14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029,
];

/// A1111 "Align Your Steps" for SDXL, without the appended 0: the published list as is when
/// N equals its length (11), otherwise its log σ linearly interpolated (`np.interp`) at
/// `linspace(0, 1, N)` over `linspace(0, 1, 11)`. A1111 compares N, the step count, with the
/// list's 11 values, so 10 steps resample the 10-step list.
pub fn align_your_steps_sigmas(steps: usize) -> Vec<f64> {
    let published = &AYS_SDXL_SIGMAS;
    if steps == published.len() {
        return published.to_vec();
    }
    let xs = numpy_linspace_f64(0.0, 1.0, published.len());
    let ys: Vec<f64> = published.iter().rev().map(|s| s.ln()).collect();
    let mut out: Vec<f64> = numpy_linspace_f64(0.0, 1.0, steps)
        .into_iter()
        .map(|x| numpy_interp(x, &xs, &ys).exp())
        .collect();
    out.reverse();
    out
}

/// `np.interp(x, xp, fp)` for ascending `xp` (float64), clamped to the end values.
fn numpy_interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let last = xp.len() - 1;
    if x <= xp[0] {
        return fp[0];
    }
    if x >= xp[last] {
        return fp[last];
    }
    let j = xp.partition_point(|&v| v <= x) - 1;
    if x == xp[j] {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    slope * (x - xp[j]) + fp[j]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_names_round_trip() {
        for s in SigmaSchedule::ALL {
            assert_eq!(SigmaSchedule::parse(s.name()).unwrap(), s);
            if s != SigmaSchedule::Default {
                assert_eq!(SigmaSchedule::parse(s.label()).unwrap(), s, "{}", s.label());
            }
        }
        assert_eq!(
            SigmaSchedule::parse("SGM Uniform").unwrap(),
            SigmaSchedule::SgmUniform
        );
        assert_eq!(SigmaSchedule::parse("").unwrap(), SigmaSchedule::Default);
        let err = SigmaSchedule::parse("cosine").unwrap_err().to_string();
        assert!(
            err.contains("cosine") && err.contains("ddim_uniform"),
            "{err}"
        );
    }

    /// The Beta(0.6, 0.6) quantile against `scipy.stats.beta.ppf` (values from scipy 1.x).
    #[test]
    fn beta_quantile_matches_scipy() {
        // scipy.stats.beta.ppf([0.1, 0.5, 0.857142857142857], 0.6, 0.6)
        let want = [0.039_584_405_6, 0.5, 0.928_857_973_8];
        for (q, w) in [0.1, 0.5, 6.0 / 7.0].into_iter().zip(want) {
            let got = beta_ppf(q, 0.6, 0.6);
            assert!((got - w).abs() < 1e-8, "{q}: {got} vs {w}");
        }
    }

    /// σ_0 and σ_999 of SDXL's scaled-linear betas (docs/sampling.md, *The model's noise
    /// table*).
    #[test]
    fn sdxl_sigma_range() {
        let s = ScheduleConfig::sdxl().train_sigmas().unwrap();
        assert!((s[0] - 0.0291672).abs() < 1e-6, "{}", s[0]);
        assert!((s[999] - 14.614641).abs() < 1e-4, "{}", s[999]);
    }

    #[test]
    fn ztsnr_terminal_sigma_is_4096() {
        let s = ScheduleConfig::sdxl_v_pred_ztsnr().train_sigmas().unwrap();
        assert!((s[999] - 4096.0).abs() < 1.0, "{}", s[999]);
        // The rescale keeps the first ᾱ unchanged.
        let plain = ScheduleConfig::sdxl().alphas_cumprod().unwrap();
        let z = ScheduleConfig::sdxl_v_pred_ztsnr()
            .alphas_cumprod()
            .unwrap();
        assert!((plain[0] - z[0]).abs() < 1e-6);
    }

    /// diffusers' trailing spacing for 3 steps is `[999, 666, 332]` (candle gets this wrong).
    #[test]
    fn trailing_spacing() {
        let mut c = ScheduleConfig::sdxl();
        c.timestep_spacing = TimestepSpacing::Trailing;
        assert_eq!(c.spaced_timesteps(3).unwrap(), vec![999.0, 666.0, 332.0]);
        assert_eq!(c.spaced_timesteps(30).unwrap()[..3], [999.0, 966.0, 932.0]);
        c.timestep_spacing = TimestepSpacing::Leading;
        assert_eq!(c.spaced_timesteps(30).unwrap()[..2], [958.0, 925.0]);
    }

    #[test]
    fn zero_steps_rejected() {
        assert!(ScheduleConfig::sdxl().spaced_timesteps(0).is_err());
        assert!(ScheduleConfig::sdxl().spaced_timesteps(1001).is_err());
    }

    /// Linspace spacing gives fractional timesteps; σ is interpolated linearly in t.
    #[test]
    fn linspace_interpolates() {
        let mut c = ScheduleConfig::sdxl();
        c.timestep_spacing = TimestepSpacing::Linspace;
        let t = c.spaced_timesteps(3).unwrap();
        assert_eq!(t, vec![999.0, 499.5, 0.0]);
        let s = c.train_sigmas().unwrap();
        let mid = interp_table(499.5, &s);
        assert!((mid - (s[499] as f64 + s[500] as f64) / 2.0).abs() < 1e-6);
        assert_eq!(interp_table(999.0, &s), s[999] as f64);
    }

    /// `_sigma_to_t` inverts the table at its own entries.
    #[test]
    fn sigma_to_t_roundtrip() {
        let s = ScheduleConfig::sdxl().train_sigmas().unwrap();
        let logs: Vec<f32> = s.iter().map(|v| v.ln()).collect();
        for t in [0usize, 1, 250, 998, 999] {
            let got = sigma_to_t(s[t] as f64, &logs);
            assert!((got - t as f64).abs() < 1e-3, "{t}: {got}");
        }
    }
}
