//! `obscura._native`: the Rust side of the Python package. It owns the conversion between
//! Python values and the core library's types, the GIL (released while an image is
//! processed) and the mapping of the library's errors onto the package's exceptions. It
//! owns no behaviour of its own: settings, their defaults and checks, detection,
//! redaction and encoding are the core library's (`obscura`), as in the CLI. The Python
//! layer (`obscura/__init__.py`) adds what is easier in Python: keyword settings,
//! locating the shipped models and ONNX Runtime, numpy arrays and asyncio.

use std::path::PathBuf;

use obscura::image_io::{self, DecodeError, Format, Frame};
use obscura::redact::Style;
use obscura::{Anonymizer as Core, Config, Error};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// An error on its way to Python: the name of its exception class in `obscura.errors`
/// and the message. Made without the GIL (inside `detach`), raised with it.
struct Failure {
    class: &'static str,
    message: String,
}

impl Failure {
    fn new(class: &'static str, message: impl Into<String>) -> Self {
        Self { class, message: message.into() }
    }

    /// The failure for a library error. `building` tells a failure to set up (missing
    /// model, wrong runtime) from a failure while processing an image.
    fn of(error: Error, building: bool) -> Self {
        let class = match &error {
            Error::Config(_) => "ConfigError",
            Error::Decode(DecodeError::Empty | DecodeError::UnsupportedFormat) => "NotAnImage",
            Error::Decode(DecodeError::Corrupt { .. }) => "CorruptImage",
            Error::Decode(DecodeError::TooLarge { .. } | DecodeError::TooManyFrames { .. }) => "ImageTooLarge",
            Error::Decode(DecodeError::Animated { .. } | DecodeError::Unsupported { .. }) => "UnsupportedImage",
            Error::Decode(DecodeError::CodecMissing { .. }) => "SetupError",
            _ if building => "SetupError",
            _ => "ProcessingError",
        };
        Self::new(class, error.to_string())
    }

    fn io(path: &std::path::Path, e: &std::io::Error) -> Self {
        let class = match e.kind() {
            std::io::ErrorKind::NotFound => "FileNotFoundError",
            std::io::ErrorKind::PermissionDenied => "PermissionError",
            _ => "OSError",
        };
        Self::new(class, format!("{}: {e}", path.display()))
    }
}

impl From<Failure> for PyErr {
    fn from(f: Failure) -> PyErr {
        Python::attach(|py| {
            let class = match f.class {
                "FileNotFoundError" | "PermissionError" | "OSError" | "FileExistsError" => py.import("builtins"),
                _ => py.import("obscura.errors"),
            }
            .and_then(|module| module.getattr(f.class))
            .and_then(|class| class.cast_into::<pyo3::types::PyType>().map_err(Into::into));
            match class {
                Ok(class) => PyErr::from_type(class, f.message),
                Err(e) => e,
            }
        })
    }
}

/// `redact.style`, `redact.person_style` and `redact.text_style` may be given by kind alone (`"blur"`): the
/// kind's default parameters, as the CLI's `--style` gives them.
fn expand_styles(settings: &mut serde_json::Value) -> PyResult<()> {
    let Some(redact) = settings.get_mut("redact").and_then(|r| r.as_object_mut()) else { return Ok(()) };
    for key in ["style", "person_style", "text_style"] {
        if let Some(serde_json::Value::String(kind)) = redact.get(key) {
            let style = Style::of_kind(kind).ok_or_else(|| {
                let kinds: Vec<&str> = Style::DEFAULTS.iter().map(Style::kind).collect();
                Failure::new("ConfigError", format!("invalid setting redact.{key}: {kind:?} is not a style (one of {})", kinds.join(", ")))
            })?;
            redact.insert(key.into(), serde_json::to_value(style).map_err(|e| PyRuntimeError::new_err(e.to_string()))?);
        }
    }
    Ok(())
}

fn format_named(name: Option<&str>) -> PyResult<Option<Format>> {
    name.map(|n| {
        Format::from_extension(n)
            .filter(|f| f.writable())
            .ok_or_else(|| Failure::new("ConfigError", format!("invalid format {n:?}: Obscura writes jpeg, png, webp, gif or tiff")).into())
    })
    .transpose()
}

