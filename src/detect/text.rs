//! Text (name badges, ID cards, house numbers, number plates) with PaddleOCR's PP-OCRv4
//! text detector (Apache-2.0; shipped in the `rapidocr-onnxruntime` 1.4.4 wheel, see
//! `models/README.md`): pre-processing and the decoding of its probability map into boxes.
//!
//! The model is a DB ("differentiable binarisation") detector: input `x`, f32 NCHW, **BGR**,
//! `(v / 255 - 0.5) / 0.5`, H and W multiples of 32; output `[N,1,H,W]`, the probability
//! that each input pixel lies in the *shrunk kernel* of a text line. Decoding follows
//! PaddleOCR's `DBPostProcess` (as RapidOCR ships it), with two changes for redaction:
//! boxes are axis-aligned rectangles that contain the text line's rotated rectangle, and
//! a region's rectangle is measured from its pixels' second moments instead of OpenCV's
//! minimum-area rectangle (the same rectangle for a filled rotated rectangle, which a
//! text kernel is):
//!
//! 1. pixels above `pixel_threshold` (0.3) form a mask, dilated by a 2×2 square;
//! 2. each 8-connected region of the mask is one candidate; its score is the mean
//!    probability over its pixels, and it is kept at `threshold` (0.5) or above;
//! 3. its rotated rectangle (side lengths `l`, `t`) is grown on every side by
//!    `l·t·unclip / (2(l + t))` (PaddleOCR's unclip distance: area × ratio / perimeter),
//!    which gives back the whole text line from its shrunk kernel;
//! 4. lines whose grown short side is under `min_height` image pixels are dropped.
//!
//! Large photos are seen as the face detectors see them (`views`): a
//! downscaled whole (large signs) and full-resolution tiles (a plate across the street),
//! with their own [`TextConfig::max_side`]. Every photo is also seen whole at lower
//! scales ([`TextConfig::coarse_sides`], longer side 960 and 480 px): the model stops
//! finding letters taller than about 500 of its input pixels, so a close-up of a sign is
//! found only there (and only lines at least 32 of their input pixels high are kept
//! from them: smaller ones are found with tighter boxes by the finer views). A line cut
//! by a tile's edge is found in each
//! tile in part, and overlapping boxes of one line are merged into their union (never
//! dropped, as NMS would: a union cannot uncover a letter).
//!
//! What it does not own: the redaction of text (`redact::plan`: a fill by default, grown
//! by `redact.text_padding` to cover a plate's border), and the decision to run it
//! (`detect.targets`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::runtime::{OrtRuntime, RuntimeConfig, SessionPool};
use super::views::{self, Tiling, View, ViewInput};
use super::{Class, DetectError, Detection, Detector, FIX_SETUP, ModelInfo, PinnedModel, load_model};
use crate::geometry::{BBox, Score};
use crate::image_io::Frame;

/// The model's ID in `models/models.toml`.
pub(crate) const MODEL: &str = "text";
/// What detections and errors name as their model.
pub(crate) const NAME: &str = "pp-ocrv4-det";

/// Text-detection settings (`detect.text`; used when `detect.targets` has `text`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextConfig {
    /// Model file; default `text-det.onnx` found by the usual search, checksum-verified.
    /// A path given here is used as is.
    pub model: Option<PathBuf>,
    /// Mean probability over a region at which it is kept as text (default 0.5, as
    /// PaddleOCR's `box_thresh` in RapidOCR).
    pub threshold: f32,
    /// Probability above which a pixel belongs to a text kernel (default 0.3).
    pub pixel_threshold: f32,
    /// How far a kernel is grown back to its text line (default 1.6, RapidOCR's; 1.5 in
    /// PaddleOCR): distance = area × unclip / perimeter.
    pub unclip: f32,
    /// Text lines whose height (the shorter side of their rotated rectangle, grown) is
    /// under this many image pixels are not redacted (default 6: below that no letter
    /// can be read).
    pub min_height: f32,
    /// Images whose longer side is at most this are seen whole at full resolution
    /// (default 1920); larger ones also as tiles (see the module docs).
    pub max_side: u32,
    /// Tile side for large images (default 1280).
    pub tile: u32,
    /// Overlap between neighbouring tiles (default 128).
    pub tile_overlap: u32,
    /// Longer sides of extra whole views, downscaled further (default 960 and 480): the
    /// model stops finding letters taller than about 500 of its input pixels, so a sign
    /// whose letters fill most of the photo is found only at these scales. A side not
    /// smaller than the main whole view is skipped; `[]` turns them off. They keep only
    /// lines at least 32 of their input pixels high (smaller ones are found, with
    /// tighter boxes, by the finer views).
    pub coarse_sides: Vec<u32>,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self { model: None, threshold: 0.5, pixel_threshold: 0.3, unclip: 1.6, min_height: 6.0, max_side: 1920, tile: 1280, tile_overlap: 128, coarse_sides: vec![960, 480] }
    }
}

