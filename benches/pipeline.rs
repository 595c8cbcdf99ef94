//! Criterion benches for the stages of one image on a 1080p photo: decode, detect,
//! redact (each style), encode. The photo is a WIDER photo from `../shared/eval` scaled
//! to 1920×1080 (several faces). Run: `cargo bench --bench pipeline`.

use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use obscura::image_io::{self, Frame, ImageConfig, KeptMetadata};
use obscura::redact::{self, Params, Style};
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

    for (name, sessions, threads) in [("detect_2_threads", 1, 2), ("detect_1_thread", 1, 1)] {
        let mut config = Config::default();
        config.runtime.sessions = sessions;
        config.runtime.intra_threads = threads;
        let anonymizer = Anonymizer::new(config).expect("run scripts/setup first");
        g.bench_function(name, |b| b.iter(|| anonymizer.plan(&frame).unwrap()));
    }

    let anonymizer = Anonymizer::new(Config::default()).unwrap();
    let (_, regions) = anonymizer.plan(&frame).unwrap();
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

    g.bench_function("anonymize_end_to_end_jpeg", |b| b.iter(|| anonymizer.anonymize(&jpeg).unwrap()));
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
