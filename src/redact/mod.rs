//! Redaction: what happens to the pixels of each detected region.
//!
//! Owns the redaction spec ([`Style`], [`Shape`], padding, soft edge, noise), the plan
//! that turns detections into [`Region`]s, and the backends that apply it: [`cpu`]
//! (rayon) is the reference implementation, `gpu` (wgpu, `shaders/redact.wgsl`; Cargo
//! feature `gpu`) gives the same pixels within ±1 per channel, [`backend`] chooses between them. It knows
//! nothing of models or files.
//!
//! # Why the styles hold
//! - **Pixelate** (default): each region is cut into at most `cells` blocks across its
//!   longer side (8 by default, so a padded face is about 5 blocks wide), each block is
//!   replaced by its mean colour, and every block mean gets independent random noise
//!   (±`noise`). Five-by-five blocks leave too little information to recognise a face,
//!   and the noise (fresh random seed per image) defeats attacks that match exact block
//!   means against candidate faces (Depix-style search; the DP-Pix / "Privacy Blur" line
//!   of work). The block size grows with the face, so large faces are not left finely
//!   pixelated: recognisers trained on mosaics succeed when blocks are small relative to
//!   the face (McPherson et al. 2016, ~14 blocks across), not at ~5.
//! - **Fill**: a solid colour. Nothing of the original survives; the highest assurance.
//! - **Blur**: Gaussian with sigma a fraction of the region (default ⅛ of its longer
//!   side) computed in floating point, plus per-pixel noise. Offered for appearance only:
//!   published work re-identifies most Gaussian-blurred faces (Revelio, 2025), and weak
//!   blur is invertible by deconvolution (the noise stops deconvolution, not recognisers
//!   trained on blurred faces). Not the default.
//!
//! - **Text is filled** by default (`text_style`): a line of text is a short string from
//!   a small alphabet, so what a face's blocks keep is enough to read it back. Pixelating
//!   a plate into one block per character leaves each character's ink density, and
//!   blurred or pixelated text of a known font is recovered by matching candidate strings
//!   (Depix; Hill et al. 2016 on redacted documents). A solid fill leaves nothing to match.
//!   Pixelate and blur stay available for text too; both are weaker there than on faces.
//!
//! Alpha is never left transparent inside a region: a face's colour hidden under alpha 0
//! would survive in the file, so redacted pixels become opaque.

pub mod backend;
pub mod cpu;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod math;

use serde::{Deserialize, Serialize};

use crate::detect::{Class, Detection};
use crate::geometry::PixelRect;

/// How a region's pixels are replaced.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Style {
    /// Block means over at most `cells` blocks across the region's longer side, plus noise.
    Pixelate { cells: u32 },
    /// Gaussian blur, sigma = `sigma` × the region's longer side, plus noise.
    Blur { sigma: f32 },
    /// A solid RGB colour.
    Fill { color: [u8; 3] },
}

impl Style {
    pub const DEFAULT_PIXELATE: Style = Style::Pixelate { cells: 8 };
    pub const DEFAULT_BLUR: Style = Style::Blur { sigma: 0.125 };
    pub const DEFAULT_FILL: Style = Style::Fill { color: [0, 0, 0] };
    /// Each kind with its default parameters, in the order front ends list them.
    pub const DEFAULTS: [Style; 3] = [Style::DEFAULT_PIXELATE, Style::DEFAULT_FILL, Style::DEFAULT_BLUR];

    /// The style's kind: `pixelate`, `blur` or `fill` (its serde tag, and what the CLI's
    /// `--style` and the service's `style=` name).
    pub fn kind(&self) -> &'static str {
        match self {
            Style::Pixelate { .. } => "pixelate",
            Style::Blur { .. } => "blur",
            Style::Fill { .. } => "fill",
        }
    }

    /// The style of `kind` with its default parameters.
    pub fn of_kind(kind: &str) -> Option<Style> {
        Style::DEFAULTS.into_iter().find(|s| s.kind() == kind)
    }
}

impl Default for Style {
    fn default() -> Self {
        Style::DEFAULT_PIXELATE
    }
}

