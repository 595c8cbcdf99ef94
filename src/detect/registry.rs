//! Which detectors the settings ask for, and how each is built: the one list to extend
//! when a model is added. A new model is its own file in `detect/` (pre-processing,
//! decoding, a [`Detector`] impl), its entry in `models/models.toml`, and one line here;
//! a new face model also gets a [`FaceModel`] value, and the compiler then asks for its
//! line in [`face`].
//!
//! It owns no order: [`Anonymizer::with_detectors`](crate::Anonymizer::with_detectors)
//! runs persons first whatever the list.

use super::centerface::CenterFace;
use super::nanodet::NanoDet;
use super::retinaface::RetinaFace;
use super::text::TextDetector;
use super::{Class, DetectError, Detector, FaceModel, OrtRuntime};
use crate::config::Config;

/// Loads ONNX Runtime and a detector per target: the person model for persons, each
/// chosen face model (once) for faces, the text model for text.
pub(crate) fn build(config: &Config) -> Result<Vec<Box<dyn Detector>>, DetectError> {
    let runtime = OrtRuntime::load(&config.runtime)?;
    let mut detectors: Vec<Box<dyn Detector>> = Vec::new();
    if config.detect.targets.contains(&Class::Person) {
        detectors.push(Box::new(NanoDet::new(&runtime, &config.runtime, &config.detect.person)?));
    }
    if config.detect.targets.contains(&Class::Face) {
        let mut models = config.detect.face_models.clone();
        models.sort();
        models.dedup();
        for model in models {
            detectors.push(face(model, &runtime, config)?);
        }
    }
    if config.detect.targets.contains(&Class::Text) {
        detectors.push(Box::new(TextDetector::new(&runtime, &config.runtime, &config.detect.text)?));
    }
    Ok(detectors)
}

/// The face detector for `model`.
fn face(model: FaceModel, runtime: &OrtRuntime, config: &Config) -> Result<Box<dyn Detector>, DetectError> {
    Ok(match model {
        FaceModel::Centerface => Box::new(CenterFace::new(runtime, &config.runtime, &config.detect, false)?),
        FaceModel::CenterfaceInt8 => Box::new(CenterFace::new(runtime, &config.runtime, &config.detect, true)?),
        FaceModel::Retinaface => Box::new(RetinaFace::new(runtime, &config.runtime, &config.detect)?),
    })
}
