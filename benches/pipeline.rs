//! Criterion benches for the stages of one image on a 1080p photo: decode, detect,
//! redact (each style), encode. The photo is a WIDER photo from `../shared/eval` scaled
//! to 1920×1080 (several faces). Detection is timed per model (each pass alone) and for
//! the default configuration; the person pass's resize and the default plan's redaction
//! are timed alone too. The `text` group times the text target's cost beside the
//! default, on the same photo at 1080p and at 12 MP (4000×3000), in one run. Run:
//! `cargo bench --bench pipeline` (`-- text/` for that group alone).

use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use obscura::image_io::{self, Frame, ImageConfig, KeptMetadata};
use obscura::redact::{self, Params, Style};
use obscura::detect::nanodet::{self, Precision};
use obscura::detect::{Class, FaceModel};
use obscura::{Anonymizer, Config};

const PHOTO: &str = "wider_0_Parade_marchingband_1_139.jpg";

fn photo_1080p() -> (Frame, Vec<u8>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/eval/images").join(PHOTO);
    let img = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rgb = img.resize_to_fill(1920, 1080, image::imageops::FilterType::Triangle).to_rgb8();
    let frame = Frame::new(1920, 1080, 3, rgb.into_raw());
    let jpeg = image_io::encode(frame.clone(), image_io::Format::Jpeg, &KeptMetadata::default(), 90).unwrap();
    (frame, jpeg)
}

fn stages(c: &mut Criterion) {
    let (frame, jpeg) = photo_1080p();
    let mut g = c.benchmark_group("1080p");
    g.sample_size(20).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(2));

    g.bench_function("decode_jpeg", |b| b.iter(|| image_io::decode(&jpeg, &ImageConfig::default()).unwrap()));

    let only = |targets: Vec<Class>, faces: FaceModel| {
        let mut c = Config::default();
        c.detect.targets = targets;
        c.detect.face_models = vec![faces];
        c
    };
    let mut persons_fp32 = only(vec![Class::Person], FaceModel::CenterfaceInt8);
    persons_fp32.detect.person.precision = Precision::Fp32;
    // Each detector alone on one thread, then the default (faces INT8 + persons INT8).
    for (name, config, threads) in [
        ("detect_centerface_fp32_1_thread", only(vec![Class::Face], FaceModel::Centerface), 1),
        ("detect_centerface_int8_1_thread", only(vec![Class::Face], FaceModel::CenterfaceInt8), 1),
        ("detect_nanodet_fp32_1_thread", persons_fp32, 1),
        ("detect_nanodet_int8_1_thread", only(vec![Class::Person], FaceModel::CenterfaceInt8), 1),
        ("detect_default_1_thread", Config::default(), 1),
        ("detect_default_2_threads", Config::default(), 2),
    ] {
        let mut config = config;
        config.runtime.sessions = 1;
        config.runtime.intra_threads = threads;
        let anonymizer = Anonymizer::new(config).expect("run scripts/setup first (and --model-cache or --build-person-model)");
        g.bench_function(name, |b| b.iter(|| anonymizer.plan(&frame).unwrap()));
    }

    // The person pass's pre-processing alone (the resize to the model's 416×416 input).
    g.bench_function("nanodet_prepare", |b| b.iter(|| nanodet::prepare(&frame)));

    // Redaction of the default plan's regions (faces and persons), pixelated.
    let (_, regions) = Anonymizer::new(Config::default()).unwrap().plan(&frame).unwrap();
    eprintln!("{} regions (faces and persons) on the 1080p photo", regions.len());
    let params = Params { feather: 0.1, noise: 16.0, seed: 1 };
    g.bench_function("redact_default_plan", |b| {
        b.iter_batched_ref(|| frame.clone(), |f| redact::cpu::redact(f, &regions, &params), BatchSize::LargeInput)
    });

    // Redaction of the face regions alone (comparable with earlier runs).
    let (_, regions) = Anonymizer::new(only(vec![Class::Face], FaceModel::CenterfaceInt8)).unwrap().plan(&frame).unwrap();
    eprintln!("{} regions on the 1080p photo", regions.len());
    let params = Params { feather: 0.1, noise: 16.0, seed: 1 };
    for (name, style) in [("redact_pixelate", Style::DEFAULT_PIXELATE), ("redact_fill", Style::DEFAULT_FILL), ("redact_blur", Style::DEFAULT_BLUR)] {
        let styled: Vec<_> = regions.iter().map(|r| redact::Region { style, ..*r }).collect();
        g.bench_function(name, |b| {
            b.iter_batched_ref(|| frame.clone(), |f| redact::cpu::redact(f, &styled, &params), BatchSize::LargeInput)
        });
    }

    for (name, format) in [("encode_jpeg", image_io::Format::Jpeg), ("encode_png", image_io::Format::Png)] {
        g.bench_function(name, |b| {
            b.iter_batched(|| frame.clone(), |f| image_io::encode(f, format, &KeptMetadata::default(), 90).unwrap(), BatchSize::LargeInput)
        });
    }

    let anonymizer = Anonymizer::new(Config::default()).unwrap();
    g.bench_function("anonymize_end_to_end_jpeg", |b| b.iter(|| anonymizer.anonymize(&jpeg).unwrap()));
    g.finish();
}

/// The default detection with and without the text target, and text alone, at 1080p and
/// 12 MP (2 threads, as the CLI runs one image).
fn text(c: &mut Criterion) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/eval/images").join(PHOTO);
    let img = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut g = c.benchmark_group("text");
    g.sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(2));
    for (size, (w, h)) in [("1080p", (1920u32, 1080u32)), ("12mp", (4000, 3000))] {
        let rgb = img.resize_to_fill(w, h, image::imageops::FilterType::Triangle).to_rgb8();
        let frame = Frame::new(w, h, 3, rgb.into_raw());
        let with_text = |targets: &[Class]| {
            let mut c = Config::default();
            c.detect.targets = targets.to_vec();
            c.runtime.sessions = 1;
            c.runtime.intra_threads = 2;
            c
        };
        for (name, targets) in [("default", &[Class::Face, Class::Person][..]), ("default+text", &[Class::Face, Class::Person, Class::Text]), ("text", &[Class::Text])] {
            let anonymizer = Anonymizer::new(with_text(targets)).expect("run scripts/setup first (and --model-cache or --build-person-model)");
            g.bench_function(format!("{size}/{name}"), |b| b.iter(|| anonymizer.plan(&frame).unwrap()));
        }
    }
    g.finish();
}

criterion_group!(benches, stages, text);
criterion_main!(benches);
