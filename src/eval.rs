//! Scoring against annotated photos: what share of ground-truth faces ends up inside
//! redacted regions (coverage recall, the privacy number), broken down by subset and size,
//! and how many regions land on photos without people.
//!
//! Reads the layout of `shared/eval` (`manifest.csv`, `faces_wider_attributes.csv`); see
//! its README. A face counts as covered when at least [`COVERED`] of its box lies inside
//! the union of the redacted regions.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::Anonymizer;
use crate::geometry::{BBox, PixelRect};

/// Share of a ground-truth box that must be redacted for it to count as covered.
pub const COVERED: f32 = 0.8;
/// Faces of the `easy` subset at least this tall must always be covered ("must cover").
pub const MUST_COVER_MIN_HEIGHT: f32 = 32.0;

/// One annotated face.
#[derive(Clone, Debug, PartialEq)]
pub struct GtFace {
    pub bbox: BBox,
    /// WIDER's `official_eval_subset`: `easy`, `medium`, `hard` or `none`.
    pub subset: String,
}

impl GtFace {
    pub fn must_cover(&self) -> bool {
        self.subset == "easy" && self.bbox.height() >= MUST_COVER_MIN_HEIGHT
    }
}

/// The images of an evaluation set scored for one class, and their boxes (empty for
/// photos without people).
#[derive(Clone, Debug, Default)]
pub struct FaceSet {
    pub images: BTreeMap<String, Vec<GtFace>>,
}

/// Which manifest column says an image is scored for faces / for persons.
pub const FACE_GT: &str = "face_gt";
pub const PERSON_GT: &str = "person_gt";

/// Reading the set failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} line {line}: {reason}")]
    Parse { path: String, line: usize, reason: String },
    #[error("{image}: {source}")]
    Image { image: String, source: crate::Error },
}

/// The regions an anonymiser plans for one photo, and the photo's size.
#[derive(Clone, Debug)]
pub struct Planned {
    pub regions: Vec<PixelRect>,
    pub width: u32,
    pub height: u32,
}

/// Decodes and plans every named photo in `images` once (in parallel on the current rayon
/// pool), for scoring against one or more annotated sets.
pub fn plan_all<'a>(
    anonymizer: &Anonymizer,
    images: &Path,
    names: impl IntoIterator<Item = &'a String>,
) -> Result<BTreeMap<String, Planned>, EvalError> {
    use rayon::prelude::*;
    let names: std::collections::BTreeSet<&String> = names.into_iter().collect();
    names
        .into_par_iter()
        .map(|name| {
            let path = images.join(name);
            let bytes = std::fs::read(&path).map_err(|source| EvalError::Io { path: path.display().to_string(), source })?;
            let image_err = |source: crate::Error| EvalError::Image { image: name.clone(), source };
            let frame = crate::image_io::decode(&bytes, &anonymizer.config().image).map_err(|e| image_err(e.into()))?.frame;
            let (_, regions) = anonymizer.plan(&frame).map_err(|e| image_err(e.into()))?;
            let regions = regions.iter().map(|r| r.rect).collect();
            Ok((name.clone(), Planned { regions, width: frame.width, height: frame.height }))
        })
        .collect()
}

impl FaceSet {
    /// Loads the images whose `face_gt` starts with `yes` from `manifest`, with the boxes of
    /// `faces` (`image,x,y,w,h[,…,official_eval_subset]`; subset `none` when absent).
    pub fn load(manifest: &Path, faces: &Path) -> Result<FaceSet, EvalError> {
        Self::load_for(manifest, FACE_GT, faces)
    }

    /// The same for any class: images whose manifest `column` starts with `yes`, boxes
    /// from `boxes` (e.g. `persons.csv` with [`PERSON_GT`]).
    pub fn load_for(manifest: &Path, column: &str, faces: &Path) -> Result<FaceSet, EvalError> {
        let mut set = FaceSet::default();
        let (header, rows) = read_csv(manifest)?;
        let col = header.iter().position(|h| h == column).ok_or_else(|| EvalError::Parse {
            path: manifest.display().to_string(),
            line: 1,
            reason: format!("no column {column}"),
        })?;
        for (_, fields) in rows {
            if fields.get(col).is_some_and(|v| v.starts_with("yes")) {
                set.images.insert(fields[0].clone(), Vec::new());
            }
        }
        let (header, rows) = read_csv(faces)?;
        let subset_col = header.iter().position(|h| h == "official_eval_subset");
        for (line, f) in rows {
            let bad = |reason: &str| EvalError::Parse { path: faces.display().to_string(), line, reason: reason.into() };
            if f.len() < 5 {
                return Err(bad("expected image,x,y,w,h"));
            }
            let num = |i: usize| f[i].parse::<f32>().map_err(|_| bad("x, y, w, h must be numbers"));
            let face = GtFace {
                bbox: BBox::from_xywh(num(1)?, num(2)?, num(3)?, num(4)?),
                subset: subset_col.and_then(|c| f.get(c).cloned()).unwrap_or_else(|| "none".into()),
            };
            if let Some(list) = set.images.get_mut(&f[0]) {
                list.push(face);
            }
        }
        Ok(set)
    }
}

