//! The job API's `error_type` of every failure the engine, the LoRA library and the image
//! input report. The engine's errors say what went wrong in the engine's terms; which of the
//! job API's stable categories that is (`invalid_input`, `out_of_memory`, …) is decided here,
//! next to the rest of the job API. Written as inherent methods (allowed anywhere in the
//! defining crate), so callers need no import.

use crate::image::input::ImageInputError;
use crate::lora::LoraError;
use crate::pipeline::{EngineError, PipelineError};

impl PipelineError {
    /// The job API's `error_type` of this failure.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Weights(_) | Self::Model { .. } | Self::UnsupportedVariant { .. } => {
                "model_load_error"
            }
            Self::Config(_) => "config_error",
            Self::Lora(e) => e.error_type(),
            Self::InvalidRequest(_) => "invalid_input",
            Self::Cancelled => "cancelled",
            Self::Prompt(_) => "invalid_prompt",
            Self::NonFinite(_) => "non_finite_output",
            // The job's tensors are freed as the error unwinds, so the next job starts with
            // the memory back: a category of its own tells clients a smaller job may work.
            _ if self.is_out_of_memory() => "out_of_memory",
            Self::Sampling(_) | Self::Candle(_) | Self::Compute(_) | Self::Internal(_) => {
                "generation_error"
            }
        }
    }
}

impl LoraError {
    /// The job API's `error_type` of this failure: a bad name or weight in the request, a LoRA
    /// file that cannot be used, or a failure while merging.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::UnknownName { .. } | Self::BadWeight { .. } | Self::Prompt(_) => "invalid_input",
            Self::Weights(_)
            | Self::Format { .. }
            | Self::WrongArchitecture { .. }
            | Self::DuplicateName(_) => "lora_load_error",
            Self::Apply { .. } | Self::Internal(_) => "generation_error",
        }
    }
}

impl EngineError {
    /// The job API's `error_type` of this failure.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Pipeline(e) => e.error_type(),
            Self::Panicked(_) => "internal_error",
            Self::Stopped => "engine_stopped",
        }
    }
}

impl ImageInputError {
    /// The job API's `error_type` of this failure: the sender's mistake (`invalid_input`) or
    /// a remote server that failed (`image_fetch_error`, worth a retry).
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Http { .. } | Self::Network { .. } | Self::Timeout { .. } => "image_fetch_error",
            Self::Resolve { .. } => "image_fetch_error",
            _ => "invalid_input",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_out_of_memory_has_its_own_error_type() {
        let oom = PipelineError::Candle(candle_core::Error::Msg(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        ));
        assert_eq!(oom.error_type(), "out_of_memory");
        let other = PipelineError::Candle(candle_core::Error::Msg("shape mismatch".into()));
        assert_eq!(other.error_type(), "generation_error");
    }
}
