//! The samplers users pick by name, written once in σ-space (k-diffusion's formulation; see
//! docs/sampling.md, *Samplers*) and driven by a model callback, so samplers that evaluate the model more
//! than once per step (Heun, DPM2, DPM++ SDE) and multistep ones (DPM++ 2M/3M, UniPC) share
//! one loop.
//!
//! State `x` is always k-space latents (`x = x0 + σ·ε`); the callback gets `x`, σ and the UNet
//! timestep for that σ and returns the data prediction `D` (see [`ModelSampling`]). Each
//! sampler also reproduces its diffusers class step for step when run on a diffusers spacing
//! (`default`/`leading`/`trailing`/`linspace`):
//!
//! | kind | diffusers class |
//! |---|---|
//! | `euler` | `EulerDiscreteScheduler` |
//! | `euler_a` | `EulerAncestralDiscreteScheduler` |
//! | `heun` | `HeunDiscreteScheduler` |
//! | `dpm_2` | `KDPM2DiscreteScheduler` |
//! | `dpm_2_a` | `KDPM2AncestralDiscreteScheduler` |
//! | `dpmpp_2m` | `DPMSolverMultistepScheduler` (dpmsolver++, order 2, midpoint) |
//! | `dpmpp_sde` | `DPMSolverSDEScheduler` (Brownian tree noise) |
//! | `dpmpp_2m_sde` | `DPMSolverMultistepScheduler` (sde-dpmsolver++, Gaussian noise in diffusers) |
//! | `dpmpp_3m_sde` | none (k-diffusion `sample_dpmpp_3m_sde`) |
//! | `ddim` | `DDIMScheduler` (η 0); on other schedules k-diffusion/ComfyUI DDIM = Euler |
//! | `uni_pc` | `UniPCMultistepScheduler` (bh2, order 2, predict x0) |
//! | `lcm` | `LCMScheduler` |
//! | `lms` | `LMSDiscreteScheduler` (order 4) |
//! | `pndm` | `PNDMScheduler` (`skip_prk_steps`; PLMS) |
//! | `dpmpp_2s` | `DPMSolverSinglestepScheduler` (dpmsolver++, order 2) |
//! | `dpmpp_2m_sde_heun` | `DPMSolverMultistepScheduler` (sde-dpmsolver++, heun) |
//!
//! The last four live in `sampler/diffusers.rs`.
//!
//! diffusers' VP-space schedulers (DPM-Solver, UniPC, DDIM, LCM) are the same maps written
//! for `x/sqrt(σ²+1)`; their `init_noise_sigma` of 1 becomes `sqrt(σ_0²+1)` here.
//!
//! A1111's samplers without a diffusers class (DPM++ 2S a, DPM fast, DPM adaptive, Restart,
//! DDIM CFG++) have their own loops in `sampler/kdiffusion.rs`; DDIM CFG++ reads the
//! unconditional prediction through [`Sampler::sample_cfg`].

use candle_core::{DType, Device, Tensor};

use super::rng::ImageRng;
use super::schedule::{
    check_steps, comfy_ddim_uniform_sigmas, comfy_normal_sigmas, comfy_simple_sigmas, interp_table,
    kdiffusion_sigmas, nearest_index, numpy_linspace_f64, sigma_to_t, PredictionType,
    ScheduleConfig, SigmaSchedule, TimestepSpacing,
};
use super::{SamplingError, SdeNoise};

mod diffusers;
mod kdiffusion;
pub use kdiffusion::{restart_steps, CfgModel, Prediction};

/// Which update rule runs between model calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    Euler,
    EulerAncestral,
    Heun,
    Dpm2,
    Dpm2Ancestral,
    /// DPM++ 2M (multistep, second order); the worker's default with [`SigmaSchedule::Karras`].
    DpmPp2m,
    DpmPpSde,
    DpmPp2mSde,
    DpmPp3mSde,
    Ddim,
    UniPc,
    Lcm,
    /// Linear multistep, order 4 (diffusers `LMSDiscreteScheduler`, k-diffusion `sample_lms`).
    Lms,
    /// PLMS: diffusers `PNDMScheduler` with `skip_prk_steps` (SDXL's config).
    Pndm,
    /// DPM-Solver++(2S): diffusers `DPMSolverSinglestepScheduler` (order 2, `dpmsolver++`).
    DpmPp2s,
    /// DPM++ 2M SDE with the Heun second-order weight (`solver_type="heun"`).
    DpmPp2mSdeHeun,
    /// k-diffusion `sample_dpmpp_2s_ancestral` (η 1).
    DpmPp2sAncestral,
    /// k-diffusion `sample_dpm_fast`: its own t-spacing between the run's σ_max and σ_min.
    DpmFast,
    /// k-diffusion `sample_dpm_adaptive`: error-controlled steps, model calls ≠ steps.
    DpmAdaptive,
    /// A1111's Restart sampler (Heun steps with restart segments).
    Restart,
    /// A1111's DDIM CFG++ (renoises with the unconditional prediction).
    DdimCfgPp,
}

/// Accepted sampler names, for error messages and docs.
pub const SAMPLER_NAMES: &str = "euler, euler_a, heun, dpm_2, dpm_2_a, dpmpp_2m, dpmpp_sde, \
     dpmpp_2m_sde, dpmpp_3m_sde, ddim, uni_pc, lcm, lms, pndm, dpmpp_2s, dpmpp_2m_sde_heun, \
     dpmpp_2s_a, dpm_fast, dpm_adaptive, restart, ddim_cfgpp (optionally with a schedule suffix \
     such as dpmpp_2m_karras)";

impl SamplerKind {
    /// Every sampler, in the order of [`SAMPLER_NAMES`].
    pub const ALL: [SamplerKind; 21] = [
        Self::Euler,
        Self::EulerAncestral,
        Self::Heun,
        Self::Dpm2,
        Self::Dpm2Ancestral,
        Self::DpmPp2m,
        Self::DpmPpSde,
        Self::DpmPp2mSde,
        Self::DpmPp3mSde,
        Self::Ddim,
        Self::UniPc,
        Self::Lcm,
        Self::Lms,
        Self::Pndm,
        Self::DpmPp2s,
        Self::DpmPp2mSdeHeun,
        Self::DpmPp2sAncestral,
        Self::DpmFast,
        Self::DpmAdaptive,
        Self::Restart,
        Self::DdimCfgPp,
    ];