type Rows = Vec<(usize, Vec<String>)>;

/// The header's column names and the data rows as (1-based line number, fields).
fn read_csv(path: &Path) -> Result<(Vec<String>, Rows), EvalError> {
    let io = |source| EvalError::Io { path: path.display().to_string(), source };
    let parse = |line: usize, e: csv::Error| EvalError::Parse { path: path.display().to_string(), line, reason: e.to_string() };
    let mut reader = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(std::fs::File::open(path).map_err(io)?);
    let header = reader.headers().map_err(|e| parse(1, e))?.iter().map(str::to_string).collect();
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| parse(i + 2, e))?;
        let line = record.position().map_or(i + 2, |p| p.line() as usize);
        rows.push((line, record.iter().map(str::to_string).collect()));
    }
    Ok((header, rows))
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

/// Covered / total for one bucket of faces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Recall {
    pub covered: usize,
    pub total: usize,
}

impl Recall {
    pub fn add(&mut self, covered: bool) {
        self.total += 1;
        self.covered += covered as usize;
    }
    pub fn value(&self) -> f64 {
        if self.total == 0 { 1.0 } else { self.covered as f64 / self.total as f64 }
    }
}

/// Height buckets used in the reports, in pixels.
pub const HEIGHT_BUCKETS: [(&str, f32, f32); 5] =
    [("<10", 0.0, 10.0), ("10-19", 10.0, 20.0), ("20-39", 20.0, 40.0), ("40-79", 40.0, 80.0), (">=80", 80.0, f32::INFINITY)];

/// Coverage recall over a set, split several ways.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Coverage {
    pub all: Recall,
    pub must_cover: Recall,
    pub by_subset: BTreeMap<String, Recall>,
    pub by_height: BTreeMap<String, Recall>,
    /// Regions on photos that have no faces, and on how many such photos.
    pub false_regions: usize,
    pub photos_with_false_regions: usize,
    pub negative_photos: usize,
    /// Must-cover faces that were not covered: (image, box).
    pub must_cover_misses: Vec<(String, BBox)>,
}

impl Coverage {
    /// Scores `set` against planned regions (every image of the set must be in `planned`).
    pub fn score(set: &FaceSet, planned: &BTreeMap<String, Planned>) -> Coverage {
        let mut coverage = Coverage::default();
        for (name, boxes) in &set.images {
            let p = &planned[name];
            coverage.add_image(name, boxes, &p.regions, p.width, p.height);
        }
        coverage
    }

    /// Adds one image's outcome.
    pub fn add_image(&mut self, image: &str, faces: &[GtFace], regions: &[PixelRect], width: u32, height: u32) {
        if faces.is_empty() {
            self.negative_photos += 1;
            self.false_regions += regions.len();
            self.photos_with_false_regions += (!regions.is_empty()) as usize;
            return;
        }
        for f in faces {
            let covered = covered_fraction(&f.bbox, regions, width, height) >= COVERED;
            self.all.add(covered);
            self.by_subset.entry(f.subset.clone()).or_default().add(covered);
            let h = f.bbox.height();
            if let Some((name, _, _)) = HEIGHT_BUCKETS.iter().find(|(_, lo, hi)| h >= *lo && h < *hi) {
                self.by_height.entry((*name).into()).or_default().add(covered);
            }
            if f.must_cover() {
                self.must_cover.add(covered);
                if !covered {
                    self.must_cover_misses.push((image.to_string(), f.bbox));
                }
            }
        }
    }

    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let row = |s: &mut String, name: &str, r: &Recall| s.push_str(&format!("{name:<16} {:>6.3}  ({}/{})\n", r.value(), r.covered, r.total));
        row(&mut s, "all", &self.all);
        if self.must_cover.total > 0 {
            row(&mut s, "must-cover", &self.must_cover);
        }
        for (k, r) in &self.by_subset {
            row(&mut s, &format!("subset {k}"), r);
        }
        for (name, _, _) in HEIGHT_BUCKETS {
            if let Some(r) = self.by_height.get(name) {
                row(&mut s, &format!("height {name}"), r);
            }
        }
        s.push_str(&format!(
            "false regions    {} on {} of {} photos without faces\n",
            self.false_regions, self.photos_with_false_regions, self.negative_photos
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_counts_the_union_of_regions() {
        let gt = BBox::from_xywh(0.0, 0.0, 10.0, 10.0);
        let half = PixelRect { x: 0, y: 0, w: 5, h: 10 };
        let other_half = PixelRect { x: 5, y: 0, w: 5, h: 10 };
        assert_eq!(covered_fraction(&gt, &[half], 100, 100), 0.5);
        assert_eq!(covered_fraction(&gt, &[half, other_half], 100, 100), 1.0);
        assert_eq!(covered_fraction(&gt, &[half, half], 100, 100), 0.5);
    }
}