fn report_json(report: &obscura::Report) -> PyResult<String> {
    serde_json::to_string(report).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// The anonymiser: built once, shared by every thread, and built again in a child
/// process after `fork()`.
///
/// Why: a forked child has only the thread that called `fork()`. The worker threads of
/// ONNX Runtime's sessions and of the rayon pool that redaction runs on stay behind in
/// the parent, and the first call that waits for them waits forever (gunicorn
/// `--preload`, multiprocessing's fork pool). So every call runs on this process's own
/// [`Built`]: a call in a process other than the one that built it builds a new one (the
/// models load again, about a second) and leaks the inherited one, whose drop would wait
/// for those threads too.
#[pyclass(frozen, module = "obscura._native")]
struct Anonymizer {
    config: Config,
    built: std::sync::RwLock<std::sync::Arc<Built>>,
}

/// What one process runs an [`Anonymizer`] on.
struct Built {
    pid: u32,
    core: Core,
    /// Redaction (and decoding) run on this pool, not rayon's global one: a child process
    /// can build a new pool, but never a new global one.
    pool: rayon::ThreadPool,
}

impl Built {
    fn new(config: Config) -> Result<Self, Failure> {
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("obscura-{i}"))
            .build()
            .map_err(|e| Failure::new("SetupError", format!("starting worker threads: {e}")))?;
        let core = Core::new(config).map_err(|e| Failure::of(e, true))?;
        Ok(Self { pid: std::process::id(), core, pool })
    }
}

impl Anonymizer {
    /// This process's [`Built`], made now if the current one was inherited through `fork()`.
    fn built(&self) -> Result<std::sync::Arc<Built>, Failure> {
        let pid = std::process::id();
        let current = self.built.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if current.pid == pid {
            return Ok(current);
        }
        let mut slot = self.built.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.pid != pid {
            let fresh = std::sync::Arc::new(Built::new(self.config.clone())?);
            // Never dropped: its threads are the parent's, and dropping it would wait for them.
            std::mem::forget(std::mem::replace(&mut *slot, fresh));
        }
        Ok(slot.clone())
    }

    /// Runs `f` on this process's anonymiser, on its own pool.
    fn run<T: Send>(&self, f: impl FnOnce(&Core) -> Result<T, Failure> + Send) -> Result<T, Failure> {
        let built = self.built()?;
        built.pool.install(|| f(&built.core))
    }
}

#[pymethods]
impl Anonymizer {
    /// `settings`: a `Config` as JSON (the same fields as a TOML config file).
    #[new]
    fn new(py: Python<'_>, settings: &str) -> PyResult<Self> {
        let mut value: serde_json::Value = serde_json::from_str(settings).map_err(|e| Failure::new("ConfigError", format!("invalid settings: {e}")))?;
        expand_styles(&mut value)?;
        let config: Config = serde_json::from_value(value).map_err(|e| Failure::new("ConfigError", format!("invalid settings: {e}")))?;
        let built = py.detach(|| Built::new(config.clone()))?;
        Ok(Self { config: built.core.config().clone(), built: std::sync::RwLock::new(std::sync::Arc::new(built)) })
    }

