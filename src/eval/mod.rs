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

pub mod chart;
pub mod misses;

use crate::Anonymizer;
use crate::geometry::{BBox, PixelRect, covered_fraction};

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
    /// Regions where detections are neither right nor wrong (COCO's crowd boxes): an
    /// unmatched detection at least half inside one is not counted as a false positive.
    pub ignore: BTreeMap<String, Vec<BBox>>,
}

/// Which manifest column says an image is scored for faces / for persons.
pub const FACE_GT: &str = "face_gt";
pub const PERSON_GT: &str = "person_gt";
/// The manifest column that says a photo's text is annotated (`scripts/text-eval`).
pub const TEXT_GT: &str = "text_gt";

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

/// The regions an anonymiser plans for one photo, the detections behind them, and the
/// photo's size.
#[derive(Clone, Debug)]
pub struct Planned {
    pub regions: Vec<PixelRect>,
    pub detections: Vec<crate::detect::Detection>,
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
            let (detections, regions) = anonymizer.plan(&frame).map_err(|e| image_err(e.into()))?;
            let regions = regions.iter().map(|r| r.rect).collect();
            Ok((name.clone(), Planned { regions, detections, width: frame.width, height: frame.height }))
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
        // WIDER's own subset column, or a set's `subset` (the kind of text: badge, plate…).
        let subset_col = header.iter().position(|h| h == "official_eval_subset").or_else(|| header.iter().position(|h| h == "subset"));
        for (line, f) in rows {
            let face = GtFace {
                bbox: parse_box(faces, line, &f)?,
                subset: subset_col.and_then(|c| f.get(c).cloned()).unwrap_or_else(|| "none".into()),
            };
            if let Some(list) = set.images.get_mut(&f[0]) {
                list.push(face);
            }
        }
        Ok(set)
    }

    /// Adds ignore regions (`image,x,y,w,h`, e.g. `persons_crowd_ignore.csv`).
    pub fn with_ignore(mut self, path: &Path) -> Result<FaceSet, EvalError> {
        let (_, rows) = read_csv(path)?;
        for (line, f) in rows {
            let bbox = parse_box(path, line, &f)?;
            self.ignore.entry(f[0].clone()).or_default().push(bbox);
        }
        Ok(self)
    }
}

/// The box of an `image,x,y,w,h[,…]` row.
fn parse_box(path: &Path, line: usize, f: &[String]) -> Result<BBox, EvalError> {
    let bad = |reason: &str| EvalError::Parse { path: path.display().to_string(), line, reason: reason.into() };
    if f.len() < 5 {
        return Err(bad("expected image,x,y,w,h"));
    }
    let num = |i: usize| f[i].parse::<f32>().map_err(|_| bad("x, y, w, h must be numbers"));
    Ok(BBox::from_xywh(num(1)?, num(2)?, num(3)?, num(4)?))
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

/// IoU at which a detection counts as finding a ground-truth box (the PASCAL/WIDER rule).
pub const MATCH_IOU: f32 = 0.5;

/// False positives by cause (see [`Matching::false_positive_kinds`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FalsePositiveKinds {
    pub duplicate: usize,
    pub localisation: usize,
    pub background: usize,
}

/// One point of a precision/recall curve: keeping detections scoring at least `score`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PrPoint {
    pub score: f32,
    pub precision: f64,
    pub recall: f64,
}

/// Detector quality for one class, by box matching (IoU ≥ [`MATCH_IOU`]) rather than by
/// coverage: each detection, best score first, takes the unmatched ground-truth box it
/// overlaps most; without one at IoU ≥ 0.5 it is a false positive.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Matching {
    /// Ground-truth boxes found (matched).
    pub recall: Recall,
    pub true_positives: usize,
    pub false_positives: usize,
    /// Why the false positives are false: a second detection of a box already found
    /// (IoU ≥ 0.5 with a matched box), a box found but badly placed or shaped (best IoU
    /// 0.1–0.5), or nothing there (IoU < 0.1).
    pub false_positive_kinds: FalsePositiveKinds,
    pub images: usize,
    /// Average precision: area under the interpolated precision/recall curve (all points).
    pub average_precision: f64,
    /// Recall by ground-truth box height (the buckets of [`HEIGHT_BUCKETS`]).
    pub recall_by_height: BTreeMap<String, Recall>,
    /// The curve, one point per distinct score (thinned to at most 200 points).
    pub curve: Vec<PrPoint>,
}