    /// Parses our names and the common spellings of ComfyUI (`euler_ancestral`,
    /// `dpm_2_ancestral`, `uni_pc_bh2`), A1111 labels (`Euler a`, `DPM++ 2M SDE`, `UniPC`)
    /// and diffusers-ish ones (`dpm++_2m`), case-insensitively.
    pub fn parse(name: &str) -> Result<Self, SamplingError> {
        let key = name
            .trim()
            .to_ascii_lowercase()
            .replace([' ', '-'], "_")
            .replace("++", "pp");
        Ok(match key.as_str() {
            "euler" => Self::Euler,
            "euler_a" | "euler_ancestral" | "eulera" => Self::EulerAncestral,
            "heun" => Self::Heun,
            "dpm_2" | "dpm2" => Self::Dpm2,
            "dpm_2_a" | "dpm2_a" | "dpm_2_ancestral" | "dpm2_ancestral" | "dpm2a" => {
                Self::Dpm2Ancestral
            }
            "dpmpp_2m" | "dpmpp2m" => Self::DpmPp2m,
            "dpmpp_sde" | "dpmppsde" => Self::DpmPpSde,
            "dpmpp_2m_sde" | "dpmpp2msde" => Self::DpmPp2mSde,
            "dpmpp_3m_sde" | "dpmpp3msde" => Self::DpmPp3mSde,
            "ddim" => Self::Ddim,
            "uni_pc" | "unipc" | "uni_pc_bh2" => Self::UniPc,
            "lcm" => Self::Lcm,
            "lms" => Self::Lms,
            "pndm" | "plms" => Self::Pndm,
            "dpmpp_2s" | "dpmpp2s" => Self::DpmPp2s,
            "dpmpp_2m_sde_heun" | "dpmpp2msdeheun" => Self::DpmPp2mSdeHeun,
            "dpmpp_2s_a" | "dpmpp_2s_ancestral" | "dpmpp2sa" => Self::DpmPp2sAncestral,
            "dpm_fast" | "dpmfast" => Self::DpmFast,
            "dpm_adaptive" | "dpmadaptive" => Self::DpmAdaptive,
            "restart" => Self::Restart,
            "ddim_cfgpp" | "ddim_cfg_pp" | "ddimcfgpp" => Self::DdimCfgPp,
            _ => {
                return Err(SamplingError::UnknownName {
                    field: "sampler",
                    value: name.to_string(),
                    allowed: SAMPLER_NAMES,
                })
            }
        })
    }

    /// Parses `name` that may carry the schedule as a suffix (`dpmpp_2m_karras`,
    /// `euler_a_sgm_uniform`), as the parity fixtures name their cases. Without a suffix the
    /// schedule is [`SigmaSchedule::Default`], the diffusers spacing the references were made
    /// with. Names from users (jobs, `bench --sampler`) go through [`super::names`] instead,
    /// where a bare sampler gets its A1111 default schedule.
    pub fn parse_with_schedule(name: &str) -> Result<(Self, SigmaSchedule), SamplingError> {
        let lower = name.trim().to_ascii_lowercase().replace([' ', '-'], "_");
        if let Ok(kind) = Self::parse(&lower) {
            return Ok((kind, SigmaSchedule::Default));
        }
        for sched in SigmaSchedule::ALL {
            if sched == SigmaSchedule::Default {
                continue;
            }
            if let Some(base) = lower.strip_suffix(&format!("_{}", sched.name())) {
                if let Ok(kind) = Self::parse(base) {
                    return Ok((kind, sched));
                }
            }
        }
        Err(SamplingError::UnknownName {
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
            Self::Heun => "heun",
            Self::Dpm2 => "dpm_2",
            Self::Dpm2Ancestral => "dpm_2_a",
            Self::DpmPp2m => "dpmpp_2m",
            Self::DpmPpSde => "dpmpp_sde",
            Self::DpmPp2mSde => "dpmpp_2m_sde",
            Self::DpmPp3mSde => "dpmpp_3m_sde",
            Self::Ddim => "ddim",
            Self::UniPc => "uni_pc",
            Self::Lcm => "lcm",
            Self::Lms => "lms",
            Self::Pndm => "pndm",
            Self::DpmPp2s => "dpmpp_2s",
            Self::DpmPp2mSdeHeun => "dpmpp_2m_sde_heun",
            Self::DpmPp2sAncestral => "dpmpp_2s_a",
            Self::DpmFast => "dpm_fast",
            Self::DpmAdaptive => "dpm_adaptive",
            Self::Restart => "restart",
            Self::DdimCfgPp => "ddim_cfgpp",
        }
    }

    /// The A1111 sampler label (infotexts, Civitai metadata).
    pub fn label(self) -> &'static str {
        match self {
            Self::Euler => "Euler",
            Self::EulerAncestral => "Euler a",
            Self::Heun => "Heun",
            Self::Dpm2 => "DPM2",
            Self::Dpm2Ancestral => "DPM2 a",
            Self::DpmPp2m => "DPM++ 2M",
            Self::DpmPpSde => "DPM++ SDE",
            Self::DpmPp2mSde => "DPM++ 2M SDE",
            Self::DpmPp3mSde => "DPM++ 3M SDE",
            Self::Ddim => "DDIM",
            Self::UniPc => "UniPC",
            Self::Lcm => "LCM",
            Self::Lms => "LMS",
            Self::Pndm => "PLMS",
            Self::DpmPp2s => "DPM++ 2S",
            Self::DpmPp2mSdeHeun => "DPM++ 2M SDE Heun",
            Self::DpmPp2sAncestral => "DPM++ 2S a",
            Self::DpmFast => "DPM fast",
            Self::DpmAdaptive => "DPM adaptive",
            Self::Restart => "Restart",
            Self::DdimCfgPp => "DDIM CFG++",
        }
    }

    /// Whether the sampler adds fresh noise while sampling.
    pub fn is_stochastic(self) -> bool {
        matches!(
            self,
            Self::EulerAncestral
                | Self::Dpm2Ancestral
                | Self::DpmPpSde
                | Self::DpmPp2mSde
                | Self::DpmPp3mSde
                | Self::Lcm
                | Self::DpmPp2mSdeHeun
                | Self::DpmPp2sAncestral
                | Self::DpmFast
                | Self::DpmAdaptive
                | Self::Restart
        )
    }

    /// Whether its noise is the SDE noise of [`SdeNoise`] (a Brownian tree by default) rather
    /// than plain per-step draws from the image generators.
    pub fn uses_sde_noise(self) -> bool {
        matches!(
            self,
            Self::DpmPpSde | Self::DpmPp2mSde | Self::DpmPp3mSde | Self::DpmPp2mSdeHeun
        )
    }

    /// Which diffusers class family lays out its spacing and timesteps.
    fn family(self) -> Family {
        match self {
            Self::Euler | Self::EulerAncestral | Self::Heun | Self::DpmPpSde => Family::Euler {
                round_karras: false,
            },
            // KDPM2(Ancestral)DiscreteScheduler round the Karras timesteps (only those).
            Self::Dpm2 | Self::Dpm2Ancestral => Family::Euler { round_karras: true },
            Self::DpmPp2m | Self::DpmPp2mSde | Self::DpmPp3mSde | Self::UniPc => Family::Multistep,
            Self::Ddim => Family::Ddim,
            Self::Lcm => Family::Lcm,
            Self::Lms => Family::Euler {
                round_karras: false,
            },
            // PNDM spaces and steps like DDIM (t → t − 1000//N, ᾱ_0 past the end).
            Self::Pndm => Family::Ddim,
            Self::DpmPp2s | Self::DpmPp2mSdeHeun => Family::Multistep,
            Self::DpmPp2sAncestral | Self::DpmFast | Self::DpmAdaptive | Self::Restart => {
                Family::Euler {
                    round_karras: false,
                }
            }
            Self::DdimCfgPp => Family::Ddim,
        }
    }

    /// ComfyUI's `DISCARD_PENULTIMATE_SIGMA_SAMPLERS`.
    fn discards_penultimate(self) -> bool {
        matches!(self, Self::Dpm2 | Self::Dpm2Ancestral | Self::UniPc)
    }
}

