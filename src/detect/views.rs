//! Which parts of an image a detector looks at, and at what scale.
//!
//! Face detectors find faces of a limited size range relative to their input. Shrinking
//! a 12-megapixel photo to detector size makes a 30-pixel face 10 pixels and it is
//! missed; running the whole photo at full resolution is slow and finds large faces
//! poorly. So: images whose longer side is at most `max_side` are seen once at full
//! resolution. Larger ones are seen (a) whole, downscaled so the longer side is
//! `max_side`, which finds large faces, and (b) as full-resolution tiles of `tile` pixels
//! overlapping by `overlap`, so every face up to `overlap` pixels lies wholly inside at
//! least one tile. A face larger than `overlap` is at least `overlap × max_side / side`
//! pixels in the downscaled view (≥ 120 px with the defaults on a 4000-px photo), which
//! the detector finds easily.

use image::{GenericImageView, ImageBuffer, Pixel, Rgb, Rgba};

use super::{DetectError, Detection};
use crate::image_io::Frame;

/// How a detector sees large images (see the module docs): one full-resolution view up
/// to `max_side`, above it a view downscaled to `max_side` plus `tile`-sized tiles that
/// overlap by `overlap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    pub max_side: u32,
    pub tile: u32,
    pub overlap: u32,
}

impl Tiling {
    /// The views of a `width`×`height` image under this tiling ([`plan`]).
    pub fn plan(&self, width: u32, height: u32) -> Vec<View> {
        plan(width, height, self.max_side, self.tile, self.overlap)
    }
}

/// A rectangle of the image, seen at `scale` (1.0 = full resolution).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct View {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    pub scale: f32,
}

/// Plans the views for a `width`×`height` image (see the module docs).
pub fn plan(width: u32, height: u32, max_side: u32, tile: u32, overlap: u32) -> Vec<View> {
    let long = width.max(height);
    let full = View { x: 0, y: 0, w: width, h: height, scale: 1.0 };
    if long <= max_side || width == 0 || height == 0 {
        return vec![full];
    }
    let mut views = vec![View { scale: max_side as f32 / long as f32, ..full }];
    let xs = positions(width, tile, overlap);
    let ys = positions(height, tile, overlap);
    for &y in &ys {
        for &x in &xs {
            views.push(View { x, y, w: tile.min(width), h: tile.min(height), scale: 1.0 });
        }
    }
    views
}

/// Extra whole views of a `width`×`height` image, downscaled so its longer side is each
/// of `sides` in turn, for detectors that miss objects filling most of their input (very
/// large lettering). A side is skipped when it is not smaller than the whole view
/// [`plan`] already gives (`min(longer side, max_side)`), and each is kept only once.
pub fn coarse(width: u32, height: u32, max_side: u32, sides: &[u32]) -> Vec<View> {
    let long = width.max(height);
    let whole = long.min(max_side);
    let mut sides: Vec<u32> = sides.iter().copied().filter(|&s| s > 0 && s < whole).collect();
    sides.sort_unstable_by(|a, b| b.cmp(a));
    sides.dedup();
    sides.into_iter().map(|s| View { x: 0, y: 0, w: width, h: height, scale: s as f32 / long as f32 }).collect()
}

/// The network input for one view: three planes of f32, padded with zeros to multiples
/// of 32 (right and bottom; never stretched, so boxes need no aspect correction).
pub struct ViewInput {
    pub data: Vec<f32>,
    pub w: u32,
    pub h: u32,
    /// The part of the padded input that holds image content.
    pub content_w: u32,
    pub content_h: u32,
    /// The view's scale (input pixels per image pixel).
    pub scale: f32,
}

impl ViewInput {
    /// Crops (and, for scaled views, shrinks) `view` of `frame`; `pixel` maps RGB to the
    /// model's three input channels.
    pub fn prepare(frame: &Frame, view: &View, pixel: impl Fn([u8; 3]) -> [f32; 3]) -> ViewInput {
        let content_w = ((view.w as f32 * view.scale).round() as u32).max(1);
        let content_h = ((view.h as f32 * view.scale).round() as u32).max(1);
        let (w, h) = (content_w.div_ceil(32) * 32, content_h.div_ceil(32) * 32);
        let mut data = vec![0f32; 3 * (w * h) as usize];
        let plane = (w * h) as usize;
        let mut put = |x: u32, y: u32, rgb: [u8; 3]| {
            let i = (y * w + x) as usize;
            let v = pixel(rgb);
            data[i] = v[0];
            data[plane + i] = v[1];
            data[2 * plane + i] = v[2];
        };
        if view.scale == 1.0 {
            let c = frame.channels as usize;
            for y in 0..view.h {
                let row = &frame.data[((view.y + y) as usize * frame.width as usize + view.x as usize) * c..][..view.w as usize * c];
                for (x, px) in row.chunks_exact(c).enumerate() {
                    put(x as u32, y, [px[0], px[1], px[2]]);
                }
            }
        } else if frame.channels == 4 {
            let img = ImageBuffer::<Rgba<u8>, &[u8]>::from_raw(frame.width, frame.height, &frame.data).expect("frame size");
            let small = image::imageops::thumbnail(&*img.view(view.x, view.y, view.w, view.h), content_w, content_h);
            for (x, y, px) in small.enumerate_pixels() {
                put(x, y, px.to_rgb().0);
            }
        } else {
            let img = ImageBuffer::<Rgb<u8>, &[u8]>::from_raw(frame.width, frame.height, &frame.data).expect("frame size");
            let small = image::imageops::thumbnail(&*img.view(view.x, view.y, view.w, view.h), content_w, content_h);
            for (x, y, px) in small.enumerate_pixels() {
                put(x, y, px.0);
            }
        }
        ViewInput { data, w, h, content_w, content_h, scale: view.scale }
    }
}

