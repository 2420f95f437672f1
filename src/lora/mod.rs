//! LoRAs: every Civitai format, resolved against the checkpoint's own keys, merged into the
//! resident weights per request and switched exactly: a switch recomputes a touched weight
//! from its original, never by subtracting the previous delta.
//!
//! Layering: this is the top of the three model layers. It depends on `weights` (the
//! safetensors reader and `ShapeMap`) and on candle; it does not import `model`. It works on
//! the tensors the `model` networks are built from: a [`WeightStore`] serves them to the
//! model constructors through a `VarBuilder`, so the networks never know LoRAs exist.
//! Nothing in `weights` or `model` imports this module. The file formats, the name resolution
//! and the delta math are described in docs/formats.md, *LoRA files*.
//!
//! - [`LoraLibrary`] (library.rs): the `models.toml` LoRAs, loaded once at start; each file's
//!   modules resolved by a reverse index of checkpoint keys (names.rs), classified
//!   (format.rs) and checked against the checkpoint's shapes.
//! - [`WeightStore`] (store.rs): device tensors the models are built from; a LoRA switch
//!   replaces entries and the models are rebuilt from it (`Arc` clones only).
//! - [`LoraState`] (state.rs): which LoRA set is merged; a switch recomputes only the keys
//!   whose set changed, from the original weights (no drift).
//! - [`extract_prompt_loras`] (prompt.rs): A1111 `<lora:name:weight>` tags.

mod error;
pub mod format;
pub mod library;
pub mod math;
pub mod names;
pub mod prompt;
pub mod runtime;
pub mod state;
pub mod store;

pub use error::{LoraError, MAX_LORA_WEIGHT};
pub use library::{ActiveLora, LoadStats, LoraEntry, LoraFile, LoraLibrary, Patch};
pub use names::{Component, NameIndex, Target};
pub use prompt::{extract_prompt_loras, PromptLora, PromptTagError};
pub use runtime::{LoraRuntime, Prepared, RequestedLora};
pub use state::{LoraState, SwitchStats};
pub use store::WeightStore;
