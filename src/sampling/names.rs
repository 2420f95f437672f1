//! The names users give samplers and schedules, and the schedule each sampler gets when none
//! is named. One vocabulary for every entry point: the job API (`scheduler` / `schedule`
//! fields) and the `sdxl-worker bench --sampler` flag both read names through
//! [`SamplerLabel`] and combine them with [`choose`], so a name means the same run everywhere.
//!
//! [`SamplerKind::parse_with_schedule`] is a different, narrower reader: the fixture names of
//! the parity tests, where a name without a schedule suffix means the checkpoint's diffusers
//! spacing ([`SigmaSchedule::Default`]), as in the reference files.

use std::str::FromStr;

use super::{SamplerKind, SamplingError, SigmaSchedule};

use SamplerKind as S;
use SigmaSchedule as Sch;

/// The schedule used when a request names none: A1111's "Automatic" choice for the sampler
/// (Karras for DPM++ 2M / SDE and DPM2, exponential for the multistep SDE samplers), LCM on
/// `sgm_uniform` as ComfyUI recommends, DDIM on the checkpoint's own diffusers spacing (as
/// A1111's and diffusers' DDIM), and ComfyUI's `normal` otherwise. See docs/sampling.md,
/// *Default schedule per sampler*.
pub fn default_schedule(sampler: SamplerKind) -> SigmaSchedule {
    match sampler {
        S::DpmPp2m | S::DpmPpSde | S::Dpm2 | S::Dpm2Ancestral => Sch::Karras,
        S::DpmPp2mSde | S::DpmPp3mSde => Sch::Exponential,
        S::Ddim => Sch::Default,
        S::Lcm => Sch::SgmUniform,
        S::Euler | S::EulerAncestral | S::Heun | S::UniPc => Sch::Normal,
        // A1111's LMS has no preferred schedule (its native one is `normal`); PLMS and DPM++
        // 2S exist as diffusers classes only, on their own spacing; DPM++ 2M SDE Heun as
        // A1111's DPM++ 2M SDE.
        S::Lms => Sch::Normal,
        S::Pndm | S::DpmPp2s => Sch::Default,
        S::DpmPp2mSdeHeun => Sch::Exponential,
        S::DpmPp2sAncestral | S::Restart => Sch::Karras,
        S::DdimCfgPp => Sch::Default,
        // They integrate between the schedule's first and smallest σ: `normal` spans the
        // model's whole range, as A1111 runs them.
        S::DpmFast | S::DpmAdaptive => Sch::Normal,
    }
}