impl Matching {
    pub fn precision(&self) -> f64 {
        let n = self.true_positives + self.false_positives;
        if n == 0 { 1.0 } else { self.true_positives as f64 / n as f64 }
    }

    pub fn false_positives_per_image(&self) -> f64 {
        if self.images == 0 { 0.0 } else { self.false_positives as f64 / self.images as f64 }
    }

    /// Scores the detections of `class` over every image of `set` (images without boxes
    /// count: everything found there is a false positive).
    pub fn score(set: &FaceSet, planned: &BTreeMap<String, Planned>, class: crate::detect::Class) -> Matching {
        let mut m = Matching::default();
        let mut scored: Vec<(f32, bool)> = Vec::new();
        for (name, gt) in &set.images {
            let p = &planned[name];
            let mut dets: Vec<&crate::detect::Detection> = p.detections.iter().filter(|d| d.class == class).collect();
            dets.sort_by(|a, b| b.score.0.total_cmp(&a.score.0));
            let mut taken = vec![false; gt.len()];
            for d in dets {
                let best = gt
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !taken[*i])
                    .map(|(i, g)| (i, g.bbox.iou(&d.bbox)))
                    .filter(|(_, iou)| *iou >= MATCH_IOU)
                    .max_by(|a, b| a.1.total_cmp(&b.1));
                match best {
                    Some((i, _)) => {
                        taken[i] = true;
                        m.true_positives += 1;
                        scored.push((d.score.0, true));
                    }
                    None => {
                        let in_crowd = set.ignore.get(name).is_some_and(|regions| {
                            regions.iter().any(|r| d.bbox.intersection(r).area() >= 0.5 * d.bbox.area())
                        });
                        if !in_crowd {
                            m.false_positives += 1;
                            scored.push((d.score.0, false));
                            let best = gt.iter().map(|g| g.bbox.iou(&d.bbox)).fold(0.0f32, f32::max);
                            let kinds = &mut m.false_positive_kinds;
                            match best {
                                iou if iou >= MATCH_IOU => kinds.duplicate += 1,
                                iou if iou >= 0.1 => kinds.localisation += 1,
                                _ => kinds.background += 1,
                            }
                        }
                    }
                }
            }
            for (g, found) in gt.iter().zip(&taken) {
                m.recall.add(*found);
                let h = g.bbox.height();
                if let Some((bucket, _, _)) = HEIGHT_BUCKETS.iter().find(|(_, lo, hi)| h >= *lo && h < *hi) {
                    m.recall_by_height.entry((*bucket).into()).or_default().add(*found);
                }
            }
            m.images += 1;
        }
        let (curve, ap) = pr_curve(&mut scored, m.recall.total);
        m.curve = curve;
        m.average_precision = ap;
        m
    }

    /// A plain-text summary.
    pub fn table(&self) -> String {
        let k = &self.false_positive_kinds;
        let mut s = format!(
            "IoU>=0.5: recall {:.3} ({}/{}), precision {:.3}, AP {:.3}, false positives {:.2} per image ({} on {} images: {} duplicate, {} misplaced, {} background)\n",
            self.recall.value(),
            self.recall.covered,
            self.recall.total,
            self.precision(),
            self.average_precision,
            self.false_positives_per_image(),
            self.false_positives,
            self.images,
            k.duplicate,
            k.localisation,
            k.background
        );
        for (name, _, _) in HEIGHT_BUCKETS {
            if let Some(r) = self.recall_by_height.get(name) {
                s.push_str(&format!("  recall height {name:<6} {:>6.3}  ({}/{})\n", r.value(), r.covered, r.total));
            }
        }
        s
    }
}