/// The outline of the redacted area inside a region's rectangle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// The whole rectangle (default: covers hair and ears in the corners too).
    #[default]
    Rect,
    /// The ellipse inscribed in the rectangle.
    Ellipse,
}

impl crate::config::Choice for Shape {
    const ALL: &'static [Self] = &[Shape::Rect, Shape::Ellipse];
}

/// Redaction settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedactConfig {
    /// Style for faces.
    pub style: Style,
    /// Style for whole persons (default: pixelate, 8 blocks across the body); `None`
    /// leaves bodies as they are (persons are then only detected, e.g. for the
    /// person-faces booster; their faces are still redacted).
    pub person_style: Option<Style>,
    pub shape: Shape,
    /// Each side of a detected box grows by this fraction of the box (default 0.3, like
    /// deface's mask scale 1.3), so hairline, ears and chin are covered.
    pub padding: f32,
    /// The same for person boxes, which are already loose (default 0.05).
    pub person_padding: f32,
    /// Style for text (default: fill, see the module docs). Text is always redacted as
    /// a whole rectangle, whatever `shape` says: an ellipse would leave the first and
    /// last letters in its corners.
    pub text_style: Style,
    /// Each side of a text box grows by this fraction of the box's shorter side, its
    /// line height (default 0.3: enough to take in a number plate's border; the plates
    /// of `scripts/text-eval` are scored by the whole plate's box).
    pub text_padding: f32,
    /// Width of the soft edge as a fraction of the region's half-size (default 0.1); the
    /// inner 90 % is fully redacted. 0 gives a hard edge. Text regions always have a
    /// hard edge ([`Region::feather`]).
    pub feather: f32,
    /// Noise amplitude in 8-bit levels added to pixelated blocks and blurred pixels
    /// (default 16).
    pub noise: f32,
    /// Noise seed; `None` (default) draws a fresh random seed for every image, which is
    /// what makes the noise a defence. Set it only for reproducible tests.
    pub seed: Option<u64>,
    /// Draw detector boxes on the output (debugging aid; the regions are still redacted).
    pub draw_boxes: bool,
    /// Where redaction runs: `cpu`, `gpu` or `auto` (default: the GPU only if it is a
    /// real one).
    pub on: backend::RedactOn,
}

impl Default for RedactConfig {
    fn default() -> Self {
        Self { style: Style::default(), person_style: Some(Style::default()), shape: Shape::default(), padding: 0.3, person_padding: 0.05, text_style: Style::DEFAULT_FILL, text_padding: 0.3, feather: 0.1, noise: 16.0, seed: None, draw_boxes: false, on: backend::RedactOn::Auto }
    }
}

/// One area to redact, already padded and clipped to the image.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Region {
    pub rect: PixelRect,
    pub class: Class,
    pub style: Style,
    pub shape: Shape,
}

impl Region {
    /// The soft edge this region gets: the image's, but none for text. A soft edge is for
    /// the look of a face's outline; on a line of text it would leave the first and last
    /// letters half visible (the edge's width grows with the line's length), so text
    /// regions have hard edges.
    pub fn feather(&self, params: &Params) -> f32 {
        if self.class == Class::Text { 0.0 } else { params.feather }
    }
}

/// Turns detections into regions: pads each box, clips it to the image, drops boxes
/// that fall wholly outside.
pub fn plan(detections: &[Detection], config: &RedactConfig, width: u32, height: u32) -> Vec<Region> {
    detections
        .iter()
        .filter_map(|d| {
            let (style, padded, shape) = match d.class {
                Class::Face => (config.style, d.bbox.pad(config.padding), config.shape),
                Class::Person => (config.person_style?, d.bbox.pad(config.person_padding), config.shape),
                Class::Text => (config.text_style, d.bbox.grow(d.bbox.width().min(d.bbox.height()) * config.text_padding), Shape::Rect),
            };
            let rect = padded.to_pixels(width, height)?;
            Some(Region { rect, class: d.class, style, shape })
        })
        .collect()
}

