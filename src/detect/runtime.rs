//! The ONNX Runtime side of detection: loading the library, the one environment per
//! process, choosing the execution provider, and a pool of sessions shared by all callers.
//!
//! `ort` allows a single environment per process and loads the library once, so
//! [`OrtRuntime::load`] hands out clones of the same environment; every other resource
//! (sessions, their threads) belongs to the detector that creates it.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};

use ort::session::Session;
use serde::{Deserialize, Serialize};

use super::DetectError;
use crate::assets;

/// The library file name `scripts/setup` installs.
pub const ORT_LIBRARY_NAME: &str = "libonnxruntime.so.1.32.0";

/// Where inference runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU execution provider.
    Cpu,
    /// The CUDA execution provider; an error if it cannot be used (never a silent CPU run).
    Cuda,
    /// CUDA when this build has it and it loads, else the CPU; the choice is logged.
    #[default]
    Auto,
}

impl crate::config::Choice for Device {
    const ALL: &'static [Self] = &[Device::Auto, Device::Cpu, Device::Cuda];
}

/// ONNX Runtime settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Path of `libonnxruntime.so`. Default: `OBSCURA_ORT_LIB`, then `ORT_DYLIB_PATH`, then
    /// `lib/` next to the executable or in the checkout (where `scripts/setup` puts it).
    pub ort_library: Option<PathBuf>,
    /// Folder holding the model files named in `models/models.toml` (the Python package
    /// points it at the models it ships). Default: `OBSCURA_MODELS`, then `models/` next
    /// to the executable or in the checkout. Files found here are verified like any other.
    pub models_dir: Option<PathBuf>,
    pub device: Device,
    /// Most sessions (concurrent inferences) in the pool; 0 = number of CPU cores.
    pub sessions: usize,
    /// Threads inside each inference; 0 = cores ÷ sessions (at least 1).
    pub intra_threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self { ort_library: None, models_dir: None, device: Device::Auto, sessions: 0, intra_threads: 0 }
    }
}

impl RuntimeConfig {
    /// `(sessions, intra_threads)` with the zeros resolved against the core count.
    pub fn resolved_threads(&self) -> (usize, usize) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let sessions = if self.sessions == 0 { cores } else { self.sessions };
        let intra = if self.intra_threads == 0 { (cores / sessions).max(1) } else { self.intra_threads };
        (sessions, intra)
    }
}

/// The loaded ONNX Runtime: the process's environment and the library it came from.
#[derive(Clone)]
pub struct OrtRuntime {
    env: ort::environment::Environment,
    library: PathBuf,
}

static LOADED: OnceLock<OrtRuntime> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

impl OrtRuntime {
    /// Finds and loads the library (once per process) and returns the environment.
    pub fn load(config: &RuntimeConfig) -> Result<OrtRuntime, DetectError> {
        let requested = assets::locate(
            config.ort_library.as_deref(),
            &["OBSCURA_ORT_LIB", "ORT_DYLIB_PATH"],
            "lib",
            &[ORT_LIBRARY_NAME, "libonnxruntime.so"],
        )
        .map_err(|searched| DetectError::RuntimeMissing { searched })?;
        let _guard = LOADING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rt) = LOADED.get() {
            return if same_file(&rt.library, &requested) {
                Ok(rt.clone())
            } else {
                Err(DetectError::RuntimeConflict { loaded: rt.library.clone(), requested })
            };
        }
        let incompatible = |reason: String| DetectError::RuntimeIncompatible { path: requested.clone(), reason };
        let builder = ort::init_from(&requested).map_err(|e| incompatible(e.to_string()))?;
        let env = builder.with_name("obscura").with_telemetry(false).build().map_err(|e| incompatible(e.to_string()))?;
        tracing::debug!(library = %requested.display(), "loaded ONNX Runtime");
        let rt = OrtRuntime { env, library: requested };
        let _ = LOADED.set(rt.clone());
        Ok(rt)
    }

    /// Creates one session for `model` on `device` (`Cpu` or `Cuda`, already resolved).
    fn session(&self, model: &Path, device: Device, intra_threads: usize) -> Result<Session, DetectError> {
        let invalid = |e: &dyn std::fmt::Display| DetectError::ModelInvalid { path: model.to_path_buf(), reason: e.to_string() };
        let mut builder = Session::builder(&self.env)
            .and_then(|b| Ok(b.with_intra_threads(intra_threads)?))
            .and_then(|b| Ok(b.with_inter_threads(1)?))
            // Several sessions share the cores: spinning threads would steal them from each other.
            .and_then(|b| Ok(b.with_intra_op_spinning(false)?))
            // Every photo has its own size: per-shape memory plans would only pile up.
            .and_then(|b| Ok(b.with_memory_pattern(false)?))
            .map_err(|e| invalid(&e))?;
        if device == Device::Cuda {
            builder = register_cuda(builder)?;
        }
        builder.commit_from_file(model).map_err(|e| invalid(&e))
    }
}

