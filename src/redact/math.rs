//! The per-pixel arithmetic every redaction backend shares: the soft-edged mask, the
//! noise hash and the pixelation block size. `shaders/` implements the same formulas in
//! WGSL; keep them in step.

use super::Shape;

/// Mask weight in `[0, 1]` of the pixel at (`px`, `py`) relative to a `w`×`h` region.
pub fn mask(shape: Shape, feather: f32, px: u32, py: u32, w: u32, h: u32) -> f32 {
    mask_uv(shape, feather, axis(px, w), axis(py, h))
}

/// Where pixel `p` lies along a region side of `n` pixels: -1 and 1 at the edges, 0 at
/// the centre (the `u` and `v` of [`mask`]; a backend may compute them once per column
/// and per row).
pub fn axis(p: u32, n: u32) -> f32 {
    let half = n as f32 * 0.5;
    (p as f32 + 0.5 - half) / half
}

/// [`mask`] from the pixel's [`axis`] positions.
pub fn mask_uv(shape: Shape, feather: f32, u: f32, v: f32) -> f32 {
    let d = match shape {
        Shape::Rect => u.abs().max(v.abs()),
        Shape::Ellipse => (u * u + v * v).sqrt(),
    };
    if feather <= 0.0 {
        if d <= 1.0 { 1.0 } else { 0.0 }
    } else {
        ((1.0 - d) / feather).clamp(0.0, 1.0)
    }
}

/// PCG-style 32-bit integer hash (good avalanche, cheap on CPU and GPU).
pub fn hash(v: u32) -> u32 {
    let state = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// Deterministic noise in `[-1, 1]` for a seed, a region index and three coordinates.
pub fn noise(seed: u32, region: u32, a: u32, b: u32, c: u32) -> f32 {
    let h = hash(seed ^ hash(region ^ hash(a ^ hash(b ^ hash(c)))));
    (h >> 8) as f32 / 16_777_215.0 * 2.0 - 1.0
}

/// Pixelation block side for a `w`×`h` region with at most `cells` blocks across.
pub fn block_size(w: u32, h: u32, cells: u32) -> u32 {
    w.max(h).div_ceil(cells.max(1)).max(1)
}

/// Radius of [`gaussian_kernel`]: `ceil(3 sigma)`, sigma at least 0.5.
pub fn gaussian_radius(sigma: f32) -> u32 {
    (3.0 * sigma.max(0.5)).ceil() as u32
}

/// Normalised Gaussian weights for offsets `-r..=r`, `r` = [`gaussian_radius`].
pub fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let r = gaussian_radius(sigma) as i32;
    let sigma = sigma.max(0.5);
    let mut k: Vec<f32> = (-r..=r).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let sum: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    k
}

/// Blend `orig` toward `target` by `m` and round to 8 bits: `floor(x + 0.5)`, clamped (the
/// shader's formula; a conversion, not a call to `round`, which costs a library call per
/// channel on x86-64's baseline).
pub fn blend(orig: u8, target: f32, m: f32) -> u8 {
    let o = orig as f32;
    (o + (target - o) * m + 0.5).clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_full_inside_and_soft_at_the_edge() {
        assert_eq!(mask(Shape::Rect, 0.1, 50, 50, 100, 100), 1.0);
        assert!(mask(Shape::Rect, 0.1, 0, 50, 100, 100) < 0.2);
        assert_eq!(mask(Shape::Ellipse, 0.1, 0, 0, 100, 100), 0.0);
        assert_eq!(mask(Shape::Rect, 0.0, 0, 0, 1, 1), 1.0);
        assert_eq!(mask(Shape::Ellipse, 0.1, 0, 0, 1, 1), 1.0);
    }

    #[test]
    fn ellipse_covers_the_unpadded_face_box() {
        // With padding 0.3 the face box spans the inner 1/1.6 of the region; its corners
        // must be fully redacted with the default feather.
        let (w, h) = (160, 160);
        let inner = (w as f32 * 0.3 / 1.6) as u32;
        assert_eq!(mask(Shape::Ellipse, 0.1, inner, inner, w, h), 1.0);
    }

    #[test]
    fn noise_is_bounded_and_varies() {
        let vals: Vec<f32> = (0..1000).map(|i| noise(7, 1, i, 2, 0)).collect();
        assert!(vals.iter().all(|v| (-1.0..=1.0).contains(v)));
        let mean = vals.iter().sum::<f32>() / vals.len() as f32;
        assert!(mean.abs() < 0.1, "mean {mean}");
        assert_ne!(noise(7, 1, 0, 2, 0), noise(8, 1, 0, 2, 0));
    }

    #[test]
    fn blocks_scale_with_the_region() {
        assert_eq!(block_size(160, 100, 8), 20);
        assert_eq!(block_size(1, 1, 8), 1);
        assert_eq!(block_size(801, 10, 8), 101);
    }

    #[test]
    fn kernel_is_normalised_and_symmetric() {
        let k = gaussian_kernel(4.0);
        assert_eq!(k.len(), 25);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(k[0], k[24]);
        assert_eq!(gaussian_radius(4.0), 12);
        assert_eq!(gaussian_kernel(0.1).len(), 2 * gaussian_radius(0.1) as usize + 1);
    }
}
