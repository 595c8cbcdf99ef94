//! The library API as an upload handler meets it: one `Anonymizer`, shared, sync and
//! async, failing closed.

mod common;

use common::*;
use obscura::detect::Class;
use obscura::{Anonymizer, Config, Error};

fn face_regions(report: &obscura::pipeline::Report) -> usize {
    report.regions.iter().filter(|r| r.class == Class::Face).count()
}

fn config() -> Config {
    let mut c = Config::default();
    c.redact.seed = Some(7);
    c
}

#[test]
fn anonymizer_is_shareable() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<Anonymizer>();
}

#[test]
fn anonymizes_bytes_and_reports_what_it_did() {
    let anonymizer = Anonymizer::new(config()).expect("scripts/setup has been run");
    let input = std::fs::read(eval_image(ONE_FACE)).unwrap();
    let out = anonymizer.anonymize(&input).unwrap();
    assert_eq!(out.format, obscura::image_io::Format::Jpeg);
    assert_eq!((out.report.width, out.report.height), (1024, 707));
    // The defaults: persons first (NanoDet INT8), then faces (CenterFace INT8).
    let models: Vec<&str> = out.report.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(models, ["nanodet-m-int8", "centerface-int8"]);
    assert_eq!(face_regions(&out.report), 1);
    assert!(out.report.regions.iter().any(|r| r.class == Class::Person), "the candidate's body");
    let face = obscura::geometry::BBox::from_xywh(116.0, 124.0, 150.0, 218.0);
    let rects: Vec<_> = out.report.regions.iter().map(|r| r.rect).collect();
    assert!(obscura::geometry::covered_fraction(&face, &rects, 1024, 707) >= 0.99);
    let result = image::load_from_memory(&out.bytes).unwrap().to_rgb8();
    assert!(mean_abs_diff(&load_rgb(&eval_image(ONE_FACE)), &result, ONE_FACE_BOX) > 15.0);
}

#[test]
fn bad_bytes_give_an_error_and_no_image() {
    let anonymizer = Anonymizer::new(config()).unwrap();
    assert!(matches!(anonymizer.anonymize(b""), Err(Error::Decode(_))));
    assert!(matches!(anonymizer.anonymize(b"GIF89a not supported"), Err(Error::Decode(_))));
}

#[test]
fn refuses_a_configuration_that_detects_nothing() {
    let mut c = config();
    c.detect.targets.clear();
    assert!(matches!(Anonymizer::new(c), Err(Error::Config(e)) if e.field == "detect.targets"));
    // Faces asked for but no face model: persons alone would leave faces to chance.
    let mut c = config();
    c.detect.face_models.clear();
    assert!(matches!(Anonymizer::new(c), Err(Error::Config(e)) if e.field == "detect.face_models"));
    // The person-faces booster without persons would silently do nothing.
    let mut c = config();
    c.detect.targets = vec![Class::Face];
    c.detect.boost = vec![obscura::detect::Booster::PersonFaces];
    assert!(matches!(Anonymizer::new(c), Err(Error::Config(e)) if e.field == "detect.boost"));
}

#[test]
fn fails_closed_when_the_detector_fails() {
    // NanoDet is a valid ONNX model that cannot take CenterFace's input: loading works,
    // every inference fails, and no bytes may come back.
    let mut c = config();
    c.detect.model = Some(root().join("../shared/models/nanodet.onnx"));
    let anonymizer = Anonymizer::new(c).unwrap();
    let input = std::fs::read(eval_image(ONE_FACE)).unwrap();
    match anonymizer.anonymize(&input) {
        Err(Error::Detect(e)) => assert!(e.to_string().contains("inference failed"), "{e}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an image came back although detection failed"),
    }
}

#[test]
fn async_calls_run_concurrently_off_the_reactor() {
    let mut c = config();
    c.max_concurrency = 2;
    let anonymizer = Anonymizer::new(c).unwrap();
    let input = std::fs::read(eval_image(ONE_FACE)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // A single-threaded runtime stays responsive while images are processed.
        let ticker = tokio::spawn(async {
            let mut ticks = 0;
            for _ in 0..5 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                ticks += 1;
            }
            ticks
        });
        let tasks: Vec<_> = (0..6).map(|_| tokio::spawn({
            let a = anonymizer.clone();
            let bytes = input.clone();
            async move { a.anonymize_async(bytes).await }
        })).collect();
        for t in tasks {
            let out = t.await.unwrap().unwrap();
            assert_eq!(face_regions(&out.report), 1);
        }
        assert_eq!(ticker.await.unwrap(), 5);
    });
}

#[test]
fn finds_small_faces_in_large_photos() {
    // A 5000×3500 photo with the portrait pasted small (face ≈ 44×64 px). Shrunk whole to
    // detector size the face would be ≈ 17×25 px; the full-resolution tiles keep it as is.
    let portrait = load_rgb(&eval_image(ONE_FACE));
    let scale = 300.0 / 1024.0;
    let small = image::imageops::resize(&portrait, 300, 207, image::imageops::FilterType::Triangle);
    let mut canvas = image::RgbImage::from_pixel(5000, 3500, image::Rgb([90, 110, 100]));
    let (ox, oy) = (3100u32, 2100u32);
    image::imageops::replace(&mut canvas, &small, ox as i64, oy as i64);
    let mut png = Vec::new();
    canvas.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();

    let anonymizer = Anonymizer::new(config()).unwrap();
    let out = anonymizer.anonymize(&png).unwrap();
    let b = ONE_FACE_BOX;
    let face = obscura::geometry::BBox::from_xywh(
        ox as f32 + b.x as f32 * scale,
        oy as f32 + b.y as f32 * scale,
        b.w as f32 * scale,
        b.h as f32 * scale,
    );
    let rects: Vec<_> = out.report.regions.iter().map(|r| r.rect).collect();
    let covered = obscura::geometry::covered_fraction(&face, &rects, 5000, 3500);
    assert!(covered >= 0.8, "face {face:?} covered {covered:.2} by {rects:?}");
}