/// Spreads each animation frame's regions to the frames either side of it, so a face
/// the detector misses in one frame (turned away, blurred by motion) is still covered
/// where it was a frame before or after. A neighbour's region is added, clipped to the
/// frame, unless a region of the same class already contains it; regions only reach one
/// frame each way, from the neighbour's own detections (nothing is spread further).
/// For animations only: a TIFF's pages are separate pictures.
///
/// ```
/// use obscura::detect::Class;
/// use obscura::geometry::PixelRect;
/// use obscura::redact::{spread_over_frames, Region, Shape, Style};
/// let at = |x| Region { rect: PixelRect { x, y: 0, w: 10, h: 10 }, class: Class::Face, style: Style::default(), shape: Shape::Rect };
/// let spread = spread_over_frames(&[vec![at(0)], vec![], vec![at(40)]], (64, 64));
/// assert_eq!(spread, [vec![at(0)], vec![at(0), at(40)], vec![at(40)]]);
/// ```
pub fn spread_over_frames(frames: &[Vec<Region>], (width, height): (u32, u32)) -> Vec<Vec<Region>> {
    (0..frames.len())
        .map(|i| {
            let mut regions = frames[i].clone();
            let neighbours = [i.checked_sub(1), Some(i + 1)].into_iter().flatten().filter_map(|j| frames.get(j));
            for region in neighbours.flatten() {
                let Some(rect) = region.rect.clipped(width, height) else { continue };
                if !regions.iter().any(|r| r.class == region.class && r.rect.contains(&rect)) {
                    regions.push(Region { rect, ..*region });
                }
            }
            regions
        })
        .collect()
}

/// Per-image parameters every backend applies identically.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    pub feather: f32,
    pub noise: f32,
    pub seed: u32,
}

impl Params {
    /// Resolves the seed: the configured one, or a fresh random one.
    pub fn for_image(config: &RedactConfig) -> Params {
        let seed = config.seed.unwrap_or_else(|| {
            let mut b = [0u8; 8];
            // A failing OS random source leaves the noise predictable, not the face visible.
            getrandom::fill(&mut b).unwrap_or_else(|e| tracing::warn!("no OS randomness for the noise seed: {e}"));
            u64::from_le_bytes(b)
        });
        Params { feather: config.feather.max(0.0), noise: config.noise.max(0.0), seed: (seed ^ (seed >> 32)) as u32 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(class: Class, x: u32, y: u32, w: u32, h: u32) -> Region {
        Region { rect: PixelRect { x, y, w, h }, class, style: Style::default(), shape: Shape::Rect }
    }

    #[test]
    fn a_frame_gets_its_neighbours_regions_unless_it_already_covers_them() {
        let face = |x, w| region(Class::Face, x, 10, w, 20);
        let frames = vec![vec![face(0, 20)], vec![face(0, 30)], vec![], vec![face(100, 20)], vec![face(200, 20)]];
        let spread = spread_over_frames(&frames, (210, 100));
        // Frame 1's face (0..30) is wider than frame 0's (0..20), so frame 0 gets it too.
        assert_eq!(spread[0], [face(0, 20), face(0, 30)]);
        // Frame 1's own region holds frame 0's; frame 2 has none to give.
        assert_eq!(spread[1], [face(0, 30)]);
        // The frame with no detection gets both neighbours' faces.
        assert_eq!(spread[2], [face(0, 30), face(100, 20)]);
        // Clipped to the frame: frame 4's face at 200..220 becomes 200..210.
        assert_eq!(spread[3], [face(100, 20), face(200, 10)]);
        // Only one frame each way: frame 4 does not get frame 2's (spread) regions.
        assert_eq!(spread[4], [face(200, 20), face(100, 20)]);
    }

    #[test]
    fn a_region_of_another_class_does_not_stand_in_and_an_animation_of_one_frame_is_unchanged() {
        let frames = vec![vec![region(Class::Person, 0, 0, 100, 100)], vec![region(Class::Face, 10, 10, 20, 20)]];
        let spread = spread_over_frames(&frames, (100, 100));
        assert_eq!(spread[0].len(), 2, "a face inside a body is still redacted as a face");
        assert_eq!(spread_over_frames(&frames[..1], (100, 100)), &frames[..1]);
        assert!(spread_over_frames(&[], (100, 100)).is_empty());
    }
}
