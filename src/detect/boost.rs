//! Recall boosters: extra passes of a face detector over transformed copies of the image,
//! for faces the plain pass misses. Each costs time, so each is opt-in
//! ([`DetectConfig::boost`](super::DetectConfig)) and measured by `obscura eval`
//! (figures in `benches/RESULTS.md`).
//!
//! - [`Booster::PersonFaces`]: the upper half of every smallish person box (found by the
//!   person detector), enlarged so the body is [`PERSON_FACES_HEIGHT`] pixels tall, and
//!   searched again: a face of a few pixels in a crowd becomes one the model can see.
//! - [`Booster::Flip`]: the mirrored image (test-time augmentation).
//! - [`Booster::Upscale`]: the image enlarged (at most 2×, at most to `max_side`), for
//!   faces too small for the model at the original size. Images larger than `max_side`
//!   are already seen at full resolution in tiles plus a downscaled whole (see
//!   `views`), so this booster does nothing for them.
//!
//! Every pass maps its boxes and landmarks back to the image; the caller merges them with
//! the plain pass by NMS.

use image::imageops;
use serde::{Deserialize, Serialize};

use super::{Class, DetectConfig, DetectError, Detection, Detector};
use crate::geometry::{BBox, PixelRect, nms};
use crate::image_io::Frame;

/// A recall booster (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Booster {
    /// Faces searched again inside each person's upper half, enlarged (needs `person` in
    /// the targets).
    PersonFaces,
    /// The mirrored image too.
    Flip,
    /// The image enlarged (up to 2×, up to `max_side`) too.
    Upscale,
}

impl crate::config::Choice for Booster {
    const ALL: &'static [Self] = &[Booster::PersonFaces, Booster::Flip, Booster::Upscale];
}

/// `detector` on `frame`, plus the passes of every booster in `config.boost` (each once),
/// merged by NMS. `earlier` holds what detectors that ran before found (the persons, for
/// [`Booster::PersonFaces`]).
pub fn detect(detector: &dyn Detector, frame: &Frame, config: &DetectConfig, earlier: &[Detection]) -> Result<Vec<Detection>, DetectError> {
    let mut found = detector.detect(frame)?;
    let plain = found.len();
    let boosters: std::collections::BTreeSet<Booster> = config.boost.iter().copied().collect();
    for booster in boosters {
        found.extend(match booster {
            Booster::Flip => flipped(detector, frame)?,
            Booster::Upscale => upscaled(detector, frame, config.max_side)?,
            Booster::PersonFaces => {
                let persons: Vec<Detection> = earlier.iter().filter(|d| d.class == Class::Person).cloned().collect();
                in_persons(detector, frame, &persons)?
            }
        });
    }
    Ok(if found.len() > plain { nms(found, config.nms_iou) } else { found })
}

/// Persons shorter than this are enlarged to this height for [`Booster::PersonFaces`]
/// (a face is roughly an eighth of a standing body, so about 40 px after enlarging);
/// taller ones already show their faces at a size the model finds.
pub const PERSON_FACES_HEIGHT: f32 = 320.0;
/// Largest enlargement of a person crop.
const PERSON_FACES_MAX_SCALE: f32 = 4.0;
/// Persons shorter than this are too small to hold a face worth searching for.
const PERSON_FACES_MIN_HEIGHT: f32 = 12.0;
/// At most this many persons (best scores first) per image are searched.
const PERSON_FACES_MAX: usize = 32;

/// A part of a frame, enlarged and optionally mirrored, as an RGB frame of its own, and
/// the way back to the frame's coordinates.
struct Transformed {
    frame: Frame,
    crop: PixelRect,
    scale: f32,
    flip: bool,
}

impl Transformed {
    fn new(frame: &Frame, crop: PixelRect, scale: f32, flip: bool) -> Transformed {
        let mut rgb = frame.rgb_crop(crop);
        if scale != 1.0 {
            let (w, h) = (((crop.w as f32 * scale).round() as u32).max(1), ((crop.h as f32 * scale).round() as u32).max(1));
            rgb = imageops::resize(&rgb, w, h, imageops::FilterType::Triangle);
        }
        if flip {
            imageops::flip_horizontal_in_place(&mut rgb);
        }
        let (w, h) = rgb.dimensions();
        Transformed { frame: Frame::new(w, h, 3, rgb.into_raw()), crop, scale, flip }
    }

