//! The NanoDet person detector: same numbers as the reference runtime, persons found on
//! real photos, and the `--targets` flag end to end.

mod common;

use common::*;
use obscura::detect::nanodet::{self, NanoDet, Precision};
use obscura::detect::{Class, Detector, OrtRuntime, PersonConfig, RuntimeConfig};
use obscura::geometry::BBox;
use obscura::{Anonymizer, Config};

/// Both pinned files, the converted model and its INT8 quantisation, give the reference
/// runtime's numbers (`scripts/nanodet-fixture`) through `ort`.
#[test]
fn raw_outputs_match_python_onnxruntime() {
    let fx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/nanodet_reference.json")).unwrap()).unwrap();
    let rt_config = RuntimeConfig { sessions: 1, intra_threads: 1, ..RuntimeConfig::default() };
    let runtime = OrtRuntime::load(&rt_config).unwrap();
    // The synthetic input of scripts/nanodet-fixture: ((7x + 13y + 29c) % 256) / 255.
    let n = 416usize;
    let input: Vec<f32> = (0..3 * n * n).map(|i| {
        let (c, y, x) = (i / (n * n), (i / n) % n, i % n);
        ((7 * x + 13 * y + 29 * c) % 256) as f32 / 255.0
    }).collect();
    for (precision, key) in [(Precision::Fp32, "parity"), (Precision::Int8, "parity_int8")] {
        let config = PersonConfig { precision, ..PersonConfig::default() };
        let det = NanoDet::new(&runtime, &rt_config, &config).expect("models/nanodet{,-int8}.onnx: scripts/setup --model-cache");
        let levels = det.infer(&input).unwrap();
        assert_eq!(nanodet::LEVELS.len(), levels.len());
        for p in fx[key].as_array().unwrap() {
            let grid = p["grid"].as_u64().unwrap() as usize;
            let level = levels.iter().find(|l| l.grid == grid).unwrap();
            let data = if p["channels"] == 80 { &level.scores } else { &level.dists };
            for (i, want) in p["first"].as_array().unwrap().iter().enumerate() {
                let want = want.as_f64().unwrap() as f32;
                assert!((data[i] - want).abs() < 1e-4 * want.abs().max(1.0), "{key} grid {grid} {i}: {} vs {want}", data[i]);
            }
        }
    }
}

/// The quantised model finds the persons the converted one finds: on the COCO photos of
/// the shared set, every person FP32 scores 0.5 or more is found by INT8 in about the same
/// place (IoU >= 0.5, the usual detection match).
#[test]
fn the_int8_model_finds_what_the_fp32_model_finds() {
    let rt_config = RuntimeConfig { sessions: 1, intra_threads: 1, ..RuntimeConfig::default() };
    let runtime = OrtRuntime::load(&rt_config).unwrap();
    let low = PersonConfig { threshold: 0.1, ..PersonConfig::default() };
    let int8 = NanoDet::new(&runtime, &rt_config, &low).unwrap();
    let fp32 = NanoDet::new(&runtime, &rt_config, &PersonConfig { precision: Precision::Fp32, ..low }).unwrap();
    let mut photos: Vec<_> = std::fs::read_dir(eval_dir().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("coco_"))
        .collect();
    photos.sort();
    let mut checked = 0;
    for photo in &photos {
        let frame = obscura::image_io::decode(&std::fs::read(photo).unwrap(), &Default::default()).unwrap().frame;
        let (a, b) = (fp32.detect(&frame).unwrap(), int8.detect(&frame).unwrap());
        for d in a.iter().filter(|d| d.score.0 >= 0.5) {
            let best = b.iter().map(|e| e.bbox.iou(&d.bbox)).fold(0.0, f32::max);
            assert!(best >= 0.5, "{}: FP32 person {:?} ({}) has no INT8 match (best IoU {best})", photo.display(), d.bbox, d.score.0);
            checked += 1;
        }
    }
    assert!(checked >= 50, "only {checked} confident persons on the photos");
}

#[test]
fn finds_the_person_in_a_coco_photo() {
    let mut config = Config::default();
    config.detect.targets = vec![Class::Person];
    let anonymizer = Anonymizer::new(config).unwrap();
    let bytes = std::fs::read(eval_image("coco_000000000036.jpg")).unwrap();
    let out = anonymizer.anonymize(&bytes).unwrap();
    // persons.csv: coco_000000000036.jpg,167.58,162.89,310.61,465.19
    let person = BBox::from_xywh(167.58, 162.89, 310.61, 465.19);
    assert!(out.report.regions.iter().all(|r| r.class == Class::Person));
    let best = out.report.detections.iter().map(|d| d.bbox.iou(&person)).fold(0.0, f32::max);
    assert!(best > 0.7, "best IoU {best}");
    let rects: Vec<_> = out.report.regions.iter().map(|r| r.rect).collect();
    assert!(obscura::geometry::covered_fraction(&person, &rects, out.report.width, out.report.height) >= 0.8);
}

#[test]
fn targets_flag_runs_both_detectors_and_reports_each_class() {
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("r.json");
    let out = run(obscura()
        .args(["anonymise", "-q", "--targets", "face,person", "--report"])
        .arg(&report)
        .arg(eval_image(ONE_FACE))
        .arg("-o")
        .arg(tmp.path().join("out.jpg")));
    assert!(out.status.success());
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let img = &r["images"][0];
    let models: Vec<&str> = img["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(models, ["nanodet-m-int8", "centerface-int8"]);
    let classes: Vec<&str> = img["regions"].as_array().unwrap().iter().map(|r| r["class"].as_str().unwrap()).collect();
    assert!(classes.contains(&"face") && classes.contains(&"person"), "{classes:?}");
    // Person regions come first, so faces are redacted on top with their own blocks.
    assert_eq!(classes.last(), Some(&"face"));
    for rg in img["regions"].as_array().unwrap() {
        assert!(rg["class"] == "face" || rg["style"]["kind"] == "pixelate");
    }
}