/// Sampler labels (compared case-insensitively, after trimming): A1111 labels, also the older
/// ones that carry the schedule ("DPM++ 2M Karras"), ComfyUI names, k-diffusion `k_` names
/// and diffusers class names. The schedule is `Some` only where the label carries one.
pub const SAMPLER_LABELS: &[(&str, SamplerKind, Option<SigmaSchedule>)] = &[
    ("euler", S::Euler, None),
    // worker-sdxl's `K_EULER`: `EulerDiscreteScheduler.from_config(pipeline config)`, i.e.
    // the checkpoint's own spacing (`leading` for SDXL), not A1111's `normal`.
    ("k_euler", S::Euler, Some(Sch::Default)),
    ("eulerdiscretescheduler", S::Euler, None),
    ("euler karras", S::Euler, Some(Sch::Karras)),
    ("euler a", S::EulerAncestral, None),
    ("euler_a", S::EulerAncestral, None),
    ("euler_ancestral", S::EulerAncestral, None),
    // worker-sdxl's `K_EULER_ANCESTRAL`: the diffusers class on the checkpoint's spacing.
    ("k_euler_ancestral", S::EulerAncestral, Some(Sch::Default)),
    ("k_euler_a", S::EulerAncestral, None),
    ("eulerancestraldiscretescheduler", S::EulerAncestral, None),
    ("heun", S::Heun, None),
    ("k_heun", S::Heun, None),
    ("heundiscretescheduler", S::Heun, None),
    ("heun karras", S::Heun, Some(Sch::Karras)),
    ("dpm2", S::Dpm2, None),
    ("dpm_2", S::Dpm2, None),
    ("k_dpm_2", S::Dpm2, None),
    ("kdpm2discretescheduler", S::Dpm2, None),
    ("dpm2 karras", S::Dpm2, Some(Sch::Karras)),
    ("dpm2 a", S::Dpm2Ancestral, None),
    ("dpm_2_a", S::Dpm2Ancestral, None),
    ("dpm_2_ancestral", S::Dpm2Ancestral, None),
    ("k_dpm_2_a", S::Dpm2Ancestral, None),
    ("kdpm2ancestraldiscretescheduler", S::Dpm2Ancestral, None),
    ("dpm2 a karras", S::Dpm2Ancestral, Some(Sch::Karras)),
    ("dpm++ 2m", S::DpmPp2m, None),
    ("dpmpp_2m", S::DpmPp2m, None),
    ("k_dpmpp_2m", S::DpmPp2m, None),
    ("dpm++ 2m karras", S::DpmPp2m, Some(Sch::Karras)),
    ("dpmpp_2m_karras", S::DpmPp2m, Some(Sch::Karras)),
    // worker-sdxl's `DPMSolverMultistep`: `DPMSolverMultistepScheduler.from_config` with no
    // options, i.e. DPM++ 2M on the checkpoint's spacing (no Karras σs).
    ("dpmsolvermultistep", S::DpmPp2m, Some(Sch::Default)),
    ("dpmsolvermultistepscheduler", S::DpmPp2m, None),
    ("dpm++ sde", S::DpmPpSde, None),
    ("dpmpp_sde", S::DpmPpSde, None),
    ("k_dpmpp_sde", S::DpmPpSde, None),
    ("dpmsolversdescheduler", S::DpmPpSde, None),
    ("dpm++ sde karras", S::DpmPpSde, Some(Sch::Karras)),
    ("dpmpp_sde_karras", S::DpmPpSde, Some(Sch::Karras)),
    ("dpm++ 2m sde", S::DpmPp2mSde, None),
    ("dpmpp_2m_sde", S::DpmPp2mSde, None),
    ("k_dpmpp_2m_sde", S::DpmPp2mSde, None),
    ("dpm++ 2m sde karras", S::DpmPp2mSde, Some(Sch::Karras)),
    ("dpmpp_2m_sde_karras", S::DpmPp2mSde, Some(Sch::Karras)),
    (
        "dpm++ 2m sde exponential",
        S::DpmPp2mSde,
        Some(Sch::Exponential),
    ),
    ("dpm++ 3m sde", S::DpmPp3mSde, None),
    ("dpmpp_3m_sde", S::DpmPp3mSde, None),
    ("k_dpmpp_3m_sde", S::DpmPp3mSde, None),
    ("dpm++ 3m sde karras", S::DpmPp3mSde, Some(Sch::Karras)),
    ("dpmpp_3m_sde_karras", S::DpmPp3mSde, Some(Sch::Karras)),
    (
        "dpm++ 3m sde exponential",
        S::DpmPp3mSde,
        Some(Sch::Exponential),
    ),
    ("ddim", S::Ddim, None),
    ("ddimscheduler", S::Ddim, None),
    ("unipc", S::UniPc, None),
    ("uni_pc", S::UniPc, None),
    ("uni_pc_bh2", S::UniPc, None),
    ("unipcmultistepscheduler", S::UniPc, None),
    ("lcm", S::Lcm, None),
    ("lcmscheduler", S::Lcm, None),
    ("lms", S::Lms, None),
    ("k_lms", S::Lms, None),
    ("lms karras", S::Lms, Some(Sch::Karras)),
    ("k_lms_ka", S::Lms, Some(Sch::Karras)),
    ("lmsdiscretescheduler", S::Lms, None),
    // worker-sdxl's `KLMS`: `LMSDiscreteScheduler` on the checkpoint's spacing.
    ("klms", S::Lms, Some(Sch::Default)),
    ("plms", S::Pndm, None),
    ("pndm", S::Pndm, None),
    ("pndmscheduler", S::Pndm, None),
    ("dpm++ 2s", S::DpmPp2s, None),
    ("dpmpp_2s", S::DpmPp2s, None),
    ("k_dpmpp_2s", S::DpmPp2s, None),
    ("dpm++ 2s karras", S::DpmPp2s, Some(Sch::Karras)),
    ("dpmsolversinglestepscheduler", S::DpmPp2s, None),
    // worker-sdxl's `DPMSolverSinglestep`: the class's defaults (order 2, dpmsolver++).
    ("dpmsolversinglestep", S::DpmPp2s, Some(Sch::Default)),
    ("dpm++ 2m sde heun", S::DpmPp2mSdeHeun, None),
    ("dpmpp_2m_sde_heun", S::DpmPp2mSdeHeun, None),
    ("k_dpmpp_2m_sde_heun", S::DpmPp2mSdeHeun, None),
    (
        "dpm++ 2m sde heun karras",
        S::DpmPp2mSdeHeun,
        Some(Sch::Karras),
    ),
    (
        "k_dpmpp_2m_sde_heun_ka",
        S::DpmPp2mSdeHeun,
        Some(Sch::Karras),
    ),
    (
        "dpm++ 2m sde heun exponential",
        S::DpmPp2mSdeHeun,
        Some(Sch::Exponential),
    ),
    (
        "k_dpmpp_2m_sde_heun_exp",
        S::DpmPp2mSdeHeun,
        Some(Sch::Exponential),
    ),
    ("dpm++ 2s a", S::DpmPp2sAncestral, None),
    ("dpmpp_2s_a", S::DpmPp2sAncestral, None),
    ("dpmpp_2s_ancestral", S::DpmPp2sAncestral, None),
    ("k_dpmpp_2s_a", S::DpmPp2sAncestral, None),
    ("k_dpmpp_2s_ancestral", S::DpmPp2sAncestral, None),
    ("dpm2sa", S::DpmPp2sAncestral, None),
    ("dpm++ 2s a karras", S::DpmPp2sAncestral, Some(Sch::Karras)),
    ("dpmpp_2s_a_karras", S::DpmPp2sAncestral, Some(Sch::Karras)),
    ("k_dpmpp_2s_a_ka", S::DpmPp2sAncestral, Some(Sch::Karras)),
    ("dpm2sakarras", S::DpmPp2sAncestral, Some(Sch::Karras)),
    ("dpm fast", S::DpmFast, None),
    ("dpm_fast", S::DpmFast, None),
    ("k_dpm_fast", S::DpmFast, None),
    ("dpmfast", S::DpmFast, None),
    ("dpm adaptive", S::DpmAdaptive, None),
    ("dpm_adaptive", S::DpmAdaptive, None),
    ("k_dpm_ad", S::DpmAdaptive, None),
    ("k_dpm_adaptive", S::DpmAdaptive, None),
    ("dpmadaptive", S::DpmAdaptive, None),
    ("restart", S::Restart, None),
    ("ddim cfg++", S::DdimCfgPp, None),
    ("ddim_cfgpp", S::DdimCfgPp, None),
    ("ddimcfgpp", S::DdimCfgPp, None),
];