    /// The effective settings, as JSON.
    fn config_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.config).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// The models in use, as JSON.
    fn models_json(&self, py: Python<'_>) -> PyResult<String> {
        let built = py.detach(|| self.built())?;
        serde_json::to_string(&built.core.models()).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Encoded image in, `(bytes, report JSON)` out (the report names the format); the GIL is released meanwhile.
    #[pyo3(signature = (data, format=None))]
    fn anonymize<'py>(&self, py: Python<'py>, data: &[u8], format: Option<&str>) -> PyResult<(Bound<'py, PyBytes>, String)> {
        let format = format_named(format)?;
        let out = py.detach(|| self.run(|core| core.anonymize_to(data, format).map_err(|e| Failure::of(e, false))))?;
        Ok((PyBytes::new(py, &out.bytes), report_json(&out.report)?))
    }

    /// Reads `src`, anonymises it and writes `dst` atomically (a temporary file in the
    /// same folder, renamed over it); the output format follows `dst`'s extension. `dst`
    /// may not be `src` (nor a link to it). Returns the report JSON.
    fn anonymize_file(&self, py: Python<'_>, src: PathBuf, dst: PathBuf) -> PyResult<String> {
        let format = match dst.extension().and_then(|e| e.to_str()) {
            Some(ext) => Some(Format::from_extension(ext).filter(|f| f.writable()).ok_or_else(|| {
                Failure::new("ConfigError", format!("{}: .{ext} is not a format Obscura writes (use .jpg, .png, .webp, .gif or .tif)", dst.display()))
            })?),
            None => None,
        };
        let report = py.detach(|| {
            // A device or a pipe (`/dev/zero`) would be read until memory runs out.
            match std::fs::metadata(&src) {
                Ok(m) if !m.is_file() => return Err(Failure::new("OSError", format!("{}: not a regular file", src.display()))),
                Err(e) => return Err(Failure::io(&src, &e)),
                Ok(_) => {}
            }
            let data = std::fs::read(&src).map_err(|e| Failure::io(&src, &e))?;
            if same_file(&src, &dst) {
                return Err(Failure::new("FileExistsError", format!("{} is the source file: Obscura never overwrites its input", dst.display())));
            }
            let out = self.run(|core| core.anonymize_to(&data, format).map_err(|e| Failure::of(e, false)))?;
            image_io::write_atomic(&dst, &out.bytes).map_err(|e| Failure::io(&dst, &e.source))?;
            Ok(out.report)
        })?;
        report_json(&report)
    }

    /// Whether pixels of this size are within the image limits (`ImageTooLarge` if not):
    /// the Python side asks before it copies an array.
    fn check_size(&self, width: u32, height: u32) -> PyResult<()> {
        self.config.image.check_size(width, height).map_err(|e| Failure::of(e.into(), false).into())
    }

    /// Packed pixels (`height × width × channels`, 3 or 4 channels) redacted in place of
    /// a copy: `(pixels, report JSON)`. Nothing is decoded or encoded, so no metadata.
    fn anonymize_pixels<'py>(&self, py: Python<'py>, data: &[u8], width: u32, height: u32, channels: u8) -> PyResult<(Bound<'py, PyBytes>, String)> {
        if !(channels == 3 || channels == 4) {
            return Err(Failure::new("ConfigError", format!("an image array has 3 (RGB) or 4 (RGBA) channels, not {channels}")).into());
        }
        if width == 0 || height == 0 || data.len() as u64 != u64::from(width) * u64::from(height) * u64::from(channels) {
            return Err(Failure::new("ConfigError", format!("{} bytes are not a {height}×{width}×{channels} image", data.len())).into());
        }
        self.check_size(width, height)?;
        let (pixels, report) = py.detach(|| {
            let mut frame = Frame::new(width, height, channels, data.to_vec());
            let (detections, regions, timings, models) = self.run(|core| {
                let (detections, regions, timings) = core.redact_frame(&mut frame).map_err(|e| Failure::of(e, false))?;
                Ok((detections, regions, timings, core.models()))
            })?;
            let report = serde_json::json!({
                "width": width, "height": height, "detections": detections, "regions": regions,
                "models": models, "timings_ms": timings,
            });
            Ok::<_, Failure>((frame.into_data(), report.to_string()))
        })?;
        Ok((PyBytes::new(py, &pixels), report))
    }
}

/// Whether `a` and `b` are one file (same device and inode: links and other spellings
/// of the same path included). A `b` that does not exist yet is not `a`.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The ONNX Runtime library name the core looks for (`libonnxruntime.so.1.32.0`) and the
/// `onnxruntime` package version it belongs to, from `models/models.toml`.
#[pyfunction]
fn runtime_pin() -> (String, String) {
    let pin = obscura::detect::runtime_pin();
    (pin.version.clone(), pin.library.clone())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Anonymizer>()?;
    m.add_function(wrap_pyfunction!(runtime_pin, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
