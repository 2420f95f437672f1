//! SDXL model code in the native single-file (LDM/sgm) layout: CLIP ViT-L, OpenCLIP ViT-bigG,
//! the UNet and the VAE, built on candle-core/candle-nn. Every dimension is read from the
//! tensor shapes of the checkpoint, never hard-coded, so a tiny SDXL-shaped test model loads
//! through the same code as a 6.9 GB one.
//!
//! This is the middle layer: it depends on `weights` (shape maps, `VarBuilder`s over files)
//! and on nothing above it; `lora` patches the tensors these networks are built from. The key
//! layout each network reads is described in docs/formats.md, *Single-file SDXL checkpoints*.

pub mod attention;
pub mod clip;
mod common_te_vae;
mod error;
pub mod unet;
pub mod unet_blocks;
pub mod vae;
pub mod vae_names;

/// Re-exported from the weights layer, where the type now lives, so that
/// `crate::model::ShapeMap` and `crate::model::count_indexed` keep working.
pub use crate::weights::{count_indexed, ShapeMap};
pub use error::{shape_of, ModelError};
