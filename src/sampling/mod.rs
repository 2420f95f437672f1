//! Noise, noise schedules and samplers, matching diffusers' schedulers step for step.

pub mod rng;