/// Serialised as its canonical [`name`](SamplerKind::name) (the echoed job request).
impl serde::Serialize for SamplerKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// How diffusers' scheduler classes differ in spacing, timesteps and initial noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// Euler, Heun, KDPM2, DPMSolverSDE: σ-space schedulers, spaced t as float32.
    Euler {
        round_karras: bool,
    },
    /// DPMSolverMultistep, UniPCMultistep: N+1 points minus the last, integer timesteps,
    /// the full training table for Karras/exponential/beta.
    Multistep,
    Ddim,
    Lcm,
}

/// Turns the raw (guided) model output into the data prediction `D` at σ — the k-diffusion
/// `CompVisDenoiser`/`CompVisVDenoiser` wrapper, plus LCM's boundary condition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelSampling {
    pub prediction: PredictionType,
    /// LCM: `D = c_out(t)·x0 + c_skip(t)·x_vp` (diffusers `LCMScheduler`, σ_data 0.5,
    /// timestep scaling 10).
    pub lcm: bool,
}

impl ModelSampling {
    /// The UNet input for k-space `x` at σ: `x / sqrt(σ²+1)` (a true division, as diffusers'
    /// `scale_model_input`).
    pub fn scale_input(&self, x: &Tensor, sigma: f32) -> candle_core::Result<Tensor> {
        div_scalar(x, (sigma * sigma + 1.0).sqrt())
    }

    /// `D` from the model output `out` (ε or v) at k-space `x`, σ and the timestep `t` the
    /// UNet was given.
    pub fn denoised(
        &self,
        out: &Tensor,
        x: &Tensor,
        sigma: f32,
        t: f64,
    ) -> candle_core::Result<Tensor> {
        let out = out.to_dtype(DType::F32)?;
        let x = x.to_dtype(DType::F32)?;
        let x0 = match self.prediction {
            PredictionType::Epsilon => (&x - mul_scalar(&out, sigma)?)?,
            PredictionType::VPrediction => {
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                (mul_scalar(&out, c_out)? + div_scalar(&x, sigma * sigma + 1.0)?)?
            }
        };
        if !self.lcm {
            return Ok(x0);
        }
        let scaled = t * 10.0;
        let c_skip = 0.25 / (scaled * scaled + 0.25);
        let c_out = scaled / (scaled * scaled + 0.25).sqrt();
        let alpha = 1.0 / ((sigma as f64) * (sigma as f64) + 1.0).sqrt();
        mul_scalar(&x0, c_out as f32)? + mul_scalar(&x, (c_skip * alpha) as f32)?
    }
}

/// Where the sampler's fresh noise comes from: the images' own generators (per-step draws,
/// `[C, H, W]` per image, continuing the streams that made the initial noise) and, for the
/// SDE samplers, a Brownian tree per image seeded with its seed (k-diffusion/A1111).
pub struct SamplerNoise<'a> {
    rngs: &'a mut [ImageRng],
    seeds: Vec<u64>,
    per_image: Vec<usize>,
    device: Device,
    sde: SdeNoise,
    trees: Option<Vec<super::brownian_adaptor::Tree>>,
    /// A caller-supplied SDE noise source (k-diffusion's `noise_sampler` argument).
    custom: Option<SdeSource<'a>>,
}

/// A custom SDE noise source: `(σ, σ_next)` → unit noise shaped like the latents.
pub type SdeSource<'a> = Box<dyn FnMut(f32, f32) -> Result<Tensor, SamplingError> + 'a>;

impl<'a> SamplerNoise<'a> {
    /// `rngs[i]` and `seeds[i]` belong to image `i`; `per_image` is `[C, H, W]`.
    pub fn new(
        rngs: &'a mut [ImageRng],
        seeds: &[u64],
        per_image: &[usize],
        device: &Device,
        sde: SdeNoise,
    ) -> Result<Self, SamplingError> {
        if rngs.len() != seeds.len() {
            return Err(SamplingError::GeneratorCount {
                got: rngs.len(),
                batch: seeds.len(),
            });
        }
        Ok(Self {
            rngs,
            seeds: seeds.to_vec(),
            per_image: per_image.to_vec(),
            device: device.clone(),
            sde,
            trees: None,
            custom: None,
        })
    }

    /// Replaces the SDE noise (Brownian tree or generator draws) with `source`, e.g. noise
    /// recorded from another implementation.
    pub fn with_sde_source(mut self, source: SdeSource<'a>) -> Self {
        self.custom = Some(source);
        self
    }

    /// One standard normal draw per image from its generator, stacked `[N, C, H, W]`.
    fn gaussian(&mut self) -> Result<Tensor, SamplingError> {
        let per: usize = self.per_image.iter().product();
        let mut data = Vec::with_capacity(per * self.rngs.len());
        for rng in self.rngs.iter_mut() {
            data.extend(rng.randn(per));
        }
        let mut shape = vec![self.rngs.len()];
        shape.extend_from_slice(&self.per_image);
        Ok(Tensor::from_vec(data, shape, &self.device)?)
    }

