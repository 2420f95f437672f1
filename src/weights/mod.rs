//! Checkpoint files: a validated, memory-mapped safetensors reader, architecture detection
//! from tensor names and shapes, and candle `VarBuilder`s that read straight from the map.
//!
//! Only safetensors are ever opened: pickle-based formats (`.ckpt`, `.pt`, `.bin`) can run
//! code when loaded, so they are refused by content, whatever their file name says.
//!
//! This is the lowest of the three model layers: it reads files and headers and depends on no
//! other module of the crate. `model` builds networks from what it reads, `lora` patches them.
//! The file layouts it recognises are described in docs/formats.md.

mod backend;
pub mod detect;
mod error;
pub mod file;
pub mod layout;
mod shapes;
pub mod synthetic;

pub use detect::{detect, Architecture, Family, Prediction};
pub use error::WeightsError;
pub use file::{Checkpoint, StDtype, TensorInfo};
pub use shapes::{count_indexed, with_dot, ShapeMap};