#[test]
fn retinaface_alone_and_fused_with_centerface_find_the_face() {
    use obscura::detect::FaceModel;
    let input = std::fs::read(eval_image(ONE_FACE)).unwrap();
    let face = obscura::geometry::BBox::from_xywh(116.0, 124.0, 150.0, 218.0);
    for (models, names) in [
        (vec![FaceModel::Retinaface], vec!["retinaface-mnet0.25"]),
        (vec![FaceModel::Centerface, FaceModel::Retinaface], vec!["centerface", "retinaface-mnet0.25"]),
    ] {
        let mut c = config();
        c.detect.targets = vec![Class::Face];
        c.detect.face_models = models;
        let out = Anonymizer::new(c).unwrap().anonymize(&input).unwrap();
        let used: Vec<&str> = out.report.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(used, names);
        let rects: Vec<_> = out.report.regions.iter().map(|r| r.rect).collect();
        assert!(obscura::geometry::covered_fraction(&face, &rects, 1024, 707) >= 0.99, "{names:?}");
        for name in names {
            assert!(out.report.detections.iter().any(|d| d.model == name && d.bbox.iou(&face) > 0.5), "{name} found it");
        }
    }
}

/// A detector that always reports one box of its class: an *input* to the ordering rule
/// under test, not a stand-in for a model.
struct Fixed(Class, obscura::detect::ModelInfo);

impl obscura::detect::Detector for Fixed {
    fn detect(&self, frame: &obscura::image_io::Frame) -> Result<Vec<obscura::detect::Detection>, obscura::detect::DetectError> {
        let (w, h) = (frame.width() as f32, frame.height() as f32);
        Ok(vec![obscura::detect::Detection {
            class: self.0,
            bbox: obscura::geometry::BBox::new(w * 0.25, h * 0.25, w * 0.5, h * 0.5),
            score: obscura::geometry::Score(0.9),
            landmarks: None,
            model: self.1.name.clone(),
        }])
    }
    fn model(&self) -> &obscura::detect::ModelInfo {
        &self.1
    }
    fn class(&self) -> Class {
        self.0
    }
}

/// Persons run first whatever order detectors are given in (their boxes feed the
/// person-faces booster, and a face's redaction goes over its body's): a rule of
/// `with_detectors`, not a habit of `new`.
#[test]
fn person_detectors_run_before_face_detectors_whatever_the_order_given() {
    let info = |name: &str| obscura::detect::ModelInfo { name: name.into(), path: "in-test".into(), sha256: String::new(), device: "cpu".into() };
    let mut c = config();
    c.redact.on = obscura::redact::backend::RedactOn::Cpu;
    let detectors: Vec<Box<dyn obscura::detect::Detector>> =
        vec![Box::new(Fixed(Class::Face, info("face-a"))), Box::new(Fixed(Class::Person, info("person"))), Box::new(Fixed(Class::Face, info("face-b")))];
    let anonymizer = Anonymizer::with_detectors(c, detectors).unwrap();
    let names: Vec<String> = anonymizer.models().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["person", "face-a", "face-b"], "persons first, faces in the order given");
    let frame = obscura::image_io::Frame::new(64, 64, 3, vec![128; 64 * 64 * 3]);
    let (detections, regions) = anonymizer.plan(&frame).unwrap();
    assert_eq!(detections.iter().map(|d| d.class).collect::<Vec<_>>(), [Class::Person, Class::Face, Class::Face]);
    assert_eq!(regions[0].class, Class::Person, "the body's region first, the face's over it");
    // The same settings check as `new`: an invalid setting is refused here too.
    let mut bad = config();
    bad.redact.noise = f32::NAN;
    let detectors: Vec<Box<dyn obscura::detect::Detector>> = vec![Box::new(Fixed(Class::Face, info("face")))];
    assert!(matches!(Anonymizer::with_detectors(bad, detectors), Err(Error::Config(e)) if e.field == "redact.noise"));
}

/// A models folder (the Python package's own) is the only place looked at: models missing
/// there are an error naming that folder, never files found elsewhere, and files there
/// are verified against their pins like any other.
#[test]
fn a_models_folder_is_the_only_place_models_are_taken_from() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.runtime.models_dir = Some(dir.path().to_path_buf());
    let Err(Error::Detect(e)) = Anonymizer::new(c.clone()) else { panic!("models found outside the folder") };
    assert!(matches!(e, obscura::detect::DetectError::ModelMissing { .. }), "{e}");
    assert!(e.to_string().contains(&dir.path().display().to_string()), "{e}");

    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    for name in ["nanodet-int8.onnx", "centerface-int8.onnx"] {
        std::fs::copy(models.join(name), dir.path().join(name)).unwrap();
        let marker = format!("{name}.verified"); // a person model built here, not downloaded
        if models.join(&marker).is_file() {
            std::fs::copy(models.join(&marker), dir.path().join(&marker)).unwrap();
        }
    }
    let found = Anonymizer::new(c.clone()).unwrap();
    assert!(found.models().iter().all(|m| m.path.starts_with(dir.path())), "{:?}", found.models());

    let mut altered = std::fs::read(dir.path().join("centerface-int8.onnx")).unwrap();
    altered[5000] ^= 0xff;
    std::fs::write(dir.path().join("centerface-int8.onnx"), altered).unwrap();
    let Err(Error::Detect(e)) = Anonymizer::new(c) else { panic!("an altered model was loaded") };
    assert!(matches!(e, obscura::detect::DetectError::ModelChecksum { .. }), "{e}");
}