impl TextConfig {
    /// The views of a `width`×`height` image: the tiling's, and the coarse ones.
    fn views(&self, width: u32, height: u32) -> (Vec<View>, Vec<View>) {
        let tiling = Tiling { max_side: self.max_side, tile: self.tile, overlap: self.tile_overlap }.plan(width, height);
        (tiling, views::coarse(width, height, self.max_side, &self.coarse_sides))
    }
}

/// The shortest text line (its grown short side, in the model's input pixels) a coarse
/// view keeps. Coarse views are for lettering too large for the finer views; a line
/// shorter than this there is at least twice as tall in a finer view, which finds it
/// with a tighter box (at 480 px a 19-px line's box is 48 px tall, at full resolution
/// 31), and a union with the coarse box would only loosen it.
const COARSE_MIN_SIDE: f32 = 32.0;

/// The PP-OCRv4 text detector over a session pool.
pub struct TextDetector {
    pool: SessionPool,
    config: TextConfig,
    info: ModelInfo,
}

impl TextDetector {
    /// Loads the model (located and checksum-verified unless `config.model` names a file).
    pub fn new(runtime: &OrtRuntime, rt_config: &RuntimeConfig, config: &TextConfig) -> Result<Self, DetectError> {
        let pinned = PinnedModel { id: MODEL, what: "text", fix: FIX_SETUP };
        let (pool, info) = load_model(runtime, rt_config, &pinned, config.model.as_deref())?;
        Ok(Self { pool, config: config.clone(), info })
    }

    /// Text boxes in the input's pixel space, at least `min_side` input pixels high.
    fn run(&self, input: &ViewInput, min_side: f32) -> Result<Vec<Detection>, DetectError> {
        let shape = [1, 3, input.h as usize, input.w as usize];
        self.pool.run(shape, &input.data, |outputs| {
            if outputs.len() != 1 {
                return Err(unexpected(format!("{} outputs, expected 1", outputs.len())));
            }
            let (dims, data) = outputs[0].try_extract_tensor::<f32>().map_err(|e| unexpected(e.to_string()))?;
            if dims[..] != [1, 1, input.h as i64, input.w as i64] {
                return Err(unexpected(format!("output shape {:?}, expected [1, 1, {}, {}]", &dims[..], input.h, input.w)));
            }
            // A broken model or runtime must fail the image, not hide text as "not found".
            if data.iter().any(|v| !v.is_finite()) {
                return Err(unexpected("the probability map holds non-finite values".into()));
            }
            let map = ProbabilityMap { data, width: input.w as usize, content_w: input.content_w as usize, content_h: input.content_h as usize };
            Ok(decode(&map, &self.config, min_side))
        })
    }
}

fn unexpected(reason: String) -> DetectError {
    DetectError::UnexpectedOutput { model: NAME.into(), reason }
}

impl Detector for TextDetector {
    fn detect(&self, frame: &Frame) -> Result<Vec<Detection>, DetectError> {
        // BGR, scaled to -1…1, as PaddleOCR reads images with OpenCV.
        let pixel = |p: [u8; 3]| [p[2] as f32 / 127.5 - 1.0, p[1] as f32 / 127.5 - 1.0, p[0] as f32 / 127.5 - 1.0];
        // Text drawn only through transparency (black letters on a transparent canvas:
        // the colour channels are all black) shows only once composited, and a viewer
        // may put it on white or on black: both are searched.
        let mut found = Vec::new();
        for seen in over_backgrounds(frame) {
            let (tiling, coarse) = self.config.views(seen.width, seen.height);
            let min_side = |input: &ViewInput| self.config.min_height * input.scale;
            found.extend(views::detect_all(&seen, &tiling, pixel, |input| self.run(input, min_side(input)))?);
            found.extend(views::detect_all(&seen, &coarse, pixel, |input| self.run(input, min_side(input).max(COARSE_MIN_SIDE)))?);
        }
        Ok(merge(found))
    }

