//! All settings in one place. The defaults are documented on each field of the parts;
//! the CLI maps its flags onto this, a library user builds it directly, and it
//! deserialises from TOML or JSON.

use serde::{Deserialize, Serialize};

use crate::detect::{DetectConfig, RuntimeConfig};
use crate::image_io::ImageConfig;
use crate::redact::RedactConfig;

/// Everything an [`Anonymizer`](crate::Anonymizer) needs to know.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub runtime: RuntimeConfig,
    pub detect: DetectConfig,
    pub redact: RedactConfig,
    pub image: ImageConfig,
    /// Most `anonymize_async` calls running at once; 0 = the detector's session count.
    pub max_concurrency: usize,
}