/// The precision/recall curve of `(score, is true positive)` pairs against `positives`
/// ground-truth boxes, and its average precision (precision made monotone from the right,
/// integrated over recall).
fn pr_curve(scored: &mut [(f32, bool)], positives: usize) -> (Vec<PrPoint>, f64) {
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut points = Vec::new();
    let (mut tp, mut fp) = (0usize, 0usize);
    for (i, (score, hit)) in scored.iter().enumerate() {
        if *hit { tp += 1 } else { fp += 1 }
        // One point per distinct score: ties are kept or dropped together.
        if scored.get(i + 1).is_some_and(|next| next.0 == *score) {
            continue;
        }
        let recall = if positives == 0 { 0.0 } else { tp as f64 / positives as f64 };
        points.push(PrPoint { score: *score, precision: tp as f64 / (tp + fp) as f64, recall });
    }
    let mut ap = 0.0;
    let mut best_right = 0.0f64;
    let mut envelope = vec![0.0; points.len()];
    for (i, p) in points.iter().enumerate().rev() {
        best_right = best_right.max(p.precision);
        envelope[i] = best_right;
    }
    let mut last_recall = 0.0;
    for (p, precision) in points.iter().zip(&envelope) {
        ap += (p.recall - last_recall) * precision;
        last_recall = p.recall;
    }
    if points.len() > 200 {
        let step = points.len().div_ceil(200);
        let last = *points.last().expect("non-empty");
        points = points.into_iter().step_by(step).collect();
        if points.last() != Some(&last) {
            points.push(last);
        }
    }
    (points, ap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: f32, score: f32) -> crate::detect::Detection {
        crate::detect::Detection {
            class: crate::detect::Class::Face,
            bbox: BBox::from_xywh(x, 0.0, 10.0, 10.0),
            score: crate::geometry::Score(score),
            landmarks: None,
            model: "t".into(),
        }
    }

    #[test]
    fn matching_counts_each_truth_once_and_misses_as_false_positives() {
        let gt = |x| GtFace { bbox: BBox::from_xywh(x, 0.0, 10.0, 10.0), subset: "easy".into() };
        let mut set = FaceSet::default();
        set.images.insert("a".into(), vec![gt(0.0), gt(100.0)]);
        set.images.insert("empty".into(), vec![]);
        set.images.insert("crowd".into(), vec![]);
        set.ignore.insert("crowd".into(), vec![BBox::from_xywh(0.0, 0.0, 15.0, 10.0)]);
        let mut planned = BTreeMap::new();
        // Two detections on the first face (one is a duplicate → FP), one far away (FP),
        // the second face missed; one FP on the empty photo.
        planned.insert("a".into(), Planned { regions: vec![], detections: vec![det(1.0, 0.9), det(0.0, 0.8), det(50.0, 0.7)], width: 200, height: 20 });
        planned.insert("empty".into(), Planned { regions: vec![], detections: vec![det(0.0, 0.95)], width: 200, height: 20 });
        // In a crowd region: ignored; mostly outside it: a false positive.
        planned.insert("crowd".into(), Planned { regions: vec![], detections: vec![det(2.0, 0.99), det(12.0, 0.1)], width: 200, height: 20 });
        let m = Matching::score(&set, &planned, crate::detect::Class::Face);
        assert_eq!((m.true_positives, m.false_positives, m.recall.covered, m.recall.total, m.images), (1, 4, 1, 2, 3));
        assert_eq!(m.precision(), 0.2);
        // The duplicate on the first face, the far one and the two on empty/crowd photos.
        assert_eq!(m.false_positive_kinds, FalsePositiveKinds { duplicate: 1, localisation: 0, background: 3 });
        assert_eq!(m.false_positives_per_image(), 4.0 / 3.0);
        // Sorted: 0.95 FP, 0.9 TP, 0.8 FP, 0.7 FP, 0.1 FP → the only recall step (0 → 0.5)
        // is at precision 1/2; the envelope keeps 0.5 there: AP = 0.5 × 0.5.
        assert!((m.average_precision - 0.25).abs() < 1e-9, "{}", m.average_precision);
        assert_eq!(m.curve.len(), 5);
        assert_eq!(m.curve[1], PrPoint { score: 0.9, precision: 0.5, recall: 0.5 });
    }

    #[test]
    fn perfect_detection_has_average_precision_one() {
        let mut scored = vec![(0.9, true), (0.8, true), (0.1, false)];
        let (curve, ap) = pr_curve(&mut scored, 2);
        assert_eq!(ap, 1.0);
        assert_eq!(curve.last().unwrap().precision, 2.0 / 3.0);
    }

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