/// The sampler labels as error messages list them.
pub const SAMPLER_LABELS_ALLOWED: &str = "Euler, Euler a, LMS, Heun, DPM2, DPM2 a, DPM++ 2S a, \
     DPM++ 2M, DPM++ SDE, DPM++ 2M SDE, DPM++ 2M SDE Heun, DPM++ 3M SDE, DPM fast, DPM adaptive, \
     Restart, DDIM, DDIM CFG++, PLMS, UniPC, LCM, DPM++ 2S (A1111 labels, optionally with \
     Karras/Exponential; or ComfyUI names euler, euler_ancestral, heun, dpm_2, dpm_2_ancestral, \
     dpmpp_2m, dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde, ddim, uni_pc, lcm, lms, dpmpp_2m_sde_heun, \
     dpmpp_2s_ancestral, dpm_fast, dpm_adaptive; or worker-sdxl names PNDM, KLMS, DDIM, K_EULER, \
     K_EULER_ANCESTRAL, DPMSolverMultistep, DPMSolverSinglestep; or Civitai names DPM2SA, \
     DPM2SAKarras, DPMFast, DPMAdaptive)";

/// Schedule labels: ComfyUI scheduler names, A1111 "Schedule type" labels and diffusers'
/// timestep spacings. "Automatic" (`None`) keeps the sampler's default. A name ComfyUI and
/// A1111 share (`normal`, `simple`, `sgm_uniform`) means ComfyUI's schedule here; A1111's
/// are `a1111_*` (and [`SigmaSchedule::parse_a1111`] reads A1111's own names).
pub const SCHEDULE_LABELS: &[(&str, Option<SigmaSchedule>)] = &[
    ("automatic", None),
    ("default", Some(Sch::Default)),
    ("normal", Some(Sch::Normal)),
    ("uniform", Some(Sch::Uniform)),
    ("karras", Some(Sch::Karras)),
    ("exponential", Some(Sch::Exponential)),
    ("sgm_uniform", Some(Sch::SgmUniform)),
    ("sgm uniform", Some(Sch::SgmUniform)),
    ("simple", Some(Sch::Simple)),
    ("ddim_uniform", Some(Sch::DdimUniform)),
    ("ddim", Some(Sch::DdimUniform)),
    ("beta", Some(Sch::Beta)),
    ("leading", Some(Sch::Leading)),
    ("trailing", Some(Sch::Trailing)),
    ("linspace", Some(Sch::Linspace)),
    ("a1111_normal", Some(Sch::A1111Normal)),
    ("a1111_sgm_uniform", Some(Sch::A1111SgmUniform)),
    ("a1111_simple", Some(Sch::A1111Simple)),
    ("a1111_ddim", Some(Sch::A1111Ddim)),
    ("polyexponential", Some(Sch::Polyexponential)),
    ("kl_optimal", Some(Sch::KlOptimal)),
    ("kl optimal", Some(Sch::KlOptimal)),
    ("align_your_steps", Some(Sch::AlignYourSteps)),
    ("align your steps", Some(Sch::AlignYourSteps)),
];

