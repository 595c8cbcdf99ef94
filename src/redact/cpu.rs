//! The CPU backend (rayon): the reference every other backend must match.
//!
//! Regions are applied in order, each reading the image as the previous ones left it;
//! within a region, rows run in parallel. Each region first reads what it needs (block
//! means, blurred values) and then writes, so a region never reads its own output.

use rayon::prelude::*;

use super::math::{axis, blend, block_size, gaussian_kernel, mask_uv, noise};
use super::{Params, Region, Style};
use crate::geometry::PixelRect;
use crate::image_io::Frame;

/// Redacts `regions` in `frame` in place.
///
/// ```
/// use obscura::geometry::PixelRect;
/// use obscura::detect::Class;
/// use obscura::image_io::Frame;
/// use obscura::redact::{cpu, Params, Region, Shape, Style};
/// let mut frame = Frame::new(4, 4, 3, vec![200; 48]);
/// let region = Region { rect: PixelRect { x: 0, y: 0, w: 2, h: 2 }, class: Class::Face,
///                       style: Style::Fill { color: [0, 0, 0] }, shape: Shape::Rect };
/// cpu::redact(&mut frame, &[region], &Params { feather: 0.0, noise: 0.0, seed: 1 });
/// assert_eq!(&frame.data()[..6], &[0; 6]);
/// assert_eq!(frame.data()[6], 200);
/// ```
pub fn redact(frame: &mut Frame, regions: &[Region], params: &Params) {
    for (index, region) in regions.iter().enumerate() {
        redact_region(frame, region, index as u32, params);
    }
}

/// Redacts one region; `index` is its position in the image's region list (an input
/// of the noise, so every backend must pass the same).
pub fn redact_region(frame: &mut Frame, region: &Region, index: u32, params: &Params) {
    match region.style {
        Style::Pixelate { cells } => pixelate(frame, region, index, cells, params),
        Style::Blur { sigma } => blur(frame, region, index, sigma, params),
        Style::Fill { color } => {
            let c = [color[0] as f32, color[1] as f32, color[2] as f32];
            write_region(frame, region, params, |_, _| c);
        }
    }
}

/// Writes `target(rx, ry)` (region-relative) into the region through the soft mask and
/// makes the covered pixels opaque. The mask's axis positions are computed once per
/// column; a small region is written by one task (rayon's per-task cost would exceed
/// the work).
fn write_region(frame: &mut Frame, region: &Region, params: &Params, target: impl Fn(u32, u32) -> [f32; 3] + Sync) {
    let PixelRect { x, y, w, h } = region.rect;
    let (channels, stride) = (frame.channels as usize, frame.stride());
    let columns: Vec<f32> = (0..w).map(|rx| axis(rx, w)).collect();
    let feather = region.feather(params);
    let rows = &mut frame.data[y as usize * stride..(y + h) as usize * stride];
    let rows_per_task = (PIXELS_PER_TASK / w.max(1) as usize).max(1);
    rows.par_chunks_mut(stride).with_min_len(rows_per_task).enumerate().for_each(|(ry, row)| {
        let ry = ry as u32;
        let v = axis(ry, h);
        let row = &mut row[x as usize * channels..][..w as usize * channels];
        for ((rx, px), &u) in (0..w).zip(row.chunks_exact_mut(channels)).zip(&columns) {
            let m = mask_uv(region.shape, feather, u, v);
            if m <= 0.0 {
                continue;
            }
            let t = target(rx, ry);
            for c in 0..3 {
                px[c] = blend(px[c], t[c], m);
            }
            if channels == 4 {
                px[3] = blend(px[3], 255.0, m);
            }
        }
    });
}

/// About how many pixels one rayon task writes.
const PIXELS_PER_TASK: usize = 16 * 1024;

fn pixelate(frame: &mut Frame, region: &Region, index: u32, cells: u32, params: &Params) {
    let PixelRect { x, y, w, h } = region.rect;
    let b = block_size(w, h, cells);
    let (nbx, nby) = (w.div_ceil(b), h.div_ceil(b));
    let (channels, stride) = (frame.channels as usize, frame.stride());
    let data = &frame.data;
    // Block means (plus noise), block rows in parallel.
    let values: Vec<[f32; 3]> = (0..nby)
        .into_par_iter()
        .with_min_len((PIXELS_PER_TASK / (b as usize * w.max(1) as usize)).max(1))
        .flat_map_iter(|by| {
            (0..nbx).map(move |bx| {
                let (x0, y0) = (x + bx * b, y + by * b);
                let (x1, y1) = ((x0 + b).min(x + w), (y0 + b).min(y + h));
                let mut sum = [0u64; 3];
                for py in y0..y1 {
                    let row = &data[py as usize * stride..];
                    for px in x0..x1 {
                        let p = &row[px as usize * channels..];
                        for c in 0..3 {
                            sum[c] += p[c] as u64;
                        }
                    }
                }
                let n = ((x1 - x0) * (y1 - y0)) as f32;
                let mut v = [0f32; 3];
                for c in 0..3 {
                    v[c] = (sum[c] as f32 / n + params.noise * noise(params.seed, index, bx, by, c as u32)).clamp(0.0, 255.0);
                }
                v
            })
        })
        .collect();
    let column_block: Vec<u32> = (0..w).map(|rx| rx / b).collect();
    write_region(frame, region, params, |rx, ry| values[((ry / b) * nbx + column_block[rx as usize]) as usize]);
}