    /// SDE noise for the interval σ → σ_next of a run whose positive σs span
    /// [`sigma_min`, `sigma_max`].
    fn sde(
        &mut self,
        sigma: f32,
        sigma_next: f32,
        sigma_min: f32,
        sigma_max: f32,
    ) -> Result<Tensor, SamplingError> {
        if let Some(source) = self.custom.as_mut() {
            return source(sigma, sigma_next);
        }
        if self.sde == SdeNoise::Gaussian {
            return self.gaussian();
        }
        let per: usize = self.per_image.iter().product();
        if self.trees.is_none() {
            let trees = self
                .seeds
                .iter()
                .map(|&s| {
                    super::brownian_adaptor::Tree::new(s, sigma_min as f64, sigma_max as f64, per)
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.trees = Some(trees);
        }
        let mut data = Vec::with_capacity(per * self.seeds.len());
        if let Some(trees) = self.trees.as_mut() {
            for tree in trees.iter_mut() {
                data.extend(tree.sample(sigma as f64, sigma_next as f64));
            }
        }
        let mut shape = vec![self.seeds.len()];
        shape.extend_from_slice(&self.per_image);
        Ok(Tensor::from_vec(data, shape, &self.device)?)
    }
}

/// What a step callback sees: sampler step `step` of `steps` (1-based) just finished and `x`
/// holds k-space latents at noise level `sigma`.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo<'a> {
    pub step: usize,
    pub steps: usize,
    pub x: &'a Tensor,
    pub sigma: f32,
}

/// One sampling plan: σs, UNet timesteps and initial noise scale for a sampler, schedule and
/// step count on one model's noise schedule. Cheap; build one per request.
#[derive(Debug, Clone)]
pub struct Sampler {
    kind: SamplerKind,
    schedule: SigmaSchedule,
    model: ModelSampling,
    /// σ per step plus the final one (0; for diffusers' DDIM σ(ᾱ_0)).
    sigmas: Vec<f32>,
    /// UNet timestep at each σ but the last.
    timesteps: Vec<f64>,
    /// diffusers `DDIMScheduler` lands step `i` at σ(t_i − stride), which differs from the
    /// next step's σ under `trailing`/`linspace`; `None` outside diffusers DDIM.
    ddim_targets: Option<Vec<f32>>,
    init_noise_sigma: f32,
    /// Training log σ (float32), for the timesteps of intermediate σs.
    log_sigmas: Vec<f32>,
    /// PLMS on a diffusers spacing: per step `i`, the σ of `t_{i+1} + 1000//N`, where
    /// diffusers starts the Heun redo of a run's first step (σ_i unless the spacing is uneven).
    plms_heun_from: Option<Vec<f32>>,
}

impl Sampler {
    /// Lays out the schedule for `steps` steps (the rules per schedule group are on
    /// [`SigmaSchedule`]; the formulas in docs/sampling.md, *Schedules*).
    pub fn new(
        kind: SamplerKind,
        schedule: SigmaSchedule,
        cfg: &ScheduleConfig,
        steps: usize,
    ) -> Result<Self, SamplingError> {
        check_steps(steps, cfg.num_train_timesteps)?;
        let train = cfg.train_sigmas()?;
        let log_sigmas: Vec<f32> = train.iter().map(|s| s.ln()).collect();
        let family = kind.family();
        let mut ddim_targets = None;
        let mut plms_heun_from = None;
        let (sigmas, timesteps, init_noise_sigma) = match schedule.spacing(cfg) {
            Some(spacing) => {
                let c = ScheduleConfig {
                    timestep_spacing: diffusers::class_spacing(kind, spacing),
                    ..cfg.clone()
                };
                match family {
                    Family::Euler { .. } => {
                        let (ts, sigmas) = euler_spacing(&c, &train, steps)?;
                        let max = sigmas.iter().copied().fold(0f32, f32::max);
                        let init = match spacing {
                            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
                            _ => max,
                        };
                        (sigmas, ts, init)
                    }
                    Family::Multistep => {
                        let (ts, sigmas) = multistep_spacing(&c, &train, steps)?;
                        let init = vp_unit(sigmas[0]);
                        (sigmas, ts, init)
                    }
                    Family::Ddim => {
                        let (ts, sigmas, targets) = ddim_spacing(&c, &train, steps)?;
                        if kind == SamplerKind::Pndm {
                            plms_heun_from =
                                Some(diffusers::plms_heun_from_sigmas(&ts, &train, steps)?);
                        }
                        ddim_targets = Some(targets);
                        let init = vp_unit(sigmas[0]);
                        (sigmas, ts, init)
                    }
                    Family::Lcm => {
                        let ts = lcm_timesteps(cfg.num_train_timesteps, steps)?;
                        let mut sigmas: Vec<f32> = ts.iter().map(|&t| train[t as usize]).collect();
                        sigmas.push(0.0);
                        let init = vp_unit(sigmas[0]);
                        (sigmas, ts, init)
                    }
                }
            }
            None if schedule.is_comfy() => {
                let discard = kind.discards_penultimate();
                let n = if discard { steps + 1 } else { steps };
                let mut sigmas = match schedule {
                    SigmaSchedule::Normal => comfy_normal_sigmas(&train, n, false),
                    SigmaSchedule::SgmUniform => comfy_normal_sigmas(&train, n, true),
                    SigmaSchedule::Simple => comfy_simple_sigmas(&train, n),
                    _ => comfy_ddim_uniform_sigmas(&train, n),
                };
                if discard && sigmas.len() >= 3 {
                    sigmas.remove(sigmas.len() - 2);
                }
                let ts = sigmas[..sigmas.len() - 1]
                    .iter()
                    .map(|&s| nearest_index(s as f64, &log_sigmas) as f64)
                    .collect();
                // ComfyUI `noise_scaling(max_denoise)`: a run that starts at the model's
                // σ_max gets `sqrt(1+σ²)`-scaled noise, any later start plain σ.
                let sigma_max = train[train.len() - 1];
                let s0 = sigmas[0];
                let max_denoise = s0 > sigma_max || ((s0 - sigma_max) / sigma_max).abs() <= 1e-5;
                let init = if max_denoise { vp_unit(s0) } else { s0 };
                (sigmas, ts, init)
            }
            None => {
                let mut sig64 = kdiffusion_sigmas(schedule, cfg, &train, steps)?;
                let last = sig64.pop().unwrap_or(0.0) as f32;
                let karras = schedule == SigmaSchedule::Karras;
                let a1111 = schedule.is_a1111();
                let ts: Vec<f64> = sig64
                    .iter()
                    .map(|&s| {
                        let t = sigma_to_t(s, &log_sigmas);
                        match family {
                            _ if a1111 => t as f32 as f64,
                            // diffusers rounds Karras timesteps and truncates the others
                            // (the int64 cast of `self.timesteps`).
                            Family::Multistep if karras => t.round_ties_even(),
                            Family::Multistep => t.trunc(),
                            Family::Euler { round_karras: true } if karras => t.round_ties_even(),
                            _ => t as f32 as f64,
                        }
                    })
                    .collect();
                let mut sigmas: Vec<f32> = sig64.iter().map(|&s| s as f32).collect();
                sigmas.push(last);
                let init = match family {
                    Family::Multistep if !a1111 => vp_unit(sigmas[0]),
                    _ => sigmas[0],
                };
                (sigmas, ts, init)
            }
        };
        let mut sigmas = sigmas;
        if let (Some(targets), Some(last)) = (&ddim_targets, sigmas.last_mut()) {
            // Report the σ diffusers' DDIM ends at (ᾱ_0) as the final one.
            if let Some(&t) = targets.last() {
                *last = t;
            }
        }
        Ok(Self {
            kind,
            schedule,
            model: ModelSampling {
                prediction: cfg.prediction_type,
                lcm: kind == SamplerKind::Lcm,
            },
            sigmas,
            timesteps,
            ddim_targets,
            init_noise_sigma,
            log_sigmas,
            plms_heun_from,
        })
    }

    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    pub fn schedule(&self) -> SigmaSchedule {
        self.schedule
    }

    /// How the model output becomes `D` for this run.
    pub fn model_sampling(&self) -> ModelSampling {
        self.model
    }

    /// Number of sampler steps of the full schedule (ComfyUI's `ddim_uniform` can give one
    /// more than asked, as in ComfyUI).
    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// σ per step plus the final one.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The UNet timestep at each step's σ.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// The UNet timestep for an intermediate σ (DPM2 and DPM++ SDE midpoints): fractional
    /// log-σ interpolation as diffusers' KDPM2/DPMSolverSDE and A1111 (unquantised).
    pub fn timestep_for(&self, sigma: f32) -> f64 {
        sigma_to_t(sigma as f64, &self.log_sigmas)
    }

    /// What the unit-variance txt2img noise is multiplied by (k-space): diffusers'
    /// `init_noise_sigma` of the sampler's class for diffusers spacings, σ_0 for Karras-like
    /// schedules (k-diffusion), ComfyUI's `max_denoise` rule for ComfyUI schedules.
    pub fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    /// `noise · init_noise_sigma`: the txt2img starting latents (float32).
    pub fn init_latents(&self, noise: &Tensor) -> Result<Tensor, SamplingError> {
        Ok(mul_scalar(
            &noise.to_dtype(DType::F32)?,
            self.init_noise_sigma,
        )?)
    }

