//! The NanoDet person detector: same numbers as the reference runtime, persons found on
//! real photos, and the `--targets` flag end to end.

mod common;

use common::*;
use obscura::detect::nanodet::{self, NanoDet};
use obscura::detect::{Class, OrtRuntime, PersonConfig, RuntimeConfig};
use obscura::geometry::BBox;
use obscura::{Anonymizer, Config};

#[test]
fn raw_outputs_match_python_onnxruntime() {
    let fx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/nanodet_reference.json")).unwrap()).unwrap();
    let rt_config = RuntimeConfig { sessions: 1, intra_threads: 1, ..RuntimeConfig::default() };
    let runtime = OrtRuntime::load(&rt_config).unwrap();
    let det = NanoDet::new(&runtime, &rt_config, &PersonConfig::default()).expect("models/nanodet.onnx: scripts/setup --model-cache");
    // The synthetic input of scripts/nanodet-fixture: ((7x + 13y + 29c) % 256) / 255.
    let n = 416usize;
    let input: Vec<f32> = (0..3 * n * n).map(|i| {
        let (c, y, x) = (i / (n * n), (i / n) % n, i % n);
        ((7 * x + 13 * y + 29 * c) % 256) as f32 / 255.0
    }).collect();
    let levels = det.infer(&input).unwrap();
    for p in fx["parity"].as_array().unwrap() {
        let grid = p["grid"].as_u64().unwrap() as usize;
        let level = levels.iter().find(|l| l.grid == grid).unwrap();
        let data = if p["channels"] == 80 { &level.scores } else { &level.dists };
        for (i, want) in p["first"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap() as f32;
            assert!((data[i] - want).abs() < 1e-4 * want.abs().max(1.0), "grid {grid} {i}: {} vs {want}", data[i]);
        }
    }
    assert_eq!(nanodet::LEVELS.len(), levels.len());
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
    assert_eq!(models, ["nanodet-m", "centerface-int8"]);
    let classes: Vec<&str> = img["regions"].as_array().unwrap().iter().map(|r| r["class"].as_str().unwrap()).collect();
    assert!(classes.contains(&"face") && classes.contains(&"person"), "{classes:?}");
    // Person regions come first, so faces are redacted on top with their own blocks.
    assert_eq!(classes.last(), Some(&"face"));
    for rg in img["regions"].as_array().unwrap() {
        assert!(rg["class"] == "face" || rg["style"]["kind"] == "pixelate");
    }
}
