//! The crate's error type: one variant per stage, each carrying that stage's typed error.

use crate::detect::DetectError;
use crate::image_io::{DecodeError, EncodeError};
use crate::redact::gpu::GpuError;

/// Why an image yielded no output.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error(transparent)]
    Redact(#[from] GpuError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("the anonymiser is shutting down")]
    ShuttingDown,
    #[error("worker thread failed: {0}")]
    Worker(String),
}