    /// Runs `detector` on the transformed frame and maps its detections back.
    fn detect(&self, detector: &dyn Detector) -> Result<Vec<Detection>, DetectError> {
        let width = self.frame.width as f32;
        let back_x = |x: f32| if self.flip { width - x } else { x } / self.scale + self.crop.x as f32;
        let back_y = |y: f32| y / self.scale + self.crop.y as f32;
        let mut found = detector.detect(&self.frame)?;
        for d in &mut found {
            let (x1, x2) = if self.flip { (back_x(d.bbox.x2), back_x(d.bbox.x1)) } else { (back_x(d.bbox.x1), back_x(d.bbox.x2)) };
            d.bbox = BBox::new(x1, back_y(d.bbox.y1), x2, back_y(d.bbox.y2));
            if let Some(lm) = &mut d.landmarks {
                for p in lm.iter_mut() {
                    *p = [back_x(p[0]), back_y(p[1])];
                }
                if self.flip {
                    // Left and right swap in a mirror: eyes (0, 1) and mouth corners (3, 4).
                    lm.swap(0, 1);
                    lm.swap(3, 4);
                }
            }
        }
        Ok(found)
    }
}

fn whole(frame: &Frame) -> PixelRect {
    PixelRect { x: 0, y: 0, w: frame.width, h: frame.height }
}

/// [`Booster::Flip`]: `detector` on the mirrored frame.
pub fn flipped(detector: &dyn Detector, frame: &Frame) -> Result<Vec<Detection>, DetectError> {
    Transformed::new(frame, whole(frame), 1.0, true).detect(detector)
}

/// [`Booster::Upscale`]: `detector` on the frame enlarged up to 2× with its longer side at
/// most `max_side`; nothing when that is no enlargement.
pub fn upscaled(detector: &dyn Detector, frame: &Frame, max_side: u32) -> Result<Vec<Detection>, DetectError> {
    let scale = upscale_factor(frame.width, frame.height, max_side);
    if scale <= 1.05 {
        return Ok(Vec::new());
    }
    Transformed::new(frame, whole(frame), scale, false).detect(detector)
}

fn upscale_factor(width: u32, height: u32, max_side: u32) -> f32 {
    (max_side as f32 / width.max(height).max(1) as f32).min(2.0)
}

/// [`Booster::PersonFaces`]: `detector` on the upper half of each person in `persons`
/// that is shorter than [`PERSON_FACES_HEIGHT`], enlarged to that height.
pub fn in_persons(detector: &dyn Detector, frame: &Frame, persons: &[Detection]) -> Result<Vec<Detection>, DetectError> {
    let mut found = Vec::new();
    for (crop, scale) in person_crops(persons, frame.width, frame.height) {
        found.extend(Transformed::new(frame, crop, scale, false).detect(detector)?);
    }
    Ok(found)
}