/// Runs `detect` on the input of every view (usually [`Tiling::plan`]'s) and maps its boxes and landmarks
/// back to the image. The views' detections are not merged: how overlapping boxes of
/// one object are merged is the detector's choice (NMS for faces, union for text).
pub fn detect_all(
    frame: &Frame,
    views: &[View],
    pixel: impl Fn([u8; 3]) -> [f32; 3] + Copy,
    detect: impl Fn(&ViewInput) -> Result<Vec<Detection>, DetectError>,
) -> Result<Vec<Detection>, DetectError> {
    let mut all = Vec::new();
    for view in views {
        let (s, ox, oy) = (view.scale, view.x as f32, view.y as f32);
        for mut d in detect(&ViewInput::prepare(frame, view, pixel))? {
            d.bbox = d.bbox.unscale(s, s, ox, oy);
            if let Some(lm) = &mut d.landmarks {
                for p in lm.iter_mut() {
                    *p = [p[0] / s + ox, p[1] / s + oy];
                }
            }
            all.push(d);
        }
    }
    Ok(all)
}

/// Tile start positions along one axis: every `tile - overlap`, the last one flush with
/// the end, so all tiles have the same size.
fn positions(len: u32, tile: u32, overlap: u32) -> Vec<u32> {
    if len <= tile {
        return vec![0];
    }
    let step = tile.saturating_sub(overlap).max(1);
    let mut out = Vec::new();
    let mut p = 0;
    while p + tile < len {
        out.push(p);
        p += step;
    }
    out.push(len - tile);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_images_get_one_full_resolution_view() {
        assert_eq!(plan(1920, 1080, 1920, 1280, 256), vec![View { x: 0, y: 0, w: 1920, h: 1080, scale: 1.0 }]);
    }

    #[test]
    fn large_images_get_a_downscaled_view_and_equal_tiles() {
        let v = plan(4000, 3000, 1920, 1280, 256);
        assert_eq!(v[0], View { x: 0, y: 0, w: 4000, h: 3000, scale: 0.48 });
        assert!(v[1..].iter().all(|t| t.w == 1280 && t.h == 1280 && t.scale == 1.0));
        assert_eq!(v.len(), 1 + 4 * 3);
    }

    #[test]
    fn coarse_views_are_whole_smaller_than_the_main_view_and_each_once() {
        let whole = |scale: f32| View { x: 0, y: 0, w: 1600, h: 1000, scale };
        assert_eq!(coarse(1600, 1000, 1920, &[480, 960, 960, 2000]), vec![whole(0.6), whole(0.3)]);
        // Not above the main whole view: a 4000-px photo is already seen at 1920.
        assert_eq!(coarse(4000, 3000, 1920, &[1920, 960]).len(), 1);
        // A photo no larger than a side gets nothing extra at that side.
        assert_eq!(coarse(800, 600, 1920, &[960, 480]), vec![View { x: 0, y: 0, w: 800, h: 600, scale: 0.6 }]);
        assert!(coarse(1600, 1000, 1920, &[]).is_empty());
    }

    proptest! {
        #[test]
        fn every_square_of_overlap_size_lies_inside_some_tile(
            w in 1921u32..9000, h in 1u32..9000, fx in 0f64..1.0, fy in 0f64..1.0,
        ) {
            let (tile, overlap) = (1280, 256);
            let views = plan(w, h, 1920, tile, overlap);
            let side = overlap.min(w).min(h);
            let x = ((w - side) as f64 * fx) as u32;
            let y = ((h - side) as f64 * fy) as u32;
            prop_assert!(views[1..].iter().any(|t| t.x <= x && t.y <= y && x + side <= t.x + t.w && y + side <= t.y + t.h));
            for t in &views[1..] {
                prop_assert!(t.x + t.w <= w && t.y + t.h <= h);
            }
        }
    }
}