#[cfg(feature = "cuda")]
fn register_cuda(builder: ort::session::builder::SessionBuilder) -> Result<ort::session::builder::SessionBuilder, DetectError> {
    builder
        .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
        .map_err(|e| DetectError::CudaUnavailable { reason: e.to_string() })
}

#[cfg(not(feature = "cuda"))]
fn register_cuda(_builder: ort::session::builder::SessionBuilder) -> Result<ort::session::builder::SessionBuilder, DetectError> {
    Err(DetectError::CudaUnavailable { reason: "this build of obscura has no CUDA support (rebuild with `--features cuda`)".into() })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// A pool of sessions for one model. Sessions are created on demand up to `max` and
/// reused; a caller that finds none free waits for one. The first session is created
/// eagerly, so a broken model or provider is reported when the pool is built.
pub struct SessionPool {
    runtime: OrtRuntime,
    model: PathBuf,
    device: Device,
    intra_threads: usize,
    max: usize,
    state: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Session>,
    created: usize,
}

impl SessionPool {
    /// Builds the pool and its first session. `device` `Auto` is resolved here: CUDA if
    /// this build has it and a session can be created on it, otherwise the CPU.
    pub fn new(runtime: &OrtRuntime, model: &Path, device: Device, max: usize, intra_threads: usize) -> Result<SessionPool, DetectError> {
        let (device, first) = match device {
            Device::Auto if cfg!(feature = "cuda") => match runtime.session(model, Device::Cuda, intra_threads) {
                Ok(s) => {
                    tracing::info!("device auto: using CUDA");
                    (Device::Cuda, s)
                }
                Err(DetectError::CudaUnavailable { reason }) => {
                    tracing::info!(%reason, "device auto: CUDA unavailable, using the CPU");
                    (Device::Cpu, runtime.session(model, Device::Cpu, intra_threads)?)
                }
                Err(e) => return Err(e),
            },
            Device::Auto => {
                tracing::info!("device auto: this build has no CUDA support, using the CPU");
                (Device::Cpu, runtime.session(model, Device::Cpu, intra_threads)?)
            }
            d => (d, runtime.session(model, d, intra_threads)?),
        };
        Ok(SessionPool {
            runtime: runtime.clone(),
            model: model.to_path_buf(),
            device,
            intra_threads,
            max: max.max(1),
            state: Mutex::new(PoolState { idle: vec![first], created: 1 }),
            returned: Condvar::new(),
        })
    }

    /// The provider the sessions run on (`Cpu` or `Cuda`).
    pub fn device(&self) -> Device {
        self.device
    }

    /// Runs `f` with exclusive use of one session.
    fn with_session<R>(&self, f: impl FnOnce(&mut Session) -> R) -> Result<R, DetectError> {
        let mut session = self.acquire()?;
        let out = f(&mut session);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.idle.push(session);
        drop(state);
        self.returned.notify_one();
        Ok(out)
    }

    /// Runs the model on one f32 input of `shape` and hands its outputs to `read`.
    pub fn run<R>(
        &self,
        shape: [usize; 4],
        input: &[f32],
        read: impl FnOnce(&ort::session::SessionOutputs<'_>) -> Result<R, DetectError>,
    ) -> Result<R, DetectError> {
        self.with_session(|session| {
            let tensor = ort::value::TensorRef::from_array_view((shape, input)).map_err(|e| DetectError::Inference(e.to_string()))?;
            let outputs = session.run(ort::inputs![tensor]).map_err(|e| DetectError::Inference(e.to_string()))?;
            read(&outputs)
        })?
    }

    fn acquire(&self) -> Result<Session, DetectError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(s) = state.idle.pop() {
                return Ok(s);
            }
            if state.created < self.max {
                state.created += 1;
                drop(state);
                return self.runtime.session(&self.model, self.device, self.intra_threads).inspect_err(|_| {
                    self.state.lock().unwrap_or_else(|e| e.into_inner()).created -= 1;
                });
            }
            state = self.returned.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}