fn blur(frame: &mut Frame, region: &Region, index: u32, sigma_fraction: f32, params: &Params) {
    let PixelRect { x, y, w, h } = region.rect;
    let kernel = gaussian_kernel(sigma_fraction * w.max(h) as f32);
    let r = (kernel.len() / 2) as i64;
    let (channels, stride) = (frame.channels as usize, frame.stride());
    let (iw, ih) = (frame.width as i64, frame.height as i64);
    // Horizontal pass over the region's columns, for the rows the vertical pass reads.
    let ty0 = (y as i64 - r).max(0);
    let ty1 = (y as i64 + h as i64 + r).min(ih);
    let data = &frame.data;
    let horizontal: Vec<[f32; 3]> = (ty0..ty1)
        .into_par_iter()
        .flat_map_iter(|py| {
            let row = &data[py as usize * stride..][..stride];
            let kernel = &kernel;
            (0..w as i64).map(move |rx| {
                let mut acc = [0f32; 3];
                for (k, wk) in kernel.iter().enumerate() {
                    let sx = (x as i64 + rx + k as i64 - r).clamp(0, iw - 1) as usize;
                    let p = &row[sx * channels..];
                    for c in 0..3 {
                        acc[c] += wk * p[c] as f32;
                    }
                }
                acc
            })
        })
        .collect();
    // Vertical pass, computed for every pixel of the region before any is written.
    let blurred: Vec<[f32; 3]> = (0..h as i64)
        .into_par_iter()
        .flat_map_iter(|ry| {
            let (kernel, horizontal) = (&kernel, &horizontal);
            (0..w as i64).map(move |rx| {
                let mut acc = [0f32; 3];
                for (k, wk) in kernel.iter().enumerate() {
                    let sy = (y as i64 + ry + k as i64 - r).clamp(0, ih - 1);
                    let p = horizontal[((sy - ty0) * w as i64 + rx) as usize];
                    for c in 0..3 {
                        acc[c] += wk * p[c];
                    }
                }
                for (c, a) in acc.iter_mut().enumerate() {
                    *a += params.noise * noise(params.seed, index, rx as u32, ry as u32, c as u32);
                }
                acc
            })
        })
        .collect();
    write_region(frame, region, params, |rx, ry| blurred[(ry * w + rx) as usize]);
}

