//! A contact sheet of what detection misses, for a person to look at: `obscura eval
//! --misses DIR` writes, per scored class, `DIR/<class>-misses.png` (a grid of crops) and
//! `DIR/<class>/NNN.png` (each crop), plus `DIR/index.html` listing every crop with its
//! photo, box and the share of the box that was redacted.
//!
//! A miss is a ground-truth box less than [`COVERED`] inside the redacted
//! regions. Each crop shows the box in red and the redacted regions near it in blue, with
//! context around it; the largest misses come first (they matter most for privacy).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use image::{Rgb, RgbImage, imageops};

use super::{COVERED, EvalError, FaceSet, Planned};
use crate::geometry::covered_fraction;
use crate::geometry::{BBox, PixelRect};
use crate::image_io::{Frame, ImageConfig};

/// One ground-truth box that was not covered.
#[derive(Clone, Debug, PartialEq)]
pub struct Miss {
    pub image: String,
    pub bbox: BBox,
    /// Share of the box inside redacted regions (below [`COVERED`]).
    pub covered: f32,
}

/// Side of a grid cell in the PNG sheet.
const CELL: u32 = 160;
const COLUMNS: u32 = 10;
const RED: [u8; 3] = [230, 20, 20];
const BLUE: [u8; 3] = [20, 90, 230];

/// The boxes of `set` at least `min_height` pixels tall that were not covered, largest
/// first.
pub fn find(set: &FaceSet, planned: &BTreeMap<String, Planned>, min_height: f32) -> Vec<Miss> {
    let mut misses: Vec<Miss> = set
        .images
        .iter()
        .flat_map(|(image, boxes)| {
            let p = &planned[image];
            boxes.iter().filter(|g| g.bbox.height() >= min_height).filter_map(move |g| {
                let covered = covered_fraction(&g.bbox, &p.regions, p.width, p.height);
                (covered < COVERED).then(|| Miss { image: image.clone(), bbox: g.bbox, covered })
            })
        })
        .collect();
    misses.sort_by(|a, b| b.bbox.height().total_cmp(&a.bbox.height()).then_with(|| a.image.cmp(&b.image)));
    misses
}

/// Writes the crops of the first `limit` `misses` of `class` (photos read from `images`)
/// into `dir`, and returns the HTML section that lists them.
pub fn write_class(
    dir: &Path,
    images: &Path,
    class: &str,
    misses: &[Miss],
    planned: &BTreeMap<String, Planned>,
    limit: usize,
) -> Result<String, EvalError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source: std::io::Error| EvalError::Io { path: path.clone(), source }
    };
    let crops_dir = dir.join(class);
    std::fs::create_dir_all(&crops_dir).map_err(io(&crops_dir))?;
    let shown = &misses[..misses.len().min(limit)];
    let rows = (shown.len() as u32).div_ceil(COLUMNS).max(1);
    let mut sheet = RgbImage::from_pixel(COLUMNS * CELL, rows * CELL, Rgb([40, 40, 40]));
    let mut html = format!("<h2>{class}: {} missed, {} shown</h2>\n<div class=grid>\n", misses.len(), shown.len());
    let mut frames: BTreeMap<&str, Frame> = BTreeMap::new();
    for (i, miss) in shown.iter().enumerate() {
        if !frames.contains_key(miss.image.as_str()) {
            let path = images.join(&miss.image);
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let frame = crate::image_io::decode(&bytes, &ImageConfig::default())
                .map_err(|e| EvalError::Image { image: miss.image.clone(), source: e.into() })?
                .frame;
            frames.insert(&miss.image, frame);
        }
        let crop = crop(&frames[miss.image.as_str()], miss, &planned[&miss.image].regions);
        let file = format!("{i:03}.png");
        let path = crops_dir.join(&file);
        crop.save(&path).map_err(|e| EvalError::Io { path: path.display().to_string(), source: std::io::Error::other(e) })?;
        let cell = fit(&crop, CELL);
        let (col, row) = (i as u32 % COLUMNS, i as u32 / COLUMNS);
        imageops::overlay(&mut sheet, &cell, (col * CELL + (CELL - cell.width()) / 2) as i64, (row * CELL + (CELL - cell.height()) / 2) as i64);
        let b = &miss.bbox;
        let _ = writeln!(
            html,
            "<figure><img src=\"{class}/{file}\"><figcaption>{} · {:.0}×{:.0} px at ({:.0}, {:.0}) · {:.0} % redacted</figcaption></figure>",
            escape(&miss.image),
            b.width(),
            b.height(),
            b.x1,
            b.y1,
            miss.covered * 100.0
        );
    }
    html.push_str("</div>\n");
    let sheet_path = dir.join(format!("{class}-misses.png"));
    sheet.save(&sheet_path).map_err(|e| EvalError::Io { path: sheet_path.display().to_string(), source: std::io::Error::other(e) })?;
    Ok(html)
}

