//! Which backend redacts: the CPU reference or the GPU shader, chosen once per
//! [`Anonymizer`](crate::Anonymizer), and the types both share ([`RedactError`],
//! [`BatchImage`]). Without the `gpu` feature only the CPU backend exists: `Auto` means
//! the CPU and `Gpu` is [`RedactError::NotBuilt`]. The pixels themselves are `cpu`'s and
//! `gpu`'s.

#[cfg(feature = "gpu")]
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[cfg(feature = "gpu")]
use super::gpu::GpuRedactor;
use super::{Params, Region, cpu};
use crate::image_io::Frame;

/// Where redaction runs (`--redact-on`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedactOn {
    /// The rayon CPU path.
    Cpu,
    /// The wgpu shader on any adapter, software ones included; an error if there is none.
    Gpu,
    /// The GPU when the adapter is a real GPU; otherwise (no adapter, or a software one
    /// such as lavapipe/llvmpipe, which is no faster than the CPU path) the CPU. Logs the
    /// choice. The default.
    #[default]
    Auto,
}

impl crate::config::Choice for RedactOn {
    const ALL: &'static [Self] = &[RedactOn::Auto, RedactOn::Cpu, RedactOn::Gpu];
}

/// Why redaction could not run (only the GPU backend can fail).
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error("this build of Obscura has no GPU backend (Cargo feature `gpu`); redact on the CPU")]
    NotBuilt,
    #[error("no GPU adapter found (wgpu: {0}); install a Vulkan or GL driver, or redact on the CPU")]
    NoAdapter(String),
    #[error("GPU device request failed on {adapter}: {message}")]
    Device { adapter: String, message: String },
    #[error("GPU redaction failed: {0}")]
    Failed(String),
}

/// One image of a GPU batch: its pixels (changed in place), regions and parameters.
pub struct BatchImage<'a> {
    pub frame: &'a mut Frame,
    pub regions: &'a [Region],
    pub params: Params,
}

/// A redaction backend, cheap to clone and shared by all callers.
///
/// ```
/// use obscura::redact::backend::{RedactOn, Redactor};
/// let redactor = Redactor::new(RedactOn::Cpu)?;
/// assert_eq!(redactor.name(), "cpu");
/// # Ok::<(), obscura::redact::backend::RedactError>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Redactor {
    Cpu,
    /// The wgpu shader (Cargo feature `gpu`).
    #[cfg(feature = "gpu")]
    Gpu(Arc<GpuRedactor>),
}

impl Redactor {
    pub fn new(on: RedactOn) -> Result<Self, RedactError> {
        match on {
            RedactOn::Cpu => Ok(Redactor::Cpu),
            #[cfg(not(feature = "gpu"))]
            RedactOn::Gpu => Err(RedactError::NotBuilt),
            #[cfg(feature = "gpu")]
            RedactOn::Gpu => {
                let gpu = GpuRedactor::new()?;
                tracing::info!(adapter = %gpu.adapter_info().name, backend = ?gpu.adapter_info().backend, "redacting on the GPU (forced)");
                Ok(Redactor::Gpu(Arc::new(gpu)))
            }
            RedactOn::Auto => Ok(Self::auto()),
        }
    }

    #[cfg(not(feature = "gpu"))]
    fn auto() -> Self {
        tracing::info!("redacting on the CPU: this build has no GPU backend");
        Redactor::Cpu
    }

    #[cfg(feature = "gpu")]
    fn auto() -> Self {
        match GpuRedactor::find_adapter() {
            Err(e) => {
                tracing::info!("redacting on the CPU: {e}");
                Redactor::Cpu
            }
            Ok(adapter) if GpuRedactor::is_software_adapter(&adapter.get_info()) => {
                tracing::info!(adapter = %adapter.get_info().name, "redacting on the CPU: the only GPU adapter is a software one");
                Redactor::Cpu
            }
            Ok(adapter) => {
                let name = adapter.get_info().name;
                match GpuRedactor::with_adapter(adapter) {
                    Ok(gpu) => {
                        tracing::info!(adapter = %name, "redacting on the GPU");
                        Redactor::Gpu(Arc::new(gpu))
                    }
                    Err(e) => {
                        tracing::warn!("redacting on the CPU: {e}");
                        Redactor::Cpu
                    }
                }
            }
        }
    }

    /// `"cpu"`, or `"gpu: <adapter name>"`.
    pub fn name(&self) -> String {
        match self {
            Redactor::Cpu => "cpu".into(),
            #[cfg(feature = "gpu")]
            Redactor::Gpu(gpu) => format!("gpu: {}", gpu.adapter_info().name),
        }
    }

    /// Redacts one image in place. On `Err` the frame may be partly redacted: discard it.
    pub fn redact(&self, frame: &mut Frame, regions: &[Region], params: &Params) -> Result<(), RedactError> {
        match self {
            Redactor::Cpu => {
                cpu::redact(frame, regions, params);
                Ok(())
            }
            #[cfg(feature = "gpu")]
            Redactor::Gpu(gpu) => gpu.redact(frame, regions, params),
        }
    }

    /// Redacts many images; on the GPU in as few submissions as the device allows.
    pub fn redact_batch(&self, batch: &mut [BatchImage<'_>]) -> Result<(), RedactError> {
        match self {
            Redactor::Cpu => {
                for b in batch {
                    cpu::redact(b.frame, b.regions, &b.params);
                }
                Ok(())
            }
            #[cfg(feature = "gpu")]
            Redactor::Gpu(gpu) => gpu.redact_batch(batch),
        }
    }
}
