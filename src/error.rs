//! The crate's error type: one variant per stage, each carrying that stage's typed error.

use crate::config::ConfigError;
use crate::detect::DetectError;
use crate::image_io::{DecodeError, EncodeError};
use crate::redact::backend::RedactError;

/// Why an image yielded no output.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting that cannot work (see [`Config::validate`](crate::Config::validate)).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error(transparent)]
    Redact(#[from] RedactError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("the anonymiser is shutting down")]
    ShuttingDown,
    #[error("worker thread failed: {0}")]
    Worker(String),
}
