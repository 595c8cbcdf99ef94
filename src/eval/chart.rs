//! The PNG that `obscura eval --chart` writes: precision/recall curves (left) and recall
//! by box height (right, coverage recall solid, IoU-0.5 recall dashed), one colour per
//! class. Text uses DejaVu Sans compiled into the binary, so no system font is needed.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::{Coverage, HEIGHT_BUCKETS, Matching};

/// Why a chart could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("drawing the chart: {0}")]
    Draw(String),
    #[error("encoding the chart as PNG: {0}")]
    Encode(#[from] image::ImageError),
    #[error(transparent)]
    Write(#[from] crate::image_io::WriteError),
}

/// One class's results, as `obscura eval` scores them.
pub struct Series<'a> {
    pub name: &'a str,
    pub coverage: &'a Coverage,
    pub matching: &'a Matching,
}

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 560;
const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded file is a valid TrueType font; failing here is a build defect.
        let parsed = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        assert!(parsed.is_ok(), "the embedded DejaVu Sans parses");
    });
}

fn draw_err(e: impl std::fmt::Display) -> ChartError {
    ChartError::Draw(e.to_string())
}

/// Draws the chart for `series` with `title` above it and writes it to `path` as PNG
/// (atomically: a temporary file renamed into place).
///
/// ```no_run
/// # fn f(coverage: &obscura::eval::Coverage, matching: &obscura::eval::Matching) -> Result<(), obscura::eval::chart::ChartError> {
/// use obscura::eval::chart::{Series, write_png};
/// write_png("eval.png".as_ref(), "faces, threshold 0.18", &[Series { name: "faces", coverage, matching }])?;
/// # Ok(()) }
/// ```
pub fn write_png(path: &Path, title: &str, series: &[Series<'_>]) -> Result<(), ChartError> {
    let pixels = render(title, series)?;
    let img = image::RgbImage::from_raw(WIDTH, HEIGHT, pixels).expect("buffer size matches");
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    crate::image_io::write_atomic(path, &png)?;
    Ok(())
}

/// The chart as packed RGB pixels, `WIDTH`×`HEIGHT`.
fn render(title: &str, series: &[Series<'_>]) -> Result<Vec<u8>, ChartError> {
    register_font();
    let mut pixels = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let root = root.titled(title, (FONT, 22)).map_err(draw_err)?;
        let (left, right) = root.split_horizontally(WIDTH / 2);
        let colours = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];

        let mut pr = ChartBuilder::on(&left)
            .caption("precision / recall (IoU >= 0.5)", (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(draw_err)?;
        pr.configure_mesh().x_desc("recall").y_desc("precision").label_style((FONT, 13)).draw().map_err(draw_err)?;
        for (s, colour) in series.iter().zip(colours.iter().cycle()) {
            let points = s.matching.curve.iter().map(|p| (p.recall, p.precision));
            let label = format!("{} (AP {:.3})", s.name, s.matching.average_precision);
            pr.draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(draw_err)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
        pr.configure_series_labels().label_font((FONT, 14)).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(draw_err)?;

        let buckets = HEIGHT_BUCKETS.len();
        let mut by_height = ChartBuilder::on(&right)
            .caption("recall by box height (px)", (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.5f64..(buckets as f64 - 0.5), 0f64..1f64)
            .map_err(draw_err)?;
        by_height
            .configure_mesh()
            .x_labels(buckets)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 { HEIGHT_BUCKETS.get(i as usize).map_or(String::new(), |b| b.0.to_string()) } else { String::new() }
            })
            .x_desc("ground-truth box height")
            .y_desc("recall")
            .label_style((FONT, 13))
            .draw()
            .map_err(draw_err)?;
        for (s, colour) in series.iter().zip(colours.iter().cycle()) {
            let line = |map: &std::collections::BTreeMap<String, super::Recall>| -> Vec<(f64, f64)> {
                HEIGHT_BUCKETS
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (name, _, _))| map.get(*name).filter(|r| r.total > 0).map(|r| (i as f64, r.value())))
                    .collect()
            };
            let coverage = line(&s.coverage.by_height);
            by_height
                .draw_series(LineSeries::new(coverage.clone(), colour.stroke_width(2)))
                .map_err(draw_err)?
                .label(format!("{}: coverage recall", s.name))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
            by_height.draw_series(coverage.iter().map(|&p| Circle::new(p, 4, colour.filled()))).map_err(draw_err)?;
            let matched = line(&s.matching.recall_by_height);
            by_height
                .draw_series(DashedLineSeries::new(matched.clone(), 6, 4, colour.stroke_width(2)))
                .map_err(draw_err)?
                .label(format!("{}: IoU 0.5 recall", s.name))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 6, y)], colour.stroke_width(2)));
            by_height.draw_series(matched.iter().map(|&p| TriangleMarker::new(p, 5, colour.filled()))).map_err(draw_err)?;
        }
        by_height
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(pixels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{PrPoint, Recall};

    fn series() -> (Coverage, Matching) {
        let mut coverage = Coverage::default();
        let mut matching = Matching::default();
        for (i, (name, _, _)) in HEIGHT_BUCKETS.iter().enumerate() {
            coverage.by_height.insert((*name).into(), Recall { covered: i + 1, total: 5 });
            matching.recall_by_height.insert((*name).into(), Recall { covered: i, total: 5 });
        }
        matching.curve = (1..=10).map(|i| PrPoint { score: 1.0 - i as f32 / 10.0, recall: i as f64 / 10.0, precision: 1.0 - i as f64 / 20.0 }).collect();
        (coverage, matching)
    }

    #[test]
    fn the_chart_is_a_png_with_both_panels_drawn_and_text_rendered() {
        let (coverage, matching) = series();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        write_png(&path, "test chart", &[Series { name: "faces", coverage: &coverage, matching: &matching }]).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        let blue = |x0: u32, x1: u32| (x0..x1).flat_map(|x| (0..HEIGHT).map(move |y| (x, y))).filter(|&(x, y)| img.get_pixel(x, y).0 == [31, 119, 180]).count();
        assert!(blue(0, WIDTH / 2) > 200, "the precision/recall curve is drawn");
        assert!(blue(WIDTH / 2, WIDTH) > 200, "the recall-by-height lines are drawn");
        // The title band holds dark text pixels (the embedded font rendered).
        let dark = (0..WIDTH).flat_map(|x| (0..30).map(move |y| (x, y))).filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100)).count();
        assert!(dark > 50, "title text rendered: {dark} dark pixels");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }
}