/// The head-and-shoulders crops [`in_persons`] searches, with their enlargement.
fn person_crops(persons: &[Detection], width: u32, height: u32) -> Vec<(PixelRect, f32)> {
    let mut persons: Vec<&Detection> = persons.iter().collect();
    persons.sort_by(|a, b| b.score.0.total_cmp(&a.score.0));
    persons
        .into_iter()
        .filter(|p| (PERSON_FACES_MIN_HEIGHT..PERSON_FACES_HEIGHT).contains(&p.bbox.height()))
        .take(PERSON_FACES_MAX)
        .filter_map(|p| {
            let b = &p.bbox;
            let (w, h) = (b.width(), b.height());
            // Upper half, a little wider and higher than the box: heads stick out of
            // loose person boxes, and a raised arm makes the box wider than the body.
            let head = BBox::new(b.x1 - 0.15 * w, b.y1 - 0.05 * h, b.x2 + 0.15 * w, b.y1 + 0.5 * h);
            let crop = head.to_pixels(width, height)?;
            let scale = (PERSON_FACES_HEIGHT / h).min(PERSON_FACES_MAX_SCALE);
            Some((crop, scale))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Class, ModelInfo};
    use crate::geometry::Score;

    /// Finds the one bright pixel block of a frame (a stand-in *input*, not a stand-in for
    /// the code under test: the mapping back is what is tested).
    struct BrightSpot(ModelInfo);

    impl Detector for BrightSpot {
        fn detect(&self, frame: &Frame) -> Result<Vec<Detection>, DetectError> {
            let c = frame.channels as usize;
            let (mut x1, mut y1, mut x2, mut y2) = (u32::MAX, u32::MAX, 0, 0);
            for (i, px) in frame.data.chunks_exact(c).enumerate() {
                if px[0] > 128 {
                    let (x, y) = (i as u32 % frame.width, i as u32 / frame.width);
                    (x1, y1, x2, y2) = (x1.min(x), y1.min(y), x2.max(x + 1), y2.max(y + 1));
                }
            }
            if x2 == 0 {
                return Ok(vec![]);
            }
            let (x1, y1, x2, y2) = (x1 as f32, y1 as f32, x2 as f32, y2 as f32);
            Ok(vec![Detection {
                class: Class::Face,
                bbox: BBox::new(x1, y1, x2, y2),
                score: Score(0.9),
                // Landmark 0 on the left edge, 1 on the right.
                landmarks: Some([[x1, y1], [x2, y1], [x1, y2], [x1, y2], [x2, y2]]),
                model: "spot".into(),
            }])
        }
        fn class(&self) -> Class {
            Class::Face
        }

        fn model(&self) -> &ModelInfo {
            &self.0
        }
    }

    fn spot() -> BrightSpot {
        BrightSpot(ModelInfo { name: "spot".into(), path: "spot".into(), sha256: String::new(), device: "cpu".into() })
    }

    /// A 200×100 RGBA frame, black, with a white block at x 20..40, y 30..50.
    fn frame() -> Frame {
        let (w, h) = (200u32, 100u32);
        let mut data = vec![0u8; (w * h * 4) as usize];
        for y in 30..50 {
            for x in 20..40 {
                let i = ((y * w + x) * 4) as usize;
                data[i..i + 4].copy_from_slice(&[255, 255, 255, 255]);
            }
        }
        Frame::new(w, h, 4, data)
    }

    fn close(a: &BBox, b: &BBox, tol: f32) -> bool {
        (a.x1 - b.x1).abs() <= tol && (a.y1 - b.y1).abs() <= tol && (a.x2 - b.x2).abs() <= tol && (a.y2 - b.y2).abs() <= tol
    }

    #[test]
    fn flipped_detections_land_where_the_face_is_with_left_and_right_kept() {
        let d = flipped(&spot(), &frame()).unwrap();
        assert_eq!(d.len(), 1);
        assert!(close(&d[0].bbox, &BBox::new(20.0, 30.0, 40.0, 50.0), 0.01), "{:?}", d[0].bbox);
        let lm = d[0].landmarks.unwrap();
        assert!(lm[0][0] < lm[1][0], "the left eye stays left of the right eye: {lm:?}");
    }

    #[test]
    fn upscaled_detections_map_back_to_the_original_size() {
        let d = upscaled(&spot(), &frame(), 400).unwrap();
        assert_eq!(d.len(), 1);
        // Triangle filtering blurs the block's edge by about a source pixel.
        assert!(close(&d[0].bbox, &BBox::new(20.0, 30.0, 40.0, 50.0), 1.0), "{:?}", d[0].bbox);
        assert!(upscaled(&spot(), &frame(), 200).unwrap().is_empty(), "no enlargement possible: no pass");
        assert_eq!(upscale_factor(1000, 500, 1920), 1.92);
        assert_eq!(upscale_factor(500, 400, 1920), 2.0);
    }

    #[test]
    fn person_crops_cover_the_head_of_small_persons_only() {
        let person = |y1: f32, h: f32| Detection {
            class: Class::Person,
            bbox: BBox::new(10.0, y1, 10.0 + h / 3.0, y1 + h),
            score: Score(0.5),
            landmarks: None,
            model: "nanodet".into(),
        };
        let crops = person_crops(&[person(20.0, 100.0), person(0.0, 400.0), person(0.0, 5.0), person(0.0, 40.0)], 1000, 1000);
        assert_eq!(crops.len(), 2, "only the 100-px and 40-px persons: {crops:?}");
        let (crop, scale) = crops[0];
        assert_eq!(scale, PERSON_FACES_HEIGHT / 100.0);
        assert!(crop.y <= 20 && (70..=75).contains(&(crop.y + crop.h)), "the upper half: {crop:?}");
        assert_eq!(crops[1].1, PERSON_FACES_MAX_SCALE, "enlargement is capped");
        // A face found in the crop maps back inside the person.
        let d = in_persons(&spot(), &frame(), &[Detection { bbox: BBox::new(15.0, 28.0, 45.0, 120.0), ..person(0.0, 1.0) }]).unwrap();
        assert_eq!(d.len(), 1);
        assert!(close(&d[0].bbox, &BBox::new(20.0, 30.0, 40.0, 50.0), 1.0), "{:?}", d[0].bbox);
    }
}
