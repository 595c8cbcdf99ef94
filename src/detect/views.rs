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