/// Draws a 2-pixel outline of `rect` in `color` (the `--draw-boxes` debugging aid).
pub fn draw_outline(frame: &mut Frame, rect: PixelRect, color: [u8; 3]) {
    let channels = frame.channels as usize;
    let (w, h) = (frame.width, frame.height);
    let mut put = |px: u32, py: u32| {
        if px < w && py < h {
            let i = (py as usize * w as usize + px as usize) * channels;
            frame.data[i..i + 3].copy_from_slice(&color);
            if channels == 4 {
                frame.data[i + 3] = 255;
            }
        }
    };
    let (x1, y1) = (rect.x + rect.w.saturating_sub(1), rect.y + rect.h.saturating_sub(1));
    for t in 0..2u32 {
        for px in rect.x..=x1 {
            put(px, rect.y + t);
            put(px, y1.saturating_sub(t));
        }
        for py in rect.y..=y1 {
            put(rect.x + t, py);
            put(x1.saturating_sub(t), py);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Class;
    use crate::redact::Shape;

    fn gradient(w: u32, h: u32, channels: u8) -> Frame {
        let data = (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                let px = [(x * 7 % 256) as u8, (y * 5 % 256) as u8, ((x + y) % 256) as u8, 0];
                px.into_iter().take(channels as usize)
            })
            .collect();
        Frame::new(w, h, channels, data)
    }

    fn region(x: u32, y: u32, w: u32, h: u32, style: Style) -> Region {
        Region { rect: PixelRect { x, y, w, h }, class: Class::Face, style, shape: Shape::Rect }
    }

    const HARD: Params = Params { feather: 0.0, noise: 0.0, seed: 3 };

    #[test]
    fn pixels_outside_regions_are_untouched() {
        let orig = gradient(64, 48, 3);
        for style in [Style::DEFAULT_PIXELATE, Style::DEFAULT_BLUR, Style::DEFAULT_FILL] {
            let mut f = orig.clone();
            redact(&mut f, &[region(10, 8, 20, 16, style)], &Params { feather: 0.1, noise: 16.0, seed: 9 });
            for yy in 0..48u32 {
                for xx in 0..64u32 {
                    if !(10..30).contains(&xx) || !(8..24).contains(&yy) {
                        let i = ((yy * 64 + xx) * 3) as usize;
                        assert_eq!(f.data[i..i + 3], orig.data[i..i + 3], "{style:?} changed ({xx},{yy})");
                    }
                }
            }
            assert_ne!(f, orig, "{style:?} changed nothing");
        }
    }

    /// A face's edge is soft; a text region's is hard at any feather, up to its last pixel.
    #[test]
    fn a_text_region_is_filled_to_its_edge_whatever_the_feather() {
        for feather in [0.1, 0.5, 1.0] {
            let mut f = gradient(64, 48, 3);
            let params = Params { feather, noise: 0.0, seed: 1 };
            let text = Region { class: Class::Text, ..region(4, 4, 50, 12, Style::DEFAULT_FILL) };
            redact(&mut f, &[text, region(4, 24, 50, 12, Style::DEFAULT_FILL)], &params);
            let black = |x: u32, y: u32| f.data[((y * 64 + x) * 3) as usize..][..3] == [0, 0, 0];
            assert!((4..54).all(|x| (4..16).all(|y| black(x, y))), "feather {feather}: every text pixel is filled");
            assert!(!black(4, 30) && !black(53, 30), "feather {feather}: a face region's sides are soft");
        }
    }

    #[test]
    fn pixelate_without_noise_gives_block_means() {
        let mut f = gradient(16, 16, 3);
        let orig = f.clone();
        redact(&mut f, &[region(0, 0, 16, 16, Style::Pixelate { cells: 2 })], &HARD);
        // Block (0,0) covers x,y in 0..8: red = x*7 mean = 24.5, so 24 or 25 after rounding.
        let mut sum = 0u32;
        for yy in 0..8 {
            for xx in 0..8 {
                sum += orig.data[(yy * 16 + xx) * 3] as u32;
            }
        }
        let mean = sum as f32 / 64.0;
        assert_eq!(f.data[0], mean.round() as u8);
        assert_eq!(f.data[0], f.data[(7 * 16 + 7) * 3]);
    }

    #[test]
    fn fill_makes_transparent_pixels_opaque() {
        let mut f = gradient(8, 8, 4);
        assert!(f.data.chunks(4).all(|p| p[3] == 0));
        redact(&mut f, &[region(2, 2, 4, 4, Style::DEFAULT_FILL)], &HARD);
        let i = ((3 * 8 + 3) * 4) as usize;
        assert_eq!(&f.data[i..i + 4], &[0, 0, 0, 255]);
        assert_eq!(f.data[3], 0, "outside stays as it was");
    }

    #[test]
    fn blur_of_a_flat_image_stays_flat_without_noise() {
        let mut f = Frame::new(40, 30, 3, vec![100; 40 * 30 * 3]);
        redact(&mut f, &[region(0, 0, 40, 30, Style::DEFAULT_BLUR)], &HARD);
        assert!(f.data.iter().all(|&v| v == 100));
    }

    #[test]
    fn blur_removes_fine_detail() {
        // A checkerboard has maximal local contrast; after a strong blur it is nearly flat.
        let data = (0..64 * 64).flat_map(|i| if (i % 64 + i / 64) % 2 == 0 { [0u8; 3] } else { [255u8; 3] }).collect();
        let mut f = Frame::new(64, 64, 3, data);
        redact(&mut f, &[region(0, 0, 64, 64, Style::DEFAULT_BLUR)], &HARD);
        // Away from the borders (where clamping repeats edge pixels) it is flat grey.
        for y in 24..40 {
            for x in 24..40 {
                let v = f.data[(y * 64 + x) * 3];
                assert!((120..=135).contains(&v), "({x},{y}) = {v}");
            }
        }
        assert!(f.data.iter().all(|&v| (60..=195).contains(&v)), "no pixel keeps full contrast");
    }

    #[test]
    fn noise_depends_on_the_seed() {
        let mut a = gradient(32, 32, 3);
        let mut b = a.clone();
        let p = Params { feather: 0.0, noise: 16.0, seed: 1 };
        redact(&mut a, &[region(0, 0, 32, 32, Style::DEFAULT_PIXELATE)], &p);
        redact(&mut b, &[region(0, 0, 32, 32, Style::DEFAULT_PIXELATE)], &Params { seed: 2, ..p });
        assert_ne!(a, b);
    }

    #[test]
    fn one_pixel_regions_and_borders_work() {
        let mut f = gradient(5, 5, 3);
        redact(&mut f, &[region(4, 4, 1, 1, Style::DEFAULT_PIXELATE), region(0, 0, 1, 1, Style::DEFAULT_BLUR), region(4, 0, 1, 5, Style::DEFAULT_FILL)], &HARD);
        assert_eq!(&f.data[(4 * 5 + 4) * 3..][..3], &[0, 0, 0]);
    }
}