    fn model(&self) -> &ModelInfo {
        &self.info
    }

    fn class(&self) -> Class {
        Class::Text
    }
}

/// The frame as the model sees it: itself when it is opaque, otherwise composited over
/// white and over black (as RGB).
fn over_backgrounds(frame: &Frame) -> Vec<std::borrow::Cow<'_, Frame>> {
    let transparent = frame.channels == 4 && frame.data.chunks_exact(4).any(|p| p[3] < 255);
    if !transparent {
        return vec![std::borrow::Cow::Borrowed(frame)];
    }
    [255u16, 0]
        .into_iter()
        .map(|bg| {
            let data = frame.data.chunks_exact(4).flat_map(|p| {
                let a = p[3] as u16;
                [0, 1, 2].map(|c| ((p[c] as u16 * a + bg * (255 - a) + 127) / 255) as u8)
            });
            std::borrow::Cow::Owned(Frame::new(frame.width, frame.height, 3, data.collect()))
        })
        .collect()
}

/// The model's output for one view: row-major, `width` wide; only the top-left
/// `content_w`×`content_h` holds the image (the rest is padding).
pub struct ProbabilityMap<'a> {
    pub data: &'a [f32],
    pub width: usize,
    pub content_w: usize,
    pub content_h: usize,
}

/// Text boxes in the map's pixel space (see the module docs): regions of the dilated
/// mask scoring at least `config.threshold`, grown by the unclip distance, at least
/// `min_side` pixels high. Not merged.
pub fn decode(map: &ProbabilityMap<'_>, config: &TextConfig, min_side: f32) -> Vec<Detection> {
    let (w, h) = (map.content_w, map.content_h);
    if w == 0 || h == 0 {
        return Vec::new();
    }
    let prob = |x: usize, y: usize| map.data[y * map.width + x];
    // Mask, then 2×2 dilation: a pixel is set when it or its left, upper or upper-left
    // neighbour is above the threshold.
    let above: Vec<bool> = (0..h).flat_map(|y| (0..w).map(move |x| (x, y))).map(|(x, y)| prob(x, y) > config.pixel_threshold).collect();
    let mut mask = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let at = |dx: usize, dy: usize| x >= dx && y >= dy && above[(y - dy) * w + x - dx];
            mask[y * w + x] = at(0, 0) || at(1, 0) || at(0, 1) || at(1, 1);
        }
    }
    // 8-connected regions.
    let mut seen = vec![false; w * h];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    let mut pixels: Vec<(usize, usize)> = Vec::new();
    for start in 0..w * h {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        pixels.clear();
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            pixels.push((x, y));
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let j = ny * w + nx;
                    if mask[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        let score = pixels.iter().map(|&(x, y)| prob(x, y) as f64).sum::<f64>() / pixels.len() as f64;
        if (score as f32) < config.threshold {
            continue;
        }
        let rect = RotatedRect::of_pixels(&pixels);
        if rect.short_side() < 3.0 {
            continue; // PaddleOCR's min_size
        }
        let grown = rect.unclip(config.unclip);
        if grown.short_side() < 5.0 || grown.short_side() < min_side {
            continue;
        }
        let bbox = grown.bounds();
        let bbox = BBox::new(bbox.x1.max(0.0), bbox.y1.max(0.0), bbox.x2.min(w as f32), bbox.y2.min(h as f32));
        if bbox.area() > 0.0 {
            out.push(Detection { class: Class::Text, bbox, score: Score(score as f32), landmarks: None, model: NAME.into() });
        }
    }
    out
}

/// A rectangle at an angle: centre, unit axis `u` (the second axis is `u` turned by 90°),
/// and its side lengths along `u` and across it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RotatedRect {
    pub centre: [f32; 2],
    pub u: [f32; 2],
    pub along: f32,
    pub across: f32,
}