/// Writes `DIR/index.html` around the classes' sections.
pub fn write_index(dir: &Path, title: &str, sections: &[String]) -> Result<(), EvalError> {
    let mut html = format!(
        "<!doctype html>\n<meta charset=utf-8>\n<title>Misses: {0}</title>\n<style>body{{font-family:sans-serif;background:#222;color:#ddd}}\
         .grid{{display:flex;flex-wrap:wrap;gap:8px}}figure{{margin:0;width:220px}}img{{max-width:220px;max-height:220px}}\
         figcaption{{font-size:12px}}</style>\n<h1>Misses: {0}</h1>\n<p>Red: the annotated box. Blue: redacted regions nearby.</p>\n",
        escape(title)
    );
    for s in sections {
        html.push_str(s);
    }
    let path = dir.join("index.html");
    std::fs::write(&path, html).map_err(|source| EvalError::Io { path: path.display().to_string(), source })
}

/// The miss with context (its box enlarged 2.5×, at least 64 px), the box in red and the
/// regions that touch the crop in blue.
fn crop(frame: &Frame, miss: &Miss, regions: &[PixelRect]) -> RgbImage {
    let b = &miss.bbox;
    let side = (b.width().max(b.height()) * 2.5).max(64.0);
    let (cx, cy) = ((b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0);
    let area = BBox::new(cx - side / 2.0, cy - side / 2.0, cx + side / 2.0, cy + side / 2.0)
        .to_pixels(frame.width, frame.height)
        .unwrap_or(PixelRect { x: 0, y: 0, w: frame.width.max(1), h: frame.height.max(1) });
    let mut out = frame.rgb_crop(area);
    let local = |r: PixelRect| -> Option<(i64, i64, i64, i64)> {
        let (x1, y1) = (r.x as i64 - area.x as i64, r.y as i64 - area.y as i64);
        let (x2, y2) = (x1 + r.w as i64 - 1, y1 + r.h as i64 - 1);
        (x2 >= 0 && y2 >= 0 && x1 < area.w as i64 && y1 < area.h as i64).then_some((x1, y1, x2, y2))
    };
    for r in regions {
        if let Some(rect) = local(*r) {
            outline(&mut out, rect, BLUE);
        }
    }
    if let Some(rect) = b.to_pixels(frame.width, frame.height).and_then(local) {
        outline(&mut out, rect, RED);
    }
    out
}

/// A 1-px rectangle outline, clipped to the image.
fn outline(img: &mut RgbImage, (x1, y1, x2, y2): (i64, i64, i64, i64), color: [u8; 3]) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let mut put = |x: i64, y: i64| {
        if (0..w).contains(&x) && (0..h).contains(&y) {
            img.put_pixel(x as u32, y as u32, Rgb(color));
        }
    };
    for x in x1..=x2 {
        put(x, y1);
        put(x, y2);
    }
    for y in y1..=y2 {
        put(x1, y);
        put(x2, y);
    }
}

/// `img` scaled to fit a `side`×`side` cell (enlarged too: misses are often tiny).
fn fit(img: &RgbImage, side: u32) -> RgbImage {
    let scale = side as f32 / img.width().max(img.height()).max(1) as f32;
    let (w, h) = (((img.width() as f32 * scale) as u32).clamp(1, side), ((img.height() as f32 * scale) as u32).clamp(1, side));
    imageops::resize(img, w, h, imageops::FilterType::Nearest)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::GtFace;

    #[test]
    fn misses_are_uncovered_boxes_above_the_height_largest_first_and_the_sheet_shows_them() {
        let face = |x: f32, h: f32| GtFace { bbox: BBox::from_xywh(x, 10.0, h, h), subset: "easy".into() };
        let mut set = FaceSet::default();
        set.images.insert("a.png".into(), vec![face(10.0, 20.0), face(50.0, 30.0), face(100.0, 40.0), face(150.0, 5.0)]);
        // The 30-px face is fully covered; the 40-px one half.
        let regions = vec![PixelRect { x: 50, y: 10, w: 30, h: 30 }, PixelRect { x: 100, y: 10, w: 20, h: 40 }];
        let planned = BTreeMap::from([("a.png".to_string(), Planned { regions, detections: vec![], width: 200, height: 80 })]);
        let misses = find(&set, &planned, 10.0);
        let found: Vec<(f32, f32)> = misses.iter().map(|m| (m.bbox.height(), m.covered)).collect();
        assert_eq!(found, vec![(40.0, 0.5), (20.0, 0.0)]);

        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        RgbImage::from_pixel(200, 80, Rgb([200, 200, 200])).save(images.join("a.png")).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let section = write_class(&out, &images, "faces", &misses, &planned, 100).unwrap();
        write_index(&out, "test", &[section]).unwrap();
        let html = std::fs::read_to_string(out.join("index.html")).unwrap();
        assert!(html.contains("faces/000.png") && html.contains("faces/001.png") && html.contains("50 % redacted"), "{html}");
        let first = image::open(out.join("faces/000.png")).unwrap().to_rgb8();
        assert!(first.pixels().any(|p| p.0 == RED) && first.pixels().any(|p| p.0 == BLUE), "box and region drawn");
        let sheet = image::open(out.join("faces-misses.png")).unwrap().to_rgb8();
        assert_eq!(sheet.dimensions(), (COLUMNS * CELL, CELL));
    }
}