    /// `latents + noise·σ_start`: the img2img start for a run beginning at step `start`
    /// (A1111 `sample_img2img`, diffusers `add_noise` in k-space).
    pub fn noised_latents(
        &self,
        latents: &Tensor,
        noise: &Tensor,
        start: usize,
    ) -> Result<Tensor, SamplingError> {
        let sigma = self.start_sigma(start)?;
        let noise = noise.to_dtype(DType::F32)?;
        Ok((latents.to_dtype(DType::F32)? + mul_scalar(&noise, sigma)?)?)
    }

    fn start_sigma(&self, start: usize) -> Result<f32, SamplingError> {
        if start >= self.num_steps() {
            return Err(SamplingError::StepOutOfOrder {
                got: start,
                expected: 0,
                steps: self.num_steps(),
            });
        }
        Ok(self.sigmas[start])
    }

    /// DPM2's second-order step from σ to `to`: an Euler step to `mid`, one more model call
    /// there, then the whole step with the slope at `mid` (DPM2 and DPM2 a differ only in
    /// `mid` and `to`).
    fn midpoint_step<E: From<SamplingError>>(
        &self,
        x: &Tensor,
        d: &Tensor,
        sigma: f32,
        mid: f32,
        to: f32,
        model: &mut dyn FnMut(&Tensor, f32, f64) -> Result<Tensor, E>,
    ) -> Result<Tensor, E> {
        let x2 = euler(x, d, sigma, mid)?;
        let d2 = model(&x2, mid, self.timestep_for(mid))?;
        let deriv2 = slope(&x2, &d2, mid)?;
        Ok(add_scaled(x, &deriv2, to - sigma)?)
    }