impl RotatedRect {
    /// The rectangle that a region of pixels (unit squares at integer coordinates) fills:
    /// its axes are the region's principal axes (second moments), its sides the extent
    /// of the pixel squares along them.
    pub fn of_pixels(pixels: &[(usize, usize)]) -> RotatedRect {
        let n = pixels.len().max(1) as f64;
        let (mx, my) = pixels.iter().fold((0.0, 0.0), |(sx, sy), &(x, y)| (sx + x as f64, sy + y as f64));
        let (mx, my) = (mx / n, my / n);
        let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
        for &(x, y) in pixels {
            let (dx, dy) = (x as f64 - mx, y as f64 - my);
            sxx += dx * dx;
            syy += dy * dy;
            sxy += dx * dy;
        }
        let angle = 0.5 * (2.0 * sxy).atan2(sxx - syy);
        let u = [angle.cos(), angle.sin()];
        let (mut a0, mut a1, mut b0, mut b1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pixels {
            let (dx, dy) = (x as f64 - mx, y as f64 - my);
            let a = dx * u[0] + dy * u[1];
            let b = -dx * u[1] + dy * u[0];
            (a0, a1, b0, b1) = (a0.min(a), a1.max(a), b0.min(b), b1.max(b));
        }
        // A pixel square reaches half its projected width beyond its centre.
        let half = 0.5 * (u[0].abs() + u[1].abs());
        let (ac, bc) = ((a0 + a1) / 2.0, (b0 + b1) / 2.0);
        RotatedRect {
            // Pixel centres sit at +0.5.
            centre: [(mx + 0.5 + ac * u[0] - bc * u[1]) as f32, (my + 0.5 + ac * u[1] + bc * u[0]) as f32],
            u: [u[0] as f32, u[1] as f32],
            along: (a1 - a0 + 2.0 * half) as f32,
            across: (b1 - b0 + 2.0 * half) as f32,
        }
    }

    pub fn short_side(&self) -> f32 {
        self.along.min(self.across)
    }

    /// Grown on every side by PaddleOCR's unclip distance, area × `ratio` / perimeter.
    pub fn unclip(&self, ratio: f32) -> RotatedRect {
        let d = self.along * self.across * ratio / (2.0 * (self.along + self.across));
        RotatedRect { along: self.along + 2.0 * d, across: self.across + 2.0 * d, ..*self }
    }

    /// The axis-aligned box around it.
    pub fn bounds(&self) -> BBox {
        let (u, (ha, hb)) = (self.u, (self.along / 2.0, self.across / 2.0));
        let half_w = ha * u[0].abs() + hb * u[1].abs();
        let half_h = ha * u[1].abs() + hb * u[0].abs();
        BBox::new(self.centre[0] - half_w, self.centre[1] - half_h, self.centre[0] + half_w, self.centre[1] + half_h)
    }
}

/// Boxes of one text seen in several views (or cut by a tile's edge and seen whole in
/// the downscaled view) merged into their union: two boxes are merged when their
/// overlap is at least half of the smaller one. The union keeps the higher score.
pub fn merge(mut boxes: Vec<Detection>) -> Vec<Detection> {
    let mut merged = true;
    while merged {
        merged = false;
        let mut i = 0;
        while i < boxes.len() {
            let mut j = i + 1;
            while j < boxes.len() {
                let (a, b) = (boxes[i].bbox, boxes[j].bbox);
                if a.intersection(&b).area() >= 0.5 * a.area().min(b.area()) {
                    let other = boxes.swap_remove(j);
                    let d = &mut boxes[i];
                    d.bbox = BBox::new(a.x1.min(b.x1), a.y1.min(b.y1), a.x2.max(b.x2), a.y2.max(b.y2));
                    d.score = Score(d.score.0.max(other.score.0));
                    merged = true;
                } else {
                    j += 1;
                }
            }
            i += 1;
        }
    }
    boxes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map `h` high and `pad_w` wide with `value` inside the given rectangles.
    fn map_with(h: usize, pad_w: usize, rects: &[(usize, usize, usize, usize, f32)]) -> Vec<f32> {
        let mut data = vec![0.0; pad_w * h];
        for &(x, y, rw, rh, v) in rects {
            for yy in y..y + rh {
                for xx in x..x + rw {
                    data[yy * pad_w + xx] = v;
                }
            }
        }
        data
    }

    fn run(data: &[f32], width: usize, content_w: usize, content_h: usize) -> Vec<Detection> {
        decode(&ProbabilityMap { data, width, content_w, content_h }, &TextConfig::default(), 0.0)
    }

    /// An upright kernel of l × t grows by l·t·1.6 / (2(l + t)) on each side (plus the
    /// dilation's pixel to the right and below), as PaddleOCR's unclip does.
    #[test]
    fn an_upright_kernel_grows_back_to_its_text_line() {
        let data = map_with(100, 224, &[(40, 30, 100, 20, 0.9)]);
        let found = run(&data, 224, 200, 100);
        assert_eq!(found.len(), 1, "{found:?}");
        let (l, t) = (101.0f32, 21.0f32); // dilated
        let d = l * t * 1.6 / (2.0 * (l + t));
        let b = found[0].bbox;
        for (got, want) in [(b.x1, 40.0 - d), (b.y1, 30.0 - d), (b.x2, 141.0 + d), (b.y2, 51.0 + d)] {
            assert!((got - want).abs() < 0.01, "{b:?}: {got} vs {want}");
        }
        assert!((found[0].score.0 - 0.9 * (100.0 * 20.0) / (101.0 * 21.0)).abs() < 1e-4, "mean over the dilated region");
    }

    #[test]
    fn weak_regions_thin_slivers_and_the_padding_are_not_text() {
        let data = map_with(100, 256, &[(10, 10, 50, 10, 0.35), (100, 10, 80, 1, 0.99), (200, 0, 56, 100, 1.0)]);
        assert!(run(&data, 256, 200, 100).is_empty(), "mean 0.35 < 0.5; a 2-pixel sliver; the padding right of 200");
        // Below min_side: a kernel 10 px high (11 dilated) grows to about 27.
        let data = map_with(100, 200, &[(10, 10, 100, 10, 0.9)]);
        let config = TextConfig::default();
        assert_eq!(decode(&ProbabilityMap { data: &data, width: 200, content_w: 200, content_h: 100 }, &config, 19.0).len(), 1);
        assert!(decode(&ProbabilityMap { data: &data, width: 200, content_w: 200, content_h: 100 }, &config, 30.0).is_empty());
    }

    /// A kernel at 30° is measured along its own axes, and its box contains the whole
    /// rotated line.
    #[test]
    fn a_rotated_kernel_is_measured_along_its_axes() {
        let (w, h) = (300usize, 300usize);
        let (cx, cy, l, t, a) = (150.0f32, 150.0f32, 160.0f32, 16.0f32, 30f32.to_radians());
        let (c, s) = (a.cos(), a.sin());
        let mut pixels = Vec::new();
        let mut data = vec![0.0f32; w * h];
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                if (dx * c + dy * s).abs() <= l / 2.0 && (-dx * s + dy * c).abs() <= t / 2.0 {
                    data[y * w + x] = 0.9;
                    pixels.push((x, y));
                }
            }
        }
        let r = RotatedRect::of_pixels(&pixels);
        assert!((r.u[1].atan2(r.u[0]) - a).abs() < 0.01, "{r:?}");
        assert!((r.along - l).abs() < 2.5 && (r.across - t).abs() < 2.5, "{r:?}");
        assert!((r.centre[0] - cx).abs() < 0.5 && (r.centre[1] - cy).abs() < 0.5, "{r:?}");
        let found = run(&data, w, w, h);
        assert_eq!(found.len(), 1);
        let b = found[0].bbox;
        for &(x, y) in &pixels {
            assert!(b.x1 <= x as f32 && b.y1 <= y as f32 && x as f32 + 1.0 <= b.x2 && y as f32 + 1.0 <= b.y2, "{b:?} misses ({x}, {y})");
        }
    }

    #[test]
    fn overlapping_boxes_of_one_line_become_their_union_and_separate_lines_stay() {
        let det = |x1: f32, y1: f32, x2: f32, y2: f32, s: f32| Detection { class: Class::Text, bbox: BBox::new(x1, y1, x2, y2), score: Score(s), landmarks: None, model: NAME.into() };
        let merged = merge(vec![det(0.0, 0.0, 100.0, 20.0, 0.6), det(10.0, 2.0, 120.0, 22.0, 0.9), det(0.0, 40.0, 100.0, 60.0, 0.7), det(95.0, 0.0, 300.0, 20.0, 0.8)]);
        assert_eq!(merged.len(), 3, "{merged:?}");
        assert_eq!(merged[0].bbox, BBox::new(0.0, 0.0, 120.0, 22.0));
        assert_eq!(merged[0].score, Score(0.9));
        assert!(merged.iter().any(|d| d.bbox == BBox::new(0.0, 40.0, 100.0, 60.0)));
        assert!(merged.iter().any(|d| d.bbox == BBox::new(95.0, 0.0, 300.0, 20.0)), "a small overlap is two lines");
    }
}