/// The schedule labels as error messages list them.
pub const SCHEDULE_LABELS_ALLOWED: &str = "automatic, normal, karras, exponential, sgm_uniform, \
     simple, ddim_uniform, beta, leading, trailing, linspace, uniform, a1111_normal, \
     a1111_sgm_uniform, a1111_simple, a1111_ddim, polyexponential, kl_optimal, align_your_steps";

/// How labels are compared: surrounding white space and case do not count.
pub fn label_key(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

/// A sampler as a user names it: the sampler, and the schedule when the label carries one
/// ("DPM++ 2M Karras").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplerLabel {
    pub sampler: SamplerKind,
    pub schedule: Option<SigmaSchedule>,
}

impl FromStr for SamplerLabel {
    type Err = SamplingError;

    /// Looks `label` up in [`SAMPLER_LABELS`].
    fn from_str(label: &str) -> Result<Self, Self::Err> {
        let key = label_key(label);
        SAMPLER_LABELS
            .iter()
            .find(|(l, _, _)| *l == key)
            .map(|&(_, sampler, schedule)| SamplerLabel { sampler, schedule })
            .ok_or_else(|| SamplingError::UnknownName {
                field: "sampler",
                value: label.to_string(),
                allowed: SAMPLER_LABELS_ALLOWED,
            })
    }
}