    /// Runs the sampler from step `start` to the end on k-space latents `x` ([N, C, H, W]).
    ///
    /// `model(x, σ, t)` returns `D` (use [`ModelSampling`] on the guided UNet output); it is
    /// called once per step, twice for Heun/DPM2/DPM2 a/DPM++ SDE (but once on their last
    /// step). `on_step` runs after every sampler step. The result is k-space latents at
    /// σ = 0, except for diffusers' DDIM, whose last step ends at ᾱ_0 and which returns its
    /// VP-form latents as diffusers does.
    pub fn sample<E: From<SamplingError>>(
        &self,
        x: Tensor,
        start: usize,
        noise: &mut SamplerNoise<'_>,
        model: &mut dyn FnMut(&Tensor, f32, f64) -> Result<Tensor, E>,
        on_step: &mut dyn FnMut(StepInfo<'_>) -> Result<(), E>,
    ) -> Result<Tensor, E> {
        self.start_sigma(start)?;
        if self.kind.is_kdiffusion_extra() {
            let mut wrapped =
                |x: &Tensor, sigma: f32, t: f64| model(x, sigma, t).map(Prediction::from);
            return kdiffusion::run(self, x, start, noise, &mut wrapped, on_step);
        }
        let s = &self.sigmas[start..];
        let ts = &self.timesteps[start..];
        let n = ts.len();
        let mut x = f32_of(&x)?;
        let positive = s.iter().copied().filter(|&v| v > 0.0);
        let sigma_min = positive.clone().fold(f32::INFINITY, f32::min);
        let sigma_max = positive.fold(0f32, f32::max);
        let mut hist = History::default();
        let mut unipc = UniPcState::default();
        let mut extra = diffusers::DiffusersState::default();
        let singlestep_orders = diffusers::singlestep_orders(self.num_steps());
        for i in 0..n {
            let (sigma, sigma_next) = (s[i], s[i + 1]);
            let d = model(&x, sigma, ts[i])?;
            x = match self.kind {
                SamplerKind::Euler => euler(&x, &d, sigma, sigma_next)?,
                SamplerKind::EulerAncestral => {
                    let (down, up) = ancestral(sigma, sigma_next);
                    let x = euler(&x, &d, sigma, down)?;
                    // diffusers draws on every step, the last (σ_up = 0) included.
                    let z = noise.gaussian()?;
                    add_scaled(&x, &z, up)?
                }
                SamplerKind::Heun => {
                    if sigma_next == 0.0 {
                        euler(&x, &d, sigma, sigma_next)?
                    } else {
                        let dt = sigma_next - sigma;
                        let deriv = slope(&x, &d, sigma)?;
                        let x2 = add_scaled(&x, &deriv, dt)?;
                        let d2 = model(&x2, sigma_next, ts[i + 1])?;
                        let deriv2 = slope(&x2, &d2, sigma_next)?;
                        let avg = lin(&deriv, 0.5, &deriv2, 0.5)?;
                        add_scaled(&x, &avg, dt)?
                    }
                }
                SamplerKind::Dpm2 => {
                    if sigma_next == 0.0 {
                        euler(&x, &d, sigma, sigma_next)?
                    } else {
                        let mid = log_midpoint(sigma_next, sigma);
                        self.midpoint_step(&x, &d, sigma, mid, sigma_next, model)?
                    }
                }
                SamplerKind::Dpm2Ancestral => {
                    let (down, up) = ancestral(sigma, sigma_next);
                    if down == 0.0 {
                        euler(&x, &d, sigma, down)?
                    } else {
                        let mid = log_midpoint(sigma, down);
                        let x = self.midpoint_step(&x, &d, sigma, mid, down, model)?;
                        let z = noise.gaussian()?;
                        add_scaled(&x, &z, up)?
                    }
                }
                SamplerKind::DpmPp2m => {
                    let h = log_step(sigma, sigma_next);
                    let next = if sigma_next == 0.0 {
                        d.clone()
                    } else {
                        let coef = -(-h).exp_m1();
                        let ratio = (sigma_next as f64 / sigma as f64) as f32;
                        let dd = match (&hist.d1, hist.h1) {
                            (Some(old), Some(h_last)) => {
                                let r = h_last / h;
                                let a = 1.0 + 1.0 / (2.0 * r);
                                let b = 1.0 / (2.0 * r);
                                lin(&d, a as f32, old, -b as f32)?
                            }
                            _ => d.clone(),
                        };
                        lin(&x, ratio, &dd, coef as f32)?
                    };
                    hist.push(d, h);
                    next
                }
                SamplerKind::DpmPpSde => {
                    if sigma_next == 0.0 {
                        euler(&x, &d, sigma, sigma_next)?
                    } else {
                        // In float32 through t = −ln σ as diffusers/k-diffusion: the Brownian
                        // tree is queried at these exact σs, and W moves by O(sqrt(Δσ)) for
                        // an ulp of difference.
                        let (t, t_next) = (-sigma.ln(), -sigma_next.ln());
                        let s_mid = t + (t_next - t) * 0.5;
                        let (from, sigma_s, to) = ((-t).exp(), (-s_mid).exp(), (-t_next).exp());
                        let (sd, su) = ancestral(from, sigma_s);
                        let z = noise.sde(from, sigma_s, sigma_min, sigma_max)?;
                        let x2 = add_scaled(&exp_step(&x, &d, from, sd)?, &z, su)?;
                        let d2 = model(&x2, sigma_s, self.timestep_for(sigma_s))?;
                        // k-diffusion mixes (1 − 1/2r)·D + 1/2r·D₂; with r = ½ that is D₂.
                        let (sd, su) = ancestral(from, to);
                        let z = noise.sde(from, to, sigma_min, sigma_max)?;
                        add_scaled(&exp_step(&x, &d2, from, sd)?, &z, su)?
                    }
                }
                SamplerKind::DpmPp2mSde | SamplerKind::DpmPp2mSdeHeun => {
                    let next = if sigma_next == 0.0 {
                        if noise.sde == SdeNoise::Gaussian {
                            // diffusers draws its noise on the last step too.
                            noise.gaussian()?;
                        }
                        d.clone()
                    } else {
                        let h = log_step(sigma, sigma_next);
                        let ratio = (sigma_next as f64 / sigma as f64) * (-h).exp();
                        let coef = -(-2.0 * h).exp_m1();
                        let mut next = lin(&x, ratio as f32, &d, coef as f32)?;
                        if let (Some(old), Some(h_last)) = (&hist.d1, hist.h1) {
                            let r = h_last / h;
                            let diff = minus(&d, old)?;
                            let w = diffusers::sde_second_order_weight(self.kind, coef, h);
                            next = add_scaled(&next, &diff, (w / r) as f32)?;
                        }
                        let z = noise.sde(sigma, sigma_next, sigma_min, sigma_max)?;
                        let amp = sigma_next as f64 * coef.sqrt();
                        add_scaled(&next, &z, amp as f32)?
                    };
                    let h = log_step(sigma, sigma_next);
                    hist.push(d, h);
                    next
                }
                SamplerKind::DpmPp3mSde => {
                    if sigma_next == 0.0 {
                        d.clone()
                    } else {
                        let h = log_step(sigma, sigma_next);
                        let h_eta = 2.0 * h;
                        let mut next =
                            lin(&x, (-h_eta).exp() as f32, &d, (-(-h_eta).exp_m1()) as f32)?;
                        let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
                        match (&hist.d1, &hist.d2, hist.h1, hist.h2) {
                            (Some(d1), Some(d2), Some(h1), Some(h2)) => {
                                let r0 = h1 / h;
                                let r1 = h2 / h;
                                let d1_0 = slope(&d, d1, r0 as f32)?;
                                let d1_1 = slope(d1, d2, r1 as f32)?;
                                let diff = minus(&d1_0, &d1_1)?;
                                let dd1 = add_scaled(&d1_0, &diff, (r0 / (r0 + r1)) as f32)?;
                                let dd2 = scaled(&diff, (1.0 / (r0 + r1)) as f32)?;
                                let phi_3 = phi_2 / h_eta - 0.5;
                                next = add_scaled(&next, &dd1, phi_2 as f32)?;
                                next = add_scaled(&next, &dd2, -phi_3 as f32)?;
                            }
                            (Some(d1), _, Some(h1), _) => {
                                let r = h1 / h;
                                let dd = slope(&d, d1, r as f32)?;
                                next = add_scaled(&next, &dd, phi_2 as f32)?;
                            }
                            _ => {}
                        }
                        let z = noise.sde(sigma, sigma_next, sigma_min, sigma_max)?;
                        let amp = sigma_next as f64 * (-(-2.0 * h).exp_m1()).sqrt();
                        let next = add_scaled(&next, &z, amp as f32)?;
                        hist.push(d.clone(), h);
                        next
                    }
                }
                SamplerKind::Ddim => match &self.ddim_targets {
                    Some(targets) => {
                        let to = targets[start + i];
                        let landed = euler(&x, &d, sigma, to)?;
                        self.ddim_reread(landed, to, sigma_next, i + 1 == n)?
                    }
                    None => euler(&x, &d, sigma, sigma_next)?,
                },
                SamplerKind::UniPc => unipc.step(&x, d, s, i, n)?,
                SamplerKind::Lms => extra.lms(&x, &d, s, i)?,
                SamplerKind::Pndm => self.plms_step(&mut extra, &x, &d, start, i, model)?,
                SamplerKind::DpmPp2s => {
                    extra.dpmpp_2s(&x, d, s, i, singlestep_orders[start + i])?
                }
                SamplerKind::DpmPp2sAncestral
                | SamplerKind::DpmFast
                | SamplerKind::DpmAdaptive
                | SamplerKind::Restart
                | SamplerKind::DdimCfgPp => {
                    // Run by `kdiffusion::run` above.
                    return Err(SamplingError::Unsupported(format!(
                        "{} has its own sampling loop",
                        self.kind.name()
                    ))
                    .into());
                }
                SamplerKind::Lcm => {
                    if i + 1 == n {
                        d
                    } else {
                        let z = noise.gaussian()?;
                        add_scaled(&d, &z, sigma_next)?
                    }
                }
            };
            on_step(StepInfo {
                step: i + 1,
                steps: n,
                x: &x,
                sigma: sigma_next,
            })?;
        }
        Ok(self.ddim_finish(x, s[n])?)
    }
}

/// Previous data predictions and log-σ step sizes of the multistep samplers.
#[derive(Default)]
struct History {
    d1: Option<Tensor>,
    d2: Option<Tensor>,
    h1: Option<f64>,
    h2: Option<f64>,
}

impl History {
    fn push(&mut self, d: Tensor, h: f64) {
        self.d2 = self.d1.take();
        self.d1 = Some(d);
        self.h2 = self.h1.take();
        self.h1 = Some(h);
    }
}

/// UniPC (bh2, predict x0, order 2, lower order at the start and the last step): diffusers'
/// `UniPCMultistepScheduler.step`, written for k-space x (λ = −ln σ).
#[derive(Default)]
struct UniPcState {
    /// Data predictions of the last two steps, newest last.
    outputs: Vec<Tensor>,
    last_sample: Option<Tensor>,
    /// Order used by the last predictor, which the corrector repeats.
    last_order: usize,
    lower_order_nums: usize,
}

impl UniPcState {
    fn step(
        &mut self,
        x: &Tensor,
        d: Tensor,
        sigmas: &[f32],
        i: usize,
        n: usize,
    ) -> Result<Tensor, SamplingError> {
        let lambda = |k: usize| -(sigmas[k] as f64).ln();
        let mut x = x.clone();
        if i > 0 {
            if let (Some(last), Some(m0)) = (&self.last_sample, self.outputs.last()) {
                // Corrector UniC from σ_{i−1} to σ_i with the new model output.
                let h = lambda(i) - lambda(i - 1);
                let hh = -h;
                let h_phi_1 = hh.exp_m1();
                let b_h = hh.exp_m1();
                let ratio = sigmas[i] as f64 / sigmas[i - 1] as f64;
                let base = lin(last, ratio as f32, m0, -h_phi_1 as f32)?;
                let d1_t = (&d - m0)?;
                x = if self.last_order >= 2 && self.outputs.len() >= 2 && i >= 2 {
                    let m1 = &self.outputs[self.outputs.len() - 2];
                    let rk = (lambda(i - 2) - lambda(i - 1)) / h;
                    let d1 = mul_scalar(&(m1 - m0)?, (1.0 / rk) as f32)?;
                    let h_phi_k = h_phi_1 / hh - 1.0;
                    let b1 = h_phi_k / b_h;
                    let h_phi_k2 = h_phi_k / hh - 0.5;
                    let b2 = h_phi_k2 * 2.0 / b_h;
                    // Solve [[1, 1], [rk, 1]]·ρ = [b1, b2].
                    let rho0 = (b1 - b2) / (1.0 - rk);
                    let rho1 = b1 - rho0;
                    let corr = lin(&d1, rho0 as f32, &d1_t, rho1 as f32)?;
                    add_scaled(&base, &corr, -b_h as f32)?
                } else {
                    add_scaled(&base, &d1_t, (-b_h * 0.5) as f32)?
                };
            }
        }
        self.outputs.push(d);
        if self.outputs.len() > 2 {
            self.outputs.remove(0);
        }
        let order = 2.min(n - i).min(self.lower_order_nums + 1);
        self.last_order = order;
        self.last_sample = Some(x.clone());
        let m0 = &self.outputs[self.outputs.len() - 1];
        let next = if sigmas[i + 1] == 0.0 {
            m0.clone()
        } else {
            let h = lambda(i + 1) - lambda(i);
            let hh = -h;
            let h_phi_1 = hh.exp_m1();
            let b_h = hh.exp_m1();
            let ratio = sigmas[i + 1] as f64 / sigmas[i] as f64;
            let base = lin(&x, ratio as f32, m0, -h_phi_1 as f32)?;
            if order >= 2 && self.outputs.len() >= 2 && i >= 1 {
                let m1 = &self.outputs[0];
                let rk = (lambda(i - 1) - lambda(i)) / h;
                let d1 = mul_scalar(&(m1 - m0)?, (1.0 / rk) as f32)?;
                add_scaled(&base, &d1, (-b_h * 0.5) as f32)?
            } else {
                base
            }
        };
        if self.lower_order_nums < 2 {
            self.lower_order_nums += 1;
        }
        Ok(next)
    }
}

/// The Euler step of k-diffusion: `x + (x − D)/σ · (σ_next − σ)`.
fn euler(x: &Tensor, d: &Tensor, sigma: f32, sigma_next: f32) -> Result<Tensor, SamplingError> {
    let deriv = div_scalar(&(x - d)?, sigma)?;
    add_scaled(x, &deriv, sigma_next - sigma)
}

/// The exponential-integrator step to σ_to used by DPM++ SDE:
/// `(σ_to/σ)·x − expm1(ln(σ_to/σ))·D`.
fn exp_step(x: &Tensor, d: &Tensor, sigma: f32, sigma_to: f32) -> Result<Tensor, SamplingError> {
    let ratio = sigma_to as f64 / sigma as f64;
    let coef = -(ratio.ln()).exp_m1();
    lin(x, ratio as f32, d, coef as f32)
}

/// `(σ_down, σ_up)` of an ancestral step with η = 1 (k-diffusion `get_ancestral_step`).
fn ancestral(sigma: f32, sigma_next: f32) -> (f32, f32) {
    if sigma_next == 0.0 {
        return (0.0, 0.0);
    }
    let (s, n) = (sigma as f64, sigma_next as f64);
    let up = n.min((n * n * (s * s - n * n) / (s * s)).max(0.0).sqrt());
    let down = (n * n - up * up).max(0.0).sqrt();
    (down as f32, up as f32)
}

/// The geometric midpoint of two σs, as diffusers' `log().lerp(…, 0.5).exp()` in float32.
fn log_midpoint(sigma: f32, sigma_to: f32) -> f32 {
    let (a, b) = (sigma.ln(), sigma_to.ln());
    (b - (b - a) * 0.5).exp()
}

/// `h = ln(σ/σ_next)` (∞ for σ_next = 0).
fn log_step(sigma: f32, sigma_next: f32) -> f64 {
    (sigma as f64).ln() - (sigma_next as f64).ln()
}

/// `sqrt(σ²+1)`: a VP-space unit noise in k-space.
fn vp_unit(sigma: f32) -> f32 {
    (sigma * sigma + 1.0).sqrt()
}

/// `(x − d)/σ`: the k-diffusion derivative (also used for divided differences).
fn slope(x: &Tensor, d: &Tensor, sigma: f32) -> Result<Tensor, SamplingError> {
    Ok(div_scalar(&(x - d)?, sigma)?)
}

/// `a − b`.
fn minus(a: &Tensor, b: &Tensor) -> Result<Tensor, SamplingError> {
    Ok((a - b)?)
}

/// `x · s`.
fn scaled(x: &Tensor, s: f32) -> Result<Tensor, SamplingError> {
    Ok(mul_scalar(x, s)?)
}

/// `x` as float32.
fn f32_of(x: &Tensor) -> Result<Tensor, SamplingError> {
    Ok(x.to_dtype(DType::F32)?)
}

/// `a·x + b·y`.
fn lin(x: &Tensor, a: f32, y: &Tensor, b: f32) -> Result<Tensor, SamplingError> {
    Ok((mul_scalar(x, a)? + mul_scalar(y, b)?)?)
}

/// `x + s·y`.
fn add_scaled(x: &Tensor, y: &Tensor, s: f32) -> Result<Tensor, SamplingError> {
    Ok((x + mul_scalar(y, s)?)?)
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

/// Euler-family diffusers spacing: (timesteps as float32, σs + final 0).
fn euler_spacing(
    cfg: &ScheduleConfig,
    train: &[f32],
    steps: usize,
) -> Result<(Vec<f64>, Vec<f32>), SamplingError> {
    let spaced = cfg.spaced_timesteps(steps)?;
    let mut sigmas: Vec<f32> = spaced
        .iter()
        .map(|&t| interp_table(t, train) as f32)
        .collect();
    sigmas.push(0.0);
    Ok((spaced.iter().map(|&t| t as f32 as f64).collect(), sigmas))
}

/// DPM-Solver/UniPC spacing: N+1 points minus the last (leading, linspace), integer
/// timesteps, σs + final 0.
fn multistep_spacing(
    cfg: &ScheduleConfig,
    train: &[f32],
    steps: usize,
) -> Result<(Vec<f64>, Vec<f32>), SamplingError> {
    let n_train = cfg.num_train_timesteps;
    let ts: Vec<f64> = match cfg.timestep_spacing {
        TimestepSpacing::Leading => {
            let ratio = n_train / (steps + 1);
            (1..=steps)
                .rev()
                .map(|i| (i * ratio + cfg.steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Linspace => numpy_linspace_f64(0.0, (n_train - 1) as f64, steps + 1)
            .iter()
            .rev()
            .take(steps)
            .map(|t| t.round_ties_even())
            .collect(),
        TimestepSpacing::Trailing => cfg.spaced_timesteps(steps)?,
    };
    let mut sigmas: Vec<f32> = ts.iter().map(|&t| interp_table(t, train) as f32).collect();
    sigmas.push(0.0);
    Ok((ts, sigmas))
}

/// (timesteps, σ per step + final 0, σ each step lands on).
type DdimPlan = (Vec<f64>, Vec<f32>, Vec<f32>);

/// diffusers DDIM: integer timesteps (linspace rounded), σ(t) per step, and the σ each step
/// lands on, σ(t − 1000//N), or σ(ᾱ_0) past t = 0 (`set_alpha_to_one` false).
fn ddim_spacing(
    cfg: &ScheduleConfig,
    train: &[f32],
    steps: usize,
) -> Result<DdimPlan, SamplingError> {
    let ts: Vec<f64> = match cfg.timestep_spacing {
        TimestepSpacing::Linspace => cfg
            .spaced_timesteps(steps)?
            .into_iter()
            .map(|t| t.round_ties_even())
            .collect(),
        _ => cfg.spaced_timesteps(steps)?,
    };
    let stride = (cfg.num_train_timesteps / steps) as i64;
    let at = |t: i64| -> Result<f32, SamplingError> {
        usize::try_from(t)
            .ok()
            .and_then(|i| train.get(i).copied())
            .ok_or_else(|| {
                SamplingError::InvalidConfig(format!("timestep {t} outside the training table"))
            })
    };
    let mut sigmas = Vec::with_capacity(steps + 1);
    let mut targets = Vec::with_capacity(steps);
    for &t in &ts {
        let t = t as i64;
        sigmas.push(at(t)?);
        let prev = t - stride;
        targets.push(if prev >= 0 { at(prev)? } else { train[0] });
    }
    sigmas.push(0.0);
    Ok((ts, sigmas, targets))
}

/// diffusers `LCMScheduler.set_timesteps` (50 original steps, strength 1): every 20th
/// training step from 999 down, thinned evenly to `steps`.
fn lcm_timesteps(n_train: usize, steps: usize) -> Result<Vec<f64>, SamplingError> {
    const ORIGINAL_STEPS: usize = 50;
    if steps > ORIGINAL_STEPS {
        return Err(SamplingError::Unsupported(format!(
            "lcm on a diffusers spacing takes at most {ORIGINAL_STEPS} steps (got {steps}); use \
             fewer steps or the sgm_uniform schedule"
        )));
    }
    let k = n_train / ORIGINAL_STEPS;
    let origin: Vec<usize> = (1..=ORIGINAL_STEPS).rev().map(|i| i * k - 1).collect();
    Ok(numpy_linspace_f64(0.0, ORIGINAL_STEPS as f64, steps + 1)
        .into_iter()
        .take(steps)
        .map(|v| origin[v.floor() as usize] as f64)
        .collect())
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
            SamplerKind::parse("DPM++ 2M SDE").unwrap(),
            SamplerKind::DpmPp2mSde
        );
        assert_eq!(SamplerKind::parse("UniPC").unwrap(), SamplerKind::UniPc);
        assert_eq!(
            SamplerKind::parse_with_schedule("dpmpp_2m_karras").unwrap(),
            (SamplerKind::DpmPp2m, SigmaSchedule::Karras)
        );
        assert_eq!(
            SamplerKind::parse_with_schedule("euler_a_sgm_uniform").unwrap(),
            (SamplerKind::EulerAncestral, SigmaSchedule::SgmUniform)
        );
        assert_eq!(
            SamplerKind::parse_with_schedule("dpmpp_2m_sde").unwrap(),
            (SamplerKind::DpmPp2mSde, SigmaSchedule::Default)
        );
        for k in SamplerKind::ALL {
            assert_eq!(SamplerKind::parse(k.name()).unwrap(), k);
            assert_eq!(SamplerKind::parse(k.label()).unwrap(), k, "{}", k.label());
        }
        let err = SamplerKind::parse("nosuch").unwrap_err().to_string();
        assert!(
            err.contains("nosuch") && err.contains("dpmpp_3m_sde"),
            "{err}"
        );
    }

    /// v-prediction gives the same D as ε-prediction when v is the v of the same (x0, ε):
    /// `v = α·ε − σ_vp·x0` with α = 1/sqrt(σ²+1), σ_vp = σ·α, for x = x0 + σ·ε.
    #[test]
    fn v_prediction_matches_epsilon() {
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[0.3f32, -1.2, 2.0, 0.0], &dev).unwrap();
        let eps = Tensor::new(&[1.0f32, 0.5, -0.7, 2.2], &dev).unwrap();
        for sigma in [0.03f32, 1.0, 14.6, 4096.0] {
            let x = (&x0 + eps.affine(sigma as f64, 0.0).unwrap()).unwrap();
            let a = 1.0 / ((sigma as f64).powi(2) + 1.0).sqrt();
            let v =
                (eps.affine(a, 0.0).unwrap() - x0.affine(sigma as f64 * a, 0.0).unwrap()).unwrap();
            for lcm in [false, true] {
                let e = ModelSampling {
                    prediction: PredictionType::Epsilon,
                    lcm,
                };
                let vp = ModelSampling {
                    prediction: PredictionType::VPrediction,
                    lcm,
                };
                let de = e.denoised(&eps, &x, sigma, 500.0).unwrap();
                let dv = vp.denoised(&v, &x, sigma, 500.0).unwrap();
                let diff = max_abs(&(de - dv).unwrap());
                // Relative to |x| (σ·ε up to 1e4 at σ = 4096).
                assert!(diff <= 1e-6 * (1.0 + 2.2 * sigma), "σ {sigma}: {diff}");
            }
        }
    }

    /// max |t|.
    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Every sampler on every schedule of a v-pred zero-terminal-SNR config (σ_max 4096)
    /// stays finite on a fake model, and the first σ is 4096 for trailing spacing.
    #[test]
    fn ztsnr_v_pred_runs_finite() {
        let dev = Device::Cpu;
        let cfg = ScheduleConfig::sdxl_v_pred_ztsnr();
        for kind in SamplerKind::ALL {
            for schedule in SigmaSchedule::ALL {
                let s = Sampler::new(kind, schedule, &cfg, 5).unwrap();
                if schedule == SigmaSchedule::Trailing && kind != SamplerKind::Lcm {
                    assert!((s.sigmas()[0] - 4096.0).abs() < 1.0, "{kind:?}");
                }
                let mut rngs = vec![ImageRng::new(super::super::NoiseKind::Cpu, 0)];
                let noise = rngs[0].randn_tensor(&[1, 4, 2, 2], &dev).unwrap();
                let x = s.init_latents(&noise).unwrap();
                let mut src =
                    SamplerNoise::new(&mut rngs, &[0], &[4, 2, 2], &dev, SdeNoise::Gaussian)
                        .unwrap();
                let ms = s.model_sampling();
                let mut model = |x: &Tensor, sigma: f32, t: f64| {
                    let v = ms.scale_input(x, sigma)?.affine(0.5, 0.01)?;
                    Ok::<_, SamplingError>(ms.denoised(&v, x, sigma, t)?)
                };
                let out = s
                    .sample(x, 0, &mut src, &mut model, &mut |_| Ok(()))
                    .unwrap();
                let m = max_abs(&out);
                assert!(m.is_finite(), "{kind:?} {schedule:?}");
            }
        }
    }

    /// An img2img start past the schedule is refused instead of indexing out of range.
    #[test]
    fn start_past_the_end_is_refused() {
        let s = Sampler::new(
            SamplerKind::Euler,
            SigmaSchedule::Karras,
            &ScheduleConfig::sdxl(),
            4,
        )
        .unwrap();
        let x = Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(s.noised_latents(&x, &x, 4).is_err());
        assert!(s.noised_latents(&x, &x, 3).is_ok());
    }

    /// diffusers LCM timesteps for 4 and 8 steps (`LCMScheduler.set_timesteps`).
    #[test]
    fn lcm_timesteps_match_diffusers() {
        assert_eq!(
            lcm_timesteps(1000, 4).unwrap(),
            vec![999.0, 759.0, 499.0, 259.0]
        );
        assert_eq!(
            lcm_timesteps(1000, 8).unwrap(),
            vec![999.0, 879.0, 759.0, 639.0, 499.0, 379.0, 259.0, 139.0]
        );
        assert!(lcm_timesteps(1000, 51).is_err());
    }
}