/// Reads a schedule label from [`SCHEDULE_LABELS`]; `Ok(None)` is "Automatic".
pub fn parse_schedule_label(label: &str) -> Result<Option<SigmaSchedule>, SamplingError> {
    let key = label_key(label);
    SCHEDULE_LABELS
        .iter()
        .find(|(l, _)| *l == key)
        .map(|&(_, s)| s)
        .ok_or_else(|| SamplingError::UnknownName {
            field: "schedule",
            value: label.to_string(),
            allowed: SCHEDULE_LABELS_ALLOWED,
        })
}

/// The sampler and schedule of a run: the named sampler (or `default_sampler`), then the
/// explicitly named schedule, else the one the sampler label carries, else the sampler's
/// [`default_schedule`].
pub fn choose(
    sampler: Option<SamplerLabel>,
    default_sampler: SamplerKind,
    schedule: Option<SigmaSchedule>,
) -> (SamplerKind, SigmaSchedule) {
    let kind = sampler.map_or(default_sampler, |l| l.sampler);
    let schedule = schedule
        .or(sampler.and_then(|l| l.schedule))
        .unwrap_or_else(|| default_schedule(kind));
    (kind, schedule)
}

/// Reads a sampler label with the schedule it implies (no separate schedule named), as the
/// job API would for a request that only sets `scheduler`.
pub fn parse_sampler_label(label: &str) -> Result<(SamplerKind, SigmaSchedule), SamplingError> {
    let l: SamplerLabel = label.parse()?;
    Ok(choose(Some(l), l.sampler, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_pick_their_schedule_or_the_samplers_default() {
        assert_eq!(
            parse_sampler_label("dpmpp_2m").unwrap(),
            (S::DpmPp2m, Sch::Karras)
        );
        assert_eq!(
            parse_sampler_label(" Euler A ").unwrap(),
            (S::EulerAncestral, Sch::Normal)
        );
        assert_eq!(
            parse_sampler_label("DPM++ 2M SDE Exponential").unwrap(),
            (S::DpmPp2mSde, Sch::Exponential)
        );
        let e = parse_sampler_label("no such sampler")
            .unwrap_err()
            .to_string();
        assert!(e.contains("DPM++ 2M"), "{e}");
        assert_eq!(parse_schedule_label("Automatic").unwrap(), None);
        assert!(parse_schedule_label("cosine").is_err());
        // An explicit schedule wins over the one a combined label carries.
        let karras = "dpm++ 2m karras".parse().ok();
        assert_eq!(
            choose(karras, S::Euler, Some(Sch::Beta)),
            (S::DpmPp2m, Sch::Beta)
        );
        assert_eq!(choose(None, S::Lcm, None), (S::Lcm, Sch::SgmUniform));
    }

    /// worker-sdxl's scheduler names mean its diffusers class built from the pipeline's own
    /// config: the checkpoint's spacing, no Karras σs.
    #[test]
    fn worker_sdxl_scheduler_names() {
        let d = Sch::Default;
        for (name, kind, schedule) in [
            ("PNDM", S::Pndm, d),
            ("KLMS", S::Lms, d),
            ("DDIM", S::Ddim, d),
            ("K_EULER", S::Euler, d),
            ("K_EULER_ANCESTRAL", S::EulerAncestral, d),
            ("DPMSolverMultistep", S::DpmPp2m, d),
            ("DPMSolverSinglestep", S::DpmPp2s, d),
            // A1111 labels of the same samplers keep A1111's defaults.
            ("LMS", S::Lms, Sch::Normal),
            ("LMS Karras", S::Lms, Sch::Karras),
            ("PLMS", S::Pndm, d),
            ("DPM++ 2M SDE Heun", S::DpmPp2mSdeHeun, Sch::Exponential),
            ("DPM++ 2S", S::DpmPp2s, d),
        ] {
            let got = parse_sampler_label(name).unwrap();
            assert_eq!(got, (kind, schedule), "{name}");
        }
        // Every sampler's A1111 label reads back as that sampler.
        for kind in SamplerKind::ALL {
            let l: SamplerLabel = kind.label().parse().unwrap();
            assert_eq!(l.sampler, kind, "{}", kind.label());
        }
    }
}
